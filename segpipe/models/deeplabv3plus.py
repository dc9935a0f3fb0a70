"""DeepLabV3+ (Chen et al., 2018): ASPP + decoder on a pretrained encoder from `encoders.py`.

    image [0, 1] -> BackbonePreprocess -> encoder -> low-level (/4), high-level (/16) features
    high -> ASPP [1x1 | atrous separable 3x3 at each rate | image pooling] -> concat -> 1x1 -> dropout
         -> bilinear x4 -> concat with 1x1 (48) projection of low -> 2 x separable 3x3 -> 1x1 (logits)
         -> bilinear x4 -> float32 softmax
    with decoder_stride=2: the /4 decoder features -> bilinear x2 -> concat with a 1x1 (24) projection of the
         encoder's /2 features -> separable 3x3 (64) -> 1x1 (logits) -> bilinear x2 -> float32 softmax

`encoder_tail` is where the high-level features come from. "cut" (the default) stops the encoder at its last
stride-16 layer (MobileNetV2's `block_13_expand_relu`, 576 channels), leaving its last stage unused. "dilated"
runs the whole encoder at output stride 16, as the paper does: the last stage's stride-2 convolution at stride
1 and the depthwise convolutions after it at dilation 2 (`encoders.DilatedTail`); ASPP then reads the last
stage's output (MobileNetV2's `block_16_project_BN`, 320 channels).

`decoder_stride` (4 or 2) is the resolution of the logits before their last resize. The paper's decoder
predicts at a quarter of the input size: at 160 px, a 40x40 map for a border class a few pixels wide at the
original resolution. At 2 the decoder adds one more skip, from the encoder's /2 features (MobileNetV2's
`block_1_expand_relu`), as a U-Net decoder would, and predicts on an 80x80 map.

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
    SpatialBroadcast,
    check_common,
    conv_bn_relu,
    sep_conv_bn_relu,
    softmax_head,
)
from segpipe.models.registry import check_aspp_rates, check_input_size

LOW_LEVEL_FILTERS = 48
STRIDE2_FILTERS = (24, 64)  # the /2 skip's 1x1 projection, the separable conv after the concat
DECODER_STRIDES = (4, 2)
ENCODER_TAILS = ("cut", "dilated")  # see segpipe.config.ModelConfig.encoder_tail


def aspp(x: Any, rates: tuple[int, ...], filters: int, bn_momentum: float, dropout: float) -> Any:
    """Atrous Spatial Pyramid Pooling with an image-pooling branch, projected to `filters`."""
    height, width = x.shape[1], x.shape[2]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = conv_bn_relu(pooled, filters, 1, bn_momentum=bn_momentum, name="aspp_pool_proj")
    if height is None or width is None:  # a model built for any input size: the same function
        pooled = SpatialBroadcast(name="aspp_pool_upsample")([pooled, x])
    else:
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
    decoder_stride: int = 4,
    encoder_tail: str = "cut",
) -> keras.Model:
    """DeepLabV3+; height and width must be multiples of 16 and at least 32, or both None: a model that
    takes any such size (what progressive resizing trains; `train.progressive_img_size`)."""
    input_shape = check_common(input_shape, num_classes, bn_momentum, free_size=True)
    check_encoder_input(encoder, input_shape)
    try:
        rates = check_aspp_rates(aspp_rates)
    except ValueError as err:
        raise ValueError(f"aspp_rates {aspp_rates!r}: {err}") from None
    if not isinstance(aspp_filters, int) or aspp_filters < 1:
        raise ValueError(f"aspp_filters must be an int >= 1, got {aspp_filters!r}")
    if not isinstance(upsample_logits, bool):
        raise ValueError(f"upsample_logits must be true or false, got {upsample_logits!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if decoder_stride not in DECODER_STRIDES or isinstance(decoder_stride, bool):
        raise ValueError(f"decoder_stride must be one of {', '.join(map(str, DECODER_STRIDES))}, got {decoder_stride!r}")
    if encoder_tail not in ENCODER_TAILS:
        raise ValueError(f"encoder_tail must be one of {', '.join(ENCODER_TAILS)}, got {encoder_tail!r}")
    if input_shape[0] is not None:
        check_input_size("deeplabv3plus", input_shape[:2])

    strides = (2, 4, 16) if decoder_stride == 2 else (4, 16)
    features = build_encoder(encoder, input_shape, encoder_weights, alpha=encoder_alpha, strides=strides,
                             dilated_tail=encoder_tail == "dilated")
    inputs = keras.Input(shape=input_shape, name="image")
    x = BackbonePreprocess(ENCODERS[encoder].preprocess, name="preprocess")(inputs)
    *finest, low, high = features(x)

    x = aspp(high, rates, aspp_filters, bn_momentum, dropout)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_upsample4")(x)
    low = conv_bn_relu(low, LOW_LEVEL_FILTERS, 1, bn_momentum=bn_momentum, name="decoder_low")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv1")
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv2")
    if decoder_stride == 2:
        x = layers.UpSampling2D(2, interpolation="bilinear", name="decoder_upsample2")(x)
        fine = conv_bn_relu(finest[0], STRIDE2_FILTERS[0], 1, bn_momentum=bn_momentum, name="decoder_fine")
        x = layers.Concatenate(name="decoder_fine_concat")([x, fine])
        x = sep_conv_bn_relu(x, STRIDE2_FILTERS[1], 3, bn_momentum=bn_momentum, name="decoder_fine_conv")
    if upsample_logits:
        outputs = softmax_head(x, num_classes, upsample=decoder_stride, upsample_name=f"output_upsample{decoder_stride}")
    else:
        x = layers.UpSampling2D(decoder_stride, interpolation="bilinear", name=f"output_upsample{decoder_stride}")(x)
        outputs = softmax_head(x, num_classes)
    return keras.Model(inputs, outputs, name=f"deeplabv3plus_{encoder}")
