"""Progress of a long stage, with an ETA: a bar on a terminal, plain lines in the logs.

    with Progress("evaluate", total=len(ids), unit="images") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

- **Plain lines**, in the style of training's epoch lines, on the standard logger `segpipe.progress` (INFO):
  `evaluate: 1,110/3,700 images (30%), ETA 1 min 40 s`, and at the end `evaluate: 3,700 images in 2 min 23 s`.
  Throttled: a line once another `LINE_STEP` (10%) is done and at least `MIN_INTERVAL` (5 s) after the
  previous one, or after `MAX_INTERVAL` (60 s) without a line; the closing line is written when the stage
  took at least `MIN_INTERVAL` or wrote a line before (a stage of a second says nothing).
  Each record carries `progress_bar` (True while a bar on the terminal shows the same figures, so that a
  console handler can skip it) and `progress` ({label, done, total, unit, final}).
  A record is emitted in the `contextvars` context of the thread that created the `Progress`, so a handler
  that finds its run there (Prefect's, through `cli.quiet`) also sees the lines of worker threads.
  The logger's level is INFO unless someone set it; with no handler configured nothing is printed.
- **A bar** on stderr when stderr is a terminal (`bar=None`; `bar=True`/`False` force it), redrawn at
  most `REDRAW` times a second. Stages running at once (one per split) share one line. `clear_bar()`
  erases it, so that another line can be printed cleanly (the CLI's console handler does so).

- **A stop point**: `advance` raises `segpipe.cancel.Cancelled` once a stop was requested (Ctrl-C, SIGTERM),
  so every loop that reports progress also stops between items. The CLI's signal handler raises
  KeyboardInterrupt too, but one raised while a finalizer runs is lost (Python prints it and carries on);
  the request is not. Training, whose progress is per epoch, checks per batch (`StopOnRequest`).

No Prefect and no TensorFlow here: every stage of the library reports through this one class.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from segpipe import cancel

def format_duration(seconds: float) -> str:
    """`42 s`, `4 min 10 s`, `2 h 05 min`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


LOGGER = "segpipe.progress"
log = logging.getLogger(LOGGER)
if log.level == logging.NOTSET:  # the root logger's default (WARNING) would drop every line
    log.setLevel(logging.INFO)

LINE_STEP = 0.10
MIN_INTERVAL = 5.0
MAX_INTERVAL = 60.0
REDRAW = 4.0


