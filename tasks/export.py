"""Prefect task `export` (`export_task`): a trained model (or an ensemble) to SavedModel, LiteRT and ONNX,
parity-checked in a fresh process, with the figures published as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from segpipe.config import EvalConfig
from segpipe_app.tasks.caching import EXPORT_CACHE


@task(name="export", cache_policy=EXPORT_CACHE)
def export_task(
    model_paths: list[str], out_dir: str, dataset_dir: str, eval_config: EvalConfig, formats: list[str],
    *, raise_on_failure: bool = True,
) -> dict[str, Any]:
    """`{"ok", "out_dir", "parity", "error"}`: parity on `eval_config.split`, TTA as `eval_config.tta_flip` and `tta_sizes`.
    With `raise_on_failure=False` a failed export or parity check is returned (ok False, the reason in
    `error`) for the promotion gate to block on, not raised."""
    from segpipe.export.exporter import export_models
    from segpipe.export.parity import ParityError

    logger = get_run_logger()
    try:
        result = export_models(
            [Path(p) for p in model_paths], Path(out_dir), dataset_dir=Path(dataset_dir), split=eval_config.split,
            formats=formats, flip=eval_config.tta_flip, tta_sizes=eval_config.tta_sizes,
        )
    except (ParityError, ValueError, OSError) as exc:
        if raise_on_failure:
            raise
        logger.error("export failed: %s", exc)
        return {"ok": False, "out_dir": None, "parity": {}, "error": str(exc)}
    for r in result.parity:
        logger.info(r.describe())
    create_markdown_artifact(markdown=parity_markdown(result.manifest), key="export-parity",
                             description="segpipe export: parity of each artifact with the Keras model")
    return {"ok": True, "out_dir": str(result.out_dir), "error": None,
            "parity": {r.artifact: r.to_dict() for r in result.parity}}


def parity_markdown(manifest: dict[str, Any]) -> str:
    parity = manifest["parity"]
    lines = [f"# Export parity: {parity['images']} images of split(s) {', '.join(parity['splits'])}", "",
             f"Keras mean IoU {parity['reference']['mean_iou']:.4f}", "",
             "| artifact | mean IoU | pixels agreeing | bound (IoU delta, pixels) |", "|---|---|---|---|"]
    for name, r in parity["results"].items():
        b = r["bound"]
        lines.append(f"| {name} | {r['mean_iou']:.4f} | {100 * r['pixel_agreement']:.3f}% | "
                     f"{b['max_mean_iou_delta']}, {100 * b['min_pixel_agreement']:.1f}% |")
    return "\n".join(lines)
