"""After training: the best model checked in inference mode (collapse to one class), and train_summary.json."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
from keras import ops

from segpipe.config.budget import TrainingPlan
from segpipe.config import PipelineConfig
from segpipe.data.input import eval_dataset
from segpipe.fsutil import read_json
from segpipe.training.run_dir import BEST_FILE, HISTORY_FILE, MODEL_FILE, MONITOR, read_history
from segpipe.data import NUM_CLASSES

log = logging.getLogger("segpipe.training")


def inference_check(
    model_path: Path,
    dataset_dir: Path,
    *,
    img_size: int,
    batch_size: int,
    collapse_threshold: float,
    split: str = "val",
) -> dict[str, Any]:
    """Scores of the saved model on `split` in inference mode (BatchNorm uses its moving statistics).

    Catches the failure where BN moving statistics never caught up and the
    model predicts (nearly) one class at inference, whatever it did in training.
    """
    from segpipe.evaluation.metrics import ConfusionAccumulator

    model = keras.saving.load_model(model_path, compile=False)
    acc = ConfusionAccumulator(NUM_CLASSES)
    for images, labels in eval_dataset(dataset_dir, split, img_size=img_size, batch_size=batch_size):
        probs = model(images, training=False)
        acc.update(labels.numpy()[..., 0], ops.convert_to_numpy(ops.argmax(probs, axis=-1)))
    return acc.scores(collapse_threshold=collapse_threshold)


def _summarise(
    cfg: PipelineConfig, dataset_dir: Path, run_dir: Path, dataset_key: str, identity: dict[str, Any],
    resumed: int, stop_reason: str, plan: TrainingPlan, border_band: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """train_summary.json: best epoch and score, epochs completed, the inference-mode check and the border
    band's calibration (`train.border_band`)."""
    model_path, best_path = run_dir / MODEL_FILE, run_dir / BEST_FILE
    if not (model_path.is_file() and best_path.is_file()):
        raise RuntimeError(
            f"training in {run_dir} ended ({stop_reason}) without ever saving a model: {MONITOR} was never "
            f"finite with a finite loss; see {run_dir / HISTORY_FILE}"
        )
    best = read_json(best_path)
    history = read_history(run_dir / HISTORY_FILE)
    check = inference_check(
        model_path, dataset_dir, img_size=cfg.train.img_size, batch_size=cfg.train.batch_size,
        collapse_threshold=cfg.eval.collapse_threshold,
    )
    share = [check["predicted_class_share"][name] or 0.0 for name in check["predicted_class_share"]]
    if check["collapsed"]:
        log.warning(
            "the best model predicts one class for %.1f%% of val pixels in inference mode "
            "(class shares %s): BatchNorm statistics may not have caught up; try a lower bn_momentum, "
            "more epochs or a larger dataset",
            100 * max(share), [round(s, 4) for s in share],
        )
    return {
        "identity": identity,
        "dataset_key": dataset_key,
        "run_id": run_dir.name,
        "epochs_completed": len(history),
        "epochs_planned": plan.epochs,
        "images_seen": len(history) * plan.images_per_epoch,
        "budget_images": plan.budget_images,
        "best_epoch": int(best["epoch"]),
        "best_val_mean_iou": float(best["value"]),
        "resumed_from_epoch": resumed,
        "stop_reason": stop_reason,
        "predicted_class_share": share,
        "collapsed": bool(check["collapsed"]),
        "inference_val": {k: check[k] for k in ("mean_iou", "pixel_accuracy", "iou", "confusion_matrix")},
        "border_band": border_band,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
