"""A roofline for training (issue #12): the machine's peak GFLOP/s, each preset's train-step FLOPs and the
fraction of the peak it reaches, where cpu-quick's time goes, and speed-up candidates measured in one run.

    .venv/bin/python benchmarks/roofline.py                    # ~15 minutes on 2 busy cores
    .venv/bin/python benchmarks/roofline.py --quick            # smaller probes, fewer steps (a smoke run)

Writes benchmarks/results/roofline.json (and prints it); `roofline_markdown.render_markdown(result)` turns it
into the tables for BENCHMARKS.md. This file is the command (the stages, in order, saved after each);
the work is in roofline_models.py (models, FLOPs, compiled steps), roofline_measure.py (peaks, timed
variants, one preset's row), roofline_profile.py (the profiler trace by op group), roofline_ablations.py
(ablations, precision, head-first twin, candidates) and roofline_markdown.py.

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
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (config_record, cpu_flags, cpu_model, cpu_seconds_tree, git_commit,  # noqa: E402
                               load_average, log, r)
from benchmarks.roofline_ablations import (ablations, candidates, head_first_candidates,  # noqa: E402
                                           head_first_check, precision_check)
from benchmarks.roofline_measure import measure_peaks, measure_preset  # noqa: E402
from benchmarks.roofline_models import PRESET_OVERRIDES, preset_config, preset_names  # noqa: E402

RESULT_PATH = ROOT / "benchmarks" / "results" / "roofline.json"


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

    t0, c0 = time.perf_counter(), cpu_seconds_tree()
    if args.only_precision or args.only_head_first:
        out_path = Path(args.out)
        result = json.loads(out_path.read_text()) if out_path.is_file() else {}
        if args.only_precision:
            check = precision_check(args.presets or preset_names(), PRESET_STEPS["cpu-quick"], args.rounds)
        else:
            check = head_first_check(args.ablation_steps, args.rounds)
        check.update({"command": " ".join([sys.executable, *sys.argv]), "commit": git_commit(),
                      "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (
                          time.perf_counter() - t0))), "wall_s": r(time.perf_counter() - t0, 1)})
        result["precision" if args.only_precision else "head_first"] = check
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(check, indent=2))
        return result
    machine = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "load_before": load_average(),
               "bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}),
               "python": platform.python_version()}
    import keras
    import tensorflow as tf

    machine.update({"tensorflow": tf.__version__, "keras": keras.__version__,
                    "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()})
    log("machine", machine)
    peaks = measure_peaks(args.probe_s, args.rounds, args.matmul_n)
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
    machine["load_after"] = load_average()
    add_machine_aliases(result)
    result["wall_s"] = r(time.perf_counter() - t0, 1)
    result["cpu_s"] = r(cpu_seconds_tree() - c0, 1)
    save()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
