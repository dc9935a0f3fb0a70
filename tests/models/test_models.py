"""Model zoo: shapes, softmax output, size rules, training under tf.distribute, .keras round trip,
mixed precision and DeepLabV3+ encoder weights from a local file."""

from __future__ import annotations

import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from segpipe.config import ModelConfig
from segpipe.training.losses import build_loss
from segpipe.models import MODEL_NAMES, build_model
from segpipe.models.encoders import build_application
from segpipe.models.layers import BackbonePreprocess, MaxPoolingWithArgmax2D, MaxUnpooling2D
from tests.compiling import compile_as_training

SHAPE = (32, 48, 3)  # non-square on purpose
# Tiny settings per model, on top of ModelConfig's defaults (so unused params must be ignored).
TINY: dict[str, dict] = {
    "xception_unet": {},
    "unet": {"base_filters": 4, "depth": 2, "dropout": 0.2},
    "deeplabv3plus": {"encoder_alpha": 0.35, "aspp_filters": 16, "aspp_rates": (1, 2), "dropout": 0.1},
    "segnet": {"base_filters": 4, "depth": 2, "dropout": 0.2},
}
# A size that breaks each model's divisor rule at SHAPE's height.
BAD_WIDTH = {"xception_unet": 40, "unet": 34, "deeplabv3plus": 40, "segnet": 34}


def tiny_params(name: str) -> dict:
    return {**ModelConfig(name=name).params(), **TINY[name]}


def batch(shape=SHAPE, n=2, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 3, (n, *shape[:2], 1)).astype("int32")


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    return {name: build_model(name, SHAPE, 3, **tiny_params(name)) for name in MODEL_NAMES}


def test_every_registered_model_is_tested():
    assert set(TINY) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_is_float32_softmax_of_input_size(models, name):
    model = models[name]
    assert model.name.startswith(name)
    x, _ = batch()
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 32, 48, 3) and y.dtype == np.float32
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_round_trip_gives_identical_predictions(models, name, tmp_path):
    path = tmp_path / f"{name}.keras"
    models[name].save(path)
    loaded = keras.models.load_model(path, compile=False)
    x, _ = batch(seed=1)
    assert loaded.name == models[name].name
    want = keras.ops.convert_to_numpy(models[name](x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), want, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_invalid_size_raises_naming_the_divisor(name):
    with pytest.raises(ValueError, match=r"multiples of (4|16)"):
        build_model(name, (32, BAD_WIDTH[name], 3), 3, **tiny_params(name))


def test_builders_validate_size_when_called_directly():
    from segpipe.models.unet import build_unet
    from segpipe.models.xception_unet import build_xception_unet

    with pytest.raises(ValueError, match="multiples of 8"):
        build_unet((36, 36, 3), base_filters=2, depth=3)
    with pytest.raises(ValueError, match="multiples of 16"):
        build_xception_unet((24, 32, 3))


def test_deeplab_needs_at_least_32_pixels():
    with pytest.raises(ValueError, match="at least 32"):
        build_model("deeplabv3plus", (16, 32, 3), 3, **TINY["deeplabv3plus"])


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("unet", {"depth": 0}, "depth"),
        ("unet", {"base_filters": 0, "depth": 1}, "base_filters"),
        ("unet", {"depth": 1, "dropout": 1.5}, "dropout"),
        ("xception_unet", {"bn_momentum": 1.0}, "bn_momentum"),
        ("deeplabv3plus", {"encoder": "vgg16"}, "encoder"),
        ("deeplabv3plus", {"aspp_rates": ()}, "aspp_rates"),
        ("deeplabv3plus", {"aspp_rates": (6, 0)}, "aspp_rates"),
    ],
)
def test_bad_params_raise_naming_the_param(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, (32, 32, 3), 3, **params)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_knob_the_model_does_not_take_is_refused_naming_it(name):
    """No builder drops a knob silently: build_model names it and the knobs the model does take."""
    from segpipe.models import knobs_of
    from segpipe.models.registry import BUILDERS

    with pytest.raises(ValueError, match=rf"model '{name}' does not take shoe_size; it takes .*bn_momentum"):
        build_model(name, (32, 32, 3), 3, shoe_size=9)
    module, func = BUILDERS[name]
    builder = getattr(__import__(module, fromlist=[func]), func)
    with pytest.raises(TypeError, match="shoe_size"):
        builder((32, 32, 3), 3, shoe_size=9)
    assert set(ModelConfig(name=name).params()) <= set(knobs_of(name))  # the config passes only those


