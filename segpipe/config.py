"""One typed configuration for the whole pipeline, with named presets.

Flows take a `PipelineConfig` as their parameter, the CLI builds one from
`--preset` plus flag overrides, and every invalid value fails here, before
any work starts, with a message that names the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.models.registry import MODEL_NAMES, check_input_size

OFFICIAL_SOURCE = "official"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """How the raw archives become a dataset of TFRecord shards."""

    source: str = Field(
        OFFICIAL_SOURCE,
        description="'official' (the Oxford archives and their mirror), an http(s) base URL, "
        "a file:// URL or a local directory holding images.tar.gz and annotations.tar.gz",
    )
    split: Literal["official", "random", "breed"] = "official"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="only for split='random'")
    holdout_breeds: tuple[str, ...] = Field((), description="only for split='breed': the breeds of the test split")
    seed: int = Field(42, ge=0, lt=2**32)
    shard_size_mb: float = Field(150.0, gt=0.0, le=4096.0, description="target shard size")
    workers: int = Field(2, ge=1, le=64, description="parallel shard writers")
    download_timeout_s: float = Field(60.0, gt=0.0)

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("source must be 'official', an http(s)/file:// URL or a directory")
        return v.strip()

    def content_params(self) -> dict[str, Any]:
        """The parameters that change the dataset's content (not where it comes from or how fast)."""
        return self.model_dump(mode="json", include={"split", "val_fraction", "test_fraction", "seed", "shard_size_mb", "holdout_breeds"})

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.split == "random" and self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1 for split='random'")
        if self.split == "breed" and not self.holdout_breeds:
            raise ValueError("holdout_breeds: split='breed' needs at least one breed to hold out")
        return self


class ModelConfig(_Section):
    """Which architecture, and its knobs (ignored by models that lack them)."""

    name: str = "unet"
    base_filters: int = Field(16, ge=1, le=512)
    depth: int = Field(4, ge=1, le=7)
    backbone: Literal["mobilenetv2", "resnet50"] = "mobilenetv2"
    encoder_weights: str | None = Field(None, description="None, 'imagenet' or a path to a weights file")
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    bn_momentum: float = Field(0.9, gt=0.0, lt=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r}; expected one of {', '.join(MODEL_NAMES)}")
        return v

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})


