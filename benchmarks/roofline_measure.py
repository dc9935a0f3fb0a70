"""Roofline (benchmarks/roofline.py), the timed measurements: the machine's peak GFLOP/s (matmul, dense
and depthwise 3x3 convolutions, float32 and bfloat16), train-step variants timed in interleaved rounds
(`Variant`), one preset's roofline row (`measure_preset`), and the depthwise layers and the augmentation
timed alone."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Iterator

from benchmarks.common import cpu_seconds_tree, load_average, log, r
from benchmarks.roofline_models import (compiled_model, depthwise_layers, policy_for, preset_config, step_flops,
                                        synthetic_dataset)


@contextlib.contextmanager
def measured() -> Iterator[dict[str, Any]]:
    """`with measured() as m:` -> m["wall_s"], m["cpu_s"], m["load_before"], m["load_after"]."""
    m: dict[str, Any] = {"load_before": load_average()}
    w0, c0 = time.perf_counter(), cpu_seconds_tree()
    try:
        yield m
    finally:
        m["wall_s"] = time.perf_counter() - w0
        m["cpu_s"] = cpu_seconds_tree() - c0
        m["load_after"] = load_average()


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
    loads = {"before": load_average()}
    for rnd_i in range(rounds):
        for name, (fn, flops, _) in probes.items():
            calls, w0, c0 = 0, time.perf_counter(), cpu_seconds_tree()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - w0
                if elapsed >= probe_s:
                    break
            samples[name].append(flops * calls / elapsed / 1e9)
            per_cpu_s[name].append(flops * calls / max(1e-9, cpu_seconds_tree() - c0) / 1e9)
        log(f"peaks round {rnd_i + 1}/{rounds}:", {k: round(v[-1], 1) for k, v in samples.items()})
    loads["after"] = load_average()
    out: dict[str, Any] = {"load": loads, "probe_s": probe_s, "rounds": rounds, "matmul_n": matmul_n,
                           "conv": "3x3, 64->64 ch, 80x80, batch 8, SAME", "depthwise": "3x3, 64 ch, 80x80, batch 8",
                           "gflops": {}, "gflops_rounds": {}, "gflops_per_cpu_s": {},
                           "note": "gflops: wall-clock throughput, best round (on a shared machine, the share of "
                                   "the cores this process got); gflops_per_cpu_s: per CPU-second of this process, "
                                   "median of the rounds (what one busy core delivers; load-independent)"}
    for name in probes:
        out["gflops"][name] = r(max(samples[name]), 1)
        out["gflops_per_cpu_s"][name] = r(statistics.median(per_cpu_s[name]), 1)
        out["gflops_rounds"][name] = [r(v, 1) for v in samples[name]]
    g = out["gflops"]
    out["bf16_over_fp32"] = {"matmul": r(g["matmul_bfloat16"] / g["matmul_float32"], 2),
                             "conv3x3": r(g["conv3x3_bfloat16"] / g["conv3x3_float32"], 2),
                             "depthwise3x3": r(g["depthwise3x3_bfloat16"] / g["depthwise3x3_float32"], 2)}
    return out


def peak_for(peaks: dict[str, Any], policy: str) -> tuple[str, float]:
    """The roof a model's step is held against: the dense 3x3 conv probe at the step's compute dtype
    (the convolutions are most of every preset's FLOPs; the matmul roof is also reported)."""
    key = "conv3x3_bfloat16" if policy == "mixed_bfloat16" else "conv3x3_float32"
    return key, float(peaks["gflops"][key])


def peak_per_cpu_s(peaks: dict[str, Any], key: str) -> float | None:
    value = peaks.get("gflops_per_cpu_s", {}).get(key)
    return float(value) if value else None


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
                "warmup_s": r(self.warm_s, 1), "step_wall_s": r(wall, 4), "step_cpu_s": r(cpu, 4),
                "images_per_s": r(self.images_per_step / wall, 2),
                "images_per_cpu_s": r(self.images_per_step / cpu, 2),
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
    for round_i in range(rounds):
        for v in variants:
            v.time(steps[v.name] if isinstance(steps, dict) else steps)
        log(f"{label} round {round_i + 1}/{rounds}:",
            {v.name: round(v.samples[-1]["wall_s"] / v.samples[-1]["steps"], 3) for v in variants}, "load", load_average())


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
        "achieved_gflops_wall": r(achieved, 2), "achieved_gflops_per_cpu_s": r(achieved_cpu, 2),
        "cores_busy": r(cores_used, 2), "peak_key": peak_key, "peak_gflops": peak,
        # the probes use both cores like the step does: the fraction is wall-clock throughput over the roof
        "fraction_of_peak": r(achieved / peak, 4),
        # per CPU-second on both sides: independent of how much of the machine the other processes took
        "peak_gflops_per_cpu_s": roof_cpu,
        "fraction_of_peak_per_cpu_s": r(achieved_cpu / roof_cpu, 4) if roof_cpu else None,
    }


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

    from segpipe.data.augment import augment_batch

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


