"""Prefect tasks `evaluate` and `gallery`: score saved models, render the prediction gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from segpipe.fsutil import sha256_file
from tasks.caching import ContentKey
from tasks.data import DatasetRef

EVAL_MODULES = ("segpipe.evaluation", "segpipe.metrics", "segpipe.data.input", "segpipe.data.tfrecords")
GALLERY_MODULES = (*EVAL_MODULES, "segpipe.gallery")


class _ModelContentKey(ContentKey):
    """Models enter the key by the sha256 of their files, never by their paths."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):  # type: ignore[override]
        digests = [sha256_file(p) if Path(p).is_file() else f"missing:{p}" for p in inputs["model_paths"]]
        return super().compute_key(task_ctx, {**inputs, "models": digests}, flow_parameters)


@task(
    name="evaluate",
    cache_policy=_ModelContentKey(
        inputs=("models", "dataset", "split", "collapse_threshold", "tta_flip"),
        modules=EVAL_MODULES,
        outputs_ok=lambda i: Path(i["out_path"]).is_file(),
    ),
)
def evaluate(
    model_paths: list[str], dataset: DatasetRef, split: str, out_path: str, batch_size: int = 8,
    collapse_threshold: float = 0.98, tta_flip: bool = False,
) -> dict[str, Any]:
    """Score the model (or the ensemble) on one split; writes metrics.json and a Markdown artifact."""
    from segpipe import evaluation

    logger = get_run_logger()
    result = evaluation.evaluate(
        [Path(p) for p in model_paths], Path(dataset.path), split, batch_size=batch_size,
        collapse_threshold=collapse_threshold, flip=tta_flip,
    )
    metrics = result.metrics
    evaluation.write_metrics(metrics, Path(out_path))
    for warning in metrics.get("warnings", []):
        logger.warning(warning)
    logger.info(
        "%s split (%d images): mean IoU %.4f, pixel accuracy %.4f, foreground IoU %.4f -> %s",
        split, metrics["n_images"], metrics["mean_iou"], metrics["pixel_accuracy"], metrics["foreground_iou"],
        out_path,
    )
    create_markdown_artifact(
        markdown=evaluation.metrics_markdown(metrics), key="evaluation-metrics", description="segpipe evaluation"
    )
    return {"metrics": metrics, "per_image": result.per_image, "metrics_path": out_path}


@task(
    name="gallery",
    cache_policy=_ModelContentKey(
        inputs=("models", "dataset", "split", "n_sample", "n_worst", "seed", "per_image", "tta_flip"),
        modules=GALLERY_MODULES,
        outputs_ok=lambda i: (Path(i["out_dir"]) / "index.html").is_file(),
    ),
)
def gallery(
    model_paths: list[str], dataset: DatasetRef, split: str, per_image: list[dict], out_dir: str,
    n_sample: int = 8, n_worst: int = 8, seed: int = 0, metrics: dict[str, Any] | None = None,
    tta_flip: bool = False,
) -> str:
    """Seeded sample + worst-K images by IoU: contact sheets and a self-contained index.html."""
    from segpipe import evaluation

    index = evaluation.render_evaluation_gallery(
        [Path(p) for p in model_paths], Path(dataset.path), split, Path(out_dir),
        n_sample=n_sample, n_worst=n_worst, seed=seed, per_image=per_image, metrics=metrics, flip=tta_flip,
    )
    get_run_logger().info("gallery: %s", index)
    create_link_artifact(link=Path(index).resolve().as_uri(), link_text="prediction gallery", key="gallery")
    return str(index)

