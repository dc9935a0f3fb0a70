"""Model names, the knobs each model takes, and their input-size rules, importable without TensorFlow.

The builders live in sibling modules and are imported lazily by
`segpipe.models.build_model`, so validating a config never loads TensorFlow.
A builder's keyword parameters (after `input_shape` and `num_classes`) are the
knobs its model takes: `knobs_of` reads them from the builder's signature in its
source, without importing it, so adding a knob to a builder is the one step that
lets the config pass it (`ModelConfig.params`) and `build_model` accept it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

# name -> (module, builder function)
BUILDERS: dict[str, tuple[str, str]] = {
    "xception_unet": ("segpipe.models.xception_unet", "build_xception_unet"),
    "unet": ("segpipe.models.unet", "build_unet"),
    "deeplabv3plus": ("segpipe.models.deeplabv3plus", "build_deeplabv3plus"),
    "segnet": ("segpipe.models.segnet", "build_segnet"),
}

MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)

_NOT_KNOBS = ("input_shape", "num_classes")


@functools.cache
def knobs_of(name: str) -> tuple[str, ...]:
    """The knobs model `name` takes: its builder's parameters after input_shape and num_classes, in order."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    module, func = BUILDERS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"model {name!r}: module {module} not found")
    for node in ast.parse(Path(spec.origin).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            a = node.args
            if a.vararg or a.kwarg:
                raise TypeError(f"{module}.{func} must name every knob it takes (no *args or **kwargs)")
            return tuple(p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs) if p.arg not in _NOT_KNOBS)
    raise ImportError(f"model {name!r}: {module} defines no function {func}")


def check_knobs(name: str, params: dict[str, Any]) -> None:
    """A ValueError naming every knob in `params` that model `name` does not take, and those it does."""
    taken = knobs_of(name)
    unknown = [k for k in params if k not in taken]
    if unknown:
        raise ValueError(
            f"model {name!r} does not take {', '.join(unknown)}; it takes {', '.join(taken) or 'no knobs'}"
        )


# Models that can (unet) or must (deeplabv3plus) sit on a pretrained encoder (`encoders.py`).
TAKES_ENCODER: tuple[str, ...] = tuple(name for name in MODEL_NAMES if "encoder" in knobs_of(name))
NEEDS_ENCODER: tuple[str, ...] = ("deeplabv3plus",)
ENCODER_MIN_SIZE = 32  # keras.applications encoders refuse inputs below 32x32


def required_divisor(name: str, params: dict[str, Any] | None = None) -> int:
    """The input height and width must be multiples of this for model `name`."""
    params = params or {}
    if name == "unet" and params.get("encoder"):
        return 32  # five stride-2 stages in the encoder, mirrored by five upsamplings
    if name in ("unet", "segnet"):
        return 2 ** int(params.get("depth", 4))  # one 2x2 pooling per level, mirrored in the decoder
    if name == "xception_unet":
        return 16  # stride-2 stem + 3 stride-2 blocks, mirrored by 4 upsamplings
    if name == "deeplabv3plus":
        return 16  # ASPP runs on the output-stride-16 features of the encoder, upsampled x4 twice
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def check_aspp_rates(rates: Any) -> tuple[int, ...]:
    """DeepLabV3+'s ASPP dilation rates as a tuple; ValueError unless they are one or more distinct ints >= 1.
    The config checks them with this before any work starts, the model builder again when it builds."""
    rates = tuple(rates)
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates) \
            or len(set(rates)) != len(rates):
        raise ValueError("expected one or more distinct dilation rates >= 1, such as (6, 12, 18)")
    return rates


def check_input_size(name: str, size: tuple[int, int], params: dict[str, Any] | None = None) -> None:
    """Raise ValueError naming the size and the rule when `size` does not suit model `name`."""
    div = required_divisor(name, params)
    on_encoder = name in NEEDS_ENCODER or (name in TAKES_ENCODER and (params or {}).get("encoder"))
    low = max(div, ENCODER_MIN_SIZE if on_encoder else div)
    h, w = size
    if h < low or w < low or h % div or w % div:
        at_least = f" and at least {low}" if low > div else ""
        raise ValueError(
            f"img_size {h}x{w} does not suit model {name!r}: height and width must be positive multiples "
            f"of {div}{at_least}"
        )
