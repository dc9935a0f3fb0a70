"""Writing each export format from the serving model (`segpipe.export.graph.serving_model`).

    FORMATS = ("saved_model", "litert", "onnx")

`litert` writes three files: float32, float16 (weights stored in float16) and int8 (dynamic-range: int8
weights, float activations). Every writer writes into the directory it is given; the caller owns the
temporary directory and its rename.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS: tuple[str, ...] = ("saved_model", "litert", "onnx")
Band = tuple[int, int]  # a model's border band (segpipe.evaluation.band): inner, outer
ONNX_OPSET = 17


@dataclass(frozen=True)
class Artifact:
    """One exported file or directory: `name` is its parity name (saved_model, litert-float32, ...)."""

    name: str
    format: str
    path: Path


def check_formats(formats: Any) -> tuple[str, ...]:
    """The requested formats, in canonical order; a clear error names an unknown one."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    wanted = [str(f).strip() for f in formats]
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise ValueError(f"export formats: unknown {unknown or 'none given'}; expected some of {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in wanted)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Converters print "Saved artifact at ..." and tf2onnx warns about numpy: neither is for the user."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_saved_model(model: Any, out: Path, band: Band | None = None) -> list[Artifact]:
    """The SavedModel, its masks drawn with `band` (the model's border band) inside its graph."""
    from segpipe.export.graph import saved_model_archive

    path = out  # saved_model.pb and variables/ at the top: the directory is a TF Serving version directory
    with _quiet():
        saved_model_archive(model, band).write_out(str(path), verbose=False)
    return [Artifact("saved_model", "saved_model", path)]


def write_litert(model: Any, out: Path, band: Band | None = None) -> list[Artifact]:
    """float32, float16 and dynamic-range int8 `.tflite` files, builtin ops only (no Flex delegate needed).
    They output probabilities; `band` is drawn outside them (`runtime.BAND_FILE`).

    The model is traced and saved once (Keras' `export`, a SavedModel in a temporary folder that is removed
    afterwards) and one converter, made from it once, converts each variant: `TFLiteConverter.from_keras_model`
    would trace and save the model again for every variant, and a converter per variant loads the SavedModel
    again (a quarter of the three conversions' time for a tiny DeepLabV3+ here). Each variant sets every
    quantization setting, so none carries over from the one before; the files are byte for byte those of a
    converter per variant."""
    import tensorflow as tf

    variants = (  # name, optimizations, the float types the weights may be stored in
        ("float32", [], []),
        ("float16", [tf.lite.Optimize.DEFAULT], [tf.float16]),
        ("int8", [tf.lite.Optimize.DEFAULT], []),  # dynamic range: int8 weights, float activations
    )
    artifacts = []
    with tempfile.TemporaryDirectory(prefix=".litert-source-", dir=out) as source:
        with _quiet():
            model.export(source, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(source)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        for variant, optimizations, supported_types in variants:
            converter.optimizations = list(optimizations)
            converter.target_spec.supported_types = list(supported_types)
            path = out / f"pets-{variant}.tflite"
            with _quiet():
                path.write_bytes(converter.convert())
            artifacts.append(Artifact(f"litert-{variant}", "litert", path))
    return artifacts


def write_onnx(model: Any, out: Path, band: Band | None = None) -> list[Artifact]:
    """`pets.onnx` through Keras' own ONNX export (tf2onnx on the TensorFlow backend); it outputs probabilities,
    `band` is drawn outside it (`runtime.BAND_FILE`)."""
    import tensorflow as tf

    path = out / "pets.onnx"
    size = tuple(int(d) for d in model.input_shape[1:3])
    with _quiet():
        model.export(
            str(path), format="onnx", verbose=False, opset_version=ONNX_OPSET,
            input_signature=[tf.TensorSpec([None, *size, 3], tf.uint8, name="image")],
        )
    return [Artifact("onnx", "onnx", path)]


WRITERS: dict[str, Callable[[Any, Path, Band | None], list[Artifact]]] = {
    "saved_model": write_saved_model,
    "litert": write_litert,
    "onnx": write_onnx,
}
