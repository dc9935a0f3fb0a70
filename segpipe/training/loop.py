"""`train`: a config and a prepared dataset in, a run directory out (see the package's doc); and its fit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from segpipe.training import distribute
from segpipe.config.budget import TrainingPlan, training_plan
from segpipe.config import PipelineConfig, TrainConfig
from segpipe.data.input import eval_dataset, num_examples, training_dataset
from segpipe.data.split import require_train_split
from segpipe.evaluation.band import calibrate_saved_model, describe_calibration
from segpipe.fsutil import atomic_write_json, file_lock, read_json
from segpipe.kerascompat import fit_reads_one_iterator, fit_under_multi_worker_strategy
from segpipe.layout import MANIFEST
from segpipe.runs.naming import run_complete, run_identity as _identity
from segpipe.training.callbacks import (
    AtomicBackupAndRestore,
    AveragedWeights,
    BestModelCheckpoint,
    BudgetProgress,
    LearningRateLogger,
    ResumableEarlyStopping,
    StopOnRequest,
)
from segpipe.models.encoders import recording_weights_files
from segpipe.training.check import _summarise
from segpipe.training.model import Phase, build_and_compile, phases
from segpipe.training.precision import global_policy, precision_policy
from segpipe.training.run_dir import (
    BACKUP_DIR,
    BEST_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    MONITOR,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    TrainResult,
    _backup_epoch,
    _check_same_run,
    output_dir,
    _record_weights_files,
    _result_from_summary,
    truncate_history,
    _write_lineage,
    read_history,
)

log = logging.getLogger("segpipe.training")

EpochHook = Callable[[int, dict[str, float]], None]


def train(
    cfg: PipelineConfig,
    dataset_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    on_epoch_end: EpochHook | None = None,
    on_resume: Callable[[int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Train `cfg.model` on `dataset_dir` into `run_dir`; resume a killed run; return a complete one as is.

    `on_epoch_end(epoch, logs)` is called after each epoch is fully saved
    (0-based epoch, logs with loss, mean_iou, pixel_accuracy and their val_ versions,
    and `progress`: the epoch against the budget with an ETA, as text).
    `on_resume(epochs)` is called before a resumed run trains again, with the epochs its backup kept (not for a
    new run, nor for a complete one, which is returned as is): a caller can say so before the first epoch ends.
    `on_phase(text)` is called as each phase of a run in phases starts (a frozen encoder first, small images
    first), with the line the `segpipe.training` logger gets: up to which epoch, the encoder's state, the size.
    """
    dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
    dataset_key, n_train = _prepared_dataset(dataset_dir)
    identity = _identity(cfg)
    plan = training_plan(cfg.train, n_train)
    # Before any other TensorFlow op: a MultiWorkerMirroredStrategy cannot be created after one.
    strategy = distribute.strategy()
    _check_steps_per_execution(cfg.train.steps_per_execution, plan, strategy)
    task = distribute.cluster_task()
    chief = task is None or task.is_chief
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    # Only the chief locks: the other workers only read the run directory, and the chief holds
    # the lock for the whole run, which it cannot finish without them.
    with file_lock(run_dir / ".lock") if chief else contextlib.nullcontext():
        _check_same_run(run_dir, identity, dataset_key)
        complete = _complete_run(run_dir, identity, dataset_key)
        if complete is not None:
            log.info("run %s is already complete; not training again", run_dir)
            return dataclasses.replace(complete, chief=chief)

        with output_dir(run_dir, task) as out_dir:
            resumed = _backup_epoch(out_dir / BACKUP_DIR)
            truncate_history(out_dir / HISTORY_FILE, resumed)
            policy = precision_policy(cfg.train.mixed_precision)
            if chief:
                atomic_write_json(run_dir / CONFIG_FILE, cfg.model_dump(mode="json"))
                _write_lineage(run_dir, cfg, dataset_dir, dataset_key, resumed, policy, identity, plan,
                               distribute.describe(strategy))
            if resumed:
                log.info("resuming %s after epoch %d", run_dir, resumed)
                if on_resume is not None:
                    on_resume(resumed)
            with global_policy(policy):
                stop_reason = _fit(cfg, dataset_dir, out_dir, plan, resumed, on_epoch_end, on_phase, verbose,
                                   strategy)
            if not chief:
                distribute.barrier(strategy)  # returns once the chief has written the summary
                return dataclasses.replace(
                    _result_from_summary(run_dir, read_json(run_dir / SUMMARY_FILE), cached=False), chief=False
                )
        band = _calibrate_border_band(cfg, dataset_dir, run_dir)
        summary = _summarise(cfg, dataset_dir, run_dir, dataset_key, identity, resumed, stop_reason, plan, band)
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
        shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)
        if task is not None:
            distribute.barrier(strategy)  # the other workers leave with this one
        return _result_from_summary(run_dir, summary, cached=False)


