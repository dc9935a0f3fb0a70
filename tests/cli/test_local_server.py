"""segpipe's background Prefect server (`cli.server`): started once per PREFECT_HOME, reused by later commands,
managed with `segpipe server start|status|stop`.

Real commands in subprocesses, real Prefect servers (uvicorn), real signals, a real terminal for Ctrl-C,
the runs read from the server's SQLite database. Each test's PREFECT_HOME comes from `local_server_homes`
(tests/conftest.py), which stops every server started for it. The rest of the suite runs with
SEGPIPE_PREFECT_SERVER=embedded (conftest).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segpipe_app.cli import server
from tests.faults import REPO, child_env, wait_for
from tests.terminal import Terminal, interrupt_lines, recorded_runs, servers_of

STARTING = "segpipe: starting a local Prefect server in the background"


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = child_env(PREFECT_HOME=str(home), SEGPIPE_PREFECT_SERVER="background")
    for name in ("PREFECT_API_URL", "SEGPIPE_SERVER_PORT", "SEGPIPE_DEBUG"):
        env.pop(name, None)
    env.update(extra)
    return env


def segpipe(home: Path, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", *args], cwd=REPO, env=env_for(home, **extra),
                          capture_output=True, text=True, timeout=timeout)


def started(home: Path, *args: str, **extra: str) -> tuple[server.ServerState, str]:
    """`segpipe server start`: the recorded server (checked to run and answer) and what the command said."""
    proc = segpipe(home, "server", "start", *args, **extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = server.read_state(home)
    assert state is not None and state.prefect_home == str(home.resolve())
    assert f"local Prefect server running: {state.api_url} (pid {state.pid}," in proc.stdout, proc.stdout
    assert server.alive(state.pid) and server.owns_port(state.pid, state.port) and server.healthy(state.port)
    return state, proc.stderr


def edit_state(home: Path, **changes) -> None:
    path = home / "segpipe-server" / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def small_archives(pets_archives) -> Path:
    """The session's archives of 2 images per breed, nothing odd (conftest's `pets_archives`): a quick download."""
    return pets_archives(n_per_breed=2, include_odd=False)


# --------------------------------------------------------------------------- which server a command uses (no server)


def test_the_users_api_url_wins_from_the_environment_or_the_active_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    assert server.configured_api_url() is None
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.example:4200/api"\n'
        '[profiles.local]\nPREFECT_LOGGING_LEVEL = "DEBUG"\n'
    )
    assert server.configured_api_url() == "http://prefect.example:4200/api"
    monkeypatch.setenv("PREFECT_PROFILE", "local")
    assert server.configured_api_url() is None
    monkeypatch.setenv("PREFECT_API_URL", "https://api.prefect.cloud/api/accounts/a/workspaces/w")
    assert server.configured_api_url() == "https://api.prefect.cloud/api/accounts/a/workspaces/w"


def test_status_says_when_the_users_server_is_used_or_the_mode_is_wrong(tmp_path):
    home = tmp_path / "home"
    proc = segpipe(home, "server", "status", PREFECT_API_URL="http://127.0.0.1:9/api")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "PREFECT_API_URL is set (http://127.0.0.1:9/api): segpipe commands use that server, not a local one",
        f"no local Prefect server running for PREFECT_HOME={home.resolve()}",
    ]
    proc = segpipe(home, "server", "start", SEGPIPE_PREFECT_SERVER="forever")
    assert proc.returncode == 2
    assert "SEGPIPE_PREFECT_SERVER='forever': expected one of background, embedded" in proc.stderr
    assert not (home / "segpipe-server" / "state.json").exists()


# --------------------------------------------------------------------------- real servers


@pytest.mark.slow
def test_two_commands_starting_at_once_start_one_server_and_both_run_on_it(local_server_homes, pets_archives,
                                                                           tmp_path):
    home = local_server_homes()
    archives = small_archives(pets_archives)
    argv = [sys.executable, "-m", "segpipe_app.cli.main", "download", "--preset", "tiny", "--source", str(archives)]
    procs = [subprocess.Popen([*argv, "--work-dir", str(tmp_path / f"work{i}")], cwd=REPO, env=env_for(home),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stderr = "".join(err for _, err in outs)
    assert stderr.count(STARTING) == 1, stderr
    assert "Traceback" not in stderr

    state = server.read_state(home)
    assert state is not None and servers_of(home) == [state.pid]
    assert stderr.count(f"View at http://127.0.0.1:{state.port}/") >= 2, stderr  # both ran on it
    wait_for(lambda: recorded_runs(home)["flows"].count(("download-data", "Completed")) == 2, timeout=30,
             what="both download flow runs recorded Completed by the shared server")

    status = segpipe(home, "server", "status")
    assert status.returncode == 0 and f"(pid {state.pid}, port {state.port}, " in status.stdout, status.stdout
    # the server serves Prefect's UI, pointed at its own API (not the default port 4200)
    assert f"Prefect UI: http://127.0.0.1:{state.port}\n" in status.stdout
    import httpx

    page = httpx.get(f"http://127.0.0.1:{state.port}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    ui_settings = httpx.get(f"http://127.0.0.1:{state.port}/ui-settings", timeout=30).json()
    assert ui_settings["api_url"] == f"http://127.0.0.1:{state.port}/api", ui_settings
    stop = segpipe(home, "server", "stop")
    assert stop.returncode == 0 and stop.stdout.startswith(f"stopped the local Prefect server (pid {state.pid},")
    assert not server.alive(state.pid) and servers_of(home) == []
    status = segpipe(home, "server", "status")
    assert status.returncode == 1 and status.stdout.startswith("no local Prefect server running"), status.stdout


@pytest.mark.slow
def test_a_server_that_hangs_or_was_killed_is_replaced_with_a_message(local_server_homes):
    home = local_server_homes()
    first, said = started(home)
    assert STARTING in said

    os.kill(first.pid, signal.SIGSTOP)  # hangs: the health check times out
    second, said = started(home)
    assert (f"segpipe: the local Prefect server ({first.describe()}) did not answer within "
            f"{server.HEALTH_TIMEOUT_S:g} s; stopped it, starting a new one") in said, said
    assert second.pid != first.pid and not server.alive(first.pid)

    os.kill(second.pid, signal.SIGKILL)  # killed: a stale record
    wait_for(lambda: not server.alive(second.pid), timeout=10, what="the killed server to go")
    third, said = started(home)
    assert (f"segpipe: the local Prefect server ({second.describe()}) is no longer running; "
            "starting a new one") in said, said
    assert third.pid not in (first.pid, second.pid) and servers_of(home) == [third.pid]

    again, said = started(home)  # healthy: reused, silently
    assert again == third and said == ""


@pytest.mark.slow
def test_a_server_of_another_prefect_home_or_version_is_not_reused(local_server_homes):
    home_a, home_b = local_server_homes("home-a"), local_server_homes("home-b")
    a, _ = started(home_a)

    # home B holds a record of home A's server (a copied folder): B gets its own, A's is left alone
    (home_b / "segpipe-server").mkdir()
    (home_b / "segpipe-server" / "state.json").write_text((home_a / "segpipe-server" / "state.json").read_text())
    b, said = started(home_b)
    assert (f"segpipe: {home_b.resolve() / 'segpipe-server' / 'state.json'} records a server of "
            f"PREFECT_HOME={home_a.resolve()}, not of this one; starting a new one") in said, said
    assert b.pid != a.pid and servers_of(home_b) == [b.pid]
    assert server.alive(a.pid) and server.healthy(a.port)

    # home A's server runs another Prefect version than the one installed now: stopped, replaced
    edit_state(home_a, prefect_version="2.20.0")
    a2, said = started(home_a)
    assert (f"segpipe: the local Prefect server (pid {a.pid}, port {a.port}, Prefect 2.20.0) runs another "
            f"Prefect version than this one ({server.prefect_version()}); stopped it, starting a new one") in said
    assert a2.prefect_version == server.prefect_version() and not server.alive(a.pid)
    assert servers_of(home_a) == [a2.pid] and server.alive(b.pid)


class ForeignListener:
    """A process that is not Prefect's, listening on a port: counts every connection made to it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.slow
