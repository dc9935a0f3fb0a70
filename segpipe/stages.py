"""Every stage of the pipeline as one plain function: the notebook's (and the test's) way in, no Prefect.

    from segpipe.config import build_config
    from segpipe.stages import prepare, train, evaluate, gallery, predict, export
    cfg = build_config("cpu-quick", {"data.source": "/data/pets"})
    ds = prepare(cfg.data.source, "work", cfg.data)           # DatasetRef: key, path, split sizes
    run = train(cfg, ds, "work")                              # TrainedRun: run dir, best model, best val mIoU
    scores = evaluate([run.model_path], ds, cfg.eval)         # .metrics; gallery(..., scores=scores), predict, export

Each function calls the library function that owns its stage, the one the Prefect task of the same name
calls (`segpipe.data.prepare.prepare_dataset`, `segpipe.runs.naming.train_run`,
`segpipe.evaluation.evaluate.evaluate` and `render_evaluation_gallery`, `segpipe.predict.predict_paths`,
`segpipe.export.exporter.export_models`), with the configuration sections the tasks take. Importing this
module loads neither TensorFlow nor Prefect: each function imports its stage when called. What Prefect
adds on top (cache records, retries, artifacts) is in `segpipe_app.tasks`; the files a stage writes and
their identities (dataset key, run id) are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segpipe.config import DataConfig, EvalConfig, PipelineConfig

if TYPE_CHECKING:
    from segpipe.data.dataset import DatasetRef
    from segpipe.evaluation.evaluate import EvaluationResult
    from segpipe.export.exporter import ExportResult
    from segpipe.predict import PredictReport
    from segpipe.runs.naming import TrainedRun

PathLike = str | os.PathLike[str]

__all__ = ["prepare", "train", "evaluate", "gallery", "predict", "export"]


def _dataset_dir(dataset: DatasetRef | PathLike) -> Path:
    """A `DatasetRef`'s directory, or a dataset directory as given."""
    return Path(getattr(dataset, "path", dataset))


def _paths(model_paths: Sequence[PathLike] | PathLike) -> list[Path]:
    if isinstance(model_paths, (str, os.PathLike)):
        return [Path(model_paths)]
    return [Path(p) for p in model_paths]


def prepare(source: str | None, work_dir: PathLike | None, data: DataConfig = DataConfig(), *,
            progress: bool | None = None) -> DatasetRef:
    """Download, verify, extract, validate, split and write `source`'s archives (None: `data.source`) as the
    dataset `data` describes, under `work_dir`; the verified dataset and its content key (the `prepare-data`
    flow's key for the same archives and `data`). A dataset already complete is reused."""
    from segpipe.data.prepare import prepare_dataset

    return prepare_dataset(source, work_dir, data, progress=progress)


def train(config: PipelineConfig, dataset: DatasetRef, work_dir: PathLike | None, *,
          on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
          on_resume: Callable[[int], None] | None = None, on_phase: Callable[[str], None] | None = None,
          verbose: int | None = 0) -> TrainedRun:
    """Train `config.model` with `config.train` on `dataset` into WORK/runs/<run-id> (the run id of the
    `train` task); a killed run resumes, a complete one is returned as it is. The hooks are the `train` task's:
    after each saved epoch, when a killed run resumes, as each phase starts (`segpipe.training.train`)."""
    from segpipe.runs.naming import train_run

    return train_run(config, dataset, work_dir, on_epoch_end=on_epoch_end, on_resume=on_resume, on_phase=on_phase,
                     verbose=verbose)


def evaluate(model_paths: Sequence[PathLike] | PathLike, dataset: DatasetRef | PathLike,
             eval_config: EvalConfig = EvalConfig(), *, split: str | None = None,
             out_path: PathLike | None = None) -> EvaluationResult:
    """Score the model (several: the ensemble) on `split` (default `eval_config.split`) with the eval
    section's batch size, collapse threshold and TTA (flip, sizes); with `out_path`, the metrics are written there
    as JSON too (as the `evaluate` task writes metrics.json)."""
    from segpipe.evaluation.evaluate import evaluate_with, write_metrics

    result = evaluate_with(_paths(model_paths), _dataset_dir(dataset), eval_config, split)
    if out_path is not None:
        write_metrics(result, out_path)
    return result


def gallery(model_paths: Sequence[PathLike] | PathLike, dataset: DatasetRef | PathLike,
            eval_config: EvalConfig, out_dir: PathLike, *, scores: EvaluationResult | None = None) -> Path:
    """The prediction gallery on `eval_config.split` (its `gallery_samples` sampled and `gallery_worst` worst
    images, `gallery_seed`, `tta_flip`, `tta_sizes`) in `out_dir`; `scores`: the `evaluate` result to pick the worst
    from (default: scored here). Returns the path of its index.html."""
    from segpipe.evaluation.evaluate import gallery_with

    if scores is None:
        scores = evaluate(model_paths, dataset, eval_config)
    return gallery_with(_paths(model_paths), _dataset_dir(dataset), eval_config, out_dir,
                        per_image=scores.per_image, metrics=scores.metrics)


def predict(model_paths: Sequence[PathLike] | PathLike, inputs: Sequence[PathLike], out_dir: PathLike, *,
            batch_size: int = 8, tta_flip: bool = False, tta_sizes: Sequence[int] = (),
            overlay: bool = True) -> PredictReport:
    """A mask (and an overlay) in `out_dir` for every image file in `inputs` (files and folders), with
    `.keras` models (several: an ensemble) or one exported artifact."""
    from segpipe.predict import predict_paths

    return predict_paths(_paths(model_paths), [Path(p) for p in inputs], out_dir, batch_size=batch_size,
                         overlay=overlay, flip=tta_flip, tta_sizes=tta_sizes)


def export(model_paths: Sequence[PathLike] | PathLike, out_dir: PathLike, dataset: DatasetRef | PathLike,
           eval_config: EvalConfig = EvalConfig(), *, formats: Sequence[str] | None = None) -> ExportResult:
    """Export the model (several: one ensemble) as SavedModel, LiteRT and ONNX (or `formats`) into `out_dir`,
    flip and multi-scale TTA inside as `eval_config.tta_flip` and `tta_sizes` say, each checked in a fresh process against the Keras model on
    `eval_config.split` of `dataset` (as the `export` task does); raises `ParityError` (nothing installed)
    when an artifact fails its bound."""
    from segpipe.export.exporter import export_models

    kwargs: dict[str, Any] = {} if formats is None else {"formats": list(formats)}
    return export_models(_paths(model_paths), out_dir, dataset_dir=_dataset_dir(dataset), split=eval_config.split,
                         flip=eval_config.tta_flip, tta_sizes=eval_config.tta_sizes, **kwargs)
