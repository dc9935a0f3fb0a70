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

    from segpipe_app.cli.prefectcompat import drain

    drain(0.5)  # nothing buffered: returns at once
    drain(0.5, logs=False, suppress_errors=False)


def test_the_ephemeral_server_still_starts_uvicorn_through_its_modules_subprocess_popen():
    from prefect.server.api import server as server_mod

    assert hasattr(server_mod.SubprocessASGIServer, "_run_uvicorn_command"), (
        "Prefect's SubprocessASGIServer._run_uvicorn_command is gone (cli/prefectcompat.py: server_class_started_by)"
    )
    assert server_mod.subprocess is subprocess, "Prefect's server module no longer uses `subprocess` by that name"

    from segpipe_app.cli.prefectcompat import server_class_started_by

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


def test_the_background_server_is_launched_as_prefects_embedded_server_is():
    """`cli.server` starts `SERVER_APP` with `EMBEDDED_SERVER_ENV`, copied from how Prefect launches its embedded
    server; `create_app` must still read the private variables."""
    from prefect.server.api import server as server_mod

    from segpipe_app.cli.prefectcompat import EMBEDDED_SERVER_ENV, SERVER_APP

    launch = inspect.getsource(server_mod.SubprocessASGIServer._run_uvicorn_command)
    _, factory = SERVER_APP.split(":")
    assert f'"{SERVER_APP}"' in launch and getattr(server_mod, factory) is server_mod.create_app, (
        f"Prefect's embedded server no longer runs {SERVER_APP} (cli/prefectcompat.py: SERVER_APP)")
    for name, value in EMBEDDED_SERVER_ENV.items():
        assert f'"{name}": "{value}"' in launch, (
            f"Prefect's embedded server is no longer started with {name}={value} (cli/prefectcompat.py: "
            "EMBEDDED_SERVER_ENV)")
    create_app = inspect.getsource(server_mod.create_app)
    for name in ("PREFECT__SERVER_EPHEMERAL", "PREFECT__SERVER_FINAL"):
        assert f'os.getenv("{name}")' in create_app, f"Prefect's create_app no longer reads {name}"
