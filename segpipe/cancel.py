"""Cooperative cancellation: one process-wide stop request that long loops check between units of work.

The CLI calls `request()` when it gets SIGTERM or Ctrl-C. Work running in
worker threads (the two downloads, the shard writers, validation's pool) cannot
be interrupted by a signal, which Python delivers to the main thread only;
without this, a stopped run waited for every task in flight to finish. Each
loop calls `check()` between chunks, examples or images and stops with
`Cancelled`, a `KeyboardInterrupt`: never retried, and nothing is marked
complete (a download keeps its `.part` to resume; a shard's temporary file is
removed).
"""

from __future__ import annotations

import threading

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