def _calibrate_border_band(cfg: PipelineConfig, dataset_dir: Path, run_dir: Path) -> dict[str, Any] | None:
    """`train.border_band=calibrated`: choose the band on validation and save it inside model.keras."""
    if cfg.train.border_band != "calibrated" or not (run_dir / MODEL_FILE).is_file():
        return None  # without a model file, _summarise says why
    # the model's own predictions (no test-time augmentation): the run's identity holds no eval settings
    result = calibrate_saved_model(run_dir / MODEL_FILE, dataset_dir)
    record = result.to_dict()
    log.info("%s", describe_calibration(record))
    return record


def _prepared_dataset(dataset_dir: Path) -> tuple[str, int]:
    """The dataset key and the number of training examples of a prepared dataset with a train split."""
    manifest_path = dataset_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} has no {MANIFEST}: not a prepared dataset")
    dataset_key = read_json(manifest_path).get("dataset_key") or dataset_dir.name
    n_train = num_examples(dataset_dir, "train")
    require_train_split({"train": n_train, "val": num_examples(dataset_dir, "val")}, dataset_key)
    return dataset_key, n_train


def _complete_run(run_dir: Path, identity: dict[str, Any], dataset_key: str) -> TrainResult | None:
    """The result of the run already complete in `run_dir` (cached), or None."""
    if not run_complete(run_dir):
        return None
    summary = read_json(run_dir / SUMMARY_FILE)
    if summary.get("identity") == identity and summary.get("dataset_key") == dataset_key:
        return _result_from_summary(run_dir, summary, cached=True)
    return None


def _default_verbose() -> int:
    return 1 if sys.stdout.isatty() else 2


def _check_steps_per_execution(asked: int, plan: TrainingPlan, strategy: tf.distribute.Strategy) -> None:
    """Refuse several steps per call on several replicas (Keras' multi-step loop fails under a distribution
    strategy: a placeholder error inside its while loop); say so when the plan uses fewer than asked."""
    if plan.steps_per_execution > 1 and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"train.steps_per_execution={asked}: expected 1 when training on several replicas "
            f"({type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas): Keras' multi-step loop fails "
            "under a distribution strategy; nothing was written")
    if plan.steps_per_execution != asked:
        log.warning("train.steps_per_execution=%d: %d step(s) per call instead, the largest divisor of the epoch's "
                    "%d steps (an epoch keeps its length)", asked, plan.steps_per_execution, plan.steps_per_epoch)


def _fit(
    cfg: PipelineConfig,
    dataset_dir: Path,
    run_dir: Path,
    plan: TrainingPlan,
    resumed: int,
    on_epoch_end: EpochHook | None,
    on_phase: Callable[[str], None] | None,
    verbose: int | None,
    strategy: tf.distribute.Strategy,
) -> str:
    """Build, compile and fit under `strategy` (made first, by `train`), in a frozen-encoder
    phase first when the plan has one, writing into `run_dir`; return why training stopped: completed,
    early_stopping or nan."""
    t = cfg.train
    keras.utils.set_random_seed(t.seed)
    val_ds = eval_dataset(dataset_dir, "val", img_size=t.img_size, batch_size=t.batch_size)
    with strategy.scope(), recording_weights_files() as weights_files:
        model, compile_phase, for_saving = build_and_compile(cfg, plan)
    _record_weights_files(run_dir, weights_files)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        fit_under_multi_worker_strategy(model)  # keras-team/keras#20585
    elif isinstance(strategy, tf.distribute.MirroredStrategy):
        fit_reads_one_iterator(model)  # the batches a run trains on do not depend on timing

    callbacks, early, backup = _callbacks(t, run_dir, plan, on_epoch_end, for_saving)
    losses: list[float] = []
    for phase in phases(plan, resumed, t.img_size, t.progressive_img_size):
        with strategy.scope():  # the compiled metrics' variables too: reduced over all replicas and workers
            compile_phase(phase.frozen)  # a new compile: new train and test functions, traced at this size
        _log_phase(phase, plan, t, on_phase)
        # Each fit starts a new iterator: this one continues the stream where the completed epochs left it,
        # so a resumed run (and a phase change) reads the batches an uninterrupted run reads.
        train_ds = _train_dataset(dataset_dir, t, skip_batches=backup.completed_epochs() * plan.steps_per_epoch,
                                  img_size=phase.img_size)
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=phase.end_epoch, initial_epoch=backup.completed_epochs(),
            steps_per_epoch=plan.steps_per_epoch, shuffle=False, callbacks=callbacks,
            verbose=_default_verbose() if verbose is None else verbose,
        )
        losses += history.history.get("loss", [])
        if _stop_reason(losses, early) != "completed":
            break
    return _stop_reason(losses, early)


