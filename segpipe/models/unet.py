"""Classic U-Net (Ronneberger et al., 2015) with BatchNormalization and "same" padding.

Encoder level i (0..depth-1): (Conv3x3-BN-ReLU) x 2 with base_filters * 2**i
filters, kept as a skip, then MaxPool 2x2. Bridge: the same block with
base_filters * 2**depth filters and optional dropout. Decoder level i:
Conv2DTranspose(2, stride 2) -> concat skip i -> (Conv3x3-BN-ReLU) x 2.
Head: 1x1 conv + float32 softmax. Inputs: float32 images in [0, 1].

With `encoder` (a name from `encoders.ENCODERS`), the contracting path is that
pretrained encoder instead, and the decoder follows segmentation_models' U-Net:
from the /32 features, five times (bilinear x2 -> concat the encoder's features
at that stride, where there are any -> (Conv3x3-BN-ReLU) x 2), with
base_filters * 16, * 8, * 4, * 2, * 1 filters (16: 256, 128, 64, 32, 16).
Height and width must then be multiples of 32.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from segpipe.models.encoders import ENCODERS, build_encoder, check_encoder_input
from segpipe.models.layers import (
    BackbonePreprocess,
    check_common,
    check_encoder_decoder,
    conv_bn_relu,
    softmax_head,
)
from segpipe.models.registry import check_input_size


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
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_alpha: float = 1.0,
) -> keras.Model:
    """U-Net with `depth` poolings; height and width must be multiples of 2**depth.

    With `encoder`, a U-Net decoder on that pretrained encoder (`depth` does not apply).
    """
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    if encoder is not None:
        return _unet_on_encoder(
            input_shape, num_classes, encoder=encoder, encoder_weights=encoder_weights,
            encoder_alpha=encoder_alpha, base_filters=base_filters, bn_momentum=bn_momentum, dropout=dropout,
        )
    if encoder_weights is not None:
        raise ValueError("encoder_weights needs an encoder: the classic U-Net has no pretrained part")
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


def _unet_on_encoder(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    encoder: str,
    encoder_weights: str | None,
    encoder_alpha: float,
    base_filters: int,
    bn_momentum: float,
    dropout: float,
) -> keras.Model:
    check_encoder_input(encoder, input_shape)
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1, got {base_filters!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_size("unet", input_shape[:2], {"encoder": encoder})

    features = build_encoder(encoder, input_shape, encoder_weights, alpha=encoder_alpha)
    inputs = keras.Input(shape=input_shape, name="image")
    x = BackbonePreprocess(ENCODERS[encoder].preprocess, name="preprocess")(inputs)
    *skips, x = features(x)  # strides 2, 4, 8, 16 | 32
    if dropout > 0:
        x = layers.Dropout(dropout, name="bridge_dropout")(x)
    for i, skip in enumerate([*reversed(skips), None]):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i}_up")(x)
        if skip is not None:
            x = layers.Concatenate(name=f"dec{i}_concat")([x, skip])
        x = _double_conv(x, base_filters * 2 ** (4 - i), bn_momentum, name=f"dec{i}")
    outputs = softmax_head(x, num_classes, kernel_size=1)
    return keras.Model(inputs, outputs, name=f"unet_{encoder}")
