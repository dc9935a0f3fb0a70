"""Pretrained image encoders from `keras.applications`, a registry by name.

    encoder = build_encoder("mobilenetv2", (160, 160, 3), weights="imagenet")
    f2, f4, f8, f16, f32 = encoder(preprocessed_images)     # strides 2, 4, 8, 16, 32

An encoder is the keras.applications model (include_top=False) cut to return its
feature maps at the requested output strides; it sits in a segmentation model as
one nested sub-model named "encoder", so training can freeze it as a unit
(`encoder_of(model)`). The decoders (`unet`, `deeplabv3plus`) take the features,
and `BackbonePreprocess(ENCODERS[name].preprocess)` maps segpipe's [0, 1] RGB
input to the range the encoder was trained on, inside the model.

`weights`: None (random init), "imagenet" (Keras' own download and cache,
`$KERAS_HOME/models`, so a primed cache works offline) or the path of a weights
file of the whole keras.applications model built with include_top=False (a
Keras 3 `.weights.h5` from `save_weights`, or the legacy `.h5` Keras caches).

Which file was actually loaded, by content: `recording_weights_files()` collects, for every encoder
built inside it, the weights file's name and sha256, for the "imagenet" route too (the file Keras
found in, or downloaded into, its cache); training writes them into lineage.json.

This module's names are importable without TensorFlow (config validation uses
them); `build_encoder` imports Keras when called.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from segpipe.models.weights import no_such_weights_file

STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)


@dataclass(frozen=True)
class DilatedTail:
    """The encoder's last stage kept at output stride 16 (DeepLab's atrous encoder): its one stride-2 layer at
    stride 1, and the depthwise convolutions after it at dilation 2, so each sees the same neighbourhood of the
    image as at stride 32 with the same pretrained weights. `pad` is the zero padding keras.applications puts
    before a stride-2 "valid" convolution; it becomes the stride-1 convolution's "same" padding."""

    pad: str
    strided: str
    dilated: tuple[str, ...]
    feature: str  # the last stage's output, then at output stride 16


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder: the keras.applications constructor, its feature layers, its input range."""

    application: str  # attribute of keras.applications
    features: tuple[str, str, str, str, str]  # layer names at output strides 2, 4, 8, 16, 32
    preprocess: str  # `BackbonePreprocess` mode
    takes_alpha: bool = False  # width multiplier (MobileNetV2)
    dilated_tail: DilatedTail | None = None  # how its last stage runs at output stride 16, where it can


ENCODERS: dict[str, EncoderSpec] = {
    "mobilenetv2": EncoderSpec(
        "MobileNetV2",
        ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "out_relu"),
        preprocess="tf",
        takes_alpha=True,
        dilated_tail=DilatedTail("block_13_pad", "block_13_depthwise",
                                 ("block_14_depthwise", "block_15_depthwise", "block_16_depthwise"),
                                 "block_16_project_BN"),
    ),
    "resnet50": EncoderSpec(
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        preprocess="caffe",
    ),
    "efficientnetb0": EncoderSpec(
        "EfficientNetB0",
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation", "top_activation"),
        preprocess="scale255",  # the application rescales and normalises inside itself
    ),
}
ENCODER_NAMES: tuple[str, ...] = tuple(ENCODERS)
DILATED_TAIL_ENCODERS: tuple[str, ...] = tuple(name for name, spec in ENCODERS.items() if spec.dilated_tail)
ENCODER_LAYER = "encoder"  # the nested sub-model's name in every segmentation model
MIN_INPUT = 32  # keras.applications refuse inputs below 32x32


_RECORDING = threading.local()  # per thread: the lists of the `recording_weights_files` blocks open in it


@contextlib.contextmanager
def recording_weights_files() -> Iterator[list[dict[str, str]]]:
    """Every encoder weights file `build_encoder` loads in this thread inside the block, in load order:
    {"encoder", "route" ("imagenet" or "file"), "file" (its name, never its path), "sha256" (of the bytes
    loaded)}."""
    files: list[dict[str, str]] = []
    _RECORDING.stack = [*getattr(_RECORDING, "stack", ()), files]
    try:
        yield files
    finally:
        _RECORDING.stack = [f for f in _RECORDING.stack if f is not files]


def _loaded(name: str, route: str, path: str | Path) -> None:
    from segpipe.fsutil import sha256_file

    stack = getattr(_RECORDING, "stack", ())
    if stack:
        record = {"encoder": name, "route": route, "file": Path(path).name, "sha256": sha256_file(path)}
        for files in stack:
            files.append(record)


class EncoderWeightsUnavailable(RuntimeError):
    """encoder_weights='imagenet' could not be fetched (no internet and no primed cache)."""


def _spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODER_NAMES)}, got {name!r}")
    return ENCODERS[name]


def check_encoder_input(name: str, input_shape: tuple[int, int, int]) -> None:
    """What every model on an encoder checks first: a known encoder and RGB input."""
    _spec(name)
    if input_shape[2] != 3:
        raise ValueError(f"input_shape must have 3 (RGB) channels for a {name} encoder, got {input_shape!r}")


def build_application(
    name: str, input_shape: tuple[int, int, int], weights: str | None = None, alpha: float = 1.0
) -> Any:
    """The whole keras.applications model `name` (include_top=False); `weights` as keras.applications takes it."""
    import keras

    spec = _spec(name)
    kwargs: dict[str, Any] = {"input_shape": input_shape, "include_top": False, "weights": weights}
    if spec.takes_alpha:
        kwargs["alpha"] = alpha
    elif alpha != 1.0:
        raise ValueError(f"encoder_alpha applies to mobilenetv2 only; {name} takes none (got {alpha})")
    with warnings.catch_warnings():
        # "weights for input shape (224, 224) will be loaded as the default": expected, the
        # encoders are fully convolutional and segpipe trains at its own size.
        warnings.filterwarnings("ignore", message=r".*will be loaded as the default.*")
        return getattr(keras.applications, spec.application)(**kwargs)


def _imagenet_application(name: str, input_shape: tuple[int, int, int], alpha: float) -> Any:
    from segpipe.kerascompat import files_fetched_by_keras

    try:
        with files_fetched_by_keras() as fetched:
            app = build_application(name, input_shape, weights="imagenet", alpha=alpha)
    except Exception as exc:  # noqa: BLE001 - urllib/OSError/HTTP errors, whatever Keras' download raised
        raise EncoderWeightsUnavailable(
            f"encoder_weights='imagenet': Keras could not download or find the ImageNet weights of {name} "
            f"({type(exc).__name__}: {exc}). On a machine without internet, either pass a weights file, "
            f"e.g. --set model.encoder_weights=/path/to/{name}_imagenet_no_top.weights.h5 (written by "
            f"keras.applications.{ENCODERS[name].application}(include_top=False, weights='imagenet')"
            f".save_weights(...) on a machine with internet), or copy the file Keras downloads into "
            f"$KERAS_HOME/models/ (default ~/.keras/models/) under the name in the URL above"
        ) from exc
    if len(fetched) != 1:
        raise RuntimeError(f"keras.applications.{ENCODERS[name].application} loaded its ImageNet weights from "
                           f"{len(fetched)} files fetched through keras' get_file, expected 1: "
                           "segpipe.kerascompat.files_fetched_by_keras no longer sees which file Keras loads")
    _loaded(name, "imagenet", fetched[0])
    return app


def _application_from_file(name: str, input_shape: tuple[int, int, int], path: Path, alpha: float) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"encoder_weights: {no_such_weights_file(path)}")
    model = build_application(name, input_shape, weights=None, alpha=alpha)
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError/KeyError/OSError for foreign files
        width = f" (alpha={alpha})" if ENCODERS[name].takes_alpha else ""
        raise ValueError(
            f"encoder_weights: could not load {str(path)!r} into the {name}{width} encoder: {exc}. "
            f"Expected the weights of keras.applications.{ENCODERS[name].application}(include_top=False"
            f"{', alpha=' + str(alpha) if width else ''})"
        ) from exc
    _loaded(name, "file", path)
    return model


def build_encoder(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    *,
    alpha: float = 1.0,
    strides: tuple[int, ...] = STRIDES,
    dilated_tail: bool = False,
) -> Any:
    """Encoder `name` as a Keras model returning its features at `strides` (a subset of 2, 4, 8, 16, 32).

    Takes inputs already preprocessed for the encoder (see `ENCODERS[name].preprocess`). `dilated_tail`: the
    last stage runs at output stride 16 (`DilatedTail`), and its output is the stride-16 feature; there is
    then no stride-32 feature.
    """
    import keras

    spec = _spec(name)
    bad = [s for s in strides if s not in STRIDES]
    if not strides or bad:
        raise ValueError(f"strides must be a non-empty subset of {STRIDES}, got {strides!r}")
    check_dilated_tail(name, dilated_tail)
    if dilated_tail and 32 in strides:
        raise ValueError(f"strides {strides!r}: an encoder with a dilated tail has no stride-32 features")
    if weights is None:
        app = build_application(name, input_shape, weights=None, alpha=alpha)
    elif weights == "imagenet":
        app = _imagenet_application(name, input_shape, alpha)
    else:
        app = _application_from_file(name, input_shape, Path(weights).expanduser(), alpha)
    features = list(spec.features)
    if dilated_tail:
        app = _with_dilated_tail(app, spec.dilated_tail)
        features[STRIDES.index(16)] = spec.dilated_tail.feature
    outputs = [app.get_layer(features[STRIDES.index(s)]).output for s in strides]
    return keras.Model(app.input, outputs, name=ENCODER_LAYER)


def encoder_prefix(encoder: Any, name: str, stride: int) -> list[Any]:
    """The layers of `encoder` (a `build_encoder(name, ...)` model) that its feature at output stride `stride`
    is computed from, that feature's own layer included: what `train.freeze_encoder_stride` keeps frozen.
    Nothing after the feature is among them (for MobileNetV2 at stride 4: the stem and blocks 0 to 2, and
    block 3's expansion, whose output the decoder's /4 skip reads)."""
    import keras

    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
    feature = encoder.get_layer(_spec(name).features[STRIDES.index(stride)])
    return list(keras.Model(encoder.input, feature.output).layers)


def check_dilated_tail(name: str, dilated_tail: bool) -> None:
    """ValueError unless `dilated_tail` is a bool, and False for an encoder without a `DilatedTail`."""
    if not isinstance(dilated_tail, bool):
        raise ValueError(f"dilated_tail must be true or false, got {dilated_tail!r}")
    if dilated_tail and _spec(name).dilated_tail is None:
        raise ValueError(f"a dilated tail applies to {', '.join(DILATED_TAIL_ENCODERS)} only, not {name}")


def _with_dilated_tail(app: Any, tail: DilatedTail) -> Any:
    """`app` rebuilt from its config with `tail`'s layers changed, holding `app`'s weights (the same layers,
    the same weight shapes: strides and dilation change no kernel)."""
    import keras

    config = app.get_config()
    by_name = {layer["config"]["name"]: layer["config"] for layer in config["layers"]}
    missing = [n for n in (tail.pad, tail.strided, *tail.dilated, tail.feature) if n not in by_name]
    if missing:
        raise RuntimeError(f"{app.name} has no layer {', '.join(missing)}: keras.applications changed the layer "
                           "names segpipe.models.encoders.DilatedTail relies on")
    half = tuple(k // 2 for k in by_name[tail.strided]["kernel_size"])  # "same" padding at stride 1
    by_name[tail.pad]["padding"] = ((half[0], half[0]), (half[1], half[1]))
    by_name[tail.strided].update(strides=(1, 1), padding="valid")
    for name in tail.dilated:
        by_name[name]["dilation_rate"] = (2, 2)
    dilated = keras.Model.from_config(config)
    dilated.set_weights(app.get_weights())
    return dilated


def encoder_of(model: Any) -> Any | None:
    """The nested encoder sub-model of a segmentation model, or None for a model trained from scratch."""
    try:
        return model.get_layer(ENCODER_LAYER)
    except ValueError:
        return None
