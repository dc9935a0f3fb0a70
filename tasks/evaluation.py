"""Prefect tasks `evaluate` (`evaluate_task`) and `gallery` (`gallery_task`): score saved models, render the
prediction gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from segpipe.data import COLLAPSE_THRESHOLD
from tasks.caching import EVALUATE_CACHE, GALLERY_CACHE
from tasks.data import DatasetRef


@task(name="evaluate", cache_policy=EVALUATE_CACHE)
def evaluate_task(
    model_paths: list[str], dataset: DatasetRef, split: str, out_path: str, batch_size: int = 8,
    collapse_threshold: float = COLLAPSE_THRESHOLD, tta_flip: bool = False,
) -> dict[str, Any]:
    """Score the model (or the ensemble) on one split; writes metrics.json and a Markdown artifact."""
    from segpipe.evaluation import evaluate, metrics_markdown, write_metrics

    logger = get_run_logger()
    result = evaluate(
        [Path(p) for p in model_paths], Path(dataset.path), split, batch_size=batch_size,
        collapse_threshold=collapse_threshold, flip=tta_flip,
    )
    metrics = result.metrics
    write_metrics(metrics, Path(out_path))
    for warning in metrics.get("warnings", []):
        logger.warning(warning)
    logger.info(
        "%s split (%d images): mean IoU %.4f, pixel accuracy %.4f, foreground IoU %.4f -> %s",
        split, metrics["n_images"], metrics["mean_iou"], metrics["pixel_accuracy"], metrics["foreground_iou"],
        out_path,
    )
    create_markdown_artifact(
        markdown=metrics_markdown(metrics), key="evaluation-metrics", description="segpipe evaluation"
    )
    return {"metrics": metrics, "per_image": result.per_image, "metrics_path": out_path}


@task(name="gallery", cache_policy=GALLERY_CACHE)
def gallery_task(
    model_paths: list[str], dataset: DatasetRef, split: str, per_image: list[dict], out_dir: str,
    n_sample: int = 8, n_worst: int = 8, seed: int = 0, metrics: dict[str, Any] | None = None,
    tta_flip: bool = False,
) -> str:
    """Seeded sample + worst-K images by IoU: contact sheets and a self-contained index.html."""
    from segpipe.evaluation import render_evaluation_gallery

    index = render_evaluation_gallery(
        [Path(p) for p in model_paths], Path(dataset.path), split, Path(out_dir),
        n_sample=n_sample, n_worst=n_worst, seed=seed, per_image=per_image, metrics=metrics, flip=tta_flip,
    )
    get_run_logger().info("gallery: %s", index)
    create_link_artifact(link=Path(index).resolve().as_uri(), link_text="prediction gallery", key="gallery")
    return str(index)

