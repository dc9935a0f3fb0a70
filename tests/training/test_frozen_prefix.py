"""`train.freeze_encoder_stride`: the encoder's layers up to its feature at that output stride never train,
in either phase, while the rest of the encoder fine-tunes; a whole run's saved model still holds the
pretrained prefix, byte for byte."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from segpipe.models import build_model
from segpipe.models.encoders import build_encoder, encoder_of, encoder_prefix
from segpipe.training import run_id_for, train
from tests.synthetic import write_tiny_dataset
from tests.training.test_finetune import _built, batches, cfg_for, weights_file  # noqa: F401 - fixture

PREFIX_4 = {"Conv1", "bn_Conv1", "expanded_conv_depthwise", "block_1_expand", "block_2_add", "block_3_expand",
            "block_3_expand_BN", "block_3_expand_relu"}
AFTER_4 = {"block_3_pad", "block_3_depthwise", "block_3_project", "block_6_expand", "block_13_expand_relu"}


def _by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """The encoder's weights (BatchNormalization statistics included) by layer, for the layers that have any."""
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in encoder_of(model).layers
            if layer.weights}


def _moved(before: dict[str, list[np.ndarray]], after: dict[str, list[np.ndarray]]) -> set[str]:
    return {name for name, ws in before.items() if any(not np.array_equal(a, b) for a, b in zip(ws, after[name]))}


def test_the_prefix_is_every_layer_up_to_the_feature_and_nothing_after_it():
    encoder = build_encoder("mobilenetv2", (32, 32, 3), alpha=0.35)
    names = {layer.name for layer in encoder_prefix(encoder, "mobilenetv2", 4)}
    assert PREFIX_4 <= names and not names & AFTER_4
    # A prefix is a prefix: each stride's holds the one before it.
    sizes = [len(encoder_prefix(encoder, "mobilenetv2", s)) for s in (2, 4, 8, 16)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    with pytest.raises(ValueError, match="stride must be one of"):
        encoder_prefix(encoder, "mobilenetv2", 3)


def test_a_fine_tuning_step_moves_the_encoder_after_the_prefix_only(weights_file):  # noqa: F811
    cfg = cfg_for(weights_file, epochs=1, freeze_encoder_stride=4, fold_frozen_bn=True)
    model, compile_phase = _built(cfg)
    start = _by_layer(model)
    compile_phase(False)  # fine-tuning: the encoder unfrozen, less its prefix
    x, y = batches()
    model.fit(x, y, epochs=2, verbose=0)
    moved = _moved(start, _by_layer(model))
    assert not moved & PREFIX_4  # kernels and BatchNormalization statistics alike
    assert moved == set(start) - {layer.name for layer in encoder_prefix(encoder_of(model), "mobilenetv2", 4)}
    assert {"block_3_depthwise", "block_6_expand"} <= moved


@pytest.mark.slow
def test_a_whole_run_saves_the_pretrained_prefix_unchanged(weights_file, tmp_path):  # noqa: F811
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 8, "val": 4}, key="prefix-ds")
    cfg = cfg_for(weights_file, budget_images=16, freeze_encoder_stride=8, fold_frozen_bn=True, augment=False)
    pretrained = _by_layer(build_model("unet", (32, 32, 3), 3, **cfg.model.params()))
    run_dir = tmp_path / run_id_for(cfg, "prefix-ds", "test")
    train(cfg, ds, run_dir, verbose=0)
    saved = _by_layer(keras.saving.load_model(run_dir / "model.keras", compile=False))
    prefix = {layer.name for layer in encoder_prefix(build_encoder("mobilenetv2", (32, 32, 3), alpha=0.35),
                                                     "mobilenetv2", 8)}
    moved = _moved(pretrained, saved)
    assert moved and not moved & prefix and "block_6_depthwise" in moved
