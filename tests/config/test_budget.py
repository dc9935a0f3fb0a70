"""Budgets, not epochs: a preset's length in images seen, epochs derived from the dataset size."""

from __future__ import annotations

import pytest

from segpipe.config.budget import format_duration, progress_line, training_plan
from segpipe.config import PRESETS, ConfigError, build_config


def test_every_preset_states_its_length_in_images_not_epochs():
    for name, preset in PRESETS.items():
        assert "budget_images" in preset["train"] and "epochs" not in preset["train"], name


@pytest.mark.parametrize("preset", ["cpu-quick", "cpu-scratch", "full"])
def test_a_preset_costs_about_the_same_on_the_sample_and_the_full_dataset(preset):
    train = build_config(preset).train
    small, large = training_plan(train, 270), training_plan(train, 3_312)
    assert small.epochs > large.epochs  # more passes over the small split ...
    for plan in (small, large):  # ... the same images seen, to within one epoch
        assert train.budget_images <= plan.total_images < train.budget_images + plan.images_per_epoch
    assert small.warmup_steps == large.warmup_steps == -(-train.warmup_images // train.batch_size)


def test_epochs_derived_from_the_budget_and_the_split():
    train = build_config("tiny", {"train": {"budget_images": 100, "batch_size": 4, "warmup_images": 10}}).train
    plan = training_plan(train, n_train=30)  # 8 steps of 4 = 32 images an epoch
    assert (plan.steps_per_epoch, plan.images_per_epoch, plan.epochs) == (8, 32, 4)
    assert (plan.total_steps, plan.total_images, plan.warmup_steps, plan.frozen_epochs) == (32, 128, 3, 0)


def test_an_epoch_is_at_most_a_tenth_of_the_budget_on_a_large_split():
    train = build_config("cpu-quick", {"train": {"budget_images": 8_000}}).train  # the first 800 frozen, batch 8
    sample, official = training_plan(train, 270), training_plan(train, 3_312)
    assert (sample.steps_per_epoch, sample.epochs, sample.frozen_epochs) == (34, 30, 3)  # one pass: 272 images
    assert (official.steps_per_epoch, official.epochs, official.frozen_epochs) == (125, 8, 1)  # 1,000-image epochs
    assert official.total_images == 8_000
    tiny = training_plan(build_config("tiny").train, 12)  # capped epochs never go below 1,000 images
    assert (tiny.steps_per_epoch, tiny.epochs) == (3, 1)


def test_epochs_override_the_budget():
    train = build_config("tiny", {"train": {"budget_images": 100_000, "epochs": 2, "batch_size": 4}}).train
    plan = training_plan(train, n_train=30)
    assert plan.epochs == 2 and plan.total_steps == 16 and plan.budget_images == 64


def test_frozen_phase_rounds_up_to_whole_epochs_and_stays_within_the_run():
    over = {"model": {"encoder": "mobilenetv2"}, "train": {"budget_images": 96, "batch_size": 4}}
    plan = training_plan(build_config("tiny", {**over, "train": {**over["train"], "freeze_encoder_images": 33}}).train, 30)
    assert plan.frozen_epochs == 2  # 33 images = 1.03 epochs of 32 -> 2
    plan = training_plan(build_config("tiny", {**over, "train": {**over["train"], "freeze_encoder_images": 10**6}}).train, 30)
    assert plan.frozen_epochs == plan.epochs == 3


def test_steps_per_epoch_override_defines_the_epoch():
    train = build_config("tiny", {"train": {"budget_images": 100, "batch_size": 4, "steps_per_epoch": 5}}).train
    plan = training_plan(train, n_train=1000)
    assert (plan.images_per_epoch, plan.epochs) == (20, 5)


def test_plan_needs_a_train_split():
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        training_plan(build_config("tiny").train, 0)


def test_progress_line_reports_images_against_the_budget_and_an_eta():
    plan = training_plan(build_config("tiny", {"train": {"budget_images": 3_000, "batch_size": 8}}).train, 240)
    assert plan.epochs == 13 and plan.images_per_epoch == 240
    assert progress_line(plan, 2, 20.0) == "epoch 3/13, 720/3,120 images (23%), ETA 3 min 20 s"
    assert progress_line(plan, 12, 20.0).endswith("(100%), ETA 0 s")
    assert progress_line(plan, 0, None) == "epoch 1/13, 240/3,120 images (8%)"
    assert progress_line(plan, 0, None, 160) == "epoch 1/13 at 160 px, 240/3,120 images (8%)"  # a progressive run
    assert [format_duration(s) for s in (4.4, 250, 7_500)] == ["4 s", "4 min 10 s", "2 h 05 min"]


@pytest.mark.parametrize(
    "over, field",
    [
        ({"train.budget_images": 0}, "train.budget_images"),
        ({"train.warmup_images": -1}, "train.warmup_images"),
        ({"train.freeze_encoder_images": -5}, "train.freeze_encoder_images"),
        ({"train.encoder_lr_multiplier": 0}, "train.encoder_lr_multiplier"),
        ({"train.epochs": 0}, "train.epochs"),
    ],
)
def test_bad_budget_values_name_the_field(over, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_config("cpu-quick", over)


@pytest.mark.parametrize("steps, asked, used", [(6, 1, 1), (6, 3, 3), (6, 4, 3), (34, 8, 2), (27, 9, 9), (27, 100, 27),
                                                (7, 6, 1)])
def test_steps_per_execution_is_the_largest_divisor_of_the_epoch_not_above_the_setting(steps, asked, used):
    train = build_config("tiny", {"train": {"steps_per_epoch": steps, "epochs": 2,
                                            "steps_per_execution": asked}}).train
    plan = training_plan(train, 1_000)
    assert (plan.steps_per_epoch, plan.steps_per_execution) == (steps, used)
    assert plan.to_json()["steps_per_execution"] == used


@pytest.mark.parametrize("bad", [0, -3, 1001, "many"])
def test_a_bad_steps_per_execution_fails_naming_it(bad):
    with pytest.raises(ConfigError, match=r"train\.steps_per_execution"):
        build_config("tiny", {"train": {"steps_per_execution": bad}})
