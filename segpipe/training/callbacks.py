"""The callbacks of a training run: backup and restore, the best model, the EMA weights, the learning
rate and progress in the logs, early stopping across resumes."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
from keras import ops

from segpipe import cancel
from segpipe.config.budget import TrainingPlan, progress_line
from segpipe.fsutil import atomic_write_json, read_json
from segpipe.kerascompat import ema_weights_in_model
from segpipe.training.run_dir import BACKUP_METADATA, BACKUP_WEIGHTS, MONITOR, _backup_epoch


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


class StopOnRequest(keras.callbacks.Callback):
    """Stop at the next batch once a stop was requested (`segpipe.cancel`: Ctrl-C, SIGTERM).

    The CLI's signal handler raises KeyboardInterrupt in whatever Python code the main thread runs. When
    that is a finalizer (an asyncio transport's `__del__` collected mid-step), Python prints "Exception
    ignored" and carries on: training went on after Ctrl-C. The handler also requests the stop, and this
    callback turns the request into `cancel.Cancelled` (a KeyboardInterrupt) at the next batch, before any
    epoch-end callback records a partial epoch. (The other stages' loops stop at their next
    `segpipe.progress.Progress.advance`; training's progress is per epoch.)"""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        cancel.check("training")

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        cancel.check("validating")


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Back up the training state at the end of each epoch; restore it at the start of each `fit`.

    The backup is Keras' BackupAndRestore layout: `backup_dir/latest.weights.h5` (the model's weights
    and the optimizer's state, by `model.save_weights`) and `training_metadata.json` ({"epoch": epochs
    completed, "batch": 0}), each replaced atomically, so a kill while saving leaves the previous epoch's
    backup intact. Epochs that ended with a NaN loss are not backed up. `fit` resumes at
    `completed_epochs()`: pass it as `initial_epoch`. The backup is kept at the end of `fit`.
    """

    def __init__(self, backup_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.weights_path = self.backup_dir / BACKUP_WEIGHTS
        self.metadata_path = self.backup_dir / BACKUP_METADATA

    def completed_epochs(self) -> int:
        return _backup_epoch(self.backup_dir)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.weights_path.is_file():
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:  # its variables must exist to be loaded
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(self.weights_path))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not _finite_loss(logs):
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        _save_atomically(self.weights_path, lambda p: self.model.save_weights(p, overwrite=True))
        atomic_write_json(self.metadata_path, {"epoch": epoch + 1, "batch": 0})


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """With an EMA optimizer: validation runs on the averaged weights, and `averaged()` swaps them in.

    Training and the backup keep the raw weights in the model (the averages stay in
    the optimizer's variables, which the backup saves too), so a resumed run continues
    exactly; only validation and the best checkpoint see the averages.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=False)

    def averaged(self) -> contextlib.AbstractContextManager[None]:
        """The averages in the model inside; call outside validation (e.g. in `on_epoch_end`)."""
        return ema_weights_in_model(self)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the whole model atomically whenever `monitor` reaches a new maximum.

    The best score is kept in `state_path`, so a resumed run only replaces the
    model with a better one. With `weights` (an `AveragedWeights`), the model is
    saved with the averaged weights. With `for_saving`, the model saved is what it returns (called
    with the averaged weights in place): a progressive run's fixed-size copy of the model it trains.
    """

    def __init__(
        self, path: Path, state_path: Path, monitor: str = MONITOR, weights: AveragedWeights | None = None,
        for_saving: Callable[[], keras.Model] | None = None,
    ):
        super().__init__()
        self.path, self.state_path, self.monitor = Path(path), Path(state_path), monitor
        self.weights = weights
        self.for_saving = for_saving
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
            model = self.for_saving() if self.for_saving is not None else self.model
            _save_atomically(self.path, model.save)
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
    """Time each epoch; `line(epoch)` reports progress against the budget and an ETA (and, in a progressive run,
    the size the epoch trained at: `sizes` = (progressive_img_size, img_size))."""

    def __init__(self, plan: TrainingPlan, sizes: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.plan = plan
        self.sizes = sizes if plan.small_epochs else None
        self._durations: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._durations.append(time.monotonic() - self._started)

    def line(self, epoch: int) -> str:
        recent = self._durations[-5:]  # the first epoch includes tracing; later ones say more
        per_epoch = sum(recent) / len(recent) if recent else None
        size = None if self.sizes is None else self.sizes[0 if epoch < self.plan.small_epochs else 1]
        return progress_line(self.plan, epoch, per_epoch, size)
