"""Parity: each exported artifact, run in a fresh process where segpipe cannot be imported, against the Keras
model(s) it came from, on real images of a dataset split at their original resolution.

The reference is the Keras model exactly as `segpipe predict` runs it (Pillow decoding, antialiased resize,
the same flip setting). Each artifact's masks are scored against the ground truth and compared pixel by
pixel with the reference's; an artifact outside its `BOUNDS` is a `ParityError` that names the format and
both figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.export.formats import Artifact

MIN_IMAGES = 30  # the evaluation split is topped up with the validation split below this
WORKER_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Bound:
    max_mean_iou_delta: float
    min_pixel_agreement: float


# int8 (dynamic range: int8 weights, float activations) gets twice float16's margin: quantising weights to
# 256 levels moves probabilities more than float16's 11-bit mantissa does.
BOUNDS: dict[str, Bound] = {
    "saved_model": Bound(0.001, 0.999),
    "litert-float32": Bound(0.001, 0.999),
    "onnx": Bound(0.001, 0.999),
    "litert-float16": Bound(0.005, 0.995),
    "litert-int8": Bound(0.01, 0.99),
}


class ParityError(ValueError):
    """An artifact outside its parity bound, or one that failed to load or answer in a fresh process."""


@dataclass
class ParitySet:
    """Encoded images with their ground-truth trimaps (1..3); `splits` says where they came from."""

    ids: list[str]
    blobs: list[bytes]
    truths: list[np.ndarray]
    splits: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def parity_set(dataset_dir: str | os.PathLike[str], split: str, *, fallback: str = "val",
               min_images: int = MIN_IMAGES) -> ParitySet:
    """The raw encoded images and trimaps of `split`, and of `fallback` too when `split` has < `min_images`."""
    from segpipe.data.tfrecords import load_manifest

    splits = load_manifest(dataset_dir).get("splits", {})
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {dataset_dir}; it has {', '.join(sorted(splits)) or 'none'}")
    chosen = [split]
    if int(splits[split].get("num_examples", 0)) < min_images and fallback in splits and fallback != split:
        chosen.append(fallback)
    out = ParitySet([], [], [], [])
    for name in chosen:
        for image_id, blob, truth in _raw_examples(dataset_dir, name):
            out.ids.append(image_id)
            out.blobs.append(blob)
            out.truths.append(truth)
            out.splits.append(name)
    if not out.ids:
        raise ValueError(f"split {split!r} of {dataset_dir} holds no images to check an export on")
    return out


def _raw_examples(dataset_dir: str | os.PathLike[str], split: str) -> Any:
    import tensorflow as tf

    from segpipe.data.spec import feature_description
    from segpipe.data.tfrecords import shard_files

    for record in tf.data.TFRecordDataset(shard_files(dataset_dir, split)):
        f = tf.io.parse_single_example(record, feature_description())
        truth = tf.io.decode_png(f["mask/encoded"], channels=1).numpy()[..., 0]
        yield f["image/id"].numpy().decode(), f["image/encoded"].numpy(), truth


# --------------------------------------------------------------------------- reference and workers


def reference_labels(models: Sequence[Any], blobs: Sequence[bytes], flip: bool, batch_size: int = 8) -> list[np.ndarray]:
    """Trimaps (1..3) of the Keras model(s), run as `segpipe predict` runs them."""
    from segpipe.evaluation.ensemble import predict_labels
    from segpipe.export.runtime import decode

    labels: list[np.ndarray] = []
    for start in range(0, len(blobs), batch_size):
        images = [decode(b) for b in blobs[start:start + batch_size]]
        labels += [(lab + 1).astype(np.uint8) for lab in predict_labels(models, images, flip)]
    return labels


def run_worker(artifact: Artifact, blobs: Sequence[bytes], runtime: Path, batch_size: int = 8) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The artifact's trimaps from `runtime` (pets_runtime.py) in a fresh, isolated Python process
    (`python -I`, segpipe import blocked); a `ParityError` names the artifact when it fails."""
    with tempfile.TemporaryDirectory(prefix="segpipe-parity-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "labels.npz"
        np.savez(inputs, **{str(i): np.frombuffer(b, dtype=np.uint8) for i, b in enumerate(blobs)})
        cmd = [sys.executable, "-I", str(runtime), "--artifact", str(artifact.path), "--inputs", str(inputs),
               "--out", str(out), "--batch-size", str(batch_size), "--block-import", "segpipe",
               "--block-import", "tasks", "--block-import", "flows", "--block-import", "cli"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise ParityError(f"{artifact.name}: no answer from a fresh process within {WORKER_TIMEOUT_S} s") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-6:])
            raise ParityError(f"{artifact.name}: loading or predicting in a fresh process failed "
                              f"(exit {done.returncode}):\n{tail}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        with np.load(out) as data:
            labels = [data[str(i)] for i in range(len(blobs))]
    return labels, report


# --------------------------------------------------------------------------- scoring


def score(labels: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, Any]:
    """Mean IoU, foreground IoU and per-class IoU of trimaps (1..3) against the truth, at original size."""
    from segpipe.evaluation.metrics import ConfusionAccumulator

    acc = ConfusionAccumulator(3)
    for lab, truth in zip(labels, truths):
        if lab.shape != truth.shape:
            raise ValueError(f"prediction of shape {lab.shape} for a trimap of shape {truth.shape}")
        acc.update(truth.astype(np.int64) - 1, lab.astype(np.int64) - 1)
    s = acc.scores()
    return {"mean_iou": s["mean_iou"], "foreground_iou": s["foreground_iou"], "iou": s["iou"],
            "pixel_accuracy": s["pixel_accuracy"]}


def agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Share of pixels with the same label in two lists of trimaps."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    total = sum(x.size for x in a)
    return same / total if total else 1.0


@dataclass
class ParityResult:
    artifact: str
    format: str
    mean_iou: float
    reference_mean_iou: float
    mean_iou_delta: float
    pixel_agreement: float
    bound: dict[str, float]
    passed: bool
    worker: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        b = BOUNDS[self.artifact]
        return (f"{self.artifact}: mean IoU {self.mean_iou:.4f} vs Keras {self.reference_mean_iou:.4f} "
                f"(|delta| {self.mean_iou_delta:.4f}, bound {b.max_mean_iou_delta}), "
                f"{100 * self.pixel_agreement:.3f}% of pixels agree (bound {100 * b.min_pixel_agreement:.1f}%)")


def check_artifact(artifact: Artifact, data: ParitySet, reference: Sequence[np.ndarray], reference_score: dict[str, Any],
                   runtime: Path) -> ParityResult:
    """Run `artifact` in a fresh process on `data` and measure it against the reference."""
    labels, worker = run_worker(artifact, data.blobs, runtime)
    mine = score(labels, data.truths)
    bound = BOUNDS[artifact.name]
    delta = abs(mine["mean_iou"] - reference_score["mean_iou"])
    agree = agreement(labels, reference)
    return ParityResult(
        artifact=artifact.name, format=artifact.format, mean_iou=mine["mean_iou"],
        reference_mean_iou=reference_score["mean_iou"], mean_iou_delta=delta, pixel_agreement=agree,
        bound=asdict(bound), passed=delta <= bound.max_mean_iou_delta and agree >= bound.min_pixel_agreement,
        worker=worker,
    )
