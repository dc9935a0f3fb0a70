"""Segmentation models, a registry by name (see `registry.py`).

    model = build_model("unet", input_shape=(128, 128, 3), num_classes=3, base_filters=16)
"""

from segpipe.models.registry import MODEL_NAMES, check_input_size, check_knobs, knobs_of, required_divisor

__all__ = ["MODEL_NAMES", "build_model", "check_input_size", "check_knobs", "knobs_of", "required_divisor"]


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int = 3, **params):
    """Build the registered model `name`; checks its knobs (`params`) and the input size first.

    An input_shape of (None, None, 3) builds a model for any input size, where the model supports it
    (deeplabv3plus; `segpipe.config.schema.PROGRESSIVE_MODELS`)."""
    import importlib

    from segpipe.models.registry import BUILDERS

    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    check_knobs(name, params)
    if tuple(input_shape[:2]) != (None, None):
        check_input_size(name, input_shape[:2], params)
    module, func = BUILDERS[name]
    return getattr(importlib.import_module(module), func)(input_shape=input_shape, num_classes=num_classes, **params)
