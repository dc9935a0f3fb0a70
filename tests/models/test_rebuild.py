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
