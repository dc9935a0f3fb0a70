"""Building blocks shared by the segpipe models.

Input convention for every segpipe model: float32 RGB images scaled to
[0, 1], shape (B, H, W, 3). Models that need another range (those on a
pretrained encoder) convert inside the model with `BackbonePreprocess`, so a saved
`.keras` file is self-contained. Every model ends in a float32 softmax, so
its output is float32 probabilities even under mixed precision.

The custom layers here (`BackbonePreprocess`, `MaxPoolingWithArgmax2D`, `BorderBand`,
`MaxUnpooling2D`, `SpatialBroadcast`) are registered under the "segpipe" package: import this
module before `keras.saving.load_model` on a DeepLabV3+ or SegNet file.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

# ImageNet channel means in BGR order on the 0-255 scale (Caffe / keras ResNet50 preprocessing).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def check_common(
    input_shape: tuple[int | None, ...], num_classes: int, bn_momentum: float = 0.99, *, free_size: bool = False
) -> tuple[int, int, int]:
    """Validate the arguments every builder shares; return input_shape as a tuple of 3 ints.

    With `free_size`, (None, None, channels) is valid too: a model that takes any height and width (returned
    as given)."""
    shape = tuple(input_shape)
    if free_size and len(shape) == 3 and shape[:2] == (None, None):
        dims: tuple[Any, ...] = shape[2:]
    else:
        dims = shape
    if len(shape) != 3 or any(not isinstance(d, int) or d <= 0 for d in dims):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not 0.0 < bn_momentum < 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1), got {bn_momentum!r}")
    return shape  # type: ignore[return-value]


def check_encoder_decoder(name: str, input_shape: tuple[int, int, int], *, base_filters: Any, depth: Any,
                          dropout: float) -> None:
    """Argument checks shared by the pooling encoder-decoders (unet, segnet)."""
    from segpipe.models.registry import check_input_size

    if not isinstance(base_filters, int) or base_filters < 1:
        raise ValueError(f"base_filters must be an int >= 1, got {base_filters!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    check_input_size(name, input_shape[:2], {"depth": depth})


def conv_bn_relu(
    x: Any,
    filters: int,
    kernel_size: int = 3,
    *,
    dilation_rate: int = 1,
    bn_momentum: float = 0.99,
    name: str | None = None,
) -> Any:
    """Conv2D (no bias) -> BatchNormalization -> ReLU."""
    n = (lambda s: f"{name}_{s}") if name else (lambda s: None)
    x = layers.Conv2D(
        filters, kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=n("conv")
    )(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=n("bn"))(x)
    return layers.Activation("relu", name=n("relu"))(x)


def sep_conv_bn_relu(
    x: Any,
    filters: int,
    kernel_size: int = 3,
    *,
    dilation_rate: int = 1,
    bn_momentum: float = 0.99,
    name: str | None = None,
) -> Any:
    """Atrous depthwise-separable conv as in DeepLabV3+: depthwise -> BN -> ReLU -> 1x1 -> BN -> ReLU."""
    n = (lambda s: f"{name}_{s}") if name else (lambda s: None)
    x = layers.DepthwiseConv2D(
        kernel_size, padding="same", dilation_rate=dilation_rate, use_bias=False, name=n("depthwise")
    )(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=n("depthwise_bn"))(x)
    x = layers.Activation("relu", name=n("depthwise_relu"))(x)
    return conv_bn_relu(x, filters, 1, bn_momentum=bn_momentum, name=n("pointwise"))


def softmax_head(
    x: Any, num_classes: int, kernel_size: int = 1, name: str = "head", upsample: int = 1,
    upsample_name: str | None = None,
) -> Any:
    """Per-pixel classifier: Conv2D to `num_classes` logits, then (with `upsample` > 1) a bilinear resize of
    the logits by that factor, then a float32 softmax."""
    x = layers.Conv2D(num_classes, kernel_size, padding="same", name=f"{name}_logits")(x)
    if upsample > 1:
        x = layers.UpSampling2D(upsample, interpolation="bilinear", name=upsample_name or f"{name}_upsample")(x)
    return layers.Activation("softmax", dtype="float32", name=f"{name}_softmax")(x)


@keras.saving.register_keras_serializable(package="segpipe")
class SpatialBroadcast(layers.Layer):
    """`[pooled (B, 1, 1, C), like (B, H, W, _)]` -> pooled repeated over like's H x W: (B, H, W, C).

    What `UpSampling2D((H, W))` does to a 1x1 map, for a model whose H and W are known only when it runs
    (DeepLabV3+'s image-pooling branch in a model built for progressive resizing)."""

    def call(self, inputs: list[Any]) -> Any:
        pooled, like = inputs
        return pooled * ops.ones_like(like[..., :1], dtype=pooled.dtype)

    def compute_output_shape(self, input_shape: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        pooled, like = input_shape
        return (like[0], like[1], like[2], pooled[3])


@keras.saving.register_keras_serializable(package="segpipe")
class BackbonePreprocess(layers.Layer):
    """Map [0, 1] RGB images to the range a keras.applications backbone was trained on.

    mode="tf":    x * 2 - 1                      (MobileNetV2: [-1, 1])
    mode="caffe": RGB -> BGR, x * 255 - ImageNet mean  (ResNet50)
    mode="scale255": x * 255                     (EfficientNet: it rescales and normalises inside itself)
    """

    MODES = ("tf", "caffe", "scale255")

    def __init__(self, mode: str = "tf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"BackbonePreprocess mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "scale255":
            return x * 255.0
        mean = ops.cast(ops.convert_to_tensor(CAFFE_BGR_MEAN), self.compute_dtype)
        return ops.flip(x, axis=-1) * 255.0 - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def _to_windows(x: Any, height: int, width: int) -> Any:
    """(B, H, W, C) -> (B, H/2, W/2, 4, C): the four pixels of each 2x2 window on axis 3."""
    channels = x.shape[-1]
    x = ops.reshape(x, (-1, height // 2, 2, width // 2, 2, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height // 2, width // 2, 4, channels))


def _from_windows(x: Any, height: int, width: int) -> Any:
    """Inverse of `_to_windows`."""
    channels = x.shape[-1]
    x = ops.reshape(x, (-1, height // 2, width // 2, 2, 2, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height, width, channels))


@keras.saving.register_keras_serializable(package="segpipe")
class MaxPoolingWithArgmax2D(layers.Layer):
    """2x2 stride-2 max pooling that also returns where each max came from (SegNet).

    Returns (pooled (B, H/2, W/2, C), argmax (B, H/2, W/2, C) int32 in 0..3, the position in
    the window in row-major order; the first position wins ties). Pure keras.ops, so it
    runs on any backend and under XLA. H and W must be even.
    """

    def call(self, inputs: Any) -> tuple[Any, Any]:
        height, width = inputs.shape[1], inputs.shape[2]
        windows = _to_windows(inputs, height, width)
        return ops.max(windows, axis=3), ops.cast(ops.argmax(windows, axis=3), "int32")


@keras.saving.register_keras_serializable(package="segpipe")
class MaxUnpooling2D(layers.Layer):
    """Place each value at the position its `MaxPoolingWithArgmax2D` max came from; zeros elsewhere.

    Call with [values (B, h, w, C), argmax (B, h, w, C)]; returns (B, 2h, 2w, C).
    """

    def call(self, inputs: Any) -> Any:
        values, argmax = inputs
        height, width = values.shape[1] * 2, values.shape[2] * 2
        onehot = ops.one_hot(argmax, 4, axis=3, dtype=values.dtype)  # (B, h, w, 4, C)
        return _from_windows(onehot * ops.expand_dims(values, 3), height, width)


@keras.saving.register_keras_serializable(package="segpipe")
class BorderBand(layers.Layer):
    """The identity on a model's probabilities, carrying the border band calibrated for it on validation:
    `inner` and `outer` widths in thousandths of an image's longer side (`segpipe.evaluation.band`). As the
    model's last layer it keeps the band inside the `.keras` file, so everything that loads the file draws
    the same masks."""

    def __init__(self, inner: int, outer: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner, self.outer = int(inner), int(outer)
        if min(self.inner, self.outer) < 0 or max(self.inner, self.outer) > 250 or self.inner + self.outer == 0:
            raise ValueError(f"BorderBand: inner and outer must be widths in 0..250 thousandths of the longer side, "
                             f"not both 0; got {inner!r}, {outer!r}")

    def call(self, inputs: Any) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "inner": self.inner, "outer": self.outer}
