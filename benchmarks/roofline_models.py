"""Roofline (benchmarks/roofline.py), the models: each preset's model built and compiled the way training
builds and compiles it, the dtype policy it trains in here, its FLOPs by TensorFlow's profiler (depthwise
convolutions counted per layer), and the synthetic batch the steps are timed on. Nothing here is timed."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from benchmarks.common import cpu_flags, r

NUM_CLASSES = 3
PRESET_ORDER = ("tiny", "cpu-quick", "cpu-scratch", "keras-example", "full")
DEFAULT_PRESET = "cpu-quick"
TRAIN_FLOPS_PER_FORWARD = 3.0


def policy_for(setting: str) -> tuple[str, str]:
    """(the dtype policy training would use here for `train.mixed_precision`, the one measured here).

    Mirrors segpipe's precision rule (auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native
    bfloat16, else float32) without importing the training module. A float16 preset on a CPU is measured
    in float32: float16 has no CPU kernels worth timing (emulated), and it is a GPU preset.
    """
    import tensorflow as tf

    gpu = bool(tf.config.list_logical_devices("GPU"))
    native_bf16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    policy = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}.get(setting)
    if setting == "auto":
        policy = "mixed_float16" if gpu else ("mixed_bfloat16" if native_bf16 else "float32")
    measured_policy = "float32" if policy == "mixed_float16" and not gpu else policy
    return policy, measured_policy


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# --------------------------------------------------------------------------- models and FLOPs


# The FLOPs and the speed are those of the architecture; no download of the pretrained weights.
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {name: {"model.encoder_weights": "none"}
                                               for name in ("cpu-quick", "full")}


def preset_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    from segpipe.config import build_config

    return build_config(name, {**PRESET_OVERRIDES.get(name, {}), **(overrides or {})})


def preset_names() -> list[str]:
    from segpipe.config import PRESETS

    return [p for p in PRESET_ORDER if p in PRESETS] + [p for p in PRESETS if p not in PRESET_ORDER]


def build_preset_model(cfg: Any) -> Any:
    """The preset's model, built the way training builds it (segpipe.models.build_model)."""
    from segpipe.models import build_model

    t = cfg.train
    return build_model(cfg.model.name, (t.img_size, t.img_size, 3), NUM_CLASSES, **cfg.model.params())


def count_forward_flops(model: Any, batch: int) -> dict[str, Any]:
    """Forward FLOPs of `model` on a batch of `batch`, by TensorFlow's profiler on the frozen inference graph.

    Returns {"total": FLOPs, "by_op": {op type: FLOPs}} (op types with zero FLOPs left out)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    shape = (batch, *model.inputs[0].shape[1:])
    spec = tf.TensorSpec(shape, model.inputs[0].dtype or tf.float32)
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(forward)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    prof = tf.compat.v1.profiler.profile(frozen.graph, cmd="op", options=opts)
    by_op = {child.name: int(child.total_float_ops) for child in prof.children if child.total_float_ops}
    return {"total": int(prof.total_float_ops), "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def depthwise_flops(model: Any, batch: int) -> int:
    """2 x multiply-adds of every DepthwiseConv2D layer (nested models too): 2 Hout Wout C m k_h k_w B."""
    total = 0
    for layer in depthwise_layers(model):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        total += 2 * batch * h * w * c_out * kh * kw
    return int(total)


def step_flops(cfg: Any) -> dict[str, Any]:
    """FLOPs of one training step of the preset: 3x the profiler's forward count at the preset's batch."""
    import keras

    with dtype_policy("float32"):  # the count does not depend on the dtype; float32 graphs profile cleanly
        model = build_preset_model(cfg)
    fwd = count_forward_flops(model, cfg.train.batch_size)
    # TensorFlow registers no FLOP count for DepthwiseConv2dNative: those are counted here, per layer.
    depthwise = depthwise_flops(model, cfg.train.batch_size) if not any("Depthwise" in k for k in fwd["by_op"]) \
        else sum(v for k, v in fwd["by_op"].items() if "Depthwise" in k)
    by_op = dict(fwd["by_op"])
    if depthwise and not any("Depthwise" in k for k in by_op):
        by_op["DepthwiseConv2dNative (counted per layer)"] = depthwise
    total = sum(by_op.values())
    out = {"forward_flops": total, "forward_flops_tf_profiler": fwd["total"],
           "train_step_flops": TRAIN_FLOPS_PER_FORWARD * total,
           "forward_gflops_per_image": total / cfg.train.batch_size / 1e9,
           "forward_by_op_share": {k: r(v / total, 4) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]},
           "depthwise_flop_share": r(depthwise / total, 4),
           "params": int(model.count_params())}
    del model
    keras.backend.clear_session(free_memory=False)
    return out


def depthwise_layers(model: Any) -> list[Any]:
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += depthwise_layers(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            found.append(layer)
    return found


# --------------------------------------------------------------------------- compiled training steps


def synthetic_dataset(img_size: int, batch: int, seed: int = 0) -> Any:
    import tensorflow as tf

    g = tf.random.Generator.from_seed(seed)
    x = g.uniform((batch, img_size, img_size, 3))
    y = tf.cast(g.uniform((batch, img_size, img_size, 1), maxval=NUM_CLASSES, dtype=tf.int32), tf.int32)
    return tf.data.Dataset.from_tensors((x, y)).repeat(), (x, y)


def compiled_model(cfg: Any, policy: str, *, ema: bool | None = None, jit_compile: bool | None = None,
                   steps_per_execution: int = 1) -> Any:
    """The preset's model compiled like segpipe's training compiles it (second, unfrozen phase): Adam/AdamW
    with the preset's EMA, the preset's loss, mean IoU and pixel accuracy; `ema`/`jit_compile` override."""
    import keras

    from segpipe.training.losses import build_loss

    t = cfg.train
    with dtype_policy(policy):
        model = build_preset_model(cfg)
        use_ema = (t.ema_momentum is not None) if ema is None else ema
        kw: dict[str, Any] = {"use_ema": True, "ema_momentum": t.ema_momentum or 0.99} if use_ema else {}
        if t.optimizer == "adamw":
            opt = keras.optimizers.AdamW(learning_rate=t.learning_rate, weight_decay=t.weight_decay, **kw)
        else:
            opt = keras.optimizers.Adam(learning_rate=t.learning_rate, **kw)
        if policy == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        loss = build_loss(t.loss, num_classes=NUM_CLASSES, dice_weight=t.dice_weight, focal_gamma=t.focal_gamma,
                          class_weights=t.class_weights)
        model.compile(
            optimizer=opt, loss=loss,
            metrics=[keras.metrics.MeanIoU(num_classes=NUM_CLASSES, sparse_y_pred=False, name="mean_iou"),
                     keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
            jit_compile=t.jit_compile if jit_compile is None else jit_compile,
            steps_per_execution=steps_per_execution,
        )
    return model


