"""The Xception-style U-Net of the keras.io example "Image segmentation with a
U-Net-like architecture" (fchollet, 2019), layer for layer.

Two deliberate, behaviour-neutral differences: the final Conv2D and its
softmax are split so the softmax runs in float32 under mixed precision, and
BatchNormalization momentum is a parameter (Keras default 0.99, as in the
example). Inputs: float32 images in [0, 1] (the stem's BatchNormalization
absorbs the scale, so any fixed range trains alike).
"""

from __future__ import annotations

import keras
from keras import layers

from segpipe.models.layers import check_common, softmax_head
from segpipe.models.registry import check_input_size


def build_xception_unet(
    input_shape: tuple[int, int, int] = (160, 160, 3),
    num_classes: int = 3,
    *,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """Xception-style U-Net; height and width must be multiples of 16."""
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    check_input_size("xception_unet", input_shape[:2])

    def bn() -> layers.Layer:
        return layers.BatchNormalization(momentum=bn_momentum)

    inputs = keras.Input(shape=input_shape, name="image")

    # Entry block
    x = layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    x = bn()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x  # set aside residual

    # Downsampling blocks, identical apart from the feature depth.
    for filters in (64, 128, 256):
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same")(x)
            x = bn()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(filters, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x

    # Upsampling blocks.
    for filters in (256, 128, 64, 32):
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.Conv2DTranspose(filters, 3, padding="same")(x)
            x = bn()(x)
        x = layers.UpSampling2D(2)(x)
        residual = layers.UpSampling2D(2)(previous_block_activation)
        residual = layers.Conv2D(filters, 1, padding="same")(residual)
        x = layers.add([x, residual])
        previous_block_activation = x

    outputs = softmax_head(x, num_classes, kernel_size=3)
    return keras.Model(inputs, outputs, name="xception_unet")
