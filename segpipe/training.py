"""Training: a config and a prepared dataset in, a run directory out.

    run_dir = work.run(run_id_for(cfg, dataset_key, code_version()))
    result = train(cfg, dataset_dir, run_dir)

A run directory holds

    config.json          the full PipelineConfig
    lineage.json         dataset key and manifest digest, code version, seed, library versions,
                         the run identity (encoder weights by sha256, never by path) and the plan
    model.keras          the best model so far by val_mean_iou (replaced atomically)
    best.json            epoch and score of model.keras
    history.csv          one row per completed epoch (epoch indices are 0-based, as in Keras)
    tensorboard/         TensorBoard logs
    backup/              BackupAndRestore state; removed once the run is complete
    train_summary.json   written last: the run is complete once it exists

Because the run id is derived from data + config + code, a killed or retried
run lands in the same directory and resumes from its last completed epoch;
a complete run is returned without training again.

The run's length comes from its budget of images seen (`segpipe.budget`). A
model on a pretrained encoder can keep the encoder frozen for the first
`train.freeze_encoder_images` (whole epochs; its BatchNormalization then runs
in inference mode) and fine-tune it afterwards at `train.encoder_lr_multiplier`
times the learning rate. The optimizer is built once over every variable that
will ever train, so unfreezing keeps the decoder's optimizer state and a resume
in either phase restores the same variables.

Training runs under `segpipe.distribute.strategy()`: one device, MirroredStrategy over
several, or MultiWorkerMirroredStrategy over the worker processes that TF_CONFIG names.
`train.batch_size` is the global batch in every case. With several workers, every worker
calls `train` with the same arguments (the run directory on a volume they all see); only the
chief writes the run directory. The others start from a copy of its state (backup, history,
best model), so each restores the same epoch and takes the same decisions, run every step,
and write into a scratch directory of their own that is removed at the end. The workers leave
`train` together, once the chief has written train_summary.json, and return the same result
(with `chief=False` on all but the chief); when one fails, the others fail too (their
collective ops lose a peer), so a restarted job starts all of them again and they resume
together. (Keras 3 needs `kerascompat.fit_under_multi_worker_strategy` for that strategy.)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from segpipe import distribute
from segpipe.budget import TrainingPlan, progress_line, training_plan
from segpipe.config import PipelineConfig, TrainConfig
from segpipe.data.input import eval_dataset, num_examples, training_dataset
from segpipe.data.split import require_train_split
from segpipe.fsutil import (
    atomic_write_json,
    atomic_write_text,
    code_version,
    digest_json,
    file_lock,
    read_json,
    sha256_file,
)
from segpipe.kerascompat import fit_under_multi_worker_strategy, variable_key
from segpipe.layout import MANIFEST
from segpipe.models.encoders import encoder_of
from segpipe.runs import run_id_for  # noqa: F401  (re-exported)
from segpipe.runs import run_identity as _identity

log = logging.getLogger(__name__)

NUM_CLASSES = 3
MONITOR = "val_mean_iou"
CONFIG_FILE = "config.json"
LINEAGE_FILE = "lineage.json"
SUMMARY_FILE = "train_summary.json"
MODEL_FILE = "model.keras"
BEST_FILE = "best.json"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced. Epoch indices are 0-based; `epochs_completed` is a count."""

    run_dir: Path
    model_path: Path
    epochs_completed: int
    best_epoch: int
    best_val_mean_iou: float
    history: list[dict[str, float]]
    resumed_from_epoch: int
    predicted_class_share: list[float] = field(default_factory=list)
    collapsed: bool = False
    stop_reason: str = "completed"
    cached: bool = False
    chief: bool = True  # False on the workers of a multi-worker run other than the chief


# --------------------------------------------------------------------------- identity




# --------------------------------------------------------------------------- learning rate


