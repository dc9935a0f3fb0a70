"""TFRecord shards, manifest and readers, checked with plain tf.data against the source files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import tensorflow as tf

from segpipe.data.split import make_split  # noqa: E402
from segpipe.data.tfrecords import (  # noqa: E402
    ShardInfo,
    count_records,
    plan_shards,
    read_examples,
    shard_files,
    verify_dataset,
    write_manifest,
    write_shard,
    write_split_shards,
)
from segpipe.data.images import to_rgb  # noqa: E402
from segpipe.data.validate import validate_dataset  # noqa: E402
from tests.synthetic import make_pets_tree  # noqa: E402

TARGET_BYTES = 4000  # a couple of 48x40 examples per shard
# The documented spec (segpipe/data/spec.py), spelled out so the check does not depend on segpipe's reader.
FEATURES = {
    **{k: tf.io.FixedLenFeature([], tf.string) for k in ("image/encoded", "image/format", "image/id",
                                                        "image/breed", "mask/encoded")},
    **{k: tf.io.FixedLenFeature([], tf.int64) for k in ("image/height", "image/width", "image/class_id",
                                                       "image/species", "image/breed_id")},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tree = make_pets_tree(tmp_path_factory.mktemp("pets"))
    report = validate_dataset(tree.images_dir, tree.annotations_dir)
    examples = {e.id: e for e in report.examples}
    split = make_split(list(examples), {i: e.lists for i, e in examples.items()}, mode="official",
                       val_fraction=0.25, test_fraction=0.1, seed=1)
    out = tmp_path_factory.mktemp("dataset")
    shards = {
        name: write_split_shards([examples[i] for i in split[name]], name, out,
                                 target_shard_bytes=TARGET_BYTES, workers=2)
        for name in ("train", "val", "test")
    }
    archives = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}
    write_manifest(out, dataset_key="k1", archives=archives, parameters={"seed": 1},
                   shards=shards, validation_summary=report.summary())
    return tree, examples, split, shards, out


def plain_read(files):
    """Every record of `files`, parsed with tf.io only."""
    out = {}
    for raw in tf.data.TFRecordDataset(files):
        f = tf.io.parse_single_example(raw, FEATURES)
        out[f["image/id"].numpy().decode()] = {k: v.numpy() for k, v in f.items()}
    return out


def test_shards_are_named_and_split(built):
    _, _, split, shards, out = built
    for name, infos in shards.items():
        assert len(infos) >= 2, name
        n = len(infos)
        assert [s.file for s in infos] == [f"{name}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
        assert sum(s.num_examples for s in infos) == len(split[name])
    names = sorted(p.name for p in out.iterdir())
    assert all(re.fullmatch(r"(train|val|test)-\d{5}-of-\d{5}\.tfrecord|manifest\.json", n) for n in names)


def test_plain_tf_data_reads_back_the_sources(built):
    tree, examples, split, shards, out = built
    for name, infos in shards.items():
        records = plain_read([str(out / s.file) for s in infos])
        assert sorted(records) == sorted(split[name])
        for image_id, r in records.items():
            e = examples[image_id]
            assert (r["image/height"], r["image/width"]) == (40, 48) == (e.height, e.width)
            assert (r["image/class_id"], r["image/species"], r["image/breed_id"]) == (
                e.class_id, e.species, e.breed_id)
            assert r["image/breed"].decode() == e.breed
            assert r["image/format"].decode() == tree.formats[image_id]
            source = Image.open(e.image_path)
            if tree.formats[image_id] == "jpeg":
                assert r["image/encoded"] == e.image_path.read_bytes()
                expected = np.asarray(source.convert("RGB"))
                decoded = tf.io.decode_jpeg(r["image/encoded"], channels=3).numpy()
                assert np.abs(decoded.astype(int) - expected).mean() < 2  # libjpeg builds may differ by 1
            else:
                expected = np.asarray(to_rgb(source))
                if source.mode in ("RGBA", "P", "CMYK", "L"):
                    np.testing.assert_array_equal(expected, np.asarray(source.convert("RGB")))
                np.testing.assert_array_equal(tf.io.decode_png(r["image/encoded"], channels=3).numpy(), expected)
            mask = tf.io.decode_png(r["mask/encoded"]).numpy()
            assert mask.shape == (40, 48, 1)
            assert set(np.unique(mask)) <= {1, 2, 3}
            np.testing.assert_array_equal(mask[..., 0], np.asarray(Image.open(e.trimap_path)))


def test_converted_kinds_are_in_the_shards(built):
    tree, _, split, _, _ = built
    stored = set(split["train"] + split["val"] + split["test"])
    listed_converted = {i for i in tree.converted if i in stored}
    assert listed_converted == {tree.kinds[k] for k in ("png_rgba", "cmyk_jpeg", "grayscale_jpeg", "png16")}


def test_read_examples_matches_plain_read(built):
    _, examples, split, shards, out = built
    files = shard_files(out, "train")
    assert files == [str(out / s.file) for s in shards["train"]]
    plain = plain_read(files)
    seen = []
    for d in read_examples(out, "train"):
        image_id = d["id"].numpy().decode()
        seen.append(image_id)
        img = d["image"].numpy()
        assert img.shape == (40, 48, 3) and img.dtype == np.uint8
        fmt = plain[image_id]["image/format"].decode()
        expected = tf.io.decode_image(plain[image_id]["image/encoded"], channels=3).numpy()
        np.testing.assert_array_equal(img, expected, err_msg=f"{image_id} ({fmt})")
        np.testing.assert_array_equal(d["mask"].numpy()[..., 0], np.asarray(Image.open(examples[image_id].trimap_path)))
    assert sorted(seen) == sorted(split["train"])
    again = [d["id"].numpy().decode() for d in read_examples(out, "train")]
    assert again == seen  # deterministic without shuffling
    shuffled = [d["id"].numpy().decode() for d in read_examples(out, "train", shuffle_files=True, seed=3)]
    assert sorted(shuffled) == sorted(seen)


def test_manifest_matches_files(built):
    _, _, split, _, out = built
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset_key"] == "k1" and m["parameters"] == {"seed": 1}
    assert m["archives"]["images.tar.gz"] == "a" * 64
    assert m["validation"]["counts"]["valid"] == 24 and "examples" not in m["validation"]
    assert m["created_at"].endswith("+00:00") and m["code_version"].startswith(m["segpipe_version"])
    assert "image/encoded" in m["feature_spec"] and m["spec_version"] == 1
    assert m["num_examples"] == sum(len(split[k]) for k in ("train", "val", "test"))
    for name, info in m["splits"].items():
        assert info["num_examples"] == len(split[name])
        for s in info["shards"]:
            data = (out / s["file"]).read_bytes()
            assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)
            assert s["num_examples"] == count_records(out / s["file"])
            assert s["num_examples"] == sum(1 for _ in tf.data.TFRecordDataset(str(out / s["file"])))


def test_verify_detects_corruption(built, tmp_path):
    _, _, _, shards, out = built
    assert verify_dataset(out) == []
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = copy / shards["val"][0].file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    (copy / shards["test"][1].file).unlink()
    problems = verify_dataset(copy)
    assert any(shards["val"][0].file in p and "sha256" in p for p in problems)
    assert any(shards["test"][1].file in p and "missing" in p for p in problems)
    assert len(problems) == 2
    (copy / "manifest.json").unlink()
    assert "no manifest.json" in verify_dataset(copy)[0]


def test_failed_shard_leaves_nothing(tmp_path):
    tree = make_pets_tree(tmp_path / "src", n_per_breed=1, include_odd=False)
    good = validate_dataset(tree.images_dir, tree.annotations_dir).examples
    good[-1].image_path.unlink()
    with pytest.raises(FileNotFoundError):
        write_shard(good, tmp_path / "out" / "train-00000-of-00001.tfrecord")
    assert list((tmp_path / "out").iterdir()) == []
    info = write_shard(good[:2], tmp_path / "out" / "val-00000-of-00001.tfrecord")
    assert (info.split, info.num_examples) == ("val", 2)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [info.file]


def test_plan_shards(built):
    _, examples, _, _, _ = built
    ex = list(examples.values())
    assert plan_shards([], 100) == []
    assert plan_shards(ex, 10**9) == [ex]
    assert plan_shards(ex, 1) == [[e] for e in ex]
    plan = plan_shards(ex, TARGET_BYTES)
    assert [e for shard in plan for e in shard] == ex and all(plan)
    assert 2 <= len(plan) < len(ex)
    with pytest.raises(ValueError, match="target_shard_bytes must be > 0"):
        plan_shards(ex, 0)


def test_errors(built, tmp_path):
    _, _, _, shards, out = built
    with pytest.raises(FileNotFoundError, match="not a complete dataset: no manifest.json"):
        read_examples(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'.*test, train, val"):
        shard_files(out, "dev")
    with pytest.raises(ValueError, match="split name"):
        write_split_shards([], "train-1", tmp_path, target_shard_bytes=10)
    missing = {"train": [ShardInfo("train-00000-of-00001.tfrecord", "train", 1, "0" * 64, 10)]}
    with pytest.raises(FileNotFoundError, match="not writing the manifest"):
        write_manifest(tmp_path, dataset_key="k", archives={}, parameters={}, shards=missing, validation_summary={})
    assert not (tmp_path / "manifest.json").exists()