def test_bad_num_classes_and_channels():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("unet", (32, 32, 3), 1, depth=1)
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        build_model("deeplabv3plus", (32, 32, 1), 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_train_step_under_distribute_scope_updates_every_weight(name):
    """Variables made in a OneDeviceStrategy scope; one step (eager, to keep CPU tests fast)."""
    keras.utils.set_random_seed(1)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build_model(name, SHAPE, 3, **tiny_params(name))
        model.compile(keras.optimizers.Adam(1e-3), loss=build_loss("sce+dice"), run_eagerly=True)
    assert model.distribute_strategy is strategy
    before = [v.numpy().copy() for v in model.trainable_variables]
    x, y = batch()
    loss = float(model.train_on_batch(x, y))
    assert np.isfinite(loss) and loss > 0
    unchanged = [v.path for b, v in zip(before, model.trainable_variables) if np.array_equal(b, v.numpy())]
    assert not unchanged


@pytest.mark.slow
def test_graph_mode_train_step_reduces_loss_on_one_batch():
    """The compiled (tf.function) path as used by training: unet fits one fixed batch."""
    keras.utils.set_random_seed(2)
    model = build_model("unet", SHAPE, 3, **tiny_params("unet"))
    compile_as_training(model, keras.optimizers.Adam(1e-2), build_loss("sce"))
    x, y = batch()
    losses = [float(model.train_on_batch(x, y)) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_graph_mode_train_step_all_models(name):
    keras.utils.set_random_seed(3)
    model = build_model(name, SHAPE, 3, **tiny_params(name))
    compile_as_training(model, keras.optimizers.Adam(1e-3), build_loss("sce+dice"))
    x, y = batch()
    assert np.isfinite(float(model.train_on_batch(x, y)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_mixed_precision_computes_in_float16_and_outputs_float32(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(name, SHAPE, 3, **tiny_params(name))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.outputs[0].dtype == "float32"
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "float16" for layer in convs)


@pytest.mark.parametrize("mode", ["tf", "caffe"])
def test_backbone_preprocess_matches_keras_applications(mode):
    x = np.random.default_rng(0).random((1, 4, 4, 3), dtype=np.float32)
    got = keras.ops.convert_to_numpy(BackbonePreprocess(mode)(x))
    ref = keras.applications.imagenet_utils.preprocess_input(x * 255.0, mode=mode)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_max_pooling_with_argmax_and_unpooling():
    x = np.random.default_rng(0).random((2, 4, 6, 3), dtype=np.float32)
    x[0, 0:2, 0:2, 0] = 0.5  # a tie: the first position (row-major) wins
    pooled, argmax = MaxPoolingWithArgmax2D()(x)
    np.testing.assert_array_equal(pooled, keras.layers.MaxPooling2D(2)(x))
    assert argmax.dtype == "int32" and int(argmax[0, 0, 0, 0]) == 0
    unpooled = keras.ops.convert_to_numpy(MaxUnpooling2D()([pooled, argmax]))
    assert unpooled.shape == x.shape
    # Exactly one non-zero per window, at the max's position, holding the max.
    expected = np.zeros_like(x)
    for b, i, j, c in np.ndindex(*pooled.shape):
        window = x[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
        di, dj = np.unravel_index(np.argmax(window), (2, 2))
        expected[b, 2 * i + di, 2 * j + dj, c] = window.max()
    np.testing.assert_array_equal(unpooled, expected)


# --- DeepLabV3+ encoder weights from a file -------------------------------------------------------


def _randomised_backbone(seed: int) -> keras.Model:
    """A tiny MobileNetV2 backbone with every weight (BN statistics too) set to random values."""
    src = build_application("mobilenetv2", (32, 32, 3), alpha=0.35)
    rng = np.random.default_rng(seed)
    src.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in src.get_weights()])
    return src


def _assert_backbone_equals(model: keras.Model, src: keras.Model) -> None:
    backbone = model.get_layer("encoder")
    weighted = [layer for layer in backbone.layers if layer.weights]
    assert len(weighted) > 50
    for layer in weighted:
        src_weights = src.get_layer(layer.name).get_weights()
        assert len(src_weights) == len(layer.weights)
        for got, want in zip(layer.get_weights(), src_weights):
            np.testing.assert_array_equal(got, want)


def test_encoder_weights_from_a_weights_h5_file(tmp_path):
    src = _randomised_backbone(0)  # random values: a fresh init cannot match them by chance
    path = tmp_path / "mnv2.weights.h5"
    src.save_weights(path)
    # Built at another (non-square) size: backbone weights do not depend on it.
    model = build_model("deeplabv3plus", (64, 32, 3), 3, **TINY["deeplabv3plus"], encoder_weights=str(path))
    _assert_backbone_equals(model, src)


@pytest.mark.slow
def test_encoder_weights_from_a_legacy_h5_file(tmp_path):
    """The format of keras' own '..._no_top.h5' ImageNet downloads."""
    from keras.src.legacy.saving import legacy_h5_format

    src = _randomised_backbone(1)
    path = tmp_path / "mnv2_no_top.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    model = build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], encoder_weights=str(path))
    _assert_backbone_equals(model, src)


def test_encoder_weights_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match=r"encoder_weights: no such file .*nope\.weights\.h5.*'imagenet'"):
        build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], encoder_weights=str(missing))


