"""Segmentation losses: hand-computed values, class weights, stability, float16, serialisation."""

from __future__ import annotations

import math
import typing

import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.config import TrainConfig
from segpipe.training.losses import (
    LOSS_NAMES,
    CombinedLoss,
    FocalLoss,
    LovaszLoss,
    SoftDiceLoss,
    SparseCategoricalCrossentropy,
    build_loss,
    lovasz_softmax,
    prepare,
    combined_loss,
    focal_loss,
    soft_dice_loss,
    sparse_categorical_crossentropy,
)

# One 2x2 image: two pixels of class 0, one of class 1, one of class 2.
LABELS = np.array([[[0, 0], [1, 2]]], dtype="int32")
UNIFORM = np.full((1, 2, 2, 3), 1 / 3, dtype="float32")
PERFECT = np.eye(3, dtype="float32")[LABELS]


def value(loss, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred)))


def random_batch(seed=0, shape=(2, 8, 8), classes=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, classes)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return rng.integers(0, classes, shape).astype("int32"), probs.astype("float32")


def test_names_match_train_config():
    assert set(typing.get_args(TrainConfig.model_fields["loss"].annotation)) == set(LOSS_NAMES)
    kinds = {"sce": SparseCategoricalCrossentropy, "dice": SoftDiceLoss, "sce+dice": CombinedLoss, "focal": FocalLoss,
             "sce+lovasz": LovaszLoss}
    for name in LOSS_NAMES:
        assert type(build_loss(name)) is kinds[name]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_prediction_gives_zero(name):
    assert value(build_loss(name), LABELS, PERFECT) == pytest.approx(0.0, abs=1e-5)


def test_uniform_prediction_hand_computed():
    assert value(sparse_categorical_crossentropy(), LABELS, UNIFORM) == pytest.approx(math.log(3), rel=1e-6)
    # (1 - p)^gamma * -log p with p = 1/3, gamma = 2
    assert value(focal_loss(2.0), LABELS, UNIFORM) == pytest.approx((2 / 3) ** 2 * math.log(3), rel=1e-6)
    # Dice per class c with n_c pixels: (2 * n_c/3 + 1) / (4/3 + n_c + 1) -> 7/13, 1/2, 1/2.
    assert value(soft_dice_loss(3), LABELS, UNIFORM) == pytest.approx(1 - (7 / 13 + 1 / 2 + 1 / 2) / 3, rel=1e-6)
    # Without smoothing: (2 * n_c/3) / (4/3 + n_c) -> 2/5, 2/7, 2/7.
    dice0 = soft_dice_loss(3, smooth=0.0)
    assert value(dice0, LABELS, UNIFORM) == pytest.approx(1 - (2 / 5 + 4 / 7) / 3, rel=1e-6)
    expected = math.log(3) + 0.5 * (1 - 20 / 39)
    assert value(combined_loss(dice_weight=0.5), LABELS, UNIFORM) == pytest.approx(expected, rel=1e-6)


def test_sce_and_focal_single_pixel_values():
    labels = np.array([[[0, 1]]])
    probs = np.array([[[[0.2, 0.5, 0.3], [0.05, 0.9, 0.05]]]], dtype="float32")
    ce0, ce1 = -math.log(0.2), -math.log(0.9)
    assert value(sparse_categorical_crossentropy(), labels, probs) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    focal = (0.8**2 * ce0 + 0.1**2 * ce1) / 2
    assert value(focal_loss(2.0), labels, probs) == pytest.approx(focal, rel=1e-5)
    # Class weights scale each pixel by the weight of its true class; the mean is not renormalised.
    weighted = (3 * ce0 + 1 * ce1) / 2
    assert value(sparse_categorical_crossentropy((3, 1, 1)), labels, probs) == pytest.approx(weighted, rel=1e-6)


def test_class_weights_move_the_loss_in_the_expected_direction():
    labels, probs = random_batch(1)
    # Make class 0 badly predicted: its pixels get probability 0.05 for the true class.
    probs[labels == 0] = [0.05, 0.5, 0.45]
    for name in ("sce", "focal", "dice", "sce+dice", "sce+lovasz"):
        plain = value(build_loss(name), labels, probs)
        up = value(build_loss(name, class_weights=(5.0, 1.0, 1.0)), labels, probs)
        down = value(build_loss(name, class_weights=(0.2, 1.0, 1.0)), labels, probs)
        assert down < plain < up, name


