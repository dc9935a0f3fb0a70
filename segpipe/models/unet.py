"""Classic U-Net (Ronneberger et al., 2015) with BatchNormalization and "same" padding.

Encoder level i (0..depth-1): (Conv3x3-BN-ReLU) x 2 with base_filters * 2**i
filters, kept as a skip, then MaxPool 2x2. Bridge: the same block with
base_filters * 2**depth filters and optional dropout. Decoder level i:
Conv2DTranspose(2, stride 2) -> concat skip i -> (Conv3x3-BN-ReLU) x 2.
Head: 1x1 conv + float32 softmax. Inputs: float32 images in [0, 1].
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from segpipe.models.layers import check_common, check_encoder_decoder, conv_bn_relu, softmax_head


def _double_conv(x: Any, filters: int, bn_momentum: float, name: str) -> Any:
    x = conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_a")
    return conv_bn_relu(x, filters, bn_momentum=bn_momentum, name=f"{name}_b")


def build_unet(
    input_shape: tuple[int, int, int] = (128, 128, 3),
    num_classes: int = 3,
    *,
    base_filters: int = 16,
    depth: int = 4,
    bn_momentum: float = 0.99,
    dropout: float = 0.0,
    **_ignored: Any,
) -> keras.Model:
    """U-Net with `depth` poolings; height and width must be multiples of 2**depth."""
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    check_encoder_decoder("unet", input_shape, base_filters=base_filters, depth=depth, dropout=dropout)

    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for i in range(depth):
        x = _double_conv(x, base_filters * 2**i, bn_momentum, name=f"enc{i}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)

    x = _double_conv(x, base_filters * 2**depth, bn_momentum, name="bridge")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)

    for i in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**i, 2, strides=2, name=f"dec{i}_up")(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = _double_conv(x, base_filters * 2**i, bn_momentum, name=f"dec{i}")

    outputs = softmax_head(x, num_classes, kernel_size=1)
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{base_filters}")