def test_encoder_weights_wrong_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"encoder_weights: could not load .*junk\.h5.*mobilenetv2"):
        build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], encoder_weights=str(junk))


@pytest.mark.slow
def test_encoder_weights_for_another_alpha_is_a_clear_error(tmp_path):
    other_alpha = tmp_path / "alpha05.weights.h5"
    build_application("mobilenetv2", (32, 32, 3), alpha=0.5).save_weights(other_alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"could not load .*alpha=0\.35"):
            build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], encoder_weights=str(other_alpha))


@pytest.mark.slow
def test_deeplab_resnet50_builds_trains_and_round_trips(tmp_path):
    keras.utils.set_random_seed(4)
    params = {**tiny_params("deeplabv3plus"), "encoder": "resnet50", "encoder_alpha": 1.0}
    model = build_model("deeplabv3plus", SHAPE, 3, **params)
    assert model.name == "deeplabv3plus_resnet50"
    assert model.get_layer("preprocess").mode == "caffe"
    model.compile(keras.optimizers.Adam(1e-3), loss=build_loss("focal"), run_eagerly=True)
    x, y = batch()
    assert np.isfinite(float(model.train_on_batch(x, y)))
    path = tmp_path / "r50.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_deeplab_resizing_the_logits_is_the_same_function_on_3_channels():
    """upsample_logits (the default) moves the last x4 bilinear resize after the 1x1 head: the same function
    with the same weights (a 1x1 convolution and a bilinear resize commute), the resize on 3 channels."""
    import numpy as np

    late = build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"])
    early = build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], upsample_logits=False)
    assert late.get_layer("output_upsample4").output.shape[-1] == 3
    assert early.get_layer("output_upsample4").output.shape[-1] == 16  # aspp_filters
    rng = np.random.default_rng(0)
    weights = [rng.normal(0.0, 0.5, w.shape).astype("float32") if w.ndim > 1 else w for w in early.get_weights()]
    early.set_weights(weights)
    late.set_weights(weights)
    x = rng.random((2, 32, 32, 3)).astype("float32")
    a, b = np.asarray(early(x, training=False)), np.asarray(late(x, training=False))
    assert a.std() > 0.05  # far from uniform: a real comparison
    np.testing.assert_allclose(b, a, atol=1e-5)
    with pytest.raises(ValueError, match="upsample_logits must be true or false"):
        build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], upsample_logits="yes")