def test_a_port_taken_by_another_process_is_never_spoken_to(local_server_homes, monkeypatch):
    home = local_server_homes()
    monkeypatch.setenv("SEGPIPE_SERVER_WATCH_S", "1")  # inherited by the commands, and by their servers
    foreign = ForeignListener()
    try:
        # the port asked for is taken: a free one instead
        first, said = started(home, SEGPIPE_SERVER_PORT=str(foreign.port))
        assert (f"segpipe: port {foreign.port} (SEGPIPE_SERVER_PORT) is in use by another process; the local "
                "Prefect server takes a free port") in said, said
        assert first.port != foreign.port

        # the record points at the foreign port (the server lost its port, another process took it)
        edit_state(home, port=foreign.port)
        status = segpipe(home, "server", "status")
        assert status.returncode == 1 and "no longer listens on its port" in status.stdout, status.stdout
        second, said = started(home)
        assert "no longer listens on its port; stopped it, starting a new one" in said, said
        assert not server.alive(first.pid) and second.port != foreign.port

        # the recorded pid is now a foreign process (pid reuse): not ours, not stopped, not asked
        edit_state(home, pid=os.getpid(), port=foreign.port)
        third, said = started(home)
        assert f"(pid {os.getpid()}, port {foreign.port}, " in said and "is no longer running" in said, said
        assert "stopped it" not in said and third.pid != os.getpid() and server.alive(os.getpid())
        # the server the record no longer names stops by itself (its watch, every second here)
        wait_for(lambda: not server.alive(second.pid), timeout=60, what="the unrecorded server to stop itself")
        assert servers_of(home) == [third.pid]
        time.sleep(0.3)
        assert foreign.connections == 0, "a segpipe command connected to a port that is not its server's"
    finally:
        foreign.close()


