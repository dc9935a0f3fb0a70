"""Frozen batch norms folded into their convolutions while training: the same function, fewer ops per step.

A BatchNormalization layer that does not train (a frozen encoder, or `train.freeze_encoder_bn`) computes
`y = (x - mean) * gamma / sqrt(var + eps) + beta` with constants, two element-wise passes over its input
forward and one backward. When its input is a linear convolution's output that nothing else reads, the
convolution can compute `y` itself:

    y = conv(x, kernel * s) + (beta - mean * s),   s = gamma / sqrt(var + eps)   (per output channel)

The scaled kernel is computed from the layer's own kernel variable inside every step (a small per-channel
product), so the gradient reaching `kernel` is exactly the unfolded one, an exponential moving average of the
weights or a restored backup is read as it is, and the batch norm's statistics stay where they were.

`fold_frozen_batch_norms(model)` switches every such pair of `model` (nested models included) to the folded
computation by giving the two layers a `call` of their own (an instance attribute, so the layers' classes,
configs, weights and saved files are untouched); `unfold` gives them their class's `call` back. Training
folds when it compiles a phase (`segpipe.training.model`) and unfolds before the model is saved for good.
Keras calls a layer through `self.call` at call time; `tests/training/test_bn_folding.py` checks that it
still does, and that a folded model computes the same outputs and gradients as the unfolded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import ops

FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


@dataclass(frozen=True)
class FoldedPair:
    conv: keras.layers.Layer
    bn: keras.layers.BatchNormalization


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included, each once."""
    out, seen = [], set()
    stack = list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))
    return out


def _consumers(layers: list[keras.layers.Layer]) -> dict[int, list[keras.layers.Layer]]:
    """{id of a symbolic tensor: the layers that take it as an input}, over the layers' first call only."""
    out: dict[int, list[keras.layers.Layer]] = {}
    for layer in layers:
        try:
            inputs = layer.input
        except (AttributeError, ValueError):  # an input layer, or a layer called more than once
            continue
        for tensor in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            out.setdefault(id(tensor), []).append(layer)
    return out


def foldable_pairs(model: keras.Model) -> list[FoldedPair]:
    """The (convolution, batch norm) pairs of `model` that can fold: a linear Conv2D (one group) or
    DepthwiseConv2D, channels last, whose output only a channels-last BatchNormalization reads."""
    layers = _layers(model)
    consumers = _consumers(layers)
    pairs = []
    for conv in layers:
        if not isinstance(conv, FOLDABLE_CONVS) or conv.activation is not keras.activations.linear:
            continue
        if conv.data_format != "channels_last" or getattr(conv, "groups", 1) != 1:
            continue
        try:
            output = conv.output
        except (AttributeError, ValueError):
            continue
        readers = consumers.get(id(output), [])
        if len(readers) != 1 or not isinstance(readers[0], keras.layers.BatchNormalization):
            continue
        bn = readers[0]
        if bn.axis not in (-1, len(output.shape) - 1) or bn.renorm:
            continue
        pairs.append(FoldedPair(conv, bn))
    return pairs


def _scale_and_shift(bn: keras.layers.BatchNormalization) -> tuple[object, object]:
    """(s, t) with bn(x) == x * s + t in inference mode, in float32."""
    var = ops.cast(bn.moving_variance, "float32")
    s = ops.rsqrt(var + bn.epsilon)
    if bn.scale:
        s = s * ops.cast(bn.gamma, "float32")
    t = -ops.cast(bn.moving_mean, "float32") * s
    if bn.center:
        t = t + ops.cast(bn.beta, "float32")
    return s, t


def _folded_call(pair: FoldedPair):
    conv, bn = pair.conv, pair.bn
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)

    def call(inputs):
        s, t = _scale_and_shift(bn)
        kernel = ops.cast(conv.kernel, "float32")
        if depthwise:  # (kh, kw, in, multiplier): output channel = in * multiplier + m
            kernel = kernel * ops.reshape(s, (1, 1, kernel.shape[2], kernel.shape[3]))
        else:  # (kh, kw, in, out)
            kernel = kernel * ops.reshape(s, (1, 1, 1, -1))
        if conv.use_bias:
            t = t + ops.cast(conv.bias, "float32") * s
        kernel = ops.cast(kernel, conv.compute_dtype)
        if depthwise:
            y = ops.depthwise_conv(inputs, kernel, strides=conv.strides, padding=conv.padding,
                                   dilation_rate=conv.dilation_rate, data_format=conv.data_format)
        else:
            y = ops.conv(inputs, kernel, strides=conv.strides, padding=conv.padding,
                         dilation_rate=conv.dilation_rate, data_format=conv.data_format)
        return y + ops.cast(t, y.dtype)

    return call


def _passthrough(bn: keras.layers.BatchNormalization):
    def call(inputs, training=None, mask=None):
        return ops.cast(inputs, bn.compute_dtype)

    return call


def fold_frozen_batch_norms(model: keras.Model) -> list[FoldedPair]:
    """Fold every foldable pair of `model` whose batch norm does not train now (see the module doc); unfold
    the pairs whose batch norm trains. Returns the pairs folded. Call it after changing what trains and
    before compiling."""
    folded = []
    for pair in foldable_pairs(model):
        if pair.bn.trainable:
            _restore(pair)
            continue
        pair.conv.call = _folded_call(pair)
        pair.bn.call = _passthrough(pair.bn)
        folded.append(pair)
    return folded


def _restore(pair: FoldedPair) -> None:
    for layer in (pair.conv, pair.bn):
        if "call" in vars(layer):
            del layer.call


def unfold(model: keras.Model) -> None:
    """Give every pair of `model` its class's own `call` back."""
    for pair in foldable_pairs(model):
        _restore(pair)