@keras.saving.register_keras_serializable(package="segpipe")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate` over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    With `decay="constant"` the rate stays at the peak after the warm-up.
    During warm-up, step s (0-based) uses peak * (s + 1) / warmup_steps.
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int, decay: str = "cosine"):
        if peak_learning_rate <= 0 or warmup_steps < 0 or total_steps < 1 or decay not in ("cosine", "constant"):
            raise ValueError(
                "WarmupCosineDecay needs peak_learning_rate > 0, warmup_steps >= 0, total_steps >= 1 and decay "
                f"'cosine' or 'constant'; got {peak_learning_rate}, {warmup_steps}, {total_steps}, {decay!r}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warm = peak * ops.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        if self.decay == "constant":
            return warm if self.warmup_steps else ops.full_like(step, peak)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
        }


class _ScaledLearningRate:
    """Optimizer mixin: the variables given to `scale_learning_rate` step at `multiplier` x the rate."""

    _scaled_keys: frozenset[Any] = frozenset()
    _multiplier: float = 1.0

    def scale_learning_rate(self, variables: list[Any], multiplier: float) -> None:
        """Call after `build`; `variables` must be among those the optimizer was built with."""
        self._scaled_keys = frozenset(variable_key(self, v) for v in variables)
        self._multiplier = float(multiplier)

    def finalize_variable_values(self, var_list: Any) -> None:
        """Leave the model's raw weights in place at the end of each `fit`.

        Keras would copy the EMA averages into `model.trainable_weights` here; with a frozen
        encoder that list is shorter than the optimizer's, and a run in two phases must go on
        from the raw weights. The averages reach model.keras through `BestModelCheckpoint`.
        """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        if self._multiplier != 1.0 and variable_key(self, variable) in self._scaled_keys:
            learning_rate = learning_rate * self._multiplier
        return super().update_step(gradient, variable, learning_rate)  # type: ignore[misc]


@keras.saving.register_keras_serializable(package="segpipe")
class FineTuneAdam(_ScaledLearningRate, keras.optimizers.Adam):
    """Adam whose encoder variables step at a multiple of the learning rate."""


@keras.saving.register_keras_serializable(package="segpipe")
class FineTuneAdamW(_ScaledLearningRate, keras.optimizers.AdamW):
    """AdamW whose encoder variables step at a multiple of the learning rate (weight decay is not scaled)."""


def build_optimizer(train_cfg: TrainConfig, plan: TrainingPlan) -> keras.optimizers.Optimizer:
    """Adam or AdamW with the warm-up + cosine/constant schedule of `train_cfg` over `plan`'s steps."""
    schedule = WarmupCosineDecay(
        train_cfg.learning_rate,
        warmup_steps=plan.warmup_steps,
        total_steps=plan.total_steps,
        decay=train_cfg.schedule,
    )
    ema: dict[str, Any] = (
        {"use_ema": True, "ema_momentum": train_cfg.ema_momentum} if train_cfg.ema_momentum is not None else {}
    )
    if train_cfg.optimizer == "adamw":
        return FineTuneAdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay, **ema)
    return FineTuneAdam(learning_rate=schedule, **ema)


PRECISION_POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16 in /proc/cpuinfo's flags).

    Without them TensorFlow emulates bfloat16 and mixed_bfloat16 is slower than float32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def precision_policy(setting: str) -> str:
    """The Keras dtype policy for `train.mixed_precision`; "auto" looks at the devices.

    auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bfloat16
    (measured 1.3-1.5x cheaper per image than float32 on such a CPU, with no loss
    of quality; BENCHMARKS.md), float32 otherwise.
    """
    if setting != "auto":
        return PRECISION_POLICIES[setting]
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"


# --------------------------------------------------------------------------- callbacks


def _save_atomically(path: Path, save: Callable[[str], Any]) -> None:
    """`save(tmp)` to a temporary name beside `path` that keeps its suffixes (Keras checks them), then rename."""
    suffix = "".join(path.suffixes)
    tmp = path.with_name(f".{path.name.removesuffix(suffix)}.tmp-{os.getpid()}{suffix}")
    try:
        save(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite_loss(logs: dict[str, Any] | None) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose weights and metadata files are each replaced atomically.

    A kill while saving leaves the previous epoch's backup intact. Epochs that
    ended with a NaN loss are not backed up.
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if _finite_loss(logs):
            super().on_epoch_end(epoch, logs)

    def _save_model(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        _save_atomically(Path(self._weights_path), lambda p: self.model.save_weights(p, overwrite=True))
        atomic_write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """With an EMA optimizer: validation runs on the averaged weights, and `averaged()` swaps them in.

    Training and the BackupAndRestore state keep the raw weights in the model
    (the averages stay in the optimizer's variables, which the backup saves
    too), so a resumed run continues exactly; only validation and the best
    checkpoint see the averages.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=False)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        if self._ema_weights_in_model:
            yield
            return
        self._swap_variables()
        self._ema_weights_in_model = True
        try:
            yield
        finally:
            self._swap_variables()
            self._ema_weights_in_model = False


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole model atomically whenever `monitor` reaches a new maximum.

    The best score is kept in `state_path`, so a resumed run only replaces the
    model with a better one. With `weights` (an `AveragedWeights`), the model is
    saved with the averaged weights.
    """

    def __init__(
        self, path: Path, state_path: Path, monitor: str = MONITOR, weights: AveragedWeights | None = None
    ):
        super().__init__()
        self.path, self.state_path, self.monitor = Path(path), Path(state_path), monitor
        self.weights = weights
        state = read_json(self.state_path) if self.state_path.is_file() and self.path.is_file() else {}
        self.best = float(state.get("value", -math.inf))
        self.best_epoch: int | None = state.get("epoch")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(f"BestModelCheckpoint monitors {self.monitor!r}, which is not in the logs: {sorted(logs)}")
        value = float(logs[self.monitor])
        if not (_finite_loss(logs) and math.isfinite(value) and value > self.best):
            return
        with self.weights.averaged() if self.weights is not None else contextlib.nullcontext():
            _save_atomically(self.path, self.model.save)
        self.best, self.best_epoch = value, epoch
        atomic_write_json(self.state_path, {"epoch": epoch, "monitor": self.monitor, "value": value})


class LearningRateLogger(keras.callbacks.Callback):
    """Add `learning_rate` (the rate the next step will use) to the epoch logs, for history.csv and TensorBoard."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that replays the monitored values of epochs completed before this `fit`.

    `prior_values` is a list, or a callable read at the start of each fit (a run
    in two phases calls fit twice; the second replays the first's epochs).
    """

    def __init__(self, prior_values: list[float] | Callable[[], list[float]], **kwargs: Any):
        super().__init__(**kwargs)
        self.prior_values = prior_values

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        prior = self.prior_values() if callable(self.prior_values) else self.prior_values
        for epoch, value in enumerate(prior):
            self.on_epoch_end(epoch, {self.monitor: value})


class BudgetProgress(keras.callbacks.Callback):
    """Time each epoch; `line(epoch)` reports progress against the budget and an ETA."""

    def __init__(self, plan: TrainingPlan) -> None:
        super().__init__()
        self.plan = plan
        self._durations: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._durations.append(time.monotonic() - self._started)

    def line(self, epoch: int) -> str:
        recent = self._durations[-5:]  # the first epoch includes tracing; later ones say more
        per_epoch = sum(recent) / len(recent) if recent else None
        return progress_line(self.plan, epoch, per_epoch)


# --------------------------------------------------------------------------- run-directory helpers


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger file as dicts: `epoch` an int, every other column a float."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v not in (None, "")}
            for row in csv.DictReader(f)
        ]


def _truncate_history(path: Path, keep_epochs: int) -> None:
    """Drop rows of epochs >= `keep_epochs` (written by a run killed before its backup of that epoch)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(r[0]) < keep_epochs]
    if len(kept) == len(body):
        return
    if not kept:
        path.unlink()
        return
    lines = [",".join(header)] + [",".join(r) for r in kept]
    atomic_write_text(path, "\r\n".join(lines) + "\r\n")


def _backup_epoch(backup_dir: Path) -> int:
    """Epochs completed according to the BackupAndRestore metadata (0 when there is none)."""
    meta = backup_dir / "training_metadata.json"
    return int(read_json(meta)["epoch"]) if meta.is_file() and (backup_dir / "latest.weights.h5").is_file() else 0


def _check_same_run(run_dir: Path, identity: dict[str, Any], dataset_key: str) -> None:
    """Refuse a run directory that holds a run of another config or dataset.

    Compared by identity (encoder weights by sha256), so a weights file that moved still resumes its run.
    """
    lineage_path = run_dir / LINEAGE_FILE
    if not lineage_path.is_file():
        return
    lineage = read_json(lineage_path)
    if "identity" in lineage and lineage["identity"] != identity:
        raise ValueError(
            f"run_dir {run_dir} holds a run with a different model/train config; "
            "use run_id_for(cfg, dataset_key, code) to name run directories"
        )
    if lineage.get("dataset_key") != dataset_key:
        raise ValueError(f"run_dir {run_dir} holds a run on another dataset than {dataset_key!r}")


def _write_lineage(
    run_dir: Path, cfg: PipelineConfig, dataset_dir: Path, dataset_key: str, resumed: int, dtype_policy: str,
    identity: dict[str, Any], plan: TrainingPlan, distribution: dict[str, Any] | None = None,
) -> None:
    path = run_dir / LINEAGE_FILE
    old = read_json(path) if path.is_file() else {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, {
        "run_id": run_dir.name,
        "identity": identity,
        "dataset_key": dataset_key,
        "dataset_dir": str(dataset_dir),
        "dataset_manifest_sha256": sha256_file(dataset_dir / MANIFEST),
        "code_version": code_version(),
        "seed": cfg.train.seed,
        "encoder": cfg.model.encoder,
        "encoder_weights": identity["model"]["encoder_weights"],
        "plan": plan.to_json(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "distribution": distribution or {},
        "dtype_policy": dtype_policy,
        "started_at": old.get("started_at", now),
        "resumed_at": old.get("resumed_at", []) + ([{"at": now, "from_epoch": resumed}] if resumed else []),
    })


def _result_from_summary(run_dir: Path, summary: dict[str, Any], *, cached: bool) -> TrainResult:
    return TrainResult(
        run_dir=run_dir,
        model_path=run_dir / MODEL_FILE,
        epochs_completed=summary["epochs_completed"],
        best_epoch=summary["best_epoch"],
        best_val_mean_iou=summary["best_val_mean_iou"],
        history=read_history(run_dir / HISTORY_FILE),
        resumed_from_epoch=summary["resumed_from_epoch"],
        predicted_class_share=summary["predicted_class_share"],
        collapsed=summary["collapsed"],
        stop_reason=summary["stop_reason"],
        cached=cached,
    )


# --------------------------------------------------------------------------- after training


def inference_check(
    model_path: Path,
    dataset_dir: Path,
    *,
    img_size: int,
    batch_size: int,
    collapse_threshold: float,
    split: str = "val",
) -> dict[str, Any]:
    """Scores of the saved model on `split` in inference mode (BatchNorm uses its moving statistics).

    Catches the failure where BN moving statistics never caught up and the
    model predicts (nearly) one class at inference, whatever it did in training.
    """
    from segpipe.metrics import ConfusionAccumulator

    model = keras.saving.load_model(model_path, compile=False)
    acc = ConfusionAccumulator(NUM_CLASSES)
    for images, labels in eval_dataset(dataset_dir, split, img_size=img_size, batch_size=batch_size):
        probs = model(images, training=False)
        acc.update(labels.numpy()[..., 0], ops.convert_to_numpy(ops.argmax(probs, axis=-1)))
    return acc.scores(collapse_threshold=collapse_threshold)


# --------------------------------------------------------------------------- train


def _default_verbose() -> int:
    return 1 if sys.stdout.isatty() else 2


# What a non-chief worker copies from the chief's run directory before it starts (see the module doc).
_WORKER_STATE = (f"{BACKUP_DIR}/latest.weights.h5", f"{BACKUP_DIR}/training_metadata.json", HISTORY_FILE,
                 BEST_FILE, MODEL_FILE)


@contextlib.contextmanager
def _output_dir(run_dir: Path, task: distribute.ClusterTask | None) -> Iterator[Path]:
    """Where this process writes: the run directory for the chief (or a single process); for any other
    worker, a scratch directory that starts as a copy of the chief's resumable state (what exists of it)
    and is removed on the way out."""
    if task is None or task.is_chief:
        yield run_dir
        return
    with distribute.scratch_dir(task) as scratch:
        for name in _WORKER_STATE:
            if (run_dir / name).is_file():
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / name, scratch / name)
        yield scratch


def train(
    cfg: PipelineConfig,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train `cfg.model` on `dataset_dir` into `run_dir`; resume a killed run; return a complete one as is.

    `on_epoch_end(epoch, logs)` is called after each epoch is fully saved
    (0-based epoch, logs with loss, mean_iou, pixel_accuracy and their val_ versions,
    and `progress`: the epoch against the budget with an ETA, as text).
    """
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    manifest_path = dataset_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} has no {MANIFEST}: not a prepared dataset")
    dataset_key = read_json(manifest_path).get("dataset_key") or dataset_dir.name
    n_train = num_examples(dataset_dir, "train")
    require_train_split({"train": n_train, "val": num_examples(dataset_dir, "val")}, dataset_key)

    identity = _identity(cfg)
    plan = training_plan(cfg.train, n_train)
    # Before any other TensorFlow op: a MultiWorkerMirroredStrategy cannot be created after one.
    strategy = distribute.strategy()
    task = distribute.cluster_task()
    chief = task is None or task.is_chief
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    # Only the chief locks: the other workers only read the run directory, and the chief holds
    # the lock for the whole run, which it cannot finish without them.
    with file_lock(run_dir / ".lock") if chief else contextlib.nullcontext():
        _check_same_run(run_dir, identity, dataset_key)
        summary_path = run_dir / SUMMARY_FILE
        if summary_path.is_file() and (run_dir / MODEL_FILE).is_file():
            summary = read_json(summary_path)
            if summary.get("identity") == identity and summary.get("dataset_key") == dataset_key:
                log.info("run %s is already complete; not training again", run_dir)
                return dataclasses.replace(_result_from_summary(run_dir, summary, cached=True), chief=chief)

        with _output_dir(run_dir, task) as out_dir:
            resumed = _backup_epoch(out_dir / BACKUP_DIR)
            _truncate_history(out_dir / HISTORY_FILE, resumed)
            policy = precision_policy(cfg.train.mixed_precision)
            if chief:
                atomic_write_json(run_dir / CONFIG_FILE, cfg.model_dump(mode="json"))
                _write_lineage(run_dir, cfg, dataset_dir, dataset_key, resumed, policy, identity, plan,
                               distribute.describe(strategy))
            if resumed:
                log.info("resuming %s after epoch %d", run_dir, resumed)

            previous_policy = keras.mixed_precision.global_policy()
            try:
                keras.mixed_precision.set_global_policy(policy)
                stop_reason = _fit(cfg, dataset_dir, out_dir, plan, resumed, on_epoch_end, verbose, strategy)
            finally:
                keras.mixed_precision.set_global_policy(previous_policy)

            if not chief:
                distribute.barrier(strategy)  # returns once the chief has written the summary
                return dataclasses.replace(
                    _result_from_summary(run_dir, read_json(summary_path), cached=False), chief=False
                )
        summary = _summarise(cfg, dataset_dir, run_dir, dataset_key, identity, resumed, stop_reason, plan)
        atomic_write_json(summary_path, summary)
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
        if task is not None:
            distribute.barrier(strategy)  # the other workers leave with this one
        return _result_from_summary(run_dir, summary, cached=False)


def _build_and_compile(cfg: PipelineConfig, plan: TrainingPlan) -> tuple[keras.Model, Callable[[bool], None]]:
    """The model and a `compile_phase(encoder_frozen)` that sets the encoder's state and (re)compiles.

    The optimizer is built here over every variable that will ever train, so a
    phase change keeps its state and a backup holds the same variables in both phases.
    """
    from segpipe.losses import build_loss
    from segpipe.models import build_model

    t = cfg.train
    model = build_model(cfg.model.name, (t.img_size, t.img_size, 3), NUM_CLASSES, **cfg.model.params())
    encoder = encoder_of(model)
    optimizer = build_optimizer(t, plan)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)  # everything trainable: the encoder is not frozen yet
    if encoder is not None and t.encoder_lr_multiplier != 1.0:
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        inner.scale_learning_rate(encoder.trainable_variables, t.encoder_lr_multiplier)
    loss = build_loss(t.loss, num_classes=NUM_CLASSES, dice_weight=t.dice_weight,
                      focal_gamma=t.focal_gamma, class_weights=t.class_weights)

    def compile_phase(encoder_frozen: bool) -> None:
        if encoder is not None:
            set_encoder_trainable(encoder, not encoder_frozen, batch_norm=not (encoder_frozen or t.freeze_encoder_bn))
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=[
                keras.metrics.MeanIoU(num_classes=NUM_CLASSES, sparse_y_pred=False, name="mean_iou"),
                keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
            ],
            jit_compile=t.jit_compile,
        )

    return model, compile_phase


def set_encoder_trainable(encoder: keras.Model, trainable: bool, *, batch_norm: bool) -> None:
    """Freeze or unfreeze `encoder`; a BatchNormalization layer that is not trainable runs in inference mode
    (Keras 3), so a frozen encoder keeps its statistics too. `batch_norm=False` keeps BN frozen when unfrozen."""
    encoder.trainable = trainable
    if trainable and not batch_norm:
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def _fit(
    cfg: PipelineConfig,
    dataset_dir: Path,
    run_dir: Path,
    plan: TrainingPlan,
    resumed: int,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
    verbose: int | None,
    strategy: tf.distribute.Strategy | None = None,
) -> str:
    """Build, compile and fit under `strategy` (default: `distribute.strategy()`), in a frozen-encoder
    phase first when the plan has one, writing into `run_dir`; return why training stopped: completed,
    early_stopping or nan."""
    t = cfg.train
    keras.utils.set_random_seed(t.seed)
    # Endless, with steps_per_epoch given to fit: fit then keeps ONE iterator for the whole run instead of
    # starting a new one every epoch (each start re-optimises the augmenting map: ~45 ms of CPU per epoch,
    # and the prefetch buffers start empty; see BENCHMARKS.md, input pipeline).
    train_ds = training_dataset(
        dataset_dir, img_size=t.img_size, batch_size=t.batch_size, augment=t.augment, seed=t.seed, repeat=True,
        augment_options=t.augment_options(),
    )
    val_ds = eval_dataset(dataset_dir, "val", img_size=t.img_size, batch_size=t.batch_size)

    strategy = strategy or distribute.strategy()
    with strategy.scope():
        model, compile_phase = _build_and_compile(cfg, plan)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        fit_under_multi_worker_strategy(model)  # keras-team/keras#20585

    history_path = run_dir / HISTORY_FILE
    early = None
    averaged = AveragedWeights() if t.ema_momentum is not None else None
    progress = BudgetProgress(plan)
    callbacks: list[keras.callbacks.Callback] = [
        LearningRateLogger(),  # first: the callbacks below see logs["learning_rate"]
        progress,
        *([averaged] if averaged is not None else []),  # validation on the averaged weights
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR), write_graph=False, update_freq="epoch"),
        BestModelCheckpoint(run_dir / MODEL_FILE, run_dir / BEST_FILE, weights=averaged),
    ]
    if t.early_stopping_patience > 0:
        early = ResumableEarlyStopping(
            lambda: [row[MONITOR] for row in read_history(history_path) if MONITOR in row],
            monitor=MONITOR, mode="max", patience=t.early_stopping_patience,
        )
        callbacks.append(early)
    # Last but one: an epoch counts as done for a resume only once everything above is written.
    callbacks.append(AtomicBackupAndRestore(str(run_dir / BACKUP_DIR), save_freq="epoch", delete_checkpoint=False))
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch_end(
                epoch, {**{k: float(v) for k, v in (logs or {}).items()}, "progress": progress.line(epoch)}
            )
        ))

    # Phases: (encoder frozen?, last epoch). A resume past the frozen phase goes straight to the second.
    phases = [(True, plan.frozen_epochs)] if resumed < plan.frozen_epochs else []
    if plan.frozen_epochs < plan.epochs:
        phases.append((False, plan.epochs))
    losses: list[float] = []
    for frozen, end_epoch in phases:
        with strategy.scope():  # the compiled metrics' variables too: reduced over all replicas and workers
            compile_phase(frozen)
        if frozen or plan.frozen_epochs:
            log.info("epochs up to %d: encoder %s", end_epoch, "frozen" if frozen else "fine-tuned")
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=end_epoch, steps_per_epoch=plan.steps_per_epoch,
            shuffle=False, callbacks=callbacks, verbose=_default_verbose() if verbose is None else verbose,
        )
        losses += history.history.get("loss", [])
        if (losses and not math.isfinite(losses[-1])) or (early is not None and early.stopped_epoch > 0):
            break
    if losses and not math.isfinite(losses[-1]):
        return "nan"
    if early is not None and early.stopped_epoch > 0:
        return "early_stopping"
    return "completed"


def _summarise(
    cfg: PipelineConfig, dataset_dir: Path, run_dir: Path, dataset_key: str, identity: dict[str, Any],
    resumed: int, stop_reason: str, plan: TrainingPlan,
) -> dict[str, Any]:
    """train_summary.json: best epoch and score, epochs completed, and the inference-mode check."""
    model_path, best_path = run_dir / MODEL_FILE, run_dir / BEST_FILE
    if not (model_path.is_file() and best_path.is_file()):
        raise RuntimeError(
            f"training in {run_dir} ended ({stop_reason}) without ever saving a model: {MONITOR} was never "
            f"finite with a finite loss; see {run_dir / HISTORY_FILE}"
        )
    best = read_json(best_path)
    history = read_history(run_dir / HISTORY_FILE)
    check = inference_check(
        model_path, dataset_dir, img_size=cfg.train.img_size, batch_size=cfg.train.batch_size,
        collapse_threshold=cfg.eval.collapse_threshold,
    )
    share = [check["predicted_class_share"][name] or 0.0 for name in check["predicted_class_share"]]
    if check["collapsed"]:
        log.warning(
            "the best model predicts one class for %.1f%% of val pixels in inference mode "
            "(class shares %s): BatchNorm statistics may not have caught up; try a lower bn_momentum, "
            "more epochs or a larger dataset",
            100 * max(share), [round(s, 4) for s in share],
        )
    return {
        "identity": identity,
        "dataset_key": dataset_key,
        "run_id": run_dir.name,
        "epochs_completed": len(history),
        "epochs_planned": plan.epochs,
        "images_seen": len(history) * plan.images_per_epoch,
        "budget_images": plan.budget_images,
        "best_epoch": int(best["epoch"]),
        "best_val_mean_iou": float(best["value"]),
        "resumed_from_epoch": resumed,
        "stop_reason": stop_reason,
        "predicted_class_share": share,
        "collapsed": bool(check["collapsed"]),
        "inference_val": {k: check[k] for k in ("mean_iou", "pixel_accuracy", "iou", "confusion_matrix")},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
