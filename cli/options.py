"""From parsed flags to one validated `PipelineConfig`: preset, --config, --set and the stage flags.

Runs before Prefect or TensorFlow is imported, so a bad flag fails in milliseconds with a message naming
the field.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from segpipe_app.cli.errors import CliError
from segpipe_app.cli.parser import DEFAULT_PRESET
from segpipe.config import PipelineConfig, build_config

# flag -> dotted config field
DATA_FLAGS = {
    "source": "data.source", "split": "data.split", "val_fraction": "data.val_fraction",
    "test_fraction": "data.test_fraction", "seed": "data.seed", "shard_size_mb": "data.shard_size_mb",
    "workers": "data.workers", "download_timeout": "data.download_timeout_s", "holdout_breeds": "data.holdout_breeds",
}
TRAIN_FLAGS = {
    "model": "model.name", "base_filters": "model.base_filters", "depth": "model.depth",
    "encoder": "model.encoder", "backbone": "model.encoder", "encoder_weights": "model.encoder_weights",
    "budget_images": "train.budget_images", "freeze_encoder_images": "train.freeze_encoder_images",
    "encoder_lr_multiplier": "train.encoder_lr_multiplier", "epochs": "train.epochs", "img_size": "train.img_size", "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate", "optimizer": "train.optimizer", "loss": "train.loss",
    "train_seed": "train.seed", "mixed_precision": "train.mixed_precision", "jit_compile": "train.jit_compile",
    "augment": "train.augment", "steps_per_epoch": "train.steps_per_epoch", "ema_momentum": "train.ema_momentum",
}
EVAL_FLAGS = {
    "eval_split": "eval.split", "eval_batch_size": "eval.batch_size",
    "gallery_samples": "eval.gallery_samples", "gallery_worst": "eval.gallery_worst",
    "min_mean_iou": "promotion.min_mean_iou", "tta_flip": "eval.tta_flip", "tta_sizes": "eval.tta_sizes",
}


def parse_value(raw: str) -> Any:
    """A `--set FIELD=VALUE` value: JSON when it parses (numbers, booleans, null, lists), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            overrides.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"--config {args.config}: expected a readable JSON file ({exc})") from None

    for item in getattr(args, "set", []) or []:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise CliError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.epochs=3")
        overrides[field.strip()] = parse_value(value)
    for flags in (DATA_FLAGS, TRAIN_FLAGS, EVAL_FLAGS):
        for attr, field in flags.items():
            value = getattr(args, attr, None)
            if value is not None:
                overrides[field] = value
    # --preset wins over --config/--set; with neither, the default recipe (what `make run` runs)
    preset = getattr(args, "preset", None) or overrides.pop("preset", None) or DEFAULT_PRESET
    overrides.pop("preset", None)
    cfg = build_config(preset, overrides)
    if args.command in SOURCE_COMMANDS or (args.command in ("evaluate", "gallery") and source_given(args)):
        _check_source(cfg.data.source)
    return cfg


SOURCE_COMMANDS = {"download", "prepare", "run", "retrain", "serve"}


def _check_source(source: str) -> None:
    """A missing directory, one without both archives or a malformed URL fails here, before Prefect starts or
    WORK is touched."""
    from segpipe.data.download import SourceError, resolve_source
    from segpipe.data.sources import require_archives

    try:
        require_archives(resolve_source(source))
    except SourceError as exc:
        raise CliError(f"data.source (--source): {exc}") from None


def source_given(args: argparse.Namespace) -> bool:
    return getattr(args, "source", None) is not None

