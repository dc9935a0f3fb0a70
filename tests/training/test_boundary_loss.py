"""The boundary-aware loss term (`train.boundary_loss_weight`, `segpipe.training.boundary_loss`): hand-computed
signed distances, zero for a perfect prediction, a wrong pixel costing more the farther it lies from the true
region (where the cross-entropy counts it alike), the config's errors, serialisation, the run identity and code
key, and a training run on tiny inputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segpipe.training.boundary_loss import (
    BoundaryAwareLoss,
    boundary_term,
    signed_contour_distance,
    with_boundary_term,
)
from segpipe.training.losses import CombinedLoss, build_loss, sparse_categorical_crossentropy

PET, BACKGROUND, BORDER = 0, 1, 2


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def test_signed_distances_by_hand():
    labels = np.full((1, 5, 5), BACKGROUND, dtype="int32")
    labels[0, 2, 2] = PET  # one pet pixel in the middle; no border pixel at all
    phi = numpy(signed_contour_distance(labels, 3, radius=2))
    ring1 = np.zeros((5, 5), bool)
    ring1[1:4, 1:4] = True
    ring1[2, 2] = False
    ring2 = ~np.pad(np.ones((3, 3), bool), 1)
    # pet: 0 on its own (outline) pixel, 1/2 one step away, 1 two steps away (truncated at the radius)
    assert phi[0, 2, 2, PET] == 0.0
    np.testing.assert_array_equal(phi[0][ring1][:, PET], 0.5)
    np.testing.assert_array_equal(phi[0][ring2][:, PET], 1.0)
    # background: 1/2 outside it (the pet pixel), 0 on its outline (next to the pet), -1/2 one pixel deeper
    # (the image's edge counts as inside)
    assert phi[0, 2, 2, BACKGROUND] == 0.5
    np.testing.assert_array_equal(phi[0][ring1][:, BACKGROUND], 0.0)
    np.testing.assert_array_equal(phi[0][ring2][:, BACKGROUND], -0.5)
    # a class absent from the image is the full radius away everywhere
    np.testing.assert_array_equal(phi[0, ..., BORDER], 1.0)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype="float32")[labels]


def _band_image() -> np.ndarray:
    """1 x 16 x 16: pet on the left, a border band two columns wide (columns 6, 7), background on the right."""
    labels = np.full((1, 16, 16), BACKGROUND, dtype="int32")
    labels[:, :, :6] = PET
    labels[:, :, 6:8] = BORDER
    return labels


def test_a_perfect_prediction_costs_nothing_and_every_wrong_one_costs_more():
    labels = _band_image()
    assert float(numpy(boundary_term(labels, _one_hot(labels), 8))[0]) == pytest.approx(0.0, abs=1e-6)
    uniform = np.full((1, 16, 16, 3), 1 / 3, dtype="float32")
    assert float(numpy(boundary_term(labels, uniform, 8))[0]) > 0.0


def test_a_border_predicted_far_from_the_band_costs_more_than_one_beside_it():
    labels = _band_image()

    def with_border_at(column: int) -> np.ndarray:
        wrong = labels.copy()
        wrong[0, 8, column] = BORDER  # one background pixel predicted as border
        return _one_hot(wrong)

    beside, far = with_border_at(8), with_border_at(13)  # 1 and 6 columns right of the band
    term = [float(numpy(boundary_term(labels, p, 8))[0]) for p in (beside, far)]
    assert 0.0 < term[0] < term[1]
    # the cross-entropy counts both mistakes alike
    sce = sparse_categorical_crossentropy()
    assert float(numpy(sce(labels, beside))) == pytest.approx(float(numpy(sce(labels, far))), rel=1e-6)
    # by hand: beside the band the border is 1/8 away and the pixel is on background's outline (0);
    # six columns on, the border is 6/8 away and the pixel 5/8 deep in the background; over 256 pixels
    assert term[0] == pytest.approx((1 / 8) / 256, rel=1e-3)
    assert term[1] == pytest.approx((6 / 8 + 5 / 8) / 256, rel=1e-3)


def test_the_term_adds_to_the_named_loss_per_image():
    labels = np.concatenate([_band_image(), _band_image()[:, :, ::-1]])
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 16, 16, 3)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    base = build_loss("sce+dice")
    loss = with_boundary_term(base, 0.5, 4)
    assert isinstance(loss, BoundaryAwareLoss)
    expected = numpy(base.call(labels, probs)) + 0.5 * numpy(boundary_term(labels, probs, 4))
    np.testing.assert_allclose(numpy(loss.call(labels, probs)), expected, rtol=1e-6)
    assert with_boundary_term(base, 0.0, 4) is base


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"weight": 0.0}, "weight must be > 0"),
    ({"weight": -1.0}, "weight must be > 0"),
    ({"radius": 0}, r"radius must be an int in \[1, 64\]"),
    ({"radius": 2.5}, "radius must be an int"),
    ({"radius": 65}, "radius must be an int"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoundaryAwareLoss(build_loss("sce"), **{"weight": 1.0, "radius": 8, **kwargs})


@pytest.mark.parametrize(("field", "bad", "match"), [
    ("boundary_loss_weight", -0.5, "greater than or equal to 0"),
    ("boundary_loss_weight", "much", "valid number"),
    ("boundary_loss_radius", 0, "greater than or equal to 1"),
    ("boundary_loss_radius", 65, "less than or equal to 64"),
])
def test_the_config_refuses_bad_values_naming_the_field(field, bad, match):
    from segpipe.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=match) as error:
        build_config("tiny", {"train": {field: bad}})
    assert f"train.{field}" in str(error.value)


def test_serialise_round_trip_keeps_config_and_value():
    loss = with_boundary_term(build_loss("sce+dice", dice_weight=0.3, class_weights=(1.0, 1.0, 2.0)), 0.7, 5)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is BoundaryAwareLoss and isinstance(restored.base, CombinedLoss)
    assert restored.get_config() == loss.get_config()
    labels = _band_image()
    probs = np.full((1, 16, 16, 3), 1 / 3, dtype="float32")
    assert float(numpy(restored(labels, probs))) == pytest.approx(float(numpy(loss(labels, probs))), rel=1e-6)


def test_the_term_is_part_of_the_run_identity_and_the_train_code_key():
    from segpipe.codekeys import module_closure
    from segpipe.config import build_config
    from segpipe.runs.naming import run_id_for

    plain = build_config("tiny", {"train": {"epochs": 1}})
    weighted = build_config("tiny", {"train": {"epochs": 1, "boundary_loss_weight": 1.0}})
    wider = build_config("tiny", {"train": {"epochs": 1, "boundary_loss_weight": 1.0, "boundary_loss_radius": 4}})
    assert len({run_id_for(c, "ds", "code") for c in (plain, weighted, wider)}) == 3
    assert "segpipe.training.boundary_loss" in module_closure(["segpipe.training.loop"])


@pytest.mark.slow
def test_a_tiny_run_with_the_boundary_term_trains_and_compiles_it(tiny_dataset, tmp_path):
    from segpipe.config import build_config
    from segpipe.fsutil import read_json
    from segpipe.training import train
    from segpipe.training.model import build_and_compile
    from segpipe.config.budget import training_plan

    cfg = build_config("tiny", {"train": {"epochs": 2, "batch_size": 4, "img_size": 32,
                                          "boundary_loss_weight": 1.0, "boundary_loss_radius": 3}})
    model, compile_phase, _ = build_and_compile(cfg, training_plan(cfg.train, 12))
    compile_phase(False)
    assert isinstance(model.loss, BoundaryAwareLoss) and model.loss.radius == 3
    result = train(cfg, tiny_dataset, tmp_path / "run", verbose=0)
    summary = read_json(result.run_dir / "train_summary.json")
    assert summary["stop_reason"] == "completed"
    losses = [float(row["loss"]) for row in _history_rows(result.run_dir)]
    assert len(losses) == 2 and all(np.isfinite(losses))


def _history_rows(run_dir):
    from segpipe.training.run_dir import read_history, HISTORY_FILE

    return read_history(run_dir / HISTORY_FILE)
