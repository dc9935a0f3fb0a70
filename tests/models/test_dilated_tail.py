"""DeepLabV3+ on the whole encoder at output stride 16 (`model.encoder_tail="dilated"`, `encoders.DilatedTail`):
the same function as the stride-32 stage at every other position, the pretrained weights kept, a training step,
the folded batch norms, the saved model, the run identity, and clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.config import ConfigError, build_config
from segpipe.models import build_model
from segpipe.models.encoders import ENCODERS, build_application, build_encoder, encoder_of
from segpipe.models.rebuild import at_input_size
from segpipe.runs.naming import run_id_for
from segpipe.training.bn_folding import fold_frozen_batch_norms
from tests.models.test_encoders import assert_encoder_holds, weights_file  # noqa: F401 - the fixture

TAIL = ENCODERS["mobilenetv2"].dilated_tail
TINY = {"encoder": "mobilenetv2", "encoder_alpha": 0.35, "aspp_filters": 8, "aspp_rates": (1, 2)}


def _at(model: keras.Model, layer: str) -> keras.Model:
    return keras.Model(model.input, model.get_layer(layer).output)


def _randomised_bns(model: keras.Model, seed: int) -> None:
    """Batch-norm statistics away from (0, 1), so that a wrong padding or a skipped layer shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def test_the_dilated_tail_computes_the_last_stage_at_every_other_position():
    """Atrous conversion changes where the last stage is computed, not what: at the odd positions of the
    stride-16 map it gives the stride-32 stage's outputs, borders included (the zero padding moves with it)."""
    keras.utils.set_random_seed(3)
    src = build_application("mobilenetv2", (64, 64, 3), alpha=0.35)  # Keras' random init: features that vary
    _randomised_bns(src, 4)
    encoder = build_encoder("mobilenetv2", (64, 64, 3), alpha=0.35, strides=(4, 16), dilated_tail=True)
    encoder.set_weights(_weights_of(src, encoder))
    x = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    want = _at(src, TAIL.feature)(x).numpy()
    low, high = (t.numpy() for t in encoder(x))
    assert want.shape[1:3] == (2, 2) and high.shape[1:3] == (4, 4) and low.shape[1:3] == (16, 16)
    assert np.abs(want - want[:, :1, :1]).max() > 1e-2  # a map that varies: a shifted window would show
    np.testing.assert_allclose(high[:, 1::2, 1::2], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(low, _at(src, ENCODERS["mobilenetv2"].features[1])(x).numpy(), rtol=1e-6, atol=1e-6)
    assert encoder.get_layer(TAIL.strided).strides == (1, 1)
    assert all(encoder.get_layer(name).dilation_rate == (2, 2) for name in TAIL.dilated)


def _weights_of(src: keras.Model, encoder: keras.Model) -> list[np.ndarray]:
    """`src`'s weights in `encoder`'s order, by layer name."""
    return [w for layer in encoder.layers if layer.weights for w in src.get_layer(layer.name).get_weights()]


def test_deeplabv3plus_on_the_dilated_tail_keeps_the_weights_and_trains_a_step(weights_file, tmp_path):
    path, src = weights_file
    keras.utils.set_random_seed(1)
    model = build_model("deeplabv3plus", (32, 32, 3), 3, **TINY, encoder_weights=str(path), encoder_tail="dilated")
    assert_encoder_holds(model, src)
    encoder = encoder_of(model)
    assert encoder.outputs[1].shape[1:] == (2, 2, src.get_layer(TAIL.feature).output.shape[-1])
    assert model.get_layer("aspp_1x1_conv").input.shape[-1] == src.get_layer(TAIL.feature).output.shape[-1]
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 32, 32, 3), dtype=np.float32), rng.integers(0, 3, (2, 32, 32, 1))
    last_stage = encoder.get_layer("block_16_project").kernel.numpy().copy()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", run_eagerly=True)
    assert np.isfinite(float(model.train_on_batch(x, y)))
    assert not np.allclose(encoder.get_layer("block_16_project").kernel.numpy(), last_stage)  # the stage trains

    # saved and loaded (what evaluate, predict and export read), and rebuilt for another size (multi-scale TTA)
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert encoder_of(loaded).get_layer(TAIL.dilated[0]).dilation_rate == (2, 2)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    bigger = at_input_size(model, 64)
    assert bigger.predict(np.concatenate([x, x], 1).repeat(2, 2)[:, :64, :64], verbose=0).shape == (2, 64, 64, 3)


def test_frozen_batch_norms_fold_into_the_dilated_convolutions():
    keras.utils.set_random_seed(2)
    model = build_model("deeplabv3plus", (32, 32, 3), 3, **TINY, encoder_tail="dilated")
    encoder = encoder_of(model)
    _randomised_bns(encoder, 6)
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    x = np.random.default_rng(7).random((2, 32, 32, 3), dtype=np.float32)
    want = model(x, training=True).numpy()
    folded = fold_frozen_batch_norms(model)
    assert {TAIL.strided, *TAIL.dilated} <= {pair.conv.name for pair in folded}
    np.testing.assert_allclose(model(x, training=True).numpy(), want, rtol=1e-4, atol=1e-5)


def test_the_tail_is_part_of_the_run_identity():
    cut = build_config("cpu-quick", {})
    dilated = build_config("cpu-quick", {"model.encoder_tail": "dilated"})
    assert cut.model.encoder_tail == "cut" and dilated.model.params()["encoder_tail"] == "dilated"
    assert run_id_for(cut, "ds", "code") != run_id_for(dilated, "ds", "code")


@pytest.mark.parametrize(
    "over, match",
    [
        ({"model.encoder_tail": "atrous"}, r"model\.encoder_tail: Input should be 'cut' or 'dilated' \(got 'atrous'\)"),
        ({"model.encoder_tail": "dilated", "model.encoder": "resnet50"},
         r"model\.encoder_tail: 'dilated' applies to the mobilenetv2 encoder only \(encoder 'resnet50'\)"),
        ({"model.encoder_tail": "dilated", "model.name": "unet"},
         r"model\.encoder_tail: model 'unet' does not take encoder_tail"),
    ],
)
def test_a_tail_that_does_not_fit_fails_before_any_work(over, match):
    with pytest.raises(ConfigError, match=match):
        build_config("cpu-quick", over)


def test_the_builders_refuse_what_a_dilated_tail_cannot_give():
    with pytest.raises(ValueError, match=r"a dilated tail applies to mobilenetv2 only, not resnet50"):
        build_encoder("resnet50", (32, 32, 3), strides=(4, 16), dilated_tail=True)
    with pytest.raises(ValueError, match=r"no stride-32 features"):
        build_encoder("mobilenetv2", (32, 32, 3), alpha=0.35, strides=(4, 32), dilated_tail=True)
    with pytest.raises(ValueError, match=r"encoder_tail must be one of cut, dilated, got 'atrous'"):
        build_model("deeplabv3plus", (32, 32, 3), 3, **TINY, encoder_tail="atrous")


def test_the_tails_layer_names_are_keras_applications_own():
    """The fence around keras.applications' layer names: if MobileNetV2's change, this fails, not a training."""
    app = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, alpha=0.35)
    names = {layer.name for layer in app.layers}
    assert {TAIL.pad, TAIL.strided, *TAIL.dilated, TAIL.feature} <= names
    assert app.get_layer(TAIL.strided).strides == (2, 2) and isinstance(app.get_layer(TAIL.pad), keras.layers.ZeroPadding2D)
    assert tf.executing_eagerly()
