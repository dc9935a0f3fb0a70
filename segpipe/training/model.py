"""The model a run trains: built with its optimizer and loss, and compiled for either phase (encoder
frozen, or fine-tuned)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras

from segpipe.config.budget import TrainingPlan
from segpipe.config import PipelineConfig
from segpipe.models.encoders import encoder_of, encoder_prefix
from segpipe.training.bn_folding import fold_frozen_batch_norms
from segpipe.training.boundary_loss import with_boundary_term
from segpipe.training.edge_head import AccuracyOfClasses, EdgeHeadLoss, MeanIoUOfClasses, with_edge_head
from segpipe.training.optimizers import build_optimizer
from segpipe.data import NUM_CLASSES
from segpipe.kerascompat import initializer_seeds_from


class Phase(NamedTuple):
    """One `fit` of a run: the encoder frozen or not, the training images' size, and its last epoch."""

    frozen: bool
    img_size: int
    end_epoch: int


def build_and_compile(
    cfg: PipelineConfig, plan: TrainingPlan
) -> tuple[keras.Model, Callable[[bool], None], Callable[[], keras.Model]]:
    """The model, a `compile_phase(encoder_frozen)` that sets the encoder's state and (re)compiles, and
    `for_saving()`: the model to write to a file, with the trained model's current weights.

    The optimizer is built here over every variable that will ever train, so a
    phase change keeps its state and a backup holds the same variables in both phases.
    With progressive resizing (`train.progressive_img_size`) the model trained takes any input size, and
    `for_saving()` copies its weights into the same model built at `train.img_size` (the same layers in the
    same order; only the image-pooling branch's broadcast differs, and it has no weights), so every file a
    run writes is the model the rest of segpipe expects. With an edge head (`train.edge_head_weight`) the model
    trained is the saved one plus the head (`segpipe.training.edge_head`), and `for_saving()` leaves the head out.
    """
    from segpipe.training.losses import build_loss
    from segpipe.models import build_model

    t = cfg.train
    size = (t.img_size, t.img_size, 3)
    # the initial weights follow train.seed alone, whatever other threads of the process draw meanwhile
    with initializer_seeds_from(t.seed):
        saved = build_model(cfg.model.name, (None, None, 3) if t.progressive_img_size else size, NUM_CLASSES,
                            **cfg.model.params())
        # With an edge head (train.edge_head_weight), the model trained is `saved` plus the head, on its variables.
        model = with_edge_head(saved) if t.edge_head_weight else saved
    fixed: list[keras.Model] = []  # built on first use, once

    def for_saving() -> keras.Model:
        if not t.progressive_img_size:
            return saved
        if not fixed:
            fixed.append(build_model(cfg.model.name, size, NUM_CLASSES, **_without_weights_file(cfg.model.params())))
        fixed[0].set_weights(saved.get_weights())
        return fixed[0]
    encoder = encoder_of(model)
    optimizer = build_optimizer(t, plan)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)  # everything trainable: the encoder is not frozen yet
    if encoder is not None and t.encoder_lr_multiplier != 1.0:
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        inner.scale_learning_rate(encoder.trainable_variables, t.encoder_lr_multiplier)
    loss = build_loss(t.loss, num_classes=NUM_CLASSES, dice_weight=t.dice_weight,
                      focal_gamma=t.focal_gamma, class_weights=t.class_weights)
    loss = with_boundary_term(loss, t.boundary_loss_weight, t.boundary_loss_radius)
    mean_iou, accuracy = keras.metrics.MeanIoU, keras.metrics.SparseCategoricalAccuracy
    if t.edge_head_weight:
        loss = EdgeHeadLoss(loss, t.edge_head_weight, t.edge_head_radius)
        mean_iou, accuracy = MeanIoUOfClasses, AccuracyOfClasses

    # train.freeze_encoder_stride: the encoder's layers up to its feature at that stride never train
    prefix = encoder_prefix(encoder, cfg.model.encoder, t.freeze_encoder_stride) if t.freeze_encoder_stride else []

    def compile_phase(encoder_frozen: bool) -> None:
        if encoder is not None:
            set_encoder_trainable(encoder, not encoder_frozen, batch_norm=not (encoder_frozen or t.freeze_encoder_bn),
                                  frozen=prefix)
        if t.fold_frozen_bn:  # after what trains is set: only the batch norms that do not train fold
            fold_frozen_batch_norms(model)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=[
                mean_iou(num_classes=NUM_CLASSES, sparse_y_pred=False, name="mean_iou"),
                accuracy(name="pixel_accuracy"),
            ],
            jit_compile=t.jit_compile,
            steps_per_execution=plan.steps_per_execution,
        )

    return model, compile_phase, for_saving


def _without_weights_file(params: dict[str, Any]) -> dict[str, Any]:
    """The model's knobs without loading pretrained weights: the copy gets the trained model's weights."""
    return {**params, "encoder_weights": None} if "encoder_weights" in params else params


def set_encoder_trainable(
    encoder: keras.Model, trainable: bool, *, batch_norm: bool, frozen: Sequence[keras.layers.Layer] = ()
) -> None:
    """Freeze or unfreeze `encoder`; a BatchNormalization layer that is not trainable runs in inference mode
    (Keras 3), so a frozen encoder keeps its statistics too. `batch_norm=False` keeps BN frozen when unfrozen;
    the layers in `frozen` (`encoder_prefix`) stay frozen when unfrozen, BN included."""
    encoder.trainable = trainable
    kept = {id(layer) for layer in frozen}
    if trainable:
        for layer in encoder.layers:
            if (not batch_norm and isinstance(layer, keras.layers.BatchNormalization)) or id(layer) in kept:
                layer.trainable = False


def phases(plan: TrainingPlan, resumed: int, img_size: int, small_size: int | None = None) -> list[Phase]:
    """The fits still to run after `resumed` epochs: a new one wherever the encoder unfreezes
    (`plan.frozen_epochs`) or the images grow from `small_size` to `img_size` (`plan.small_epochs`). A resume
    past a boundary goes straight to the phase it is in."""
    ends = sorted({e for e in (plan.frozen_epochs, plan.small_epochs, plan.epochs) if e > resumed})
    return [Phase(frozen=end <= plan.frozen_epochs,
                  img_size=small_size if small_size and end <= plan.small_epochs else img_size,
                  end_epoch=end) for end in ends]
