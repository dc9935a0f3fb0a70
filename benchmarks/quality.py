"""Quality on real data: train a preset on ../shared/pets-sample, score held-out images.

    .venv/bin/python benchmarks/quality.py --source ../shared/pets-sample --preset cpu-quick

The sample's images are split with a seeded shuffle (`--split random`,
`--test-fraction`); the test part is never seen in training or model selection.
Prints one JSON object: training seconds, epochs, and the held-out metrics at
original resolution (plus model resolution), beside the references measured on
this machine for the Keras example's recipe and a plain U-Net probe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REFERENCES = {
    "keras-example recipe (xception_unet, 160px, batch 32, Adam 1e-4, 25 epochs, 1235 s)": {
        "mean_iou": 0.199, "foreground_iou": 0.000, "train_seconds": 1235,
    },
    "plain U-Net probe (16 filters, 128px, batch 8, Adam 1e-3 cosine, BN 0.9, flips, 913 s)": {
        "mean_iou": 0.63, "foreground_iou": 0.75, "train_seconds": 913,
    },
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "pets-sample"))
    p.add_argument("--work-dir", default="bench-out/quality")
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config overrides")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    from cli.env import configure_prefect
    from cli.main import _parse_value
    from segpipe.config import build_config
    from segpipe.layout import WorkDir

    work = WorkDir.at(args.work_dir)
    configure_prefect(work.root)
    overrides = {"data.source": str(Path(args.source).resolve()), "data.split": "random",
                 "data.test_fraction": args.test_fraction, "data.val_fraction": args.val_fraction,
                 "data.seed": args.split_seed}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = _parse_value(value)
    cfg = build_config(args.preset, overrides)

    from flows.prepare_data import prepare_data
    from segpipe import evaluation, training
    from segpipe.fsutil import digest_json

    dataset = prepare_data(config=cfg, work_dir=str(work.root))
    run_dir = work.run(f"quality-{cfg.model.name}-{digest_json(cfg.model_dump(mode='json'))[:10]}")
    started = time.monotonic()
    result = training.train(cfg, Path(dataset.path), run_dir, verbose=2)
    train_seconds = time.monotonic() - started
    if result.cached:
        train_seconds = json.loads((run_dir / "train_summary.json").read_text()).get("train_seconds", train_seconds)
    scored = evaluation.evaluate([Path(result.model_path)], Path(dataset.path), "test", batch_size=8)
    m = scored.metrics
    report = {
        "benchmark": "quality",
        "preset": args.preset,
        "config": cfg.model_dump(mode="json"),
        "dataset": {"key": dataset.dataset_key, "splits": dataset.num_examples},
        "train_seconds": round(train_seconds, 1),
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "held_out": {k: m[k] for k in ("n_images", "mean_iou", "foreground_iou", "pixel_accuracy", "dice",
                                       "mean_iou_no_border", "iou", "collapsed")},
        "held_out_at_model_resolution": {k: m["at_model_resolution"][k] for k in ("mean_iou", "foreground_iou")},
        "warnings": m.get("warnings", []),
        "references": REFERENCES,
        "machine": {"cpus": os.cpu_count()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
