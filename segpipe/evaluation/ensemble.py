"""Loading saved models and predicting with one of them or an ensemble, at any image size.

    models = load_models([run / "model.keras"])
    labels = predict_labels(models, [uint8_image])        # HxW labels at the image's own size

Each image is resized to a model's input size exactly as the training input
pipeline does (bilinear with antialiasing, rounded to uint8, scaled to [0, 1]);
an ensemble averages its members' softmax outputs, each resized (bilinear) to
the size of the first member; with `flip`, every member also predicts the
mirrored image and its output, mirrored back, joins the average. Used by
`segpipe.evaluation.evaluate` (scores), `segpipe.evaluation.band` (the border band's calibration) and
`segpipe.predict` (masks for new images); `predict_split` streams a prepared split for the first two.

Members of different input sizes (an ensemble of mixed sizes, or multi-scale TTA: `tta_members` adds each
model rebuilt at other sizes) see the image resized to the LARGEST size first, and the smaller sizes resized
from that uint8 image (`scaled_inputs`). An export does exactly this inside its graph from one input at the
largest size, so evaluate, predict and every exported format agree.
"""

from __future__ import annotations

import os
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.data import NUM_CLASSES
from segpipe.fsutil import sha256_file_memo

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------- models


def load_models(paths: Sequence[PathLike]) -> list[Any]:
    """Load `.keras` models (compile=False) for inference, in float32 whatever precision they were trained in
    (`segpipe.models.rebuild.in_float32`); a clear error names any missing or unreadable file.

    Every model must take one image input of fixed size (B, H, W, 3) and output
    (B, h, w, 3) softmax probabilities.
    """
    import keras

    import segpipe.models.layers  # noqa: F401  (registers segpipe's custom layers for deserialisation)
    from segpipe.models.rebuild import in_float32

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("need at least one model path; got none")
    models = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist (expected a .keras file)")
        if not zipfile.is_zipfile(path):  # Keras says "File not found" of a file that is there but not a zip
            raise ValueError(f"cannot load model {path} (expected a .keras file): it is not a zip archive, as a .keras "
                             "model is (truncated, or another format)")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:  # keras raises many types for corrupt or foreign files
            raise ValueError(
                f"cannot load model {path} (expected a .keras file): {type(exc).__name__}: {exc}"
            ) from exc
        input_size(model, name=str(path))
        model = in_float32(model)  # a model trained in mixed precision computes in float32 here (rebuild.py)
        out = model.output_shape
        if isinstance(out, list) or len(out) != 4 or out[-1] != NUM_CLASSES:
            raise ValueError(
                f"model {path} must output (batch, height, width, {NUM_CLASSES}) probabilities; got {out}"
            )
        models.append(model)
    return models


def input_size(model: Any, name: str | None = None) -> tuple[int, int]:
    """(height, width) a model takes, from `model.input_shape` (must be (None, H, W, 3) with H, W fixed)."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise ValueError(
            f"model {name or model.name} must take one RGB image input of fixed size (batch, H, W, 3); got {shape}"
        )
    return int(shape[1]), int(shape[2])


def tta_members(models: Sequence[Any], tta_sizes: Sequence[int] = ()) -> list[Any]:
    """Each model followed by its weights rebuilt at every size of `tta_sizes` other than its own (multi-scale
    test-time augmentation: the ensemble averages them all). A clear error names a size a model cannot take."""
    from segpipe.models.rebuild import at_input_size

    members = []
    for model in models:
        members.append(model)
        own = input_size(model)
        members += [at_input_size(model, s) for s in dict.fromkeys(int(s) for s in tta_sizes) if (s, s) != own]
    return members


def model_sizes(models: Sequence[Any]) -> list[tuple[int, int]]:
    """The distinct input sizes of `models`, first member's first (the "model resolution")."""
    sizes: list[tuple[int, int]] = []
    for m in models:
        if (s := input_size(m)) not in sizes:
            sizes.append(s)
    return sizes


def model_records(paths: Sequence[PathLike]) -> list[dict[str, str]]:
    """[{path, sha256}] of model files, for metrics and lineage."""
    return [{"path": str(Path(p).resolve()), "sha256": sha256_file_memo(p)} for p in paths]


# --------------------------------------------------------------------------- pixels


def resize_image(image: Any, size: tuple[int, int]) -> Any:
    """uint8 HxWx3 -> float32 [0, 1] at `size`, like the training input pipeline (bilinear, antialiased, rounded)."""
    import tensorflow as tf

    x = tf.image.resize(image, size, method="bilinear", antialias=True)
    x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
    return tf.cast(x, tf.float32) / 255.0


