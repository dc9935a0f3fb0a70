"""Ctrl-C and SIGTERM for the `segpipe` command: the signal handlers, and after an interrupt, the runs
recorded as Crashed, the Prefect server stopped, one line printed and exit status 130."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any

class Interrupts:
    """How many stop signals the main thread has turned into KeyboardInterrupt (0 or 1)."""

    raised = 0


def terminate(signum: int, frame: Any) -> None:
    """SIGTERM and Ctrl-C: ask the work in flight to stop (downloads, shard writers, validation check
    `segpipe.cancel` between chunks), then stop like Ctrl-C. Only the first signal raises: the CLI then
    records the interrupted run and stops its Prefect server, and a later signal must not break that
    (a second Ctrl-C exits at once from the watcher thread, `exit_now`)."""
    from segpipe import cancel

    cancel.request()
    if Interrupts.raised:
        return
    Interrupts.raised += 1
    raise KeyboardInterrupt


def quiet_lost_interrupts(unraisable: Any) -> None:
    """`sys.unraisablehook` for the command: a KeyboardInterrupt that `terminate` raised inside a finalizer
    (an asyncio transport's `__del__` running mid-step) cannot propagate, and Python would print it as
    "Exception ignored in ..." with a traceback. The stop itself is not lost (`terminate` also requested it,
    and the loops check `segpipe.cancel`), so say nothing of it; anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        return
    sys.__unraisablehook__(unraisable)


def exit_now(signum: int) -> None:
    """A second Ctrl-C: stop at once, without recording the run (called from `cancel`'s watcher thread,
    so it works even while the main thread is busy or blocked)."""
    from segpipe_app.cli.env import server_pid
    from segpipe_app.cli.quiet import terminal_fd

    with contextlib.suppress(Exception):  # to the real stderr: fd 2 may be the native-noise filter's pipe
        os.write(terminal_fd(), b"\nsegpipe: interrupted again: stopping now, without recording the run's state "
                                b"(completed work is kept; run the same command again to resume)\n")
    pid = server_pid()
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    os._exit(130)


def exit_without_finalizing(status: int) -> None:
    """End the `segpipe` command: exit once the exit handlers have run, without the interpreter's finalization.

    Tearing down an interrupted TensorFlow run (its input pipeline's threads, its runtime) took
    4-7 s more on 2 busy cores after everything of ours was done, and even a cached `segpipe prepare`
    spent 0.3-0.5 s of its ~3 s freeing Prefect's and pydantic's modules one by one. The exit handlers
    still run (Prefect's, logging's, `weakref.finalize`'s), buffered TensorBoard events are written
    first, the standard streams are flushed, and every file the pipeline trusts was already written
    atomically. Only for the command itself: `main([...])` called by a program returns.
    """
    import atexit
    import gc

    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            for obj in gc.get_objects():
                if isinstance(obj, tf.summary.SummaryWriter):
                    with contextlib.suppress(Exception):
                        obj.flush()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def is_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C or SIGTERM, however it surfaced: KeyboardInterrupt (segpipe.cancel.Cancelled is one),
    Prefect's TerminationSignal, or anything raised after a stop was requested."""
    from segpipe import cancel

    return (isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"
            or cancel.requested() or Interrupts.raised > 0)


# What survives an interrupt of each stage, and how the next run picks it up.
RESUME_HINTS = {
    "download": "the download resumes from its .part file",
    "train": "training resumes from its last completed epoch",
}


def interrupted(args: argparse.Namespace, exc: BaseException, debug: bool) -> int:
    """Record the interrupted runs as Crashed on the Prefect server, stop the server, print one line, 130."""
    import traceback

    from segpipe import cancel

    cancel.request()  # anything still running in a worker thread stops at its next check
    Interrupts.raised = max(Interrupts.raised, 1)  # a later signal must not interrupt this clean-up
    if debug:
        traceback.print_exception(exc)
    stages, recorded = _record_and_stop_server(args.run_started, debug) if args.run_started is not None else ([], "")
    what = f" during {', '.join(stages)}" if stages else ""
    sys.stdout.flush()
    print(f"segpipe {args.command}: interrupted{what}{recorded}. Run the same command again to resume "
          f"({_resume_hint(stages)}).", file=sys.stderr, flush=True)
    return 130


def _record_and_stop_server(run_started: Any, debug: bool) -> tuple[list[str], str]:
    """The interrupted stages, and what Prefect recorded (as the end of the sentence printed); then the
    local Prefect server stopped, if this command started one."""
    import traceback

    from segpipe_app.cli.env import record_interruption, server_pid, stop_local_server

    stages: list[str] = []
    recorded = ""
    local = server_pid() is not None
    try:
        info = record_interruption(run_started)
    except Exception as err:  # noqa: BLE001 - the server is unreachable: say so, do not fail again
        if debug:
            traceback.print_exception(err)
        recorded = f"; its run state could not be recorded ({type(err).__name__})"
    else:
        stages = info.stages
        recorded = _recorded_states(info.flow_runs)
    if local:
        with contextlib.suppress(Exception):
            stop_local_server()
    return stages, recorded


def _recorded_states(flow_runs: list[tuple[str, str, str]]) -> str:
    recorded = ""
    for state in sorted({state for _, _, state in flow_runs}):
        runs = [f"{flow} run '{name}'" for flow, name, st in flow_runs if st == state]
        recorded += f"; Prefect recorded {' and '.join(runs)} as {state}"
    return recorded


def _resume_hint(stages: list[str]) -> str:
    return "; ".join(["completed stages are reused from the cache", *(RESUME_HINTS[s] for s in stages if s in RESUME_HINTS)])
