"""Tests for segpipe.evaluation.evaluate with hand-built models whose predictions are known exactly.

Synthetic images encode their trimap in colour (pet red, background green,
border blue, in blocks aligned to the resize factors), and a 1x1 Conv2D with
hand-set weights maps colour to class: a "perfect" model. Constant-output
models (zero kernel, bias = log p) give known probabilities for ensembles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import keras
import tensorflow as tf

from segpipe.evaluation import evaluate as evaluation  # noqa: E402
from segpipe.fsutil import read_json, sha256_file  # noqa: E402
from segpipe.evaluation.metrics import confusion_matrix  # noqa: E402
from tests.synthetic import write_tiny_dataset  # noqa: E402

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)  # pet, background, border
# Original (height, width) of the test images. Band edges fall on model-pixel edges and the scale is
# <= 2 per axis, so bilinear resizing keeps every pixel's majority colour (at larger scales the pixels at
# band corners legitimately flip); the last image is one plain colour, exact at any scale.
SIZES = [(64, 64), (32, 32), (64, 48), (48, 80), (120, 90)]
PLAIN = (120, 90)
MODEL = 32
TOP_KEYS = {"pixel_accuracy", "mean_iou", "iou", "dice", "foreground_iou", "confusion_matrix", "n_images",
            "mean_iou_no_border", "dice_per_class", "predicted_class_share", "collapsed", "resolution"}


def trimap(h: int, w: int) -> np.ndarray:
    """Background frame, border ring, pet centre; each band h/8 x w/8 thick (trimap values 1..3).

    A `PLAIN` size is background only.
    """
    bh, bw = h // 8, w // 8
    t = np.full((h, w), 2, np.uint8)
    if (h, w) == PLAIN:
        return t
    t[bh:h - bh, bw:w - bw] = 3
    t[2 * bh:h - 2 * bh, 2 * bw:w - 2 * bw] = 1
    return t


def colour_coded(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, trimap) of `trimap(h, w)`, each pixel in its class's colour: what the perfect model reads exactly."""
    t = trimap(h, w)
    return COLOURS[t - 1], t


