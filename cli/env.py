"""Prefect environment for local runs, set before Prefect is imported.

- No API URL configured → segpipe's local Prefect server, started in the background once and reused
  (`cli.server`); with `SEGPIPE_PREFECT_SERVER=embedded`, Prefect's embedded ephemeral API on SQLite,
  started and stopped by each command (below).
- Analytics off: the server's, and the client's (`DO_NOT_TRACK=1`; Prefect prints a notice about it
  on a terminal otherwise).
- `PREFECT_HOME` is left alone (Prefect's default, ~/.prefect) unless the user set it.
- Task results and cache records persist under WORK/prefect-results, so caches live and die with WORK.
- On the ephemeral API, no flow-run heartbeats (`local_run_settings`).

One role (the local Prefect environment: settings, the embedded server, draining at exit), a little over
300 lines because the server's start and stop belong together.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segpipe.layout import WorkDir


def ensure_prefect_home() -> Path | None:
    """Create `PREFECT_HOME` (parents included) if the user set it to a folder that does not exist yet.

    Prefect creates the folder but not its parents; without them its ephemeral server
    cannot open its SQLite database and the command fails only after the 90 s start-up
    timeout, with "Application startup failed". Raises OSError naming the folder.
    """
    home = os.environ.get("PREFECT_HOME")
    if not home:
        return None
    path = Path(home).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"PREFECT_HOME={home}: cannot create it ({exc.strerror or exc})") from None
    return path


def configure_prefect(work: Path, *, refresh: bool = False, result_storage: str | None = None) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side telemetry (and its notice on a terminal)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = result_storage or str(WorkDir(work).results)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"


@contextlib.contextmanager
def local_run_settings() -> Iterator[datetime]:
    """Flows run in this process on the ephemeral API or segpipe's background server: turn flow-run
    heartbeats off.

    Heartbeats let a server notice a crashed run; the ephemeral server stops with
    this process and the background server (`cli.server`) runs no service that
    reads them, and each flow run's end waits up to a second for the heartbeat
    thread (about 2.5 s of a cached `segpipe run`; BENCHMARKS.md, section 5). With
    the user's own server (`PREFECT_API_URL` set) they stay on. Enter after
    `configure_prefect`: this imports Prefect. Yields when the command's runs
    started (for `record_interruption`).
    """
    from prefect.settings import get_current_settings, temporary_settings

    from segpipe_app.cli.server import local_api_url

    started = datetime.now(timezone.utc)
    url = get_current_settings().api.url
    if url and url != local_api_url():  # the user's PREFECT_API_URL, a profile, or a test harness
        yield started
        return
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        try:
            yield started
        except Exception:  # a failed run's states and logs too (an interrupt has record_interruption)
            _send_what_is_queued(url, started)
            raise
    _send_what_is_queued(url, started)


def _send_what_is_queued(url: str | None, started: datetime) -> None:
    """Before the command exits: without it, Prefect's own drain at exit prints "Still processing items"."""
    if url:  # segpipe's background server (`cli.server`): it stays up, send it what is still queued
        _drain(5.0)
    else:
        _wait_for_task_run_records(started)


def _wait_for_task_run_records(since: datetime, timeout: float = 5.0, settle: float = 0.15) -> None:
    """Let the ephemeral server record this command's task runs before the process stops it.

    Task-run states reach the server as events, which it writes to its database one
    by one. Without the heartbeat thread's wait at each flow's end, the process can
    exit (and stop the server) while the last few are still being written: Prefect
    then logs "Error flushing ... events" tracebacks and the run history misses
    the last states. So: send the events still buffered here, then poll until every
    task run of the flow runs started since `since` is in a final state and their
    number has stopped changing, for at most `timeout` seconds (then the server is
    stopped anyway: a late state is lost, the run itself is not).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from segpipe_app.cli.prefectcompat import drain

    drain(timeout, logs=False, suppress_errors=False)
    deadline = time.monotonic() + timeout
    last = None
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        if not flow_runs:
            return
        task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id for run in flow_runs]))
        while time.monotonic() < deadline:
            runs = client.read_task_runs(task_run_filter=task_filter)
            now = (len(runs), sum(1 for run in runs if run.state is not None and run.state.is_final()))
            if now == last and now[0] == now[1]:
                return
            last = now
            time.sleep(settle)


# --------------------------------------------------------------------------- the ephemeral server, out of the terminal's reach

# Runs before uvicorn in the server's process: ask the kernel to send SIGTERM to it when the CLI dies
# (Linux; a `kill -9` of the CLI can no longer orphan the server), then become uvicorn.
_LAUNCHER = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != parent:  # the CLI died before the kernel was asked
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""

_server_class: Any = None
_local_server: Any = None  # the server `start_local_server` started (or found running)


def _detached_popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """Start the server's uvicorn through `_LAUNCHER`, in its own session."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *map(str, args)], start_new_session=True, **kwargs,
    )


def _detached_server_class() -> Any:
    """Prefect's ephemeral server, its uvicorn child in its own session and dying with the CLI.

    Prefect starts its ephemeral server as a plain child: the same process group as the
    CLI, so a Ctrl-C in a terminal (or `timeout`, `docker stop`, a supervisor signalling the
    group) reached the server at the same moment as the CLI. The server was gone before the
    CLI could record the interrupted run: the run stayed "Running" for ever, and the CLI
    spent over two minutes retrying a refused connection. In its own session the server
    hears no terminal signal; the CLI records the run, then stops it.
    """
    global _server_class
    if _server_class is None:
        from segpipe_app.cli.prefectcompat import server_class_started_by

        _server_class = server_class_started_by(_detached_popen)
    return _server_class


