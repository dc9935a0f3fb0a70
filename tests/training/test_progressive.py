"""Progressive resizing (`train.progressive_img_size`, `train.progressive_images`): the config's errors, the plan's
phases, a DeepLabV3+ built for any input size computing what the fixed-size one computes, and runs on tiny
inputs that train at the small size first, validate and save at `train.img_size`, and resume across the size
change to where an uninterrupted run ends."""

from __future__ import annotations

import logging
import keras
import numpy as np
import pytest

from segpipe.config import ConfigError, build_config
from segpipe.config.budget import training_plan
from segpipe.fsutil import read_json
from segpipe.models import build_model
from segpipe.training import read_history, run_id_for, train
from segpipe.training.model import Phase, phases
from tests.synthetic import write_tiny_dataset

DEEPLAB = {"name": "deeplabv3plus", "encoder": "mobilenetv2", "encoder_alpha": 0.35, "encoder_weights": None,
           "aspp_filters": 8, "aspp_rates": (1, 2)}


class Interrupt(Exception):
    pass


def cfg_for(**train):
    return build_config("tiny", {"model": DEEPLAB, "train": {"img_size": 64, "batch_size": 4, **train}})


@pytest.mark.parametrize(("train", "field", "expected"), [
    ({"progressive_images": 8}, "train.progressive_images", "expected train.progressive_img_size with it"),
    ({"progressive_img_size": 64, "progressive_images": 8}, "train.progressive_img_size",
     "must be smaller than train.img_size (64)"),
    ({"progressive_img_size": 40, "progressive_images": 8}, "train.progressive_img_size", "multiples of 16"),
    ({"progressive_img_size": 32}, "train.progressive_images", "expected the number of images"),
    ({"progressive_img_size": 32, "progressive_images": 32, "budget_images": 32}, "train.progressive_images",
     "leaves none of train.budget_images (32)"),
    ({"progressive_img_size": 8, "progressive_images": 8}, "progressive_img_size", "greater than or equal to 16"),
])
def test_bad_progressive_settings_fail_naming_the_field(train, field, expected):
    with pytest.raises(ConfigError) as err:
        cfg_for(**train)
    assert field in str(err.value) and expected in str(err.value)


def test_a_model_that_cannot_change_its_input_size_is_refused():
    with pytest.raises(ConfigError, match=r"train.progressive_img_size: model 'unet' cannot change its input size"):
        build_config("tiny", {"train": {"img_size": 64, "progressive_img_size": 32, "progressive_images": 8}})


def test_the_plan_and_its_phases():
    # 8 train images at batch 4: 8 images an epoch; 48 images = 6 epochs; 2 frozen, 3 small (20 rounded up)
    cfg = cfg_for(budget_images=48, progressive_img_size=32, progressive_images=20, freeze_encoder_images=16)
    plan = training_plan(cfg.train, 8)
    assert (plan.epochs, plan.frozen_epochs, plan.small_epochs) == (6, 2, 3)
    assert phases(plan, 0, 64, 32) == [Phase(True, 32, 2), Phase(False, 32, 3), Phase(False, 64, 6)]
    assert phases(plan, 2, 64, 32) == [Phase(False, 32, 3), Phase(False, 64, 6)]  # a resume past the frozen phase
    assert phases(plan, 4, 64, 32) == [Phase(False, 64, 6)]
    # the last epoch is always at img_size, however the images round
    nearly_all = training_plan(cfg_for(budget_images=48, progressive_img_size=32, progressive_images=47).train, 8)
    assert (nearly_all.epochs, nearly_all.small_epochs) == (6, 5)
    off = training_plan(cfg_for(budget_images=48).train, 8)
    assert off.small_epochs == 0 and phases(off, 0, 64) == [Phase(False, 64, 6)]


