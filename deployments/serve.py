"""`segpipe serve`: serve the deployments from this process, for one machine without a worker.

The same two deployments as prefect.yaml: `pets-pipeline` (manual runs) and
`scheduled-retrain` (cron, weekly). Runs execute in subprocesses of this process.
"""

from __future__ import annotations

from prefect import serve

from flows.pipeline import pipeline, retrain
from segpipe.config import PipelineConfig

DEFAULT_CRON = "0 3 * * 1"
DEFAULT_TIMEZONE = "Europe/London"


def serve_deployments(
    config: PipelineConfig, *, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE, limit: int | None = 1
) -> None:
    from prefect.schedules import Cron

    params = {"config": config.model_dump(mode="json")}
    serve(
        pipeline.to_deployment(name="pets-pipeline", parameters=params, tags=["segpipe"]),
        retrain.to_deployment(
            name="scheduled-retrain", parameters=params, tags=["segpipe", "scheduled"],
            schedule=Cron(cron, timezone=timezone),
        ),
        limit=limit,
    )