def start_local_server() -> Any | None:
    """Start the ephemeral Prefect server now, detached from the terminal (see `_detached_server_class`).

    Prefect keeps one server instance per process (`SubprocessASGIServer()` returns it), so every
    client of this command uses this one. Returns the server, or None when an API URL is
    configured, the ephemeral server is off, or this is not the main thread (the kernel's
    parent-death signal follows the thread that started the child).
    """
    import threading

    from prefect.settings import get_current_settings

    global _local_server
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    server = _detached_server_class()()  # the process's one server: the running one, if there is one
    if not server.running:
        server.start()
    _local_server = server
    return server


def server_pid() -> int | None:
    """The process id of the ephemeral Prefect server `start_local_server` started, while it runs."""
    process = getattr(_local_server, "server_process", None)
    return None if process is None or process.poll() is not None else process.pid


def stop_local_server() -> None:
    """Send what is still queued for the server (events, logs), then stop the one `start_local_server` started."""
    global _local_server
    server, _local_server = _local_server, None
    if server is None:
        return
    _drain(2.0)
    server.stop()


def _drain(timeout: float) -> None:
    from segpipe_app.cli.prefectcompat import drain

    drain(timeout)


# --------------------------------------------------------------------------- recording an interrupted command


@dataclass(frozen=True)
class Interruption:
    """What an interrupted command was doing, as its Prefect server recorded it."""

    stages: list[str]  # the tasks that were running (e.g. ["train"]), else the innermost unfinished flow
    # (flow, as `stage_of_flow` names it; run name; state) of each run that did not complete, outermost first
    flow_runs: list[tuple[str, str, str]]
    marked: int  # runs this process had to move to Crashed itself (Prefect had not recorded the interrupt)


def record_interruption(since: datetime, timeout: float = 3.0) -> Interruption:
    """After a Ctrl-C or SIGTERM: make sure no run of this command stays "Running" on the server.

    Prefect's engine records the interrupted flow and task runs as Crashed itself when it
    can; this sends what is still queued, then moves every flow or task run started since
    `since` that is still not final to Crashed (forced). Returns what was interrupted; raises
    what the client raises when the server cannot be reached. Takes about `timeout` seconds
    at most.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    _drain(timeout / 2)
    deadline = time.monotonic() + timeout
    httpx_settings = {"timeout": max(0.5, timeout / 2)}
    with get_client(sync_client=True, httpx_settings=httpx_settings) as client:
        flow_filter = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since))
        flows = client.read_flow_runs(flow_run_filter=flow_filter)
        if not flows:
            return Interruption([], [], 0)
        task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id for run in flows]))
        tasks = _settled_task_runs(client, task_filter, deadline)
        subflow_wrappers = {f.parent_task_run_id for f in flows if f.parent_task_run_id}
        tasks = [t for t in tasks if t.id not in subflow_wrappers]  # a subflow's own task run is not a stage
        interrupted = [t for t in tasks if _unfinished(t) or (t.state is not None and t.state.is_crashed())]
        marked = _mark_crashed(client, tasks, flows)
        flows = client.read_flow_runs(flow_run_filter=flow_filter)
        flow_names = {fid: stage_of_flow(client.read_flow(fid).name) for fid in {f.flow_id for f in flows}}
    unfinished = [
        (flow_names[f.flow_id], f.name, f.state.name if f.state else "unknown")
        for f in sorted(flows, key=lambda f: f.expected_start_time or since)
        if not (f.state and f.state.is_completed())
    ]
    return Interruption(_stages(interrupted, flows, flow_names, since), unfinished, marked)


def _settled_task_runs(client: Any, task_filter: Any, deadline: float) -> list[Any]:
    """The task runs, read again until none is unfinished or 1 s before `deadline`."""
    tasks = client.read_task_runs(task_run_filter=task_filter)
    while any(_unfinished(t) for t in tasks) and time.monotonic() < deadline - 1.0:
        time.sleep(0.1)  # the server writes task-run states from events, one by one
        tasks = client.read_task_runs(task_run_filter=task_filter)
    return tasks


def _mark_crashed(client: Any, tasks: list[Any], flows: list[Any]) -> int:
    """Move every unfinished task and flow run to Crashed (forced); return how many."""
    from prefect.states import Crashed

    message = "Execution was interrupted (Ctrl-C or SIGTERM)"
    marked = 0
    for run in filter(_unfinished, tasks):
        client.set_task_run_state(run.id, Crashed(message=message), force=True)
        marked += 1
    for run in filter(_unfinished, flows):
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        marked += 1
    return marked


def _stages(interrupted: list[Any], flows: list[Any], flow_names: dict[Any, str], since: datetime) -> list[str]:
    """The interrupted tasks' stages; interrupted between tasks, the innermost flow that did not complete."""
    stages = sorted({t.name.rsplit("-", 1)[0] for t in interrupted})
    if not stages:
        open_flows = [f for f in flows if f.state is None or not f.state.is_completed()]
        if open_flows:
            stages = [flow_names[max(open_flows, key=lambda f: f.expected_start_time or since).flow_id]]
    return stages


def stage_of_flow(flow_name: str) -> str:
    """What a user calls a flow: the flow of one stage is named `<stage>-flow` in Prefect (flows/), so that it
    differs from its task's name; the user ran `segpipe <stage>`."""
    return flow_name.removesuffix("-flow")


def _unfinished(run: Any) -> bool:
    return run.state is None or not run.state.is_final()
