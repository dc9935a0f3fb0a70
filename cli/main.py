"""The `segpipe` command line: run the whole pipeline or any single stage locally.

Every command builds one validated `PipelineConfig` (preset + flags, `cli.options`) *before*
importing Prefect or TensorFlow, so a bad flag fails in milliseconds with a message naming
the field. The parts: `cli.parser` (the flags), `cli.options` (flags → config), `cli.commands`
(one handler per command), `cli.interrupts` (Ctrl-C and SIGTERM); this module runs one command.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time

from segpipe_app.cli.commands import COMMANDS
from segpipe_app.cli.errors import CliError
from segpipe_app.cli.interrupts import (exit_now, exit_without_finalizing, interrupted, Interrupts, is_interrupt,
                                        quiet_lost_interrupts, terminate)
from segpipe_app.cli.options import config_from_args
from segpipe_app.cli.parser import build_parser, debug_enabled
from segpipe.config import ConfigError

__all__ = ["COMMANDS", "CliError", "build_parser", "config_from_args", "debug_enabled", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if argv is None and in_main_thread and not debug_enabled(args):  # the `segpipe` command itself
        from segpipe_app.cli.quiet import filter_native_stderr

        filter_native_stderr()  # TensorFlow's native noise off fd 2 for the whole command, before any thread
    from segpipe import cancel

    cancel.clear()
    Interrupts.raised = 0
    previous = (
        {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    )
    if argv is None and in_main_thread:  # the `segpipe` command itself
        sys.unraisablehook = quiet_lost_interrupts
    try:
        # even while Prefect's SIGTERM handler is the one installed; a second Ctrl-C exits at once
        with cancel.on_signals(on_repeat=exit_now):
            status = _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if argv is None and in_main_thread:  # the `segpipe` command itself, not a caller's main([...])
        exit_without_finalizing(status)
    return status


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    args.run_started = None
    debug = debug_enabled(args)
    try:
        cfg = None if args.command == "datasets" else config_from_args(args)
        with contextlib.ExitStack() as args.cleanup:
            status = COMMANDS[args.command](args, cfg)
    except (ConfigError, CliError) as exc:
        print(f"segpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # noqa: BLE001 - one clear line for the user, the traceback in the Prefect log
        if is_interrupt(exc):
            return interrupted(args, exc, debug)
        if debug or not isinstance(exc, Exception):
            raise
        print(f"segpipe {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.command not in ("config", "datasets", "runs", "server"):
        print(f"done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