def _log_phase(phase: Phase, plan: TrainingPlan, t: TrainConfig, on_phase: Callable[[str], None] | None) -> None:
    """One line per fit of a run in phases: up to which epoch, the encoder's state and the images' size; logged,
    and given to `on_phase`."""
    if not (plan.frozen_epochs or plan.small_epochs):
        return
    parts = []
    if plan.frozen_epochs:
        parts.append(f"encoder {'frozen' if phase.frozen else 'fine-tuned'}")
    if plan.small_epochs:
        parts.append(f"training images {phase.img_size} px" + (", validation at " + str(t.img_size) + " px"
                                                               if phase.img_size != t.img_size else ""))
    line = f"epochs up to {phase.end_epoch}: {'; '.join(parts)}"
    log.info("%s", line)
    if on_phase is not None:
        on_phase(line)


def _train_dataset(dataset_dir: Path, t: TrainConfig, skip_batches: int, img_size: int) -> tf.data.Dataset:
    """The training dataset (endless) at `img_size`, from batch `skip_batches` of its stream on."""
    # Endless, with steps_per_epoch given to fit: fit then keeps ONE iterator for the whole phase instead of
    # starting a new one every epoch (each start re-optimises the augmenting map: ~45 ms of CPU per epoch,
    # and the prefetch buffers start empty; see BENCHMARKS.md, input pipeline).
    return training_dataset(
        dataset_dir, img_size=img_size, batch_size=t.batch_size, augment=t.augment, seed=t.seed, repeat=True,
        augment_options=t.augment_options(), skip_batches=skip_batches,
    )


def _callbacks(
    t: TrainConfig, run_dir: Path, plan: TrainingPlan, on_epoch_end: EpochHook | None,
    for_saving: Callable[[], keras.Model],
) -> tuple[list[keras.callbacks.Callback], ResumableEarlyStopping | None, AtomicBackupAndRestore]:
    """The run's callbacks in order, with its early stopping (when the config has one) and its backup."""
    history_path = run_dir / HISTORY_FILE
    averaged = AveragedWeights() if t.ema_momentum is not None else None
    progress = BudgetProgress(plan, (t.progressive_img_size, t.img_size) if t.progressive_img_size else None)
    callbacks: list[keras.callbacks.Callback] = [
        StopOnRequest(),  # first: a stopped epoch reaches none of the callbacks below
        LearningRateLogger(),  # the callbacks below see logs["learning_rate"]
        progress,
        *([averaged] if averaged is not None else []),  # validation on the averaged weights
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR), write_graph=False, update_freq="epoch"),
        BestModelCheckpoint(run_dir / MODEL_FILE, run_dir / BEST_FILE, weights=averaged, for_saving=for_saving),
    ]
    early = None
    if t.early_stopping_patience > 0:
        early = ResumableEarlyStopping(
            lambda: [row[MONITOR] for row in read_history(history_path) if MONITOR in row],
            monitor=MONITOR, mode="max", patience=t.early_stopping_patience,
        )
        callbacks.append(early)
    # Last but one: an epoch counts as done for a resume only once everything above is written.
    backup = AtomicBackupAndRestore(run_dir / BACKUP_DIR)
    callbacks.append(backup)
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch_end(
                epoch, {**{k: float(v) for k, v in (logs or {}).items()}, "progress": progress.line(epoch)}
            )
        ))
    return callbacks, early, backup


def _stop_reason(losses: list[float], early: ResumableEarlyStopping | None) -> str:
    """Why training stopped (so far): nan, early_stopping or completed."""
    if losses and not math.isfinite(losses[-1]):
        return "nan"
    if early is not None and early.stopped_epoch > 0:
        return "early_stopping"
    return "completed"
