"""A roofline for training (issue #12): the machine's peak GFLOP/s, each preset's train-step FLOPs and the
fraction of the peak it reaches, where cpu-quick's time goes, and speed-up candidates measured in one run.

    .venv/bin/python benchmarks/roofline.py                    # ~15 minutes on 2 busy cores
    .venv/bin/python benchmarks/roofline.py --quick            # smaller probes, fewer steps (a smoke run)

Writes benchmarks/results/roofline.json (and prints it); `render_markdown(result)` turns it into the
tables for BENCHMARKS.md.

What is measured, and how:

peaks       fp32 and bf16 `tf.linalg.matmul` (n x n, 2 n^3 FLOPs), fp32 and bf16 `tf.nn.conv2d`
            (3x3, 64->64 channels, 80x80, batch 8: 2 H W Cin Cout 9 B FLOPs) and the 3x3 depthwise conv
            on the same tensor (2 H W C 9 B FLOPs; its own, much lower roof: 9 multiply-adds per output
            value, memory-bound). Each probe is a tf.function, warmed up, then timed for `--probe-s`
            seconds, in `--rounds` interleaved rounds (ABCDE ABCDE ...); the best round counts.
flops       forward FLOPs of each preset's model by TensorFlow's profiler (`float_operation()`) on the frozen
            inference graph of the model at the preset's image size and batch (convolutions, matmuls,
            element-wise ops; the ops TensorFlow registers FLOPs for). One training step is counted as
            3x the forward pass (forward + gradients w.r.t. inputs + gradients w.r.t. weights), the usual
            convention; the optimizer's and EMA's element-wise updates are left out (O(parameters)).
presets     the train step timed on synthetic in-memory data (one batch repeated through tf.data) at the
            preset's image size and batch, compiled like training compiles it: the preset's optimizer
            (Adam/AdamW with the preset's EMA), loss, mean-IoU and pixel-accuracy metrics, dtype policy
            (`train.mixed_precision`: auto = mixed_bfloat16 on a CPU with AVX512_BF16/AMX; a float16
            preset on a CPU is measured in float32, since float16 is emulated there) and the second
            (unfrozen-encoder) phase, which is 90% of cpu-quick's images. `model.fit` over a fixed number
            of steps after a warm-up fit; wall and CPU seconds (getrusage, self + children) per step.
profile     cpu-quick's step under the TensorFlow profiler: the XPlane trace's op events on the executor
            threads, summed by op type into groups (depthwise, conv, batch norm, casts, optimizer/EMA, ...),
            as shares of the profiled CPU time (the rest: Python, Keras, the executor's own work).
ablations   cpu-quick, each variant built and compiled in this process and timed in alternation (round r:
            A B C ...), so the shared machine's load drifts across all alike; ratios of medians:
            EMA on/off, bfloat16/float32, steps_per_execution 1/8, fit/bare compiled train_step loop,
            jit_compile (XLA), the cost of the augmentation per batch (`augment_batch` on a cached uint8
            batch) and of the model's depthwise layers alone (forward + backward, each at its own shape).
Progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULT_PATH = ROOT / "benchmarks" / "results" / "roofline.json"
NUM_CLASSES = 3
PRESET_ORDER = ("tiny", "cpu-quick", "cpu-scratch", "keras-example", "full")
DEFAULT_PRESET = "cpu-quick"
TRAIN_FLOPS_PER_FORWARD = 3.0


# --------------------------------------------------------------------------- small helpers


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_seconds() -> float:
    """CPU seconds of this process and its waited-for children (user + system)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


@contextlib.contextmanager
def measured() -> Iterator[dict[str, Any]]:
    """`with measured() as m:` -> m["wall_s"], m["cpu_s"], m["load_before"], m["load_after"]."""
    m: dict[str, Any] = {"load_before": load()}
    w0, c0 = time.perf_counter(), cpu_seconds()
    try:
        yield m
    finally:
        m["wall_s"] = time.perf_counter() - w0
        m["cpu_s"] = cpu_seconds() - c0
        m["load_after"] = load()


def rnd(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}


def git_commit() -> str:
    """HEAD, `+uncommitted` when segpipe/ or benchmarks/ differ from it (`benchmarks.common.git_commit`)."""
    from benchmarks.common import git_commit as common_git_commit

    return common_git_commit()


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


# --------------------------------------------------------------------------- peaks


def _probe_fns(matmul_n: int) -> dict[str, tuple[Callable[[], Any], float, str]]:
    """name -> (a warm tf.function call, FLOPs per call, dtype)."""
    import tensorflow as tf

    g = tf.random.Generator.from_seed(0)
    probes: dict[str, tuple[Callable[[], Any], float, str]] = {}
    for dtype in ("float32", "bfloat16"):
        a = tf.cast(g.normal((matmul_n, matmul_n)), dtype)
        b = tf.cast(g.normal((matmul_n, matmul_n)), dtype)
        mm = tf.function(lambda a=a, b=b: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b)[:1, :1], tf.float32)))
        probes[f"matmul_{dtype}"] = (mm, 2.0 * matmul_n**3, dtype)
    bsz, hw, cin, cout = 8, 80, 64, 64
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(g.normal((bsz, hw, hw, cin)), dtype)
        k = tf.cast(g.normal((3, 3, cin, cout)) * 0.05, dtype)
        cv = tf.function(lambda x=x, k=k: tf.reduce_sum(
            tf.cast(tf.nn.conv2d(x, k, 1, "SAME")[:1, :1, :1], tf.float32)))
        probes[f"conv3x3_{dtype}"] = (cv, 2.0 * hw * hw * cin * cout * 9 * bsz, dtype)
    for dtype in ("float32", "bfloat16"):
        x = tf.cast(g.normal((bsz, hw, hw, cin)), dtype)
        dk = tf.cast(g.normal((3, 3, cin, 1)) * 0.3, dtype)
        dw = tf.function(lambda x=x, dk=dk: tf.reduce_sum(
            tf.cast(tf.nn.depthwise_conv2d(x, dk, [1, 1, 1, 1], "SAME")[:1, :1, :1], tf.float32)))
        probes[f"depthwise3x3_{dtype}"] = (dw, 2.0 * hw * hw * cin * 9 * bsz, dtype)
    return probes


