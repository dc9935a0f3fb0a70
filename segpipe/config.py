"""One typed configuration for the whole pipeline, with named presets.

Flows take a `PipelineConfig` as their parameter, the CLI builds one from
`--preset` plus flag overrides, and every invalid value fails here, before
any work starts, with a message that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segpipe.models.encoders import ENCODER_NAMES, ENCODERS
from segpipe.models.registry import MODEL_NAMES, NEEDS_ENCODER, TAKES_ENCODER, check_input_size
from segpipe.models.weights import IMAGENET

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
    """Which architecture, and its knobs.

    `encoder` puts the model on a pretrained keras.applications encoder (see
    `segpipe/models/encoders.py`): optional for unet (None = the classic U-Net
    trained from scratch), required for deeplabv3plus (default mobilenetv2).
    """

    name: str = "unet"
    encoder: str | None = Field(None, description=f"None or one of {', '.join(ENCODER_NAMES)}")
    encoder_weights: str | None = Field(
        None, description="None (random init), 'imagenet' (Keras' download and $KERAS_HOME cache) or the path "
        "of a weights file; a file enters the run id by its sha256, never its path"
    )
    encoder_alpha: float = Field(1.0, description="MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)")
    base_filters: int = Field(16, ge=1, le=512)
    depth: int = Field(4, ge=1, le=7)
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    bn_momentum: float = Field(0.9, gt=0.0, lt=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _defaults_for_the_model(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "backbone" in data:  # the field's name before encoders had a registry
                data.setdefault("encoder", data.pop("backbone"))
            if data.get("name") in NEEDS_ENCODER and data.get("encoder") is None:
                data["encoder"] = "mobilenetv2"
        return data

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODEL_NAMES:
            raise ValueError(f"unknown model {v!r}; expected one of {', '.join(MODEL_NAMES)}")
        return v

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str | None) -> str | None:
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null"):
            return None
        if v is not None and v not in ENCODERS:
            raise ValueError(f"unknown encoder {v!r}; expected None or one of {', '.join(ENCODER_NAMES)}")
        return v

    @field_validator("encoder_weights")
    @classmethod
    def _weights_exist(cls, v: str | None) -> str | None:
        """A path must name an existing file (made absolute); checked before any work starts."""
        if v is None or v == IMAGENET:
            return v
        if v.strip().lower() in ("", "none", "null"):
            return None
        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(
                f"no such file {v!r}; expected None, 'imagenet' or the path of a .weights.h5/.h5 file holding "
                "the encoder's keras.applications weights (include_top=False)"
            )
        return str(path.resolve())

    @model_validator(mode="after")
    def _encoder_suits_model(self) -> "ModelConfig":
        if self.encoder is not None and self.name not in TAKES_ENCODER:
            raise ValueError(
                f"encoder: model {self.name!r} takes no encoder; pretrained encoders go with "
                f"{' or '.join(TAKES_ENCODER)}"
            )
        if self.encoder_weights is not None and self.encoder is None:
            raise ValueError("encoder_weights: set model.encoder too; the classic U-Net has no pretrained part")
        if self.encoder_alpha != 1.0 and not (self.encoder and ENCODERS[self.encoder].takes_alpha):
            raise ValueError(f"encoder_alpha: only mobilenetv2 has a width multiplier (encoder {self.encoder!r})")
        if self.encoder_alpha not in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
            raise ValueError("encoder_alpha: must be one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4")
        return self

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})

    def cache_content(self) -> dict[str, Any]:
        """The model's identity for cache keys: the weights file by its sha256, never its path."""
        from segpipe.models.weights import weights_identity

        return {**self.model_dump(mode="json"), "encoder_weights": weights_identity(self.encoder_weights)}


class TrainConfig(_Section):
    """How to train. The run's length is a budget of training images seen (`budget_images`), so a
    recipe costs about the same on 300 or 7,390 images; epochs are derived from the dataset size
    (`segpipe/budget.py`). `epochs` overrides the budget when given."""

    img_size: int = Field(128, ge=16, le=2048)
    batch_size: int = Field(8, ge=1, le=4096)
    budget_images: int = Field(
        5_000, ge=1, le=10**9, description="length of the run in training images seen (epochs derived from it)"
    )
    epochs: int | None = Field(None, ge=1, le=10_000, description="explicit number of epochs; overrides budget_images")
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    warmup_images: int = Field(0, ge=0, le=10**9, description="linear learning-rate warm-up, in images seen")
    freeze_encoder_images: int = Field(
        0, ge=0, le=10**9,
        description="keep the pretrained encoder frozen (BatchNormalization in inference mode) for this many "
        "images seen, rounded up to whole epochs; then unfreeze it",
    )
    encoder_lr_multiplier: float = Field(
        1.0, gt=0.0, le=10.0, description="the encoder's learning rate relative to the decoder's once unfrozen"
    )
    freeze_encoder_bn: bool = Field(
        False, description="keep the encoder's BatchNormalization in inference mode after unfreezing too"
    )
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
            return _deep_merge(_preset_for(preset, data), data)
        return data

    @model_validator(mode="after")
    def _fine_tuning_needs_an_encoder(self) -> "PipelineConfig":
        t = self.train
        if self.model.encoder is None:
            for field, value, neutral in (("freeze_encoder_images", t.freeze_encoder_images, 0),
                                          ("encoder_lr_multiplier", t.encoder_lr_multiplier, 1.0),
                                          ("freeze_encoder_bn", t.freeze_encoder_bn, False)):
                if value != neutral:
                    raise ValueError(
                        f"train.{field}: model {self.model.name!r} has no pretrained encoder to fine-tune "
                        "(set model.encoder)"
                    )
        return self

    @model_validator(mode="after")
    def _img_size_suits_model(self) -> "PipelineConfig":
        size = self.train.img_size
        try:
            check_input_size(self.model.name, (size, size), self.model.params())
        except ValueError as exc:
            raise ValueError(f"train.img_size: {exc}") from None
        return self


