"""The tf.data input pipeline: decode, resize, augment, batch.

    train_ds = training_dataset(dataset_dir, img_size=128, batch_size=8, augment=True, seed=42)
    val_ds = eval_dataset(dataset_dir, "val", img_size=128, batch_size=8)

Elements are `(images, labels)`: images float32 in [0, 1] of shape (B, S, S, 3),
labels int32 in {0, 1, 2} (= trimap - 1) of shape (B, S, S, 1).

Each training batch gets its own seed from `tf.data.Dataset.random(seed)`
for `segpipe.data.augment.augment_batch` (stateless random ops only), so the
same `seed` gives the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf

from segpipe.data.augment import augment_batch
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
    skip_batches: int = 0,
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
    `skip_batches`: the stream starts after that many batches (their augmentation is never computed), so a
    run resumed after k epochs reads the batches an uninterrupted run reads from epoch k on.
    """
    from segpipe.data.tfrecords import read_examples

    _check_sizes(img_size=img_size, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
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
        ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_batches).map(
            lambda batch, s: _augmented_batch(batch, s, options), num_parallel_calls=AUTOTUNE
        )
    else:
        ds = ds.skip(skip_batches).map(_to_model_inputs, num_parallel_calls=AUTOTUNE)
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
