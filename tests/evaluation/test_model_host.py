"""Tests for segpipe.model_host: the long-lived process, TensorFlow imported once, where `segpipe predict`
loads its .keras models. Real host processes, real sockets, real signals, real models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe import model_host, predict
from segpipe.processes import alive
from segpipe.evaluation import ensemble
from segpipe.preload import preloaded, take
from tests.evaluation.test_predict import halves, mask_of
from tests.faults import REPO, child_env
from tests.threads import run_at_once

pytestmark = [pytest.mark.slow,  # each host imports TensorFlow
              pytest.mark.skipif(not model_host.supported(), reason="the model host is Linux-only")]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    from segpipe.models import build_model

    path = tmp_path_factory.mktemp("models") / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("in")
    Image.fromarray(halves(40, 48)).save(src / "photo.png")
    Image.fromarray(halves(33, 50, (255, 0, 0), (0, 0, 255))).save(src / "second.png")
    return src


@pytest.fixture()
def host_dir(tmp_path):
    folder = tmp_path / "model-host"
    yield folder
    model_host.stop(folder)


def test_two_commands_in_a_row_use_one_host_and_match_in_process(unet, images, host_dir, tmp_path, monkeypatch):
    expected = predict.predict_paths([unet], [images], tmp_path / "here", batch_size=1, flip=True)
    monkeypatch.setattr(ensemble, "load_models", lambda paths: pytest.fail("loaded in the caller"))
    pids = []
    for i in range(2):
        with preloaded([unet], flip=True, host_dir=host_dir) as remote:
            assert remote.host is not None, "no host: a child was started instead"
            assert take([unet], flip=True) is remote
            report = predict.predict_paths([unet], [images], tmp_path / f"host{i}", batch_size=1, flip=True)
            pids.append(remote.host.pid)
        for name in ("photo.png", "second.png"):
            np.testing.assert_array_equal(mask_of(report, name), mask_of(expected, name))
    assert pids[0] == pids[1], "the second command started another host"
    assert model_host.running_pid(host_dir) == pids[0] and alive(pids[0]), "the host stays up between commands"
    assert "listening for" in (host_dir / model_host.LOG_NAME).read_text()


def test_commands_starting_at_once_share_one_host(unet, host_dir):
    def command() -> tuple[int, int]:
        with preloaded([unet], flip=False, host_dir=host_dir) as remote:
            assert remote.host is not None
            labels = remote.labels([halves(10, 12)])
            return remote.host.pid, labels[0].shape[0]

    results = run_at_once(command, 3)
    assert len({pid for pid, _ in results}) == 1 and [n for _, n in results] == [10, 10, 10], results
    assert model_host.running_pid(host_dir) == results[0][0]


def test_a_killed_host_is_replaced_and_a_hung_one_too(unet, host_dir, monkeypatch):
    with preloaded([unet], flip=False, host_dir=host_dir) as remote:
        first = remote.host.pid
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not alive(first), 10, "the killed host to go")
    with preloaded([unet], flip=False, host_dir=host_dir) as remote:
        second = remote.host.pid
        assert len(remote.labels([halves(10, 12)])) == 1
    assert second != first

    os.kill(second, signal.SIGSTOP)  # hangs: connections queue, no greeting comes
    monkeypatch.setattr(model_host, "HELLO_TIMEOUT_S", 1.0)
    with preloaded([unet], flip=False, host_dir=host_dir) as remote:
        assert remote.host is not None and remote.host.pid not in (first, second)
        assert len(remote.labels([halves(10, 12)])) == 1
    assert not alive(second), "the hung host was left behind"


def test_a_host_of_other_code_is_replaced(unet, host_dir, tmp_path):
    """segpipe changed since the host started (an upgrade, an edit): the host greets with another version,
    and the command stops it and starts one that runs the code it runs itself."""
    other = tmp_path / "other"
    shutil.copytree(REPO / "segpipe", other / "segpipe", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "segpipe" / "predict.py", "a") as f:
        f.write("\n# an edit\n")
    env = child_env(PYTHONPATH=str(other))
    old = subprocess.Popen([sys.executable, "-m", "segpipe.model_host", str(host_dir), "600"], cwd=other, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: model_host.running_pid(host_dir) == old.pid, 60, "the other code's host to listen")
        with preloaded([unet], flip=False, host_dir=host_dir) as remote:
            assert remote.host is not None and remote.host.pid != old.pid
            assert len(remote.labels([halves(10, 12)])) == 1
        assert old.wait(timeout=10) == -signal.SIGTERM
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


def test_a_host_that_dies_before_the_models_are_loaded_falls_back_to_loading_here(unet, images, host_dir, tmp_path,
                                                                                   caplog):
    expected = predict.predict_paths([unet], [images], tmp_path / "here", batch_size=1)
    with preloaded([unet], flip=False, host_dir=host_dir) as remote:
        os.kill(remote.host.pid, signal.SIGKILL)  # before it could answer (it loads for seconds)
        assert take([unet], flip=False) is None
        report = predict.predict_paths([unet], [images], tmp_path / "after", batch_size=1)
    assert f"the model host (pid {remote.host.pid}" in caplog.text and "loading the models in this process" in caplog.text
    for name in ("photo.png", "second.png"):
        np.testing.assert_array_equal(mask_of(report, name), mask_of(expected, name))


def test_an_idle_host_stops_by_itself(unet, host_dir):
    with preloaded([unet], flip=False, host_dir=host_dir, idle_s=1.0) as remote:
        pid = remote.host.pid
        remote.wait_ready()
        time.sleep(1.5)  # longer than idle_s, while a connection is open: the host must stay
        assert alive(pid)
        assert len(remote.labels([halves(10, 12)])) == 1
    wait_until(lambda: not alive(pid) and model_host.running_pid(host_dir) is None, 30,
               "the idle host to stop")
    assert "stopping: idle for 1 s" in (host_dir / model_host.LOG_NAME).read_text()


def test_a_caller_hanging_up_mid_load_leaves_the_host_serving(unet, host_dir):
    """Ctrl-C in a command closes its connection while the host loads its models: the host drops them."""
    remote = preloaded([unet], flip=False, host_dir=host_dir)
    first = remote.__enter__()
    pid = first.host.pid
    remote.__exit__(None, None, None)  # hang up before the models are ready
    with preloaded([unet], flip=True, host_dir=host_dir) as again:
        assert again.host.pid == pid
        assert len(again.labels([halves(10, 12)])) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_the_host_greets_only_its_own_user(unet, host_dir):
    """The socket's name is reachable by every local user: another user gets the connection closed, no
    greeting, and so no way to send the host pickles."""
    import socket

    with preloaded([unet], flip=False, host_dir=host_dir) as remote:
        remote.wait_ready()
    address = model_host.address(host_dir)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only connects and reads, as user nobody
        try:
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(address)
            sock.settimeout(10)
            os.write(write, b"closed" if sock.recv(100) == b"" else b"greeted")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1000)
    os.waitpid(pid, 0)
    assert answer == b"closed", answer


def test_server_status_and_stop_cover_the_model_host(tmp_path):
    from segpipe_app.cli import server

    home = tmp_path / "prefect-home"
    host = server.model_host_dir(home.resolve())
    started = model_host.start(host, 600)
    env = child_env(PREFECT_HOME=str(home), SEGPIPE_PREFECT_SERVER="background")
    try:
        wait_until(lambda: model_host.running_pid(host) == started.pid, 60, "the host to listen")
        status = subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", "server", "status"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert f"model host running: pid {started.pid}" in status.stdout, status.stdout + status.stderr
        stop = subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", "server", "stop"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and f"stopped the model host (pid {started.pid})" in stop.stdout, stop.stdout
        assert started.wait(timeout=10) == -signal.SIGTERM
        status = subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", "server", "status"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert "model host" not in status.stdout
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()
