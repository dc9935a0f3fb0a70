"""Load `.keras` models in another process while the caller starts up, then predict through it.

    with preloaded([Path("model.keras")], flip=True, host_dir=d):   # returns at once: the models load
        ...                                                          # there meanwhile
        report = predict_paths([Path("model.keras")], ["cat.jpg"], "out", flip=True)   # uses that process

A one-image `segpipe predict` spends most of its time on fixed costs: importing TensorFlow and Keras
and loading the model on one side; importing Prefect and starting the flow run on the other. In one
process those run one after the other; `preloaded` runs the first group in another process, on the other
core, while the caller does the second. That process is either

- the **model host** of `host_dir` (`segpipe.model_host`): a long-lived process that imported TensorFlow
  once, started by the first command that asks and reused by the next ones. Each command still loads
  its own models there, and hangs up when done; or
- a **child** started for this command alone (`python -m segpipe.preload`): without `host_dir`, off
  Linux, or when no host can be had.

- `can_preload(model_paths)`: whether these are `.keras` files, the models another process can load.
- `preloaded(model_paths, flip, host_dir)` asks for the models and registers the process for exactly
  those models and that flip setting, for the `with` block; leaving the block stops the child or hangs up
  on the host.
- `segpipe.predict.predict_paths` asks `take(model_paths, flip)` for a registered one. It gets one only
  when the paths, the flip setting and the **content** of every model file match: the other process
  reports the SHA-256 of each file it loaded, and the caller compares them with its own digests.
  Otherwise, it loads the models in its own process as before.
- The other process answers `predict_labels` (`segpipe.evaluation.ensemble`), one batch at a time: uint8
  RGB images in, HxW labels out, the same function and numerics as in-process prediction.
- A failure there (a corrupt model file, a bad image) comes back as the same exception type, with the
  same message. If the process dies before the models are loaded, `take` warns and the caller loads them
  itself; if it dies later, the caller gets `ProcessGone` (a `RuntimeError`) naming it.
- Neither the child nor the host hears a terminal's Ctrl-C: each runs in its own session (and ignores
  SIGINT). The caller handles it: its `with` block ends, which kills the child or hangs up on the host.
  If the caller dies, the child's stdin (the host's connection) reaches EOF and the child exits (the host
  drops that caller's models).

The protocol is pickled objects over the child's stdin and a duplicate of its stdout (its fd 1 then
points at fd 2, so nothing a library prints can corrupt the stream), or over the host's socket. No
Prefect here, and no TensorFlow in the caller.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from segpipe import model_host
from segpipe.fsutil import sha256_file, sha256_file_memo

PathLike = str | os.PathLike[str]
log = logging.getLogger(__name__)

_REGISTRY: dict[tuple[tuple[str, ...], bool], Preloaded] = {}
_LOCK = threading.Lock()
_EXCEPTIONS: dict[str, type[Exception]] = {
    e.__name__: e for e in (ValueError, FileNotFoundError, OSError, TypeError, RuntimeError)
}


class ProcessGone(RuntimeError):
    """The child or the model host went away (killed, crashed) before it answered."""


class Preloaded:
    """Models loading, then loaded, in another process; `labels(images)` predicts one batch through it.

    With `host_dir`, that process is the model host of that folder (`segpipe.model_host`: TensorFlow already
    imported, started now if none runs); otherwise, or when no host can be had, a child of this process."""

    def __init__(self, model_paths: Sequence[PathLike], flip: bool, host_dir: PathLike | None = None,
                 idle_s: float = 900.0, tta_sizes: Sequence[int] = ()) -> None:
        self.paths = [str(Path(p).resolve()) for p in model_paths]
        self.flip = flip
        self.tta_sizes = tuple(int(s) for s in tta_sizes)
        self._lock = threading.Lock()
        self._ready: tuple[list[str], list[tuple[int, int]]] | None = None
        self._proc: subprocess.Popen | None = None
        self.host = None if host_dir is None else model_host.connect(Path(host_dir), idle_s)
        if self.host is not None:
            self.process = f"the model host (pid {self.host.pid}, log {Path(host_dir) / model_host.LOG_NAME})"
            self._requests = self.host.sock.makefile("wb")
            self._answers = self.host.sock.makefile("rb")
            self._send(("load", flip, self.paths, self.tta_sizes))
        else:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "segpipe.preload", "1" if flip else "0",
                 ",".join(map(str, self.tta_sizes)) or "none", *self.paths],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, close_fds=True,
                start_new_session=True,  # out of the terminal's reach: a Ctrl-C while Python starts up there
            )                            # would print "Fatal Python error"; the caller stops it instead
            self.process = f"the process loading {', '.join(self.paths)}"
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._requests, self._answers = self._proc.stdin, self._proc.stdout

    def _send(self, message: Any) -> None:
        try:
            pickle.dump(message, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
        except (BrokenPipeError, OSError):
            pass  # the other end is gone: _receive says how it ended

    def _receive(self) -> Any:
        try:
            message = pickle.load(self._answers)
        except (EOFError, pickle.UnpicklingError, OSError):
            how = "closed the connection" if self._proc is None else f"ended (exit status {self._proc.wait()})"
            raise ProcessGone(f"{self.process} {how} before it answered") from None
        if message[0] == "error":
            raise _EXCEPTIONS.get(message[1], RuntimeError)(message[2])
        return message[1:]

    def wait_ready(self) -> tuple[list[str], list[tuple[int, int]]]:
        """(SHA-256 of each model file, the models' distinct input sizes), once the models are loaded."""
        with self._lock:
            if self._ready is None:
                digests, sizes = self._receive()
                self._ready = (digests, [tuple(s) for s in sizes])  # type: ignore[misc]
            return self._ready

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return self.wait_ready()[1]

    def labels(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """HxW int64 labels (0..2) for uint8 RGB images, each at its own size (`ensemble.predict_labels`)."""
        self.wait_ready()
        with self._lock:
            self._send(images)
            (labels,) = self._receive()
        return [np.asarray(lab, dtype=np.int64) for lab in labels]

    def close(self) -> None:
        """Stop the child (at once: it holds nothing that needs saving), or hang up on the host (which then
        drops these models and stays up for the next command)."""
        for stream in (self._requests, self._answers):
            with contextlib.suppress(OSError):
                stream.close()
        if self.host is not None:
            with contextlib.suppress(OSError):
                self.host.sock.close()
            return
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()


def can_preload(model_paths: Sequence[PathLike]) -> bool:
    """True when every path is a `.keras` file: what `load_models` loads (exports run on their own runtimes)."""
    paths = [Path(p) for p in model_paths]
    return bool(paths) and all(p.suffix == ".keras" and p.is_file() for p in paths)


@contextlib.contextmanager
def preloaded(model_paths: Sequence[PathLike], flip: bool, host_dir: PathLike | None = None,
              idle_s: float = 900.0, tta_sizes: Sequence[int] = ()) -> Iterator[Preloaded]:
    """Have `model_paths` (`.keras` files) loaded in another process (the model host of `host_dir` when
    given and available, else a child), with `tta_sizes` rebuilt there, and register it for `take`, for the
    block."""
    child = Preloaded(model_paths, flip, host_dir, idle_s, tta_sizes)
    key = (tuple(child.paths), child.flip, child.tta_sizes)
    with _LOCK:
        _REGISTRY[key] = child
    try:
        yield child
    finally:
        with _LOCK:
            if _REGISTRY.get(key) is child:
                del _REGISTRY[key]
        child.close()


def take(model_paths: Sequence[PathLike], flip: bool, tta_sizes: Sequence[int] = ()) -> Preloaded | None:
    """The registered child for these models, flip setting and TTA sizes, if the files it loaded have the same content
    as `model_paths` have now; None otherwise (load in-process), also when it went away before it loaded
    them (a warning says so). Waits until the child has loaded them."""
    key = (tuple(str(Path(p).resolve()) for p in model_paths), flip, tuple(int(s) for s in tta_sizes))
    with _LOCK:
        child = _REGISTRY.get(key)
    if child is None:
        return None
    try:
        digests, _ = child.wait_ready()
    except ProcessGone as exc:  # before it loaded the models: load them here instead
        log.warning("%s; loading the models in this process", exc)
        return None
    if digests != [sha256_file_memo(p) for p in model_paths]:
        return None
    return child


# --------------------------------------------------------------------------- the child


def _send(stream: IO[bytes], *message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _load(paths: list[str], tta_sizes: Sequence[int]) -> tuple[Any, list[str], list[tuple[int, int]]]:
    """Load the models (with their TTA sizes) and hash their files (read now: a model host outlives any memo
    of them)."""
    from segpipe.evaluation.ensemble import load_models, model_sizes, tta_members

    digests = [sha256_file(p) for p in paths]
    models = tta_members(load_models(paths), tta_sizes)
    return models, digests, model_sizes(models)


def serve(flip: bool, paths: list[str], requests: IO[bytes], answers: IO[bytes],
          tta_sizes: Sequence[int] = ()) -> None:
    """The child's loop: load, say ready (or the error), then answer batches until EOF on `requests`."""
    try:
        models, digests, sizes = _load(paths, tta_sizes)
    except Exception as exc:  # reported to the caller, which raises it where the in-process load would
        _send(answers, "error", type(exc).__name__, str(exc))
        return
    _send(answers, "ready", digests, sizes)
    from segpipe.evaluation.ensemble import predict_labels

    while True:
        try:
            images = pickle.load(requests)
        except EOFError:
            return
        try:
            labels = [lab.astype(np.uint8) for lab in predict_labels(models, images, flip)]
        except Exception as exc:
            _send(answers, "error", type(exc).__name__, str(exc))
            continue
        _send(answers, "labels", labels)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C, and then stops this process
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    try:
        sizes = [] if argv[1] == "none" else [int(s) for s in argv[1].split(",")]
        serve(argv[0] == "1", argv[2:], sys.stdin.buffer, answers, sizes)
    except BrokenPipeError:  # the caller is gone
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
