"""Training throughput (images/s) of every registered model, and of XLA, thread and precision settings.

    .venv/bin/python benchmarks/train_throughput.py      # ~12 minutes on 2 busy cores (XLA and
                                                         # float16 are slow to compile and to run)
    .venv/bin/python benchmarks/train_throughput.py --no-xla --no-precision --models unet xception_unet
    .venv/bin/python benchmarks/train_throughput.py --models unet deeplabv3plus --detail-models unet \
        deeplabv3plus --no-xla --no-threads --precisions mixed_bfloat16     # bfloat16 only, ~2 minutes

Synthetic in-memory data at 160x160 (one batch repeated: the input pipeline
costs nothing). Each configuration builds its model with the config's default
parameters (`segpipe.config.ModelConfig`), compiles it like training does
(Adam, the sce+dice loss, mean IoU and pixel accuracy metrics) and runs
`--warmup` steps (tracing / XLA compilation, timed apart). Then, in `--rounds`
rounds, every configuration in turn runs `--steps` timed steps (timed by a
callback from the end of the first step to the end of the last), so the
shared machine's load drifts across all of them alike; medians are reported,
as images/s and as CPU ms per image (the process's CPU time: what a step
costs, whatever the other processes take).

Groups, each against its reference measured in the same run:
  models     every model in segpipe.models.MODEL_NAMES (or --models), against xception_unet
             (the first of --models when xception_unet is not among them)
  xla        jit_compile=True, against the same model without it
  precision  mixed_float16 and mixed_bfloat16 policies, against float32
  threads    intra/inter-op threads (1/1, 2/1, 2/2) against TensorFlow's defaults:
             thread settings only take effect before TensorFlow starts, so each
             setting is a subprocess, run in alternation for `--rounds` rounds.
Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import Machine, emit, last_json, log, median, r, run_measured  # noqa: E402

REFERENCE_MODEL = "xception_unet"
THREADS = [(None, None), (1, 1), (2, 1), (2, 2)]


# --------------------------------------------------------------------------- child


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build every configuration in `spec["configs"]`, warm each up, then time them in rounds."""
    import tensorflow as tf

    if spec["intra"] is not None:
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra"])
    if spec["inter"] is not None:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter"])
    import keras

    from segpipe.config import ModelConfig
    from segpipe.training.losses import build_loss
    from segpipe.models import build_model

    size, batch = spec["img_size"], spec["batch_size"]
    rng = tf.random.Generator.from_seed(0)
    x = rng.uniform((batch, size, size, 3))
    y = tf.cast(rng.uniform((batch, size, size, 1), 0, 3, dtype=tf.int32), tf.int32)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    marks: list[tuple[float, float]] = []  # (wall, cpu) at the start of fit and the end of every step

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            marks.clear()
            marks.append((time.perf_counter(), time.process_time()))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            marks.append((time.perf_counter(), time.process_time()))

    models, out = {}, {}
    for c in spec["configs"]:
        key = json.dumps(c, sort_keys=True)
        keras.mixed_precision.set_global_policy(c["precision"])
        keras.utils.set_random_seed(0)
        model = build_model(c["model"], (size, size, 3), 3, **ModelConfig(name=c["model"]).params())
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss=build_loss("sce+dice", num_classes=3),
            metrics=[keras.metrics.MeanIoU(num_classes=3, sparse_y_pred=False, name="mean_iou"),
                     keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
            jit_compile=c["xla"],
        )
        keras.mixed_precision.set_global_policy("float32")
        try:
            model.fit(ds, steps_per_epoch=spec["warmup"], epochs=1, verbose=0, callbacks=[StepClock()])
        except Exception as exc:  # noqa: BLE001  (e.g. an op XLA cannot compile: reported, not fatal)
            out[key] = {**c, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"{key}: FAILED {out[key]['error']}", file=sys.stderr, flush=True)
            continue
        models[key] = model
        out[key] = {**c, "warmup_s": marks[-1][0] - marks[0][0], "params": int(model.count_params()),
                    "images_per_s": [], "cpu_ms_per_image": []}
        print(f"{key}: warm-up {out[key]['warmup_s']:.1f} s", file=sys.stderr, flush=True)
    for _ in range(spec["rounds"]):
        for key, model in models.items():
            model.fit(ds, steps_per_epoch=spec["steps"] + 1, epochs=1, verbose=0, callbacks=[StepClock()])
            wall, cpu = marks[-1][0] - marks[1][0], marks[-1][1] - marks[1][1]  # from the end of step 1
            n = spec["steps"] * batch
            out[key]["images_per_s"].append(n / wall)
            out[key]["cpu_ms_per_image"].append(1000 * cpu / n)
            print(f"{key}: {n / wall:.2f} images/s", file=sys.stderr, flush=True)
    return {"results": list(out.values()),
            "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                        tf.config.threading.get_inter_op_parallelism_threads()]}


# --------------------------------------------------------------------------- parent


def run_child(base: dict[str, Any], configs: list[dict[str, Any]], intra: int | None, inter: int | None,
              rounds: int) -> dict[str, dict[str, Any]]:
    spec = {**base, "configs": configs, "intra": intra, "inter": inter, "rounds": rounds}
    done = run_measured([sys.executable, __file__, "--child", json.dumps(spec)], timeout=1800, pass_stderr=True)
    if done["returncode"] != 0:
        raise SystemExit(f"benchmark child failed ({done['returncode']}); its error is above")
    rows = {}
    for row in last_json(done["stdout"])["results"]:
        if "error" not in row:
            row = {**row, "images_per_s_runs": [r(v, 2) for v in row["images_per_s"]],
                   "images_per_s": r(median(row["images_per_s"]), 2),
                   "cpu_ms_per_image": r(median(row["cpu_ms_per_image"]), 1), "warmup_s": r(row["warmup_s"], 1)}
        rows[label(row)] = {**row, "threads": f"{intra or 'default'}/{inter or 'default'}",
                            "process_peak_rss_mb": r(done["peak_rss_mb"])}
        log(f"{label(row)} threads {intra}/{inter}: {row.get('images_per_s', row.get('error'))}")
    return rows


def label(c: dict[str, Any]) -> str:
    return f"{c['model']}{' xla' if c['xla'] else ''}{'' if c['precision'] == 'float32' else ' ' + c['precision']}"


def compare(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """`row` with its images/s ratio and CPU-per-image ratio (ref / row: > 1 means cheaper) to `ref`."""
    if "images_per_s" not in row or "images_per_s" not in ref:
        return row
    return {**row, "speed_vs_ref": r(row["images_per_s"] / ref["images_per_s"], 2),
            "cpu_efficiency_vs_ref": r(ref["cpu_ms_per_image"] / row["cpu_ms_per_image"], 2)}


def main() -> None:
    from segpipe.models.registry import MODEL_NAMES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--detail-models", nargs="+", default=["xception_unet", "unet"], choices=MODEL_NAMES,
                   help="models for the precision and threads groups")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, XLA compilation)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--thread-rounds", type=int, default=1, help="alternations of the thread-setting processes")
    p.add_argument("--no-xla", action="store_true")
    p.add_argument("--no-threads", action="store_true")
    p.add_argument("--no-precision", action="store_true")
    p.add_argument("--precisions", nargs="+", default=["mixed_float16", "mixed_bfloat16"],
                   choices=["mixed_float16", "mixed_bfloat16"], help="policies timed against float32")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    machine = Machine()
    base = {"img_size": args.img_size, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps}
    fp32 = [{"model": m, "xla": False, "precision": "float32"} for m in args.models]
    configs = list(fp32)
    if not args.no_xla:
        configs += [{"model": m, "xla": True, "precision": "float32"} for m in args.models]
    if not args.no_precision:
        configs += [{"model": m, "xla": False, "precision": pol}
                    for m in args.detail_models for pol in args.precisions]
    log(f"{len(configs)} configurations in one process, {args.rounds} rounds of {args.steps} steps")
    rows = run_child(base, configs, None, None, args.rounds)
    reference = REFERENCE_MODEL if REFERENCE_MODEL in args.models else args.models[0]
    ref = rows[label({"model": reference, "xla": False, "precision": "float32"})]
    groups: dict[str, Any] = {
        "models": [compare(rows[label(c)], ref) for c in fp32],
    }
    if not args.no_xla:
        groups["xla"] = [compare(rows[label({**c, "xla": True})], rows[label(c)]) for c in fp32]
    if not args.no_precision:
        groups["precision"] = [compare(rows[label({"model": m, "xla": False, "precision": pol})],
                                       rows[label({"model": m, "xla": False, "precision": "float32"})])
                               for m in args.detail_models for pol in args.precisions]
    if not args.no_threads:
        detail = [{"model": m, "xla": False, "precision": "float32"} for m in args.detail_models]
        runs: dict[tuple[Any, Any], list[dict[str, dict[str, Any]]]] = defaultdict(list)
        for rnd in range(args.thread_rounds):
            for intra, inter in THREADS:
                log(f"threads {intra}/{inter}, round {rnd + 1}")
                runs[(intra, inter)].append(run_child(base, detail, intra, inter, 1))
        groups["threads"] = []
        for c in detail:
            merged = {}
            for setting, per_round in runs.items():
                row = dict(per_round[0][label(c)])
                row["images_per_s_runs"] = [x[label(c)]["images_per_s"] for x in per_round]
                row["images_per_s"] = r(median(row["images_per_s_runs"]), 2)
                row["cpu_ms_per_image"] = r(median([x[label(c)]["cpu_ms_per_image"] for x in per_round]), 1)
                merged[setting] = row
            groups["threads"] += [compare(merged[s], merged[(None, None)]) for s in THREADS]
    emit({
        "benchmark": "train_throughput",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed": f"{args.rounds} rounds x {args.steps} steps per configuration, interleaved; medians",
        "data": "synthetic, one in-memory batch repeated (no input pipeline cost)",
        "model_params": "segpipe.config.ModelConfig defaults per model (unet/segnet base_filters 16 depth 4; "
                        "deeplabv3plus mobilenetv2 without pretrained weights)",
        "ratios": "speed_vs_ref = images/s over the reference's; cpu_efficiency_vs_ref = reference CPU ms per "
                  "image over this one's (> 1: cheaper); references: xception_unet or the first of --models "
                  "(models), the same model without XLA (xla), float32 (precision), TensorFlow's default threads "
                  "(threads)",
        "reference": ref,
        "groups": groups,
        **machine.provenance(config_note="runs no PipelineConfig: each model with segpipe.config.ModelConfig's "
                                         "defaults, compiled as training compiles it, at the size and batch "
                                         "recorded above (model_params)"),
    }, args.out)


if __name__ == "__main__":
    main()
