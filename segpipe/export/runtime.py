"""pets_runtime: run an exported segpipe pets model with nothing of segpipe installed.

This file is copied beside every export as `pets_runtime.py`. It needs numpy and Pillow, plus the runtime
of the format it runs: TensorFlow for a SavedModel directory, `ai-edge-litert` for a `.tflite` file,
`onnxruntime` for an `.onnx` file. It never imports segpipe (the parity check runs it in a process where
segpipe cannot be imported).

    from pets_runtime import load, decode, predict_mask
    model = load("pets.onnx")                     # or "pets-float16.tflite", or a SavedModel directory
    mask = predict_mask(model, decode(open("cat.jpg", "rb").read()))   # HxW uint8: 1 pet, 2 background, 3 border

The exported LiteRT and ONNX models take uint8 RGB images at the model's input size (B, H, W, 3) and return
softmax probabilities at that size (B, H, W, 3); scaling to [0, 1], the encoder's own preprocessing, flip
test-time augmentation and ensemble averaging run inside them. What runs outside, here, is exactly what
segpipe does around its Keras model:

1. decode with Pillow: first frame, EXIF orientation applied, 16-bit scaled to 8-bit (>> 8), palette, grey
   and alpha images converted to RGB (alpha dropped);
2. resize to the model's input size with TensorFlow's antialiased bilinear kernel (`tf.image.resize(...,
   antialias=True)`, re-implemented in numpy below), rounded to uint8;
3. run the model;
4. resize the probabilities back to the original size with the same kernel, take the argmax, add 1; or,
   for a model with a calibrated border band (`border_band.json` beside the artifact), draw the border as
   a band of that width around the outline where p(pet) > p(background) (`band_labels`).

The SavedModel does all four inside its graph (`serving_default` takes encoded image bytes); see
`SAVED_MODEL_SIGNATURES`.

Run as a script it is the parity check's worker:
    python pets_runtime.py --artifact pets.onnx --inputs parity-inputs.npz --out labels.npz [--block-import segpipe]
"""

from __future__ import annotations

import argparse
import importlib.abc
import io
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

MASK_VALUES = {1: "pet", 2: "background", 3: "border"}
MAX_PIXELS = 50_000_000  # 10,000 x 8,000 = 80 MP is refused before decoding: ~1 GB of float32 per resize
SAVED_MODEL_SIGNATURES = {
    "serving_default": "images: string[B] (encoded JPEG/PNG/GIF/BMP) -> masks uint8[B,H,W] (padded with 0), "
                       "heights int32[B], widths int32[B]",
    "serving_probabilities": "images: string[B] -> masks, probabilities float32[B,H,W,3], heights, widths",
    "serving_float": "images: float32[B,H,W,3] in [0, 1] (decoded by the caller) -> masks uint8[B,H,W], "
                     "probabilities float32[B,H,W,3]",
    "model_input": "image: uint8[B,h,w,3] at the model's input size -> probabilities float32[B,h,w,3] "
                   "(the contract of the LiteRT and ONNX files)",
}


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says what was expected."""


# --------------------------------------------------------------------------- decoding (as segpipe predict)


def decode(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """RGB uint8 HxWx3 of encoded image bytes, decoded exactly as `segpipe predict` decodes a file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise ImageError("empty file (0 bytes); expected JPEG, PNG, GIF, BMP, WebP or TIFF content")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width} x {height} = {width * height / 1e6:.1f} megapixels; "
                    f"the limit is {max_pixels / 1e6:.0f} megapixels"
                )
            img.seek(0)
            img.load()
            upright = ImageOps.exif_transpose(img)
            if upright.mode in ("P", "PA"):
                upright = upright.convert("RGBA")
            rgb = np.asarray(to_rgb(upright), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ImageError("not a recognisable image (expected JPEG, PNG, GIF, BMP, WebP or TIFF content)") from None
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"decoded to an unusable array of shape {rgb.shape}")
    return rgb


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(img: Any) -> Any:
    """RGB conversion of a decoded image, the one definition (training data and prediction use it too, as
    `segpipe.data.images.to_rgb`): 16-bit images scaled (>> 8), not clipped; everything else img.convert."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- resizing (as tf.image.resize)


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 weights of TensorFlow's antialiased bilinear resize along one axis.

    A port of `ComputeSpansCore` in tensorflow/core/kernels/image/scale_and_translate_op.cc with the triangle
    kernel: the kernel widens by the downscaling factor (antialias) and the weights of each output pixel are
    normalised to sum to 1.
    """
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for x in range(out_size):
        sample = (np.float32(x) + np.float32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = int(np.ceil(sample - kernel_scale - np.float32(0.5)))
        end = int(np.floor(sample + kernel_scale - np.float32(0.5)))
        start, end = min(max(start, 0), in_size - 1), min(max(end, 0), in_size - 1) + 1
        src = np.arange(start, end, dtype=np.float32)
        w = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs((src + np.float32(0.5) - sample) / kernel_scale))
        total = w.sum(dtype=np.float32)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            w = w / total
        weights[x, start:end] = w
    return weights


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 (H, W, C) -> (h, w, C) like `tf.image.resize(array, size, "bilinear", antialias=True)`."""
    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape[:2]) == tuple(size):
        return array
    rows = resize_weights(array.shape[0], size[0])
    cols = resize_weights(array.shape[1], size[1])
    out = np.einsum("hH,HWc->hWc", rows, array, optimize=True)
    return np.einsum("wW,hWc->hwc", cols, out, optimize=True).astype(np.float32)


def to_model_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 -> uint8 at the model's input size, resized and rounded as segpipe's input pipeline does."""
    return np.clip(np.round(resize(rgb.astype(np.float32), size)), 0, 255).astype(np.uint8)


