"""One typed configuration for the whole pipeline, with named presets (`segpipe/config/presets.py`).

Flows take a `PipelineConfig` as their parameter, the CLI builds one from
`--preset` plus flag overrides, and every invalid value fails here, before
any work starts, with a message that names the field.

Over 300 lines on purpose: every section's fields and the checks across them
(model knobs, encoders, image size) are the one schema a user configures, and
read best in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from segpipe.config.augment import KNOBS as AUGMENT_KNOBS
from segpipe.models.encoders import DILATED_TAIL_ENCODERS, ENCODER_NAMES, ENCODERS
from segpipe.models.registry import (MODEL_NAMES, NEEDS_ENCODER, TAKES_ENCODER, check_aspp_rates,
                                     check_input_size, knobs_of)
from segpipe.models.weights import IMAGENET, no_such_weights_file
from segpipe.config.presets import PRESETS

OFFICIAL_SOURCE = "official"

LOSSES: dict[str, str] = {
    "sce": "per-pixel cross-entropy",
    "dice": "soft Dice",
    "sce+dice": "cross-entropy + dice_weight x soft Dice",
    "focal": "focal loss (focal_gamma; 0 = cross-entropy)",
    "sce+lovasz": "cross-entropy + the Lovász-softmax surrogate of each present class's IoU loss",
}
"""The losses `model.loss` accepts, by name; `segpipe.training.losses.build_loss` builds each one (it checks
at import that it builds exactly these)."""
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
DEFAULT_LOSS = "sce+dice"

COLLAPSE_THRESHOLD: float = 0.98
"""A model whose predictions give one class at least this share of all pixels has collapsed (metrics,
evaluation, the post-training check); `eval.collapse_threshold`'s default."""


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
    aspp_filters: int = Field(
        256, ge=8, le=2048, description="deeplabv3plus: the width of ASPP and of the decoder's convolutions"
    )
    bn_momentum: float = Field(0.9, gt=0.0, lt=1.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    upsample_logits: bool = Field(
        True, description="deeplabv3plus: the last x4 resize on the logits (True) or on the decoder's features "
        "before the 1x1 head (False); the same function, True is cheaper"
    )
    decoder_stride: Literal[4, 2] = Field(
        4, description="deeplabv3plus: the logits' resolution before their last resize, as an output stride: 4 (the "
        "paper's decoder) or 2 (one more skip, from the encoder's /2 features)"
    )
    encoder_tail: Literal["cut", "dilated"] = Field(
        "cut", description="deeplabv3plus: where ASPP's output-stride-16 features come from: 'cut' (the encoder "
        "stopped at its last stride-16 layer, MobileNetV2's block 13 expansion, its last stage unused) or "
        "'dilated' (the whole encoder at output stride 16, as in the paper: the last stage's stride-2 "
        "convolution at stride 1, the depthwise convolutions after it at dilation 2; "
        f"{', '.join(DILATED_TAIL_ENCODERS)} only)"
    )

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

    @field_validator("aspp_rates")
    @classmethod
    def _rates_are_distinct_and_positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return check_aspp_rates(v)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str | None) -> str | None:
        if _is_none(v):
            return None
        if v not in ENCODERS:
            raise ValueError(f"unknown encoder {v!r}; expected None or one of {', '.join(ENCODER_NAMES)}")
        return v

    @field_validator("encoder_weights")
    @classmethod
    def _weights_exist(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A path must name an existing file (made absolute); checked before any work starts, unless the
        validation context says `check_files=False` (`build_config`: resolving a recorded run elsewhere)."""
        if _is_none(v):
            return None
        if v == IMAGENET:
            return v
        path = Path(v).expanduser()
        if not path.is_file() and (info.context or {}).get("check_files", True):
            raise ValueError(no_such_weights_file(v))
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
        if self.encoder_tail == "dilated" and self.encoder not in DILATED_TAIL_ENCODERS:
            raise ValueError(f"encoder_tail: 'dilated' applies to the {', '.join(DILATED_TAIL_ENCODERS)} encoder "
                             f"only (encoder {self.encoder!r})")
        return self

    @model_validator(mode="after")
    def _knobs_suit_model(self) -> "ModelConfig":
        """A knob the model does not take must stay at its default: a value set for it would do nothing."""
        taken = knobs_of(self.name)
        for field, info in type(self).model_fields.items():
            if field != "name" and field not in taken and getattr(self, field) != info.default:
                raise ValueError(
                    f"{field}: model {self.name!r} does not take {field}; it takes {', '.join(taken)}"
                )
        return self

    def params(self) -> dict[str, Any]:
        """The knobs for `build_model`: those the model takes (`segpipe.models.registry.knobs_of`)."""
        taken = knobs_of(self.name)
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if k in taken}

    def cache_content(self) -> dict[str, Any]:
        """The model's identity for cache keys: the weights file by its sha256, never its path."""
        from segpipe.models.weights import weights_identity

        return {**self.model_dump(mode="json"), "encoder_weights": weights_identity(self.encoder_weights)}


_AugmentFields: type[_Section] = create_model(  # train.aug_*: one field per knob of segpipe.config.augment
    "_AugmentFields", __base__=_Section, __module__=__name__,
    **{k.field: (float, Field(k.default, description=k.description, **k.config_bounds())) for k in AUGMENT_KNOBS},
)


class TrainConfig(_AugmentFields):  # type: ignore[misc, valid-type]
    """How to train. The run's length is a budget of training images seen (`budget_images`), so a
    recipe costs about the same on 300 or 7,390 images; epochs are derived from the dataset size
    (`segpipe/config/budget.py`). `epochs` overrides the budget when given."""

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
    freeze_encoder_stride: Literal[0, 2, 4, 8, 16] = Field(
        0, description="keep the encoder's layers up to its feature at this output stride (2, 4, 8 or 16) frozen "
        "for the whole run, BatchNormalization included: ImageNet's low-level filters kept as they are, and no "
        "gradient computed through them. 0: none (the whole encoder trains once unfrozen)"
    )
    fold_frozen_bn: bool = Field(
        False, description="while a BatchNormalization layer does not train (a frozen encoder, freeze_encoder_bn, "
        "freeze_encoder_stride), "
        "compute it inside the convolution before it: the same function and gradients, fewer ops per step "
        "(segpipe.training.bn_folding)"
    )
    border_band: Literal["argmax", "calibrated"] = Field(
        "argmax", description="how the border is drawn at the original resolution: argmax of the probabilities, "
        "or calibrated = after training, a band around the predicted pet outline whose width is chosen on the "
        "validation split (kept only if it beats the argmax there) and saved inside model.keras "
        "(segpipe.evaluation.band)"
    )
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal[LOSS_NAMES] = Field(DEFAULT_LOSS, description="one of segpipe.config.LOSS_NAMES")
    dice_weight: float = Field(1.0, ge=0.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    class_weights: tuple[float, float, float] | None = Field(
        None, description="weights for (pet, background, border)"
    )
    boundary_loss_weight: float = Field(
        0.0, ge=0.0, le=100.0,
        description="add this weight x a boundary-aware term to the loss: the expected distance by which the "
        "predicted class misses the true class's region (segpipe.training.boundary_loss); 0 = off",
    )
    boundary_loss_radius: int = Field(
        8, ge=1, le=64, description="pixels (at img_size) up to which the boundary-aware term measures distance"
    )
    edge_head_weight: float = Field(
        0.0, ge=0.0, le=100.0,
        description="train a training-only edge head beside the softmax (the closeness of each pixel to the "
        "border band, segpipe.training.edge_head) with this weight x its cross-entropy; the saved model has "
        "no head; 0 = off",
    )
    edge_head_radius: int = Field(
        8, ge=1, le=64, description="pixels (at img_size) from the border band at which the edge head's "
        "target reaches 0",
    )
    progressive_img_size: int | None = Field(
        None, ge=16, le=2048,
        description="progressive resizing: train the first progressive_images images at this smaller size, "
        "then at img_size (validation, the saved model and everything after training stay at img_size); "
        "None = off",
    )
    progressive_images: int = Field(
        0, ge=0, le=10**9,
        description="images seen at progressive_img_size from the start, rounded up to whole epochs",
    )
    augment: bool = True
    # aug_max_scale, aug_max_rotation, aug_brightness, aug_contrast, aug_hue, aug_saturation: from
    # segpipe.config.augment, through _AugmentFields
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
    steps_per_execution: int = Field(
        1, ge=1, le=1000,
        description="train steps run in one call of the compiled train function (fewer returns to Python "
        "between steps): the largest divisor of the epoch's steps that is not above this, so an epoch keeps its "
        "length. A stop (Ctrl-C) is taken between calls, so it waits for up to this many steps. Training on several "
        "replicas (a distribution strategy) refuses more than 1",
    )
    seed: int = Field(42, ge=0, lt=2**32)
    steps_per_epoch: int | None = Field(None, ge=1, description="None: ceil(train examples / batch_size), about one pass")

    def augment_options(self) -> dict[str, float]:
        """Keyword arguments for `segpipe.data.input.augment_batch`."""
        return {k.option: getattr(self, k.field) for k in AUGMENT_KNOBS}

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
        COLLAPSE_THRESHOLD, gt=0.0, le=1.0,
        description="flag a model when one class takes this share of predicted pixels",
    )
    tta_flip: bool = Field(
        False, description="test-time augmentation: average each prediction with that of the mirrored image"
    )
    tta_sizes: tuple[int, ...] = Field(
        (), max_length=4,
        description="multi-scale test-time augmentation: also predict with the model rebuilt at these input "
                    "sizes (square, px) and average; the model's own size is always used",
    )

    @field_validator("tta_sizes")
    @classmethod
    def _distinct_sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"tta_sizes {list(v)} repeats a size; expected distinct sizes")
        if any(s < 32 or s > 1024 for s in v):
            raise ValueError(f"tta_sizes {list(v)}: expected sizes from 32 to 1024 px")
        return tuple(v)


