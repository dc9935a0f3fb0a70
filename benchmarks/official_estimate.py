"""cpu-quick's training time on the official trainval split, from measured per-image costs.

    .venv/bin/python benchmarks/official_estimate.py --quality benchmarks/results/transfer-random.json \\
        --model bench-out/quality/runs/<a cpu-quick run>/model.keras \\
        --out benchmarks/results/transfer-official-estimate.json

The budget is in images seen, so training costs the same number of training images on the official
split (3,680 trainval images: about 3,312 train and 368 val with the default 10% validation) as on the
sample. What changes is validation: the plan (`segpipe.config.budget.training_plan`) gives the number of
epochs on each split, and every epoch scores the whole val split. This script takes the measured
training CPU-seconds of the sample runs (which include their own validation passes), measures the CPU
cost of one validation image (a forward pass of the trained model at the preset's size, on this
machine, now), and adds the extra validation images of the official split. It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OFFICIAL_TRAINVAL = 3_680


def forward_cpu_seconds_per_image(model_path: Path, img_size: int, n: int = 256, batch: int = 8) -> float:
    import keras
    import numpy as np

    import segpipe.models.layers  # noqa: F401  (registers the custom layers a saved model names)
    from benchmarks.quality import cpu_seconds

    model = keras.saving.load_model(model_path, compile=False)
    x = np.random.default_rng(0).random((n, img_size, img_size, 3), dtype=np.float32)
    model.predict(x[:batch], batch_size=batch, verbose=0)  # trace once
    c0 = cpu_seconds()
    model.predict(x, batch_size=batch, verbose=0)
    return (cpu_seconds() - c0) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", required=True, help="a benchmarks/quality.py result of cpu-quick on the sample")
    p.add_argument("--model", required=True, help="a trained cpu-quick model.keras (for the forward cost)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--out")
    args = p.parse_args()

    from benchmarks.common import command_line, config_record, emit
    from benchmarks.quality import commit, machine
    from segpipe.config.budget import training_plan
    from segpipe.config import build_config

    report = json.loads(Path(args.quality).read_text())
    runs = [r for r in report["results"] if r["preset"] == "cpu-quick" and r.get("held_out")]
    if not runs:
        raise SystemExit(f"--quality {args.quality}: no complete cpu-quick run in it")
    train = build_config("cpu-quick").train
    splits = report["dataset"]["splits"]
    sample_plan = training_plan(train, splits["train"])
    n_val_official = round(OFFICIAL_TRAINVAL * args.val_fraction)
    official_plan = training_plan(train, OFFICIAL_TRAINVAL - n_val_official)
    started = machine()
    t0 = time.monotonic()
    fwd = forward_cpu_seconds_per_image(Path(args.model), train.img_size)
    sample_cpu = statistics.fmean(r["train_cpu_seconds"] for r in runs)
    sample_val_images = sample_plan.epochs * splits["val"]
    official_val_images = official_plan.epochs * n_val_official
    estimate = sample_cpu + (official_val_images - sample_val_images) * fwd
    result = {
        "benchmark": "transfer-official-estimate",
        "command": command_line(),
        "commit": commit(),
        "machine": {**started, "load_average_after": machine()["load_average"]},
        "configs": [config_record("cpu-quick", role="the training plan (train section) estimated")],
        "from": args.quality,
        "sample": {"train": splits["train"], "val": splits["val"], "plan": sample_plan.to_json(),
                   "train_cpu_seconds_mean": round(sample_cpu, 1), "val_images_scored": sample_val_images},
        "official": {"train": OFFICIAL_TRAINVAL - n_val_official, "val": n_val_official,
                     "plan": official_plan.to_json(), "val_images_scored": official_val_images},
        "forward_cpu_seconds_per_image": round(fwd, 4),
        "estimated_train_cpu_seconds_official": round(estimate, 1),
        "ratio_official_to_sample": round(estimate / sample_cpu, 3),
        "measure_seconds": round(time.monotonic() - t0, 1),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
