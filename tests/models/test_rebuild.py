"""`at_input_size`: every registered model's trained weights rebuilt for another input size (multi-scale TTA)."""

from __future__ import annotations

import numpy as np
import pytest

from segpipe.models import build_model
from segpipe.models.rebuild import at_input_size

TINY = {
    "unet": {"base_filters": 4, "depth": 2},
    "segnet": {"base_filters": 4, "depth": 2},
    "xception_unet": {},
    "deeplabv3plus": {"encoder": "mobilenetv2", "encoder_weights": None},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_model_rebuilt_at_another_size_keeps_its_weights_and_scales_its_output(name):
    model = build_model(name, (32, 32, 3), **TINY[name])
    assert at_input_size(model, 32) is model
    big = at_input_size(model, 64)
    assert big.input_shape == (None, 64, 64, 3) and big.output_shape == (None, 64, 64, 3)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), big.get_weights()))
    x = np.random.default_rng(0).random((1, 64, 64, 3)).astype("float32")
    probs = np.asarray(big(x, training=False))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-4)
    assert not np.allclose(probs, probs.mean(axis=(1, 2), keepdims=True))  # a real map, not a constant output


def test_deeplab_image_pooling_branch_is_resized_and_a_size_it_cannot_take_is_named():
    model = build_model("deeplabv3plus", (32, 32, 3), **TINY["deeplabv3plus"])
    big = at_input_size(model, 64)
    assert big.get_layer("aspp_pool_upsample").size == (4, 4)  # 64 / 16
    with pytest.raises(ValueError, match=r"40x40 does not suit layer aspp_pool_upsample.*multiple of 16"):
        at_input_size(model, 40)


def test_a_size_a_model_cannot_take_gets_a_clear_error():
    model = build_model("unet", (32, 32, 3), **TINY["unet"])
    with pytest.raises(ValueError, match=r"cannot be built for 30x30 inputs|outputs .* expected its output"):
        at_input_size(model, 30)


def _policies(model) -> set[str]:
    """The dtype policy names of every layer of `model`, nested models' layers included."""
    import keras

    names = set()
    for layer in model.layers:
        names.add(layer.dtype_policy.name)
        if isinstance(layer, keras.Model):
            names |= _policies(layer)
    return names


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_model_built_in_mixed_precision_is_rebuilt_in_float32_with_its_weights(policy, tmp_path):
    """`in_float32`, through a saved and reloaded `.keras` file as `load_models` sees it: every layer of every nested
    model computes in float32, the weights are the same, and the output is the half-precision one's to within
    its rounding; a float32 model is returned as it is."""
    import keras

    from segpipe.evaluation.ensemble import load_models
    from segpipe.models.rebuild import in_float32
    from segpipe.training.precision import global_policy

    with global_policy(policy):
        mixed = build_model("deeplabv3plus", (32, 32, 3), **TINY["deeplabv3plus"])
    mixed.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras", compile=False)
    policies = _policies(loaded)
    assert policy in policies  # the file keeps the training precision
    exact = in_float32(loaded)
    assert _policies(exact) == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), exact.get_weights()))
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    half, full = np.asarray(loaded(x, training=False), "float32"), np.asarray(exact(x, training=False))
    assert full.dtype == np.float32 and np.abs(half - full).max() < 0.05 and not np.array_equal(half, full)
    assert _policies(load_models([tmp_path / "mixed.keras"])[0]) == {"float32"}
    assert in_float32(exact) is exact
