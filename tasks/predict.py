"""Prefect task `predict` (`predict_task`): masks and overlays for arbitrary image files (never cached: inputs
are files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from segpipe.config import EvalConfig
from segpipe_app.tasks.caching import PREDICT_CACHE


@task(name="predict", cache_policy=PREDICT_CACHE)
def predict_task(
    model_paths: list[str], inputs: list[str], out_dir: str, eval_config: EvalConfig = EvalConfig()
) -> dict[str, Any]:
    """Masks for `inputs` with eval_config's batch size and test-time augmentation (flip, sizes)."""
    from segpipe.predict import predict_paths

    logger = get_run_logger()
    report = predict_paths(
        [Path(p) for p in model_paths], [Path(p) for p in inputs], Path(out_dir), batch_size=eval_config.batch_size,
        flip=eval_config.tta_flip, tta_sizes=eval_config.tta_sizes,
    )
    for failure in report.failed:
        logger.warning("could not read %s: %s", failure["input"], failure["error"])
    logger.info("%d masks written to %s", len(report.written), out_dir)
    return {"written": report.written, "failed": report.failed}


@task(name="champion-export", cache_policy=PREDICT_CACHE)
def champion_export_task(work_dir: str | None = None) -> str:
    """The champion's served export: the highest version under WORK/models/serving/pets/."""
    from segpipe.export.serving import latest_version, serving_root
    from segpipe.layout import WorkDir

    version = latest_version(serving_root(WorkDir.at(work_dir).champion.parent))
    get_run_logger().info("champion export: %s", version)
    return str(version)
