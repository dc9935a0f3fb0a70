"""A throttled download progress line on stderr, plus an optional callback."""

from __future__ import annotations

import sys
import time
from typing import Callable

ProgressCallback = Callable[[int, "int | None"], None]


class Progress:
    """A throttled (~4 updates/s) progress line on stderr plus an optional callback."""

    INTERVAL = 0.25

    def __init__(self, label: str, enabled: bool | None, callback: ProgressCallback | None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.callback = callback
        self.total: int | None = None
        self.first = self.done = 0
        self.t0 = self.last = 0.0
        self.drawn = False

    def start(self, done: int, total: int | None) -> None:
        self.first = self.done = done
        self.total = total
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and now - self.last < self.INTERVAL:
            return
        self.last = now
        if self.callback is not None:
            self.callback(done, self.total)
        if self.enabled:
            rate = (done - self.first) / max(now - self.t0, 1e-6) / 1e6
            of = f"/{self.total / 1e6:.1f}" if self.total else ""
            pct = f" {100 * done / self.total:5.1f}%" if self.total else ""
            sys.stderr.write(f"\r{self.label}: {done / 1e6:.1f}{of} MB{pct} {rate:.1f} MB/s ")
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False
