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
import time
from typing import Callable, Iterator

_requested = threading.Event()
_closers: dict[int, Callable[[], None]] = {}
_closers_lock = threading.Lock()


class Cancelled(KeyboardInterrupt):
    """Work stopped because a stop was requested."""


def request() -> None:
    """Ask every loop in this process to stop at its next check, and unblock the waits registered with
    `closing_on_request` (a read from a stalled connection would otherwise wait for its timeout)."""
    _requested.set()
    with _closers_lock:
        closers = list(_closers.values())
    for close in closers:
        with contextlib.suppress(Exception):
            close()


@contextlib.contextmanager
def closing_on_request(close: Callable[[], None]) -> Iterator[None]:
    """While inside, a stop request also calls `close()` (from whichever thread requests the stop), e.g.
    to shut down a socket that a read is blocked on; a request made before entering calls it at once."""
    key = id(close)
    with _closers_lock:
        _closers[key] = close
    try:
        if _requested.is_set():
            with contextlib.suppress(Exception):
                close()
        yield
    finally:
        with _closers_lock:
            _closers.pop(key, None)


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
def on_signals(
    signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    *,
    on_repeat: Callable[[int], None] | None = None,
    repeat_signums: tuple[int, ...] = (signal.SIGINT,),
    debounce_s: float = 0.3,
) -> Iterator[None]:
    """Call `request()` the moment one of `signums` arrives, whoever owns its Python handler.

    A Prefect flow run swaps in its own SIGTERM handler, and its task runner
    waits for the threads in flight before the signal reaches any handler of
    ours, so a handler alone would request the stop only after the work had
    finished. The interpreter also writes every caught signal's number to the
    wakeup fd as it arrives; a watcher thread reads it and requests the stop at
    once. The handlers still run as before. Only the main thread can set the
    wakeup fd; elsewhere this does nothing.

    `on_repeat(signum)` is called (from the watcher thread, so even while the
    main thread is busy or blocked) when one of `repeat_signums` arrives more
    than `debounce_s` seconds after the first stop signal: a second Ctrl-C. The
    debounce keeps one signal sent twice at once (`timeout` signals the command
    and then its whole process group) from counting as two. SIGTERM is not a
    repeat signal by default: Prefect re-sends SIGTERM to its own process after
    recording a flow run's crash.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watch = _signal_watcher(reader, signums, on_repeat, repeat_signums, debounce_s)
    watcher = threading.Thread(target=watch, name="segpipe-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        writer.close()  # the watcher reads end-of-stream and returns
        watcher.join(timeout=5)
        reader.close()


def _signal_watcher(
    reader: socket.socket,
    signums: tuple[int, ...],
    on_repeat: Callable[[int], None] | None,
    repeat_signums: tuple[int, ...],
    debounce_s: float,
) -> Callable[[], None]:
    """The watcher thread's loop: read signal numbers from the wakeup fd until it closes; `request()` on
    each of `signums`, and `on_repeat` on a repeat (see `on_signals`)."""
    wanted = {int(s) for s in signums}
    repeats = {int(s) for s in repeat_signums}
    first: list[float] = []

    def watch() -> None:
        while data := reader.recv(64):
            for signum in data:
                if signum not in wanted:
                    continue
                now = time.monotonic()
                if not first:
                    first.append(now)
                elif on_repeat is not None and signum in repeats and now - first[0] > debounce_s:
                    on_repeat(signum)
                request()

    return watch
