"""Shared fault-injection helpers for the reliability suite (`tests/test_reliability_*.py`).

- `ThrottledServer`: the loopback server of `tests.httpserver`, serving bodies slowly and/or
  stalling once mid-body, and counting the body bytes it actually put on the wire (even when the
  client dies half way), so tests can measure "bytes lost" = bytes sent twice.
- `enospc_open`: make Python writes fail with ENOSPC after a byte budget; `record_writer_on_a_full_device`:
  a real `TFRecordWriter` writing to /dev/full.
- `tmpfs_available`, `run_on_full_disk`: a real, small tmpfs (private mount namespace, no root
  needed where user namespaces are allowed) for a real "No space left on device".
- `spawn_python`, `wait_for`, `sigkill`: real child processes and real signals.
- `prepare_library`: the library's data stage (`segpipe.data.prepare.prepare_dataset`, what the
  `prepare-data` flow's tasks call), without Prefect, for child processes that must start fast;
  `write_dataset`: its validate-to-manifest part into any directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tests.httpserver import LoopbackServer, _Handler, _Server

REPO = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FaultScript:
    """Faults applied in order, one per request, then none; stands in for a `Fault` in `srv.faults[path]`.

    `LoopbackServer` consumes a fault by decrementing `times`; here that moves to the next step.
    """

    def __init__(self, *steps: Any):
        self.steps, self.current = list(steps), None

    @property
    def times(self) -> int:
        return 1 if self.steps else 0

    @times.setter
    def times(self, _: int) -> None:
        self.current = self.steps.pop(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["current"], name)


# --------------------------------------------------------------------------- a slow, stalling server


class _MeteredWriter:
    """Wraps a handler's wfile: body bytes go out in `chunk`s at `rate` bytes/s, with an optional stall."""

    def __init__(self, raw: Any, handler: "_ThrottledHandler"):
        self.raw, self.handler = raw, handler

    def write(self, data: bytes) -> int:
        h = self.handler
        if not h.in_body:
            return self.raw.write(data)
        srv: ThrottledServer = h.server.owner
        pos = 0
        while pos < len(data):
            n = srv.chunk
            if srv.stall_after is not None:
                if h.body_sent == srv.stall_after and srv.take_stall():
                    srv.stop_event.wait(srv.stall_s)
                if h.body_sent < srv.stall_after:
                    n = min(n, srv.stall_after - h.body_sent)
            piece = data[pos:pos + n]
            pos += n
            self.raw.write(piece)
            h.body_sent += len(piece)
            srv.add_sent(h.path_name, len(piece))
            if srv.rate:
                srv.stop_event.wait(len(piece) / srv.rate)
        return len(data)

    def __getattr__(self, name: str) -> Any:  # flush, close, closed, ...
        return getattr(self.raw, name)


class _ThrottledHandler(_Handler):
    def setup(self) -> None:
        super().setup()
        self.in_body, self.body_sent, self.path_name = False, 0, ""
        self.wfile = _MeteredWriter(self.wfile, self)

    def end_headers(self) -> None:
        super().end_headers()
        self.in_body = True
        self.path_name = self.path.split("?", 1)[0].lstrip("/")

    def handle_one_request(self) -> None:
        self.in_body, self.body_sent = False, 0
        super().handle_one_request()


class ThrottledServer(LoopbackServer):
    """`LoopbackServer` whose bodies go out at `rate` bytes/s (None: full speed) in `chunk`s.

    `stall_after=N, stall_s=S, stalls=K`: the first K responses that reach N body bytes stop
    for S seconds there (a connection that hangs mid-body). `sent(path)` counts the body bytes
    written to the socket, including responses the client abandoned.
    """

    def __init__(self, files: dict[str, bytes], *, rate: float | None = None, chunk: int = 8192,
                 stall_after: int | None = None, stall_s: float = 0.0, stalls: int = 1):
        super().__init__(files)
        self.rate, self.chunk = rate, chunk
        self.stall_after, self.stall_s, self.stalls = stall_after, stall_s, stalls
        self._sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "ThrottledServer":
        self._httpd = _Server(("127.0.0.1", 0), _ThrottledHandler)
        self._httpd.state = self._state
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="throttled-http", daemon=True)
        self._thread.start()
        return self

    @property
    def stop_event(self) -> threading.Event:
        return self._state.stop

    def take_stall(self) -> bool:
        with self._lock:
            if self.stalls <= 0:
                return False
            self.stalls -= 1
            return True

    def add_sent(self, path: str, n: int) -> None:
        with self._lock:
            self._sent[path] = self._sent.get(path, 0) + n

    def sent(self, path: str) -> int:
        with self._lock:
            return self._sent.get(path, 0)


# --------------------------------------------------------------------------- disk full


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what the kernel gives: no file name


class _FullDiskFile:
    """A writable file that accepts `budget[0]` more bytes, writes what fits, then raises ENOSPC."""

    def __init__(self, f: Any, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, data: Any) -> int:
        data = bytes(data)
        room = max(self._budget[0], 0)
        if len(data) > room:
            self._f.write(data[:room])
            self._budget[0] = 0
            self._f.flush()
            raise _enospc()
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_FullDiskFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def enospc_open(budget: int, match: Callable[[str], bool]) -> Callable[..., Any]:
    """An `open` replacement: files opened for writing whose path satisfies `match` share `budget`
    bytes, then every write raises OSError(ENOSPC). Install with monkeypatch.setattr(module, "open", ...)."""
    left = [budget]

    def fake_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = open(file, mode, *args, **kw)
        if any(c in mode for c in "wax+") and match(os.fspath(file)):
            return _FullDiskFile(f, left)
        return f

    return fake_open


