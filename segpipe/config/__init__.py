"""The configuration: one typed pydantic model (`schema`) with named presets (`presets`).

    cfg = build_config("cpu-quick", {"train.epochs": 3})

- `schema`: `PipelineConfig` and its sections, `build_config`, `ConfigError`, and the value sets the schema
  accepts (loss names, the collapse threshold's default);
- `presets`: the named presets, as plain dictionaries validated by `build_config`;
- `augment`: each augmentation knob's name, default and range (`train.<knob>` and `augment_batch` share them);
- `budget`: a run's epochs, steps and phases from its budget of training images seen.

Everything here imports without TensorFlow or Keras, so the CLI validates a config before any heavy import.
"""

from segpipe.config.presets import PRESETS
from segpipe.config.schema import (COLLAPSE_THRESHOLD, DEFAULT_LOSS, LOSS_NAMES, LOSSES, OFFICIAL_SOURCE, ConfigError,
                                   DataConfig, EvalConfig, ModelConfig, PipelineConfig, PromotionConfig, TrainConfig,
                                   build_config, format_validation_error)

__all__ = [
    "PRESETS", "COLLAPSE_THRESHOLD", "DEFAULT_LOSS", "LOSS_NAMES", "LOSSES", "OFFICIAL_SOURCE", "ConfigError",
    "DataConfig", "EvalConfig", "ModelConfig", "PipelineConfig", "PromotionConfig", "TrainConfig", "build_config",
    "format_validation_error",
]
