"""Where training runs: one device, several on one machine, or several worker processes.

    strategy = distribute.strategy()   # FIRST, before any other TensorFlow op in the process
    task = distribute.cluster_task()   # None for a single-process run
    task is None or task.is_chief

`strategy()` picks, in order:

- `TF_CONFIG` in the environment names a cluster of two or more tasks (chief + workers), as Kubernetes
  jobs and TensorFlow's own tooling set it: `MultiWorkerMirroredStrategy`, one per process. It
  must be created before TensorFlow is initialised (before any op, or a logical-device
  listing), so `segpipe.training.train` creates it first;
- several logical devices of the accelerator kind (several GPUs; on a machine without a GPU,
  a CPU split into several logical devices): `MirroredStrategy` over all of them;
- otherwise TensorFlow's default strategy.

Under either mirrored strategy the batch of a dataset given to `fit` is the global batch: Keras
splits each batch among the replicas (with several workers, each worker reads the whole input
pipeline and keeps its own part of every batch; see `segpipe.data.input`). Under either, `fit` reads the
training data through one iterator only (`segpipe.kerascompat.fit_reads_one_iterator`): Keras' own
throw-away build iterator let a worker start on the stream's next permutation, depending on timing, so
workers trained on overlapping examples. Each replica now trains on the examples one process would give
it, and the losses match one process's to float rounding (tests/training/test_distributed.py).

The chief is the task of type "chief", or worker 0 when the cluster has no chief (TensorFlow's
convention). Only the chief writes the run directory; the other workers run every step (their
collective ops need them) and write what they would write to a scratch directory of their own
(`scratch_dir`), removed at the end.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TF_CONFIG = "TF_CONFIG"
_TRAINING_JOBS = ("chief", "worker")


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, from TF_CONFIG."""

    task_type: str  # "chief" or "worker"
    task_index: int
    num_workers: int  # chief included
    has_chief: bool

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (not self.has_chief and self.task_index == 0)

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"


def cluster_task(environ: Mapping[str, str] | None = None) -> ClusterTask | None:
    """The task TF_CONFIG makes this process, or None for a single-process run.

    None when TF_CONFIG is unset or empty, or names a cluster of one task. Raises ValueError for a
    TF_CONFIG that is not valid JSON, lacks its task, names a task the cluster does not have, or
    asks for parameter servers or an evaluator (not supported: training is all-reduce only).
    """
    raw = (os.environ if environ is None else environ).get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{TF_CONFIG} must be a JSON object with 'cluster' and 'task', got {raw[:80]!r}")
    cluster: Any = config.get("cluster") or {}
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ValueError(f"{TF_CONFIG}: 'cluster' must map job names to lists of host:port, got {cluster!r}")
    unsupported = sorted(set(cluster) - set(_TRAINING_JOBS))
    if unsupported:
        raise ValueError(
            f"{TF_CONFIG}: cluster jobs {unsupported} are not supported; multi-worker training uses "
            "MultiWorkerMirroredStrategy, with 'chief' and 'worker' jobs only"
        )
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"{TF_CONFIG}: a cluster has at most one chief, got {cluster['chief']}")
    num_workers = sum(len(cluster.get(job, [])) for job in _TRAINING_JOBS)
    task: Any = config.get("task") or {}
    if not isinstance(task, dict):
        raise ValueError(f"{TF_CONFIG}: 'task' must be a JSON object, got {task!r}")
    task_type, task_index = task.get("type"), task.get("index", 0)
    if num_workers <= 1 and not task_type:
        return None  # a cluster of one: a plain single-process run
    if task_type not in _TRAINING_JOBS or not isinstance(task_index, int) or isinstance(task_index, bool):
        raise ValueError(
            f"{TF_CONFIG}: 'task' must be {{\"type\": \"chief\" or \"worker\", \"index\": N}}, got {task!r}"
        )
    if not 0 <= task_index < len(cluster.get(task_type, [])):
        raise ValueError(
            f"{TF_CONFIG}: task {task_type} {task_index} is not in the cluster ({task_type}: "
            f"{cluster.get(task_type, [])})"
        )
    if num_workers <= 1:
        return None
    return ClusterTask(task_type, task_index, num_workers, has_chief=bool(cluster.get("chief")))


def is_chief(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process writes the run directory: true for a single-process run."""
    task = cluster_task(environ)
    return task is None or task.is_chief


_multi_worker_strategy: Any = None


def strategy() -> Any:
    """The `tf.distribute.Strategy` to train under (see the module doc); call before any other TF op.

    The MultiWorkerMirroredStrategy is created once per process and then returned again. Its
    constructor waits until every worker of the cluster has started.
    """
    import tensorflow as tf

    global _multi_worker_strategy
    task = cluster_task()
    if task is not None:
        if _multi_worker_strategy is None:
            try:
                _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as exc:
                if "program startup" not in str(exc):
                    raise
                raise RuntimeError(
                    f"{TF_CONFIG} makes this process {task.name} of {task.num_workers} workers, but TensorFlow "
                    "was initialised before the MultiWorkerMirroredStrategy could be created; train in a fresh "
                    "process that runs no TensorFlow op (not even a logical-device listing) before "
                    "segpipe.training.train"
                ) from exc
        return _multi_worker_strategy
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus or tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def describe(strategy: Any) -> dict[str, Any]:
    """For lineage.json: the strategy's class, replicas in sync and, with several workers, this task."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        name = "MirroredStrategy"
    else:
        name = "default"
    out: dict[str, Any] = {"strategy": name, "replicas": int(strategy.num_replicas_in_sync)}
    task = cluster_task()
    if task is not None:
        out.update(num_workers=task.num_workers, task=task.name)
    return out


def barrier(strategy: Any) -> None:
    """Return once every worker has called this (an all-reduce over all replicas); raises
    `tf.errors.UnavailableError` when a worker is lost meanwhile."""
    import tensorflow as tf

    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


@contextlib.contextmanager
def scratch_dir(task: ClusterTask) -> Iterator[Path]:
    """A temporary directory for a non-chief worker's writes, removed on the way out."""
    path = Path(tempfile.mkdtemp(prefix=f"segpipe-{task.name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
