"""Prefect task `train`: fit a model on a prepared dataset, cached by content, resumable on retry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from segpipe.config import ModelConfig, PipelineConfig, TrainConfig
from segpipe.data.split import require_train_split
from segpipe.fsutil import source_digest
from segpipe.layout import WorkDir
from segpipe.models.registry import BUILDERS
from segpipe.runs import run_id_for
from tasks.caching import ContentKey, retry_if_transient
from tasks.data import DatasetRef

TRAIN_MODULES = (
    "segpipe.training", "segpipe.budget", "segpipe.runs", "segpipe.losses", "segpipe.data.input",
    "segpipe.kerascompat", "segpipe.distribute", "segpipe.models.registry", "segpipe.models.layers",
    "segpipe.models.encoders", "segpipe.models.weights", *sorted({module for module, _ in BUILDERS.values()}),
)


@dataclass(frozen=True)
class TrainedModel:
    run_id: str
    run_dir: str
    model_path: str
    dataset_key: str
    epochs_completed: int
    best_epoch: int | None
    best_val_mean_iou: float | None


def _run_dir(work_dir: str, dataset: DatasetRef, model: ModelConfig, train: TrainConfig) -> Path:
    cfg = PipelineConfig(model=model, train=train)
    return WorkDir.at(work_dir).run(run_id_for(cfg, dataset.dataset_key, source_digest(*TRAIN_MODULES)))


def _trained(inputs: dict[str, Any]) -> bool:
    run_dir = _run_dir(inputs["work_dir"], inputs["dataset"], inputs["model"], inputs["train"])
    return (run_dir / "train_summary.json").is_file() and (run_dir / "model.keras").is_file()


def _retryable(exc: BaseException) -> bool:
    """Bad configuration or data is not retried; anything else (OOM, a killed worker, NaN) is, once."""
    return not isinstance(exc, (ValueError, TypeError, FileNotFoundError, KeyError))


@task(
    name="train",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient(_retryable),
    cache_policy=ContentKey(inputs=("dataset", "model", "train"), modules=TRAIN_MODULES, outputs_ok=_trained),
)
def train(dataset: DatasetRef, model: ModelConfig, train: TrainConfig, work_dir: str) -> TrainedModel:
    """Train into WORK/runs/<run-id>; a retry or a rerun after a kill resumes from the last epoch."""
    # A dataset prepared only to be scored is refused here, before TensorFlow loads (not retried).
    require_train_split(dataset.num_examples, dataset.dataset_key)
    from segpipe import training

    logger = get_run_logger()
    cfg = PipelineConfig(model=model, train=train)
    run_dir = _run_dir(work_dir, dataset, model, train)
    logger.info("training %s on dataset %s into %s", model.name, dataset.dataset_key, run_dir)

    def log_epoch(epoch: int, logs: dict) -> None:
        progress = logs.pop("progress", f"epoch {epoch + 1}")
        logger.info("%s: %s", progress, ", ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))

    # verbose=0: the epoch line above (progress, ETA, metrics) is the one a user reads
    result = training.train(cfg, Path(dataset.path), run_dir, on_epoch_end=log_epoch, verbose=0)
    if result.resumed_from_epoch:
        logger.info("resumed from epoch %d", result.resumed_from_epoch)
    logger.info("best val mean IoU %s at epoch %s", result.best_val_mean_iou, result.best_epoch)
    return TrainedModel(
        run_dir.name, str(run_dir), str(result.model_path), dataset.dataset_key, result.epochs_completed,
        result.best_epoch, result.best_val_mean_iou,
    )
