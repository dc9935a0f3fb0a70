"""The tf.data input pipeline: decode, resize, augment, batch.

    train_ds = training_dataset(dataset_dir, img_size=128, batch_size=8, augment=True, seed=42)
    val_ds = eval_dataset(dataset_dir, "val", img_size=128, batch_size=8)

Elements are `(images, labels)`: images float32 in [0, 1] of shape (B, S, S, 3),
labels int32 in {0, 1, 2} (= trimap - 1) of shape (B, S, S, 1).

Augmentation uses stateless random ops only. Each batch gets its own seed
from `tf.data.Dataset.random(seed)` and each example in it its own random
transform, so the same `seed` gives the same batches, and image and mask
always go through the very same geometric transform (bilinear for the image,
nearest for the mask, so no new label values appear). Batches are augmented
whole, in one XLA-compiled warp (see benchmarks/input_pipeline.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf

from segpipe.fsutil import read_json
from segpipe.layout import MANIFEST

AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------- manifest


def num_examples(dataset_dir: str | os.PathLike[str], split: str) -> int:
    """Number of examples in `split` according to the dataset's manifest.json."""
    manifest_path = Path(dataset_dir) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"dataset_dir {dataset_dir}: no {MANIFEST}; expected a prepared dataset directory")
    splits = read_json(manifest_path).get("splits", {})
    if split not in splits:
        raise ValueError(f"split {split!r} is not in {manifest_path}; expected one of {sorted(splits)}")
    return int(splits[split]["num_examples"])


# --------------------------------------------------------------------------- preprocessing


def _resize_uint8(example: dict[str, Any], img_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Image resized bilinear (antialiased) and rounded back to uint8; trimap resized nearest."""
    image = tf.image.resize(example["image"], [img_size, img_size], method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    mask = tf.image.resize(example["mask"], [img_size, img_size], method="nearest")
    return tf.ensure_shape(image, [img_size, img_size, 3]), tf.ensure_shape(mask, [img_size, img_size, 1])


def _to_model_inputs(image: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 image -> float32 in [0, 1]; trimap 1..3 -> int32 labels 0..2."""
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.int32) - 1


