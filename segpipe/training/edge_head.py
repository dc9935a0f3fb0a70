"""An edge head: a training-only branch that regresses how close each pixel is to the pet's outline (issue 20).

`train.edge_head_weight` > 0 trains, beside the model's softmax, a 1x1 convolution on the features the
softmax head reads (`head_logits`' input), resized as the logits are and passed through a sigmoid. Its target
is the closeness to the trimap's border band, from the labels alone:

    closeness(x) = 1 - min(d(x), radius) / radius

where d is the chessboard distance (pixels at `img_size`) from x to the nearest border pixel: 1 on the band,
falling to 0 at `radius` pixels from it (the band grown by 3x3 max-pools, as `boundary_loss` grows regions). The term is `weight` x the per-image mean binary cross-entropy between the two. The head shares the
decoder's features, so its gradient asks them to encode where the outline is, beyond the border class's
own cross-entropy, which counts a pixel one off the band like one far from it.

The head exists only while training: `with_edge_head(model)` returns a model built on `model`'s own layers
(the same variables) whose output is the softmax's 3 channels and the head's 1 channel concatenated;
`EdgeHeadLoss` and the `*_of_classes` metrics read the first 3 channels as the model's prediction. What a run
saves is `model` itself (`segpipe.training.model.build_and_compile`'s `for_saving`), so evaluate, predict and
export never see the head.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from segpipe.data import NUM_CLASSES
from segpipe.training.boundary_loss import RadiusTermLoss
from segpipe.training.losses import per_image_mean, prepare

BORDER = 2  # the trimap's border class (segpipe.data: pet 0, background 1, border 2)
HEAD_LAYER = "head_logits"  # segpipe.models.layers.softmax_head's convolution: every model has one
EDGE_PREFIX = "edge_head"


def border_closeness(labels: Any, radius: int) -> Any:
    """(B, H, W) int labels -> (B, H, W, 1) float32 in [0, 1]: 1 on the border band, 1 - d / radius at chessboard
    distance d from it, 0 from `radius` on. The band grown by one pixel `radius - 1` times: a pixel d away is in
    `radius - d` of the `radius` maps (no gradient flows through it)."""
    grown = ops.cast(ops.expand_dims(ops.equal(labels, BORDER), -1), "float32")
    count = grown
    for _ in range(radius - 1):
        grown = ops.max_pool(grown, pool_size=3, strides=1, padding="same")
        count = count + grown
    return ops.stop_gradient(count / float(radius))


def with_edge_head(model: keras.Model) -> keras.Model:
    """A model on `model`'s layers that outputs (B, H, W, NUM_CLASSES + 1): its softmax, then the edge head's
    sigmoid. Training it trains `model`'s variables; the head's own two layers are the only new ones."""
    try:
        logits = model.get_layer(HEAD_LAYER)
    except ValueError:
        raise ValueError(f"train.edge_head_weight: model {model.name!r} has no {HEAD_LAYER!r} layer to put an "
                         "edge head beside") from None
    edge = layers.Conv2D(1, 1, padding="same", name=f"{EDGE_PREFIX}_logits")(logits.input)
    for layer in model.layers:  # the logits' resize, when the head has one (DeepLabV3+): the same for the edge
        if isinstance(layer, layers.UpSampling2D) and layer.input is logits.output:
            edge = layers.UpSampling2D(layer.size, interpolation=layer.interpolation,
                                       name=f"{EDGE_PREFIX}_upsample")(edge)
    edge = layers.Activation("sigmoid", dtype="float32", name=f"{EDGE_PREFIX}_sigmoid")(edge)
    outputs = layers.Concatenate(name=f"{EDGE_PREFIX}_concat", dtype="float32")([model.output, edge])
    return keras.Model(model.input, outputs, name=f"{model.name}_with_edge_head")


def classes_of(y_pred: Any) -> Any:
    """The model's prediction (its first NUM_CLASSES channels) from a with-edge-head output."""
    return y_pred[..., :NUM_CLASSES]


@keras.saving.register_keras_serializable(package="segpipe")
class EdgeHeadLoss(RadiusTermLoss):
    """`base` (any segpipe loss) on the first NUM_CLASSES channels, per image, + `weight` x the edge head's
    binary cross-entropy against `border_closeness(labels, radius)` on the last one."""

    TERM, SUFFIX = "edge head", "edge_head"

    def classes(self, y_pred: Any) -> Any:
        return classes_of(y_pred)

    def term(self, y_true: Any, y_pred: Any) -> Any:
        labels, _ = prepare(y_true, classes_of(y_pred), None)
        target = border_closeness(labels, self.radius)
        edge = ops.clip(y_pred[..., NUM_CLASSES:], keras.config.epsilon(), 1.0 - keras.config.epsilon())
        bce = -(target * ops.log(edge) + (1.0 - target) * ops.log(1.0 - edge))
        return per_image_mean(bce[..., 0])


class _OnClassChannels:
    """A metric mixin: `update_state` on a with-edge-head output's class channels."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(y_true, classes_of(y_pred), sample_weight)  # type: ignore[misc]


class MeanIoUOfClasses(_OnClassChannels, keras.metrics.MeanIoU):
    """`keras.metrics.MeanIoU` on a with-edge-head output's class channels."""


class AccuracyOfClasses(_OnClassChannels, keras.metrics.SparseCategoricalAccuracy):
    """`keras.metrics.SparseCategoricalAccuracy` on a with-edge-head output's class channels."""
