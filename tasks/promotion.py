"""Prefect tasks `champion` (`champion_task`) and `promote` (`promote_task`): the promotion gate of scheduled
retraining."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from segpipe.runs import promotion
from segpipe.export import serving
from segpipe.fsutil import read_json
from segpipe.layout import WorkDir
from segpipe_app.tasks.caching import PROMOTION_CACHE


@task(name="champion", cache_policy=PROMOTION_CACHE)
def champion_task(work_dir: str) -> dict[str, Any] | None:
    """The current champion's lineage and model path, or None."""
    info = promotion.champion_info(WorkDir.at(work_dir).champion)
    get_run_logger().info("current champion: %s", info["run_id"] if info else "none")
    return info


@task(name="promote", cache_policy=PROMOTION_CACHE)
def promote_task(
    candidate_metrics: dict[str, Any], champion_metrics: dict[str, Any] | None, run_dir: str, model_path: str,
    floor: float, work_dir: str, exports: dict[str, Any] | None = None, reported: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decide, install the candidate (its model and its verified export, as the next serving version) when it
    wins, and publish the decision as an artifact."""
    logger = get_run_logger()
    decision = promotion.decide(candidate_metrics, champion_metrics, floor=floor, exports=exports, reported=reported)
    run = Path(run_dir)
    work = WorkDir.at(work_dir)
    if decision.promote:
        lineage = {"run_id": run.name, "run_dir": str(run)}
        for name in ("lineage.json", "config.json"):
            if (run / name).is_file():
                lineage[name.removesuffix(".json")] = read_json(run / name)
        version = None
        if exports is not None and exports.get("out_dir"):
            version = serving.install_version(exports["out_dir"], serving.serving_root(work.champion.parent))
            decision = replace(decision, exports={**exports, "serving_dir": str(version)})
        try:
            where = promotion.promote(Path(model_path), candidate_metrics, lineage, decision, work.champion)
        except BaseException:
            if version is not None:
                shutil.rmtree(version, ignore_errors=True)
            raise
        logger.info("%s -> %s%s", decision.reason, where, f" (serving: {version})" if version else "")
    else:
        logger.warning(decision.reason)
    create_markdown_artifact(markdown=decision.to_markdown(), key="promotion-decision",
                             description="segpipe promotion gate")
    return {"promoted": decision.promote, "reason": decision.reason, "champion": str(work.champion),
            "has_champion": decision.leaves_a_champion,
            "serving_dir": (decision.exports or {}).get("serving_dir")}
