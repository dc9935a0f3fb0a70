"""A training run's length from its budget of images seen: importable without TensorFlow.

    plan = training_plan(cfg.train, n_train=270)
    plan.epochs, plan.steps_per_epoch, plan.warmup_steps, plan.frozen_epochs, plan.small_epochs

Presets state their length in training images seen (`train.budget_images`), and
warm-up and encoder freezing in the same unit, so one preset costs about the
same on 300 or 7,390 images. An epoch is one pass over the train split, but at
most a tenth of the budget (and never less than 1,000 images when capped), so a
budget always gives about ten or more checkpoints, validations and ETA updates,
and the frozen phase ends close to where it was asked to; the run is the whole
number of epochs that covers the budget. Progressive resizing (`train.progressive_images`) is in whole
epochs too, and always leaves the last epoch at `train.img_size`. `train.epochs` overrides the budget
(an epoch is then one pass), `train.steps_per_epoch` the epoch's length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from segpipe.config import TrainConfig
from segpipe.progress import format_duration

MIN_EPOCHS_PER_BUDGET = 10  # an epoch is at most budget / 10 images ...
MIN_CAPPED_EPOCH_IMAGES = 1_000  # ... but a capped epoch holds at least this many


@dataclass(frozen=True)
class TrainingPlan:
    steps_per_epoch: int
    epochs: int
    batch_size: int
    budget_images: int  # what the config asked for (epochs * images_per_epoch when `epochs` overrides it)
    warmup_steps: int
    frozen_epochs: int  # leading epochs with the encoder frozen (0: never frozen)
    small_epochs: int = 0  # leading epochs at train.progressive_img_size (0: all at train.img_size)
    steps_per_execution: int = 1  # train steps per call of the compiled train function; divides steps_per_epoch

    @property
    def images_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def total_images(self) -> int:
        return self.epochs * self.images_per_epoch

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_epoch": self.images_per_epoch, "total_steps": self.total_steps,
                "total_images": self.total_images}


def training_plan(train: TrainConfig, n_train: int) -> TrainingPlan:
    """Epochs, steps and phase boundaries of `train` on a train split of `n_train` examples."""
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1 to plan training, got {n_train}")
    steps = train.steps_per_epoch or math.ceil(n_train / train.batch_size)
    if train.steps_per_epoch is None and train.epochs is None:
        cap_images = max(train.budget_images / MIN_EPOCHS_PER_BUDGET, MIN_CAPPED_EPOCH_IMAGES)
        steps = min(steps, math.ceil(cap_images / train.batch_size))
    per_epoch = steps * train.batch_size
    epochs = train.epochs if train.epochs is not None else max(1, math.ceil(train.budget_images / per_epoch))
    frozen = min(epochs, math.ceil(train.freeze_encoder_images / per_epoch))
    small = min(epochs - 1, math.ceil(train.progressive_images / per_epoch)) if train.progressive_img_size else 0
    return TrainingPlan(
        steps_per_epoch=steps,
        epochs=epochs,
        batch_size=train.batch_size,
        budget_images=train.budget_images if train.epochs is None else epochs * per_epoch,
        warmup_steps=math.ceil(train.warmup_images / train.batch_size),
        frozen_epochs=frozen,
        small_epochs=small,
        steps_per_execution=largest_divisor_up_to(steps, train.steps_per_execution),
    )


def largest_divisor_up_to(n: int, most: int) -> int:
    """The largest divisor of `n` that is at most `most`: the steps per execution that keep an epoch `n` steps
    long (Keras runs whole executions, so with an endless dataset 34 steps at 8 per call would be 40)."""
    return max(d for d in range(1, min(n, most) + 1) if n % d == 0)


def progress_line(plan: TrainingPlan, epoch: int, seconds_per_epoch: float | None, img_size: int | None = None) -> str:
    """`epoch 3/15, 816/4,080 images (20%), ETA 4 min 10 s` after 0-based `epoch` completed; with `img_size` (a
    progressive run), `epoch 3/15 at 160 px, ...`."""
    done = (epoch + 1) * plan.images_per_epoch
    at = f" at {img_size} px" if img_size else ""
    line = (f"epoch {epoch + 1}/{plan.epochs}{at}, {done:,}/{plan.total_images:,} images "
            f"({100 * done / plan.total_images:.0f}%)")
    if seconds_per_epoch is not None:
        line += f", ETA {format_duration(seconds_per_epoch * (plan.epochs - epoch - 1))}"
    return line
