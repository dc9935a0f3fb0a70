"""Training throughput (images/s) of every registered model, and of XLA, thread and precision settings.

    .venv/bin/python benchmarks/train_throughput.py              # ~8 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --models unet xception_unet --steps 10

Every configuration runs in a fresh subprocess (thread settings only take
effect before TensorFlow starts) on synthetic in-memory data at 160x160: one
batch repeated, so the input pipeline costs nothing. Each child builds the model
with the configuration's default parameters (`segpipe.config.ModelConfig`),
compiles it like training does (Adam, the sce+dice loss, mean IoU and pixel
accuracy metrics) and runs one `fit` of `--warmup` + `--steps` steps: the
warm-up steps (tracing / XLA compilation) are timed separately, the rest from
the end of the last warm-up step to the end of the last step (a callback).

Groups, each against its reference measured in the same run:
  models     every model in segpipe.models.MODEL_NAMES, against xception_unet
  xla        jit_compile=True, against the same model without it
  threads    intra/inter-op threads (1/1, 2/1, 2/2), against TensorFlow's defaults (0/0)
  precision  mixed_float16 and mixed_bfloat16 policies, against float32

The reference (xception_unet, defaults) runs first and again last, to show drift.
Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common import Machine, emit, last_json, log, r, run_measured

REFERENCE_MODEL = "xception_unet"


# --------------------------------------------------------------------------- child


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, compile and time one configuration; runs in its own process."""
    import tensorflow as tf

    if spec["intra"] is not None:
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra"])
    if spec["inter"] is not None:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter"])
    import keras

    from segpipe.config import ModelConfig
    from segpipe.losses import build_loss
    from segpipe.models import build_model

    if spec["precision"] != "float32":
        keras.mixed_precision.set_global_policy(spec["precision"])
    keras.utils.set_random_seed(0)
    size, batch = spec["img_size"], spec["batch_size"]
    params = ModelConfig(name=spec["model"]).params()
    model = build_model(spec["model"], (size, size, 3), 3, **params)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=build_loss("sce+dice", num_classes=3),
        metrics=[keras.metrics.MeanIoU(num_classes=3, sparse_y_pred=False, name="mean_iou"),
                 keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
        jit_compile=spec["xla"],
    )
    rng = tf.random.Generator.from_seed(0)
    x = rng.uniform((batch, size, size, 3))
    y = tf.cast(rng.uniform((batch, size, size, 1), 0, 3, dtype=tf.int32), tf.int32)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()

    marks: list[tuple[float, float]] = []  # (wall, cpu) at the end of every step

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.append((time.perf_counter(), time.process_time()))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            marks.append((time.perf_counter(), time.process_time()))

    # One fit call: the first `warmup` steps trace/compile, the rest are timed from the end of the last warm-up step.
    model.fit(ds, steps_per_epoch=spec["warmup"] + spec["steps"], epochs=1, verbose=0, callbacks=[StepClock()])
    warmup_s = marks[spec["warmup"]][0] - marks[0][0]
    wall = marks[-1][0] - marks[spec["warmup"]][0]
    cpu = marks[-1][1] - marks[spec["warmup"]][1]
    n = spec["steps"] * batch
    return {
        "images_per_s": n / wall,
        "step_ms": 1000 * wall / spec["steps"],
        "cpu_ms_per_image": 1000 * cpu / n,
        "cores_used": cpu / wall,
        "warmup_s": warmup_s,
        "params": int(model.count_params()),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


# --------------------------------------------------------------------------- parent


def run_config(base: dict[str, Any], **change: Any) -> dict[str, Any]:
    spec = {**base, **change}
    label = (f"{spec['model']} xla={spec['xla']} threads={spec['intra']}/{spec['inter']} "
             f"precision={spec['precision']}")
    done = run_measured([sys.executable, __file__, "--child", json.dumps(spec)], timeout=900)
    row: dict[str, Any] = {k: spec[k] for k in ("model", "xla", "intra", "inter", "precision")}
    if done["returncode"] != 0:
        error = (done["stderr"].strip().splitlines() or ["?"])[-1][:300]
        log(f"{label}: FAILED ({error})")
        return {**row, "error": error}
    out = last_json(done["stdout"])
    log(f"{label}: {out['images_per_s']:.2f} images/s ({out['step_ms']:.0f} ms/step, "
        f"{out['cores_used']:.2f} cores, warm-up {out['warmup_s']:.1f} s)")
    return {**row, "images_per_s": r(out["images_per_s"], 2), "step_ms": r(out["step_ms"]),
            "cpu_ms_per_image": r(out["cpu_ms_per_image"], 1), "cores_used": r(out["cores_used"], 2),
            "warmup_s": r(out["warmup_s"]), "params": out["params"], "peak_rss_mb": r(done["peak_rss_mb"]),
            "threads_reported": [out["intra_op_threads"], out["inter_op_threads"]]}


def ratio(row: dict[str, Any], ref: dict[str, Any]) -> float | None:
    if "images_per_s" not in row or "images_per_s" not in ref:
        return None
    return r(row["images_per_s"] / ref["images_per_s"], 2)


def main() -> None:
    from segpipe.models.registry import MODEL_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, XLA compilation)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--groups", nargs="+", default=["models", "xla", "threads", "precision"],
                   choices=["models", "xla", "threads", "precision"])
    p.add_argument("--detail-models", nargs="+", default=["xception_unet", "unet"], choices=MODEL_NAMES,
                   help="models for the threads and precision groups")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    machine = Machine()
    base = {"model": REFERENCE_MODEL, "xla": False, "intra": None, "inter": None, "precision": "float32",
            "img_size": args.img_size, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps}
    reference = run_config(base)
    defaults = {REFERENCE_MODEL: reference}
    groups: dict[str, list[dict[str, Any]]] = {}
    if "models" in args.groups or "xla" in args.groups:
        for name in args.models:
            if name not in defaults:
                defaults[name] = run_config(base, model=name)
    if "models" in args.groups:
        groups["models"] = [{**defaults[m], "vs_xception_unet": ratio(defaults[m], reference)} for m in args.models]
    if "xla" in args.groups:
        groups["xla"] = []
        for name in args.models:
            row = run_config(base, model=name, xla=True)
            groups["xla"].append({**row, "vs_same_model_without_xla": ratio(row, defaults[name])})
    if "threads" in args.groups:
        groups["threads"] = []
        for name in args.detail_models:
            ref = defaults.get(name) or run_config(base, model=name)
            defaults[name] = ref
            groups["threads"].append({**ref, "vs_defaults": 1.0})
            for intra, inter in ((1, 1), (2, 1), (2, 2)):
                row = run_config(base, model=name, intra=intra, inter=inter)
                groups["threads"].append({**row, "vs_defaults": ratio(row, ref)})
    if "precision" in args.groups:
        groups["precision"] = []
        for name in args.detail_models:
            ref = defaults.get(name) or run_config(base, model=name)
            defaults[name] = ref
            for policy in ("mixed_float16", "mixed_bfloat16"):
                row = run_config(base, model=name, precision=policy)
                groups["precision"].append({**row, "vs_float32": ratio(row, ref)})
    again = run_config(base)
    emit({
        "benchmark": "train_throughput",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "data": "synthetic, one in-memory batch repeated (no input pipeline cost)",
        "model_params": "segpipe.config.ModelConfig defaults per model (unet/segnet base_filters 16 depth 4; "
                        "deeplabv3plus mobilenetv2, no pretrained weights)",
        "threads": "intra/inter None = TensorFlow default (0 = one per core)",
        "reference": reference,
        "reference_again_at_end": again,
        "reference_drift": ratio(again, reference),
        "groups": groups,
        "machine": machine.report(),
    }, args.out)


if __name__ == "__main__":
    main()
