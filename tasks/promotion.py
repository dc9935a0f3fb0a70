"""Prefect tasks `champion` (`champion_task`) and `promote` (`promote_task`): the promotion gate of scheduled
retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from segpipe import promotion
from segpipe.fsutil import read_json
from segpipe.layout import WorkDir
from tasks.caching import PROMOTION_CACHE


@task(name="champion", cache_policy=PROMOTION_CACHE)
def champion_task(work_dir: str) -> dict[str, Any] | None:
    """The current champion's lineage and model path, or None."""
    info = promotion.champion_info(WorkDir.at(work_dir).champion)
    get_run_logger().info("current champion: %s", info["run_id"] if info else "none")
    return info


@task(name="promote", cache_policy=PROMOTION_CACHE)
def promote_task(
    candidate_metrics: dict[str, Any], champion_metrics: dict[str, Any] | None, run_dir: str, model_path: str,
    floor: float, work_dir: str,
) -> dict[str, Any]:
    """Decide, install the candidate when it wins, and publish the decision as an artifact."""
    logger = get_run_logger()
    decision = promotion.decide(candidate_metrics, champion_metrics, floor=floor)
    run = Path(run_dir)
    if decision.promote:
        lineage = {"run_id": run.name, "run_dir": str(run)}
        for name in ("lineage.json", "config.json"):
            if (run / name).is_file():
                lineage[name.removesuffix(".json")] = read_json(run / name)
        where = promotion.promote(Path(model_path), candidate_metrics, lineage, decision, WorkDir.at(work_dir).champion)
        logger.info("%s -> %s", decision.reason, where)
    else:
        logger.warning(decision.reason)
    create_markdown_artifact(markdown=decision.to_markdown(), key="promotion-decision",
                             description="segpipe promotion gate")
    return {"promoted": decision.promote, "reason": decision.reason, "champion": str(WorkDir.at(work_dir).champion)}
