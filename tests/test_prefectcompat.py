"""The Prefect internals fenced in `cli/prefectcompat.py` are still there, and still do what the CLI needs.

When one of these fails after a Prefect upgrade, the message names what disappeared: find its
replacement in the new Prefect and change `cli/prefectcompat.py` only.
"""

from __future__ import annotations

import inspect
import socket
import subprocess


def test_the_event_and_log_queues_can_still_be_drained_with_a_timeout():
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        drain_all = getattr(worker, "drain_all", None)
        assert callable(drain_all), f"Prefect's {worker.__name__}.drain_all is gone (cli/prefectcompat.py: drain)"
        inspect.signature(drain_all).bind(timeout=1.0, at_exit=False)

    from cli.prefectcompat import drain

    drain(0.5)  # nothing buffered: returns at once
    drain(0.5, logs=False, suppress_errors=False)


def test_the_ephemeral_server_still_starts_uvicorn_through_its_modules_subprocess_popen():
    from prefect.server.api import server as server_mod

    assert hasattr(server_mod.SubprocessASGIServer, "_run_uvicorn_command"), (
        "Prefect's SubprocessASGIServer._run_uvicorn_command is gone (cli/prefectcompat.py: server_class_started_by)"
    )
    assert server_mod.subprocess is subprocess, "Prefect's server module no longer uses `subprocess` by that name"

    from cli.prefectcompat import server_class_started_by

    calls = []

    def popen(args, **kwargs):
        calls.append((list(args), kwargs))
        return "started"

    cls = server_class_started_by(popen)
    with socket.socket() as sock:  # a port of our own: the process's default (port None) server is not touched
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = cls(port)
    try:
        assert cls(port) is server, "SubprocessASGIServer(port) no longer returns one instance per port"
        assert server._run_uvicorn_command() == "started"
    finally:
        server.stop()  # never started: only forgets the instance
    assert server_mod.subprocess is subprocess
    ((args, kwargs),) = calls
    assert "uvicorn" in args and str(port) in args, args
    assert "env" in kwargs
    for name in ("running", "server_process", "start", "stop"):
        assert hasattr(server, name), f"SubprocessASGIServer.{name} is gone (cli/env.py uses it)"