@pytest.mark.slow
def test_ctrl_c_with_the_background_server_records_the_run_and_leaves_the_server_running(local_server_homes,
                                                                                           tmp_path):
    from tests.faults import ThrottledServer, padded_archives

    home = local_server_homes()
    files = padded_archives(tmp_path / "src")
    env = env_for(home)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    with ThrottledServer(files, rate=300_000, chunk=16384) as srv:
        term = Terminal([sys.executable, "-m", "segpipe_app.cli.main", "download", "--preset", "tiny", "--source", srv.url,
                         "--work-dir", str(tmp_path / "work")], env)
        try:
            wait_for(lambda: srv.sent("images.tar.gz") >= 300_000, timeout=300, proc=term.proc,
                     what="the download to start")
            state = server.read_state(home)
            assert state is not None and os.getpgid(state.pid) != term.foreground_group()
            rc, exit_s = term.interrupt()
        finally:
            term.close()
    out = term.drain()
    assert rc == 130, out[-3000:]
    assert exit_s < 10, f"exit took {exit_s:.1f} s after Ctrl-C"
    lines = interrupt_lines(out)
    assert len(lines) == 1 and lines[0]["stages"] == "download", out[-3000:]
    recorded = lines[0]["recorded"]
    assert re.fullmatch(r"(; Prefect recorded download-data run '[\w-]+' as Crashed)+", recorded), lines[0][0]
    assert "Traceback" not in out and "Connection refused" not in out, out[-3000:]

    assert server.alive(state.pid) and server.healthy(state.port), "Ctrl-C must not stop the shared server"
    runs = recorded_runs(home)
    assert ("download-data", "Crashed") in runs["flows"] and ("download", "Crashed") in runs["tasks"], runs
    assert not [r for r in runs["flows"] + runs["tasks"] if r[1] in ("Running", "Pending")], runs
    print(f"Ctrl-C on the background server: exit {rc} {exit_s:.2f} s after the keypress, run Crashed, "
          f"server pid {state.pid} still answering")


