"""The GPU path, measured: the `full` preset on the sample for a few hundred steps (under 8 minutes on an H200).

    .venv/bin/python benchmarks/gpu_full.py                      # writes benchmarks/results/gpu_full.json

DeepLabV3+ on the ImageNet MobileNetV2 encoder (`--preset full`: 320 px, batch 32, AdamW, float16), its
weights from ../shared/weights (`--set model.encoder_weights=FILE`: no download), trained on
../shared/pets-sample split as benchmarks/quality.py splits it (random, 20% held out, split seed 0).
The run is bounded: `--steps` training steps (default 400) in epochs of `--steps-per-epoch` (default 100)
(`--set train.steps_per_epoch=... --set train.epochs=...`). The preset's warm-up and frozen-encoder phase
keep their share of its budget (full: 6,400 and 10,000 of 200,000 images), so the run has its frozen
epoch(s), then fine-tunes the whole network. Held-out scoring after each new best epoch and the final
scoring are quality.py's (`train_and_score`).

Records, as JSON (stdout and `--out`):
  images/s and step time: steady state, the median over the epochs that compile nothing (not the first
    epoch, nor the first after the encoder unfreezes); an epoch's time is its training steps plus its
    validation pass and checkpoint writes (held-out scoring excluded);
  peak GPU memory: tf.config.experimental.get_memory_info('GPU:0')['peak'] after training and scoring;
  held-out metrics of the best model (original resolution, and at model resolution);
  the command, the commit and the machine (GPU name, CPU model, cores), and the wall time.

Without the pipeline's packages (TensorFlow, Keras, Prefect, ...) in this Python it refuses (exit 2), naming
the missing ones. Without a GPU it refuses (exit 2) unless `--allow-cpu` (then shrink it: e.g. `--steps 2
--steps-per-epoch 1 --set train.img_size=64 --set train.batch_size=4 --set train.mixed_precision=off`).
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import ROOT, emit, log, r  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
DEFAULT_SOURCE = SHARED / "pets-sample"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_full.json"
PRESET = "full"
TIME_LIMIT_S = 480  # the bound: 8 minutes on an H200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="images.tar.gz + annotations.tar.gz (default: the sample)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="encoder weights: a .weights.h5 file, 'imagenet' (download) or 'none' (random init)")
    p.add_argument("--work-dir", default=str(ROOT / "bench-out" / "gpu-full"))
    p.add_argument("--steps", type=int, default=400, help="training steps in all (a multiple of --steps-per-epoch)")
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="more configuration overrides")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the JSON (default benchmarks/results/gpu_full.json)")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a smoke run: shrink it with --set)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.steps_per_epoch < 1 or args.steps % args.steps_per_epoch:
        p.error(f"--steps ({args.steps}) must be a positive multiple of --steps-per-epoch ({args.steps_per_epoch})")
    if args.weights.lower() not in ("imagenet", "none") and not Path(args.weights).is_file():
        p.error(f"--weights: no such file {args.weights} (a .weights.h5 file, 'imagenet' or 'none')")
    if not Path(args.source).exists():
        p.error(f"--source: {args.source} does not exist (a directory with images.tar.gz and annotations.tar.gz)")
    return args


def gpus() -> list[dict]:
    """The GPUs TensorFlow sees, with their names (and nvidia-smi's view when it is there)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        out.append({"device": gpu.name, "name": details.get("device_name"),
                    "compute_capability": details.get("compute_capability")})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            for gpu, line in zip(out, smi.stdout.strip().splitlines()):
                gpu["nvidia_smi"] = line.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def overrides_for(args: argparse.Namespace) -> dict:
    """The `--set` overrides that bound the `full` preset to `--steps` steps, and the user's own."""
    from segpipe_app.cli.options import parse_value
    from segpipe.config import build_config

    epochs = args.steps // args.steps_per_epoch
    keyword = args.weights.lower() in ("imagenet", "none")  # 'none' (not None, which build_config skips)
    weights = args.weights.lower() if keyword else str(Path(args.weights).resolve())
    over = {"data.source": str(Path(args.source).resolve()), "data.split": "random", "data.test_fraction": 0.2,
            "data.val_fraction": 0.1, "data.seed": 0, "model.encoder_weights": weights,
            "train.steps_per_epoch": args.steps_per_epoch, "train.epochs": epochs}
    for item in args.set:
        field, _, value = item.partition("=")
        over[field.strip()] = parse_value(value)
    # Warm-up and encoder freezing keep their share of the preset's budget (in images seen).
    preset = build_config(PRESET).train
    images = args.steps * int(over.get("train.batch_size", preset.batch_size))
    for field in ("warmup_images", "freeze_encoder_images"):
        if f"train.{field}" not in over:
            over[f"train.{field}"] = math.ceil(getattr(preset, field) * images / preset.budget_images)
    return over


