"""The optimizers: Adam or AdamW on the warm-up schedule, with an optional EMA of the weights, whose
encoder variables can step at a multiple of the learning rate (fine-tuning a pretrained encoder)."""

from __future__ import annotations

from typing import Any

import keras

from segpipe.config.budget import TrainingPlan
from segpipe.config import TrainConfig
from segpipe.kerascompat import variable_key
from segpipe.training.schedule import WarmupCosineDecay


class _ScaledLearningRate:
    """Optimizer mixin: the variables given to `scale_learning_rate` step at `multiplier` x the rate."""

    _scaled_keys: frozenset[Any] = frozenset()
    _multiplier: float = 1.0

    def scale_learning_rate(self, variables: list[Any], multiplier: float) -> None:
        """Call after `build`; `variables` must be among those the optimizer was built with."""
        self._scaled_keys = frozenset(variable_key(self, v) for v in variables)
        self._multiplier = float(multiplier)

    def finalize_variable_values(self, var_list: Any) -> None:
        """Leave the model's raw weights in place at the end of each `fit`.

        Keras would copy the EMA averages into `model.trainable_weights` here; with a frozen
        encoder that list is shorter than the optimizer's, and a run in two phases must go on
        from the raw weights. The averages reach model.keras through `BestModelCheckpoint`.
        """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> Any:
        if self._multiplier != 1.0 and variable_key(self, variable) in self._scaled_keys:
            learning_rate = learning_rate * self._multiplier
        return super().update_step(gradient, variable, learning_rate)  # type: ignore[misc]


@keras.saving.register_keras_serializable(package="segpipe")
class FineTuneAdam(_ScaledLearningRate, keras.optimizers.Adam):
    """Adam whose encoder variables step at a multiple of the learning rate."""


@keras.saving.register_keras_serializable(package="segpipe")
class FineTuneAdamW(_ScaledLearningRate, keras.optimizers.AdamW):
    """AdamW whose encoder variables step at a multiple of the learning rate (weight decay is not scaled)."""


def build_optimizer(train_cfg: TrainConfig, plan: TrainingPlan) -> keras.optimizers.Optimizer:
    """Adam or AdamW with the warm-up + cosine/constant schedule of `train_cfg` over `plan`'s steps."""
    schedule = WarmupCosineDecay(
        train_cfg.learning_rate,
        warmup_steps=plan.warmup_steps,
        total_steps=plan.total_steps,
        decay=train_cfg.schedule,
    )
    ema: dict[str, Any] = (
        {"use_ema": True, "ema_momentum": train_cfg.ema_momentum} if train_cfg.ema_momentum is not None else {}
    )
    if train_cfg.optimizer == "adamw":
        return FineTuneAdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay, **ema)
    return FineTuneAdam(learning_rate=schedule, **ema)
