"""Flows `pipeline` (prepare-data → train → evaluate → gallery) and `retrain` (pipeline → export check →
promotion gate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from segpipe_app.flows.prepare_data import prepare_data_flow
from segpipe.config import EvalConfig, PipelineConfig
from segpipe.data.dataset import DatasetRef
from segpipe.layout import resolve_work_dir
from segpipe.runs.naming import TrainedRun
from segpipe_app.tasks.evaluation import evaluate_task, gallery_task
from segpipe_app.tasks.export import export_task
from segpipe_app.tasks.promotion import champion_task, promote_task
from segpipe_app.tasks.training import train_task


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
    scored = evaluate_task([trained.model_path], dataset, config.eval, str(run_dir / "metrics.json"))
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
    candidate = scored_on(result.trained.model_path, result, p.gate_split, run_dir / f"metrics-{p.gate_split}.json", e)
    current = champion_task(work)
    champion_gate = champion_test = None
    if current is not None:
        champion_gate = scored_on(current["model_path"], result, p.gate_split, run_dir / "champion-metrics.json", e)
        champion_test = scored_on(current["model_path"], result, e.split, run_dir / f"champion-metrics-{e.split}.json", e)
    exports = export_task([result.trained.model_path], str(run_dir / "export"), result.dataset.path, e,
                          list(p.export_formats), raise_on_failure=False)
    reported = {"split": e.split, "candidate_mean_iou": result.metrics.get("mean_iou"),
                "champion_mean_iou": None if champion_test is None else champion_test.get("mean_iou")}
    return promote_task(candidate, champion_gate, str(run_dir), result.trained.model_path, p.min_mean_iou, work,
                        exports, reported)


def scored_on(model_path: str, result: PipelineResult, split: str, out_path: Path, e: EvalConfig) -> dict[str, Any]:
    """A model's metrics on `split` of the run's dataset (the pipeline's own when it scored that model there)."""
    if model_path == result.trained.model_path and split == e.split:
        return result.metrics
    return evaluate_task([model_path], result.dataset, e, str(out_path), split=split)["metrics"]
