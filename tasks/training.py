"""Prefect task `train` (`train_task`): fit a model on a prepared dataset, cached by content, resumable on retry."""

from __future__ import annotations

from prefect import get_run_logger, task

from segpipe.config import EvalConfig, ModelConfig, PipelineConfig, TrainConfig
from segpipe.data.dataset import DatasetRef
from segpipe.runs.naming import TrainedRun, train_run, train_run_dir
from segpipe_app.tasks.caching import TRAIN_CACHE
from segpipe_app.tasks.retries import TRAIN_RETRY


@task(name="train", cache_policy=TRAIN_CACHE, **TRAIN_RETRY)
def train_task(
    dataset: DatasetRef, model: ModelConfig, train_config: TrainConfig, work_dir: str,
    eval_config: EvalConfig = EvalConfig(),
) -> TrainedRun:
    """Train into WORK/runs/<run-id>; a retry or a rerun after a kill resumes from the last epoch.

    `eval_config`: the pipeline's eval section (training flags a collapsed model with its
    `collapse_threshold`); the flows pass the configured one. A dataset prepared only to be scored is
    refused before TensorFlow loads (not retried).
    """
    logger = get_run_logger()
    cfg = PipelineConfig(model=model, train=train_config, eval=eval_config)
    run_dir = train_run_dir(work_dir, dataset.dataset_key, model, train_config)
    logger.info("training %s on dataset %s into %s", model.name, dataset.dataset_key, run_dir)

    def log_epoch(epoch: int, logs: dict) -> None:
        progress = logs.pop("progress", f"epoch {epoch + 1}")
        logger.info("%s: %s", progress, ", ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items())))

    # verbose=0: the epoch line above (progress, ETA, metrics) is the one a user reads
    def log_resume(kept: int) -> None:  # said now: the next epoch line comes only after the first epoch trained here
        logger.info("resuming after epoch %d: the epochs an interrupted run completed are kept", kept)

    # each phase's line (frozen encoder, small images) before its first epoch: the epoch lines don't say it
    trained = train_run(cfg, dataset, work_dir, on_epoch_end=log_epoch, on_resume=log_resume,
                        on_phase=lambda line: logger.info("%s", line), verbose=0, run_dir=run_dir)
    if trained.resumed_from_epoch:
        logger.info("resumed from epoch %d", trained.resumed_from_epoch)
    logger.info("best val mean IoU %.4g at epoch %d", trained.best_val_mean_iou, trained.best_epoch + 1)  # 1-based
    if trained.border_band:
        logger.info("%s", trained.border_band)
    return trained
