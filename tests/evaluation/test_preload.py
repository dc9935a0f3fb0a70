"""Tests for segpipe.preload (models loading in a child process while the caller starts up) and for the
eager-first forward pass of segpipe.evaluation.ensemble: real child processes, real signals, real models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe import predict
from segpipe.evaluation import ensemble
from segpipe.preload import can_preload, preloaded, take
from tests.evaluation.test_predict import colour_model, expected_halves, halves, mask_of
from tests.faults import REPO, child_env

pytestmark = pytest.mark.slow  # each test starts a child that imports TensorFlow


@pytest.fixture(scope="module")
def unet(tmp_path_factory) -> Path:
    from segpipe.models import build_model

    path = tmp_path_factory.mktemp("models") / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(path)
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(halves(40, 48)).save(src / "photo.png")
    Image.fromarray(halves(33, 50, (255, 0, 0), (0, 0, 255))).save(src / "second.png")
    return src


def test_predict_runs_in_the_child_and_matches_in_process(unet, images, tmp_path, monkeypatch):
    expected = predict.predict_paths([unet], [images], tmp_path / "here", batch_size=1, flip=True)
    with preloaded([unet], flip=True) as child:
        # the caller must not load the model itself: it would fail here
        monkeypatch.setattr(ensemble, "load_models", lambda paths: pytest.fail("loaded in the caller"))
        report = predict.predict_paths([unet], [images], tmp_path / "child", batch_size=1, flip=True)
        assert take([unet], flip=True) is child
        assert take([unet], flip=False) is None  # another flip setting: not this child
        proc = child._proc
    assert proc.poll() is not None, "leaving the block stops the child"
    assert [Path(w["input"]).name for w in report.written] == ["photo.png", "second.png"]
    for name in ("photo.png", "second.png"):
        np.testing.assert_array_equal(mask_of(report, name), mask_of(expected, name))
    from segpipe.fsutil import read_json

    assert read_json(report.summary)["img_size"] == [[32, 32]] == read_json(expected.summary)["img_size"]


def test_a_model_file_changed_after_the_child_loaded_it_is_loaded_again_here(unet, images, tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(unet.read_bytes())
    with preloaded([path], flip=False) as child:
        child.wait_ready()
        colour_model(path)  # another model under the same name
        assert take([path], flip=False) is None
        report = predict.predict_paths([path], [images / "photo.png"], tmp_path / "out")
    np.testing.assert_array_equal(mask_of(report, "photo.png"), expected_halves(40, 48))  # the colour model's


def test_a_corrupt_model_fails_with_the_in_process_error(images, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError) as here:
        predict.predict_paths([bad], [images], tmp_path / "here")
    with preloaded([bad], flip=False), pytest.raises(ValueError) as there:
        predict.predict_paths([bad], [images], tmp_path / "child")
    assert str(there.value) == str(here.value)
    assert f"cannot load model {bad.resolve()} (expected a .keras file)" in str(there.value)
    assert "not a zip archive" in str(there.value) and "File not found" not in str(there.value)  # Keras' own words


def test_the_child_ignores_sigint_and_a_dead_child_is_named(unet, images, tmp_path):
    with preloaded([unet], flip=False) as child:
        child.wait_ready()
        os.kill(child._proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches it too; the caller handles it
        assert len(child.labels([halves(10, 12)])) == 1  # answered after the SIGINT: ignored, not fatal
        assert child._proc.poll() is None
        child._proc.kill()
        with pytest.raises(RuntimeError, match=r"the process loading .*unet\.keras ended \(exit status -9\)"):
            child.labels([halves(10, 12)])


def test_the_child_exits_when_its_caller_goes_away(unet):
    """stdin at EOF (the caller died, or closed it): the child exits by itself, status 0, after loading."""
    run = subprocess.run([sys.executable, "-m", "segpipe.preload", "0", "none", str(unet)], stdin=subprocess.DEVNULL,
                         capture_output=True, cwd=REPO, env=child_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout  # the ready message, pickled; nothing else


def test_eager_and_traced_forward_passes_agree_bit_for_bit(unet):
    """The first EAGER_CALLS calls of a model run eagerly, the rest traced: the outputs must not change."""
    import keras

    from segpipe.models import build_model

    rng = np.random.default_rng(0)
    for model in (keras.saving.load_model(unet, compile=False),
                  build_model("deeplabv3plus", (64, 64, 3), 3, encoder="mobilenetv2", encoder_weights=None,
                              aspp_filters=8, aspp_rates=(1, 2))):
        batch = rng.random((2, *model.input_shape[1:3], 3)).astype(np.float32)
        outputs = [ensemble.forward(model, batch) for _ in range(ensemble.EAGER_CALLS + 2)]
        for out in outputs[1:]:
            np.testing.assert_array_equal(out, outputs[0])


def test_only_keras_files_are_preloaded(unet, tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"x")
    assert can_preload([unet]) and can_preload([unet, unet])
    assert not can_preload([]) and not can_preload([tmp_path / "model.tflite"])
    assert not can_preload([unet, tmp_path / "missing.keras"]) and not can_preload([tmp_path])
