"""The XLA gather warp of the augmentation against TensorFlow's `ImageProjectiveTransformV3` kernel.

    .venv/bin/python benchmarks/warp_check.py --out benchmarks/results/warp_check.json   # ~20 s

`segpipe.data.augment.warp_batch` warps a batch of uint8 images (bilinear, to
float32) and labels (nearest) with REFLECT fill in one XLA-compiled pass. This
script warps the same random images and labels with the same transforms through
both, and reports the largest absolute difference of the images (on [0, 1]) and
the share of label pixels that differ, for each image size and kind of
transform (rotations of 10-90 degrees, zoom in and out, mirrored), plus the CPU
milliseconds per image of each (median of `--repeats` calls on a 160x160 batch,
after one untimed call that compiles). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import Machine, emit, library_versions, log, median, r  # noqa: E402

SIZES = ((160, 160), (40, 48), (7, 5))  # (height, width): square, non-square, smaller than a kernel tile
CASES = {  # name -> (rotation degrees, scale: < 1 zooms out, mirrored)
    "rotate 10, zoom in 1.2": (10.0, 1.2, False),
    "rotate 45, zoom out 0.7": (45.0, 0.7, False),
    "rotate 90, mirrored": (90.0, 1.0, True),
    "rotate -30, zoom in 1.5, mirrored": (-30.0, 1.5, True),
}


def transform(height: int, width: int, degrees: float, scale: float, mirror: bool) -> list[float]:
    """Output pixel (x, y) -> input point, rotation and zoom about the centre (the kernel's convention)."""
    angle = math.radians(degrees)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a = [cos, -sin, cx - cos * cx + sin * cy]
    b = [sin, cos, cy - sin * cx - cos * cy]
    if mirror:
        a = [-a[0], -a[1], (width - 1) - a[2]]
    return [*a, *b, 0.0, 0.0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args()
    machine = Machine()

    import numpy as np
    import tensorflow as tf

    from segpipe.data.augment import warp_batch

    def kernel(images: Any, labels: Any, transforms: Any) -> tuple[Any, Any]:
        shape = tf.constant(images.shape[1:3], tf.int32)

        def warp(x: Any, interpolation: str) -> Any:
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=x, transforms=transforms, output_shape=shape, fill_value=0.0,
                interpolation=interpolation, fill_mode="REFLECT")

        return warp(tf.cast(images, tf.float32), "BILINEAR"), warp(tf.cast(labels, tf.float32), "NEAREST")

    rng = np.random.default_rng(0)
    cases = []
    for height, width in SIZES:
        images = tf.constant(rng.integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8))
        labels = tf.constant(rng.integers(0, 3, (args.batch, height, width, 1), dtype=np.uint8))
        for name, (degrees, scale, mirror) in CASES.items():
            t = tf.constant([transform(height, width, degrees, scale, mirror)] * args.batch, tf.float32)
            ours_img, ours_lab = warp_batch(images, labels, t)
            ref_img, ref_lab = kernel(images, labels, t)
            diff = float(tf.reduce_max(tf.abs(ours_img - ref_img))) / 255.0
            labels_differ = float(tf.reduce_mean(tf.cast(tf.cast(ours_lab, tf.float32) != ref_lab, tf.float32)))
            cases.append({"height": height, "width": width, "transform": name,
                          "max_abs_diff_on_0_1": float(f"{diff:.2e}"), "label_pixels_differ": labels_differ})
            log(f"{height}x{width} {name}: max |diff| {diff:.1e}, labels differ {labels_differ:.4f}")

    # CPU per image of each on a 160x160 batch (compiled / warmed up first).
    images = tf.constant(rng.integers(0, 256, (args.batch, 160, 160, 3), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, 3, (args.batch, 160, 160, 1), dtype=np.uint8))
    t = tf.constant([transform(160, 160, 30.0, 1.2, False)] * args.batch, tf.float32)
    cost = {}
    for name, fn in (("xla_gather_warp", warp_batch), ("ImageProjectiveTransformV3", kernel)):
        fn(images, labels, t)[0].numpy()
        times = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            fn(images, labels, t)[0].numpy()
            times.append(1000 * (time.process_time() - c0) / args.batch)
        cost[name] = r(median(times), 3)
    worst = max(c["max_abs_diff_on_0_1"] for c in cases)
    emit({
        "benchmark": "warp_check",
        "what": "segpipe.data.augment.warp_batch against tf.raw_ops.ImageProjectiveTransformV3 (REFLECT fill, "
                "bilinear images, nearest labels), same uint8 inputs and transforms",
        "cases": cases,
        "max_abs_diff_on_0_1": worst,
        "labels_identical": all(c["label_pixels_differ"] == 0 for c in cases),
        "cpu_ms_per_image_160": cost,
        "cpu_ratio_kernel_over_xla": r(cost["ImageProjectiveTransformV3"] / cost["xla_gather_warp"], 2),
        "versions": library_versions(),
        **machine.provenance(config_note="runs no PipelineConfig: the warp function against the kernel on "
                                         "fixed transforms (cases)"),
    }, args.out)


if __name__ == "__main__":
    main()
