"""The Prefect internals the CLI relies on, fenced in this one module.

Prefect 3 has no public call for either of these; everything else in segpipe uses Prefect's public API.
`tests/cli/test_prefectcompat.py` fails, naming the attribute, when a Prefect upgrade removes or changes one.

- `drain`: send the events and logs this process still buffers to the API, within a timeout
  (`EventsWorker.drain_all`, `APILogWorker.drain_all`: Prefect's queue services; it calls them itself
  at interpreter exit, which is too late for a CLI that stops its ephemeral server first).
- `server_class_started_by`: Prefect's ephemeral server (`SubprocessASGIServer`) whose uvicorn child is
  started by a given `popen` instead of `subprocess.Popen` (the server starts its child in
  `SubprocessASGIServer._run_uvicorn_command`, through the `subprocess` module of its own module).

- `EMBEDDED_SERVER_ENV`, `SERVER_APP`: how Prefect launches its embedded server's uvicorn (the private
  `PREFECT__SERVER_EPHEMERAL`/`PREFECT__SERVER_FINAL` variables that `create_app` reads), which
  `cli.server` copies to start the same server in the background.

Call its functions only after `cli.env.configure_prefect`: they import Prefect (the constants do not).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from typing import Any, Callable

# What `SubprocessASGIServer._run_uvicorn_command` runs and sets: the app factory, no UI, the embedded
# server's service set (`PREFECT__SERVER_EPHEMERAL`), and the app built as the final one (`PREFECT__SERVER_FINAL`).
SERVER_APP = "prefect.server.api.server:create_app"
EMBEDDED_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}

# Prefect's logger names for its two queue services (their "Still processing items" warnings).
QUEUE_LOGGERS = ("EventsWorker", "APILogWorker")


def drain(timeout: float, *, logs: bool = True, suppress_errors: bool = True) -> None:
    """Send the buffered events (and, with `logs`, log records) to the API; at most about `timeout` s each."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with _quiet_queue_warnings():
        for worker in (EventsWorker, APILogWorker) if logs else (EventsWorker,):
            with contextlib.suppress(Exception) if suppress_errors else contextlib.nullcontext():
                worker.drain_all(timeout=timeout, at_exit=False)


@contextlib.contextmanager
def _quiet_queue_warnings() -> Iterator[None]:
    """While we drain Prefect's event and log queues on purpose, its "Still processing items: N items
    remaining..." warning says nothing to a user (errors still show)."""
    loggers = [logging.getLogger(name) for name in QUEUE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def server_class_started_by(popen: Callable[..., subprocess.Popen]) -> type:
    """A subclass of Prefect's `SubprocessASGIServer` whose uvicorn child is started by `popen(args, **kwargs)`
    (same arguments as Prefect's own `subprocess.Popen` call). Everything else is Prefect's: one server
    per process (`cls()` returns the one that exists), `start()`, `running`, `server_process`, `stop()`."""
    from prefect.server.api import server as server_mod

    class _Subprocess:
        """Stands in for the `subprocess` module inside Prefect's server module while it starts uvicorn."""

        def __getattr__(self, name: str) -> Any:
            return getattr(subprocess, name)

        Popen = staticmethod(popen)

    class ServerStartedByPopen(server_mod.SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            real = server_mod.subprocess
            server_mod.subprocess = _Subprocess()  # only this module's `subprocess.Popen` call sees it
            try:
                return super()._run_uvicorn_command()
            finally:
                server_mod.subprocess = real

    return ServerStartedByPopen
