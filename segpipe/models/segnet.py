"""SegNet (Badrinarayanan et al., 2017): a VGG-style encoder whose max-pooling indices
drive the decoder's unpooling, so boundaries come back sharp without skip features.

Encoder stage i (0..depth-1): (Conv3x3-BN-ReLU) x (2 if i < 2 else 3) with
base_filters * 2**min(i, 3) filters, then 2x2 max pooling that keeps its argmax.
Optional dropout at the bottleneck. Decoder stage i mirrors it: unpool with stage
i's argmax, then the same convs, the last one narrowing to stage i-1's width.
Head: 1x1 conv + float32 softmax. With base_filters=64, depth=5 it is the paper's
SegNet (VGG16 layout). Inputs: float32 images in [0, 1].
"""

from __future__ import annotations

import keras
from keras import layers

from segpipe.models.layers import (
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    check_common,
    check_encoder_decoder,
    conv_bn_relu,
    softmax_head,
)


def _stage_filters(base_filters: int, i: int) -> int:
    return base_filters * 2 ** min(i, 3)


def _stage_convs(i: int) -> int:
    return 2 if i < 2 else 3


def build_segnet(
    input_shape: tuple[int, int, int] = (128, 128, 3),
    num_classes: int = 3,
    *,
    base_filters: int = 16,
    depth: int = 4,
    bn_momentum: float = 0.99,
    dropout: float = 0.0,
) -> keras.Model:
    """SegNet with `depth` pooling stages; height and width must be multiples of 2**depth."""
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    check_encoder_decoder("segnet", input_shape, base_filters=base_filters, depth=depth, dropout=dropout)

    inputs = keras.Input(shape=input_shape, name="image")
    x, indices = inputs, []
    for i in range(depth):
        for j in range(_stage_convs(i)):
            x = conv_bn_relu(x, _stage_filters(base_filters, i), bn_momentum=bn_momentum, name=f"enc{i}_{j}")
        x, argmax = MaxPoolingWithArgmax2D(name=f"enc{i}_pool")(x)
        indices.append(argmax)
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for i in reversed(range(depth)):
        x = MaxUnpooling2D(name=f"dec{i}_unpool")([x, indices[i]])
        n = _stage_convs(i)
        for j in range(n):
            last = j == n - 1 and i > 0
            filters = _stage_filters(base_filters, i - 1 if last else i)
            x = conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"dec{i}_{j}")

    outputs = softmax_head(x, num_classes, kernel_size=1)
    return keras.Model(inputs, outputs, name=f"segnet_d{depth}_f{base_filters}")