def labels_from_probabilities(probs: np.ndarray, size: tuple[int, int],
                              band: tuple[int, int] | None = None) -> np.ndarray:
    """Trimap (HxW uint8: 1 pet, 2 background, 3 border) at `size` from (h, w, 3) probabilities; with `band`
    (the model's calibrated border band), the border is drawn by `band_labels`, else it is the argmax."""
    full = resize(probs, size)
    labels = full.argmax(axis=-1) if band is None else band_labels(full, band)
    return (labels + 1).astype(np.uint8)


# --------------------------------------------------------------------------- the border band


BAND_FILE = "border_band.json"  # beside an exported artifact: the band calibrated for its model (if any)


def band_radius(permille: int, size: tuple[int, int]) -> int:
    """A band width in pixels: `permille` thousandths of the image's longer side, rounded half up (integers
    only, so numpy and the SavedModel's graph agree exactly)."""
    return (int(permille) * max(int(size[0]), int(size[1])) + 500) // 1000


def disk_counts(mask: np.ndarray, radius: int) -> np.ndarray:
    """int32 HxW: how many pixels of `mask` (HxW bool) lie in the disk dy^2 + dx^2 <= radius^2 around each
    pixel; pixels outside the image count as none. Row by row with prefix sums: 2 * radius + 1 steps."""
    h, w = mask.shape
    padded = np.pad(mask.astype(np.int32), radius)
    prefix = np.pad(np.cumsum(padded, axis=1, dtype=np.int32), ((0, 0), (1, 0)))
    out = np.zeros((h, w), dtype=np.int32)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        rows = prefix[radius + dy:radius + dy + h]
        out += rows[:, radius + half + 1:radius + half + 1 + w] - rows[:, radius - half:radius - half + w]
    return out


def band_labels(probs: np.ndarray, band: tuple[int, int]) -> np.ndarray:
    """HxW int64 labels (0 pet, 1 background, 2 border) of (H, W, 3) probabilities at the image's own size,
    with the border drawn as geometry: the pet is where p(pet) > p(background); every pixel within
    `band = (inner, outer)` permille of the longer side of that outline (inside it, outside it) is border."""
    pet = probs[..., 0] > probs[..., 1]
    border = band_side(pet, band[0], inside=True) | band_side(pet, band[1], inside=False)
    return np.where(border, 2, np.where(pet, 0, 1)).astype(np.int64)


def band_side(pet: np.ndarray, permille: int, *, inside: bool) -> np.ndarray:
    """HxW bool: the pixels of the pet (`inside`) or of the background within `permille` thousandths of the
    longer side of the pet's outline (none for 0)."""
    radius = band_radius(permille, pet.shape)
    if radius == 0:
        return np.zeros(pet.shape, dtype=bool)
    own, other = (pet, ~pet) if inside else (~pet, pet)
    return own & (disk_counts(other, radius) > 0)


# --------------------------------------------------------------------------- models


class Model:
    """One exported artifact; `probabilities(batch)` maps uint8 (B, h, w, 3) at `input_size` to (B, h, w, 3).
    `band`: the border band its masks are drawn with (read from `BAND_FILE` beside it), or None (argmax)."""

    kind = "?"
    input_size: tuple[int, int]
    band: tuple[int, int] | None = None

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxModel(Model):
    kind = "onnx"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_size = (int(spec.shape[1]), int(spec.shape[2]))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


class LiteRTModel(Model):
    kind = "litert"

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_size = (int(self.input["shape"][1]), int(self.input["shape"][2]))
        self.batch = 0

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self.output = self.interpreter.get_output_details()[0]
            self.batch = batch.shape[0]
        self.interpreter.set_tensor(self.input["index"], batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output["index"]), dtype=np.float32)


