"""Flow `train`: locate a prepared dataset → train."""

from __future__ import annotations

from prefect import flow

from segpipe.config import PipelineConfig
from segpipe.layout import resolve_work_dir
from tasks.data import locate_dataset
from tasks.training import TrainedModel, train


@flow(name="train")
def train_model(
    config: PipelineConfig = PipelineConfig(), work_dir: str | None = None, dataset_key: str | None = None
) -> TrainedModel:
    """Train `config.model` with `config.train` on `dataset_key` (default: the latest prepared dataset)."""
    work = str(resolve_work_dir(work_dir))
    dataset = locate_dataset(work, dataset_key)
    return train(dataset, config.model, config.train, work)