@pytest.mark.parametrize("upsample_logits", [True, False])
def test_deeplab_decoder_stride_2_predicts_on_a_map_twice_as_fine_and_trains(upsample_logits, tmp_path):
    """decoder_stride=2 adds a skip from the encoder's /2 features: the logits come at half the input size
    (16x24 for 32x48) instead of a quarter, one training step updates every weight (the new skip's too),
    and the model round-trips through .keras."""
    keras.utils.set_random_seed(4)
    model = build_model("deeplabv3plus", SHAPE, 3, **TINY["deeplabv3plus"], decoder_stride=2,
                        upsample_logits=upsample_logits)
    assert model.get_layer("decoder_fine_conv_pointwise_relu").output.shape[1:3] == (16, 24)
    assert model.get_layer("output_upsample2").input.shape[1:3] == (16, 24)
    assert model.output_shape == (None, *SHAPE[:2], 3)
    model.compile(keras.optimizers.Adam(1e-3), loss=build_loss("sce+dice"), run_eagerly=True)
    before = [v.numpy().copy() for v in model.trainable_variables]
    x, y = batch()
    assert np.isfinite(float(model.train_on_batch(x, y)))
    assert not [v.path for b, v in zip(before, model.trainable_variables) if np.array_equal(b, v.numpy())]
    path = tmp_path / "stride2.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("stride", [8, 1, True, "2"])
def test_deeplab_decoder_stride_must_be_4_or_2(stride):
    with pytest.raises(ValueError, match=r"decoder_stride must be one of 4, 2, got"):
        build_model("deeplabv3plus", (32, 32, 3), 3, **TINY["deeplabv3plus"], decoder_stride=stride)


def test_decoder_stride_is_in_the_config_with_a_clear_error_and_in_the_run_id():
    from segpipe.config import ConfigError, build_config
    from segpipe.runs.naming import run_id_for

    with pytest.raises(ConfigError, match=r"model\.decoder_stride: Input should be 4 or 2 \(got 8\)"):
        build_config("cpu-quick", {"model.decoder_stride": 8})
    with pytest.raises(ConfigError, match=r"model\.decoder_stride: model 'unet' does not take decoder_stride"):
        build_config("tiny", {"model.decoder_stride": 2})
    four = build_config("cpu-quick")
    two = build_config("cpu-quick", {"model.decoder_stride": 2})
    assert two.model.params()["decoder_stride"] == 2
    assert run_id_for(four, "k" * 16) != run_id_for(two, "k" * 16)


def test_aspp_filters_is_in_the_config_with_a_clear_error_reaches_the_model_and_the_run_id():
    from segpipe.config import ConfigError, build_config
    from segpipe.runs.naming import run_id_for

    with pytest.raises(ConfigError, match=r"model\.aspp_filters: Input should be greater than or equal to 8 \(got 4\)"):
        build_config("cpu-quick", {"model.aspp_filters": 4})
    with pytest.raises(ConfigError, match=r"model\.aspp_filters: model 'unet' does not take aspp_filters"):
        build_config("tiny", {"model.aspp_filters": 64})
    narrow, wide = build_config("cpu-quick"), build_config("cpu-quick", {"model.aspp_filters": 256})
    assert narrow.model.params()["aspp_filters"] == 128, "cpu-quick's width (issue 20's throughput recipe)"
    assert wide.model.params()["aspp_filters"] == 256 == build_config("full").model.params()["aspp_filters"]
    assert run_id_for(wide, "k" * 16) != run_id_for(narrow, "k" * 16)
    model = build_model("deeplabv3plus", (32, 32, 3), 3, **{**narrow.model.params(), "encoder_weights": None,
                                                             "encoder_alpha": 0.35})
    assert model.get_layer("decoder_conv2_pointwise_conv").output.shape[-1] == 128