def measure_peaks(probe_s: float, rounds: int, matmul_n: int) -> dict[str, Any]:
    probes = _probe_fns(matmul_n)
    for name, (fn, _, _) in probes.items():
        fn()
        fn()  # trace + first run (oneDNN primitive creation)
    samples: dict[str, list[float]] = defaultdict(list)
    per_cpu_s: dict[str, list[float]] = defaultdict(list)
    loads = {"before": load()}
    for rnd_i in range(rounds):
        for name, (fn, flops, _) in probes.items():
            calls, w0, c0 = 0, time.perf_counter(), cpu_seconds()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - w0
                if elapsed >= probe_s:
                    break
            samples[name].append(flops * calls / elapsed / 1e9)
            per_cpu_s[name].append(flops * calls / max(1e-9, cpu_seconds() - c0) / 1e9)
        log(f"peaks round {rnd_i + 1}/{rounds}:", {k: round(v[-1], 1) for k, v in samples.items()})
    loads["after"] = load()
    out: dict[str, Any] = {"load": loads, "probe_s": probe_s, "rounds": rounds, "matmul_n": matmul_n,
                           "conv": "3x3, 64->64 ch, 80x80, batch 8, SAME", "depthwise": "3x3, 64 ch, 80x80, batch 8",
                           "gflops": {}, "gflops_rounds": {}, "gflops_per_cpu_s": {},
                           "note": "gflops: wall-clock throughput, best round (on a shared machine, the share of "
                                   "the cores this process got); gflops_per_cpu_s: per CPU-second of this process, "
                                   "median of the rounds (what one busy core delivers; load-independent)"}
    for name in probes:
        out["gflops"][name] = rnd(max(samples[name]), 1)
        out["gflops_per_cpu_s"][name] = rnd(statistics.median(per_cpu_s[name]), 1)
        out["gflops_rounds"][name] = [rnd(v, 1) for v in samples[name]]
    g = out["gflops"]
    out["bf16_over_fp32"] = {"matmul": rnd(g["matmul_bfloat16"] / g["matmul_float32"], 2),
                             "conv3x3": rnd(g["conv3x3_bfloat16"] / g["conv3x3_float32"], 2),
                             "depthwise3x3": rnd(g["depthwise3x3_bfloat16"] / g["depthwise3x3_float32"], 2)}
    return out


def peak_for(peaks: dict[str, Any], policy: str) -> tuple[str, float]:
    """The roof a model's step is held against: the dense 3x3 conv probe at the step's compute dtype
    (the convolutions are most of every preset's FLOPs; the matmul roof is also reported)."""
    key = "conv3x3_bfloat16" if policy == "mixed_bfloat16" else "conv3x3_float32"
    return key, float(peaks["gflops"][key])


def peak_per_cpu_s(peaks: dict[str, Any], key: str) -> float | None:
    value = peaks.get("gflops_per_cpu_s", {}).get(key)
    return float(value) if value else None


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
           "forward_by_op_share": {k: rnd(v / total, 4) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]},
           "depthwise_flop_share": rnd(depthwise / total, 4),
           "params": int(model.count_params())}
    del model
    keras.backend.clear_session(free_memory=False)
    return out


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

    from segpipe.losses import build_loss

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


class Variant:
    """One way of running train steps: `warm()` once, then `run(steps)` timed in rounds."""

    def __init__(self, name: str, run: Callable[[int], None], images_per_step: int, note: str = "") -> None:
        self.name, self._run, self.images_per_step, self.note = name, run, images_per_step, note
        self.samples: list[dict[str, Any]] = []
        self.warm_s: float | None = None

    def warm(self, steps: int) -> None:
        with measured() as m:
            self._run(steps)
        self.warm_s = m["wall_s"]

    def time(self, steps: int) -> None:
        with measured() as m:
            self._run(steps)
        self.samples.append({**m, "steps": steps})

    def summary(self) -> dict[str, Any]:
        wall = statistics.median(s["wall_s"] / s["steps"] for s in self.samples)
        cpu = statistics.median(s["cpu_s"] / s["steps"] for s in self.samples)
        return {"note": self.note, "steps_timed": [s["steps"] for s in self.samples],
                "warmup_s": rnd(self.warm_s, 1), "step_wall_s": rnd(wall, 4), "step_cpu_s": rnd(cpu, 4),
                "images_per_s": rnd(self.images_per_step / wall, 2),
                "images_per_cpu_s": rnd(self.images_per_step / cpu, 2),
                "loads": [[s["load_before"][0], s["load_after"][0]] for s in self.samples]}


def fit_variant(name: str, model: Any, ds: Any, batch: int, note: str = "") -> Variant:
    spe = int(getattr(model, "steps_per_execution", 1) or 1)

    def run(steps: int) -> None:
        steps = max(spe, steps - steps % spe)
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)

    return Variant(name, run, batch, note)


def bare_step_variant(name: str, model: Any, data: tuple[Any, Any], batch: int, note: str = "") -> Variant:
    """A bare loop over the compiled train step (tf.function of model.train_step), no fit machinery."""
    import tensorflow as tf

    step = tf.function(model.train_step, jit_compile=False)

    def run(steps: int) -> None:
        for _ in range(steps):
            logs = step(data)
        float(logs["loss"])  # wait for the last step

    return Variant(name, run, batch, note)


def run_rounds(variants: list[Variant], steps: int | dict[str, int], rounds: int, warm_steps: int, label: str) -> None:
    for v in variants:
        log(f"{label}: warm-up {v.name}")
        v.warm(warm_steps)
    for r in range(rounds):
        for v in variants:
            v.time(steps[v.name] if isinstance(steps, dict) else steps)
        log(f"{label} round {r + 1}/{rounds}:",
            {v.name: round(v.samples[-1]["wall_s"] / v.samples[-1]["steps"], 3) for v in variants}, "load", load())


# --------------------------------------------------------------------------- per preset