def test_dice_class_weights_select_classes():
    # Weight only class 0: the loss is 1 - dice_0 = 1 - 7/13 on the uniform prediction.
    assert value(soft_dice_loss(3, class_weights=(1, 0, 0)), LABELS, UNIFORM) == pytest.approx(6 / 13, rel=1e-6)


@pytest.mark.parametrize("weights", [None, (0.5, 2.0, 1.0)])
def test_focal_with_gamma_zero_equals_sce(weights):
    labels, probs = random_batch(2)
    sce = value(sparse_categorical_crossentropy(weights), labels, probs)
    assert value(focal_loss(0.0, weights), labels, probs) == pytest.approx(sce, rel=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_label_shapes_with_and_without_channel_axis_agree(name):
    labels, probs = random_batch(3)
    loss = build_loss(name)
    assert value(loss, labels[..., None], probs) == pytest.approx(value(loss, labels, probs), rel=1e-6)
    assert value(loss, labels.astype("uint8"), probs) == pytest.approx(value(loss, labels, probs), rel=1e-6)


def test_bad_label_shape_is_a_clear_error():
    labels, probs = random_batch(4)
    with pytest.raises(ValueError, match="labels must have shape"):
        build_loss("sce")(labels[:, :, :1, None, None], probs)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float16_predictions_match_float32(name):
    labels, probs = random_batch(5)
    loss = build_loss(name, class_weights=(1.0, 2.0, 0.5))
    got = loss(labels, probs.astype("float16"))
    assert got.dtype == "float32"
    assert float(got) == pytest.approx(value(loss, labels, probs), rel=2e-3)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gradients_are_finite_even_for_saturated_predictions(name, dtype):
    labels, _ = random_batch(6)
    rng = np.random.default_rng(6)
    # Logits of +-60 saturate softmax to exact 0 and 1, wrong for about two thirds of pixels.
    logits = tf.Variable((rng.choice([-60.0, 0.0, 60.0], size=(*labels.shape, 3))).astype(dtype))
    loss = build_loss(name, class_weights=(1.0, 2.0, 3.0))
    with tf.GradientTape() as tape:
        out = loss(labels, tf.nn.softmax(logits))
    grad = tape.gradient(out, logits)
    assert np.isfinite(float(out)) and float(out) > 0
    assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_gradients_point_towards_the_label():
    labels = np.zeros((1, 1, 1), "int32")
    logits = tf.Variable(np.zeros((1, 1, 1, 3), "float32"))
    for name in LOSS_NAMES:
        with tf.GradientTape() as tape:
            out = build_loss(name)(labels, tf.nn.softmax(logits))
        grad = tape.gradient(out, logits).numpy()[0, 0, 0]
        assert grad[0] < 0 and grad[1] > 0 and grad[2] > 0, name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "bce"}, "loss must be one of"),
        ({"name": "sce", "class_weights": (1.0, 2.0)}, "one weight per class"),
        ({"name": "dice", "class_weights": (1.0, -1.0, 1.0)}, "non-negative"),
        ({"name": "focal", "class_weights": (0.0, 0.0, 0.0)}, "positive sum"),
        ({"name": "focal", "focal_gamma": -1.0}, "gamma"),
        ({"name": "sce+dice", "dice_weight": -0.5}, "dice_weight"),
        ({"name": "dice", "num_classes": 1}, "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_loss(name, **kwargs)


def test_weights_for_a_different_number_of_classes_fail_at_call():
    labels, probs = random_batch(7, classes=4)
    with pytest.raises(ValueError, match="class_weights has 3 entries"):
        sparse_categorical_crossentropy((1, 1, 1))(labels, probs)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_serialise_round_trip_keeps_config_and_value(name):
    loss = build_loss(name, class_weights=(1.0, 2.0, 0.5), dice_weight=0.3, focal_gamma=1.5)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    labels, probs = random_batch(8)
    assert value(restored, labels, probs) == pytest.approx(value(loss, labels, probs), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_model_compiled_with_a_segpipe_loss_loads_with_compile_true(tmp_path):
    from segpipe.models import build_model

    model = build_model("unet", (16, 16, 3), 3, base_filters=2, depth=1)
    model.compile("adam", loss=build_loss("sce+dice", dice_weight=0.25, class_weights=(1.0, 1.0, 2.0)))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, CombinedLoss)
    assert loaded.loss.dice_weight == 0.25 and loaded.loss.class_weights == (1.0, 1.0, 2.0)


def lovasz_by_the_paper(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Berman et al.'s reference algorithm, image by image and class by class, in plain numpy loops."""
    out = []
    for image_labels, image_probs in zip(labels, probs):
        per_class = []
        for c in range(image_probs.shape[-1]):
            fg = (image_labels.ravel() == c).astype("float64")
            if fg.sum() == 0:
                continue
            errors = np.abs(fg - image_probs[..., c].ravel().astype("float64"))
            order = np.argsort(-errors, kind="stable")
            gts, jaccard = fg.sum(), []
            for i in range(len(order)):
                seen = fg[order[: i + 1]]
                jaccard.append(1.0 - (gts - seen.sum()) / (gts + (1.0 - seen).sum()))
            grad = np.diff(np.array(jaccard), prepend=0.0)
            per_class.append(float(np.dot(errors[order], grad)))
        out.append(np.mean(per_class))
    return np.array(out)


def test_lovasz_of_hard_predictions_is_one_minus_iou_over_present_classes():
    # Label: class 0 twice, 1 once, 2 once. Prediction: pixel (0, 1) called 1 instead of 0.
    prediction = np.eye(3, dtype="float32")[np.array([[[0, 1], [1, 2]]])]
    labels, probs = prepare(LABELS, prediction, None)
    # IoU: class 0 1/2, class 1 1/2, class 2 1.
    assert float(lovasz_softmax(labels, probs)[0]) == pytest.approx((0.5 + 0.5 + 0.0) / 3, rel=1e-6)
    # Class 2 absent from a label: it is not averaged in, though it is predicted nowhere wrongly either.
    two_classes = np.array([[[0, 0], [1, 1]]], dtype="int32")
    labels, probs = prepare(two_classes, np.eye(3, dtype="float32")[np.array([[[0, 1], [1, 1]]])], None)
    # IoU: class 0 1/2, class 1 2/3.
    assert float(lovasz_softmax(labels, probs)[0]) == pytest.approx((0.5 + 1 / 3) / 2, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_lovasz_matches_the_papers_algorithm_on_soft_predictions(seed):
    labels, probs = random_batch(seed, shape=(3, 5, 6))
    labels[1] = np.where(labels[1] == 2, 0, labels[1])  # one image without class 2
    got = keras.ops.convert_to_numpy(lovasz_softmax(*prepare(labels, probs, None)))
    np.testing.assert_allclose(got, lovasz_by_the_paper(labels, probs), rtol=1e-5)
    # The loss adds the per-image cross-entropy to it.
    ce = -np.log(np.take_along_axis(probs, labels[..., None], -1)[..., 0]).reshape(3, -1).mean(-1)
    assert value(build_loss("sce+lovasz"), labels, probs) == pytest.approx(float((ce + got).mean()), rel=1e-5)


def test_lovasz_class_weights_weight_the_present_classes_mean():
    prediction = np.eye(3, dtype="float32")[np.array([[[0, 1], [1, 2]]])]
    labels, probs = prepare(LABELS, prediction, None)
    # Per class 1/2, 1/2, 0; weights 2, 1, 1 -> (2 * 1/2 + 1/2) / 4.
    got = float(lovasz_softmax(labels, probs, (2.0, 1.0, 1.0))[0])
    assert got == pytest.approx(1.5 / 4, rel=1e-6)


@pytest.mark.slow
def test_a_tiny_run_with_the_lovasz_loss_trains_and_compiles_it(tiny_dataset, tmp_path):
    from segpipe.config import build_config
    from segpipe.config.budget import training_plan
    from segpipe.fsutil import read_json
    from segpipe.runs.naming import run_id_for
    from segpipe.training import train
    from segpipe.training.model import build_and_compile
    from segpipe.training.run_dir import HISTORY_FILE, read_history

    cfg = build_config("tiny", {"train": {"epochs": 2, "batch_size": 4, "img_size": 32, "loss": "sce+lovasz"}})
    assert run_id_for(cfg, "ds", "code") != run_id_for(build_config("tiny", {"train": {
        "epochs": 2, "batch_size": 4, "img_size": 32}}), "ds", "code")
    model, compile_phase, _ = build_and_compile(cfg, training_plan(cfg.train, 12))
    compile_phase(False)
    assert isinstance(model.loss, LovaszLoss)
    result = train(cfg, tiny_dataset, tmp_path / "run", verbose=0)
    assert read_json(result.run_dir / "train_summary.json")["stop_reason"] == "completed"
    losses = [float(row["loss"]) for row in read_history(result.run_dir / HISTORY_FILE)]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_an_unknown_loss_name_is_refused_by_the_config_naming_the_choices():
    from segpipe.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=r"train\.loss.*sce\+lovasz"):
        build_config("tiny", {"train": {"loss": "lovasz"}})