class Progress:
    """`total` items of one stage (see the module doc). `advance` is thread-safe."""

    def __init__(
        self, label: str, total: int, *, unit: str = "images", bar: bool | None = None,
        line_step: float | None = None, min_interval: float | None = None, max_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Throttling left None: the module's `LINE_STEP`, `MIN_INTERVAL` and `MAX_INTERVAL` as they are now."""
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"Progress total must be a non-negative integer; got {total!r}")
        self.label, self.total, self.unit = label, total, unit
        self.line_step = LINE_STEP if line_step is None else line_step
        self.min_interval = MIN_INTERVAL if min_interval is None else min_interval
        self.max_interval = MAX_INTERVAL if max_interval is None else max_interval
        self.clock = clock
        self.bar = _stderr_is_terminal() if bar is None else bar
        self.done = 0
        self.lines = 0  # plain lines written so far
        self.closed = False
        self._lock = threading.Lock()
        self._context = contextvars.copy_context()
        self._t0 = self._last_line = self._last_draw = clock()
        self._line_done = 0
        if self.bar:
            _BOARD.add(self)

    # ------------------------------------------------------------------ reporting

    def advance(self, n: int = 1) -> None:
        """`n` more items done; `Cancelled` if a stop was requested (see the module doc)."""
        cancel.check(self.label)
        with self._lock:
            if self.closed:
                return
            self.done = min(self.total, self.done + n) if self.total else self.done + n
            now = self.clock()
            if self._line_due(now):
                self._emit(self.line(now), final=False)
                self._last_line, self._line_done = now, self.done
            if self.bar and now - self._last_draw >= 1 / REDRAW:
                self._last_draw = now
                _BOARD.draw()

    def close(self, *, completed: bool = True) -> None:
        """End the stage: erase its bar; with `completed`, write the closing line (see the module doc)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            now = self.clock()
            if self.bar:
                _BOARD.remove(self)
            if completed and (self.lines or now - self._t0 >= self.min_interval):
                self._emit(self.final_line(now), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(completed=exc_type is None)

    # ------------------------------------------------------------------ text

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far; None before anything is done (or without a total)."""
        now = self.clock() if now is None else now
        if not self.done or not self.total:
            return None
        return (now - self._t0) / self.done * (self.total - self.done)

    def line(self, now: float | None = None) -> str:
        """`evaluate: 1,110/3,700 images (30%), ETA 1 min 40 s`."""
        text = f"{self.label}: {self.done:,}/{self.total:,} {self.unit}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        eta = self.eta(now)
        if eta is not None and self.done < self.total:
            text += f", ETA {format_duration(eta)}"
        return text

    def final_line(self, now: float | None = None) -> str:
        """`evaluate: 3,700 images in 2 min 23 s`."""
        now = self.clock() if now is None else now
        return f"{self.label}: {self.done:,} {self.unit} in {format_duration(now - self._t0)}"

    def bar_text(self, width: int, *, compact: bool = False) -> str:
        """`evaluate [#####---------] 1,110/3,700 images 30% ETA 1 min 40 s`, or `evaluate 30% ETA 1 min 40 s`."""
        share = self.done / self.total if self.total else 0.0
        eta = self.eta()
        tail = f" ETA {format_duration(eta)}" if eta is not None and self.done < self.total else ""
        if compact:
            return f"{self.label} {100 * share:.0f}%{tail}"
        counts = f" {self.done:,}/{self.total:,} {self.unit} {100 * share:3.0f}%{tail}"
        cells = max(10, min(30, width - len(self.label) - len(counts) - 4))
        filled = int(round(cells * share))
        return f"{self.label} [{'#' * filled}{'-' * (cells - filled)}]{counts}"

    # ------------------------------------------------------------------ internals

    def _line_due(self, now: float) -> bool:
        if self.done == self._line_done or (self.total and self.done >= self.total):
            return False  # nothing new, or all done: the closing line says it
        since = now - self._last_line
        if since >= self.max_interval:
            return True
        step = self.total * self.line_step if self.total else 1
        return since >= self.min_interval and self.done - self._line_done >= step

    def _emit(self, text: str, *, final: bool) -> None:
        """One record on the `segpipe.progress` logger, in the creating thread's context (caller holds the lock)."""
        self.lines += 1
        extra = {"progress_bar": self.bar and not final,
                 "progress": {"label": self.label, "done": self.done, "total": self.total, "unit": self.unit,
                              "final": final}}
        clear_bar()
        self._context.run(log.info, "%s", text, extra=extra)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


class _Board:
    """The one bar line on stderr, shared by the stages in progress at once."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._active: list[Progress] = []
        self._drawn = False

    def add(self, progress: Progress) -> None:
        with self._lock:
            self._active.append(progress)

    def remove(self, progress: Progress) -> None:
        with self._lock:
            if progress in self._active:
                self._active.remove(progress)
            self.clear()
            if self._active:
                self.draw()

    def draw(self) -> None:
        with self._lock:
            if not self._active:
                return
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            if len(self._active) == 1:
                text = self._active[0].bar_text(width)
            else:
                text = " | ".join(p.bar_text(width, compact=True) for p in self._active)
            self._write("\r" + text[:width] + "\x1b[K")
            self._drawn = True

    def clear(self) -> None:
        with self._lock:
            if self._drawn:
                self._write("\r\x1b[K")
                self._drawn = False

    @staticmethod
    def _write(text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or vanished terminal: progress is not worth failing for
            pass


_BOARD = _Board()


def clear_bar() -> None:
    """Erase the progress bar, if one is drawn, so that the next line starts at column 0; the next
    `advance` draws it again."""
    _BOARD.clear()
