"""A long-lived process that has imported TensorFlow once, where `segpipe predict` loads its `.keras` models.

A one-image predict spends ~3 s importing TensorFlow and ~1.5 s loading the model, every time
(BENCHMARKS.md, section 8). The model host pays the import once: the first `segpipe predict` starts it
in the background, later ones connect to it, each loads its models there (the model load stays in every
command) and predicts through it with the protocol of `segpipe.preload`. It stops after `idle_s` seconds
without a connection, or when asked (`stop`).

    sock = connect(Path("~/.prefect/segpipe-server/model-host"), idle_s=900)   # None: use a child instead

- **Where:** an abstract Unix socket (Linux), named after the host's folder (`address`): no file to go
  stale, the kernel frees the name when the process dies, and only one process can hold it, so two
  commands starting at once end up with one host. The folder holds its log, `model-host.log`.
- **Whose:** both ends check the other's user id (`SO_PEERCRED`): the socket is reachable by any local
  user, and the protocol is pickle.
- **Which:** the host greets each connection with its version (`version`: the digest of segpipe's sources,
  the interpreter), within `HELLO_TIMEOUT_S`; the caller reads its pid off the socket. A host of another
  version (segpipe changed since it started) or one that does not greet in time (hung, stopped) is stopped
  and replaced. The host imports TensorFlow only after its first greeting: that import holds the GIL for
  seconds at a time, and a greeting stuck behind it would read as a hung host.
- **Signals:** the host runs in its own session and ignores SIGINT: a terminal's Ctrl-C reaches the
  command, which closes its connection; the host drops that connection's models and carries on.

On other platforms `connect` returns None and `segpipe.preload` starts a child per command, as before.
No Prefect here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from segpipe import processes

HELLO_TIMEOUT_S = 10.0  # a host that has not greeted a new connection by then is hung: replace it
BIND_TIMEOUT_S = 20.0  # for a host just started to listen (it listens before importing TensorFlow)
LOG_NAME = "model-host.log"
_ROOT = Path(__file__).resolve().parent


def supported() -> bool:
    """Abstract Unix sockets and `SO_PEERCRED` are Linux's."""
    return sys.platform.startswith("linux")


