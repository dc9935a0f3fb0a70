"""The border band (`segpipe.evaluation.band`): its pixels in numpy and in the SavedModel's graph, the band
saved inside a `.keras` file, its calibration on validation, and `train.border_band` in the config and in a
tiny training run. Evaluate, predict and export drawing the same masks: tests/export/test_export.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import write_tiny_dataset

SIZE = 64
RING = 4  # pixels: the synthetic border ring's width, 62.5 thousandths of the 64-pixel side


def ring_example(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A red disc 'pet' on a blue background, its border a RING-pixel ring drawn in the background's blue:
    nothing in the image shows the border, only the outline's geometry does."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
    radius = rng.uniform(0.18, 0.28) * min(height, width)
    d = np.hypot(yy - cy, xx - cx)
    trimap = np.where(d < radius, 1, np.where(d < radius + RING, 3, 2)).astype(np.uint8)
    image = np.where((trimap == 1)[..., None], [200, 60, 40], [40, 80, 200]) + rng.normal(0, 8, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def colour_model():
    """A hand-set 1x1 convolution: red is pet, blue is background, border never (its logit is fixed low)."""
    import keras

    image = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(3, 1, activation="softmax", name="colour")
    out = conv(image)
    conv.set_weights([np.array([[[[12.0, -12.0, 0.0], [0.0, 0.0, 0.0], [-12.0, 12.0, 0.0]]]], np.float32),
                      np.array([0.0, 0.0, -6.0], np.float32)])
    return keras.Model(image, out, name="colour")


@pytest.fixture(scope="module")
def ring_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("ring"), {"train": 2, "val": 6, "test": 3},
                              height=SIZE, width=SIZE, draw=ring_example)


# --------------------------------------------------------------------------- the pixels


@pytest.mark.parametrize("radius", [1, 2, 5, 9])
def test_disk_counts_count_the_pixels_of_each_disk(radius):
    from segpipe.export.runtime import disk_counts

    rng = np.random.default_rng(radius)
    mask = rng.random((23, 31)) > 0.7
    ys, xs = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = ys ** 2 + xs ** 2 <= radius ** 2
    padded = np.pad(mask, radius)  # outside the image counts as none
    want = np.array([[(padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1] & disk).sum() for j in range(31)]
                     for i in range(23)])
    np.testing.assert_array_equal(disk_counts(mask, radius), want)


def test_band_labels_draw_the_band_around_the_outline():
    from segpipe.export.runtime import band_labels, band_radius

    probs = np.zeros((50, 100, 3), np.float32)
    probs[..., 1] = 1.0
    probs[20:30, 40:60] = [0.6, 0.1, 0.3]   # a 10 x 20 pet
    assert band_radius(20, (50, 100)) == 2  # 2% of the longer side, 100
    labels = band_labels(probs, (0, 20))
    assert (labels[20:30, 40:60] == 0).all()                     # the pet keeps its pixels
    assert (labels[18:20, 40:60] == 2).all() and labels[17, 50] == 1   # 2 px of border outside it
    assert labels[20, 39] == 2 and labels[20, 37] == 1
    inner = band_labels(probs, (20, 0))
    assert (inner[20:22, 45] == 2).all() and inner[22, 45] == 0 and inner[19, 45] == 1


def test_the_saved_models_graph_draws_the_same_pixels_as_numpy():
    import tensorflow as tf

    from segpipe.export.graph import band_labels_graph
    from segpipe.export.runtime import band_labels

    rng = np.random.default_rng(0)
    for shape in ((45, 61), (203, 150)):
        logits = tf.image.resize(rng.normal(0, 3, (1, 8, 8, 3)).astype(np.float32), shape)[0]
        probs = tf.nn.softmax(logits).numpy()
        for band in ((0, 16), (8, 24), (40, 0)):
            want = band_labels(probs, band)
            assert (want == 2).any()
            np.testing.assert_array_equal(band_labels_graph(tf.constant(probs), band).numpy(), want)


# --------------------------------------------------------------------------- inside the model file


def test_a_band_is_saved_inside_the_model_and_replaced_not_stacked(tmp_path):
    import keras

    from segpipe.evaluation.band import band_of, save_with_band
    from segpipe.evaluation.ensemble import load_models
    from segpipe.fsutil import sha256_file

    path = tmp_path / "model.keras"
    model = colour_model()
    model.save(path)
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    save_with_band(path, (8, 24))
    loaded = load_models([path])[0]
    assert band_of(loaded) == (8, 24)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))  # the identity
    save_with_band(path, (0, 16))
    again = load_models([path])[0]
    assert band_of(again) == (0, 16) and len(again.layers) == len(loaded.layers)
    digest = sha256_file(path)
    save_with_band(path, (0, 16))                          # the band it carries already: the file is untouched
    assert sha256_file(path) == digest
    save_with_band(path, None)
    assert band_of(load_models([path])[0]) is None
    assert not [p for p in tmp_path.iterdir() if p.name != "model.keras"]  # no temporary file left
    assert isinstance(keras.saving.load_model(path, compile=False), keras.Model)


@pytest.mark.parametrize("band", [(0, 0), (-1, 8), (8, 251), (1.5, 8), "wide", (8,)])
def test_a_bad_band_gets_a_clear_error(band):
    from segpipe.evaluation.band import check_band

    with pytest.raises(ValueError, match=r"border band must be two whole widths \(inner, outer\) in 0\.\.250"):
        check_band(band)


def test_a_band_layer_with_bad_widths_is_refused():
    from segpipe.models.layers import BorderBand

    with pytest.raises(ValueError, match=r"BorderBand: inner and outer must be widths in 0\.\.250"):
        BorderBand(0, 0)
    with pytest.raises(ValueError, match=r"BorderBand"):
        BorderBand(-4, 16)


def test_a_bad_band_file_beside_an_export_gets_a_clear_error(tmp_path):
    from segpipe.export.runtime import BAND_FILE, read_band

    assert read_band(tmp_path) is None
    (tmp_path / BAND_FILE).write_text(json.dumps({"band": [0, 24]}))
    assert read_band(tmp_path) == (0, 24)
    (tmp_path / BAND_FILE).write_text(json.dumps({"band": [0, 0]}))
    with pytest.raises(ValueError, match=r"border_band\.json must hold \{\"band\": \[inner, outer\]\}"):
        read_band(tmp_path)


# --------------------------------------------------------------------------- calibration


def test_calibration_finds_the_ring_the_model_cannot_see(ring_dataset):
    from segpipe.evaluation.band import calibrate_band

    result = calibrate_band([colour_model()], ring_dataset, grid=(0, 31, 62, 94))
    assert result.n_images == 6 and result.split == "val"
    assert result.argmax["border_iou"] == 0.0          # the model never predicts the border
    assert result.band == (0, 62)                      # the ring: 4 px outside the disc, of a 64 px side
    assert result.chosen["border_iou"] > 0.7 and result.chosen["mean_iou"] > result.argmax["mean_iou"] + 0.2
    best = max(result.candidates, key=lambda c: c["mean_iou"])
    assert best["band"] == [0, 62] and best["mean_iou"] == result.chosen["mean_iou"]
    assert len(result.candidates) == 15                # 4 x 4 widths, less (0, 0): the argmax
    capped = calibrate_band([colour_model()], ring_dataset, grid=(0, 62), max_images=2)
    assert capped.n_images == 2 and capped.band == (0, 62)


def test_calibration_keeps_the_argmax_when_no_band_beats_it(tmp_path):
    """On the ellipses of tests/synthetic.py the border is drawn in its own colour: a model that sees it
    beats every band, and the calibration keeps the argmax."""
    import keras

    from segpipe.evaluation.band import calibrate_band

    dataset = write_tiny_dataset(tmp_path / "ds", {"train": 2, "val": 4}, height=SIZE, width=SIZE)
    image = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(3, 1, activation="softmax")
    model = keras.Model(image, conv(image))
    # the three colours of synthetic_example: pet (200, 60, 40), background (40, 80, 200), border (120, 70, 120)
    centres = np.array([[200, 60, 40], [40, 80, 200], [120, 70, 120]], np.float32) / 255.0
    weights = 40.0 * centres.T                                  # logit_k = 40 (c_k . x) - 20 |c_k|^2
    conv.set_weights([weights[None, None], (-20.0 * (centres ** 2).sum(axis=1)).astype(np.float32)])
    result = calibrate_band([model], dataset, grid=(0, 20, 40))
    assert result.band is None
    assert result.argmax["border_iou"] > 0.9
    assert all(c["mean_iou"] < result.argmax["mean_iou"] for c in result.candidates)


# --------------------------------------------------------------------------- the config and a training run


def test_border_band_is_a_typed_config_choice():
    from segpipe.config import ConfigError, build_config

    assert build_config("cpu-quick").train.border_band == "argmax"
    assert build_config("tiny", {"train": {"border_band": "calibrated"}}).train.border_band == "calibrated"
    with pytest.raises(ConfigError, match=r"train\.border_band.*'argmax' or 'calibrated'"):
        build_config("tiny", {"train": {"border_band": "wide"}})


def test_border_band_is_part_of_the_run_identity():
    from segpipe.config import build_config
    from segpipe.runs.naming import run_id_for

    plain = build_config("tiny", {"train": {"epochs": 1}})
    banded = build_config("tiny", {"train": {"epochs": 1, "border_band": "calibrated"}})
    assert run_id_for(plain, "ds", "code") != run_id_for(banded, "ds", "code")


def test_the_train_and_evaluate_code_keys_cover_the_band():
    from segpipe.codekeys import module_closure

    for entry in ("segpipe.training.loop", "segpipe.evaluation.evaluate", "segpipe.predict",
                  "segpipe.export.exporter"):
        closure = module_closure([entry])
        assert "segpipe.evaluation.band" in closure and "segpipe.export.runtime" in closure, entry


@pytest.mark.slow
def test_a_tiny_run_with_a_calibrated_band_trains_and_saves_its_choice(ring_dataset, tmp_path):
    from segpipe.config import build_config
    from segpipe.evaluation.band import band_of
    from segpipe.evaluation.ensemble import load_models
    from segpipe.fsutil import read_json
    from segpipe.training import train

    cfg = build_config("tiny", {"train": {"epochs": 1, "batch_size": 2, "img_size": 32, "border_band": "calibrated"}})
    result = train(cfg, ring_dataset, tmp_path / "run", verbose=0)
    summary = read_json(result.run_dir / "train_summary.json")
    calibration = summary["border_band"]
    assert calibration["split"] == "val" and calibration["n_images"] == 6
    assert len(calibration["candidates"]) == 35  # 6 x 6 widths of GRID, less the argmax
    chosen = None if calibration["band"] is None else tuple(calibration["band"])
    assert band_of(load_models([result.model_path])[0]) == chosen
    best = max([calibration["argmax"]["mean_iou"]] + [c["mean_iou"] for c in calibration["candidates"]])
    assert calibration["chosen"]["mean_iou"] == best
