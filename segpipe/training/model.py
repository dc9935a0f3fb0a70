"""The model a run trains: built with its optimizer and loss, and compiled for either phase (encoder
frozen, or fine-tuned)."""

from __future__ import annotations

from collections.abc import Callable

import keras

from segpipe.config.budget import TrainingPlan
from segpipe.config import PipelineConfig
from segpipe.models.encoders import encoder_of
from segpipe.training.bn_folding import fold_frozen_batch_norms
from segpipe.training.boundary_loss import with_boundary_term
from segpipe.training.optimizers import build_optimizer
from segpipe.data import NUM_CLASSES


def build_and_compile(cfg: PipelineConfig, plan: TrainingPlan) -> tuple[keras.Model, Callable[[bool], None]]:
    """The model and a `compile_phase(encoder_frozen)` that sets the encoder's state and (re)compiles.

    The optimizer is built here over every variable that will ever train, so a
    phase change keeps its state and a backup holds the same variables in both phases.
    """
    from segpipe.training.losses import build_loss
    from segpipe.models import build_model

    t = cfg.train
    model = build_model(cfg.model.name, (t.img_size, t.img_size, 3), NUM_CLASSES, **cfg.model.params())
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

    def compile_phase(encoder_frozen: bool) -> None:
        if encoder is not None:
            set_encoder_trainable(encoder, not encoder_frozen, batch_norm=not (encoder_frozen or t.freeze_encoder_bn))
        if t.fold_frozen_bn:  # after what trains is set: only the batch norms that do not train fold
            fold_frozen_batch_norms(model)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=[
                keras.metrics.MeanIoU(num_classes=NUM_CLASSES, sparse_y_pred=False, name="mean_iou"),
                keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
            ],
            jit_compile=t.jit_compile,
        )

    return model, compile_phase


def set_encoder_trainable(encoder: keras.Model, trainable: bool, *, batch_norm: bool) -> None:
    """Freeze or unfreeze `encoder`; a BatchNormalization layer that is not trainable runs in inference mode
    (Keras 3), so a frozen encoder keeps its statistics too. `batch_norm=False` keeps BN frozen when unfrozen."""
    encoder.trainable = trainable
    if trainable and not batch_norm:
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False


def phases(plan: TrainingPlan, resumed: int) -> list[tuple[bool, int]]:
    """The fit phases still to run: (encoder frozen?, last epoch). A resume past the frozen phase goes
    straight to the second."""
    todo = [(True, plan.frozen_epochs)] if resumed < plan.frozen_epochs else []
    if plan.frozen_epochs < plan.epochs:
        todo.append((False, plan.epochs))
    return todo
