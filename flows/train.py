"""Flow `train-flow` (`train_flow`): locate a prepared dataset → the `train` task."""

from __future__ import annotations

from prefect import flow

from segpipe.config import PipelineConfig
from segpipe.layout import resolve_work_dir
from segpipe.runs.naming import TrainedRun
from segpipe_app.tasks.data import locate_dataset_task
from segpipe_app.tasks.training import train_task


@flow(name="train-flow")
def train_flow(
    config: PipelineConfig = PipelineConfig(), work_dir: str | None = None, dataset_key: str | None = None
) -> TrainedRun:
    """Train `config.model` with `config.train` on `dataset_key` (default: the latest prepared dataset)."""
    work = str(resolve_work_dir(work_dir))
    dataset = locate_dataset_task(work, dataset_key)
    return train_task(dataset, config.model, config.train, work, eval_config=config.eval)