def conv_model(size: int, kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(3, 1, name="logits")
    outputs = keras.layers.Activation("softmax", dtype="float32")(conv(inputs))
    conv.set_weights([kernel.reshape(1, 1, 3, 3).astype(np.float32), bias.astype(np.float32)])
    return keras.Model(inputs, outputs)


def save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def perfect_model(size: int = MODEL) -> keras.Model:
    """Red -> pet, green -> background, blue -> border, with a sharp softmax."""
    return conv_model(size, 20.0 * np.eye(3), np.zeros(3))


def constant_model(probs: tuple[float, float, float], size: int = MODEL) -> keras.Model:
    """Outputs `probs` at every pixel, whatever the image."""
    return conv_model(size, np.zeros((3, 3)), np.log(np.maximum(probs, 1e-7)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "ds", {"test": SIZES, "val": [], "train": [(32, 32)]},
                              key="ds-test", draw=colour_coded)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    from segpipe.models import build_model

    return {
        "perfect": save(perfect_model(), d / "perfect.keras"),
        "background": save(constant_model((0.0, 1.0, 0.0)), d / "background.keras"),
        "a": save(constant_model((0.6, 0.4, 0.0)), d / "a.keras"),
        "b16": save(constant_model((0.0, 0.45, 0.55), size=16), d / "b16.keras"),
        "unet": save(build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2), d / "unet.keras"),
    }


def truths() -> list[np.ndarray]:
    return [trimap(h, w).astype(np.int64) - 1 for h, w in SIZES]


def test_perfect_model_scores_one_at_both_resolutions(dataset, models):
    result = evaluation.evaluate([models["perfect"]], dataset, "test", batch_size=3)
    m = result.metrics
    assert TOP_KEYS <= set(m) and {"at_model_resolution", "split", "models", "dataset_key", "warnings"} <= set(m)
    assert m["resolution"] == "original" and m["n_images"] == len(SIZES)
    assert m["pixel_accuracy"] == 1.0 and m["mean_iou"] == 1.0 and m["dice"] == 1.0
    assert m["iou"] == {"pet": 1.0, "background": 1.0, "border": 1.0}
    assert m["foreground_iou"] == 1.0 and m["mean_iou_no_border"] == 1.0 and m["collapsed"] is False
    # Original resolution: the confusion matrix is the diagonal of the original trimaps' class counts.
    counts = np.bincount(np.concatenate([t.ravel() for t in truths()]), minlength=3)
    assert m["confusion_matrix"] == np.diag(counts).tolist()
    assert m["n_pixels"] == sum(h * w for h, w in SIZES)

    at_model = m["at_model_resolution"]
    assert TOP_KEYS <= set(at_model) and at_model["resolution"] == "model" and at_model["img_size"] == [MODEL, MODEL]
    assert at_model["pixel_accuracy"] == 1.0 and at_model["mean_iou"] == 1.0
    assert at_model["n_pixels"] == len(SIZES) * MODEL * MODEL and at_model["n_images"] == len(SIZES)

    assert m["split"] == "test" and m["dataset_key"] == "ds-test" and m["warnings"] == []
    assert m["models"] == [{"path": str(models["perfect"].resolve()), "sha256": sha256_file(models["perfect"])}]
    assert result.per_image == [{"id": f"test_{i}", "iou": 1.0} for i in range(len(SIZES))]
    assert result.items == []


def test_always_background_model_is_flagged_collapsed(dataset, models):
    m = evaluation.evaluate([models["background"]], dataset, "test").metrics
    t = np.concatenate([x.ravel() for x in truths()])
    bg_share = float(np.mean(t == 1))
    assert m["collapsed"] is True and m["at_model_resolution"]["collapsed"] is True
    assert m["predicted_class_share"] == {"pet": 0.0, "background": 1.0, "border": 0.0}
    assert m["foreground_iou"] == 0.0 and m["iou"]["pet"] == 0.0 and m["iou"]["border"] == 0.0
    assert m["iou"]["background"] == pytest.approx(bg_share) and m["pixel_accuracy"] == pytest.approx(bg_share)
    assert m["confusion_matrix"] == confusion_matrix(t, np.ones_like(t)).tolist()
    assert len(m["warnings"]) == 1
    assert m["warnings"][0].startswith("predictions collapsed to one class: background 100.0% of pixels")
    assert "BatchNormalization" in m["warnings"][0]
    assert f"> **Warning:** {m['warnings'][0]}" in evaluation.metrics_markdown(m)


def test_ensemble_averages_softmax_across_input_sizes(dataset, models):
    members = evaluation.load_models([models["a"], models["b16"]])
    assert [evaluation.input_size(x) for x in members] == [(32, 32), (16, 16)]
    images = np.random.default_rng(0).random((2, 24, 40, 3)).astype(np.float32)
    probs = evaluation.predict_probs(members, images)
    assert probs.shape == (2, 24, 40, 3)
    np.testing.assert_allclose(probs, np.broadcast_to([0.3, 0.425, 0.275], probs.shape), atol=1e-5)

    # Alone, a predicts pet and b border everywhere; their average predicts background.
    alone = evaluation.evaluate([models["a"]], dataset, "test").metrics
    assert alone["predicted_class_share"]["pet"] == 1.0
    m = evaluation.evaluate([models["a"], models["b16"]], dataset, "test").metrics
    assert m["predicted_class_share"] == {"pet": 0.0, "background": 1.0, "border": 0.0}
    assert [x["path"] for x in m["models"]] == [str(models["a"].resolve()), str(models["b16"].resolve())]
    assert m["at_model_resolution"]["img_size"] == [32, 32]
    assert any("different input sizes" in w for w in m["warnings"])


def test_flip_tta_averages_the_mirrored_prediction(dataset, models):
    unet = evaluation.load_models([models["unet"]])
    x = np.random.default_rng(1).random((2, 32, 32, 3)).astype(np.float32)
    plain = evaluation.predict_probs(unet, x)
    mirrored = evaluation.predict_probs(unet, x[:, :, ::-1])
    tta = evaluation.predict_probs(unet, x, flip=True)
    np.testing.assert_allclose(tta, 0.5 * (plain + mirrored[:, :, ::-1]), atol=1e-6)
    assert np.abs(tta - plain).max() > 1e-4  # a random U-Net is not mirror-symmetric, so TTA changes it
    # the averaged prediction is mirror-equivariant: mirroring the input mirrors the output
    np.testing.assert_allclose(evaluation.predict_probs(unet, x[:, :, ::-1], flip=True), tta[:, :, ::-1], atol=1e-6)

    m = evaluation.evaluate([models["unet"]], dataset, "test", flip=True).metrics
    assert m["tta"] == "flip" and evaluation.evaluate([models["unet"]], dataset, "test").metrics["tta"] is None
    # a model that is already symmetric scores the same with and without TTA
    assert evaluation.evaluate([models["perfect"]], dataset, "test", flip=True).metrics["mean_iou"] == 1.0


def test_gallery_items_kept_only_for_selected_ids(dataset, models):
    result = evaluation.evaluate([models["perfect"]], dataset, "test", keep_for_gallery=lambda i: i == "test_2")
    assert [it["id"] for it in result.items] == ["test_2"]
    item = result.items[0]
    h, w = SIZES[2]
    assert item["image"].shape == (h, w, 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"], COLOURS[trimap(h, w) - 1])
    np.testing.assert_array_equal(item["truth"], trimap(h, w) - 1)
    np.testing.assert_array_equal(item["pred"], item["truth"])
    assert item["iou"] == 1.0


def test_collect_items_and_render_gallery(dataset, models, tmp_path):
    items = evaluation.collect_items([models["background"]], dataset, "test", ["test_3", "test_0"])
    assert [it["id"] for it in items] == ["test_3", "test_0"]
    assert items[0]["truth"].shape == SIZES[3] and (items[0]["pred"] == 1).all()
    with pytest.raises(ValueError, match="nope"):
        evaluation.collect_items([models["perfect"]], dataset, "test", ["test_0", "nope"])

    per_image = [{"id": f"test_{i}", "iou": iou} for i, iou in enumerate([0.9, 0.2, 0.7, 0.5])]
    index = evaluation.render_evaluation_gallery(
        [models["perfect"]], dataset, "test", tmp_path / "gallery", n_sample=1, n_worst=2, seed=0,
        per_image=per_image, metrics={"pixel_accuracy": 1.0})
    assert index == tmp_path / "gallery" / "index.html" and index.is_file()
    listed = json.loads((tmp_path / "gallery" / "items.json").read_text())["items"]
    assert [(x["id"], x["tag"]) for x in listed[:2]] == [("test_1", "worst"), ("test_3", "worst")]
    assert len(listed) == 3 and listed[2]["tag"] == "sample" and listed[2]["id"] in {"test_0", "test_2"}
    assert all(x["iou"] == 1.0 for x in listed)  # the IoU of the prediction shown
    assert all((tmp_path / "gallery" / x["tile"]).is_file() for x in listed)


def test_tiny_unet_runs_and_metrics_are_consistent(dataset, models, tmp_path):
    result = evaluation.evaluate([models["unet"]], dataset, "test", batch_size=2)
    m = result.metrics
    for section in (m, m["at_model_resolution"]):
        assert 0.0 <= section["pixel_accuracy"] <= 1.0
        assert sum(map(sum, section["confusion_matrix"])) == section["n_pixels"]
        assert sum(section["predicted_class_share"].values()) == pytest.approx(1.0)
    assert m["n_pixels"] == sum(h * w for h, w in SIZES)
    assert [p["id"] for p in result.per_image] == [f"test_{i}" for i in range(len(SIZES))]

    out = evaluation.write_metrics(result, tmp_path / "run" / "metrics.json")
    assert read_json(out) == json.loads(json.dumps(m))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    per_image = evaluation.write_per_image(result.per_image, tmp_path / "run" / "per_image.json")
    assert read_json(per_image) == result.per_image
    text = evaluation.metrics_markdown(m)
    assert "At original resolution (headline)" in text and "At model resolution (32x32)" in text
    assert f"| pixel accuracy | {m['pixel_accuracy']:.4f} |" in text
    assert f"| pixel accuracy | {m['at_model_resolution']['pixel_accuracy']:.4f} |" in text


def test_resize_matches_training_preprocessing():
    from segpipe.data.input import preprocess

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = rng.integers(1, 4, (50, 70, 1), dtype=np.uint8)
    expected, _ = preprocess({"image": tf.constant(image), "mask": tf.constant(mask)}, 32)
    np.testing.assert_array_equal(evaluation.resize_image(image, (32, 32)).numpy(), expected.numpy())


def test_clear_errors(dataset, models, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        evaluation.load_models([models["perfect"], tmp_path / "missing.keras"])
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.keras"):
        evaluation.load_models([junk])
    with pytest.raises(ValueError, match="at least one model"):
        evaluation.load_models([])
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        evaluation.evaluate([models["perfect"]], tmp_path, "test")
    with pytest.raises(ValueError, match="'val' .* is empty"):
        evaluation.evaluate([models["perfect"]], dataset, "val")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        evaluation.evaluate([models["perfect"]], dataset, "dev")
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.evaluate([models["perfect"]], dataset, "test", batch_size=0)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        evaluation.predict_probs(evaluation.load_models([models["perfect"]]), np.zeros((4, 4, 3)))