class TrainConfig(_Section):
    img_size: int = Field(128, ge=16, le=2048)
    batch_size: int = Field(8, ge=1, le=4096)
    epochs: int = Field(20, ge=1, le=10_000)
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal["sce", "dice", "sce+dice", "focal"] = "sce+dice"
    dice_weight: float = Field(1.0, ge=0.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    class_weights: tuple[float, float, float] | None = Field(
        None, description="weights for (pet, background, border)"
    )
    augment: bool = True
    aug_max_scale: float = Field(1.25, ge=1.0, le=4.0, description="random zoom-in up to this factor (1: off)")
    aug_max_rotation: float = Field(10.0, ge=0.0, le=180.0, description="random rotation up to +- this, degrees")
    aug_brightness: float = Field(0.1, ge=0.0, le=1.0, description="random brightness shift up to +- this")
    aug_contrast: float = Field(0.2, ge=0.0, lt=1.0, description="random contrast factor within 1 +- this")
    aug_hue: float = Field(0.0, ge=0.0, le=180.0, description="random hue rotation up to +- this, degrees (0: off)")
    aug_saturation: float = Field(
        0.0, ge=0.0, le=1.0, description="random saturation factor within 1 +- this (1: down to grey; 0: off)"
    )
    early_stopping_patience: int = Field(10, ge=0, description="0 disables early stopping")
    mixed_precision: Literal["off", "float16", "bfloat16", "auto"] = Field(
        "off",
        description="compute dtype: float16 for GPUs; bfloat16 for GPUs and CPUs with AVX512_BF16 or AMX; "
        "auto = float16 on a GPU, bfloat16 on a CPU with native bfloat16, else off (true = float16, false = off)",
    )
    ema_momentum: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights (this momentum per step); validation, "
        "the best checkpoint and the saved model use the averaged weights. None: off",
    )
    jit_compile: bool = False
    seed: int = Field(42, ge=0, lt=2**32)
    steps_per_epoch: int | None = Field(None, ge=1, description="None: ceil(train examples / batch_size), about one pass")

    def augment_options(self) -> dict[str, float]:
        """Keyword arguments for `segpipe.data.input.augment_batch`."""
        return {"max_scale": self.aug_max_scale, "max_rotation_degrees": self.aug_max_rotation,
                "brightness": self.aug_brightness, "contrast": self.aug_contrast, "hue": self.aug_hue,
                "saturation": self.aug_saturation}

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _bool_precision(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return "float16" if v else "off"
        return v

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError("class_weights must be non-negative")
        return v


class EvalConfig(_Section):
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = Field(8, ge=1, le=4096)
    gallery_samples: int = Field(8, ge=0, le=1000)
    gallery_worst: int = Field(8, ge=0, le=1000)
    gallery_seed: int = Field(0, ge=0, lt=2**32)
    collapse_threshold: float = Field(
        0.98, gt=0.0, le=1.0, description="flag a model when one class takes this share of predicted pixels"
    )
    tta_flip: bool = Field(
        False, description="test-time augmentation: average each prediction with that of the mirrored image"
    )


class PromotionConfig(_Section):
    min_mean_iou: float = Field(0.5, ge=0.0, le=1.0, description="floor a new model must clear")


class PipelineConfig(_Section):
    preset: str | None = None
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """`{"preset": "cpu-quick", "train": {"epochs": 3}}` = the preset with that override.

        This is what lets a deployment or a JSON file name a preset and change a
        few fields; values given explicitly always win over the preset's.
        """
        if isinstance(data, dict) and data.get("preset") is not None:
            preset = data["preset"]
            if preset not in PRESETS:
                raise ValueError(f"preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
            return _deep_merge(PRESETS[preset], data)
        return data

    @model_validator(mode="after")
    def _img_size_suits_model(self) -> "PipelineConfig":
        size = self.train.img_size
        try:
            check_input_size(self.model.name, (size, size), self.model.params())
        except ValueError as exc:
            raise ValueError(f"train.img_size: {exc}") from None
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # Tiny model, tiny images: for tests and smoke runs (seconds).
    "tiny": {
        "model": {"name": "unet", "base_filters": 4, "depth": 2},
        "train": {"img_size": 32, "batch_size": 4, "epochs": 1, "warmup_epochs": 0.0, "augment": False},
        "eval": {"batch_size": 4, "gallery_samples": 2, "gallery_worst": 2},
    },
    # What fits a laptop CPU in minutes (about 16 on 2 cores for 300 images). bfloat16 where the CPU has it,
    # averaged weights, stronger augmentation and mirrored test-time predictions: see README, quality.
    "cpu-quick": {
        "model": {"name": "unet", "base_filters": 16, "depth": 4, "bn_momentum": 0.9},
        "train": {
            "img_size": 128, "batch_size": 8, "epochs": 200, "optimizer": "adam", "learning_rate": 1e-3,
            "warmup_epochs": 1.0, "schedule": "cosine", "loss": "sce+dice", "augment": True,
            "aug_max_scale": 1.5, "aug_max_rotation": 20.0, "aug_brightness": 0.15, "aug_contrast": 0.3,
            "early_stopping_patience": 0, "mixed_precision": "auto", "ema_momentum": 0.99,
        },
        "eval": {"tta_flip": True},
    },
    # The Keras example's own recipe.
    "keras-example": {
        "model": {"name": "xception_unet", "bn_momentum": 0.99},
        "train": {
            "img_size": 160, "batch_size": 32, "epochs": 25, "optimizer": "adam", "learning_rate": 1e-4,
            "warmup_epochs": 0.0, "schedule": "constant", "loss": "sce", "augment": False,
            "early_stopping_patience": 0,
        },
    },
    # Best recipe for a GPU: DeepLabV3+ on an ImageNet MobileNetV2, AdamW, longer schedule.
    "full": {
        "model": {"name": "deeplabv3plus", "backbone": "mobilenetv2", "encoder_weights": "imagenet",
                  "aspp_rates": (6, 12, 18), "bn_momentum": 0.99},
        "train": {
            "img_size": 320, "batch_size": 32, "epochs": 60, "optimizer": "adamw", "learning_rate": 5e-4,
            "weight_decay": 1e-4, "warmup_epochs": 2.0, "schedule": "cosine", "loss": "sce+dice",
            "augment": True, "early_stopping_patience": 15, "mixed_precision": "float16",
        },
        "eval": {"batch_size": 32},
    },
}


class ConfigError(ValueError):
    """An invalid configuration; the message names every offending field."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum():  # a cross-field check naming its field
            field = head if "." in head or not err["loc"] else f"{field}.{head}"
            msg = rest
        got = err.get("input")
        lines.append(f"{field}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return "invalid configuration:\n  " + "\n  ".join(lines)


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A validated config from a named preset plus overrides.

    `overrides` may be nested (`{"train": {"epochs": 3}}`) or dotted
    (`{"train.epochs": 3}`); None values are ignored.
    """
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    base = PRESETS.get(preset or "", {})
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    dotted = {k: v for k, v in over.items() if "." in k}
    nested = {k: v for k, v in over.items() if "." not in k}
    merged = _deep_merge(_deep_merge(base, nested), _nest(dotted))
    merged["preset"] = preset
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
