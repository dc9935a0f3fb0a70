"""Flow `pipeline`: prepare-data → train → evaluate → gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.prepare_data import prepare_data
from segpipe.config import PipelineConfig
from segpipe.layout import resolve_work_dir
from tasks.evaluation import evaluate, gallery
from tasks.training import train


@flow(name="pipeline")
def pipeline(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> dict[str, Any]:
    """The whole pipeline; every output lands in WORK/runs/<run-id>/."""
    work = str(resolve_work_dir(work_dir))
    dataset = prepare_data(config, work)
    trained = train(dataset, config.model, config.train, work)
    run_dir = Path(trained.run_dir)
    e = config.eval
    scored = evaluate(
        [trained.model_path], dataset, e.split, str(run_dir / "metrics.json"), e.batch_size, e.collapse_threshold
    )
    index = gallery(
        [trained.model_path], dataset, e.split, scored["per_image"], str(run_dir / "gallery"),
        e.gallery_samples, e.gallery_worst, e.gallery_seed,
    )
    return {
        "dataset": dataset.path, "run_dir": str(run_dir), "model": trained.model_path,
        "metrics": scored["metrics_path"], "gallery": index, "mean_iou": scored["metrics"]["mean_iou"],
    }
