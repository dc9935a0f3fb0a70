"""Segmentation metrics from a confusion matrix: pure numpy, no TensorFlow.

Labels are 0 pet, 1 background, 2 border (`segpipe.data.CLASS_NAMES`).

Everything is derived from one integer confusion matrix (rows = true class,
columns = predicted class), so per-batch matrices can simply be summed.

Conventions for classes that are absent:

* A class with no pixels in the truth *and* none in the prediction has an
  undefined IoU and Dice (0 / 0). It is reported as `None` (JSON `null`) and
  left out of every mean. This matches `keras.metrics.MeanIoU`.
* A class present in only one of truth or prediction has IoU 0.0 and counts.
* A mean over no defined classes (an empty matrix) is `None`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from segpipe.config import COLLAPSE_THRESHOLD
from segpipe.data import CLASS_NAMES
BACKGROUND = "background"
BORDER = "border"


def _as_labels(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class labels; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")


def confusion_matrix(
    y_true: Any, y_pred: Any, num_classes: int = 3, *, ignore_index: int | None = None
) -> np.ndarray:
    """`num_classes` x `num_classes` int64 counts; rows = true class, columns = predicted class.

    `y_true` and `y_pred` are integer arrays of the same shape (any shape).
    Pixels whose true label equals `ignore_index` are dropped; every other
    label must lie in [0, num_classes).
    """
    _check_num_classes(num_classes)
    t, p = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape; got y_true {t.shape} and y_pred {p.shape}")
    t, p = t.ravel(), p.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}); found values from {arr.min()} to {arr.max()}"
            )
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _check_matrix(cm: Any, n_names: int | None = None) -> np.ndarray:
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (n x n, n >= 1); got shape {m.shape}")
    if m.dtype.kind not in "iu":
        raise TypeError(f"confusion matrix must hold integer counts; got dtype {m.dtype}")
    if m.size and m.min() < 0:
        raise ValueError("confusion matrix counts must be non-negative")
    if n_names is not None and n_names != m.shape[0]:
        raise ValueError(f"class_names has {n_names} names but the confusion matrix is {m.shape[0]} x {m.shape[0]}")
    return m.astype(np.int64, copy=False)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def per_class_iou(cm: Any) -> list[float | None]:
    """IoU = TP / (TP + FP + FN) per class; None where the class is absent from truth and prediction."""
    m = _check_matrix(cm)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    return [_ratio(a, b) for a, b in zip(tp, union)]


def per_class_dice(cm: Any) -> list[float | None]:
    """Dice = 2 TP / (2 TP + FP + FN) per class; None where the class is absent from truth and prediction."""
    m = _check_matrix(cm)
    tp = np.diag(m)
    den = m.sum(axis=0) + m.sum(axis=1)
    return [_ratio(2 * a, b) for a, b in zip(tp, den)]


def _foreground_iou(m: np.ndarray, names: Sequence[str]) -> float | None:
    """IoU of the merged non-background classes (pet + border) against background."""
    if BACKGROUND not in names:
        return None
    bg = list(names).index(BACKGROUND)
    union = m.sum() - m[bg, bg]  # every pixel that is foreground in truth or prediction
    fg = [i for i in range(len(names)) if i != bg]
    tp = m[np.ix_(fg, fg)].sum()  # foreground predicted as any foreground class
    return _ratio(tp, union)


def scores(
    cm: Any, class_names: Sequence[str] = CLASS_NAMES, *, collapse_threshold: float = COLLAPSE_THRESHOLD
) -> dict[str, Any]:
    """Every headline metric of a confusion matrix, as a JSON-serialisable dict.

    Keys: pixel_accuracy, mean_iou, iou{class}, dice (mean Dice), dice_per_class{class},
    foreground_iou, mean_iou_no_border, confusion_matrix, n_pixels,
    predicted_class_share{class}, collapsed. Undefined values are None (see the module doc).
    `collapsed` is True when one class takes >= `collapse_threshold` of the predicted pixels.
    """
    names = tuple(class_names)
    m = _check_matrix(cm, len(names))
    if not 0.0 < collapse_threshold <= 1.0:
        raise ValueError(f"collapse_threshold must be in (0, 1]; got {collapse_threshold!r}")
    n = int(m.sum())
    iou, dice = per_class_iou(m), per_class_dice(m)
    share = [_ratio(c, n) for c in m.sum(axis=0)]
    return {
        "pixel_accuracy": _ratio(np.trace(m), n),
        "mean_iou": _mean(iou),
        "iou": dict(zip(names, iou)),
        "dice": _mean(dice),
        "dice_per_class": dict(zip(names, dice)),
        "foreground_iou": _foreground_iou(m, names),
        "mean_iou_no_border": _mean([v for name, v in zip(names, iou) if name != BORDER]),
        "confusion_matrix": m.tolist(),
        "n_pixels": n,
        "predicted_class_share": dict(zip(names, share)),
        "collapsed": bool(n > 0 and max(share) >= collapse_threshold),
    }


def per_image_iou(y_true: Any, y_pred: Any, num_classes: int = 3) -> float:
    """Mean IoU of one image over the classes present in its truth or prediction."""
    if np.asarray(y_true).size == 0:
        raise ValueError("per_image_iou needs a non-empty image; got an empty y_true")
    value = _mean(per_class_iou(confusion_matrix(y_true, y_pred, num_classes)))
    assert value is not None  # a non-empty image has at least one class present
    return value


class ConfusionAccumulator:
    """A running confusion matrix: `update` per batch, `scores()` at the end; `a + b` merges two."""

    def __init__(self, num_classes: int = 3, *, ignore_index: int | None = None) -> None:
        _check_num_classes(num_classes)
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, y_true: Any, y_pred: Any) -> "ConfusionAccumulator":
        """Add one batch (any shape) of true and predicted labels."""
        self._matrix += confusion_matrix(y_true, y_pred, self.num_classes, ignore_index=self.ignore_index)
        return self

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the accumulated counts (rows = true, columns = predicted)."""
        return self._matrix.copy()

    def scores(
        self, class_names: Sequence[str] = CLASS_NAMES, *, collapse_threshold: float = COLLAPSE_THRESHOLD
    ) -> dict[str, Any]:
        return scores(self._matrix, class_names, collapse_threshold=collapse_threshold)

    def reset(self) -> None:
        self._matrix[...] = 0

    def __add__(self, other: "ConfusionAccumulator") -> "ConfusionAccumulator":
        if not isinstance(other, ConfusionAccumulator):
            return NotImplemented
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge accumulators with num_classes/ignore_index {self.num_classes}/{self.ignore_index} "
                f"and {other.num_classes}/{other.ignore_index}"
            )
        out = ConfusionAccumulator(self.num_classes, ignore_index=self.ignore_index)
        out._matrix = self._matrix + other._matrix
        return out

    def __repr__(self) -> str:
        return f"ConfusionAccumulator(num_classes={self.num_classes}, n_pixels={int(self._matrix.sum())})"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


