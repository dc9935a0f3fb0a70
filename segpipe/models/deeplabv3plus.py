"""DeepLabV3+ (Chen et al., 2018) on a keras.applications backbone.

    image [0, 1] -> BackbonePreprocess -> backbone -> low-level (/4), high-level (/16) features
    high -> ASPP [1x1 | atrous separable 3x3 at each rate | image pooling] -> concat -> 1x1 -> dropout
         -> bilinear x4 -> concat with 1x1 (48) projection of low -> 2 x separable 3x3 -> bilinear x4
         -> 1x1 + float32 softmax

Backbones: "mobilenetv2" (low 'block_3_expand_relu', high 'block_13_expand_relu', inputs
mapped to [-1, 1]) and "resnet50" (low 'conv2_block3_2_relu', high 'conv4_block6_2_relu',
Caffe-style BGR mean subtraction). The backbone sits in the model as one nested
sub-model named "<backbone>_backbone".

`encoder_weights`: None (random init), "imagenet" (keras.applications downloads the
weights; needs internet or a primed ~/.keras cache) or the path of a weights file of the
full keras.applications backbone built with include_top=False, e.g. what
`build_backbone("mobilenetv2", shape, weights="imagenet").save_weights("mnv2.weights.h5")`
writes, or keras' own "..._no_top.h5" download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

from segpipe.models.layers import (
    BackbonePreprocess,
    check_common,
    conv_bn_relu,
    sep_conv_bn_relu,
    softmax_head,
)
from segpipe.models.registry import check_input_size

# backbone -> (low-level /4 layer, high-level /16 layer, BackbonePreprocess mode)
BACKBONES: dict[str, tuple[str, str, str]] = {
    "mobilenetv2": ("block_3_expand_relu", "block_13_expand_relu", "tf"),
    "resnet50": ("conv2_block3_2_relu", "conv4_block6_2_relu", "caffe"),
}
LOW_LEVEL_FILTERS = 48


def build_backbone(
    backbone: str, input_shape: tuple[int, int, int], weights: str | None = None, alpha: float = 1.0
) -> keras.Model:
    """The whole keras.applications backbone (include_top=False); `weights` as keras.applications."""
    if backbone == "mobilenetv2":
        return keras.applications.MobileNetV2(
            input_shape=input_shape, alpha=alpha, include_top=False, weights=weights
        )
    if backbone == "resnet50":
        return keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)
    raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")


def _load_backbone(
    backbone: str, input_shape: tuple[int, int, int], encoder_weights: str | None, alpha: float
) -> keras.Model:
    """The backbone with its weights, cut to a model returning (low-level, high-level) features."""
    if encoder_weights is None or encoder_weights == "imagenet":
        model = build_backbone(backbone, input_shape, weights=encoder_weights, alpha=alpha)
    else:
        path = Path(encoder_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"encoder_weights: no such file {str(path)!r}; expected None, 'imagenet' or the path of a "
                f".h5/.weights.h5 file holding {backbone} backbone weights (include_top=False)"
            )
        model = build_backbone(backbone, input_shape, weights=None, alpha=alpha)
        try:
            model.load_weights(str(path))
        except Exception as exc:  # keras raises ValueError/KeyError/OSError for foreign files
            raise ValueError(
                f"encoder_weights: could not load {str(path)!r} into the {backbone} backbone"
                f"{f' (alpha={alpha})' if backbone == 'mobilenetv2' else ''}: {exc}"
            ) from exc
    low_name, high_name, _ = BACKBONES[backbone]
    outputs = [model.get_layer(low_name).output, model.get_layer(high_name).output]
    return keras.Model(model.input, outputs, name=f"{backbone}_backbone")


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
    backbone: str = "mobilenetv2",
    encoder_weights: str | None = None,
    aspp_rates: tuple[int, ...] = (6, 12, 18),
    bn_momentum: float = 0.99,
    dropout: float = 0.0,
    backbone_alpha: float = 1.0,
    aspp_filters: int = 256,
    **_ignored: Any,
) -> keras.Model:
    """DeepLabV3+; height and width must be multiples of 16 and at least 32."""
    input_shape = check_common(input_shape, num_classes, bn_momentum)
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if input_shape[2] != 3:
        raise ValueError(f"input_shape must have 3 (RGB) channels for a {backbone} backbone, got {input_shape!r}")
    rates = tuple(aspp_rates)
    if not rates or any(not isinstance(r, int) or r < 1 for r in rates) or len(set(rates)) != len(rates):
        raise ValueError(f"aspp_rates must be distinct positive ints, got {aspp_rates!r}")
    if not isinstance(aspp_filters, int) or aspp_filters < 1:
        raise ValueError(f"aspp_filters must be an int >= 1, got {aspp_filters!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_size("deeplabv3plus", input_shape[:2])

    features = _load_backbone(backbone, input_shape, encoder_weights, backbone_alpha)
    inputs = keras.Input(shape=input_shape, name="image")
    x = BackbonePreprocess(BACKBONES[backbone][2], name="preprocess")(inputs)
    low, high = features(x)

    x = aspp(high, rates, aspp_filters, bn_momentum, dropout)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_upsample4")(x)
    low = conv_bn_relu(low, LOW_LEVEL_FILTERS, 1, bn_momentum=bn_momentum, name="decoder_low")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv1")
    x = sep_conv_bn_relu(x, aspp_filters, 3, bn_momentum=bn_momentum, name="decoder_conv2")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="output_upsample4")(x)

    outputs = softmax_head(x, num_classes, kernel_size=1)
    return keras.Model(inputs, outputs, name=f"deeplabv3plus_{backbone}")
