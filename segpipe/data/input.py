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


def _flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    do_flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.where(do_flip, tf.reverse(image, axis=[1]), image)
    label = tf.where(do_flip, tf.reverse(label, axis=[1]), label)
    return image, label


def _scale_crop(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, max_scale: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Zoom in by a random factor in [1, max_scale], then crop back to the input size at a random offset."""
    size = tf.shape(image)[:2]
    scale_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    scale = tf.random.stateless_uniform([], scale_seed, 1.0, max_scale)
    new_size = tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32)
    image = tf.image.resize(image, new_size, method="bilinear")
    label = tf.image.resize(label, new_size, method="nearest")
    slack = new_size - size + 1
    offset = tf.cast(
        tf.random.stateless_uniform([2], offset_seed) * tf.cast(slack, tf.float32), tf.int32
    )
    offset = tf.minimum(offset, slack - 1)
    image = tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([size, [-1]], 0))
    label = tf.slice(label, tf.concat([offset, [0]], 0), tf.concat([size, [-1]], 0))
    return image, label


def rotation_transform(angle: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The (1, 8) projective transform rotating an image by `angle` radians about its centre.

    It maps output pixel (x, y) to input pixel (a0 x + a1 y + a2, b0 x + b1 y + b2).
    """
    h, w = tf.cast(height, tf.float32) - 1.0, tf.cast(width, tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    zero = tf.zeros_like(cos)
    return tf.reshape(tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zero, zero]), [1, 8])


def _rotate(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, max_degrees: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate by a random angle in ±max_degrees: image bilinear, label nearest, both reflect-filled."""
    limit = max_degrees * math.pi / 180.0
    angle = tf.random.stateless_uniform([], seed, -limit, limit)
    size = tf.shape(image)[:2]
    transform = rotation_transform(angle, size[0], size[1])

    def warp(x: tf.Tensor, interpolation: str) -> tf.Tensor:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[tf.newaxis], transforms=transform, output_shape=size,
            fill_value=0.0, interpolation=interpolation, fill_mode="REFLECT",
        )[0]

    return warp(image, "BILINEAR"), warp(label, "NEAREST")


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

    `seed` is a shape-[2] int32/int64 tensor; the same seed gives the same output.
    Setting `flip=False`, `max_scale=1`, `max_rotation_degrees=0`, `brightness=0`
    or `contrast=0` turns that step off.
    """
    if max_scale < 1.0:
        raise ValueError(f"max_scale must be >= 1.0, got {max_scale}")
    flip_seed, scale_seed, rotate_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    shape = image.shape
    if flip:
        image, label = _flip(image, label, flip_seed)
    if max_scale > 1.0:
        image, label = _scale_crop(image, label, scale_seed, max_scale)
    if max_rotation_degrees > 0:
        image, label = _rotate(image, label, rotate_seed, max_rotation_degrees)
    image = _color_jitter(image, color_seed, brightness, contrast)
    image.set_shape(shape)
    label.set_shape(label.shape.merge_with(shape[:-1] + [1]))
    return image, label


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

    Examples are decoded and resized once (kept in memory as uint8 when `cache`),
    then reshuffled and re-augmented every epoch; the order and the augmentation
    are fixed by `seed`. `repeat=True` makes it endless (for `steps_per_epoch`).
    """
    from segpipe.data.tfrecords import read_examples

    _check_sizes(img_size=img_size, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
    ds = read_examples(dataset_dir, split, shuffle_files=True, seed=seed)
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
    ds = read_examples(dataset_dir, split, shuffle_files=False)
    ds = ds.map(lambda ex: preprocess(ex, img_size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
