"""Pretrained encoders: the registry, every encoder x decoder pair, preprocessing matched to the encoder,
weights by path (identified by content) and through Keras' own `$KERAS_HOME` cache, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from segpipe.config import ConfigError, build_config
from segpipe.fsutil import sha256_file
from segpipe.models import build_model
from segpipe.models.encoders import ENCODER_NAMES, ENCODERS, STRIDES, build_application, build_encoder, encoder_of
from segpipe.models.layers import BackbonePreprocess
from segpipe.runs.naming import run_id_for

REPO = Path(__file__).resolve().parents[2]
DECODERS = ("unet", "deeplabv3plus")
# Tiny settings: alpha 0.35 where the encoder has one; small decoders.
ALPHA = {"mobilenetv2": 0.35}
DECODER_PARAMS = {"unet": {"base_filters": 2}, "deeplabv3plus": {"aspp_filters": 8, "aspp_rates": (1, 2)}}


def _params(decoder: str, encoder: str, **extra) -> dict:
    return {"encoder": encoder, "encoder_alpha": ALPHA.get(encoder, 1.0), **DECODER_PARAMS[decoder], **extra}


def test_registry_covers_the_three_encoders():
    assert set(ENCODER_NAMES) == {"mobilenetv2", "resnet50", "efficientnetb0"}


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_encoder_returns_features_at_strides_2_to_32(encoder):
    model = build_encoder(encoder, (64, 96, 3), alpha=ALPHA.get(encoder, 1.0))
    assert model.name == "encoder"
    assert [(o.shape[1], o.shape[2]) for o in model.outputs] == [(64 // s, 96 // s) for s in STRIDES]
    cut = build_encoder(encoder, (64, 96, 3), alpha=ALPHA.get(encoder, 1.0), strides=(4, 16))
    assert [o.shape[1] for o in cut.outputs] == [16, 4]
    assert len(cut.layers) < len(model.layers)  # the layers after /16 are not computed for DeepLabV3+


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_preprocessing_matches_the_encoders_own(encoder):
    x = np.random.default_rng(0).random((1, 4, 4, 3), dtype=np.float32)
    module = {"mobilenetv2": "mobilenet_v2", "resnet50": "resnet50", "efficientnetb0": "efficientnet"}[encoder]
    want = getattr(keras.applications, module).preprocess_input(x * 255.0)
    got = keras.ops.convert_to_numpy(BackbonePreprocess(ENCODERS[encoder].preprocess)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.weights]


@pytest.mark.parametrize(
    "decoder, encoder",
    [pytest.param(d, e, marks=[] if e == "mobilenetv2" else [pytest.mark.slow]) for e in ENCODER_NAMES for d in DECODERS],
)
def test_every_encoder_decoder_pair_builds_and_trains_a_step(decoder, encoder):
    keras.utils.set_random_seed(1)
    model = build_model(decoder, (32, 32, 3), 3, **_params(decoder, encoder))
    assert model.name == f"{decoder}_{encoder}" and encoder_of(model) is not None
    assert model.get_layer("preprocess").mode == ENCODERS[encoder].preprocess
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 32, 32, 3), dtype=np.float32), rng.integers(0, 3, (2, 32, 32, 1))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (2, 32, 32, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    encoder_before, head_before = _weights(encoder_of(model)), model.get_layer("head_logits").kernel.numpy().copy()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", run_eagerly=True)
    loss = float(model.train_on_batch(x, y))
    assert np.isfinite(loss)
    assert not np.allclose(model.get_layer("head_logits").kernel.numpy(), head_before)
    assert any(not np.allclose(a, b) for a, b in zip(_weights(encoder_of(model)), encoder_before))


def test_unet_on_an_encoder_needs_multiples_of_32():
    with pytest.raises(ValueError, match=r"img_size 48x48 does not suit model 'unet'.*multiples of 32"):
        build_model("unet", (48, 48, 3), 3, encoder="mobilenetv2", encoder_alpha=0.35)
    with pytest.raises(ConfigError, match=r"train\.img_size: .*multiples of 32"):
        build_config("cpu-quick", {"model.name": "unet", "train.img_size": 144})


# --------------------------------------------------------------------------- weights by path


def randomised_mobilenetv2(seed: int, size: int = 32) -> keras.Model:
    """A tiny MobileNetV2 application with every weight (BN statistics too) set to random values."""
    src = build_application("mobilenetv2", (size, size, 3), alpha=0.35)
    rng = np.random.default_rng(seed)
    src.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in src.get_weights()])
    return src


def assert_encoder_holds(model: keras.Model, src: keras.Model) -> None:
    weighted = [layer for layer in encoder_of(model).layers if layer.weights]
    assert len(weighted) > 50
    for layer in weighted:
        for got, want in zip(layer.get_weights(), src.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model]:
    src = randomised_mobilenetv2(0)
    path = tmp_path_factory.mktemp("weights") / "mnv2-035.weights.h5"
    src.save_weights(path)
    return path, src


def test_unet_loads_encoder_weights_from_a_file(weights_file):
    path, src = weights_file
    model = build_model("unet", (64, 64, 3), 3, **_params("unet", "mobilenetv2", encoder_weights=str(path)))
    assert_encoder_holds(model, src)


def _cfg(path: Path | str | None, **train):  # None: no weights (random init)
    weights = "none" if path is None else str(path)
    return build_config("tiny", {"model": {"encoder": "mobilenetv2", "encoder_alpha": 0.35, "encoder_weights": weights},
                                 "train": train})


def test_weights_file_enters_the_run_id_by_digest_not_path(weights_file, tmp_path):
    path, _ = weights_file
    rid = run_id_for(_cfg(path), "ds", "code")
    moved = tmp_path / "elsewhere" / "renamed.weights.h5"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert run_id_for(_cfg(moved), "ds", "code") == rid  # moved: same content, same run
    changed = tmp_path / "changed.weights.h5"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert run_id_for(_cfg(changed), "ds", "code") != rid  # one byte changed: another run
    content = _cfg(moved).model.cache_content()
    assert str(moved) not in json.dumps(content) and "renamed" not in json.dumps(content)
    assert len(content["encoder_weights"]["sha256"]) == 64


def test_missing_weights_file_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.encoder_weights: no such file .*nope\.weights\.h5.*'imagenet'"):
        _cfg(tmp_path / "nope.weights.h5")
    # only a recorded run's re-resolution elsewhere (the benchmarks' drift check) skips the check: same path, made absolute
    from segpipe.config import build_config

    cfg = build_config("cpu-quick", {"model.encoder_weights": str(tmp_path / "x" / ".." / "nope.weights.h5")},
                       check_files=False)
    assert cfg.model.encoder_weights == str(tmp_path / "nope.weights.h5")


def test_cli_names_a_missing_weights_file_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "segpipe_app.cli.main", "config", "--preset", "cpu-quick",
         "--set", f"model.encoder_weights={tmp_path / 'nope.h5'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "model.encoder_weights: no such file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "over, match",
    [
        ({"model": {"name": "segnet", "encoder": "mobilenetv2"}}, r"model\.encoder: model 'segnet' takes no encoder"),
        ({"model": {"encoder_weights": "imagenet"}}, r"model\.encoder_weights: set model\.encoder"),
        ({"model": {"encoder": "vgg16"}}, r"model\.encoder: .*unknown encoder 'vgg16'"),
        ({"model": {"encoder": "resnet50", "encoder_alpha": 0.5}}, r"model\.encoder_alpha: only mobilenetv2"),
        ({"train": {"freeze_encoder_images": 100}}, r"train\.freeze_encoder_images: model 'unet' has no pretrained"),
        ({"train": {"encoder_lr_multiplier": 0.1}}, r"train\.encoder_lr_multiplier: model 'unet' has no pretrained"),
        ({"train": {"fold_frozen_bn": True}}, r"train\.fold_frozen_bn: model 'unet' has no pretrained"),
        ({"train": {"freeze_encoder_stride": 4}}, r"train\.freeze_encoder_stride: model 'unet' has no pretrained"),
        ({"model": {"encoder": "mobilenetv2"}, "train": {"freeze_encoder_stride": 3}},
         r"train\.freeze_encoder_stride: .*0, 2, 4, 8 or 16"),
        ({"model": {"encoder": "mobilenetv2"}, "train": {"fold_frozen_bn": True}},
         r"train\.fold_frozen_bn: no batch norm stays frozen to fold; expected train\.freeze_encoder_images > 0"),
    ],
)
def test_encoder_options_that_do_not_fit_are_clear_errors(over, match):
    with pytest.raises(ConfigError, match=match):
        build_config("tiny", over)


def test_switching_a_pretrained_preset_to_a_scratch_model_drops_the_encoder():
    cfg = build_config("cpu-quick", {"model.name": "segnet"})
    assert cfg.model.encoder is None and cfg.model.encoder_weights is None and cfg.train.freeze_encoder_images == 0
    assert build_config("tiny", {"model.name": "deeplabv3plus", "train.img_size": 32}).model.encoder == "mobilenetv2"


# --------------------------------------------------------------------------- "imagenet" through Keras' cache


IMAGENET_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from segpipe.models.encoders import build_encoder, EncoderWeightsUnavailable, recording_weights_files
    try:
        with recording_weights_files() as loaded:
            enc = build_encoder("mobilenetv2", (32, 32, 3), "imagenet", alpha=0.35)
    except EncoderWeightsUnavailable as exc:
        print(json.dumps({"error": str(exc)})); sys.exit(0)
    print(json.dumps({"Conv1": enc.get_layer("Conv1").get_weights()[0].ravel()[:8].tolist(), "loaded": loaded}))
""")


