"""Read back task-run states from the Prefect API (states are reported asynchronously)."""

from __future__ import annotations


def task_states_since(t0, expect=(), deadline_s: float = 60.0) -> dict[str, list[str]]:
    """Final state names of the task runs started after t0, once Prefect has recorded them.

    Task runs and their states reach the API asynchronously (as events, written one by one), so one read
    right after a flow returns can miss a task run altogether, not only its last state. Polled, as the CLI
    does (`cli.env._wait_for_task_run_records`), until every task named in `expect` has a run, no run is
    unfinished, and two reads in a row agree; at the deadline, what is recorded by then (the caller's
    asserts then say what is missing).
    """
    import time

    deadline = time.monotonic() + deadline_s
    last = None
    while True:
        states = read_task_states(t0)
        recorded = set(expect) <= set(states) and not {"Running", "Pending", "Scheduled"} & {
            s for names in states.values() for s in names
        }
        if (recorded and states == last) or time.monotonic() > deadline:
            return states
        last = states
        time.sleep(0.25)


def read_task_states(t0) -> dict[str, list[str]]:
    """State names by task name (`download`, `train`, ...) of the task runs started after t0.

    A subflow's own wrapper task run (Prefect records one per subflow call) is not a task: it is
    recognised as the parent task run of a flow run, whatever the flow's name.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=t0)))
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[r.id for r in runs]))
        ) if runs else []
    wrappers = {flow_run.parent_task_run_id for flow_run in subflows}
    states: dict[str, list[str]] = {}
    for run in runs:
        if run.id not in wrappers:
            states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state_name)
    return states
