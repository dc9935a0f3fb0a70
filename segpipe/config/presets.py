"""The named configuration presets: `--preset NAME` (`segpipe.config.build_config`).

Each is a partial `PipelineConfig` as nested dicts; a value given explicitly
always wins over the preset's, and switching `--model` drops the preset's knobs
the new model does not take.
"""

from __future__ import annotations

from typing import Any

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
    # first 800 images, then fine-tuned at a tenth of the decoder's learning rate; 4,800 images seen.
    # Each recipe decision is made on validation figures of committed results (benchmarks/recipe_selection.py;
    # benchmarks/results/recipe-selection.json says which run decided each). Without internet:
    # --set model.encoder_weights=FILE or a primed $KERAS_HOME (README).
    # Issue 20's throughput levers (BENCHMARKS.md "Throughput levers"): ASPP and decoder 128 wide, the
    # encoder's batch norms kept in inference mode after unfreezing and folded into their convolutions;
    # cheaper per training image at the same validation quality. The earlier cpu-quick is this with
    # model.aspp_filters=256, train.freeze_encoder_bn=false, train.fold_frozen_bn=false.
    "cpu-quick": {
        "model": {"name": "deeplabv3plus", "encoder": "mobilenetv2", "encoder_weights": "imagenet",
                  "aspp_rates": (6, 12, 18), "aspp_filters": 128, "bn_momentum": 0.9},
        "train": {
            # 224 px (the encoder's ImageNet size) at 160 px's training CPU: 4,800 images, not 8,000 (issue 20,
            # BENCHMARKS.md section 4, "Larger inputs at cpu-quick's own training CPU").
            "img_size": 224, "batch_size": 8, "budget_images": 4_800, "optimizer": "adam", "learning_rate": 1e-3,
            "warmup_images": 272, "schedule": "cosine", "loss": "sce+dice", "augment": True,
            "freeze_encoder_images": 800, "encoder_lr_multiplier": 0.1, "freeze_encoder_bn": True,
            "fold_frozen_bn": True,
            # The stem and blocks up to the /4 features stay frozen for the whole run: cheaper per training image
            # on every seed at equal validation quality (issue 20, BENCHMARKS.md section 4, "The encoder's first
            # layers frozen for the whole run"; decision cpu-quick-frozen-prefix).
            "freeze_encoder_stride": 4,
            "aug_max_scale": 1.5, "aug_max_rotation": 20.0, "aug_brightness": 0.15, "aug_contrast": 0.3,
            # auto: mixed bfloat16 on a CPU with native bfloat16 (avx512_bf16, AMX), float32 on one without, float16
            # on a GPU. On an AMD EPYC with avx512_bf16, bfloat16 was cheaper per training image on every seed at
            # equal validation quality (issue 20, BENCHMARKS.md section 4, "The frozen encoder phase and bfloat16";
            # decision cpu-quick-precision). Models load for inference in float32 (segpipe.models.rebuild).
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
