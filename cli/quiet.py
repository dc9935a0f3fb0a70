"""Keep TensorFlow's native chatter off the user's terminal (unless `--debug`).

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

The same libraries log later too, on fd 2, at any point of a command: training DeepLabV3+ on a
CPU logs "oneDNN supports DT_INT32 only on platforms with AVX-512" at ERROR level, a fallback
notice, well after start-up. So the `segpipe` command filters fd 2 for its whole run (`filter_native_stderr`,
from `cli.main`): fd 2 becomes a pipe read by a small filter process forked at the very start,
which drops `is_noise` lines and passes everything else on to the real stderr at once. Python's
own `sys.stderr` writes to the real stderr directly (a dup of it), so it stays a terminal
(`isatty()`) for the progress bars and Prefect's console, and nothing Python prints waits on the
filter. A process, not a thread: what native code writes just before it aborts still reaches the
user, and an `os._exit` (a second Ctrl-C, `cli.interrupts.exit_now`) loses nothing in flight.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import select
import signal
import sys
import tempfile
import time
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
    # the LiteRT converter (segpipe export) reading Keras 3's graph: an attribute its op registry lacks, ignored
    _PREFIX + r"node_def_util\.cc:\d+\] NodeDef mentions attribute Truncate which is not in the op definition",
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


class _Filter:
    """The running fd-2 filter of this process (`filter_native_stderr`)."""

    def __init__(self, pid: int, terminal: int):
        self.pid, self.terminal = pid, terminal  # the filter process; a dup of the real stderr


_filter: _Filter | None = None

# After the command, how long to wait for the filter to pass on the last lines (it ends at once unless
# a child process the command started still holds fd 2).
FILTER_EXIT_WAIT_S = 3.0


def filter_native_stderr() -> bool:
    """From now to the end of the process, drop TensorFlow's known noise (`is_noise`) from file descriptor 2.

    Forks a filter process that reads a pipe now installed as fd 2 and writes every other line to
    the real stderr as soon as it is complete (a partial line after 0.1 s without more output, or up
    to its last carriage return). `sys.stderr` is pointed at a duplicate of the real stderr, so Python's
    output (progress bars, Prefect's console) goes there directly and is still a terminal on a terminal.
    Child processes started later inherit the pipe as their stderr and are filtered too. The filter
    ignores SIGINT and SIGTERM (the terminal signals the whole process group; the command decides what
    a signal does) and ends when every writer of the pipe has closed it: at exit, the command closes
    its end and waits for it (`FILTER_EXIT_WAIT_S`), so the last lines come before the shell's prompt;
    after `os._exit` or a crash, it still passes on what is left.

    Call once, at the start of the command, before any thread is started and before Prefect configures
    its console. Returns False, doing nothing, where it cannot apply: already filtering, more than
    one thread, no fork, or no usable stderr.
    """
    global _filter
    import threading

    if _filter is not None or not hasattr(os, "fork") or threading.active_count() > 1:
        return False
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return False
        terminal = os.dup(2)  # not inheritable
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        return False
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError, AttributeError):  # room for bursts while the filter is busy (Linux)
        import fcntl

        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # none may reach the child before it ignores them
    try:
        pid = os.fork()
        if pid == 0:  # the filter process
            try:
                for sig in stop_signals:
                    signal.signal(sig, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                _detach_child_fds(keep=(read_end, terminal))
                filter_lines(read_end, terminal, driver_loaded=nvidia_driver_loaded())
            finally:
                os._exit(0)
    except OSError:
        os.close(read_end)
        os.close(write_end)
        os.close(terminal)
        return False
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    previous = sys.stderr
    sys.stderr = io.TextIOWrapper(io.FileIO(terminal, "w", closefd=False), encoding=previous.encoding,
                                  errors=previous.errors, line_buffering=True, write_through=True)
    _filter = _Filter(pid, terminal)
    atexit.register(_finish_filter)  # registered first, so it runs last: after Prefect's exit handlers
    return True


def filtering() -> bool:
    """True while `filter_native_stderr` filters this process's fd 2."""
    return _filter is not None


def terminal_fd() -> int:
    """Where a message must go that nothing may delay or drop: the real stderr (2 when not filtering).

    For a line written just before `os._exit` (`cli.interrupts.exit_now`)."""
    return _filter.terminal if _filter is not None else 2


def _finish_filter() -> None:
    """At exit: close this process's end of the pipe (fd 2 is the real stderr again) and let the filter
    pass on what is left; wait for it to end, at most `FILTER_EXIT_WAIT_S`."""
    global _filter
    state, _filter = _filter, None
    if state is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.dup2(state.terminal, 2)
    deadline = time.monotonic() + FILTER_EXIT_WAIT_S
    while True:
        try:
            done, _ = os.waitpid(state.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: it has ended
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def _detach_child_fds(keep: tuple[int, ...]) -> None:
    """In the filter process: hold no file of the command's but `keep` (its stdin, stdout and the pipe's
    write end least of all: the pipe would never end, a reader of stdout would wait for the filter)."""
    try:
        open_fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(256))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd not in keep:
            os.dup2(devnull, fd)
    for fd in open_fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def filter_lines(source: int, sink: int, *, driver_loaded: bool, idle_s: float = 0.1) -> None:
    """Copy `source` to `sink` until end of file, without the lines that are `is_noise`."""
    pending = b""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(sink, view):]

    def noise(line: bytes) -> bool:
        try:
            return is_noise(line.decode("utf-8", "replace"), driver_loaded=driver_loaded)
        except Exception:  # noqa: BLE001 - never lose a line to a bug in the filter
            return False

    try:
        while True:
            if pending:
                ready, _, _ = select.select([source], [], [], idle_s)
                if not ready:  # a partial line and nothing more for a while: a prompt, or a process dying
                    write(pending)
                    pending = b""
                    continue
            data = os.read(source, 1 << 16)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not noise(line))
            if b"\r" in pending:  # another process's progress bar: redrawn in place, never a whole line
                cut = pending.rindex(b"\r") + 1
                kept, pending = kept + pending[:cut], pending[cut:]
            if kept:
                write(kept)
        if pending and not noise(pending):
            write(pending)
    except OSError:  # the real stderr is gone (the terminal closed): nothing left to write to
        return


def tensorflow_started_quietly(debug: bool = False) -> None:
    """Import TensorFlow and list its devices now, with the native start-up noise filtered out.

    Lists physical devices only: logical devices (memory growth, virtual CPUs) can still be
    configured afterwards. With `debug`, nothing is filtered. Where `filter_native_stderr` filters the
    whole process, the lines are filtered there, as they come, instead of captured and replayed here.
    """
    if debug or filtering():  # nothing to filter, or `filter_native_stderr` already does, as lines come
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
