"""Prefect tasks `evaluate` (`evaluate_task`) and `gallery` (`gallery_task`): score saved models, render the
prediction gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from segpipe.config import EvalConfig
from segpipe.data.dataset import DatasetRef
from segpipe_app.tasks.caching import EVALUATE_CACHE, GALLERY_CACHE


@task(name="evaluate", cache_policy=EVALUATE_CACHE)
def evaluate_task(
    model_paths: list[str], dataset: DatasetRef, eval_config: EvalConfig, out_path: str, split: str | None = None,
) -> dict[str, Any]:
    """Score the model (or the ensemble) on `split` (default `eval_config.split`) with the eval section's batch
    size, collapse threshold and flip TTA; writes metrics.json and a Markdown artifact."""
    from segpipe.evaluation.evaluate import evaluate_with, metrics_markdown, write_metrics

    logger = get_run_logger()
    split = split or eval_config.split
    result = evaluate_with(model_paths, dataset.path, eval_config, split)
    metrics = result.metrics
    write_metrics(metrics, Path(out_path))
    for warning in metrics.get("warnings", []):
        logger.warning(warning)
    logger.info(
        "%s split (%d image%s): mean IoU %.4f, pixel accuracy %.4f, foreground IoU %.4f -> %s",
        split, metrics["n_images"], "" if metrics["n_images"] == 1 else "s", metrics["mean_iou"],
        metrics["pixel_accuracy"], metrics["foreground_iou"], out_path,
    )
    create_markdown_artifact(
        markdown=metrics_markdown(metrics), key="evaluation-metrics", description="segpipe evaluation"
    )
    return {"metrics": metrics, "per_image": result.per_image, "metrics_path": out_path}


@task(name="gallery", cache_policy=GALLERY_CACHE)
def gallery_task(
    model_paths: list[str], dataset: DatasetRef, eval_config: EvalConfig, per_image: list[dict], out_dir: str,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Seeded sample + worst-K images by IoU on `eval_config.split` (`gallery_samples`, `gallery_worst`,
    `gallery_seed`, `tta_flip`): contact sheets and a self-contained index.html."""
    from segpipe.evaluation.evaluate import gallery_with

    index = gallery_with(model_paths, dataset.path, eval_config, out_dir, per_image=per_image, metrics=metrics)
    get_run_logger().info("gallery: %s", index)
    create_link_artifact(link=Path(index).resolve().as_uri(), link_text="prediction gallery", key="gallery")
    return str(index)

