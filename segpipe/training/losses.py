"""Segmentation losses for softmax probabilities and sparse integer labels.

    y_true: ints 0..num_classes-1, shape (B, H, W) or (B, H, W, 1) (any numeric dtype)
    y_pred: probabilities, shape (B, H, W, num_classes) (float16 or float32)

Every loss casts to float32 and clips probabilities to [EPSILON, 1 - EPSILON]
first, so it is finite in mixed precision and on saturated predictions.

`class_weights` (one weight per class, e.g. (pet, background, border)):
for the cross-entropy and focal losses each pixel's loss is multiplied by
the weight of its true class and then averaged over all pixels (Keras
`class_weight` semantics, not renormalised); for Dice the per-class scores
are averaged with these weights.

The Lovász-softmax term (`sce+lovasz`) is Berman et al.'s convex surrogate of the Jaccard loss (2018, "The
Lovász-Softmax loss: a tractable surrogate for the optimization of the intersection-over-union measure in
neural networks"), per image over the classes present in its label, as their `per_image=True, classes="present"`.
Mean IoU is what segpipe reports; cross-entropy and Dice only stand in for it.

The losses are `keras.losses.Loss` subclasses registered as serialisable
under the "segpipe" package: a model compiled with them saves to `.keras`
and loads with `compile=True` once `segpipe.training.losses` is imported (with
`compile=False` it loads without it).
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from segpipe.data import NUM_CLASSES
from segpipe.config import LOSS_NAMES

EPSILON = 1e-7


def _check_weights(class_weights: Sequence[float] | None, num_classes: int | None) -> tuple[float, ...] | None:
    if class_weights is None:
        return None
    weights = tuple(float(w) for w in class_weights)
    if num_classes is not None and len(weights) != num_classes:
        raise ValueError(f"class_weights must have one weight per class ({num_classes}), got {class_weights!r}")
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"class_weights must be non-negative with a positive sum, got {class_weights!r}")
    return weights


def prepare(y_true: Any, y_pred: Any, class_weights: tuple[float, ...] | None) -> tuple[Any, Any]:
    """Return (int32 labels (B, H, W), clipped float32 probabilities (B, H, W, C)); every loss term starts here."""
    y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != len(y_pred.shape) - 1:
        raise ValueError(
            f"labels must have shape (B, H, W) or (B, H, W, 1) for predictions of shape {tuple(y_pred.shape)}, "
            f"got {tuple(y_true.shape)}"
        )
    if class_weights is not None and y_pred.shape[-1] is not None and y_pred.shape[-1] != len(class_weights):
        raise ValueError(
            f"class_weights has {len(class_weights)} entries but predictions have {y_pred.shape[-1]} classes"
        )
    return ops.cast(y_true, "int32"), y_pred


def per_image_mean(values: Any) -> Any:
    """A loss's values, per image (B,) or per pixel (B, H, W): the mean per image, (B,)."""
    if len(values.shape) == 1:
        return values
    return ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


def _pixel_weights(y_true: Any, class_weights: tuple[float, ...] | None) -> Any:
    if class_weights is None:
        return ops.ones_like(y_true, dtype="float32")
    return ops.take(ops.convert_to_tensor(class_weights, dtype="float32"), y_true)


class _SegLoss(keras.losses.Loss):
    """Shared config handling; subclasses implement `call`."""

    def __init__(self, class_weights: Sequence[float] | None = None, num_classes: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.class_weights = _check_weights(class_weights, num_classes)

    def get_config(self) -> dict[str, Any]:
        weights = None if self.class_weights is None else list(self.class_weights)
        return {**super().get_config(), "class_weights": weights}


@keras.saving.register_keras_serializable(package="segpipe")
class FocalLoss(_SegLoss):
    """Focal loss (Lin et al., 2017): -w[y] * (1 - p_y)**gamma * log(p_y) per pixel; gamma=0 is weighted SCE."""

    def __init__(self, gamma: float = 2.0, class_weights: Sequence[float] | None = None, **kwargs: Any):
        kwargs.setdefault("name", "focal")
        super().__init__(class_weights, **kwargs)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self.per_pixel(*prepare(y_true, y_pred, self.class_weights))

    def per_pixel(self, labels: Any, probs: Any) -> Any:
        """The loss of each pixel (B, H, W), from `prepare`'s labels and probabilities."""
        p_true = ops.take_along_axis(probs, ops.expand_dims(labels, -1), axis=-1)[..., 0]
        loss = -ops.log(p_true) * _pixel_weights(labels, self.class_weights)
        if self.gamma:
            loss = loss * ops.power(1.0 - p_true, self.gamma)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="segpipe")
