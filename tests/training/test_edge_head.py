"""The training-only edge head (`train.edge_head_weight`, `segpipe.training.edge_head`): its target by hand, the
model it trains (the saved model's layers and variables plus two), the loss worked by hand, the config's
errors, serialisation, the run identity and code key, and runs on tiny inputs whose saved model has no head."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segpipe.models import build_model
from segpipe.training.edge_head import EdgeHeadLoss, MeanIoUOfClasses, border_closeness, with_edge_head
from segpipe.training.losses import build_loss

PET, BACKGROUND, BORDER = 0, 1, 2
DEEPLAB = {"encoder": "mobilenetv2", "encoder_alpha": 0.35, "encoder_weights": None, "aspp_filters": 8,
           "aspp_rates": (1, 2)}


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _band_image() -> np.ndarray:
    """1 x 8 x 12: pet in columns 0-5, a border band in columns 6 and 7, background in columns 8-11."""
    labels = np.full((1, 8, 12), BACKGROUND, dtype="int32")
    labels[:, :, :6] = PET
    labels[:, :, 6:8] = BORDER
    return labels


def test_the_target_is_one_on_the_band_and_falls_to_zero_at_the_radius():
    closeness = numpy(border_closeness(_band_image(), radius=4))
    assert closeness.shape == (1, 8, 12, 1)
    want = np.array([0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0], dtype="float32")
    np.testing.assert_array_equal(closeness[0, :, :, 0], np.tile(want, (8, 1)))
    no_band = np.full((1, 4, 4), PET, dtype="int32")  # no border pixel: nothing is close to one
    np.testing.assert_array_equal(numpy(border_closeness(no_band, radius=2)), 0.0)


def test_the_target_is_the_border_channel_of_the_signed_distances_it_was_measured_with():
    """The run in BENCHMARKS.md measured the target as 1 - the border's signed distance (clipped at 0); the max-pools
    that grow one channel give the same values."""
    from segpipe.training.boundary_loss import signed_contour_distance

    labels = np.random.default_rng(3).integers(0, 3, (2, 20, 24)).astype("int32")
    labels[1] = BACKGROUND
    labels[1, 5:9, 7:10] = BORDER
    for radius in (1, 3, 8):
        phi = numpy(signed_contour_distance(labels, 3, radius))[..., BORDER:]
        np.testing.assert_allclose(numpy(border_closeness(labels, radius)), 1.0 - np.clip(phi, 0.0, 1.0), atol=1e-6)


@pytest.mark.parametrize("name, params, size", [
    ("deeplabv3plus", DEEPLAB, 64),  # the logits are upsampled: the edge head is upsampled alike
    ("unet", {"base_filters": 4, "depth": 2}, 32),
])
def test_the_model_with_the_head_is_the_saved_model_plus_one_channel(name, params, size):
    keras.utils.set_random_seed(0)
    saved = build_model(name, (size, size, 3), 3, **params)
    trained = with_edge_head(saved)
    assert trained.output_shape == (None, size, size, 4)
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    out = numpy(trained(x, training=False))
    np.testing.assert_allclose(out[..., :3], numpy(saved(x, training=False)), rtol=1e-6, atol=1e-6)
    assert ((out[..., 3] > 0) & (out[..., 3] < 1)).all()  # a sigmoid
    # the saved model's variables themselves, and the head's kernel and bias
    saved_ids = {id(v) for v in saved.weights}
    extra = [v for v in trained.weights if id(v) not in saved_ids]
    assert saved_ids <= {id(v) for v in trained.weights} and [v.path.split("/")[0] for v in extra] == [
        "edge_head_logits", "edge_head_logits"]


def test_the_loss_is_the_base_loss_plus_the_weighted_cross_entropy_of_the_head_by_hand():
    labels = _band_image()
    probs = np.full((1, 8, 12, 3), 1 / 3, dtype="float32")
    edge = np.full((1, 8, 12, 1), 0.5, dtype="float32")
    y_pred = np.concatenate([probs, edge], axis=-1)
    base = build_loss("sce")
    loss = EdgeHeadLoss(base, weight=2.0, radius=4)
    got = float(numpy(loss(labels[..., None], y_pred)))
    # sce of a uniform prediction: ln 3; the head's BCE at 0.5 is ln 2 whatever the target
    assert got == pytest.approx(np.log(3) + 2.0 * np.log(2), rel=1e-5)
    # the head's term is smallest where the head predicts the target: 0 where the target is 0 or 1
    target = numpy(border_closeness(labels, 4))
    exact = float(numpy(loss(labels[..., None], np.concatenate([probs, np.clip(target, 0, 1)], axis=-1))))
    assert exact < got
    far = float(numpy(loss(labels[..., None], np.concatenate([probs, 1 - target], axis=-1))))
    assert far > got


def test_metrics_score_the_class_channels_only():
    labels = _band_image()[..., None]
    right = np.eye(3, dtype="float32")[labels[..., 0]]
    metric = MeanIoUOfClasses(num_classes=3, sparse_y_pred=False)
    metric.update_state(labels, np.concatenate([right, np.ones_like(right[..., :1])], axis=-1))
    assert float(metric.result()) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": 0.0}, "edge head weight must be > 0"),
    ({"weight": 1.0, "radius": 0}, r"edge head radius must be an int in \[1, 64\]"),
    ({"weight": 1.0, "radius": 2.5}, "edge head radius must be an int"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EdgeHeadLoss(build_loss("sce"), **kwargs)


@pytest.mark.parametrize("field, bad, match", [
    ("edge_head_weight", -1.0, "train.edge_head_weight"),
    ("edge_head_weight", 1000.0, "train.edge_head_weight"),
    ("edge_head_radius", 0, "train.edge_head_radius"),
    ("edge_head_radius", 65, "train.edge_head_radius"),
])
def test_the_config_refuses_bad_values_naming_the_field(field, bad, match):
    from segpipe.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=match):
        build_config("tiny", {"train": {field: bad}})


def test_serialise_round_trip_keeps_config_and_value():
    loss = EdgeHeadLoss(build_loss("sce+dice"), weight=0.5, radius=3)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, EdgeHeadLoss) and (again.weight, again.radius) == (0.5, 3)
    labels = _band_image()[..., None]
    y_pred = np.random.default_rng(1).uniform(0.05, 0.95, (1, 8, 12, 4)).astype("float32")
    assert float(numpy(again(labels, y_pred))) == pytest.approx(float(numpy(loss(labels, y_pred))), rel=1e-6)


def test_the_head_is_part_of_the_run_identity_and_the_train_code_key():
    from segpipe.codekeys import module_closure
    from segpipe.config import build_config
    from segpipe.runs.naming import run_id_for

    plain = build_config("tiny", {"train": {"epochs": 1}})
    head = build_config("tiny", {"train": {"epochs": 1, "edge_head_weight": 1.0}})
    wider = build_config("tiny", {"train": {"epochs": 1, "edge_head_weight": 1.0, "edge_head_radius": 6}})
    assert len({run_id_for(c, "ds", "code") for c in (plain, head, wider)}) == 3
    assert "segpipe.training.edge_head" in module_closure(["segpipe.training.loop"])


@pytest.mark.parametrize("model", [
    {"name": "unet"},
    {"name": "deeplabv3plus", **DEEPLAB},
])
def test_the_compiled_model_takes_a_training_step_that_trains_the_head(model):
    from segpipe.config import build_config
    from segpipe.config.budget import training_plan
    from segpipe.training.model import build_and_compile

    size = 64 if model["name"] == "deeplabv3plus" else 32
    cfg = build_config("tiny", {"model": model, "train": {"epochs": 2, "batch_size": 4, "img_size": size,
                                                          "edge_head_weight": 1.0, "edge_head_radius": 2}})
    trained, compile_phase, for_saving = build_and_compile(cfg, training_plan(cfg.train, 12))
    compile_phase(False)
    assert isinstance(trained.loss, EdgeHeadLoss) and trained.output_shape[-1] == 4
    assert for_saving().output_shape == (None, size, size, 3)
    head = trained.get_layer("edge_head_logits").kernel
    before = head.numpy().copy()
    x = np.random.default_rng(0).random((4, size, size, 3), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 3, (4, size, size, 1)).astype("int32")
    logs = trained.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["mean_iou"] <= 1.0
    assert not np.array_equal(head.numpy(), before)  # the head trains


@pytest.mark.slow
def test_a_tiny_run_with_the_head_saves_the_model_without_it(tiny_dataset, tmp_path):
    from segpipe.config import build_config
    from segpipe.fsutil import read_json
    from segpipe.training import train

    cfg = build_config("tiny", {"train": {"epochs": 2, "batch_size": 4, "img_size": 32, "edge_head_weight": 1.0,
                                          "edge_head_radius": 2}})
    result = train(cfg, tiny_dataset, tmp_path / "run", verbose=0)
    assert read_json(result.run_dir / "train_summary.json")["stop_reason"] == "completed"
    assert len(result.history) == 2 and all(0.0 <= row["val_mean_iou"] <= 1.0 for row in result.history)
    saved = keras.saving.load_model(result.model_path, compile=False)
    assert saved.output_shape == (None, 32, 32, 3)
    assert not [layer.name for layer in saved.layers if layer.name.startswith("edge_head")]
