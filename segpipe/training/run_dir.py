"""A run directory's files: their names, the result read back from them, history, lineage and resume state.

The layout is described in `segpipe.training` (the package's doc). Only the chief of a multi-worker
run writes the run directory; `output_dir` gives every other worker a scratch copy of the state it
resumes from.
"""

from __future__ import annotations

import contextlib
import csv
import platform
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from segpipe.training import distribute
from segpipe.config.budget import TrainingPlan
from segpipe.config import PipelineConfig
from segpipe.fsutil import atomic_write_json, atomic_write_text, code_version, read_json, sha256_file
from segpipe.layout import MANIFEST
# The names a complete-run check reads live TensorFlow-free in segpipe.runs.naming, beside that check (`run_complete`).
from segpipe.runs.naming import CONFIG_FILE, LINEAGE_FILE, MODEL_FILE, SUMMARY_FILE

MONITOR = "val_mean_iou"  # what best.json and model.keras are chosen by
BEST_FILE = "best.json"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
BACKUP_WEIGHTS = "latest.weights.h5"  # in BACKUP_DIR: model weights and optimizer state
BACKUP_METADATA = "training_metadata.json"  # in BACKUP_DIR: {"epoch": epochs completed, "batch": 0}
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TrainResult:
    """What `train` produced. Epoch indices are 0-based; `epochs_completed` is a count."""

    run_dir: Path
    model_path: Path
    epochs_completed: int
    best_epoch: int
    best_val_mean_iou: float
    history: list[dict[str, float]]
    resumed_from_epoch: int
    predicted_class_share: list[float] = field(default_factory=list)
    collapsed: bool = False
    stop_reason: str = "completed"
    cached: bool = False
    chief: bool = True  # False on the workers of a multi-worker run other than the chief
    border_band: dict[str, Any] | None = None  # train.border_band=calibrated: the calibration's record


def read_history(path: Path) -> list[dict[str, float]]:
    """Rows of a CSVLogger file as dicts: `epoch` an int, every other column a float."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v not in (None, "")}
            for row in csv.DictReader(f)
        ]


def truncate_history(path: Path, keep_epochs: int) -> None:
    """Drop rows of epochs >= `keep_epochs` (written by a run killed before its backup of that epoch)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(r[0]) < keep_epochs]
    if len(kept) == len(body):
        return
    if not kept:
        path.unlink()
        return
    lines = [",".join(header)] + [",".join(r) for r in kept]
    atomic_write_text(path, "\r\n".join(lines) + "\r\n")


def _backup_epoch(backup_dir: Path) -> int:
    """Epochs completed according to the backup's metadata (0 when there is no backup)."""
    meta = backup_dir / BACKUP_METADATA
    return int(read_json(meta)["epoch"]) if meta.is_file() and (backup_dir / BACKUP_WEIGHTS).is_file() else 0


def _check_same_run(run_dir: Path, identity: dict[str, Any], dataset_key: str) -> None:
    """Refuse a run directory that holds a run of another config or dataset.

    Compared by identity (encoder weights by sha256), so a weights file that moved still resumes its run.
    """
    lineage_path = run_dir / LINEAGE_FILE
    if not lineage_path.is_file():
        return
    lineage = read_json(lineage_path)
    if "identity" in lineage and lineage["identity"] != identity:
        raise ValueError(
            f"run_dir {run_dir} holds a run with a different model/train config; "
            "use run_id_for(cfg, dataset_key, code) to name run directories"
        )
    if lineage.get("dataset_key") != dataset_key:
        raise ValueError(f"run_dir {run_dir} holds a run on another dataset than {dataset_key!r}")


def _write_lineage(
    run_dir: Path, cfg: PipelineConfig, dataset_dir: Path, dataset_key: str, resumed: int, dtype_policy: str,
    identity: dict[str, Any], plan: TrainingPlan, distribution: dict[str, Any] | None = None,
) -> None:
    path = run_dir / LINEAGE_FILE
    old = read_json(path) if path.is_file() else {}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, {
        "run_id": run_dir.name,
        "identity": identity,
        "dataset_key": dataset_key,
        "dataset_dir": str(dataset_dir),
        "dataset_manifest_sha256": sha256_file(dataset_dir / MANIFEST),
        "code_version": code_version(),
        "seed": cfg.train.seed,
        "encoder": cfg.model.encoder,
        "encoder_weights": identity["model"]["encoder_weights"],
        "encoder_weights_files": old.get("encoder_weights_files", []),  # `_record_weights_files` adds to it
        "plan": plan.to_json(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "distribution": distribution or {},
        "dtype_policy": dtype_policy,
        "started_at": old.get("started_at", now),
        "resumed_at": old.get("resumed_at", []) + ([{"at": now, "from_epoch": resumed}] if resumed else []),
    })


def _record_weights_files(run_dir: Path, loaded: list[dict[str, Any]]) -> None:
    """Add the encoder weights files this start of the run loaded (name and sha256, never the path; see
    `encoders.recording_weights_files`) to lineage.json's `encoder_weights_files`, in load order.

    Each file appears once: a resume that loads the same bytes adds nothing, one that finds other bytes
    (the cached ImageNet file replaced) adds them, so the change stays visible."""
    path = run_dir / LINEAGE_FILE
    if not loaded or not path.is_file():  # no encoder weights; a worker's scratch directory has no lineage
        return
    lineage = read_json(path)
    files = lineage.get("encoder_weights_files", [])
    seen = {(f["route"], f["sha256"]) for f in files}
    new = [f for f in loaded if (f["route"], f["sha256"]) not in seen]
    if new:
        atomic_write_json(path, {**lineage, "encoder_weights_files": [*files, *new]})


def _result_from_summary(run_dir: Path, summary: dict[str, Any], *, cached: bool) -> TrainResult:
    return TrainResult(
        run_dir=run_dir,
        model_path=run_dir / MODEL_FILE,
        epochs_completed=summary["epochs_completed"],
        best_epoch=summary["best_epoch"],
        best_val_mean_iou=summary["best_val_mean_iou"],
        history=read_history(run_dir / HISTORY_FILE),
        resumed_from_epoch=summary["resumed_from_epoch"],
        predicted_class_share=summary["predicted_class_share"],
        collapsed=summary["collapsed"],
        stop_reason=summary["stop_reason"],
        cached=cached,
        border_band=summary.get("border_band"),
    )


# What a non-chief worker copies from the chief's run directory before it starts (see the package doc).
_WORKER_STATE = (f"{BACKUP_DIR}/{BACKUP_WEIGHTS}", f"{BACKUP_DIR}/{BACKUP_METADATA}", HISTORY_FILE,
                 BEST_FILE, MODEL_FILE)


@contextlib.contextmanager
def output_dir(run_dir: Path, task: distribute.ClusterTask | None) -> Iterator[Path]:
    """Where this process writes: the run directory for the chief (or a single process); for any other
    worker, a scratch directory that starts as a copy of the chief's resumable state (what exists of it)
    and is removed on the way out."""
    if task is None or task.is_chief:
        yield run_dir
        return
    with distribute.scratch_dir(task) as scratch:
        for name in _WORKER_STATE:
            if (run_dir / name).is_file():
                (scratch / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / name, scratch / name)
        yield scratch