# Every preset states its length in training images seen (train.budget_images): the same preset
# costs about the same on the 303-image sample or the 7,390-image dataset. `--epochs` overrides it.
PRESETS: dict[str, dict[str, Any]] = {
    # Tiny model, tiny images: for tests and smoke runs (seconds). One batch's worth of images:
    # rounds up to one epoch on any dataset.
    "tiny": {
        "model": {"name": "unet", "base_filters": 4, "depth": 2},
        "train": {"img_size": 32, "batch_size": 4, "budget_images": 4, "warmup_images": 0, "augment": False},
        "eval": {"batch_size": 4, "gallery_samples": 2, "gallery_worst": 2},
    },
    # The pretrained recipe for a CPU: DeepLabV3+ on an ImageNet MobileNetV2 encoder, frozen for the
    # first 800 images, then fine-tuned at a tenth of the decoder's learning rate; 8,000 images seen.
    # Chosen on the validation split (benchmarks/results/recipe-selection.json). Without internet:
    # --set model.encoder_weights=FILE or a primed $KERAS_HOME (README).
    "cpu-quick": {
        "model": {"name": "deeplabv3plus", "encoder": "mobilenetv2", "encoder_weights": "imagenet",
                  "aspp_rates": (6, 12, 18), "bn_momentum": 0.9},
        "train": {
            "img_size": 160, "batch_size": 8, "budget_images": 8_000, "optimizer": "adam", "learning_rate": 1e-3,
            "warmup_images": 272, "schedule": "cosine", "loss": "sce+dice", "augment": True,
            "freeze_encoder_images": 800, "encoder_lr_multiplier": 0.1,
            "aug_max_scale": 1.5, "aug_max_rotation": 20.0, "aug_brightness": 0.15, "aug_contrast": 0.3,
            "early_stopping_patience": 0, "mixed_precision": "auto", "ema_momentum": 0.99,
        },
        "eval": {"tta_flip": True},
    },
    # The from-scratch U-Net (cpu-quick before pretrained encoders), for machines without the weights:
    # 54,400 images = 200 epochs of the sample's 272-image epochs. bfloat16 where the CPU has it,
    # averaged weights, strong augmentation and mirrored test-time predictions.
    "cpu-scratch": {
        "model": {"name": "unet", "base_filters": 16, "depth": 4, "bn_momentum": 0.9},
        "train": {
            "img_size": 128, "batch_size": 8, "budget_images": 54_400, "optimizer": "adam", "learning_rate": 1e-3,
            "warmup_images": 272, "schedule": "cosine", "loss": "sce+dice", "augment": True,
            "aug_max_scale": 1.5, "aug_max_rotation": 20.0, "aug_brightness": 0.15, "aug_contrast": 0.3,
            "early_stopping_patience": 0, "mixed_precision": "auto", "ema_momentum": 0.99,
        },
        "eval": {"tta_flip": True},
    },
    # The Keras example's own recipe: 25 epochs of the sample's 288-image epochs (9 batches of 32).
    "keras-example": {
        "model": {"name": "xception_unet", "bn_momentum": 0.99},
        "train": {
            "img_size": 160, "batch_size": 32, "budget_images": 7_200, "optimizer": "adam", "learning_rate": 1e-4,
            "warmup_images": 0, "schedule": "constant", "loss": "sce", "augment": False,
            "early_stopping_patience": 0,
        },
    },
    # For a GPU: DeepLabV3+ on an ImageNet MobileNetV2 (the same encoder code as cpu-quick), AdamW,
    # about 60 passes over the official trainval split's ~3,300 training images.
    "full": {
        "model": {"name": "deeplabv3plus", "encoder": "mobilenetv2", "encoder_weights": "imagenet",
                  "aspp_rates": (6, 12, 18), "bn_momentum": 0.99},
        "train": {
            "img_size": 320, "batch_size": 32, "budget_images": 200_000, "optimizer": "adamw",
            "learning_rate": 5e-4, "weight_decay": 1e-4, "warmup_images": 6_400, "schedule": "cosine",
            "loss": "sce+dice", "augment": True, "freeze_encoder_images": 10_000, "encoder_lr_multiplier": 0.1,
            "early_stopping_patience": 15, "mixed_precision": "float16",
        },
        "eval": {"batch_size": 32},
    },
}


_ENCODER_FIELDS = {"model": ("encoder", "encoder_weights", "encoder_alpha"),
                   "train": ("freeze_encoder_images", "encoder_lr_multiplier", "freeze_encoder_bn")}


def _preset_for(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """Preset `preset`, less its encoder settings when `given` switches to a model that takes no encoder
    (`--preset cpu-quick --model segnet` means segnet with cpu-quick's recipe)."""
    base = PRESETS[preset]
    name = (given.get("model") or {}).get("name")
    if name is None or name in TAKES_ENCODER:
        return base
    return {section: ({k: v for k, v in values.items() if k not in _ENCODER_FIELDS.get(section, ())}
                      if isinstance(values, dict) else values)
            for section, values in base.items()}


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
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    dotted = {k: v for k, v in over.items() if "." in k}
    nested = {k: v for k, v in over.items() if "." not in k}
    given = _deep_merge(nested, _nest(dotted))
    merged = _deep_merge(_preset_for(preset, given) if preset else {}, given)
    merged["preset"] = preset
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
