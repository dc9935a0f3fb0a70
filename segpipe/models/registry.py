"""Model names and their input-size rules, importable without TensorFlow.

The builders live in sibling modules and are imported lazily by
`segpipe.models.build_model`, so validating a config never loads TensorFlow.
"""

from __future__ import annotations

from typing import Any

# name -> (module, builder function)
BUILDERS: dict[str, tuple[str, str]] = {
    "xception_unet": ("segpipe.models.xception_unet", "build_xception_unet"),
    "unet": ("segpipe.models.unet", "build_unet"),
    "deeplabv3plus": ("segpipe.models.deeplabv3plus", "build_deeplabv3plus"),
    "segnet": ("segpipe.models.segnet", "build_segnet"),
}

MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)

# Models that can (unet) or must (deeplabv3plus) sit on a pretrained encoder (`encoders.py`).
TAKES_ENCODER: tuple[str, ...] = ("unet", "deeplabv3plus")
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
