"""The tf.data input pipeline: preprocessing, augmentation alignment and determinism, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tensorflow as tf

from segpipe.data.augment import hue_saturation_batch, augment, geometric_transform  # noqa: E402
from segpipe.data.input import eval_dataset, num_examples, preprocess, training_dataset  # noqa: E402
from segpipe.data.spec import parse_example  # noqa: E402
from tests.synthetic import synthetic_example  # noqa: E402

# --------------------------------------------------------------------------- preprocess


def test_preprocess_resizes_scales_and_shifts_labels() -> None:
    rng = np.random.default_rng(1)
    image, trimap = synthetic_example(rng, 50, 70)
    example = {"image": tf.constant(image), "mask": tf.constant(trimap[..., None])}
    x, y = preprocess(example, 32)
    assert x.shape == (32, 32, 3) and x.dtype == tf.float32
    assert y.shape == (32, 32, 1) and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert set(np.unique(y.numpy())) == {0, 1, 2}  # trimap 1..3 -> 0..2, all three present
    # Nearest-neighbour for the mask: every output label is the trimap value of some input pixel - 1.
    expected = tf.image.resize(trimap[..., None], [32, 32], method="nearest").numpy().astype(np.int32) - 1
    np.testing.assert_array_equal(y.numpy(), expected)
    # Corner pixels are background (reddish pet in the middle, blue background): channel 2 dominates.
    assert x.numpy()[0, 0, 2] > x.numpy()[0, 0, 0]


def test_preprocess_of_a_parsed_record_matches_the_source(tiny_dataset: Path) -> None:
    raw = next(iter(tf.data.TFRecordDataset(str(tiny_dataset / "val-00000-of-00001.tfrecord"))))
    example = parse_example(raw)
    x, y = preprocess(example, 48)
    # 40x48 -> 48x48 only stretches rows; labels are still exactly the trimap values minus one.
    assert set(np.unique(y.numpy())) <= {0, 1, 2}
    expected = tf.image.resize(example["mask"], [48, 48], "nearest").numpy().astype(np.int32) - 1
    np.testing.assert_array_equal(y.numpy(), expected)
    assert abs(float(tf.reduce_mean(x)) - float(tf.reduce_mean(tf.cast(example["image"], tf.float32))) / 255) < 0.01


# --------------------------------------------------------------------------- augment


def _label_coloured(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A label map of blocks and stripes, and an image whose colour is the one-hot of the label."""
    label = np.ones((size, size, 1), np.int32)
    label[10:34, 8:30] = 0
    label[8:10, 8:30] = 2
    label[34:36, 8:30] = 2
    label[:, 40:44] = 2
    return np.eye(3, dtype=np.float32)[label[..., 0]], label


def test_augment_keeps_image_and_mask_aligned() -> None:
    image, label = _label_coloured()
    changed = 0
    for i in range(40):
        x, y = augment(tf.constant(image), tf.constant(label), tf.constant([i, 3]), brightness=0.0, contrast=0.0)
        x, y = x.numpy(), y.numpy()
        assert x.shape == image.shape and y.shape == label.shape and y.dtype == np.int32
        assert set(np.unique(y)) <= {0, 1, 2}  # nearest: no new label values
        agree = np.mean(np.argmax(x, axis=-1) == y[..., 0])
        assert agree >= 0.97, f"seed {i}: only {agree:.3f} of pixels agree"
        changed += not np.array_equal(y, label)
    assert changed >= 35  # the transforms really do something


