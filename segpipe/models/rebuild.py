"""A trained model's weights in the same architecture built for another input size (multi-scale TTA), or
computing in float32 (a model trained in mixed precision, for inference and export).

    big = at_input_size(model, 224)      # model takes 160x160; big takes 224x224, same weights
    exact = in_float32(model)            # trained under mixed_bfloat16; exact computes in float32, same weights

Every segpipe model is fully convolutional except for the layers whose config names a size: the input
layer, and DeepLabV3+'s image-pooling branch (`aspp_pool_upsample`, which spreads the pooled vector over
the output-stride-16 map). Both are rescaled in the model's config; the rebuilt model gets the original's
weights, and its output must scale with its input, or a clear error names the model and the size.

Mixed precision is a training setting: each layer of a model trained under `mixed_bfloat16` or `mixed_float16`
saves that policy in its config and computes in the half type, while its variables are float32. LiteRT's
converter has no builtin bfloat16 kernels, and export's parity check compares the exports with the Keras model,
so every saved model is loaded for inference with its layers' policies set to float32 (`in_float32`, called by
`segpipe.evaluation.ensemble.load_models`): evaluate, predict and every export compute the same function.
"""

from __future__ import annotations

import copy
from typing import Any

SIZED_UPSAMPLINGS = ("aspp_pool_upsample",)


def at_input_size(model: Any, size: int) -> Any:
    """`model`'s weights in its architecture built for `size` x `size` inputs (`model` itself at its own size)."""
    import keras

    shape = model.input_shape
    own_h, own_w = int(shape[1]), int(shape[2])
    if (own_h, own_w) == (size, size):
        return model
    if own_h != own_w:
        raise ValueError(f"model {model.name} takes {own_h}x{own_w} images; multi-scale TTA needs a square input")
    config = copy.deepcopy(model.get_config())
    _rescale(config, size, own_h)
    try:
        rebuilt = keras.Model.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:  # keras raises many types for shapes that do not fit
        raise ValueError(
            f"model {model.name} (trained at {own_h}x{own_w}) cannot be built for {size}x{size} inputs: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    out, own_out = rebuilt.output_shape, model.output_shape
    if out[1] * own_h != own_out[1] * size or out[2] * own_w != own_out[2] * size:
        raise ValueError(
            f"model {model.name} built for {size}x{size} outputs {out[1]}x{out[2]}; expected its output to "
            f"scale with the input as at {own_h}x{own_w} ({own_out[1]}x{own_out[2]})"
        )
    return rebuilt


def in_float32(model: Any) -> Any:
    """`model` itself when every layer computes in float32; else its weights in its architecture with every
    mixed-precision policy (`mixed_bfloat16`, `mixed_float16`) set to float32."""
    import keras

    if not _has_mixed_layer(model):  # the common case costs a walk over the layers, not a config copy
        return model
    config = copy.deepcopy(model.get_config())
    _to_float32(config)
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _has_mixed_layer(model: Any) -> bool:
    """Whether any layer of `model`, nested models' layers included, has a mixed-precision policy."""
    import keras

    return any(layer.dtype_policy.name.startswith("mixed_")
               or (isinstance(layer, keras.Model) and _has_mixed_layer(layer)) for layer in model.layers)


def _to_float32(node: Any) -> int:
    """In place: every DTypePolicy named `mixed_*` becomes float32; returns how many changed."""
    changed = 0
    if isinstance(node, dict):
        config = node.get("config")
        if (node.get("class_name") == "DTypePolicy" and isinstance(config, dict)
                and str(config.get("name", "")).startswith("mixed_")):
            config["name"] = "float32"
            changed += 1
        changed += sum(_to_float32(value) for value in node.values())
    elif isinstance(node, list):
        changed += sum(_to_float32(value) for value in node)
    return changed


def _rescale(node: Any, size: int, own: int) -> None:
    """In place: input layers take `size`; the sized upsamplings scale by size / own (which must divide)."""
    if isinstance(node, dict):
        config = node.get("config")
        if node.get("class_name") == "InputLayer" and isinstance(config, dict):
            batch_shape = list(config["batch_shape"])
            config["batch_shape"] = [batch_shape[0], size, size, *batch_shape[3:]]
        if (node.get("class_name") == "UpSampling2D" and isinstance(config, dict)
                and config.get("name") in SIZED_UPSAMPLINGS):
            old = [int(v) for v in config["size"]]
            if any(v * size % own for v in old):
                raise ValueError(
                    f"{size}x{size} does not suit layer {config['name']} ({old[0]}x{old[1]} at {own}x{own}): "
                    f"the size must be a multiple of {own // old[0]}"
                )
            config["size"] = [v * size // own for v in old]
        for value in node.values():
            _rescale(value, size, own)
    elif isinstance(node, list):
        for value in node:
            _rescale(value, size, own)