def address(host_dir: Path) -> str:
    """The abstract socket name of the host of `host_dir` (one host per folder)."""
    digest = hashlib.sha256(str(Path(host_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0segpipe-model-host-{digest}"


def version() -> str:
    """What a host must run to serve this caller: the interpreter and the bytes of every segpipe source file."""
    h = hashlib.sha256(f"{sys.executable}\n{sys.version}\n".encode())
    for path in sorted(_ROOT.rglob("*.py")):
        h.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def peer(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket."""
    pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


# --------------------------------------------------------------------------- the caller's side


class Host:
    """A connection to a model host that greeted it: `sock`, and the host's `pid`."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock, self.pid = sock, pid


def connect(host_dir: Path, idle_s: float) -> Host | None:
    """A greeted connection to the model host of `host_dir`: the running one, or one started now.

    A host of another version, or one that does not greet within `HELLO_TIMEOUT_S`, is stopped and a new one
    started (once). None when no host can be had (not Linux, a socket held by another user, a host that
    does not start): the caller then loads its models without one."""
    if not supported():
        return None
    host_dir = Path(host_dir)
    for _ in range(2):
        sock = _dial(host_dir)
        if sock is None:
            start(host_dir, idle_s)
            sock = _dial(host_dir, wait=BIND_TIMEOUT_S)
            if sock is None:
                return None
        pid, uid = peer(sock)
        if uid != os.getuid():  # someone else's process holds the name: never talk to it, never signal it
            sock.close()
            return None
        hello = _hello(sock)
        if hello is not None and hello[1] == version():
            return Host(sock, pid)
        sock.close()
        _terminate(pid)  # another version, or hung: this user's own host, replaced
    return None


def _dial(host_dir: Path, wait: float = 0.0) -> socket.socket | None:
    """A connected socket, or None when nobody listens (retrying for `wait` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address(host_dir))
            return sock
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _hello(sock: socket.socket) -> tuple[str, str] | None:
    """The host's greeting ("hello", version), or None if it does not come within `HELLO_TIMEOUT_S`."""
    sock.settimeout(HELLO_TIMEOUT_S)
    try:
        message = pickle.load(sock.makefile("rb", buffering=0))
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    return message if isinstance(message, tuple) and len(message) == 2 and message[0] == "hello" else None


def start(host_dir: Path, idle_s: float) -> subprocess.Popen:
    """Start a host for `host_dir` in its own session, logging to `host_dir/model-host.log`. If another
    starts at the same moment, one of the two gets the socket and the other exits at once."""
    host_dir.mkdir(parents=True, exist_ok=True)
    with open(host_dir / LOG_NAME, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "segpipe.model_host", str(host_dir), repr(float(idle_s))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
        )


def running_pid(host_dir: Path) -> int | None:
    """The pid of this user's host of `host_dir`, if one listens (without greeting it)."""
    if not supported():
        return None
    sock = _dial(host_dir)
    if sock is None:
        return None
    with sock:
        pid, uid = peer(sock)
    return pid if uid == os.getuid() else None


def stop(host_dir: Path, timeout: float = 5.0) -> int | None:
    """Stop the host of `host_dir`; its pid, or None if none ran."""
    pid = running_pid(host_dir)
    if pid is not None:
        _terminate(pid, timeout)
    return pid


def _terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, so that a stopped process gets it), then SIGKILL after `timeout`."""
    for signals in ((signal.SIGTERM, signal.SIGCONT), (signal.SIGKILL,)):
        for sig in signals:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not processes.alive(pid):
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------- the host


class _Activity:
    """Open connections and when the last one ended: the host stops after `idle_s` with none open."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.since = time.monotonic()

    def enter(self) -> None:
        with self.lock:
            self.open += 1

    def leave(self) -> None:
        with self.lock:
            self.open -= 1
            self.since = time.monotonic()

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.open else time.monotonic() - self.since


def _serve_connection(conn: socket.socket, activity: _Activity, warm: threading.Event) -> None:
    """One caller: its ("load", flip, paths, tta_sizes) request, then `segpipe.preload.serve` until it hangs up."""
    from segpipe.preload import serve

    try:
        with conn, conn.makefile("rb") as requests, conn.makefile("wb") as answers:
            request = pickle.load(requests)
            if not (isinstance(request, tuple) and len(request) == 4 and request[0] == "load"):
                return
            warm.wait()
            serve(bool(request[1]), [str(p) for p in request[2]], requests, answers, [int(s) for s in request[3]])
    except (OSError, EOFError, pickle.UnpicklingError):
        pass  # the caller went away (Ctrl-C, a crash): drop its models, serve the others
    finally:
        activity.leave()


def _warm_up(warm: threading.Event) -> None:
    """Import TensorFlow and Keras now, before the first caller asks for a model."""
    try:
        import segpipe.evaluation.ensemble  # noqa: F401
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        warm.set()


def serve_forever(host_dir: Path, idle_s: float) -> int:
    """The host: listen on `address(host_dir)` (or exit if another host has it), greet and serve every
    connection of this user on its own thread, stop after `idle_s` seconds with no connection open."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(host_dir))
    except OSError:  # another host was started at the same moment and holds the name
        return 0
    listener.listen(16)
    listener.settimeout(min(1.0, idle_s))
    print(f"model host {os.getpid()} listening for {host_dir} (stops after {idle_s:g} s idle)", file=sys.stderr, flush=True)
    me, activity, warm = version(), _Activity(), threading.Event()
    warming = threading.Thread(target=_warm_up, args=(warm,), name="warm-up", daemon=True)
    while activity.idle_for() < idle_s:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        if peer(conn)[1] != os.getuid():
            conn.close()
            continue
        try:
            conn.sendall(pickle.dumps(("hello", me), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            conn.close()
            continue
        activity.enter()
        threading.Thread(target=_serve_connection, args=(conn, activity, warm), daemon=True).start()
        if not warming.is_alive() and not warm.is_set():
            # Only now, after the first greeting: importing TensorFlow holds the GIL for seconds at a time
            # (loading its libraries), and a greeting stuck behind it would read as a hung host.
            warming.start()
    print(f"model host {os.getpid()} stopping: idle for {idle_s:g} s", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the command, not for the host
    os.dup2(2, 1)  # whatever a library prints goes to the log
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the log keeps warnings and errors, not TensorFlow's chatter
    code = serve_forever(Path(argv[0]), float(argv[1]))
    sys.stderr.flush()
    os._exit(code)  # without tearing TensorFlow down thread by thread: nothing here needs saving


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
