"""Keep TensorFlow's native start-up chatter off the user's terminal (unless `--debug`).

TensorFlow 2.21 logs through absl. Everything it logs while its shared libraries
load, before it calls `absl::InitializeLog()`, goes to stderr whatever
`TF_CPP_MIN_LOG_LEVEL` says: absl prints "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR", then the oneDNN notice and
"Could not find cuda drivers on your machine" (twice: two libraries carry absl).
The first device query then logs "failed call to cuInit: ... UNKNOWN ERROR (303)" at
ERROR level on every machine without an NVIDIA driver, which `TF_CPP_MIN_LOG_LEVEL=2`
lets through (3 would hide real errors too). Setting the variable earlier cannot
help: these lines come from C++ that does not read it.

So the CLI imports TensorFlow and lists its devices once, up front, with file
descriptor 2 pointed at a temporary file (`tensorflow_started_quietly`). Afterwards
it replays every captured line to the real stderr except the known start-up noise
(`NOISE`); anything else, a real problem included, still reaches the user. The
cuInit line is noise only where no NVIDIA driver is loaded: with one, it means the
GPU will not be used, and it is shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# absl's native log prefix: severity + MMDD, time, thread id, file:line]
_PREFIX = r"^[IWE]\d{4} [\d:.]+\s+\d+ "
NOISE: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    _PREFIX + r"port\.cc:\d+\] oneDNN custom operations are on\.",
    _PREFIX + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.$",
    _PREFIX + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$",
    _PREFIX + r"cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register cu(DNN|FFT|BLAS) factory",
    _PREFIX + r"computation_placer\.cc:\d+\] computation placer already registered",
    r"^(\S+ )?TF-TRT Warning: Could not find TensorRT$",
    # at the first integer op of a model on a CPU without AVX-512 (a fallback notice, not a problem)
    _PREFIX + r"util\.cc:\d+\] oneDNN supports DT_INT32 only on platforms with AVX-512",
))
_NO_DRIVER_NOISE = re.compile(_PREFIX + r"cuda_(platform|driver|executor)\.cc:\d+\] failed call to cuInit: ")


def nvidia_driver_loaded() -> bool:
    return Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()


def is_noise(line: str, *, driver_loaded: bool | None = None) -> bool:
    """True for a known TensorFlow start-up line that says nothing to a user (see the module doc)."""
    line = line.rstrip("\r\n")
    if any(p.search(line) for p in NOISE):
        return True
    if _NO_DRIVER_NOISE.search(line):
        return not (nvidia_driver_loaded() if driver_loaded is None else driver_loaded)
    return False


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture file descriptor 2 for the duration, then write back every line that is not `is_noise`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                driver = nvidia_driver_loaded()
                kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not is_noise(line, driver_loaded=driver)]
                if kept:
                    os.write(2, "".join(kept).encode())
    finally:
        os.close(saved)


def tensorflow_started_quietly(debug: bool = False) -> None:
    """Import TensorFlow and list its devices now, with the native start-up noise filtered out.

    Lists physical devices only: logical devices (memory growth, virtual CPUs) can still be
    configured afterwards. With `debug`, nothing is filtered.
    """
    if debug:
        import tensorflow as tf

        tf.config.list_physical_devices()
        return
    with native_stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()


@contextlib.contextmanager
def one_line_tracebacks_on_the_console() -> Iterator[None]:
    """Prefect logs a task's or flow's exception with its whole traceback; on the console, show its last
    line only ("ValueError: dataset ... has no training examples"). The Prefect API (the run's logs in
    the UI or database) still receives the full traceback: its handler formats the record first.

    Applies to the console handlers Prefect's logging set-up installed (imports `prefect.main`, which
    runs it); restored on exit.
    """
    import logging

    import prefect.main  # noqa: F401 - sets Prefect's logging up, console handler included
    from prefect.logging.handlers import PrefectConsoleHandler

    patched = []
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(handler, PrefectConsoleHandler) and formatter is not None and "format" not in vars(formatter):
            formatter.format = _short_exceptions(formatter.format)  # type: ignore[method-assign]
            patched.append(formatter)
    try:
        yield
    finally:
        for formatter in patched:
            vars(formatter).pop("format", None)


def _short_exceptions(format_record: Any) -> Any:
    import logging

    def format(record: logging.LogRecord) -> str:
        if not record.exc_info:
            return format_record(record)
        saved = record.exc_info, record.exc_text
        exc = record.exc_info[1]
        record.exc_info = None
        summary = f"{type(exc).__name__}: {exc}" if exc is not None else None
        # Prefect's own lines already carry the exception ("... during execution: ValueError('...')")
        record.exc_text = None if summary is None or str(exc) in record.getMessage() else summary
        try:
            return format_record(record)
        finally:
            record.exc_info, record.exc_text = saved

    return format


@contextlib.contextmanager
def progress_in_the_run_logs() -> Iterator[None]:
    """The library's progress lines (`segpipe.progress`, plain throttled lines with an ETA) become lines of
    the task run that reports them, like training's epoch lines: Prefect's run logger sends them to the
    API (the run's logs in the UI) and to the console. On a terminal, where `segpipe.progress` draws a bar,
    the console skips the intermediate lines (the bar shows them) and keeps the closing one; any console
    line first erases the bar. Outside a run the lines go where `segpipe.progress`'s parents send them.
    Restored on exit.
    """
    import logging

    import prefect.main  # noqa: F401 - sets Prefect's logging up, console handler included
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger
    from prefect.logging.handlers import PrefectConsoleHandler

    from segpipe import progress

    class ToRunLogger(logging.Handler):
        """Re-log a progress record on the run logger of the task (or flow) run it was made in."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                logger = get_run_logger()  # the record is emitted in the reporting thread's context
            except MissingContextError:
                return
            logger.log(record.levelno, record.getMessage(),
                       extra={"progress": getattr(record, "progress", None),
                              "progress_bar": getattr(record, "progress_bar", False)})
            record.forwarded_to_run = True  # the console skips the original (`_BarAwareConsole`)

    source = logging.getLogger(progress.LOGGER)
    forward, console_filter = ToRunLogger(), _BarAwareConsole()
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    source.addHandler(forward)
    for handler in consoles:
        handler.addFilter(console_filter)
    try:
        yield
    finally:
        source.removeHandler(forward)
        for handler in consoles:
            handler.removeFilter(console_filter)


class _BarAwareConsole:
    """A filter for Prefect's console handler: skip a progress line the bar already shows, and a
    `segpipe.progress` record that went to its run's logger instead; erase the bar before any other line."""

    def filter(self, record: Any) -> bool:
        from segpipe.progress import clear_bar

        if getattr(record, "forwarded_to_run", False) or getattr(record, "progress_bar", False):
            return False
        clear_bar()
        return True