def test_augment_disagreements_only_at_label_edges() -> None:
    image, label = _label_coloured()
    for i in range(20):
        x, y = augment(tf.constant(image), tf.constant(label), tf.constant([7, i]), brightness=0.0, contrast=0.0)
        y = y.numpy()[..., 0]
        wrong = np.argmax(x.numpy(), axis=-1) != y
        padded = np.pad(y, 1, mode="edge")
        windows = np.stack([padded[1 + dy:49 + dy, 1 + dx:49 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        edge = windows.min(axis=0) != windows.max(axis=0)
        assert not np.any(wrong & ~edge)


def test_pure_flip_is_exact() -> None:
    image, label = _label_coloured()
    rng = np.random.default_rng(0)
    photo = rng.uniform(size=image.shape).astype(np.float32)
    flipped = 0
    for i in range(20):
        x, y = augment(tf.constant(photo), tf.constant(label), tf.constant([i, 0]),
                       max_scale=1.0, max_rotation_degrees=0.0, brightness=0.0, contrast=0.0)
        x, y = x.numpy(), y.numpy()
        if np.array_equal(y, label):
            np.testing.assert_allclose(x, photo, atol=1e-6)
        else:
            np.testing.assert_array_equal(y, label[:, ::-1])
            np.testing.assert_allclose(x, photo[:, ::-1], atol=1e-6)
            flipped += 1
    assert 3 <= flipped <= 17


def test_geometric_transform_ranges() -> None:
    """Scale within [1, 1.25] and rotation within +-10 degrees, read back from the matrix."""
    for i in range(50):
        a0, a1, _, b0, b1, _, c0, c1 = geometric_transform(
            tf.constant([i, 1]), 32, 32, flip=False, max_scale=1.25, max_rotation_degrees=10.0
        ).numpy()[0]
        inv_scale = float(np.hypot(a0, b0))
        angle = np.degrees(np.arctan2(b0, a0))
        assert 1 / 1.25 - 1e-6 <= inv_scale <= 1 + 1e-6
        assert abs(angle) <= 10 + 1e-4
        assert abs(a1 + b0) < 1e-6 and abs(a0 - b1) < 1e-6 and c0 == c1 == 0


def test_colour_jitter_changes_image_only_and_stays_in_range() -> None:
    image, label = _label_coloured()
    x, y = augment(tf.constant(image * 0.5 + 0.25), tf.constant(label), tf.constant([1, 2]),
                   flip=False, max_scale=1.0, max_rotation_degrees=0.0, brightness=0.1, contrast=0.2)
    np.testing.assert_array_equal(y.numpy(), label)
    assert not np.allclose(x.numpy(), image * 0.5 + 0.25)
    assert 0.0 <= x.numpy().min() and x.numpy().max() <= 1.0


def test_hue_and_saturation_jitter_keep_luma_and_mask_and_leave_the_other_draws_alone() -> None:
    image, label = _label_coloured()
    photo = image * 0.5 + 0.25
    off = {"flip": False, "max_scale": 1.0, "max_rotation_degrees": 0.0, "brightness": 0.0, "contrast": 0.0}
    x, y = augment(tf.constant(photo), tf.constant(label), tf.constant([1, 2]), hue=40.0, saturation=0.8, **off)
    np.testing.assert_array_equal(y.numpy(), label)
    assert not np.allclose(x.numpy(), photo, atol=1e-3) and 0.0 <= x.numpy().min() and x.numpy().max() <= 1.0
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    inside = (photo.min(-1) > 0.3) & (photo.max(-1) < 0.7)  # far from clipping: luma is kept exactly
    np.testing.assert_allclose((x.numpy() @ luma)[inside], (photo @ luma)[inside], atol=1e-4)
    grey = hue_saturation_batch(tf.constant(photo[None]), tf.constant([0.7]), tf.constant([0.0]))[0].numpy()
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-5)  # factor 0: grey
    np.testing.assert_allclose(grey @ luma, photo @ luma, atol=1e-4)
    same = hue_saturation_batch(tf.constant(photo[None]), tf.constant([0.0]), tf.constant([1.0]))[0].numpy()
    np.testing.assert_allclose(same, photo, atol=1e-4)  # identity (YIQ round trip)
    # Enabled or not, the geometric and brightness/contrast draws for a seed are the same.
    a, la = augment(tf.constant(photo), tf.constant(label), tf.constant([3, 4]))
    b, lb = augment(tf.constant(photo), tf.constant(label), tf.constant([3, 4]), hue=0.0, saturation=0.0)
    c, lc = augment(tf.constant(photo), tf.constant(label), tf.constant([3, 4]), hue=30.0, saturation=0.5)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(la.numpy(), lc.numpy())
    with pytest.raises(ValueError, match="saturation"):
        augment(tf.constant(photo), tf.constant(label), tf.constant([0, 0]), saturation=2.0)


def test_augment_is_deterministic_by_seed() -> None:
    image, label = _label_coloured()
    a = augment(tf.constant(image), tf.constant(label), tf.constant([5, 6]))
    b = augment(tf.constant(image), tf.constant(label), tf.constant([5, 6]))
    c = augment(tf.constant(image), tf.constant(label), tf.constant([5, 7]))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_augment_rejects_bad_arguments() -> None:
    image, label = _label_coloured()
    with pytest.raises(ValueError, match="max_scale"):
        augment(tf.constant(image), tf.constant(label), tf.constant([0, 0]), max_scale=0.5)
    with pytest.raises(ValueError, match="one size"):
        augment(tf.constant(image), tf.constant(label[:10]), tf.constant([0, 0]))


# --------------------------------------------------------------------------- datasets


def _batches(ds: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_num_examples_from_manifest(tiny_dataset: Path, tmp_path: Path) -> None:
    assert num_examples(tiny_dataset, "train") == 12
    assert num_examples(tiny_dataset, "val") == 4
    with pytest.raises(ValueError, match="split 'test'"):
        num_examples(tiny_dataset, "test")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        num_examples(tmp_path, "train")


def test_training_dataset_batches_and_shapes(tiny_dataset: Path) -> None:
    batches = _batches(training_dataset(tiny_dataset, img_size=32, batch_size=5, augment=True, seed=1))
    assert [x.shape for x, _ in batches] == [(5, 32, 32, 3), (5, 32, 32, 3), (2, 32, 32, 3)]
    assert [y.shape for _, y in batches] == [(5, 32, 32, 1), (5, 32, 32, 1), (2, 32, 32, 1)]
    labels = np.concatenate([y for _, y in batches])
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}
    images = np.concatenate([x for x, _ in batches])
    assert images.dtype == np.float32 and 0.0 <= images.min() and images.max() <= 1.0


def test_training_dataset_is_deterministic_by_seed_and_varies_by_epoch(tiny_dataset: Path) -> None:
    kwargs = dict(img_size=32, batch_size=4, augment=True)
    ds_a = training_dataset(tiny_dataset, seed=7, **kwargs)
    ds_b = training_dataset(tiny_dataset, seed=7, **kwargs)
    epoch1_a, epoch1_b = _batches(ds_a), _batches(ds_b)
    for (xa, ya), (xb, yb) in zip(epoch1_a, epoch1_b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_seed = _batches(training_dataset(tiny_dataset, seed=8, **kwargs))
    assert not np.array_equal(epoch1_a[0][0], other_seed[0][0])
    epoch2_a = _batches(ds_a)  # a new epoch: reshuffled and re-augmented
    assert not np.array_equal(epoch1_a[0][0], epoch2_a[0][0])


def test_training_dataset_without_augment_is_a_permutation_of_eval(tiny_dataset: Path) -> None:
    train = _batches(training_dataset(tiny_dataset, img_size=32, batch_size=4, augment=False, seed=3))
    evals = _batches(eval_dataset(tiny_dataset, "train", img_size=32, batch_size=4))
    key = lambda x: x.reshape(len(x), -1).sum(axis=1)  # noqa: E731
    train_sums = np.sort(np.concatenate([key(x) for x, _ in train]))
    eval_sums = np.sort(np.concatenate([key(x) for x, _ in evals]))
    np.testing.assert_allclose(train_sums, eval_sums, rtol=1e-6)
    # Eval order is the file order, and is stable.
    again = _batches(eval_dataset(tiny_dataset, "train", img_size=32, batch_size=4))
    np.testing.assert_array_equal(evals[0][0], again[0][0])


def test_training_dataset_augment_options_turn_steps_off(tiny_dataset: Path) -> None:
    # Only the flip left on: every training image is an eval image or its mirror, exactly.
    off = {"max_scale": 1.0, "max_rotation_degrees": 0.0, "brightness": 0.0, "contrast": 0.0}
    train = _batches(training_dataset(tiny_dataset, img_size=32, batch_size=4, augment=True, seed=3,
                                      augment_options=off))
    evals = np.concatenate([x for x, _ in _batches(eval_dataset(tiny_dataset, "train", img_size=32, batch_size=4))])
    flipped = 0
    for x in np.concatenate([x for x, _ in train]):
        if any(np.array_equal(x, e) for e in evals):
            continue
        assert any(np.array_equal(x, e[:, ::-1]) for e in evals), "neither an eval image nor its mirror"
        flipped += 1
    assert 0 < flipped < len(evals)
    with pytest.raises(ValueError, match="max_scale"):
        training_dataset(tiny_dataset, img_size=32, batch_size=4, augment=True, seed=0,
                         augment_options={"max_scale": 0.5})


def test_training_dataset_repeat_is_endless(tiny_dataset: Path) -> None:
    ds = training_dataset(tiny_dataset, img_size=32, batch_size=5, augment=False, seed=0, repeat=True)
    assert sum(1 for _ in ds.take(7)) == 7


def test_dataset_builders_reject_bad_sizes(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        training_dataset(tiny_dataset, img_size=32, batch_size=0, augment=False, seed=0)
    with pytest.raises(ValueError, match="img_size"):
        eval_dataset(tiny_dataset, "val", img_size=-1, batch_size=2)


def test_epochs_after_the_first_come_from_the_cache_not_the_shards(tiny_dataset: Path, tmp_path: Path) -> None:
    """What makes later epochs fast: they read the decoded cache, not the shards (the shards are gone here),
    reshuffled and re-augmented. Throughput itself is measured by benchmarks/input_pipeline.py."""
    import shutil

    copy = Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))
    ds = training_dataset(copy, img_size=32, batch_size=4, augment=True, seed=0)
    first = _batches(ds)  # the first epoch fills the cache
    for shard in copy.glob("*.tfrecord"):
        shard.unlink()
    later = [_batches(ds) for _ in range(3)]
    assert [sum(len(x) for x, _ in epoch) for epoch in [first, *later]] == [12] * 4
    assert not np.array_equal(np.concatenate([x for x, _ in first]), np.concatenate([x for x, _ in later[0]]))


def test_skip_batches_continues_the_stream_where_an_uninterrupted_reader_is(tiny_dataset: Path) -> None:
    """A resumed run's stream: after k batches, exactly the batches (examples, augmentation) of the full one."""
    kwargs = dict(img_size=32, batch_size=5, augment=True, seed=3, repeat=True)
    whole = [(x.numpy(), y.numpy()) for x, y in training_dataset(tiny_dataset, **kwargs).take(8)]
    later = [(x.numpy(), y.numpy()) for x, y in training_dataset(tiny_dataset, skip_batches=5, **kwargs).take(3)]
    for (x, y), (x2, y2) in zip(whole[5:], later, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="skip_batches"):
        training_dataset(tiny_dataset, skip_batches=-1, **kwargs)