@pytest.mark.slow
def test_a_command_killed_while_its_server_starts_leaves_one_server_behind_at_most(local_server_homes):
    """The record is written as soon as the server is spawned: the next command finds a server that was never
    confirmed and either reuses it (it answers by then) or stops it; never a second, unrecorded one."""
    home = local_server_homes()
    proc = subprocess.Popen([sys.executable, "-m", "segpipe_app.cli.main", "server", "start"], cwd=REPO, env=env_for(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server.read_state(home) is not None, timeout=60, proc=proc, what="the server's record")
        orphan = server.read_state(home)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert server.alive(orphan.pid), "the server outlives the command that started it"
    state, said = started(home)
    assert servers_of(home) == [state.pid], said
    assert state.pid == orphan.pid or ("stopped it, starting a new one" in said and not server.alive(orphan.pid)), said


@pytest.mark.slow
def test_the_users_api_url_wins_and_the_embedded_mode_starts_no_background_server(local_server_homes, pets_archives,
                                                                                  tmp_path):
    archives = small_archives(pets_archives)
    users = local_server_homes("users-server")  # stands for the user's own server (a background one, found by URL)
    theirs, _ = started(users)
    home = local_server_homes()
    argv = ["download", "--preset", "tiny", "--source", str(archives)]

    proc = segpipe(home, *argv, "--work-dir", str(tmp_path / "w1"), PREFECT_API_URL=theirs.api_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert STARTING not in proc.stderr and f"View at http://127.0.0.1:{theirs.port}/" in proc.stderr
    wait_for(lambda: ("download-data", "Completed") in recorded_runs(users)["flows"], timeout=30,
             what="the run recorded on the user's server")

    proc = segpipe(home, *argv, "--work-dir", str(tmp_path / "w2"), SEGPIPE_PREFECT_SERVER="embedded")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert STARTING not in proc.stderr
    assert ("download-data", "Completed") in recorded_runs(home)["flows"]  # on the embedded server, in home's db
    assert not (home / "segpipe-server" / "state.json").exists() and servers_of(home) == []
    assert recorded_runs(users)["flows"].count(("download-data", "Completed")) == 1


@pytest.mark.slow
def test_a_server_stops_by_itself_once_its_prefect_home_is_gone(local_server_homes, monkeypatch):
    """A temporary PREFECT_HOME deleted (a test's, a benchmark's) leaves no server running for ever."""
    import shutil

    monkeypatch.setenv("SEGPIPE_SERVER_WATCH_S", "1")
    home = local_server_homes()
    state, _ = started(home)
    time.sleep(3)  # three checks of a record that names it: it keeps serving
    assert server.alive(state.pid) and server.healthy(state.port)
    shutil.rmtree(home)
    wait_for(lambda: not server.alive(state.pid), timeout=60, what="the server to stop by itself")


@pytest.mark.slow
def test_when_no_server_can_be_started_the_command_says_so_and_runs_on_the_embedded_one(local_server_homes,
                                                                                         pets_archives, tmp_path):
    archives = small_archives(pets_archives)
    home = local_server_homes()
    (home / "segpipe-server").write_text("a file where the server's folder goes")
    proc = segpipe(home, "download", "--preset", "tiny", "--source", str(archives), "--work-dir", str(tmp_path / "w"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    notice = [line for line in proc.stderr.splitlines() if line.startswith("segpipe: no local Prefect server:")]
    assert len(notice) == 1 and str(home / "segpipe-server") in notice[0], proc.stderr[-3000:]
    assert notice[0].endswith("; this command uses Prefect's embedded server") and "Traceback" not in proc.stderr
    assert ("download-data", "Completed") in recorded_runs(home)["flows"] and servers_of(home) == []
