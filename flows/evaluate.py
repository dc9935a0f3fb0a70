"""Flows `evaluate-flow` (`evaluate_flow`: score saved models on a split) and `gallery-flow` (`gallery_flow`:
render predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from segpipe_app.flows.prepare_data import prepare_data_flow
from segpipe.config import PipelineConfig
from segpipe.data.dataset import DatasetRef
from segpipe.layout import resolve_work_dir
from segpipe_app.tasks.data import locate_dataset_task
from segpipe_app.tasks.evaluation import evaluate_task, gallery_task


def _dataset(config: PipelineConfig, work: str, dataset_key: str | None, prepare_source: bool) -> DatasetRef:
    return prepare_data_flow(config, work) if prepare_source else locate_dataset_task(work, dataset_key)


def _score(model_paths: list[str], config: PipelineConfig, dataset: DatasetRef, out_path: str | None) -> dict[str, Any]:
    """The `evaluate` task; metrics land beside the first model unless `out_path` says otherwise."""
    default = Path(model_paths[0]).resolve().parent / f"metrics-{dataset.dataset_key}-{config.eval.split}.json"
    return evaluate_task(model_paths, dataset, config.eval, out_path or str(default))


@flow(name="evaluate-flow")
def evaluate_flow(
    model_paths: list[str],
    config: PipelineConfig = PipelineConfig(),
    work_dir: str | None = None,
    dataset_key: str | None = None,
    prepare_source: bool = False,
    out_path: str | None = None,
) -> dict[str, Any]:
    """Score `model_paths` (several = an ensemble) on `config.eval.split`.

    With `prepare_source`, `config.data.source` is prepared under WORK first, so a
    model can be scored on any mirror of the archives it has never seen.
    """
    work = str(resolve_work_dir(work_dir))
    return _score(model_paths, config, _dataset(config, work, dataset_key, prepare_source), out_path)


@flow(name="gallery-flow")
def gallery_flow(
    model_paths: list[str],
    config: PipelineConfig = PipelineConfig(),
    work_dir: str | None = None,
    dataset_key: str | None = None,
    prepare_source: bool = False,
    out_dir: str | None = None,
) -> str:
    """Evaluate per image, then render a seeded sample plus the worst-K images."""
    work = str(resolve_work_dir(work_dir))
    dataset = _dataset(config, work, dataset_key, prepare_source)
    scored = _score(model_paths, config, dataset, None)
    return gallery_task(
        model_paths, dataset, config.eval, scored["per_image"],
        out_dir or str(Path(model_paths[0]).resolve().parent / "gallery"), scored["metrics"],
    )