def test_the_model_for_any_size_computes_what_the_fixed_one_computes():
    params = {k: v for k, v in DEEPLAB.items() if k != "name"}
    keras.utils.set_random_seed(0)
    free = build_model("deeplabv3plus", (None, None, 3), 3, **params)
    fixed = build_model("deeplabv3plus", (64, 64, 3), 3, **params)
    assert free.input_shape == (None, None, None, 3) and fixed.input_shape == (None, 64, 64, 3)
    fixed.set_weights(free.get_weights())
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    np.testing.assert_array_equal(free(x, training=False).numpy(), fixed(x, training=False).numpy())
    small = free(x[:, :32, :32], training=False).numpy()
    assert small.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(small.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def progressive_runs(tmp_path_factory: pytest.TempPathFactory):
    """One progressive run killed at the size change (after its last small epoch), then resumed; and the same
    run never interrupted. (A resume inside one phase is the ordinary resume, tested in test_training.py and
    test_finetune.py; each extra run here costs about half a minute of graph tracing.)"""
    tmp = tmp_path_factory.mktemp("progressive")
    ds = write_tiny_dataset(tmp / "ds", {"train": 8, "val": 4}, key="prog-ds")
    # 2 steps of 4 = 8 images an epoch; 4 epochs, the first 2 at 32 px
    cfg = cfg_for(budget_images=32, progressive_img_size=32, progressive_images=16, augment=False,
                  learning_rate=1e-2)
    run_dir = tmp / "runs" / run_id_for(cfg, "prog-ds", "test")
    seen: list[int] = []
    progress: list[str] = []
    sizes: list[tuple[int, int]] = []
    fit = keras.Model.fit

    def fit_and_record(self, x=None, *args, **kwargs):  # the training images' size of each fit
        sizes.append((int(x.element_spec[0].shape[1]), int(kwargs["validation_data"].element_spec[0].shape[1])))
        return fit(self, x, *args, **kwargs)

    def kill_after(stop: int):
        def hook(epoch: int, logs: dict) -> None:
            seen.append(epoch)
            progress.append(logs["progress"])
            if epoch == stop:
                raise Interrupt(f"killed after epoch {stop}")
        return hook

    phase_lines: dict[str, list[str]] = {"killed": [], "resumed": [], "straight": []}  # what on_phase was told
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.Model, "fit", fit_and_record)
        with pytest.raises(Interrupt):
            train(cfg, ds, run_dir, on_epoch_end=kill_after(1), on_phase=phase_lines["killed"].append, verbose=0)
        resumed = train(cfg, ds, run_dir, on_epoch_end=lambda e, logs: (seen.append(e), progress.append(logs["progress"])),
                        on_phase=phase_lines["resumed"].append, verbose=0)
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("segpipe.training")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        straight = train(cfg, ds, tmp / "straight" / run_dir.name, on_phase=phase_lines["straight"].append, verbose=0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"cfg": cfg, "run_dir": run_dir, "seen": seen, "sizes": sizes, "resumed": resumed, "straight": straight,
            "straight_log": lines, "progress": progress, "phase_lines": phase_lines}


@pytest.mark.slow
def test_a_progressive_run_trains_small_first_and_validates_and_saves_at_img_size(progressive_runs):
    run_dir, resumed = progressive_runs["run_dir"], progressive_runs["resumed"]
    # fits: epochs 0-1 at 32 px, killed after epoch 1 (the size change), resumed at epoch 2 (64 px);
    # validation always at 64 px
    assert progressive_runs["sizes"] == [(32, 64), (64, 64)]
    assert progressive_runs["seen"] == [0, 1, 2, 3]
    # what the CLI prints after each epoch says the size it trained at
    assert [line.split(",")[0] for line in progressive_runs["progress"]] == [
        "epoch 1/4 at 32 px", "epoch 2/4 at 32 px", "epoch 3/4 at 64 px", "epoch 4/4 at 64 px"]
    assert resumed.epochs_completed == 4 and resumed.resumed_from_epoch == 2
    assert [row["epoch"] for row in read_history(run_dir / "history.csv")] == [0, 1, 2, 3]
    assert read_json(run_dir / "lineage.json")["plan"]["small_epochs"] == 2
    saved = keras.saving.load_model(resumed.model_path, compile=False)
    assert saved.input_shape == (None, 64, 64, 3)  # what evaluate, predict and export expect


@pytest.mark.slow
def test_a_progressive_run_resumed_across_the_size_change_ends_where_an_uninterrupted_one_ends(progressive_runs):
    resumed, straight = progressive_runs["resumed"], progressive_runs["straight"]
    for got, want in zip(resumed.history, straight.history):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert resumed.best_epoch == straight.best_epoch
    got = keras.saving.load_model(resumed.model_path, compile=False).get_weights()
    want = keras.saving.load_model(straight.model_path, compile=False).get_weights()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_the_log_and_on_phase_say_which_size_each_phase_trains_at(progressive_runs):
    both = ["epochs up to 2: training images 32 px, validation at 64 px", "epochs up to 4: training images 64 px"]
    assert [line for line in progressive_runs["straight_log"] if line.startswith("epochs up to")] == both
    # the train task logs what on_phase is told: a run resumed after the small phase says only the phase it trains
    assert progressive_runs["phase_lines"] == {"killed": both[:1], "resumed": both[1:], "straight": both}


def test_the_progressive_settings_change_the_run_identity():
    off = cfg_for(budget_images=32)
    on = cfg_for(budget_images=32, progressive_img_size=32, progressive_images=16)
    longer = cfg_for(budget_images=32, progressive_img_size=32, progressive_images=24)
    assert len({run_id_for(c, "ds", "code") for c in (off, on, longer)}) == 3