def _to_uint8(image: Any, size: tuple[int, int]) -> Any:
    import tensorflow as tf

    x = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def scaled_inputs(image: Any, sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """{size: float32 [0, 1] image} for every size: the largest resized from `image` (uint8 HxWx3), the others
    from that uint8 result (each as `resize_image`). One size: exactly `resize_image(image, size)`."""
    import tensorflow as tf

    largest = max(sizes, key=lambda s: (s[0] * s[1], s))
    top = _to_uint8(image, largest)
    return {s: tf.cast(top if s == largest else _to_uint8(top, s), tf.float32) / 255.0 for s in sizes}


def resize_probs(probs: Any, size: tuple[int, int]) -> np.ndarray:
    """Probability map(s) (..., h, w, C) resized bilinear to `size` (a no-op at the same size)."""
    import tensorflow as tf

    probs = np.asarray(probs, dtype=np.float32)
    if tuple(probs.shape[-3:-1]) == tuple(size):
        return probs
    return tf.image.resize(probs, size, method="bilinear", antialias=True).numpy()


def labels_at(probs: Any, size: tuple[int, int], band: tuple[int, int] | None = None) -> np.ndarray:
    """Labels (HxW int64) of an (h, w, C) probability map resized to `size`: the argmax, or with `band` (a
    model's calibrated border band, `segpipe.evaluation.band`) the border drawn around the pet's outline."""
    from segpipe.export.runtime import band_labels

    full = resize_probs(probs, size)
    return full.argmax(axis=-1).astype(np.int64) if band is None else band_labels(full, band)


def models_band(models: Sequence[Any]) -> tuple[int, int] | None:
    """The border band an ensemble draws with: its first member's (the member that sets the model resolution)."""
    from segpipe.evaluation.band import band_of

    return band_of(models[0])


EAGER_CALLS = 4
"""A model's first calls run eagerly (`model(batch, training=False)`), later ones through `predict_on_batch`.

Tracing the predict function costs about a second on a CPU, once per model; an eager call costs about 0.2 s
more than a traced one. For a one-image `segpipe predict` (two calls with flip) eager is the faster way;
for a long evaluation the traced function is. Both run the same kernels and give the same outputs, bit for
bit (`tests/evaluation/test_preload.py` checks it)."""
_calls: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def forward(model: Any, batch: np.ndarray) -> np.ndarray:
    """`model`'s output for `batch` as float32 numpy: eagerly for its first `EAGER_CALLS` calls, then traced."""
    calls = _calls.get(model, 0)
    _calls[model] = calls + 1
    if calls < EAGER_CALLS:
        return np.asarray(model(batch, training=False), dtype=np.float32)
    return np.asarray(model.predict_on_batch(batch), dtype=np.float32)


def _member_probs(model: Any, batch: np.ndarray, flip: bool) -> np.ndarray:
    """One member's softmax output for `batch`; with `flip`, averaged with its output on the mirrored batch."""
    probs = forward(model, batch)
    if flip:
        mirrored = forward(model, np.ascontiguousarray(batch[:, :, ::-1]))
        probs = 0.5 * (probs + mirrored[:, :, ::-1])
    return probs


def ensemble_probs(
    models: Sequence[Any], inputs: dict[tuple[int, int], np.ndarray], out_size: tuple[int, int], flip: bool = False
) -> np.ndarray:
    """Mean of the members' softmax outputs at `out_size`; `inputs` holds the batch at each member's size."""
    total = None
    for model in models:
        probs = resize_probs(_member_probs(model, inputs[input_size(model)], flip), out_size)
        sums = probs.sum(axis=-1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ValueError(
                f"model {model.name} does not output softmax probabilities (channel sums range "
                f"{sums.min():.3f}..{sums.max():.3f}); ensembles average probabilities"
            )
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(models)


def predict_probs(models: Sequence[Any], images: Any, flip: bool = False) -> np.ndarray:
    """Ensemble probabilities (B, H, W, C) for a batch of float32 [0, 1] images (B, H, W, 3).

    Each member gets the batch resized (bilinear) to its own input size; its
    output is resized back to H x W; the result is the average.
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be a float32 batch (B, H, W, 3) in [0, 1]; got shape {images.shape}")
    size = tuple(images.shape[1:3])
    inputs = {
        s: images if s == size else tf.image.resize(images, s, method="bilinear", antialias=True).numpy()
        for s in model_sizes(models)
    }
    return ensemble_probs(models, inputs, size, flip)  # type: ignore[arg-type]


def predict_labels(models: Sequence[Any], images: Sequence[np.ndarray], flip: bool = False) -> list[np.ndarray]:
    """HxW labels (0..2) for uint8 RGB images of any sizes, each at its own original size; one batch."""
    sizes = model_sizes(models)
    scaled = [scaled_inputs(img, sizes) for img in images]
    inputs = {s: np.stack([np.asarray(x[s]) for x in scaled]) for s in sizes}
    probs = ensemble_probs(models, inputs, sizes[0], flip)
    band = models_band(models)
    return [labels_at(p, img.shape[:2], band) for p, img in zip(probs, images)]


# --------------------------------------------------------------------------- a prepared split


def batches(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """`items` in lists of `n` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_split(
    models: Sequence[Any], dataset_dir: PathLike, split: str, *, batch_size: int, ids: Sequence[str] | None = None,
    flip: bool = False,
) -> Iterator[dict[str, Any]]:
    """Per image of `split`: id, image (original uint8), truth (original HxW labels), truth_model (labels at the
    first member's size, nearest neighbour) and probs (the ensemble's probabilities at that size).

    Streams: at most one batch of images is held. `ids` restricts to those ids.
    """
    import tensorflow as tf

    from segpipe.data.tfrecords import read_examples

    sizes = model_sizes(models)
    primary = sizes[0]
    ds = read_examples(dataset_dir, split)
    if ids is not None:
        wanted = tf.constant(sorted(set(ids)), dtype=tf.string)
        ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["id"], wanted)))

    def prepare(ex: dict[str, Any]) -> dict[str, Any]:
        out = {"id": ex["id"], "image": ex["image"], "mask": ex["mask"],
               "mask_model": tf.image.resize(ex["mask"], primary, method="nearest")}
        scaled = scaled_inputs(ex["image"], sizes)
        out.update({f"x{i}": scaled[s] for i, s in enumerate(sizes)})
        return out

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    for batch in batches(ds.as_numpy_iterator(), batch_size):
        inputs = {s: np.stack([b[f"x{i}"] for b in batch]) for i, s in enumerate(sizes)}
        probs = ensemble_probs(models, inputs, primary, flip)
        for b, p in zip(batch, probs):
            yield {
                "id": b["id"].decode("utf-8"),
                "image": b["image"],
                "truth": b["mask"][..., 0].astype(np.int64) - 1,
                "truth_model": b["mask_model"][..., 0].astype(np.int64) - 1,
                "probs": p,
            }
