"""DeepLabV3+ (Chen et al., 2018): ASPP + decoder on a pretrained encoder from `encoders.py`.

    image [0, 1] -> BackbonePreprocess -> encoder -> low-level (/4), high-level (/16) features
    high -> ASPP [1x1 | atrous separable 3x3 at each rate | image pooling] -> concat -> 1x1 -> dropout
         -> bilinear x4 -> concat with 1x1 (48) projection of low -> 2 x separable 3x3 -> 1x1 (logits)
         -> bilinear x4 -> float32 softmax

`upsample_logits` (default True) resizes the logits, not the 256 decoder features before the 1x1 head
(the paper's order, and segpipe's before `upsample_logits`; False builds it). Both are the same function,
since a 1x1 convolution and a bilinear resize (weights summing to 1) commute, but the resize, its casts
and its gradient then run on 3 channels instead of 256: 1.42x the training images per CPU-second in
mixed_bfloat16 (benchmarks/roofline.py, BENCHMARKS.md "Roofline for training").

The encoder ("mobilenetv2", "resnet50", "efficientnetb0"; see `encoders.ENCODERS`) sits in the
model as one nested sub-model named "encoder", with its input preprocessing matched to it.
`encoder_weights`: None, "imagenet" or the path of a weights file, as `build_encoder` takes them.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from segpipe.models.encoders import ENCODERS, build_encoder, check_encoder_input
from segpipe.models.layers import (
    BackbonePreprocess,
    check_common,
    conv_bn_relu,
    sep_conv_bn_relu,
    softmax_head,
)
from segpipe.models.registry import check_input_size

LOW_LEVEL_FILTERS = 48


def aspp(x: Any, rates: tuple[int, ...], filters: int, bn_momentum: float, dropout: float) -> Any:
    """Atrous Spatial Pyramid Pooling with an image-pooling branch, projected to `filters`."""
    height, width = x.shape[1], x.shape[2]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, bn_momentum=bn_momentum, name="aspp_pool_proj")
    pooled = layers.UpSampling2D((height, width), name="aspp_pool_upsample")(pooled)

    branches = [conv_bn_relu(x, filters, 1, bn_momentum=bn_momentum, name="aspp_1x1")]
    for rate in rates:
        branches.append(
            sep_conv_bn_relu(x, filters, 3, dilation_rate=rate, bn_momentum=bn_momentum, name=f"aspp_rate{rate}")
        )
    x = layers.Concatenate(name="aspp_concat")(branches + [pooled])
    x = conv_bn_relu(x, filters, 1, bn_momentum=bn_momentum, name="aspp_project")
    if dropout > 0:
        x = layers.Dropout(dropout, name="aspp_dropout")(x)
    return x


def build_deeplabv3plus(
    input_shape: tuple[int, int, int] = (320, 320, 3),
    num_classes: int = 3,
    *,
    encoder: str = "mobilenetv2",
    encoder_weights: str | None = None,
    encoder_alpha: float = 1.0,
    aspp_rates: tuple[int, ...] = (6, 12, 18),
    bn_momentum: float = 0.99,
    dropout: float = 0.0,
    aspp_filters: int = 256,
    upsample_logits: bool = True,
) -> keras.Model:
    """DeepLabV3+; height and width must be multiples of 16 and at least 32."""
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    check_encoder_input(encoder, input_shape)
    rates = tuple(aspp_rates)
    if not rates or any(not isinstance(r, int) or r < 1 for r in rates) or len(set(rates)) != len(rates):
        raise ValueError(f"aspp_rates must be distinct positive ints, got {aspp_rates!r}")
    if not isinstance(aspp_filters, int) or aspp_filters < 1:
        raise ValueError(f"aspp_filters must be an int >= 1, got {aspp_filters!r}")
    if not isinstance(upsample_logits, bool):
        raise ValueError(f"upsample_logits must be true or false, got {upsample_logits!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_size("deeplabv3plus", input_shape[:2])

    features = build_encoder(encoder, input_shape, encoder_weights, alpha=encoder_alpha, strides=(4, 16))
    inputs = keras.Input(shape=input_shape, name="image")
    x = BackbonePreprocess(ENCODERS[encoder].preprocess, name="preprocess")(inputs)
    low, high = features(x)

    x = aspp(high, rates, aspp_filters, bn_momentum, dropout)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_upsample4")(x)
    low = conv_bn_relu(low, LOW_LEVEL_FILTERS, 1, bn_momentum=bn_momentum, name="decoder_low")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv1")
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv2")
    if upsample_logits:
        outputs = softmax_head(x, num_classes, upsample=4, upsample_name="output_upsample4")
    else:
        x = layers.UpSampling2D(4, interpolation="bilinear", name="output_upsample4")(x)
        outputs = softmax_head(x, num_classes)
    return keras.Model(inputs, outputs, name=f"deeplabv3plus_{encoder}")
