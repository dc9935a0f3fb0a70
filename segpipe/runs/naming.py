"""Run identity and completeness, importable without TensorFlow: same data + config + code = same run directory.

The code is the train stage's: every segpipe module `segpipe.training` can import (`TRAIN_ENTRY`, read
from the import graph by `segpipe.codekeys`), so the run id and the train task's cache key cover the
same source.

    run_dir = train_run_dir(work_dir, dataset_key, cfg.model, cfg.train)   # WORK/runs/<run-id>
    run_complete(run_dir)                                                 # train_summary.json and model.keras
    trained = train_run(cfg, dataset, work_dir)                           # the train stage -> TrainedRun

The names of the run directory's files live here (`segpipe.training.run_dir` writes them and re-exports
them) so that a complete-run check costs no TensorFlow import. `TrainedRun`, what the train stage
hands on, is TensorFlow-free for the same reason: a cached train result loads without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segpipe.codekeys import code_key
from segpipe.config import ModelConfig, PipelineConfig, TrainConfig
from segpipe.fsutil import digest_json
from segpipe.layout import WorkDir

if TYPE_CHECKING:
    from segpipe.data.dataset import DatasetRef
    from segpipe.training.run_dir import TrainResult

CONFIG_FILE = "config.json"
LINEAGE_FILE = "lineage.json"
SUMMARY_FILE = "train_summary.json"  # written last: the run is complete once it exists
MODEL_FILE = "model.keras"  # the best model by val_mean_iou

TRAIN_ENTRY: tuple[str, ...] = ("segpipe.training",)
"""The train stage's entry module: its code key covers every segpipe module this can import."""


def train_code_key() -> str:
    """The code key of the train stage (`segpipe.codekeys.code_key(TRAIN_ENTRY)`)."""
    return code_key(TRAIN_ENTRY)


def run_identity(cfg: PipelineConfig) -> dict[str, Any]:
    """The parts of the config that change what training produces; a weights file by its sha256, not its path."""
    return {"model": cfg.model.cache_content(), "train": cfg.train.model_dump(mode="json")}


def run_id_for(cfg: PipelineConfig, dataset_key: str, code: str | None = None) -> str:
    """`<model>-<12 hex>` from dataset key, model and train config, and code (default: `train_code_key()`)."""
    if not dataset_key:
        raise ValueError("dataset_key must be a non-empty string")
    if code is None:
        code = train_code_key()
    digest = digest_json({"dataset_key": dataset_key, **run_identity(cfg), "code": code})
    return f"{cfg.model.name}-{digest[:12]}"


def train_run_dir(work_dir: str | Path, dataset_key: str, model: ModelConfig, train_config: TrainConfig) -> Path:
    """WORK/runs/<run-id> for training `model` with `train_config` on `dataset_key` with today's train code."""
    cfg = PipelineConfig(model=model, train=train_config)
    return WorkDir.at(work_dir).run(run_id_for(cfg, dataset_key))


def run_complete(run_dir: str | Path) -> bool:
    """True once training finished in `run_dir`: its summary (written last) and its best model are there."""
    run_dir = Path(run_dir)
    return (run_dir / SUMMARY_FILE).is_file() and (run_dir / MODEL_FILE).is_file()


@dataclass(frozen=True)
class TrainedRun:
    """A complete training run as the later stages need it (`train_run`): the run, its best model, the data
    it was trained on, and how it ended. Epoch indices are 0-based, as in `segpipe.training.TrainResult`
    (whose full history stays in the run directory)."""

    run_id: str
    run_dir: str
    model_path: str
    dataset_key: str
    epochs_completed: int
    best_epoch: int | None
    best_val_mean_iou: float | None
    resumed_from_epoch: int = 0
    border_band: str | None = None  # train.border_band=calibrated: what the calibration chose, in words

    @classmethod
    def of(cls, result: TrainResult, dataset_key: str, run_dir: str | Path | None = None) -> "TrainedRun":
        """The `TrainResult` of a run on `dataset_key` (in `run_dir`, default `result.run_dir`), without its
        history."""
        run_dir = Path(result.run_dir if run_dir is None else run_dir)
        from segpipe.evaluation.band import describe_calibration

        band = describe_calibration(result.border_band) if result.border_band else None
        return cls(run_dir.name, str(run_dir), str(result.model_path), dataset_key, result.epochs_completed,
                   result.best_epoch, result.best_val_mean_iou, result.resumed_from_epoch, band)


def train_run(
    cfg: PipelineConfig, dataset: DatasetRef, work_dir: str | Path | None, *,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    on_resume: Callable[[int], None] | None = None, on_phase: Callable[[str], None] | None = None,
    verbose: int | None = None, run_dir: str | Path | None = None,
) -> TrainedRun:
    """The train stage: train `cfg.model` with `cfg.train` on `dataset` into WORK/runs/<run-id>
    (`train_run_dir`, or `run_dir` when the caller computed it already), resuming a killed run and returning
    a complete one as it is (`segpipe.training.train`).

    A dataset without train and val examples is refused before TensorFlow loads (`require_train_split`).
    """
    from segpipe.data.split import require_train_split

    require_train_split(dataset.num_examples, dataset.dataset_key)
    from segpipe.training import train

    if run_dir is None:
        run_dir = train_run_dir(work_dir, dataset.dataset_key, cfg.model, cfg.train)
    result = train(cfg, Path(dataset.path), run_dir, on_epoch_end=on_epoch_end, on_resume=on_resume,
                   on_phase=on_phase, verbose=verbose)
    return TrainedRun.of(result, dataset.dataset_key, run_dir)
