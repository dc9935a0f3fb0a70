"""Flows `pipeline` (prepare-data → train → evaluate → gallery) and `retrain` (pipeline → export check →
promotion gate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from segpipe_app.flows.prepare_data import prepare_data_flow
from segpipe.config import PipelineConfig
from segpipe.data.dataset import DatasetRef
from segpipe.layout import resolve_work_dir
from segpipe.runs.naming import TrainedRun
from segpipe_app.tasks.evaluation import evaluate_task, gallery_task
from segpipe_app.tasks.export import export_task
from segpipe_app.tasks.promotion import champion_task, promote_task
from segpipe_app.tasks.training import train_task


METRICS_FILE = "metrics.json"  # a run's scores on the eval split


@dataclass(frozen=True)
class PipelineResult:
    dataset: DatasetRef
    trained: TrainedRun
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
    scored = evaluate_task([trained.model_path], dataset, config.eval, str(run_dir / METRICS_FILE))
    index = gallery_task(
        [trained.model_path], dataset, config.eval, scored["per_image"], str(run_dir / "gallery"), scored["metrics"]
    )
    return PipelineResult(dataset, trained, scored["metrics"], scored["metrics_path"], index)


@flow(name="retrain")
def retrain(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> dict[str, Any]:
    """The pipeline, then the export check and the promotion gate: the champion changes only for a better
    model (compared on the gate split) whose export loads and keeps parity in a fresh process."""
    work = str(resolve_work_dir(work_dir))
    result = pipeline(config, work)
    e, p = config.eval, config.promotion
    run_dir = Path(result.trained.run_dir)
    # The candidate on the eval split is the pipeline's own metrics file, so evaluate's cache returns it; a
    # champion scored on one split twice (gate split = eval split) is evaluated once, the second call cached.
    candidate = evaluate_task([result.trained.model_path], result.dataset, e,
                              str(run_dir / metrics_name(p.gate_split, e.split)), split=p.gate_split)["metrics"]
    current = champion_task(work)
    champion_gate = champion_test = None
    if current is not None:
        champion = [current["model_path"]]
        champion_gate, champion_test = (
            evaluate_task(champion, result.dataset, e, str(run_dir / f"champion-metrics-{split}.json"),
                          split=split)["metrics"]
            for split in (p.gate_split, e.split))
    exports = export_task([result.trained.model_path], str(run_dir / "export"), result.dataset.path, e,
                          list(p.export_formats), raise_on_failure=False)
    reported = {"split": e.split, "candidate_mean_iou": result.metrics.get("mean_iou"),
                "champion_mean_iou": None if champion_test is None else champion_test.get("mean_iou")}
    return promote_task(candidate, champion_gate, str(run_dir), result.trained.model_path, p.min_mean_iou, work,
                        exports, reported)


def metrics_name(split: str, eval_split: str) -> str:
    """A run's metrics file for `split`: METRICS_FILE is the eval split's (the pipeline's own)."""
    return METRICS_FILE if split == eval_split else f"metrics-{split}.json"