def preprocess(example: dict[str, Any], img_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A parsed example -> (image float32 [0,1] (S,S,3), label int32 (S,S,1) in 0..2).

    The image is resized bilinear with antialiasing, the mask nearest-neighbour,
    and labels are trimap - 1 (0 pet, 1 background, 2 border).
    """
    return _to_model_inputs(*_resize_uint8(example, img_size))


# --------------------------------------------------------------------------- augmentation


def _affine_transforms(
    u: tf.Tensor, height: int, width: int, *, flip: bool, max_scale: float, max_rotation_degrees: float
) -> tf.Tensor:
    """(B, 8) projective transforms from (B, >=4) uniforms in [0, 1): columns flip, scale, offset x, offset y, angle."""
    limit = max_rotation_degrees * math.pi / 180.0
    angle = (2.0 * u[:, 4] - 1.0) * limit
    scale = 1.0 + u[:, 1] * (max_scale - 1.0)
    # Crop offset in the enlarged image, so the crop stays inside it.
    ox, oy = u[:, 2] * (width - 1.0) * (scale - 1.0), u[:, 3] * (height - 1.0) * (scale - 1.0)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    a = tf.stack([cos, -sin, cx - (cos * cx - sin * cy) + ox], axis=1) / scale[:, None]
    b = tf.stack([sin, cos, cy - (sin * cx + cos * cy) + oy], axis=1) / scale[:, None]
    if flip:
        mirror = (u[:, 0] < 0.5)[:, None]
        a = tf.where(mirror, tf.stack([-a[:, 0], -a[:, 1], (width - 1.0) - a[:, 2]], axis=1), a)
    return tf.concat([a, b, tf.zeros_like(a[:, :2])], axis=1)


def geometric_transform(
    seed: tf.Tensor, height: int, width: int, *, flip: bool, max_scale: float, max_rotation_degrees: float
) -> tf.Tensor:
    """A random (1, 8) projective transform: rotate, zoom in and crop, then maybe mirror, as ONE warp.

    It maps each output pixel (x, y) to the input point (a0 x + a1 y + a2, b0 x + b1 y + b2)
    (the `ImageProjectiveTransformV3` convention). Equivalent to: resize up by a
    scale in [1, max_scale], crop back to height x width at a random offset,
    rotate by an angle in +-max_rotation_degrees about the centre, and flip
    left-right with probability 1/2; composed so each pixel is interpolated once.
    """
    u = tf.random.stateless_uniform([1, 5], seed)
    return _affine_transforms(u, height, width, flip=flip, max_scale=max_scale,
                              max_rotation_degrees=max_rotation_degrees)


def _reflect(coord: tf.Tensor, size: int) -> tf.Tensor:
    """Fold a coordinate into [0, size - 1] by mirroring at the borders (dcba|abcd|dcba), as the TF kernel does."""
    coord = tf.math.floormod(coord, 2.0 * size)
    coord = tf.where(coord > size - 1.0, 2.0 * size - 1.0 - coord, coord)
    return tf.clip_by_value(coord, 0.0, size - 1.0)


@tf.function(jit_compile=True)
def _warp_batch(images: tf.Tensor, labels: tf.Tensor, transforms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Warp (B, H, W, C) images bilinear (to float32) and (B, H, W, 1) labels nearest by (B, 8) affine transforms.

    The same result as `tf.raw_ops.ImageProjectiveTransformV3` with fill_mode REFLECT
    (to float32 rounding), written as gathers and compiled with XLA: one fused pass
    over the batch, the source coordinates computed once for image and label, and
    uint8 pixels read as they are cached (about 5x less CPU than the kernel per image).
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    t = transforms[:, :, None, None]
    sx = _reflect(t[:, 0] * xs + t[:, 1] * ys + t[:, 2], width)
    sy = _reflect(t[:, 3] * xs + t[:, 4] * ys + t[:, 5], height)
    first = tf.reshape(tf.range(tf.shape(images)[0]) * (height * width), [-1, 1, 1])  # flat index of (b, 0, 0)
    pixels, label_pixels = tf.reshape(images, [-1, channels]), tf.reshape(labels, [-1])

    def at(y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(pixels, first + y * width + x), tf.float32)

    def nearest(c: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.floor(c + 0.5), tf.int32)  # round half up, as the kernel does

    out_labels = tf.gather(label_pixels, first + nearest(sy) * width + nearest(sx))[..., None]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx
    return top * (1.0 - fy) + bottom * fy, out_labels


@tf.function(jit_compile=True)
def _color_jitter_batch(images: tf.Tensor, delta: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Per image: add `delta` (brightness), scale about the per-channel mean by `factor` (contrast), clip to [0, 1]."""
    images = images + delta[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * factor[:, None, None, None] + mean, 0.0, 1.0)


@tf.function(jit_compile=True)
def _hue_saturation_batch(images: tf.Tensor, angle: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Per image: rotate the hue by `angle` (radians) and scale the saturation by `factor`, clip to [0, 1].

    Both act on the chroma plane (I, Q) of YIQ, which leaves the luma alone;
    a factor of 0 gives the grey image.
    """
    yiq = tf.image.rgb_to_yiq(images)
    y, i, q = yiq[..., 0], yiq[..., 1], yiq[..., 2]
    cos = (tf.cos(angle) * factor)[:, None, None]
    sin = (tf.sin(angle) * factor)[:, None, None]
    rotated = tf.stack([y, i * cos - q * sin, i * sin + q * cos], axis=-1)
    return tf.clip_by_value(tf.image.yiq_to_rgb(rotated), 0.0, 1.0)


def augment_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip: bool = True,
    max_scale: float = 1.25,
    max_rotation_degrees: float = 10.0,
    brightness: float = 0.1,
    contrast: float = 0.2,
    hue: float = 0.0,
    saturation: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """`augment` for a batch, with one shape-[2] `seed`; returns float32 images in [0, 1] and labels as given.

    `images` (B, H, W, 3) are float32 in [0, 1] or uint8 (0..255, scaled here);
    `labels` (B, H, W, 1) are any integer type. Every image gets its own random
    transform and colour jitter (drawn from `seed`); the whole batch is warped in
    one XLA-compiled call.
    """
    if (max_scale < 1.0 or max_rotation_degrees < 0 or brightness < 0 or not 0 <= contrast < 1
            or not 0 <= hue <= 180 or not 0 <= saturation <= 1):
        raise ValueError(
            "augment expects max_scale >= 1, max_rotation_degrees >= 0, brightness >= 0, 0 <= contrast < 1, "
            f"0 <= hue <= 180 and 0 <= saturation <= 1; got {max_scale}, {max_rotation_degrees}, {brightness}, "
            f"{contrast}, {hue}, {saturation}"
        )
    if images.shape.rank != 4 or labels.shape.rank != 4 or images.shape[1:3] != labels.shape[1:3]:
        raise ValueError(
            f"augment expects image (H, W, 3) and label (H, W, 1) of one size; got {images.shape}, {labels.shape}"
        )
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"augment needs a static image size, got {images.shape}")
    if images.dtype not in (tf.uint8, tf.float32):
        raise ValueError(f"augment expects float32 images in [0, 1] or uint8 images, got {images.dtype}")
    was_uint8 = images.dtype == tf.uint8
    # Columns: flip, scale, offset x, offset y, angle, brightness, contrast.
    u = tf.random.stateless_uniform([tf.shape(images)[0], 7], seed)
    if flip or max_scale > 1 or max_rotation_degrees > 0:
        transforms = _affine_transforms(u, height, width, flip=flip, max_scale=max_scale,
                                        max_rotation_degrees=max_rotation_degrees)
        images, labels = _warp_batch(images, labels, transforms)  # float32, same scale as the input
    images = tf.cast(images, tf.float32) / 255.0 if was_uint8 else tf.cast(images, tf.float32)
    if brightness > 0 or contrast > 0:
        delta = (2.0 * u[:, 5] - 1.0) * brightness
        factor = 1.0 + (2.0 * u[:, 6] - 1.0) * contrast
        images = _color_jitter_batch(images, delta, factor)
    if hue > 0 or saturation > 0:
        # A stream of its own (seed + 1), so enabling this leaves the draws above as they were.
        v = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed + tf.constant([0, 1], seed.dtype))
        angle = (2.0 * v[:, 0] - 1.0) * (hue * math.pi / 180.0)
        images = _hue_saturation_batch(images, angle, 1.0 + (2.0 * v[:, 1] - 1.0) * saturation)
    return images, labels


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip: bool = True,
    max_scale: float = 1.25,
    max_rotation_degrees: float = 10.0,
    brightness: float = 0.1,
    contrast: float = 0.2,
    hue: float = 0.0,
    saturation: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, scale-and-crop, rotation (image and label alike), brightness/contrast and hue/saturation
    (image only).

    `image` is float32 (H, W, 3) in [0, 1], `label` int32 (H, W, 1); `seed` is a
    shape-[2] int32/int64 tensor, and the same seed gives the same output. The
    geometric part is one warp applied to both: bilinear for the image, nearest
    for the label (no new label values), reflect fill at the borders.
    `hue` rotates the hue by up to +- that many degrees, `saturation` scales it
    within 1 +- that (1: down to grey). `flip=False`, `max_scale=1`,
    `max_rotation_degrees=0`, `brightness=0`, `contrast=0`, `hue=0`,
    `saturation=0` turn the respective step off. (A batch of one for `augment_batch`.)
    """
    if image.shape.rank != 3 or label.shape.rank != 3:
        raise ValueError(
            f"augment expects image (H, W, 3) and label (H, W, 1) of one size; got {image.shape}, {label.shape}"
        )
    images, labels = augment_batch(
        image[tf.newaxis], label[tf.newaxis], seed, flip=flip, max_scale=max_scale,
        max_rotation_degrees=max_rotation_degrees, brightness=brightness, contrast=contrast, hue=hue,
        saturation=saturation,
    )
    return images[0], labels[0]


# --------------------------------------------------------------------------- datasets


def training_dataset(
    dataset_dir: str | os.PathLike[str],
    *,
    img_size: int,
    batch_size: int,
    augment: bool,
    seed: int,
    shuffle_buffer: int = 512,
    split: str = "train",
    cache: bool = True,
    repeat: bool = False,
    augment_options: Mapping[str, float] | None = None,
) -> tf.data.Dataset:
    """Shuffled (and optionally augmented) batches of `split` for `Model.fit`.

    With `cache` (the default) examples are decoded and resized once, kept in
    memory as uint8, then reshuffled and re-augmented every epoch: batches are
    then fully determined by `seed`. Without `cache` every epoch re-reads the
    shards in a shuffled order, and records interleave as they arrive (faster,
    not bit-reproducible). `repeat=True` makes it endless (for `steps_per_epoch`).
    `batch_size` is the global batch: under a distribution strategy Keras splits each batch among the
    replicas and workers.
    `augment_options` (max_scale, max_rotation_degrees, brightness, contrast, hue, saturation) override
    `augment_batch`'s defaults.
    """
    from segpipe.data.tfrecords import read_examples

    _check_sizes(img_size=img_size, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
    # Split lists are shuffled when written, so shard order only matters when not caching.
    ds = _read(read_examples(dataset_dir, split, shuffle_files=not cache, seed=seed), dataset_dir, split)
    ds = ds.map(lambda ex: _resize_uint8(ex, img_size), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # Batch the uint8 examples first, then convert and augment whole batches (vectorised: far fewer,
    # larger ops; see benchmarks/input_pipeline.py).
    ds = ds.batch(batch_size, drop_remainder=False)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        options = dict(augment_options or {})
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: _augmented_batch(batch, s, options), num_parallel_calls=AUTOTUNE
        )
    else:
        ds = ds.map(_to_model_inputs, num_parallel_calls=AUTOTUNE)
    return _shard_by_data(ds.prefetch(AUTOTUNE))


def _augmented_batch(
    batch: tuple[tf.Tensor, tf.Tensor], seed: tf.Tensor, options: Mapping[str, float]
) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 images and trimaps -> augmented float32 images in [0, 1] and int32 labels 0..2."""
    images, masks = augment_batch(batch[0], batch[1], seed, **options)
    return images, tf.cast(masks, tf.int32) - 1


def eval_dataset(
    dataset_dir: str | os.PathLike[str], split: str, *, img_size: int, batch_size: int
) -> tf.data.Dataset:
    """Batches of `split` in file order: no shuffling, no augmentation."""
    from segpipe.data.tfrecords import read_examples

    _check_sizes(img_size=img_size, batch_size=batch_size)
    ds = _read(read_examples(dataset_dir, split, shuffle_files=False), dataset_dir, split)
    ds = ds.map(lambda ex: preprocess(ex, img_size), num_parallel_calls=AUTOTUNE)
    return _shard_by_data(ds.batch(batch_size).prefetch(AUTOTUNE))


def _shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """With several workers (MultiWorkerMirroredStrategy), each runs the whole pipeline and keeps its own
    part of every (global) batch, so the workers together train on exactly the batches one process would.

    Sharding by file (TensorFlow's default) would fail with fewer shard files than workers, and give the
    workers differently shuffled streams. Without a multi-worker strategy this option does nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _read(ds: tf.data.Dataset, dataset_dir: str | os.PathLike[str], split: str) -> tf.data.Dataset:
    """Declare the manifest's example count (Keras then knows the epoch length; a mismatch fails loudly)."""
    return ds.apply(tf.data.experimental.assert_cardinality(num_examples(dataset_dir, split)))


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
