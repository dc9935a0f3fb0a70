"""A boundary-aware loss term: the geometry of each class's outline, as the loss sees it (issue 20).

`train.boundary_loss_weight` adds to any named loss (`segpipe.training.losses`), per image,

    weight * mean over pixels x of  sum_c p_c(x) * (phi_c(x) - phi_y(x))

where y is the pixel's true class and phi_c the signed distance to class c's region in the label map
(negative inside, positive outside; chessboard pixels, truncated at `train.boundary_loss_radius` and divided
by it, so it lies in [-1, 1]). It is the expected distance by which the predicted class misses the true
class's region: zero for a perfect prediction, and growing with the distance. With radius 8, one background
pixel predicted as border beside the band costs 1/8; six pixels from it, 6/8 plus its own 5/8 depth in the
background (`tests/training/test_boundary_loss.py` works both by hand). The cross-entropy counts every wrong
pixel alike. This is the boundary loss of Kervadec et al. (2019, "Boundary loss for highly unbalanced
segmentation") in this form.

The distances come from the labels alone, with `radius` 3x3 max-pools (dilations) and as many erosions, so
no distance transform and no gradient flows through them. They are built inside every training step: the
term adds training CPU (measured in BENCHMARKS.md, "A boundary-aware loss") and is off by default.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from segpipe.data import NUM_CLASSES
from segpipe.training.losses import per_image_mean, prepare

MAX_RADIUS = 64


def check_radius(radius: Any, term: str = "boundary loss") -> None:
    """`radius` must be an int in [1, MAX_RADIUS] pixels; the error names `term`."""
    if isinstance(radius, bool) or not isinstance(radius, int) or not 1 <= radius <= MAX_RADIUS:
        raise ValueError(f"{term} radius must be an int in [1, {MAX_RADIUS}] pixels, got {radius!r}")


def signed_contour_distance(labels: Any, num_classes: int, radius: int) -> Any:
    """(B, H, W) int labels -> (B, H, W, C) float32 signed distances to each class's region, in [-1, 1].

    Outside class c: the chessboard distance to its nearest pixel (1 next to it); inside: minus the depth
    below its outline (0 on the outline's own pixels); both truncated at `radius`, then divided by it. A class
    absent from an image is `radius` away everywhere (+1).
    """
    check_radius(radius)
    region = ops.one_hot(ops.cast(labels, "int32"), num_classes, dtype="float32")

    def dilate(x: Any) -> Any:
        return ops.max_pool(x, pool_size=3, strides=1, padding="same")

    grown, shrunk = region, region
    outside = ops.zeros_like(region)
    inside = ops.zeros_like(region)
    for _ in range(radius):
        outside = outside + (1.0 - grown)
        grown = dilate(grown)
        shrunk = 1.0 - dilate(1.0 - shrunk)  # erosion; beyond the image's edge counts as inside
        inside = inside + shrunk
    return ops.stop_gradient((outside - inside) / float(radius))


def boundary_term(y_true: Any, y_pred: Any, radius: int) -> Any:
    """Per image (B,): the mean over pixels of sum_c p_c * (phi_c - phi_true), >= 0, 0 when perfect."""
    labels, probs = prepare(y_true, y_pred, None)
    phi = signed_contour_distance(labels, probs.shape[-1] or NUM_CLASSES, radius)
    phi_true = ops.take_along_axis(phi, ops.expand_dims(labels, -1), axis=-1)
    return per_image_mean(ops.sum(probs * (phi - phi_true), axis=-1))


class RadiusTermLoss(keras.losses.Loss):
    """`base` (any segpipe loss) per image + `weight` x a term measured up to `radius` pixels (`term(y_true,
    y_pred)`, per image). `classes(y_pred)` is what `base` scores: the whole prediction unless a subclass says
    otherwise. Subclasses name their term (`TERM`) for the errors."""

    TERM = "the term"
    SUFFIX = "term"  # the loss's name: the base loss's, then this

    def __init__(self, base: keras.losses.Loss | dict[str, Any], weight: float = 1.0, radius: int = 8,
                 **kwargs: Any):
        if isinstance(base, dict):
            base = keras.saving.deserialize_keras_object(base)
        if not isinstance(base, keras.losses.Loss):
            raise ValueError(f"{self.TERM} needs a keras loss to add to, got {base!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{self.TERM} weight must be > 0 (0 is no {self.TERM}), got {weight!r}")
        check_radius(radius, self.TERM)
        kwargs.setdefault("name", f"{base.name}_{self.SUFFIX}")
        super().__init__(**kwargs)
        self.base, self.weight, self.radius = base, float(weight), radius

    def classes(self, y_pred: Any) -> Any:
        return y_pred

    def term(self, y_true: Any, y_pred: Any) -> Any:
        raise NotImplementedError

    def call(self, y_true: Any, y_pred: Any) -> Any:
        base = per_image_mean(self.base.call(y_true, self.classes(y_pred)))
        return base + self.weight * self.term(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "base": keras.saving.serialize_keras_object(self.base),
                "weight": self.weight, "radius": self.radius}


@keras.saving.register_keras_serializable(package="segpipe")
class BoundaryAwareLoss(RadiusTermLoss):
    """`base` (any segpipe loss) per image + `weight` * `boundary_term` with `radius` pixels."""

    TERM, SUFFIX = "boundary loss", "boundary"

    def term(self, y_true: Any, y_pred: Any) -> Any:
        return boundary_term(y_true, y_pred, self.radius)


def with_boundary_term(loss: keras.losses.Loss, weight: float, radius: int) -> keras.losses.Loss:
    """`loss` itself when `weight` is 0, else `loss` + `weight` x the boundary term."""
    return loss if weight == 0 else BoundaryAwareLoss(loss, weight, radius)
