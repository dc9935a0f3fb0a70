"""The tf.data input pipeline: decode, resize, augment, batch.

    train_ds = training_dataset(dataset_dir, img_size=128, batch_size=8, augment=True, seed=42)
    val_ds = eval_dataset(dataset_dir, "val", img_size=128, batch_size=8)

Elements are `(images, labels)`: images float32 in [0, 1] of shape (B, S, S, 3),
labels int32 in {0, 1, 2} (= trimap - 1) of shape (B, S, S, 1).

Augmentation uses stateless random ops only. Each example gets its own seed
from `tf.data.Dataset.random(seed)`, so the same `seed` gives the same batches,
and image and mask always go through the very same geometric transform
(bilinear for the image, nearest for the mask, so no new label values appear).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import tensorflow as tf

from segpipe.fsutil import read_json
from segpipe.layout import MANIFEST

AUTOTUNE = tf.data.AUTOTUNE
NUM_CLASSES = 3


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
    flip_seed, scale_seed, offset_seed, angle_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    limit = max_rotation_degrees * math.pi / 180.0
    angle = tf.random.stateless_uniform([], angle_seed, -limit, limit) if limit > 0 else tf.constant(0.0)
    scale = tf.random.stateless_uniform([], scale_seed, 1.0, max_scale) if max_scale > 1 else tf.constant(1.0)
    # Crop offset in the enlarged image, so the crop stays inside it.
    span = tf.constant([width - 1.0, height - 1.0])
    ox, oy = tf.unstack(tf.random.stateless_uniform([2], offset_seed) * span * (scale - 1.0))
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    a = tf.stack([cos, -sin, cx - (cos * cx - sin * cy) + ox]) / scale
    b = tf.stack([sin, cos, cy - (sin * cx + cos * cy) + oy]) / scale
    if flip:
        mirror = tf.random.stateless_uniform([], flip_seed) < 0.5
        a = tf.where(mirror, tf.stack([-a[0], -a[1], (width - 1.0) - a[2]]), a)
    return tf.reshape(tf.concat([a, b, [0.0, 0.0]], 0), [1, 8])


def _warp(x: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[tf.newaxis], transforms=transform, output_shape=tf.shape(x)[:2],
        fill_value=0.0, interpolation=interpolation, fill_mode="REFLECT",
    )[0]


def _color_jitter(image: tf.Tensor, seed: tf.Tensor, brightness: float, contrast: float) -> tf.Tensor:
    brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if brightness > 0:
        image = tf.image.stateless_random_brightness(image, brightness, brightness_seed)
    if contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1.0 - contrast, 1.0 + contrast, contrast_seed)
    return tf.clip_by_value(image, 0.0, 1.0)


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
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, scale-and-crop, rotation (image and label alike) and brightness/contrast (image only).

    `image` is float32 (H, W, 3) in [0, 1], `label` int32 (H, W, 1); `seed` is a
    shape-[2] int32/int64 tensor, and the same seed gives the same output. The
    geometric part is one warp applied to both: bilinear for the image, nearest
    for the label (no new label values), reflect fill at the borders.
    `flip=False`, `max_scale=1`, `max_rotation_degrees=0`, `brightness=0`,
    `contrast=0` turn the respective step off.
    """
    if max_scale < 1.0 or max_rotation_degrees < 0 or brightness < 0 or not 0 <= contrast < 1:
        raise ValueError(
            "augment expects max_scale >= 1, max_rotation_degrees >= 0, brightness >= 0 and 0 <= contrast < 1; "
            f"got {max_scale}, {max_rotation_degrees}, {brightness}, {contrast}"
        )
    if image.shape.rank != 3 or label.shape.rank != 3 or image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"augment expects image (H, W, 3) and label (H, W, 1) of one size; got {image.shape}, {label.shape}"
        )
    geo_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if flip or max_scale > 1 or max_rotation_degrees > 0:
        height, width = image.shape[0], image.shape[1]
        if height is None or width is None:
            raise ValueError(f"augment needs a static image size, got {image.shape}")
        transform = geometric_transform(
            geo_seed, height, width, flip=flip, max_scale=max_scale, max_rotation_degrees=max_rotation_degrees
        )
        image, label = _warp(image, transform, "BILINEAR"), _warp(label, transform, "NEAREST")
    return _color_jitter(image, color_seed, brightness, contrast), label


_augment = augment  # `training_dataset` has a flag of the same name


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
) -> tf.data.Dataset:
    """Shuffled (and optionally augmented) batches of `split` for `Model.fit`.

    With `cache` (the default) examples are decoded and resized once, kept in
    memory as uint8, then reshuffled and re-augmented every epoch: batches are
    then fully determined by `seed`. Without `cache` every epoch re-reads the
    shards in a shuffled order, and records interleave as they arrive (faster,
    not bit-reproducible). `repeat=True` makes it endless (for `steps_per_epoch`).
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
    ds = ds.map(_to_model_inputs, num_parallel_calls=AUTOTUNE)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _augment(pair[0], pair[1], s), num_parallel_calls=AUTOTUNE
        )
    return ds.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)


def eval_dataset(
    dataset_dir: str | os.PathLike[str], split: str, *, img_size: int, batch_size: int
) -> tf.data.Dataset:
    """Batches of `split` in file order: no shuffling, no augmentation."""
    from segpipe.data.tfrecords import read_examples

    _check_sizes(img_size=img_size, batch_size=batch_size)
    ds = _read(read_examples(dataset_dir, split, shuffle_files=False), dataset_dir, split)
    ds = ds.map(lambda ex: preprocess(ex, img_size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def _read(ds: tf.data.Dataset, dataset_dir: str | os.PathLike[str], split: str) -> tf.data.Dataset:
    """Declare the manifest's example count (Keras then knows the epoch length; a mismatch fails loudly)."""
    return ds.apply(tf.data.experimental.assert_cardinality(num_examples(dataset_dir, split)))


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
