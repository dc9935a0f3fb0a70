"""Retry settings of the tasks that retry, and which errors count as transient.

The tasks only name the settings on their decorators: `@task(..., **DOWNLOAD_RETRY)`. A retry is for a
transient error only (a dropped connection, a 503, a killed worker); a bad input fails at once. Which
download errors are transient is the library's call (`segpipe.data.download.is_transient`); training's is
`training_failure_is_transient` below. Cache policies are in `tasks/caching.py`.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect.tasks import exponential_backoff

from segpipe.data.download import is_transient

# Downloads: exponential backoff with jitter, transient errors only.
DOWNLOAD_RETRIES = 4
DOWNLOAD_RETRY_DELAYS = exponential_backoff(backoff_factor=2)(DOWNLOAD_RETRIES)
RETRY_JITTER = 0.5


def retry_if_transient(is_transient: Callable[[BaseException], bool]):
    """A Prefect `retry_condition_fn` that retries only when `is_transient(exception)`."""

    def condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # noqa: BLE001 - the state itself could not be read
            exc = err
        return isinstance(exc, BaseException) and is_transient(exc)

    return condition


def training_failure_is_transient(exc: BaseException) -> bool:
    """Bad configuration or data is not retried; anything else (OOM, a killed worker, NaN) is, once."""
    return not isinstance(exc, (ValueError, TypeError, FileNotFoundError, KeyError))


# `@task(..., **DOWNLOAD_RETRY)`: the keywords of Prefect's `task` decorator.
DOWNLOAD_RETRY: dict[str, Any] = {
    "retries": DOWNLOAD_RETRIES, "retry_delay_seconds": DOWNLOAD_RETRY_DELAYS, "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": retry_if_transient(is_transient),
}
TRAIN_RETRY: dict[str, Any] = {
    "retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": retry_if_transient(training_failure_is_transient),
}