class SavedModel(Model):
    """A SavedModel directory: `predict_encoded` runs decoding and resizing inside the graph."""

    kind = "saved_model"

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.loaded = tf.saved_model.load(str(path))
        self.signatures = self.loaded.signatures
        spec = self.signatures["model_input"].structured_input_signature[1]["image"]
        self.input_size = (int(spec.shape[1]), int(spec.shape[2]))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.signatures["model_input"](image=batch)["probabilities"].numpy()

    def predict_encoded(self, blobs: list[bytes]) -> list[np.ndarray]:
        """Trimaps of encoded images through `serving_default` (decoding inside the graph)."""
        import tensorflow as tf

        out = self.signatures["serving_default"](images=tf.constant(blobs, dtype=tf.string))
        masks, heights, widths = (out[k].numpy() for k in ("masks", "heights", "widths"))
        return [m[:h, :w] for m, h, w in zip(masks, heights, widths)]


def load(path: str | Path) -> Model:
    """The exported artifact at `path`: a SavedModel directory, a `.tflite` file or an `.onnx` file (with the
    border band of `BAND_FILE` in its directory, when the export has one)."""
    path = Path(path)
    model: Model
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{path} is a directory without saved_model.pb; expected a SavedModel directory")
        model = SavedModel(path)
    elif not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    elif path.suffix == ".tflite":
        model = LiteRTModel(path)
    elif path.suffix == ".onnx":
        model = OnnxModel(path)
    else:
        raise ValueError(f"{path}: expected a SavedModel directory, a .tflite file or an .onnx file")
    model.band = read_band(path if path.is_dir() else path.parent)
    return model


def read_band(folder: Path) -> tuple[int, int] | None:
    """The band of `folder / BAND_FILE` ({"band": [inner, outer]}), None without the file; a clear error for
    a file that says something else."""
    import json

    file = Path(folder) / BAND_FILE
    if not file.is_file():
        return None
    try:
        band = json.loads(file.read_text(encoding="utf-8"))["band"]
        inner, outer = (int(b) for b in band)
        if [inner, outer] != list(band) or min(inner, outer) < 0 or inner + outer == 0:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{file} must hold {{\"band\": [inner, outer]}}, two whole widths >= 0 in thousandths "
                         f"of the longer side, not both 0") from None
    return inner, outer


def predict_masks(model: Model, images: list[np.ndarray]) -> list[np.ndarray]:
    """Trimaps (HxW uint8) of decoded RGB images, each at its own size; one batch."""
    batch = np.stack([to_model_input(img, model.input_size) for img in images])
    probs = model.probabilities(batch)
    return [labels_from_probabilities(p, img.shape[:2], model.band) for p, img in zip(probs, images)]


def predict_mask(model: Model, image: np.ndarray) -> np.ndarray:
    """The trimap (HxW uint8: 1 pet, 2 background, 3 border) of one decoded RGB image."""
    return predict_masks(model, [image])[0]


# --------------------------------------------------------------------------- the parity worker


class _Blocked(importlib.abc.MetaPathFinder):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"{fullname} is blocked in this process: the export must run without it")
        return None


def block_imports(names: list[str]) -> None:
    """Make `import <name>` fail for each of `names` (and check none is imported already)."""
    already = sorted(m for m in sys.modules if m.split(".")[0] in names)
    if already:
        raise RuntimeError(f"already imported, cannot block: {already}")
    sys.meta_path.insert(0, _Blocked(names))


def _run_worker(artifact: Path, inputs: Path, out: Path, batch_size: int) -> dict[str, Any]:
    """Predict every image of `inputs` (an .npz of encoded blobs) with `artifact`; write labels to `out`."""
    import time

    with np.load(inputs, allow_pickle=False) as data:
        blobs = [data[k].tobytes() for k in sorted(data.files, key=int)]
    t0 = time.perf_counter()
    model = load(artifact)
    loaded = time.perf_counter() - t0
    labels: list[np.ndarray] = []
    errors: dict[str, str] = {}
    for start in range(0, len(blobs), batch_size):
        chunk = blobs[start:start + batch_size]
        if isinstance(model, SavedModel):
            labels += model.predict_encoded(chunk)
            continue
        labels += predict_masks(model, [decode(b) for b in chunk])
    np.savez(out, **{str(i): lab for i, lab in enumerate(labels)})
    leaked = sorted({m.split(".")[0] for m in sys.modules} & {"segpipe", "keras"})
    return {"kind": model.kind, "n_images": len(labels), "load_seconds": round(loaded, 3),
            "input_size": list(model.input_size), "errors": errors, "imported": leaked,
            "python": sys.executable}


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(prog="pets_runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--inputs", required=True, type=Path, help=".npz of encoded image bytes, keys 0..N-1")
    parser.add_argument("--out", required=True, type=Path, help=".npz of trimaps, keys 0..N-1")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-import", action="append", default=[], help="a package that must not be imported")
    args = parser.parse_args(argv)
    block_imports(args.block_import)
    report = _run_worker(args.artifact, args.inputs, args.out, args.batch_size)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
