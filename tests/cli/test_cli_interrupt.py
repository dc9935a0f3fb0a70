"""Stopping `segpipe` the way people do: Ctrl-C typed into a real terminal, and a SIGTERM sent to the
whole process group (`timeout -s TERM`, `docker stop`, a supervisor).

The CLI runs on a pseudo-terminal that is its controlling terminal, in its own session; Ctrl-C is the
byte 0x03 written to the terminal, so the kernel's line discipline sends SIGINT to the terminal's
whole foreground process group, as a keyboard does. Before the fix, Prefect's ephemeral server was in
that group: it died with the keypress, the CLI printed websocket tracebacks, left the flow run
"Running" in the Prefect database for ever and exited 1 about 2 min 20 s later.

Each test reads the run's state from the Prefect database itself (SQLite, under PREFECT_HOME).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.faults import REPO, child_env, wait_for
from tests.terminal import Terminal, alive, interrupt_lines, prefect_server_of, recorded_runs

pytestmark = pytest.mark.slow

NATIVE_NOISE = ("absl::InitializeLog", "cuInit", "oneDNN custom operations", "Could not find cuda drivers",
                "cpu_feature_guard")


def backup_epoch(work: Path) -> int:
    """Epochs completed according to the training backup (BackupAndRestore's metadata), 0 without one."""
    for meta in work.glob("runs/*/backup/training_metadata.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads(meta.read_text())["epoch"])
    return 0


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    **extra)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it: the CLI must quieten TensorFlow itself
    env.pop("SEGPIPE_DEBUG", None)
    return env


def segpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "segpipe_app.cli.main", *args]


# --------------------------------------------------------------------------- Ctrl-C during training


def test_ctrl_c_in_a_terminal_during_training_stops_in_seconds_and_records_the_run(pets_archives, tmp_path):
    from segpipe.data.tfrecords import verify_dataset

    archives = pets_archives(n_per_breed=4, include_odd=False)  # conftest: written once per session

    work = tmp_path / "work"
    argv = segpipe("run", "--preset", "tiny", "--source", str(archives), "--split", "random",
                   "--set", "train.epochs=25", "--set", "train.early_stopping_patience=0", "--work-dir", str(work))
    env = cli_env(tmp_path)
    term = Terminal(argv, env)
    try:
        wait_for(lambda: backup_epoch(work) >= 3, timeout=300, proc=term.proc, what="training's third epoch")
        server = prefect_server_of(term.proc.pid)
        assert server is not None, "the CLI runs an ephemeral Prefect server"
        assert os.getpgid(server) != term.foreground_group(), "the server must not hear the terminal's signals"
        pressed_at_epoch = backup_epoch(work)
        rc, exit_s = term.interrupt()
    finally:
        term.close()
    out = term.drain()
    assert rc == 130, out[-3000:]
    # Stopped in the epoch under way when Ctrl-C came, not at the end of the 25 (the time is printed below).
    assert backup_epoch(work) <= pressed_at_epoch + 1, out[-3000:]
    lines = interrupt_lines(out)
    assert len(lines) == 1, out[-3000:]
    line = lines[0]
    assert (line["command"], line["stages"]) == ("run", "train"), line[0]
    assert re.fullmatch(r"; Prefect recorded pipeline run '[\w-]+' as Crashed", line["recorded"]), line[0]
    assert "training resumes from its last completed epoch" in line["resume"]
    assert "Traceback" not in out and "Connection refused" not in out and "EventsWorker" not in out, out[-3000:]
    assert not [n for n in NATIVE_NOISE if n in out], out[:3000]
    wait_for(lambda: not alive(server), timeout=10, what="the Prefect server to stop")

    runs = recorded_runs(tmp_path / "prefect-home")
    assert ("pipeline", "Crashed") in runs["flows"] and ("train", "Crashed") in runs["tasks"], runs
    assert not [r for r in runs["flows"] + runs["tasks"] if r[1] in ("Running", "Pending")], runs

    # what was complete stays usable: the dataset verifies, and the run resumes from its last epoch
    (dataset,) = [p for p in (work / "datasets").iterdir() if (p / "manifest.json").is_file()]
    assert verify_dataset(dataset) == []
    (run_dir,) = (work / "runs").iterdir()
    done = backup_epoch(work)
    assert done >= 3
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + done

    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    # the rerun says it resumes before it trains: that line, then the first epoch trained, then the summary's
    said = again.stdout + again.stderr
    order = [said.find(f"resuming after epoch {done}: "), said.find(f"epoch {done + 1}/25"),
             said.find(f"resumed from epoch {done}")]
    assert -1 not in order and order == sorted(order), said[-3000:]
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert [r["from_epoch"] for r in lineage["resumed_at"]] == [done]
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 1 + 25
    print(f"Ctrl-C during training: exit {rc} {exit_s:.2f} s after the keypress, pipeline run Crashed; "
          f"{done} completed epochs kept and resumed")


# --------------------------------------------------------------------------- a second Ctrl-C