def measure_preset(name: str, peaks: dict[str, Any], steps: int, rounds: int,
                   batch_size: int | None = None) -> dict[str, Any]:
    import keras

    cfg = preset_config(name, {"train.batch_size": batch_size} if batch_size else None)
    t = cfg.train
    log(f"{name}: counting FLOPs")
    flops = step_flops(cfg)
    policy, measured_policy = policy_for(t.mixed_precision)
    ds, _ = synthetic_dataset(t.img_size, t.batch_size)
    model = compiled_model(cfg, measured_policy)
    v = fit_variant(name, model, ds, t.batch_size)
    run_rounds([v], steps, rounds, warm_steps=2, label=name)
    s = v.summary()
    peak_key, peak = peak_for(peaks, measured_policy)
    achieved = flops["train_step_flops"] / s["step_wall_s"] / 1e9
    achieved_cpu = flops["train_step_flops"] / s["step_cpu_s"] / 1e9
    cores_used = s["step_cpu_s"] / s["step_wall_s"]
    roof_cpu = peak_per_cpu_s(peaks, peak_key)
    del model
    keras.backend.clear_session(free_memory=False)
    return {
        "model": cfg.model.name, "encoder": cfg.model.encoder, "img_size": t.img_size, "batch_size": t.batch_size,
        "preset_batch_size": preset_config(name).train.batch_size,
        "optimizer": t.optimizer, "loss": t.loss, "ema_momentum": t.ema_momentum, "augment": t.augment,
        "policy_in_training": policy, "policy_measured": measured_policy, **flops, **s,
        "achieved_gflops_wall": rnd(achieved, 2), "achieved_gflops_per_cpu_s": rnd(achieved_cpu, 2),
        "cores_busy": rnd(cores_used, 2), "peak_key": peak_key, "peak_gflops": peak,
        # the probes use both cores like the step does: the fraction is wall-clock throughput over the roof
        "fraction_of_peak": rnd(achieved / peak, 4),
        # per CPU-second on both sides: independent of how much of the machine the other processes took
        "peak_gflops_per_cpu_s": roof_cpu,
        "fraction_of_peak_per_cpu_s": rnd(achieved_cpu / roof_cpu, 4) if roof_cpu else None,
    }


# --------------------------------------------------------------------------- profile of the default preset

OP_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("depthwise conv (fwd+bwd)", ("Depthwise",)),
    ("conv (fwd+bwd)", ("Conv2D", "Conv2DBackprop", "_FusedConv2D", "MklNativeConv", "_MklConv", "MatMul",
                        "BatchMatMul", "_MklMatMul", "_FusedMatMul")),
    ("batch norm", ("FusedBatchNorm",)),
    ("casts (bfloat16)", ("Cast",)),
    ("resize / upsampling", ("Resize",)),
    ("input (iterator)", ("IteratorGetNext", "Iterator", "OptionalGetValue")),
]
ELEMENTWISE = ("Relu", "Relu6", "ReluGrad", "Relu6Grad", "Mul", "AddV2", "Add", "Sub", "RealDiv", "Maximum",
               "Minimum", "Select", "SelectV2", "Square", "Sqrt", "Rsqrt", "Exp", "Log", "Neg", "Softmax",
               "Pow", "BiasAdd", "BiasAddGrad", "AddN", "Tile", "ConcatV2", "Slice", "Pad", "Transpose",
               "Sum", "Mean", "Max", "Prod", "Reshape", "StridedSlice", "StridedSliceGrad", "OneHot", "Pack",
               "Fill", "BroadcastTo", "ZerosLike", "OnesLike", "SquaredDifference", "DivNoNan", "Reciprocal",
               "_MklFusedMish", "_FusedBatchNormEx", "Mean", "Equal", "ArgMax", "Identity")


def op_group(op_name: str, op_type: str) -> str:
    lname = op_name.lower()
    if any(k in lname for k in ("/ema", "ema_", "exponential_moving")):
        return "optimizer: EMA"
    if any(k in lname for k in ("adam", "optimizer", "assignaddvariableop", "assignsubvariableop")) or op_type in (
            "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ResourceApplyAdam",
            "ReadVariableOp"):
        return "optimizer: Adam + variables"
    if "mean_iou" in lname or "pixel_accuracy" in lname or "confusion" in lname or "bincount" in lname.replace(
            "_", ""):
        return "metrics"
    for group, keys in OP_GROUPS:
        if any(k in op_type for k in keys):
            return group
    if op_type in ELEMENTWISE or op_type.endswith("Grad"):
        return "element-wise, reshapes, reductions"
    return "other ops"