def _probe(keras_home: Path) -> dict:
    env = {**os.environ, "KERAS_HOME": str(keras_home), "TF_CPP_MIN_LOG_LEVEL": "3",
           # No internet: any download attempt is refused at once by a closed loopback port.
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", IMAGENET_PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_imagenet_route_is_served_offline_by_a_primed_keras_home(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    src = randomised_mobilenetv2(7)
    models_dir = tmp_path / "keras-home" / "models"
    models_dir.mkdir(parents=True)
    # The legacy file under the name Keras caches for alpha 0.35 (inputs below 96 px use the 224 file).
    primed = models_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    with h5py.File(primed, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    (models_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5").write_bytes(b"not loaded")
    got = _probe(tmp_path / "keras-home")
    np.testing.assert_allclose(got["Conv1"], src.get_layer("Conv1").get_weights()[0].ravel()[:8])
    # What lineage.json records: the file Keras loaded, by its bytes.
    assert got["loaded"] == [{"encoder": "mobilenetv2", "route": "imagenet", "file": primed.name,
                              "sha256": sha256_file(primed)}]


@pytest.mark.slow
def test_imagenet_without_internet_or_cache_says_how_to_supply_a_file(tmp_path):
    got = _probe(tmp_path / "empty-keras-home")
    assert "encoder_weights='imagenet'" in got["error"]
    assert "--set model.encoder_weights=" in got["error"] and "$KERAS_HOME/models/" in got["error"]


def test_training_task_cache_key_sees_the_weights_digest_not_the_path(weights_file, tmp_path):
    """The train task's key hashes `ModelConfig.cache_content()` (tasks/caching.py's Content policy)."""
    path, _ = weights_file
    moved = tmp_path / "moved.weights.h5"
    shutil.copy(path, moved)
    assert _cfg(path).model.cache_content() == _cfg(moved).model.cache_content()
    assert str(tmp_path) not in json.dumps(_cfg(moved).model.cache_content())
    assert _cfg(path).model.cache_content() != _cfg(None).model.cache_content()


def test_cli_default_preset_is_the_pretrained_cpu_quick(capsys):
    from segpipe_app.cli.main import main

    assert main(["config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "cpu-quick" and cfg["model"]["encoder"] == "mobilenetv2"
    assert cfg["model"]["encoder_weights"] == "imagenet" and cfg["train"]["freeze_encoder_images"] > 0
