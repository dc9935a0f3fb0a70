"""Cooperative cancellation: one process-wide stop request that long loops check between units of work.

The CLI calls `request()` when it gets SIGTERM or Ctrl-C (`on_signals`). Work running in
worker threads (the two downloads, the shard writers, validation's pool) cannot
be interrupted by a signal, which Python delivers to the main thread only;
without this, a stopped run waited for every task in flight to finish. Each
loop calls `check()` between chunks, examples or images and stops with
`Cancelled`, a `KeyboardInterrupt`: never retried, and nothing is marked
complete (a download keeps its `.part` to resume; a shard's temporary file is
removed).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from typing import Iterator

_requested = threading.Event()


class Cancelled(KeyboardInterrupt):
    """Work stopped because a stop was requested."""


def request() -> None:
    """Ask every loop in this process to stop at its next check."""
    _requested.set()


def clear() -> None:
    """Forget an earlier request (a new run in the same process)."""
    _requested.clear()


def requested() -> bool:
    return _requested.is_set()


def check(what: str) -> None:
    """Raise `Cancelled` naming `what` if a stop was requested."""
    if _requested.is_set():
        raise Cancelled(f"{what}: stopped on request (SIGTERM or Ctrl-C)")


@contextlib.contextmanager
def on_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Call `request()` the moment one of `signums` arrives, whoever owns its Python handler.

    A Prefect flow run swaps in its own SIGTERM handler, and its task runner
    waits for the threads in flight before the signal reaches any handler of
    ours, so a handler alone would request the stop only after the work had
    finished. The interpreter also writes every caught signal's number to the
    wakeup fd as it arrives; a watcher thread reads it and requests the stop at
    once. The handlers still run as before. Only the main thread can set the
    wakeup fd; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    wanted = {int(s) for s in signums}
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while data := reader.recv(64):
            if wanted.intersection(data):
                request()

    watcher = threading.Thread(target=watch, name="segpipe-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()  # the watcher reads end-of-stream and returns
        watcher.join(timeout=5)
        reader.close()