def parse_xplane(logdir: str) -> dict[str, Any]:
    """Per-op time from a TensorFlow profiler trace: op events (name:type) on the executor threads."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older / newer layouts
        from tsl.profiler.protobuf import xplane_pb2  # type: ignore[no-redef]

    files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        return {"error": "no xplane.pb written"}
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(files[-1]).read_bytes())
    by_type: dict[str, float] = defaultdict(float)
    by_group: dict[str, float] = defaultdict(float)
    examples: dict[str, str] = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_"):  # executor / inter-op threads only (not python, not tf.data)
                continue
            for ev in line.events:
                name = meta[ev.metadata_id].name
                if ":" not in name or name.startswith("ExecutorState") or "::" in name:
                    continue
                op_name, _, op_type = name.rpartition(":")
                if op_type in ("PartitionedCall", "StatefulPartitionedCall", "__inference", "While", "If"):
                    continue
                ms = ev.duration_ps / 1e9
                by_type[op_type] += ms
                group = op_group(op_name, op_type)
                by_group[group] += ms
                examples.setdefault(group, name)
    return {"by_type_ms": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "by_group_ms": dict(sorted(by_group.items(), key=lambda kv: -kv[1])), "group_examples": examples}


def profile_step(model: Any, ds: Any, steps: int) -> dict[str, Any]:
    import tensorflow as tf

    logdir = tempfile.mkdtemp(prefix="roofline-prof-")
    try:
        with measured() as m:
            tf.profiler.experimental.start(logdir)
            try:
                model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            finally:
                tf.profiler.experimental.stop()
        parsed = parse_xplane(logdir)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    if "error" in parsed:
        return parsed
    cpu_ms = m["cpu_s"] * 1000.0
    op_ms = sum(parsed["by_group_ms"].values())
    shares = {g: rnd(v / op_ms, 4) for g, v in parsed["by_group_ms"].items()}
    return {"steps": steps, "wall_s": rnd(m["wall_s"], 2), "cpu_s": rnd(m["cpu_s"], 2),
            "load": [m["load_before"], m["load_after"]], "op_ms_total": rnd(op_ms, 1),
            "op_time_over_cpu_time": rnd(op_ms / cpu_ms, 3),
            "share_of_op_time": shares,
            "per_step_ms_by_group": {g: rnd(v / steps, 1) for g, v in parsed["by_group_ms"].items()},
            "top_op_types_ms_per_step": {k: rnd(v / steps, 1) for k, v in list(parsed["by_type_ms"].items())[:15]},
            "group_examples": parsed["group_examples"],
            "note": "op event durations summed over the executor threads, as shares of their sum; an event's "
                    "duration is wall time on its thread (on a loaded machine it includes time descheduled, so "
                    "op_time_over_cpu_time can exceed 1); fit's Python work is outside the op events"}


def depthwise_layers(model: Any) -> list[Any]:
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += depthwise_layers(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            found.append(layer)
    return found


def depthwise_variant(model: Any, batch: int) -> Variant:
    """Forward + backward (input and kernel gradients) of each of the model's depthwise layers, alone, at its
    own input shape and the model's compute dtype: what they cost in the step without the rest."""
    import tensorflow as tf

    layers = depthwise_layers(model)
    inputs = []
    g = tf.random.Generator.from_seed(1)
    for layer in layers:
        shape = (batch, *layer.input.shape[1:])
        inputs.append(tf.cast(g.normal(shape), layer.compute_dtype))

    @tf.function
    def fwd_bwd() -> Any:
        total = tf.constant(0.0)
        for layer, x in zip(layers, inputs):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                s = tf.reduce_sum(tf.cast(y, tf.float32) * 1e-3)
            dx, dk = tape.gradient(s, [x, layer.kernel])
            total += tf.reduce_sum(tf.cast(dx[:1, :1, :1], tf.float32)) + tf.reduce_sum(tf.cast(dk, tf.float32))
        return total

    def run(steps: int) -> None:
        for _ in range(steps):
            out = fwd_bwd()
        float(out)

    return Variant("depthwise layers alone (fwd+bwd)", run, batch, note=f"{len(layers)} DepthwiseConv2D layers")


def augment_variant(cfg: Any) -> Variant:
    """segpipe.data.input.augment_batch with the preset's options on one cached uint8 batch (per batch)."""
    import tensorflow as tf

    from segpipe.data.input import augment_batch

    t = cfg.train
    g = tf.random.Generator.from_seed(2)
    images = tf.cast(g.uniform((t.batch_size, t.img_size, t.img_size, 3), maxval=256, dtype=tf.int32), tf.uint8)
    masks = tf.cast(g.uniform((t.batch_size, t.img_size, t.img_size, 1), minval=1, maxval=4, dtype=tf.int32),
                    tf.uint8)
    options = t.augment_options()

    @tf.function(autograph=False)
    def aug(seed: Any) -> Any:
        x, y = augment_batch(images, masks, seed, **options)
        return tf.reduce_sum(x[:1, :1, :1]) + tf.cast(tf.reduce_sum(y[:1, :1, :1]), tf.float32)

    counter = [0]

    def run(steps: int) -> None:
        for _ in range(steps):
            counter[0] += 1
            out = aug(tf.constant([counter[0], 7], tf.int64))
        float(out)

    return Variant("augment_batch (input side)", run, t.batch_size, note="per batch, on a cached uint8 batch")


