"""Cache policies and retry rules: the one place where Prefect caching is decided.

Every cache key is a digest of *content*: archive digests, dataset keys,
configuration values and the source code of the task and of the library
modules it calls. Paths and modification times never enter a key.

A cached result is only trusted while the artifact it points at is still on
disk: when the artifact is gone (someone deleted part of WORK) the policy
forces one fresh run instead of returning a stale result.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from segpipe.fsutil import digest_json, source_digest

OutputsOk = Callable[[dict[str, Any]], bool]


@dataclass
class ContentKey(CachePolicy):
    """Key = digest(task source, library source, chosen inputs); stale records are bypassed.

    `inputs`: names of task inputs that carry content identifiers (digests,
    keys, configuration). Inputs not named here (paths, the work directory,
    progress flags) do not enter the key.
    `modules`: dotted names of library modules whose source is part of the
    key, so a code change recomputes exactly the stages it affects.
    `outputs_ok`: given the task inputs, True while the artifact is complete.
    """

    inputs: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    outputs_ok: OutputsOk | None = None
    _code: str | None = field(default=None, repr=False)

    def _code_digest(self, task_ctx: TaskRunContext) -> str:
        if self._code is None:
            import inspect

            fn = task_ctx.task.fn
            self._code = digest_json([inspect.getsource(fn), source_digest(*self.modules)])
        return self._code

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if task_ctx is None:
            return None
        material = {name: _plain(inputs.get(name)) for name in self.inputs}
        key = f"{task_ctx.task.name}-{digest_json([self._code_digest(task_ctx), material])[:32]}"
        if self.outputs_ok is not None and not self.outputs_ok(inputs):
            store = getattr(task_ctx, "result_store", None)
            if store is not None and store.exists(key):
                # The record exists but its artifact is gone: run once, uncached.
                return f"{key}-rebuild-{uuid.uuid4().hex}"
        return key


def _plain(value: Any) -> Any:
    """Content of a value for hashing: `cache_content()` where defined, pydantic models by their data."""
    if hasattr(value, "cache_content"):
        return value.cache_content()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    return value


# Retries: exponential backoff with jitter, transient errors only.
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
