"""Prefect task `train` (`train_task`): fit a model on a prepared dataset, cached by content, resumable on retry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from segpipe.config import EvalConfig, ModelConfig, PipelineConfig, TrainConfig
from segpipe.data.split import require_train_split
from segpipe.runs.naming import train_run_dir
from segpipe_app.tasks.caching import TRAIN_CACHE
from segpipe_app.tasks.data import DatasetRef
from segpipe_app.tasks.retries import TRAIN_RETRY


@dataclass(frozen=True)
class TrainedModel:
    run_id: str
    run_dir: str
    model_path: str
    dataset_key: str
    epochs_completed: int
    best_epoch: int | None
    best_val_mean_iou: float | None


@task(name="train", cache_policy=TRAIN_CACHE, **TRAIN_RETRY)
def train_task(
    dataset: DatasetRef, model: ModelConfig, train_config: TrainConfig, work_dir: str,
    eval_config: EvalConfig = EvalConfig(),
) -> TrainedModel:
    """Train into WORK/runs/<run-id>; a retry or a rerun after a kill resumes from the last epoch.

    `eval_config`: the pipeline's eval section (training flags a collapsed model with its
    `collapse_threshold`); the flows pass the configured one.
    """
    # A dataset prepared only to be scored is refused here, before TensorFlow loads (not retried).
    require_train_split(dataset.num_examples, dataset.dataset_key)
    from segpipe.training import train

    logger = get_run_logger()
    cfg = PipelineConfig(model=model, train=train_config, eval=eval_config)
    run_dir = train_run_dir(work_dir, dataset.dataset_key, model, train_config)
    logger.info("training %s on dataset %s into %s", model.name, dataset.dataset_key, run_dir)

    def log_epoch(epoch: int, logs: dict) -> None:
        progress = logs.pop("progress", f"epoch {epoch + 1}")
        logger.info("%s: %s", progress, ", ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items())))

    # verbose=0: the epoch line above (progress, ETA, metrics) is the one a user reads
    result = train(cfg, Path(dataset.path), run_dir, on_epoch_end=log_epoch, verbose=0)
    if result.resumed_from_epoch:
        logger.info("resumed from epoch %d", result.resumed_from_epoch)
    logger.info("best val mean IoU %.4g at epoch %d", result.best_val_mean_iou, result.best_epoch + 1)  # 1-based
    return TrainedModel(
        run_dir.name, str(run_dir), str(result.model_path), dataset.dataset_key, result.epochs_completed,
        result.best_epoch, result.best_val_mean_iou,
    )