def ablations(peaks: dict[str, Any], steps: int, rounds: int, xla: bool, profile_steps: int) -> dict[str, Any]:
    import keras

    cfg = preset_config(DEFAULT_PRESET)
    t = cfg.train
    policy, measured_policy = policy_for(t.mixed_precision)
    ds, data = synthetic_dataset(t.img_size, t.batch_size)
    b = t.batch_size
    base = compiled_model(cfg, measured_policy)
    variants = {
        "baseline": fit_variant("baseline", base, ds, b, f"preset as trained: {measured_policy}, EMA, fit, spe 1"),
        "no_ema": fit_variant("no_ema", compiled_model(cfg, measured_policy, ema=False), ds, b, "EMA off"),
        "float32": fit_variant("float32", compiled_model(cfg, "float32"), ds, b, "float32 policy"),
        "spe8": fit_variant("spe8", compiled_model(cfg, measured_policy, steps_per_execution=8), ds, b,
                            "steps_per_execution=8"),
        "bare_step": bare_step_variant("bare_step", base, data, b, "tf.function(model.train_step) loop, no fit"),
    }
    if xla:
        variants["xla"] = fit_variant("xla", compiled_model(cfg, measured_policy, jit_compile=True), ds, b,
                                      "jit_compile=True")
        variants["xla_float32"] = fit_variant("xla_float32", compiled_model(cfg, "float32", jit_compile=True), ds,
                                              b, "jit_compile=True, float32 policy")
    if measured_policy != "float32":
        variants["float32_spe8"] = fit_variant(
            "float32_spe8", compiled_model(cfg, "float32", steps_per_execution=8), ds, b,
            "float32 policy, steps_per_execution=8")
    variants["depthwise"] = depthwise_variant(base, b)
    variants["augment"] = augment_variant(cfg)
    step_counts = {k: (steps if "spe8" not in k else max(8, steps - steps % 8)) for k in variants}
    step_counts["augment"] = steps * 2
    failed: dict[str, str] = {}
    for k, v in list(variants.items()):
        try:
            log(f"ablation warm-up {k}")
            v.warm(8 if "spe8" in k else 2)
        except Exception as exc:  # noqa: BLE001 - an unsupported knob (e.g. XLA on an op) is a result too
            text = str(exc)
            failed[k] = f"{type(exc).__name__}: {text[:200]} ... {text[-700:]}" if len(text) > 900 else \
                f"{type(exc).__name__}: {text}"
            log(f"ablation {k} failed: {failed[k]}")
            del variants[k]
    for r in range(rounds):
        for k, v in variants.items():
            v.time(step_counts[k])
        log(f"ablations round {r + 1}/{rounds}:",
            {k: round(v.samples[-1]["wall_s"] / v.samples[-1]["steps"], 3) for k, v in variants.items()},
            "load", load())
    summ = {k: v.summary() for k, v in variants.items()}
    log("profiling the baseline step")
    prof = profile_step(base, ds, profile_steps)
    b0 = summ["baseline"]

    def ratio(k: str, field: str = "images_per_cpu_s") -> float | None:
        return rnd(summ[k][field] / b0[field], 3) if k in summ else None

    shares = {
        "ema": rnd(1 - summ["no_ema"]["step_cpu_s"] / b0["step_cpu_s"], 3) if "no_ema" in summ else None,
        "fit_overhead_vs_bare_step": (rnd(1 - summ["bare_step"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                      if "bare_step" in summ else None),
        "depthwise_layers_alone": (rnd(summ["depthwise"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                   if "depthwise" in summ else None),
        "augmentation_per_batch_over_step": (rnd(summ["augment"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                             if "augment" in summ else None),
    }
    ratios = {k: {"images_per_cpu_s": ratio(k), "images_per_s": ratio(k, "images_per_s")}
              for k in summ if k not in ("baseline", "depthwise", "augment")}
    return {"preset": DEFAULT_PRESET, "policy_in_training": policy, "policy_measured": measured_policy,
            "img_size": t.img_size, "batch_size": b, "variants": summ, "failed": failed,
            "ratios_vs_baseline": ratios, "shares_of_baseline_step_cpu": shares, "profile": prof}


def precision_check(names: list[str], steps: int, rounds: int) -> dict[str, Any]:
    """For each preset whose policy here is mixed_bfloat16: its step in mixed_bfloat16 and in float32,
    interleaved in one process (ratio: float32 images per CPU-second over bfloat16's)."""
    import keras

    out: dict[str, Any] = {"load_before": load()}
    for name in names:
        cfg = preset_config(name)
        _, measured_policy = policy_for(cfg.train.mixed_precision)
        if measured_policy != "mixed_bfloat16":
            continue
        ds, _ = synthetic_dataset(cfg.train.img_size, cfg.train.batch_size)
        b = cfg.train.batch_size
        vs = [fit_variant("mixed_bfloat16", compiled_model(cfg, "mixed_bfloat16"), ds, b),
              fit_variant("float32", compiled_model(cfg, "float32"), ds, b)]
        run_rounds(vs, steps, rounds, warm_steps=2, label=f"precision {name}")
        summ = {v.name: v.summary() for v in vs}
        out[name] = {"variants": summ,
                     "float32_over_bfloat16_images_per_cpu_s": rnd(
                         summ["float32"]["images_per_cpu_s"] / summ["mixed_bfloat16"]["images_per_cpu_s"], 3),
                     "float32_over_bfloat16_images_per_s": rnd(
                         summ["float32"]["images_per_s"] / summ["mixed_bfloat16"]["images_per_s"], 3)}
        keras.backend.clear_session(free_memory=False)
    out["load_after"] = load()
    return out


def head_first_pair(policy: str, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """cpu-quick compiled with its last x4 bilinear resize on the decoder's 256 features, then the 1x1 head
    (`model.upsample_logits=false`, the layout before that knob), and its head-first twin (the default:
    the 1x1 head, then the resize on 3 logits), with the same weights: the same function, since a 1x1
    convolution and a bilinear resize (weights summing to 1) commute."""
    over = dict(overrides or {})
    base = compiled_model(preset_config(DEFAULT_PRESET, {**over, "model.upsample_logits": False}), policy)
    twin = compiled_model(preset_config(DEFAULT_PRESET, {**over, "model.upsample_logits": True}), policy)
    twin.set_weights(base.get_weights())
    return base, twin


def head_first_check(steps: int, rounds: int) -> dict[str, Any]:
    """cpu-quick with the resize before the head ("as_built": the layout before `model.upsample_logits`)
    against its head-first twin (`head_first_pair`), in mixed_bfloat16 and float32, interleaved; plus the
    largest output difference of the twins (same weights) on one batch."""
    import numpy as np

    cfg = preset_config(DEFAULT_PRESET)
    t = cfg.train
    ds, (x, _) = synthetic_dataset(t.img_size, t.batch_size)
    out: dict[str, Any] = {"load_before": load(), "preset": DEFAULT_PRESET}
    variants = []
    for policy in ("mixed_bfloat16", "float32"):
        base, twin = head_first_pair(policy)
        a = np.asarray(base(x, training=False), dtype=np.float64)
        b = np.asarray(twin(x, training=False), dtype=np.float64)
        out[f"max_abs_output_difference_{policy}"] = float(np.max(np.abs(a - b)))
        out[f"argmax_agreement_{policy}"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        variants += [fit_variant(f"as_built_{policy}", base, ds, t.batch_size),
                     fit_variant(f"head_first_{policy}", twin, ds, t.batch_size)]
    run_rounds(variants, steps, rounds, warm_steps=2, label="head-first")
    summ = {v.name: v.summary() for v in variants}
    base_ips = summ["as_built_mixed_bfloat16"]["images_per_cpu_s"]
    out["variants"] = summ
    out["ratios_vs_as_built_bfloat16"] = {k: rnd(v["images_per_cpu_s"] / base_ips, 3) for k, v in summ.items()}
    out["load_after"] = load()
    return out


def head_first_candidates(hf: dict[str, Any]) -> list[dict[str, Any]]:
    v = hf["variants"]
    base = v["as_built_mixed_bfloat16"]
    out = []
    for key, knob, change, quality in (
        ("head_first_mixed_bfloat16", "1x1 head before the last x4 upsampling (model code)",
         "segpipe/models/deeplabv3plus.py: softmax_head's Conv2D before output_upsample4",
         f"the same function (largest output difference {hf['max_abs_output_difference_mixed_bfloat16']:.1e})"),
        ("as_built_float32", "mixed_precision off (float32)", "cpu-quick: mixed_precision = 'off'",
         "float32 maths (the reference precision)"),
        ("head_first_float32", "head first + float32", "both of the above",
         f"the same function in float32 (largest output difference "
         f"{hf['max_abs_output_difference_float32']:.1e})"),
    ):
        out.append({"variant": key, "knob": knob, "preset_change": change, "quality": quality,
                    "images_per_cpu_s_before": base["images_per_cpu_s"],
                    "images_per_cpu_s_after": v[key]["images_per_cpu_s"],
                    "ratio_images_per_cpu_s": rnd(v[key]["images_per_cpu_s"] / base["images_per_cpu_s"], 3),
                    "ratio_images_per_s": rnd(v[key]["images_per_s"] / base["images_per_s"], 3),
                    "measured_in": "head_first"})
    return out


def quality_text(candidate: dict[str, Any]) -> str:
    """A candidate's quality column: what the change does to the maths, and, for a float32 candidate, the
    claim `claims.paired_claim` computes from the paired float32/bfloat16 quality results (never a stored
    "not lower": results written before this strip it)."""
    text = candidate["quality"].removesuffix(": not lower")
    if "mixed_precision = 'off'" in candidate["preset_change"] or candidate.get("variant", "").endswith("float32"):
        from benchmarks.claims import CLAIM_PAIRS, paired_claim
        from benchmarks.render import load

        base, cand = CLAIM_PAIRS["float32"]
        text += ": " + paired_claim(load(base), load(cand), (base, cand))
    return text


def candidates(abl: dict[str, Any]) -> list[dict[str, Any]]:
    """Speed-up candidates from the ablations: knob, preset change, images per CPU-second before/after."""
    v = abl["variants"]
    base = v["baseline"]
    specs = [
        ("spe8", "compile(steps_per_execution=8)", "a new train.steps_per_execution field = 8 (fit's loop: one "
         "call per 8 steps)", "none: the same maths, step by step"),
        ("xla", "compile(jit_compile=True)", "cpu-quick: train.jit_compile = true", "none in principle (XLA fuses "
         "ops; float rounding may differ in the last bits)"),
        ("xla_float32", "jit_compile=True, float32", "jit_compile = true, mixed_precision = 'off'",
         "float32 maths (the reference precision)"),
        ("float32_spe8", "float32 + steps_per_execution=8", "mixed_precision = 'off' + steps_per_execution 8",
         "float32 maths (the reference precision)"),
        ("bare_step", "no fit machinery (bound on what fit's overhead costs)", "none (a reference)", "none"),
        ("float32", "mixed_precision off (float32)", "mixed_precision = 'off'", "float32 maths (the reference "
         "precision)"),
        ("no_ema", "ema_momentum=None", "drop the EMA", "yes: validation and the saved model use the raw weights"),
    ]
    out = []
    for key, knob, change, quality in specs:
        if key not in v:
            continue
        out.append({"variant": key, "knob": knob, "preset_change": change, "quality": quality,
                    "images_per_cpu_s_before": base["images_per_cpu_s"],
                    "images_per_cpu_s_after": v[key]["images_per_cpu_s"],
                    "ratio_images_per_cpu_s": rnd(v[key]["images_per_cpu_s"] / base["images_per_cpu_s"], 3),
                    "ratio_images_per_s": rnd(v[key]["images_per_s"] / base["images_per_s"], 3)})
    return out


# --------------------------------------------------------------------------- markdown


def _one_line(error: str, limit: int = 200) -> str:
    """An error message for a table cell: XLA's own reason when there is one, on one line, no pipes."""
    import re

    text = " ".join(error.split()).replace("|", "/")
    why = re.search(r"(Seen floating point types.*?disallowed|UNIMPLEMENTED[^.]*|Resource exhausted[^.]*|"
                    r"out of memory[^.]*)", text)
    text = f"{text.split(':')[0]}: {why.group(1)}" if why else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def summary_sentence(result: dict[str, Any]) -> str:
    """What the figures above say, computed from them (so the text and the tables cannot disagree)."""
    parts = []
    q = result.get("presets", {}).get(DEFAULT_PRESET, {})
    abl = result.get("ablations", {})
    shares = abl.get("profile", {}).get("share_of_op_time", {})
    if q.get("fraction_of_peak_per_cpu_s") is not None:
        parts.append(f"{DEFAULT_PRESET} reaches {q['fraction_of_peak_per_cpu_s']:.0%} of the {q.get('peak_key', 'dense conv')} roof per "
                     f"CPU-second ({q.get('depthwise_flop_share', 0):.0%} of its FLOPs are depthwise).")
    if shares:
        conv, dw = shares.get("conv (fwd+bwd)", 0.0), shares.get("depthwise conv (fwd+bwd)", 0.0)
        parts.append(f"Dense convolutions take {conv:.0%} of its op time and depthwise ones {dw:.0%}; the rest is "
                     f"memory-bound: element-wise ops, reshapes and reductions {shares.get('element-wise, reshapes, reductions', 0):.0%} "
                     f"(Keras 3's BatchNormalization is unfused element-wise arithmetic, forward and backward), "
                     f"casts {shares.get('casts (bfloat16)', 0):.0%}, resizes {shares.get('resize / upsampling', 0):.0%}, "
                     f"the optimizer {shares.get('optimizer: Adam + variables', 0):.0%}.")
    ratios = abl.get("ratios_vs_baseline", {})
    best = max(((k, v["images_per_cpu_s"]) for k, v in ratios.items() if v.get("images_per_cpu_s")),
               key=lambda kv: kv[1], default=None)
    if best:
        parts.append(f"Best knob measured in the ablations: {best[0]} at {best[1]:.2f}x images per CPU-second.")
    hf = result.get("head_first", {}).get("ratios_vs_as_built_bfloat16", {})
    if hf:
        k, v = max(hf.items(), key=lambda kv: kv[1])
        parts.append(f"With the head before the last upsampling (a model change): {k} at {v:.2f}x.")
    return " ".join(parts)


def render_markdown(result: dict[str, Any]) -> str:
    """The markdown tables for BENCHMARKS.md: peaks, the roofline per preset, cpu-quick's profile and shares,
    and the speed-up candidates."""
    lines: list[str] = []
    m = result.get("machine", {})
    peaks = result.get("peaks", {})
    g = peaks.get("gflops", {})
    gc = peaks.get("gflops_per_cpu_s", {})
    if g:
        lines += [f"Peaks on {m.get('cpu_model', '?')} ({m.get('cores', '?')} cores; load "
                  f"{m.get('load_before', ['?'])[0]} -> {m.get('load_after', ['?'])[0]}), best of "
                  f"{peaks.get('rounds', '?')} interleaved rounds:", "",
                  "| probe | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 | float32 GFLOP per CPU-s "
                  "| bfloat16 GFLOP per CPU-s |", "|---|---:|---:|---:|---:|---:|"]
        for probe, label in (("matmul", f"matmul {peaks.get('matmul_n', '')}²"), ("conv3x3", "conv 3x3 64→64, 80², b8"),
                             ("depthwise3x3", "depthwise 3x3 64 ch, 80², b8")):
            lines.append(f"| {label} | {_f(g.get(probe + '_float32'), '{:.1f}')} | "
                         f"{_f(g.get(probe + '_bfloat16'), '{:.1f}')} | "
                         f"{_f(peaks.get('bf16_over_fp32', {}).get(probe))} | "
                         f"{_f(gc.get(probe + '_float32'), '{:.1f}')} | {_f(gc.get(probe + '_bfloat16'), '{:.1f}')} |")
        lines.append("")
    presets = result.get("presets", {})
    if presets:
        lines += ["Roofline per preset: train-step FLOPs = 3x the forward pass (TensorFlow's profiler on the frozen "
                  "graph, depthwise convolutions counted per layer); fraction of peak = GFLOP per CPU-second of the "
                  "step over the dense 3x3 conv probe's at the step's dtype (per CPU-second on both sides, so the "
                  "changing load of the shared machine cancels; the wall-clock figures are in the JSON).", "",
                  "| preset | model | size, batch | dtype measured | train-step GFLOP | depthwise FLOP share "
                  "| step wall s | step CPU s | GFLOP per CPU-s | roof per CPU-s | fraction of peak | images / CPU-s |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, p in presets.items():
            if "error" in p:
                lines.append(f"| {name} | – | – | – | – | – | – | – | – | – | failed: {_one_line(p['error'])} | – |")
                continue
            model = p["model"] + (f" / {p['encoder']}" if p.get("encoder") else "")
            batch = str(p["batch_size"]) + (f" (preset: {p['preset_batch_size']})"
                                             if p.get("preset_batch_size", p["batch_size"]) != p["batch_size"] else "")
            lines.append(
                f"| {name} | {model} | {p['img_size']}, {batch} | {p['policy_measured']} | "
                f"{p['train_step_flops'] / 1e9:.3g} | {_f(p.get('depthwise_flop_share'), '{:.1%}')} | "
                f"{_f(p['step_wall_s'], '{:.3f}')} | {_f(p['step_cpu_s'], '{:.3f}')} | "
                f"{_f(p.get('achieved_gflops_per_cpu_s'), '{:.1f}')} | {_f(p.get('peak_gflops_per_cpu_s'), '{:.0f}')} | "
                f"{_f(p.get('fraction_of_peak_per_cpu_s'), '{:.1%}')} | {_f(p['images_per_cpu_s'])} |")
        lines.append("")
    abl = result.get("ablations", {})
    prof = abl.get("profile", {})
    if prof.get("share_of_op_time"):
        lines += [f"Where {abl.get('preset', 'cpu-quick')}'s step time goes (TensorFlow profiler, "
                  f"{prof.get('steps')} steps; shares of the summed op time, which is "
                  f"{_f(prof.get('op_time_over_cpu_time'))}x the process's CPU time):", "",
                  "| group | share of op time | ms per step |", "|---|---:|---:|"]
        per = prof.get("per_step_ms_by_group", {})
        for group, share in prof["share_of_op_time"].items():
            lines.append(f"| {group} | {_f(share, '{:.1%}')} | {_f(per.get(group), '{:.0f}')} |")
        lines.append("")
    if abl.get("variants"):
        b = abl["variants"].get("baseline", {})
        lines += [f"{abl.get('preset', 'cpu-quick')} ablations, interleaved in one run (medians; ratio = images "
                  "per CPU-second over the baseline's):", "",
                  "| variant | what | step wall s | step CPU s | images / CPU-s | ratio |", "|---|---|---:|---:|---:|---:|"]
        for k, v in abl["variants"].items():
            ratio = (v["images_per_cpu_s"] / b["images_per_cpu_s"]) if b.get("images_per_cpu_s") else None
            if k in ("depthwise", "augment"):
                ratio_s = f"{v['step_cpu_s'] / b['step_cpu_s']:.1%} of a step" if b.get("step_cpu_s") else "–"
            else:
                ratio_s = _f(ratio, "{:.2f}x")
            lines.append(f"| {k} | {v.get('note', '')} | {_f(v['step_wall_s'], '{:.3f}')} | "
                         f"{_f(v['step_cpu_s'], '{:.3f}')} | {_f(v['images_per_cpu_s'])} | {ratio_s} |")
        for k, why in abl.get("failed", {}).items():
            lines.append(f"| {k} | failed: {_one_line(why)} | – | – | – | – |")
        lines.append("")
    cands = result.get("candidates", [])
    if cands:
        lines += ["Speed-up candidates for the default preset (images per CPU-second, each against the as-built "
                  "baseline timed in the same interleaved run):", "",
                  "| knob | preset change | before | after | ratio | ratio (images/s) | quality |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for c in cands:
            lines.append(f"| {c['knob']} | {c['preset_change']} | {_f(c['images_per_cpu_s_before'])} | "
                         f"{_f(c['images_per_cpu_s_after'])} | {_f(c['ratio_images_per_cpu_s'], '{:.2f}x')} | "
                         f"{_f(c['ratio_images_per_s'], '{:.2f}x')} | {quality_text(c)} |")
        lines.append("")
    prec = {k: v for k, v in result.get("precision", {}).items() if isinstance(v, dict) and "variants" in v}
    if prec:
        lines += ["bfloat16 against float32 per preset (interleaved in one run; images per CPU-second):", "",
                  "| preset | mixed_bfloat16 | float32 | float32 / bfloat16 | (images/s) |", "|---|---:|---:|---:|---:|"]
        for name, v in prec.items():
            lines.append(f"| {name} | {_f(v['variants']['mixed_bfloat16']['images_per_cpu_s'])} | "
                         f"{_f(v['variants']['float32']['images_per_cpu_s'])} | "
                         f"{_f(v['float32_over_bfloat16_images_per_cpu_s'], '{:.2f}x')} | "
                         f"{_f(v['float32_over_bfloat16_images_per_s'], '{:.2f}x')} |")
        lines.append("")
    hf = result.get("head_first", {})
    if hf.get("variants"):
        lines += [f"{hf.get('preset', DEFAULT_PRESET)} as built (1x1 head after the last x4 bilinear upsampling) against "
                  "the head-first twin (the same layers and weights, the head before the upsampling: the same "
                  "function, the resize on 3 channels instead of 256), interleaved in one run; largest output "
                  f"difference {_f(hf.get('max_abs_output_difference_float32'), '{:.1e}')} (float32), "
                  f"{_f(hf.get('max_abs_output_difference_mixed_bfloat16'), '{:.1e}')} (bfloat16):", "",
                  "| variant | step wall s | step CPU s | images / CPU-s | ratio to as built, bfloat16 |",
                  "|---|---:|---:|---:|---:|"]
        for k, v in hf["variants"].items():
            lines.append(f"| {k} | {_f(v['step_wall_s'], '{:.3f}')} | {_f(v['step_cpu_s'], '{:.3f}')} | "
                         f"{_f(v['images_per_cpu_s'])} | {_f(hf['ratios_vs_as_built_bfloat16'].get(k), '{:.2f}x')} |")
        lines.append("")
    conclusion = summary_sentence(result)
    if conclusion:
        lines += [conclusion, ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main


def add_machine_aliases(result: dict[str, Any]) -> dict[str, Any]:
    """The machine record under the key names the other benchmarks use (benchmarks/common.py), for the
    provenance line benchmarks/render.py writes: cpus, load_average_start/_end, the fp32 matmul probe."""
    m = result.setdefault("machine", {})
    m.setdefault("cpus", m.get("cores"))
    if m.get("load_before"):
        m.setdefault("load_average_start", m["load_before"])
    if m.get("load_after"):
        m.setdefault("load_average_end", m["load_after"])
    probe = result.get("peaks", {}).get("gflops", {}).get("matmul_float32")
    if probe:
        m.setdefault("peak_matmul_gflops_float32", probe)
    return result


PRESET_STEPS = {"tiny": 40, "cpu-quick": 8, "cpu-scratch": 8, "keras-example": 2, "full": 2}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=None, help="default: every preset in segpipe.config")
    p.add_argument("--probe-s", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--ablation-steps", type=int, default=6)
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--no-xla", action="store_true")
    p.add_argument("--full-batch", type=int, default=8,
                   help="batch for the full preset (its own 32 at 320 px takes > 16 GB here); 0: the preset's")
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--only-precision", action="store_true",
                   help="run only the bfloat16-vs-float32 check of every bfloat16 preset and add it to --out")
    p.add_argument("--only-head-first", action="store_true",
                   help="run only cpu-quick against its head-first twin (bf16 and fp32) and add it to --out")
    p.add_argument("--quick", action="store_true", help="a smoke run: short probes, one round, few steps")
    p.add_argument("--out", default=str(RESULT_PATH))
    args = p.parse_args(argv)
    if args.quick:
        args.probe_s, args.rounds, args.matmul_n, args.ablation_steps, args.profile_steps = 0.5, 1, 1024, 2, 2

    t0, c0 = time.perf_counter(), cpu_seconds()
    if args.only_precision or args.only_head_first:
        out_path = Path(args.out)
        result = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if args.only_precision:
            check = precision_check(args.presets or preset_names(), PRESET_STEPS["cpu-quick"], args.rounds)
        else:
            check = head_first_check(args.ablation_steps, args.rounds)
        check.update({"command": " ".join([sys.executable, *sys.argv]), "commit": git_commit(),
                      "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (
                          time.perf_counter() - t0))), "wall_s": rnd(time.perf_counter() - t0, 1)})
        result["precision" if args.only_precision else "head_first"] = check
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(check, indent=2))
        return result
    machine = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "load_before": load(),
               "bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}),
               "python": platform.python_version()}
    import keras
    import tensorflow as tf

    machine.update({"tensorflow": tf.__version__, "keras": keras.__version__,
                    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()})
    log("machine", machine)
    peaks = measure_peaks(args.probe_s, args.rounds, args.matmul_n)
    from benchmarks.common import config_record

    names = args.presets or preset_names()
    result: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "commit": git_commit(),
                              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "machine": machine, "peaks": peaks, "presets": {},
                              "configs": [config_record(n, PRESET_OVERRIDES.get(n, {}), cfg=preset_config(n))
                                          for n in names]}
    out = Path(args.out) if args.out else None

    def save() -> None:  # after every stage: a later stage failing (memory) leaves the earlier ones written
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(add_machine_aliases(result), indent=2) + "\n")

    # the big ones last: the ablations of the default preset matter more than the GPU preset's CPU figure
    order = [n for n in names if n != "full"] + (
        ["ablations", "precision", "head_first"] if not args.no_ablations else []) + [n for n in names if n == "full"]
    for name in order:
        if name == "precision":
            result["precision"] = precision_check(names, PRESET_STEPS["cpu-quick"], args.rounds)
            save()
            continue
        if name == "head_first":
            result["head_first"] = head_first_check(args.ablation_steps, args.rounds)
            result["candidates"] = candidates(result["ablations"]) + head_first_candidates(result["head_first"])
            save()
            continue
        if name == "ablations":
            result["ablations"] = ablations(peaks, args.ablation_steps, args.rounds, not args.no_xla,
                                            args.profile_steps)
            result["candidates"] = candidates(result["ablations"])
            save()
            continue
        steps = PRESET_STEPS.get(name, 4) if not args.quick else min(PRESET_STEPS.get(name, 2), 2)
        rounds = 1 if name in ("full", "keras-example") or args.quick else 2
        batch = args.full_batch if name == "full" and args.full_batch else None
        try:
            result["presets"][name] = measure_preset(name, peaks, steps, rounds, batch)
            log(name, {k: result["presets"][name][k] for k in ("train_step_flops", "step_wall_s", "step_cpu_s",
                                                                 "achieved_gflops_wall", "fraction_of_peak")})
        except Exception as exc:  # noqa: BLE001 - one preset failing (memory) still reports the others
            result["presets"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(name, "failed", result["presets"][name]["error"])
        save()
    machine["load_after"] = load()
    add_machine_aliases(result)
    result["wall_s"] = rnd(time.perf_counter() - t0, 1)
    result["cpu_s"] = rnd(cpu_seconds() - c0, 1)
    save()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