def steady_state(curve: list[dict], frozen_epochs: int, steps: int, batch: int) -> dict:
    """Images/s and step time from the epochs that compile nothing; per-epoch seconds for all."""
    seconds, previous = [], 0.0
    for point in curve:
        seconds.append(point["train_seconds"] - previous)
        previous = point["train_seconds"]
    compiling = {1, frozen_epochs + 1} if frozen_epochs else {1}
    steady = [s for epoch, s in enumerate(seconds, 1) if epoch not in compiling]
    median = statistics.median(steady or seconds[-1:])
    return {
        "images_per_s": r(steps * batch / median, 3),
        "step_time_ms": r(1000 * median / steps, 1),
        "epoch_seconds": [r(s, 2) for s in seconds],
        "steady_epochs": [e for e in range(1, len(seconds) + 1) if e not in compiling] if steady else [],
        "steady_state": bool(steady),
        "note": "an epoch's time = its training steps + its validation pass + checkpoint writes; held-out scoring "
        "excluded; compiling epochs (the first, the first unfrozen) left out of the median"
        + ("" if steady else "; NO compile-free epoch in this run: the figure includes compilation"),
    }


# What the pipeline imports (pyproject.toml's dependencies, by import name), checked before any work.
REQUIRED_MODULES = ("tensorflow", "keras", "prefect", "pydantic", "numpy", "PIL", "requests")


def missing_modules(names: tuple[str, ...] | None = None) -> list[str]:
    """The modules (default: REQUIRED_MODULES) this Python cannot import, found by name without importing them."""
    import importlib.util

    return [name for name in (REQUIRED_MODULES if names is None else names) if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    missing = missing_modules()
    if missing:
        print(f"gpu_full: this Python ({sys.executable}, {sys.version.split()[0]}) cannot import "
              f"{', '.join(missing)}. The GPU path is the pipeline itself: run it with the project's virtual "
              "environment (`make install`; on a GPU machine TensorFlow also needs its CUDA libraries, "
              "`pip install 'tensorflow[and-cuda]'`).", file=sys.stderr)
        return 2
    import tensorflow as tf

    found = gpus()
    if not found and not args.allow_cpu:
        print("gpu_full: no GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty). This "
              "benchmark measures the GPU path; run it on a machine with an NVIDIA GPU, or pass --allow-cpu "
              "for a smoke run (shrink it with --steps and --set).", file=sys.stderr)
        return 2

    from segpipe_app.cli.env import configure_prefect
    from segpipe_app.flows.prepare_data import prepare_data_flow
    from quality import commit, machine, train_and_score
    from segpipe.config.budget import training_plan
    from segpipe.config import build_config
    from segpipe.fsutil import digest_json
    from segpipe.layout import WorkDir

    over = overrides_for(args)
    cfg = build_config(PRESET, over)
    work = WorkDir.at(args.work_dir)
    configure_prefect(work.root)
    log(f"gpu_full: {len(found)} GPU(s) {[g['name'] for g in found]}; preset {PRESET}, {args.steps} steps")
    dataset = prepare_data_flow(config=cfg, work_dir=str(work.root))
    plan = training_plan(cfg.train, dataset.num_examples["train"])
    run_dir = work.run(f"gpu-full-{digest_json([dataset.dataset_key, cfg.model_dump(mode='json')])[:10]}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark measures training: never a cached run

    result = train_and_score(cfg, dataset, run_dir)
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if found else None
    wall = time.monotonic() - started
    speed = steady_state(result["curve"], plan.frozen_epochs, plan.steps_per_epoch, plan.batch_size)
    report = {
        "benchmark": "gpu_full",
        "command": shlex.join(["benchmarks/gpu_full.py", *(sys.argv[1:] if argv is None else argv)]),
        "commit": commit(),
        "machine": {**machine(), "gpus": found, "tensorflow": tf.__version__},
        "on_gpu": bool(found),
        "preset": PRESET,
        "overrides": over,
        "plan": plan.to_json(),
        "model": cfg.model.name, "encoder": cfg.model.encoder, "img_size": cfg.train.img_size,
        "batch_size": cfg.train.batch_size, "mixed_precision": cfg.train.mixed_precision,
        "dataset": {"key": dataset.dataset_key, "splits": dataset.num_examples},
        **speed,
        "peak_gpu_memory_mib": None if peak is None else r(peak / 2**20, 1),
        "held_out": result["held_out"],
        "held_out_at_model_resolution": result["held_out_at_model_resolution"],
        "best_val_mean_iou": result["best_val_mean_iou"],
        "best_epoch": result["best_epoch"],
        "epochs_completed": result["epochs_completed"],
        "train_seconds": result["train_seconds"],
        "curve": result["curve"],
        "warnings": result["warnings"],
        "wall_seconds": r(wall, 1),
        "within_time_limit": wall <= TIME_LIMIT_S,
        "time_limit_s": TIME_LIMIT_S,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