def test_a_second_ctrl_c_exits_at_once_when_the_first_cannot_finish(tmp_path):
    """The Prefect server freezes (SIGSTOP: an unresponsive API), then Ctrl-C during a download: the CLI
    cannot record the run, so the first Ctrl-C does not end the command; a second one ends it at once."""
    import signal

    from tests.faults import ThrottledServer, padded_archives

    files = padded_archives(tmp_path / "src")
    work = tmp_path / "work"
    server = None
    with ThrottledServer(files, rate=300_000, chunk=16384) as srv:
        term = Terminal(segpipe("download", "--preset", "tiny", "--source", srv.url, "--work-dir", str(work)),
                        cli_env(tmp_path))
        try:
            wait_for(lambda: srv.sent("images.tar.gz") >= 300_000, timeout=240, proc=term.proc,
                     what="the download to start")
            server = prefect_server_of(term.proc.pid)
            assert server is not None
            os.kill(server, signal.SIGSTOP)
            term.type_ctrl_c()
            time.sleep(3.0)
            assert term.proc.poll() is None, "the first Ctrl-C should still be waiting for the frozen server"
            second = term.type_ctrl_c()
            rc = term.wait(timeout=30)
            exit_s = time.monotonic() - second
        finally:
            if server is not None and alive(server):
                os.kill(server, signal.SIGKILL)
            term.close()
    out = term.drain()
    assert rc == 130, out[-3000:]
    # The second Ctrl-C ended it, while the server was still frozen: the first one's path (record the
    # run, then print its "segpipe download: interrupted ..." line) never got to its end.
    assert "segpipe: interrupted again: stopping now" in out and "Traceback" not in out, out[-3000:]
    assert "segpipe download: interrupted" not in out, out[-3000:]
    part = work / "downloads" / "images.tar.gz.part"
    assert 0 < part.stat().st_size < len(files["images.tar.gz"])
    assert part.read_bytes() == files["images.tar.gz"][:part.stat().st_size]  # what arrived is kept
    print(f"second Ctrl-C: exit {rc} {exit_s:.2f} s after it")


# --------------------------------------------------------------------------- Ctrl-C while a model preloads


def one_image_predict(tmp_path: Path) -> tuple[Path, list[str]]:
    """A tiny .keras model, and the `segpipe predict` command line for one image with it."""
    from PIL import Image

    from segpipe.models import build_model

    model = tmp_path / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(model)
    image = tmp_path / "one.png"
    Image.new("RGB", (40, 30), (200, 50, 50)).save(image)
    return model, segpipe("predict", "--model", str(model), "--out", str(tmp_path / "out"),
                          "--work-dir", str(tmp_path / "work"), str(image))


def test_ctrl_c_while_predict_preloads_its_model_stops_the_child_too(tmp_path):
    """`segpipe predict` with a .keras model and `SEGPIPE_PRELOAD=child` loads it in a child process
    (`segpipe.preload`, in its own session) while Prefect starts. Ctrl-C in that window reaches the command:
    it ends in seconds with exit 130, no traceback and no TensorFlow noise, and the child does not outlive it."""
    from tests.terminal import children_of, cmdline

    _, argv = one_image_predict(tmp_path)
    term = Terminal(argv, cli_env(tmp_path, SEGPIPE_PREFECT_SERVER="embedded", SEGPIPE_PRELOAD="child"))
    try:
        found: list[int] = []
        wait_for(lambda: found.extend(c for c in children_of(term.proc.pid) if "segpipe.preload" in cmdline(c))
                 or found, timeout=120, proc=term.proc, what="the preloading child to start")
        child = found[0]
        rc, exit_s = term.interrupt()
    finally:
        term.close()
    out = term.drain()
    assert rc == 130, out[-3000:]
    assert "Traceback" not in out and not [n for n in NATIVE_NOISE if n in out], out[-3000:]
    wait_for(lambda: not alive(child), timeout=10, what="the preloading child to stop")
    assert not (tmp_path / "out" / "one_mask.png").exists()
    print(f"Ctrl-C while preloading: exit {rc} {exit_s:.2f} s after the keypress; the child stopped")


def test_ctrl_c_while_predict_loads_its_model_in_the_model_host_leaves_the_host_serving(tmp_path):
    """With the model host (`SEGPIPE_PRELOAD=host`, the default outside tests), the model loads in a
    process of its own session: Ctrl-C reaches the command alone, which exits 130 in seconds, without a
    traceback; the host drops that command's models and serves the next command."""
    from segpipe import model_host
    from segpipe.preload import preloaded
    from segpipe_app.cli.server import model_host_dir

    model, argv = one_image_predict(tmp_path)
    host_dir = model_host_dir((tmp_path / "prefect-home").resolve())
    term = Terminal(argv, cli_env(tmp_path, SEGPIPE_PREFECT_SERVER="embedded", SEGPIPE_PRELOAD="host"))
    try:
        found: list[int] = []

        def host_started() -> bool:
            pid = model_host.running_pid(host_dir)
            found.extend([pid] if pid else [])
            return bool(found)

        wait_for(host_started, timeout=120, proc=term.proc, what="the model host to start")
        rc, exit_s = term.interrupt()
        out = term.drain()
        assert rc == 130, out[-3000:]
        assert "Traceback" not in out and not [n for n in NATIVE_NOISE if n in out], out[-3000:]
        assert not (tmp_path / "out" / "one_mask.png").exists()
        assert alive(found[0]) and model_host.running_pid(host_dir) == found[0], "the host did not survive"
        with preloaded([model], flip=False, host_dir=host_dir) as remote:
            assert remote.host is not None and remote.host.pid == found[0]
            assert remote.labels([np.zeros((30, 40, 3), np.uint8)])[0].shape == (30, 40)
        print(f"Ctrl-C with the model host: exit {rc} {exit_s:.2f} s after the keypress; the host serves on")
    finally:
        term.close()
        model_host.stop(host_dir)
