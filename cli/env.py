"""Prefect environment for local runs, set before Prefect is imported.

- No API URL configured → Prefect's embedded ephemeral API on SQLite (no server to start).
- Analytics off.
- `PREFECT_HOME` is left alone (Prefect's default, ~/.prefect) unless the user set it.
- Task results and cache records persist under WORK/prefect-results, so caches live and die with WORK.
- On the ephemeral API, no flow-run heartbeats (`local_run_settings`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

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
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = result_storage or str(WorkDir(work).results)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"


@contextlib.contextmanager
def local_run_settings() -> Iterator[None]:
    """Flows run in this process on the ephemeral API: turn flow-run heartbeats off.

    Heartbeats let a server notice a crashed run; the ephemeral server stops with
    this process, so nobody would read them, and each flow run's end waits up to
    a second for the heartbeat thread (about 2.5 s of a cached `segpipe run`;
    BENCHMARKS.md, section 5). With a real server (`PREFECT_API_URL` set) they
    stay on. Enter after `configure_prefect`: this imports Prefect.
    """
    from prefect.settings import get_current_settings, temporary_settings

    if get_current_settings().api.url:  # PREFECT_API_URL, a profile, or a test harness
        yield
        return
    started = datetime.now(timezone.utc)
    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield
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
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout, at_exit=False)
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