FULL_DEVICE = Path("/dev/full")


def record_writer_on_a_full_device() -> Callable[..., Any]:
    """A stand-in for `tf.io.TFRecordWriter`: the real writer, pointed at /dev/full (where every write
    that reaches the device fails with ENOSPC, as on a full disk) instead of the file it is given, which
    is created empty as the real writer would. TensorFlow itself reports the failure, on a write once
    its buffer fills or on flush/close, and names only /dev/full: any shard name in the error comes
    from the library. Install with monkeypatch.setattr(tf.io, "TFRecordWriter", ...)."""
    import tensorflow as tf

    real = tf.io.TFRecordWriter

    def writer(path: str, *args: Any, **kw: Any) -> Any:
        Path(path).touch()
        return real(str(FULL_DEVICE), *args, **kw)

    return writer


def tmpfs_available() -> bool:
    """True when `unshare -rm` can mount a private tmpfs (user + mount namespaces allowed)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def run_on_full_disk(code: str, mountpoint: Path, size_kib: int, *args: str,
                     timeout: float = 300) -> subprocess.CompletedProcess:
    """Run python `code` (sys.argv[1] = `mountpoint`, then `args`) with a private `size_kib` KiB tmpfs
    mounted on `mountpoint`; the mount vanishes with the process."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size_kib}k tmpfs "$0" && exec "$1" -c "$2" "${{@:3}}"'
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, str(mountpoint), sys.executable, textwrap.dedent(code),
         str(mountpoint), *args],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=timeout,
    )


# --------------------------------------------------------------------------- child processes


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def spawn_python(code: str, *args: str, umask: int | None = None) -> subprocess.Popen:
    """Start `python -c code args...` from the repo root; stdout+stderr merged into a pipe."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Read `proc`'s output until a line contains `needle`; the lines read. Fails on exit or timeout."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if needle in line:
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout) or not any(needle in line for line in lines):
        proc.kill()
        raise AssertionError(f"child never printed {needle!r} (rc={proc.poll()}):\n{''.join(lines)[-3000:]}")
    return lines


def wait_for(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
             what: str = "condition", poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"child exited (rc={proc.returncode}) before {what}:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def sigkill(proc: subprocess.Popen) -> None:
    """kill -9 the child and reap it."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def leftover_temps(root: Path) -> list[Path]:
    """Files and directories left under temporary names (`.<name>.tmp-*`) anywhere under `root`."""
    return sorted(p for p in root.rglob(".*.tmp-*"))


def decoded_contents(path: Path) -> bytes:
    """A file's bytes plus the decoding of its base64 content (Prefect stores results as base64
    pickles, alone or in JSON records), so a scan sees the strings inside."""
    import base64
    import json
    import re

    data = path.read_bytes()
    try:
        doc = json.loads(data)
    except ValueError:
        doc = data.decode("latin-1")
    strings, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            strings.append(node)
        elif isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
    parts = [data]
    for text in strings:
        compact = re.sub(r"\s", "", text)
        if len(compact) >= 64 and re.fullmatch(r"[A-Za-z0-9+/]+=*", compact):
            try:
                parts.append(base64.b64decode(compact))
            except ValueError:
                pass
    return b"\n".join(parts)


# --------------------------------------------------------------------------- archives for the CLI kill tests


def padded_archives(root: Path) -> dict[str, bytes]:
    """Synthetic archives whose images.tar.gz carries 3 MB of padding (a non-image file validation
    ignores), so a kill can land mid-transfer even though the download reads 1 MiB at a time."""
    from tests.synthetic import _tar_dir, make_pets_tree

    make_pets_tree(root / "tree", n_per_breed=2, include_odd=False)
    (root / "tree" / "images" / "padding.bin").write_bytes(os.urandom(3_000_000))
    out = {}
    for name in ("images", "annotations"):
        _tar_dir(root / "tree" / name, root / f"{name}.tar.gz", compress=True)
        out[f"{name}.tar.gz"] = (root / f"{name}.tar.gz").read_bytes()
    out["SHA256SUMS"] = "".join(f"{sha(d)}  {n}\n" for n, d in out.items()).encode()
    return out


# --------------------------------------------------------------------------- prepare without Prefect


PARAMS = {"split": "official", "val_fraction": 0.25, "test_fraction": 0.1, "seed": 3, "shard_size_mb": 0.004}


def write_dataset(images: Path, annotations: Path, out: Path, archives: dict[str, str],
                  params: dict[str, Any] = PARAMS, workers: int = 2) -> Path:
    """validate → plan → shards → validation/split files → manifest (last) into `out`, with the library
    functions the flow's tasks call (`segpipe.data.dataset`)."""
    from segpipe.data import dataset, validate

    report = validate.validate_dataset(images, annotations, workers=workers)
    plan = dataset.plan_dataset(report, archives, params)
    shards = {name: dataset.write_dataset_shards(plan, name, report, out, workers) for name in plan.splits}
    dataset.finish_dataset(plan, archives, report, shards, out)
    return out


def prepare_library(source: str, work: Path, params: dict[str, Any] = PARAMS, workers: int = 2) -> Path:
    """The library's whole data stage (`segpipe.data.prepare.prepare_dataset`), without Prefect, for child
    processes that must start fast; the dataset directory."""
    from segpipe.config import DataConfig
    from segpipe.data.prepare import prepare_dataset

    data = DataConfig(**params, workers=workers, download_timeout_s=10)
    return Path(prepare_dataset(source, work, data, progress=False).path)
