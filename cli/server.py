"""The local Prefect server: started in the background by the first command that needs one, reused by the
commands after it, managed with `segpipe server start|status|stop`.

Prefect's embedded (ephemeral) API costs about 8 s per command: a uvicorn process that starts, migrates its
SQLite database and stops again. Here the first command of a `PREFECT_HOME` starts the same server (same
app, same services, same database, `PREFECT_HOME/prefect.db`) as a long-lived process, and later commands
point `PREFECT_API_URL` at it.

- A user's own `PREFECT_API_URL` (in the environment or in the active Prefect profile) always wins.
- `SEGPIPE_PREFECT_SERVER=embedded` keeps Prefect's embedded server per command (the old behaviour);
  `background` (the default) uses this module. A caller that imported Prefect already (a test, a
  notebook calling `cli.main.main`) gets the embedded server too: the API URL must be set before Prefect
  reads its settings.
- State, lock and log in `PREFECT_HOME/segpipe-server/`: `state.json` (pid, port, Prefect version,
  PREFECT_HOME), `lock` (an flock: two commands starting at once start one server), `server.log`.
- A recorded server is reused only if its process is alive, is a Prefect server, holds the recorded
  port's listening socket (checked in /proc, before anything is sent to the port), runs this Prefect
  version for this PREFECT_HOME, and answers `/api/health` within `HEALTH_TIMEOUT_S`. Otherwise it is
  not reused; one that is ours but hangs or runs another Prefect version is stopped first.
- The server runs in its own session: the terminal's Ctrl-C never reaches it.

No Prefect import here: `segpipe server status` answers in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from segpipe.processes import alive  # every thread of it, not only the main one
from segpipe_app.cli.errors import CliError
from segpipe_app.cli.prefectcompat import EMBEDDED_SERVER_ENV, SERVER_APP

MODE_ENV = "SEGPIPE_PREFECT_SERVER"  # "background" (default) or "embedded"
MODES = ("background", "embedded")
PORT_ENV = "SEGPIPE_SERVER_PORT"  # the port to try first (else any free port)
HEALTH_TIMEOUT_S = 3.0
LOCK_TIMEOUT_S = 180.0
APP = SERVER_APP

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"segpipe: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- where, which, whose


def prefect_home() -> Path:
    """`PREFECT_HOME`, or Prefect's default `~/.prefect`, resolved."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


def state_dir(home: Path) -> Path:
    return home / "segpipe-server"


def model_host_dir(home: Path | None = None) -> Path:
    """The folder of the model host `segpipe predict` uses (`segpipe.model_host`): beside the server's state,
    so that `segpipe server stop` stops both."""
    return state_dir(home or prefect_home()) / "model-host"


def prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def mode() -> str:
    value = os.environ.get(MODE_ENV, "").strip().lower() or "background"
    if value not in MODES:
        raise CliError(f"{MODE_ENV}={os.environ[MODE_ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def configured_api_url() -> str | None:
    """The user's Prefect API: `PREFECT_API_URL` in the environment, else in the active Prefect profile."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    import tomllib

    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    profile = profiles.get("profiles", {}).get(active) or {}
    return str(profile["PREFECT_API_URL"]) if profile.get("PREFECT_API_URL") else None


@dataclass(frozen=True)
class ServerState:
    """What `state.json` records about the server a segpipe command started."""

    pid: int
    port: int
    prefect_version: str
    prefect_home: str
    started_at: str
    log: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def describe(self) -> str:
        return f"pid {self.pid}, port {self.port}, Prefect {self.prefect_version}"


def read_state(home: Path) -> ServerState | None:
    try:
        raw = json.loads((state_dir(home) / "state.json").read_text())
        return ServerState(**{k: raw[k] for k in ServerState.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    from segpipe.fsutil import atomic_write_json

    atomic_write_json(state_dir(home) / "state.json", asdict(state))


def _forget_state(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir(home) / "state.json").unlink()


# --------------------------------------------------------------------------- processes and ports (Linux /proc)


_HAS_PROC = Path("/proc/self/fd").is_dir()  # Linux; elsewhere a live recorded pid is trusted (no port check)


def is_prefect_server(pid: int) -> bool:
    """The process runs Prefect's server app under uvicorn (so a reused pid is not taken for ours)."""
    if not _HAS_PROC:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return APP.encode() in cmdline and any(b"uvicorn" in part for part in cmdline)  # `-m uvicorn` or _WATCHED


def owns_port(pid: int, port: int) -> bool:
    """`pid` holds the socket listening on 127.0.0.1:`port` (or on every address), read from /proc: this is
    checked before anything is sent to the port, so a foreign process that took the port hears nothing."""
    if not _HAS_PROC:
        return True
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(fd.path) in inodes:
                    return True
    return False


def healthy(port: int, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Prefect's `/api/health` answers 200 within `timeout`. Ask only a process that `owns_port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def port_is_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM to the server's process group (it leads its own session), SIGCONT in case it was stopped,
    then SIGKILL if it is still there after `timeout` seconds."""
    try:
        send = os.killpg if os.getpgid(pid) == pid else os.kill
    except OSError:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(OSError):
            send(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(OSError):
            send(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


# --------------------------------------------------------------------------- the recorded server: reuse it or not


@dataclass(frozen=True)
class Verdict:
    state: ServerState | None
    reusable: bool
    ours: bool  # a server of this PREFECT_HOME that a segpipe command started (so we may stop it)
    why: str  # why it is not reused, as the end of a sentence; "" when reusable or when nothing is recorded


def check(home: Path) -> Verdict:
    """Is the server recorded under `home` one to reuse? Never sends anything to a process that is not the
    recorded server (see `owns_port`)."""
    state = read_state(home)
    if state is None:
        return Verdict(None, False, False, "")
    if Path(state.prefect_home) != home:
        return Verdict(state, False, False, f"{state_dir(home) / 'state.json'} records a server of "
                                            f"PREFECT_HOME={state.prefect_home}, not of this one")
    if not alive(state.pid) or not is_prefect_server(state.pid):
        return Verdict(state, False, False, f"the local Prefect server ({state.describe()}) is no longer running")
    if not owns_port(state.pid, state.port):
        return Verdict(state, False, True, f"the local Prefect server ({state.describe()}) no longer listens "
                                           f"on its port")
    if state.prefect_version != prefect_version():
        return Verdict(state, False, True, f"the local Prefect server ({state.describe()}) runs another Prefect "
                                           f"version than this one ({prefect_version()})")
    if not healthy(state.port):
        return Verdict(state, False, True, f"the local Prefect server ({state.describe()}) did not answer "
                                           f"within {HEALTH_TIMEOUT_S:g} s")
    return Verdict(state, True, True, "")


@contextlib.contextmanager
def _locked(home: Path, timeout: float = LOCK_TIMEOUT_S):
    """The start/stop lock of `home`'s server: one command at a time checks, starts or stops it."""
    folder = state_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CliError(f"another segpipe command has held {folder / 'lock'} for over {timeout:g} s "
                                   "(starting or stopping the local Prefect server)") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- starting one


def _server_env(home: Path, port: int) -> dict[str, str]:
    """The command's environment for the server, as Prefect's embedded server gets it, minus any API URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")}
    env.update(EMBEDDED_SERVER_ENV)  # how Prefect launches its embedded server...
    # ...but with Prefect's UI: a long-lived local server is where a user looks at runs (`segpipe server status`
    # prints its address). Prefect serves the UI only from a server not marked ephemeral.
    env.pop("PREFECT__SERVER_EPHEMERAL", None)
    env.update({"PREFECT_UI_ENABLED": "1", "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"})
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    })
    return env


def _choose_port(say: Say) -> int:
    wanted = os.environ.get(PORT_ENV, "").strip()
    if wanted:
        try:
            port = int(wanted)
        except ValueError:
            raise CliError(f"{PORT_ENV}={wanted!r}: expected a port number") from None
        if port_is_free(port):
            return port
        say(f"port {port} ({PORT_ENV}) is in use by another process; the local Prefect server takes a free port")
    return _free_port()


WATCH_ENV = "SEGPIPE_SERVER_WATCH_S"  # how often the server checks that its record still names it
WATCH_S = 30.0

# The server's process: a thread that stops it (SIGTERM, uvicorn's graceful shutdown) once PREFECT_HOME's
# record has not named it twice in a row (`segpipe server stop` forgot it, another command replaced it, or
# PREFECT_HOME was deleted: a temporary home, a benchmark's), then uvicorn's own command line, in-process.
_WATCHED = """
import json, os, signal, sys, threading, time
record, period = sys.argv[1], float(sys.argv[2])
def watch():
    missed = 0
    while missed < 2:
        time.sleep(period)
        try:
            with open(record) as f:
                missed = 0 if json.load(f).get("pid") == os.getpid() else missed + 1
        except (OSError, ValueError, AttributeError):
            missed += 1
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, name="segpipe-record-watch", daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[3:]]
from uvicorn.main import main
main()
"""


def _watch_period() -> float:
    value = os.environ.get(WATCH_ENV, "").strip()
    try:
        return float(value) if value else WATCH_S
    except ValueError:
        raise CliError(f"{WATCH_ENV}={value!r}: expected seconds") from None


class Starting:
    """A server being started: the lock is held until it answers (`wait`) or is given up (`close`)."""

    def __init__(self, home: Path, say: Say):
        self.home, self.say = home, say
        self.state: ServerState | None = None  # set once the server answers (or is reused)
        self.pending: ServerState | None = None  # the server being started
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._lock = _locked(home)
        self._lock.__enter__()

    def spawn(self, port: int) -> None:
        self.port = port
        log = state_dir(self.home) / "server.log"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WATCHED, str(state_dir(self.home) / "state.json"), str(_watch_period()),
                 "--app-dir", str(_prefect_root()), "--factory", APP,
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                env=_server_env(self.home, port), cwd=state_dir(self.home), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,  # out of the terminal's reach
            )
        # recorded at once: should this command die before the server answers, the next one finds it (ours,
        # not listening or not answering) and stops it instead of leaving it behind
        self.pending = ServerState(self.process.pid, port, prefect_version(), str(self.home),
                                   datetime.now(timezone.utc).isoformat(timespec="seconds"), str(log))
        _write_state(self.home, self.pending)

    def wait(self, timeout: float | None = None) -> ServerState:
        """Until the server answers; a port taken in the meantime means another free port (3 tries)."""
        if self.state is not None:
            return self.state
        timeout = timeout or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 90)
        assert self.process is not None
        tries = 3
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tries -= 1
                if tries == 0 or port_is_free(self.port):  # it died, and not because its port was taken
                    break
                self.spawn(_free_port())
                continue
            if owns_port(self.process.pid, self.port) and healthy(self.port):
                self.state = self.pending
                self._release()
                return self.state
            time.sleep(0.1)
        code = self.process.poll()
        self.close()
        what = (f"exited (status {code}) before it answered" if code is not None
                else f"did not answer within {timeout:g} s")
        raise CliError(f"the local Prefect server {what} (see {state_dir(self.home) / 'server.log'})")

    def close(self) -> None:
        """Give up: stop a server that never answered, release the lock. Safe to call again."""
        if self.state is None and self.process is not None:
            if self.process.poll() is None:
                stop_process(self.process.pid)
                with contextlib.suppress(Exception):
                    self.process.wait(timeout=1)
            if read_state(self.home) == self.pending:
                _forget_state(self.home)
        self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)


def _prefect_root() -> Path:
    """The folder holding the `prefect` package, found without importing it (uvicorn's --app-dir)."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise CliError("Prefect is not installed in this environment")
    return Path(spec.origin).parent.parent


def begin(home: Path | None = None, say: Say = _stderr) -> Starting:
    """Reuse `home`'s server or start one (without waiting for it: call `wait` on the result).

    Holds the lock from the check until the new server answers, so a second command that starts at the
    same moment waits for this server and reuses it."""
    home = home or prefect_home()
    starting = Starting(home, say)
    try:
        verdict = check(home)
        if verdict.reusable:
            assert verdict.state is not None
            starting.state = verdict.state
            starting._release()
            return starting
        if verdict.why:
            stopped = verdict.ours and alive(verdict.state.pid) and is_prefect_server(verdict.state.pid)
            if stopped:
                stop_process(verdict.state.pid)
            say(f"{verdict.why}; {'stopped it, ' if stopped else ''}starting a new one")
        else:
            say(f"starting a local Prefect server in the background for PREFECT_HOME={home} (once: later commands "
                "reuse it; `segpipe server stop` stops it)")
        starting.spawn(_choose_port(say))
        return starting
    except BaseException:
        starting.close()
        raise


def ensure(home: Path | None = None, say: Say = _stderr) -> ServerState:
    starting = begin(home, say)
    try:
        return starting.wait()
    finally:
        starting.close()


def stop(home: Path | None = None) -> ServerState | None:
    """Stop `home`'s server if a segpipe command started it and it runs; forget its record. Returns it."""
    home = home or prefect_home()
    with _locked(home):
        state = read_state(home)
        if state is None or Path(state.prefect_home) != home:
            return None
        running = alive(state.pid) and is_prefect_server(state.pid)
        if running:
            stop_process(state.pid)
        _forget_state(home)
        return state if running else None


# --------------------------------------------------------------------------- what a command uses

_in_use: ServerState | None = None


def local_api_url() -> str | None:
    """The API URL of the background server this process uses, if it uses one."""
    return _in_use.api_url if _in_use is not None else None


def for_command(say: Say = _stderr) -> Starting | None:
    """Before Prefect is imported: unless the user configured an API or opted out, point `PREFECT_API_URL`
    at `PREFECT_HOME`'s background server, reused or being started (pass the result to `ready` before the
    first flow). When no server can be had, say so: the command runs on Prefect's embedded server."""
    if mode() == "embedded" or configured_api_url() or "prefect" in sys.modules:
        return None
    try:
        starting = begin(say=say)
    except (CliError, OSError) as exc:
        say(f"no local Prefect server: {exc}; this command uses Prefect's embedded server")
        return None
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{starting.port or starting.state.port}/api"
    return starting


def ready(starting: Starting, say: Say = _stderr) -> ServerState | None:
    """Wait for the server `for_command` started (following it if its port changed on the way); if it
    does not start, the command runs on Prefect's embedded server."""
    global _in_use
    try:
        state = starting.wait()
    except (CliError, OSError) as exc:
        os.environ.pop("PREFECT_API_URL", None)
        say(f"no local Prefect server: {exc}; this command uses Prefect's embedded server")
        return None
    os.environ["PREFECT_API_URL"] = state.api_url
    _in_use = state
    return state
