"""The learning-rate schedule: linear warm-up, then cosine decay (or a constant rate) over the plan's steps."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="segpipe")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate` over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    With `decay="constant"` the rate stays at the peak after the warm-up.
    During warm-up, step s (0-based) uses peak * (s + 1) / warmup_steps.
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int, decay: str = "cosine"):
        if peak_learning_rate <= 0 or warmup_steps < 0 or total_steps < 1 or decay not in ("cosine", "constant"):
            raise ValueError(
                "WarmupCosineDecay needs peak_learning_rate > 0, warmup_steps >= 0, total_steps >= 1 and decay "
                f"'cosine' or 'constant'; got {peak_learning_rate}, {warmup_steps}, {total_steps}, {decay!r}"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.decay = decay

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warm = peak * ops.minimum(1.0, (step + 1.0) / max(1, self.warmup_steps))
        if self.decay == "constant":
            return warm if self.warmup_steps else ops.full_like(step, peak)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
        }