_HEADLINES = (
    ("pixel_accuracy", "pixel accuracy"),
    ("mean_iou", "mean IoU"),
    ("mean_iou_no_border", "mean IoU (pet, background)"),
    ("foreground_iou", "foreground IoU (pet+border vs background)"),
    ("dice", "mean Dice"),
    ("n_pixels", "pixels"),
    ("collapsed", "collapsed (one class dominates predictions)"),
)


def markdown_table(metrics: dict[str, Any], title: str) -> str:
    """A Markdown section: headline numbers, then per-class IoU, Dice and predicted share."""
    required = [k for k, _ in _HEADLINES] + ["iou", "dice_per_class"]
    missing = [k for k in required if k not in metrics]
    if missing:
        raise ValueError(f"metrics is missing keys {missing}; expected the dict returned by segpipe.evaluation.metrics.scores")
    lines = [f"### {title}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {label} | {_fmt(metrics[key])} |" for key, label in _HEADLINES]
    share = metrics.get("predicted_class_share") or {}
    lines += ["", "| class | IoU | Dice | predicted share |", "|---|---:|---:|---:|"]
    for name, iou in metrics["iou"].items():
        lines.append(f"| {name} | {_fmt(iou)} | {_fmt(metrics['dice_per_class'].get(name))} | {_fmt(share.get(name))} |")
    return "\n".join(lines) + "\n"
