"""`train.steps_per_execution`: several train steps per call of the compiled train function trains the same
steps on the same batches as one step per call; an epoch keeps its length when the setting does not divide it."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from segpipe.config import build_config
from segpipe.config.budget import training_plan
from segpipe.fsutil import read_json
from segpipe.training import train
from tests.synthetic import write_tiny_dataset


def test_several_steps_per_call_train_exactly_what_one_step_per_call_trains(tmp_path: Path) -> None:
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 24, "val": 4})  # 6 steps of 4 an epoch
    weights, histories = {}, {}
    for asked in (1, 4):  # 4 does not divide 6: 3 steps per call, or Keras would run 8 steps an epoch
        cfg = build_config("tiny", {"train": {"epochs": 2, "batch_size": 4, "augment": True,
                                              "steps_per_execution": asked}})
        plan = training_plan(cfg.train, 24)
        assert (plan.steps_per_epoch, plan.steps_per_execution) == (6, 1 if asked == 1 else 3)
        lines: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("segpipe.training").addHandler(handler)
        try:
            result = train(cfg, ds, tmp_path / f"run-{asked}", verbose=0)
        finally:
            logging.getLogger("segpipe.training").removeHandler(handler)
        said = [line for line in lines if "train.steps_per_execution" in line]
        assert said == ([] if asked == 1 else
                        ["train.steps_per_execution=4: 3 step(s) per call instead, the largest divisor of the "
                         "epoch's 6 steps (an epoch keeps its length)"])
        assert result.epochs_completed == 2
        assert read_json(tmp_path / f"run-{asked}" / "lineage.json")["plan"]["steps_per_execution"] == \
            plan.steps_per_execution
        model = keras.saving.load_model(tmp_path / f"run-{asked}" / "model.keras", compile=False)
        weights[asked] = model.get_weights()
        # the learning rate at an epoch's end follows the optimizer's step count (the schedule): if the runs
        # differ, a difference there says one took other steps, and losses alone say other batches or numbers
        histories[asked] = [(row["loss"], row["val_loss"], row["learning_rate"]) for row in result.history]
    assert histories[1] == histories[4]  # the same batches, the same steps: the same losses, epoch by epoch
    for one, several in zip(weights[1], weights[4], strict=True):
        np.testing.assert_allclose(several, one, rtol=0, atol=1e-6)