class PromotionConfig(_Section):
    min_mean_iou: float = Field(0.5, ge=0.0, le=1.0, description="floor a new model must clear")
    gate_split: Literal["train", "val", "test"] = Field(
        "val", description="the split champion and challenger are compared on (the test split is only reported)"
    )
    export_formats: tuple[Literal["saved_model", "litert", "onnx"], ...] = Field(
        ("saved_model", "litert", "onnx"), min_length=1,
        description="formats the challenger is exported to and parity-checked in before the gate decides",
    )


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
                                          ("freeze_encoder_bn", t.freeze_encoder_bn, False),
                                          ("freeze_encoder_stride", t.freeze_encoder_stride, 0),
                                          ("fold_frozen_bn", t.fold_frozen_bn, False)):
                if value != neutral:
                    raise ValueError(
                        f"train.{field}: model {self.model.name!r} has no pretrained encoder to fine-tune "
                        "(set model.encoder)"
                    )
        elif t.fold_frozen_bn and not (t.freeze_encoder_images or t.freeze_encoder_bn or t.freeze_encoder_stride):
            raise ValueError("train.fold_frozen_bn: no batch norm stays frozen to fold; expected "
                             "train.freeze_encoder_images > 0, train.freeze_encoder_bn=true or "
                             "train.freeze_encoder_stride > 0 with it")
        return self

    @model_validator(mode="after")
    def _img_size_suits_model(self) -> "PipelineConfig":
        size = self.train.img_size
        try:
            check_input_size(self.model.name, (size, size), self.model.params())
        except ValueError as exc:
            raise ValueError(f"train.img_size: {exc}") from None
        return self

    @model_validator(mode="after")
    def _progressive_resizing(self) -> "PipelineConfig":
        t = self.train
        if t.progressive_img_size is None:
            if t.progressive_images:
                raise ValueError("train.progressive_images: no smaller size to train them at; expected "
                                 "train.progressive_img_size with it")
            return self
        if self.model.name not in PROGRESSIVE_MODELS:
            raise ValueError(f"train.progressive_img_size: model {self.model.name!r} cannot change its input size "
                             f"while training; expected one of {', '.join(PROGRESSIVE_MODELS)}")
        if t.progressive_img_size >= t.img_size:
            raise ValueError(f"train.progressive_img_size: {t.progressive_img_size} must be smaller than "
                             f"train.img_size ({t.img_size})")
        try:
            check_input_size(self.model.name, (t.progressive_img_size,) * 2, self.model.params())
        except ValueError as exc:
            raise ValueError(f"train.progressive_img_size: {exc}") from None
        if t.progressive_images < 1:
            raise ValueError("train.progressive_images: expected the number of images to train at "
                             f"train.progressive_img_size ({t.progressive_img_size}), got {t.progressive_images}")
        if t.epochs is None and t.progressive_images >= t.budget_images:
            raise ValueError(f"train.progressive_images: {t.progressive_images} leaves none of train.budget_images "
                             f"({t.budget_images}) at train.img_size; expected fewer")
        return self

    @model_validator(mode="after")
    def _tta_sizes_suit_model(self) -> "PipelineConfig":
        for size in self.eval.tta_sizes:
            if size == self.train.img_size:
                raise ValueError(f"eval.tta_sizes: {size} is train.img_size, which is always used; "
                                 "list only the other sizes")
            try:
                check_input_size(self.model.name, (size, size), self.model.params())
            except ValueError as exc:
                raise ValueError(f"eval.tta_sizes: {exc}") from None
        return self


