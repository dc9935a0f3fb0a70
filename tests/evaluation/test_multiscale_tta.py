"""Multi-scale test-time augmentation (`eval.tta_sizes`): evaluate, the gallery's predictions, `segpipe predict`
in this process and in a preloaded child all predict the same masks for the same image, and the setting is
recorded where the scores and masks are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe import predict
from segpipe.evaluation import evaluate as evaluation
from segpipe.evaluation.ensemble import load_models, model_sizes, scaled_inputs, tta_members
from segpipe.fsutil import read_json
from tests.synthetic import split_as_pngs, write_tiny_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny U-Net taking 32x32 (random weights: a non-constant map), a dataset, and its test images as PNGs."""
    import keras

    from segpipe.models import build_model

    root = tmp_path_factory.mktemp("mstta")
    keras.utils.set_random_seed(3)
    model = root / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(model)
    dataset = write_tiny_dataset(root / "ds", {"train": 2, "val": 2, "test": 5}, height=45, width=61)
    pngs = root / "pngs"
    ids = split_as_pngs(dataset, "test", pngs)
    return {"model": model, "dataset": dataset, "pngs": pngs, "ids": ids}


def test_tta_members_add_the_model_at_each_other_size(setup):
    (model,) = load_models([setup["model"]])
    members = tta_members([model], [64, 32, 64, 48])
    assert members[0] is model and model_sizes(members) == [(32, 32), (64, 64), (48, 48)]  # own size once


def test_scaled_inputs_come_from_the_largest_size():
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    got = scaled_inputs(image, [(32, 32), (64, 64)])
    top = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (64, 64), antialias=True)), 0, 255), tf.uint8)
    np.testing.assert_array_equal(got[(64, 64)], np.asarray(evaluation.resize_image(image, (64, 64))))
    np.testing.assert_array_equal(got[(32, 32)], np.asarray(evaluation.resize_image(top, (32, 32))))
    np.testing.assert_array_equal(scaled_inputs(image, [(32, 32)])[(32, 32)],
                                  np.asarray(evaluation.resize_image(image, (32, 32))))


def test_evaluate_records_the_sizes_and_they_change_the_prediction(setup):
    model, dataset, ids = setup["model"], setup["dataset"], setup["ids"]
    plain = evaluation.evaluate([model], dataset, "test", flip=True)
    multi = evaluation.evaluate([model], dataset, "test", flip=True, tta_sizes=[64])
    own = evaluation.evaluate([model], dataset, "test", flip=True, tta_sizes=[32])  # the model's own size
    assert (plain.metrics["tta_sizes"], multi.metrics["tta_sizes"]) == ([], [64])
    assert own.metrics["confusion_matrix"] == plain.metrics["confusion_matrix"]
    assert multi.metrics["confusion_matrix"] != plain.metrics["confusion_matrix"]
    assert multi.metrics["at_model_resolution"]["img_size"] == [32, 32]  # scored at the model's own size
    assert not any("different input sizes" in w for w in multi.metrics["warnings"])  # one model, not an ensemble
    items = evaluation.collect_items([model], dataset, "test", ids, flip=True, tta_sizes=[64])
    assert [it["id"] for it in items] == ids


@pytest.mark.slow  # starts a child that imports TensorFlow
def test_evaluate_predict_and_a_preloaded_child_agree_mask_for_mask(setup, tmp_path):
    from segpipe.preload import preloaded, take

    model, dataset, ids, pngs = setup["model"], setup["dataset"], setup["ids"], setup["pngs"]
    items = {it["id"]: it["pred"] for it in
             evaluation.collect_items([model], dataset, "test", ids, flip=True, tta_sizes=[64])}
    here = predict.predict_paths([model], [pngs], tmp_path / "here", overlay=False, flip=True, tta_sizes=[64])
    summary = read_json(here.summary)
    assert summary["tta"] == {"flip": True, "sizes": [64]} and summary["img_size"] == [[32, 32], [64, 64]]
    with preloaded([model], flip=True, tta_sizes=[64]) as child:
        assert take([model], flip=True) is None  # another TTA setting: not this child
        assert take([model], flip=True, tta_sizes=[64]) is child
        there = predict.predict_paths([model], [pngs], tmp_path / "child", overlay=False, flip=True, tta_sizes=[64])
    plain = predict.predict_paths([model], [pngs], tmp_path / "plain", overlay=False, flip=True)
    differs = 0
    for i in ids:
        want = items[i] + 1
        for out in ("here", "child"):
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / out / f"{i}_mask.png")), want)
        differs += int((np.asarray(Image.open(tmp_path / "plain" / f"{i}_mask.png")) != want).any())
    assert len(there.written) == len(here.written) == len(ids) and len(plain.written) == len(ids)
    assert differs > 0  # the sizes changed some mask: the comparison above is not vacuous


def test_the_gallery_predicts_with_the_sizes_and_shows_them(setup, tmp_path):
    model, dataset = setup["model"], setup["dataset"]
    scores = evaluation.evaluate([model], dataset, "test", flip=True, tta_sizes=[64])
    index = evaluation.render_evaluation_gallery(
        [model], dataset, "test", tmp_path / "gallery", n_sample=2, n_worst=1, seed=0, per_image=scores.per_image,
        metrics=scores.metrics, flip=True, tta_sizes=[64])
    page = index.read_text()
    assert "<tr><th>tta_sizes</th><td class='num'>64</td></tr>" in page
    worst = min(scores.per_image, key=lambda r: r["iou"])
    assert f"{worst['iou']:.4f}" in page  # the gallery's IoU is the one evaluate scored with the same sizes