class SparseCategoricalCrossentropy(FocalLoss):
    """Per-pixel cross-entropy -w[y] * log(p_y), averaged over pixels."""

    def __init__(self, class_weights: Sequence[float] | None = None, **kwargs: Any):
        kwargs.pop("gamma", None)
        kwargs.setdefault("name", "sce")
        super().__init__(0.0, class_weights, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("gamma")
        return config


@keras.saving.register_keras_serializable(package="segpipe")
class SoftDiceLoss(_SegLoss):
    """1 - mean over classes of the soft Dice score, per image.

    dice_c = (2 * sum(p_c * y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth), sums over the
    image's pixels; a class absent from both label and prediction scores 1.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
        **kwargs: Any,
    ):
        kwargs.setdefault("name", "dice")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        super().__init__(class_weights, num_classes=num_classes, **kwargs)
        self.num_classes = num_classes
        self.smooth = float(smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels, probs = prepare(y_true, y_pred, self.class_weights)
        onehot = ops.one_hot(labels, self.num_classes, dtype="float32")
        axes = tuple(range(1, len(probs.shape) - 1))
        intersection = ops.sum(probs * onehot, axis=axes)
        total = ops.sum(probs, axis=axes) + ops.sum(onehot, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)  # (B, C)
        weights = ops.convert_to_tensor(self.class_weights or (1.0,) * self.num_classes, dtype="float32")
        return 1.0 - ops.sum(dice * weights, axis=-1) / ops.sum(weights)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="segpipe")
class CombinedLoss(_SegLoss):
    """Per-image mean cross-entropy + dice_weight * soft Dice."""

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        smooth: float = 1.0,
        **kwargs: Any,
    ):
        kwargs.setdefault("name", "sce_dice")
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight!r}")
        super().__init__(class_weights, num_classes=num_classes, **kwargs)
        self.num_classes = num_classes
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self._sce = SparseCategoricalCrossentropy(class_weights)
        self._dice = SoftDiceLoss(num_classes, class_weights, smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return per_image_mean(self._sce.call(y_true, y_pred)) + self.dice_weight * self._dice.call(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "dice_weight": self.dice_weight,
            "smooth": self.smooth,
        }


def lovasz_softmax(labels: Any, probs: Any, class_weights: tuple[float, ...] | None = None) -> Any:
    """Per image (B,): the Lovász-softmax loss over the classes present in the image's label.

    For class c, with errors e_i = |[y_i = c] - p_c(i)| sorted in decreasing order, the loss is
    sum_i e_(i) * g_i, where g_i is the increase of the Jaccard loss 1 - |A n B| / |A u B| when the i-th
    largest error's pixel is counted wrong after those before it (`g` is the Lovász extension's gradient,
    fixed, so only the errors carry gradient). It equals 1 - IoU_c when every probability is 0 or 1. The
    image's loss is the (class-weighted) mean over present classes.
    """
    num_classes = probs.shape[-1]
    batch = ops.shape(probs)[0]
    onehot = ops.one_hot(labels, num_classes, dtype="float32")
    # (B, C, P): one row per image and class, its pixels along the last axis.
    fg = ops.transpose(ops.reshape(onehot, (batch, -1, num_classes)), (0, 2, 1))
    prob = ops.transpose(ops.reshape(probs, (batch, -1, num_classes)), (0, 2, 1))
    errors = ops.abs(fg - prob)
    sorted_errors, order = ops.top_k(errors, ops.shape(errors)[-1], sorted=True)
    fg_sorted = ops.take_along_axis(fg, order, axis=-1)
    positives = ops.sum(fg_sorted, axis=-1, keepdims=True)
    intersection = positives - ops.cumsum(fg_sorted, axis=-1)
    union = positives + ops.cumsum(1.0 - fg_sorted, axis=-1)  # >= 1 from the first pixel on
    jaccard = 1.0 - intersection / union
    steps = ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
    per_class = ops.sum(sorted_errors * ops.stop_gradient(steps), axis=-1)  # (B, C)
    present = ops.cast(positives[..., 0] > 0, "float32")
    weights = present * ops.convert_to_tensor(class_weights or (1.0,) * num_classes, dtype="float32")
    return ops.sum(per_class * weights, axis=-1) / ops.maximum(ops.sum(weights, axis=-1), EPSILON)


@keras.saving.register_keras_serializable(package="segpipe")
class LovaszLoss(_SegLoss):
    """Per-image mean cross-entropy + the Lovász-softmax loss (`lovasz_softmax`), equal weights."""

    def __init__(self, class_weights: Sequence[float] | None = None, **kwargs: Any):
        kwargs.setdefault("name", "sce_lovasz")
        super().__init__(class_weights, **kwargs)
        self._sce = SparseCategoricalCrossentropy(class_weights)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels, probs = prepare(y_true, y_pred, self.class_weights)
        return per_image_mean(self._sce.per_pixel(labels, probs)) + lovasz_softmax(labels, probs, self.class_weights)


def sparse_categorical_crossentropy(class_weights: Sequence[float] | None = None) -> keras.losses.Loss:
    """Per-pixel (optionally class-weighted) cross-entropy on softmax probabilities."""
    return SparseCategoricalCrossentropy(class_weights)


def soft_dice_loss(
    num_classes: int, class_weights: Sequence[float] | None = None, smooth: float = 1.0
) -> keras.losses.Loss:
    """Multi-class soft Dice loss on one-hot labels, averaged over classes."""
    return SoftDiceLoss(num_classes, class_weights, smooth)


def combined_loss(
    dice_weight: float = 1.0, class_weights: Sequence[float] | None = None, num_classes: int = NUM_CLASSES
) -> keras.losses.Loss:
    """Cross-entropy + dice_weight * soft Dice."""
    return CombinedLoss(num_classes, dice_weight, class_weights)


def focal_loss(gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> keras.losses.Loss:
    """Focal loss; gamma=0 equals the cross-entropy."""
    return FocalLoss(gamma, class_weights)


_BUILDERS: dict[str, Any] = {  # name -> (weights, num_classes, dice_weight, focal_gamma) -> loss
    "sce": lambda w, n, dice, gamma: sparse_categorical_crossentropy(w),
    "dice": lambda w, n, dice, gamma: soft_dice_loss(n, w),
    "sce+dice": lambda w, n, dice, gamma: combined_loss(dice, w, num_classes=n),
    "focal": lambda w, n, dice, gamma: focal_loss(gamma, w),
    "sce+lovasz": lambda w, n, dice, gamma: LovaszLoss(w),
}
if tuple(_BUILDERS) != LOSS_NAMES:
    raise RuntimeError(f"segpipe.training.losses builds {tuple(_BUILDERS)} but segpipe.config names {LOSS_NAMES}")


def build_loss(
    name: str,
    *,
    num_classes: int = NUM_CLASSES,
    dice_weight: float = 1.0,
    focal_gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
) -> keras.losses.Loss:
    """The loss named as in `TrainConfig.loss`: one of `segpipe.config.LOSS_NAMES`."""
    weights = _check_weights(class_weights, num_classes)
    if name not in _BUILDERS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {name!r}")
    return _BUILDERS[name](weights, num_classes, dice_weight, focal_gamma)