# Models whose training can change input size (train.progressive_img_size): built with free spatial dims
PROGRESSIVE_MODELS = ("deeplabv3plus",)
_ENCODER_TRAIN_FIELDS = ("freeze_encoder_images", "encoder_lr_multiplier", "freeze_encoder_bn", "freeze_encoder_stride",
                         "fold_frozen_bn")


def _preset_for(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """Preset `preset`, less the model knobs (and encoder training settings) that the model `given` switches to
    does not take (`--preset cpu-quick --model segnet` means segnet with cpu-quick's recipe), and less its encoder
    weights and encoder training settings when `given` sets no encoder (`--model unet --encoder none`: the
    classic U-Net with cpu-quick's recipe)."""
    base = PRESETS[preset]
    model = given.get("model") or {}
    name = model.get("name")
    switched = name in MODEL_NAMES
    no_encoder = "encoder" in model and _is_none(model["encoder"])
    if not switched and not no_encoder:
        return base
    dropped_model = [k for k in base.get("model", {}) if k != "name" and k not in knobs_of(name)] if switched else []
    if no_encoder:
        dropped_model.append("encoder_weights")
    drops_encoder_training = no_encoder or name not in TAKES_ENCODER
    dropped = {"model": dropped_model, "train": _ENCODER_TRAIN_FIELDS if drops_encoder_training else ()}
    return {section: ({k: v for k, v in values.items() if k not in dropped.get(section, ())}
                      if isinstance(values, dict) else values)
            for section, values in base.items()}


def _is_none(value: Any) -> bool:
    """None, or the text a command line gives for it."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


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


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None, *,
                 check_files: bool = True) -> PipelineConfig:
    """A validated config from a named preset plus overrides.

    `overrides` may be nested (`{"train": {"epochs": 3}}`) or dotted
    (`{"train.epochs": 3}`); None values are ignored. `check_files=False` resolves a weights file's path
    without requiring the file here (what a run elsewhere resolved: the benchmarks' drift check); never for a run.
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
        return PipelineConfig.model_validate(merged, context={"check_files": check_files})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
