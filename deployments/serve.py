"""`segpipe serve`: serve the deployments from this process, for one machine without a worker.

The same deployments as prefect.yaml: `pets-pipeline` (manual runs), `scheduled-retrain` (cron, weekly) and
`champion-predict` (batch prediction with the champion's served export). Runs execute in subprocesses of this
process.
"""

from __future__ import annotations

from prefect import serve

from segpipe_app.flows.pipeline import pipeline, retrain
from segpipe_app.flows.predict import champion_predict_flow
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
        champion_predict_flow.to_deployment(name="champion-predict", tags=["segpipe"]),
        limit=limit,
    )
