"""Flows `pipeline` (prepare-data → train → evaluate → gallery) and `retrain` (pipeline → promotion gate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from flows.prepare_data import prepare_data_flow
from segpipe.config import PipelineConfig
from segpipe.layout import resolve_work_dir
from tasks.data import DatasetRef
from tasks.evaluation import evaluate_task, gallery_task
from tasks.promotion import champion_task, promote_task
from tasks.training import TrainedModel, train_task


@dataclass(frozen=True)
class PipelineResult:
    dataset: DatasetRef
    trained: TrainedModel
    metrics: dict[str, Any]
    metrics_path: str
    gallery: str


@flow(name="pipeline")
def pipeline(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> PipelineResult:
    """The whole pipeline; a run's outputs land in WORK/runs/<run-id>/."""
    work = str(resolve_work_dir(work_dir))
    dataset = prepare_data_flow(config, work)
    trained = train_task(dataset, config.model, config.train, work, eval_config=config.eval)
    run_dir = Path(trained.run_dir)
    e = config.eval
    scored = evaluate_task(
        [trained.model_path], dataset, e.split, str(run_dir / "metrics.json"), e.batch_size, e.collapse_threshold,
        e.tta_flip,
    )
    index = gallery_task(
        [trained.model_path], dataset, e.split, scored["per_image"], str(run_dir / "gallery"),
        e.gallery_samples, e.gallery_worst, e.gallery_seed, scored["metrics"], e.tta_flip,
    )
    return PipelineResult(dataset, trained, scored["metrics"], scored["metrics_path"], index)


@flow(name="retrain")
def retrain(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> dict[str, Any]:
    """The pipeline, then the promotion gate: the champion changes only for a better model."""
    work = str(resolve_work_dir(work_dir))
    result = pipeline(config, work)
    current = champion_task(work)
    champion_metrics = None
    if current is not None:
        e = config.eval
        champion_metrics = evaluate_task(
            [current["model_path"]], result.dataset, e.split,
            str(Path(result.trained.run_dir) / "champion-metrics.json"), e.batch_size, e.collapse_threshold,
            e.tta_flip,
        )["metrics"]
    return promote_task(
        result.metrics, champion_metrics, result.trained.run_dir, result.trained.model_path,
        config.promotion.min_mean_iou, work,
    )
