"""Frozen batch norms folded into their convolutions (`train.fold_frozen_bn`): the same outputs and the same
gradients as the unfolded model, only where the batch norm does not train, with the layers' classes, configs
and saved files untouched; and the Keras behaviour it rests on (a layer is called through `self.call` at call
time) checked directly, so a Keras change fails here loudly."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.models.encoders import encoder_of
from segpipe.training.bn_folding import fold_frozen_batch_norms, foldable_pairs, unfold
from tests.training.test_finetune import _built, batches, cfg_for, weights_file  # noqa: F401 - the fixture


def _toy(seed: int = 0) -> keras.Model:
    """Conv -> BN -> ReLU6, depthwise -> BN, a biased conv -> BN, and a conv whose output two layers read."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn_dw")(x)
    x = keras.layers.Conv2D(6, 1, use_bias=True, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    shared = keras.layers.Conv2D(6, 1, use_bias=False, name="c3")(x)
    y = keras.layers.BatchNormalization(name="bn3")(shared)
    outputs = keras.layers.Add()([y, shared])
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.3, n))
            layer.moving_mean.assign(rng.normal(0, 0.3, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))
    return model


def _freeze_bns(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _outputs_and_kernel_grads(model: keras.Model, x: np.ndarray):
    kernels = [v for v in model.trainable_variables if "kernel" in v.path]
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_sum(out * out)
    return out.numpy(), [g.numpy() for g in tape.gradient(loss, kernels)]


def test_the_pairs_found_are_linear_convolutions_read_by_one_batch_norm_only():
    pairs = foldable_pairs(_toy())
    assert [(p.conv.name, p.bn.name) for p in pairs] == [("c1", "bn1"), ("dw", "bn_dw"), ("c2", "bn2")]


def test_folded_frozen_batch_norms_give_the_same_outputs_and_kernel_gradients():
    model = _toy()
    _freeze_bns(model)
    x = np.random.default_rng(1).normal(size=(2, 12, 12, 3)).astype("float32")
    want_out, want_grads = _outputs_and_kernel_grads(model, x)
    folded = fold_frozen_batch_norms(model)
    assert len(folded) == 3
    got_out, got_grads = _outputs_and_kernel_grads(model, x)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads) == 4
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    unfold(model)
    np.testing.assert_allclose(model(x, training=True).numpy(), want_out, rtol=1e-6, atol=1e-6)


def test_keras_calls_a_layer_through_its_instance_call():
    """The fence: folding replaces `call` on the layer instances; if Keras stopped calling `self.call`, the
    folded computation would silently not run (and the equality tests above would pass vacuously)."""
    model = _toy()
    _freeze_bns(model)
    fold_frozen_batch_norms(model)
    calls = []
    conv = model.get_layer("c1")
    folded_call = conv.call
    conv.call = lambda inputs: (calls.append(1), folded_call(inputs))[1]
    model(np.zeros((1, 12, 12, 3), "float32"), training=True)
    assert calls, "Keras did not call the instance's call: segpipe.training.bn_folding no longer folds anything"
    assert type(conv).call is keras.layers.Conv2D.call  # the class is untouched


def test_a_batch_norm_that_trains_is_not_folded_and_refolding_unfolds_it():
    model = _toy()
    bn = model.get_layer("bn1")
    assert len(fold_frozen_batch_norms(model)) == 0  # every batch norm trains
    _freeze_bns(model)
    assert len(fold_frozen_batch_norms(model)) == 3
    bn.trainable = True
    assert {p.bn.name for p in fold_frozen_batch_norms(model)} == {"bn_dw", "bn2"}
    assert "call" not in vars(bn) and "call" not in vars(model.get_layer("c1"))
    x = np.random.default_rng(2).normal(size=(4, 12, 12, 3)).astype("float32")
    before = bn.moving_mean.numpy().copy()
    model(x, training=True)
    assert not np.array_equal(bn.moving_mean.numpy(), before)  # it trains, as unfolded


def test_training_with_folding_takes_a_step_and_saves_a_plain_model(weights_file, tmp_path: Path):
    cfg = cfg_for(weights_file, epochs=2, freeze_encoder_images=8, freeze_encoder_bn=True, fold_frozen_bn=True)
    model, compile_phase = _built(cfg)
    x, y = batches()
    compile_phase(True)
    n_pairs = len(foldable_pairs(encoder_of(model)))
    assert n_pairs >= 30  # MobileNetV2: every convolution is followed by its batch norm
    assert sum("call" in vars(p.conv) for p in foldable_pairs(model)) == n_pairs
    reference = model.predict(x, verbose=0)
    compile_phase(False)  # unfrozen, batch norms kept frozen: still folded
    assert sum("call" in vars(p.conv) for p in foldable_pairs(model)) == n_pairs
    kernel = encoder_of(model).get_layer("Conv1").kernel
    before = kernel.numpy().copy()
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(kernel.numpy(), before)  # the folded convolution's kernel trains
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    assert not any("call" in vars(layer) for layer in loaded.layers)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(reference, model.predict(x, verbose=0))  # the step moved the model


def test_fold_frozen_bn_is_part_of_the_run_identity(weights_file):
    from segpipe.training import run_id_for

    a = cfg_for(weights_file, epochs=1, freeze_encoder_bn=True)
    b = cfg_for(weights_file, epochs=1, freeze_encoder_bn=True, fold_frozen_bn=True)
    assert run_id_for(a, "d" * 64) != run_id_for(b, "d" * 64)
