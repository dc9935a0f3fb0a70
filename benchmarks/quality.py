"""Quality on real data, and quality per CPU-minute.

    .venv/bin/python benchmarks/quality.py --preset cpu-quick --preset keras-example \
        --plot bench-out/quality.png --out bench-out/quality.json

Trains each preset on ../shared/pets-sample and scores images training never
saw. `--split random` (default) holds out a seeded part of the sample
(`--test-fraction`); `--split breed --holdout-breed Bengal` holds out a whole
breed. After every epoch the best model so far (what the pipeline would ship
at that moment) is scored on the held-out images at model resolution, so the
output has a curve of held-out mean IoU against training seconds (scoring time
excluded); the final figures are at original resolution. Prints one JSON
object, with the references measured on this machine beside it.
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
TARGET = {"mean_iou": 0.70, "foreground_iou": 0.82, "train_seconds": 1235}


def train_and_score(cfg, dataset, run_dir: Path) -> dict:
    from segpipe import evaluation, training

    best_file, curve, state = run_dir / "best.json", [], {"eval_s": 0.0, "best": None, "score": None}
    started = time.monotonic()

    def on_epoch_end(epoch: int, logs: dict) -> None:
        t0 = time.monotonic()
        best = best_file.read_text() if best_file.is_file() else None
        if best != state["best"]:  # a new best model: score it on the held-out images
            state["best"] = best
            m = evaluation.evaluate([run_dir / "model.keras"], Path(dataset.path), "test", batch_size=8).metrics
            state["score"] = m["at_model_resolution"]
        train_s = t0 - started - state["eval_s"]
        curve.append({"epoch": epoch + 1, "train_seconds": round(train_s, 1),
                      "held_out_mean_iou": state["score"]["mean_iou"],
                      "held_out_foreground_iou": state["score"]["foreground_iou"],
                      "val_mean_iou": logs.get("val_mean_iou")})
        state["eval_s"] += time.monotonic() - t0
        print(f"[quality] epoch {epoch + 1}: {curve[-1]}", file=sys.stderr, flush=True)

    result = training.train(cfg, Path(dataset.path), run_dir, on_epoch_end=on_epoch_end, verbose=2)
    train_seconds = time.monotonic() - started - state["eval_s"]
    m = evaluation.evaluate([Path(result.model_path)], Path(dataset.path), "test", batch_size=8,
                            flip=cfg.eval.tta_flip).metrics
    plain = (evaluation.evaluate([Path(result.model_path)], Path(dataset.path), "test", batch_size=8).metrics
             if cfg.eval.tta_flip else m)
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "train_seconds": round(train_seconds, 1),
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch + 1,
        "held_out": {k: m[k] for k in ("n_images", "mean_iou", "foreground_iou", "pixel_accuracy", "dice",
                                       "mean_iou_no_border", "iou", "collapsed", "predicted_class_share")},
        "tta": m["tta"],
        "held_out_without_tta": {k: plain[k] for k in ("mean_iou", "foreground_iou", "iou")},
        "held_out_at_model_resolution": {k: m["at_model_resolution"][k] for k in ("mean_iou", "foreground_iou")},
        "meets_target": bool(m["mean_iou"] >= TARGET["mean_iou"] and m["foreground_iou"] >= TARGET["foreground_iou"]
                             and train_seconds <= TARGET["train_seconds"]),
        "warnings": m.get("warnings", []),
        "curve": curve,
        "cached": result.cached,
    }


def plot(results: list[dict], path: Path) -> None:
    """Held-out mean IoU against training seconds, one line per preset (Pillow only)."""
    from PIL import Image, ImageDraw

    w, h, left, bottom, top, right = 900, 560, 70, 60, 40, 200
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    t_max = max([r["curve"][-1]["train_seconds"] for r in results if r["curve"]] + [TARGET["train_seconds"]]) * 1.05
    x = lambda t: left + (w - left - right) * t / t_max  # noqa: E731
    y = lambda v: h - bottom - (h - bottom - top) * v  # noqa: E731
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        d.line([(left - 4, y(v)), (w - right, y(v))], fill=(225, 225, 225))
        d.text((left - 34, y(v) - 6), f"{v:.1f}", fill="black")
    step = 200 if t_max > 600 else 50
    for t in range(0, int(t_max) + 1, step):
        d.text((x(t) - 10, h - bottom + 6), str(t), fill="black")
    d.text((left + 150, h - 28), "training seconds (2-core CPU, scoring excluded)", fill="black")
    d.text((left, 12), "held-out mean IoU of the best model so far (model resolution)", fill="black")
    d.line([(x(TARGET["train_seconds"]), top), (x(TARGET["train_seconds"]), h - bottom)], fill=(180, 0, 0))
    d.line([(left, y(TARGET["mean_iou"])), (w - right, y(TARGET["mean_iou"]))], fill=(180, 0, 0))
    d.text((x(TARGET["train_seconds"]) + 4, top), "1235 s", fill=(180, 0, 0))
    d.text((w - right + 6, y(TARGET["mean_iou"]) - 6), "target 0.70", fill=(180, 0, 0))
    colours = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167)]
    for i, r in enumerate(results):
        pts = [(x(p["train_seconds"]), y(p["held_out_mean_iou"])) for p in r["curve"]]
        if len(pts) > 1:
            d.line(pts, fill=colours[i % 4], width=3)
        d.text((w - right + 6, top + 30 + 18 * i), f"{r['preset']} ({r['model']}, {r['epochs_completed']} ep)",
               fill=colours[i % 4])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def merge(paths: list[str], plot_path: str | None, out: str | None) -> int:
    """One report (and plot) from several earlier outputs, e.g. presets measured in separate runs."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = {
        "benchmark": "quality",
        "merged_from": [{"path": p, "dataset": r["dataset"], "overrides": r["overrides"], "machine": r["machine"]}
                        for p, r in zip(paths, reports)],
        "results": [res for r in reports for res in r["results"]],
        "target": TARGET,
        "references": REFERENCES,
    }
    if len({r["dataset"]["key"] for r in reports}) > 1:
        print("warning: the outputs were measured on different datasets", file=sys.stderr)
    if plot_path:
        plot(report["results"], Path(plot_path))
        report["plot"] = plot_path
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "pets-sample"))
    p.add_argument("--work-dir", default="bench-out/quality")
    p.add_argument("--preset", action="append", help="repeatable (default: cpu-quick)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config overrides, all presets")
    p.add_argument("--split", choices=["random", "breed"], default="random")
    p.add_argument("--holdout-breed", action="append", default=[])
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--plot", help="write the quality-per-CPU-minute plot (PNG) here")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: merge the results of earlier outputs (in this order) into one report and plot")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.plot, args.out)

    from cli.env import configure_prefect
    from cli.main import _parse_value
    from segpipe.config import build_config
    from segpipe.layout import WorkDir

    work = WorkDir.at(args.work_dir)
    configure_prefect(work.root)
    overrides = {"data.source": str(Path(args.source).resolve()), "data.split": args.split,
                 "data.test_fraction": args.test_fraction, "data.val_fraction": args.val_fraction,
                 "data.seed": args.split_seed, "data.holdout_breeds": args.holdout_breed}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = _parse_value(value)
    configs = [build_config(preset, overrides) for preset in (args.preset or ["cpu-quick"])]

    from flows.prepare_data import prepare_data
    from segpipe.fsutil import digest_json

    dataset = prepare_data(config=configs[0], work_dir=str(work.root))
    results = []
    for cfg in configs:
        run_dir = work.run(f"quality-{cfg.preset}-{digest_json([dataset.dataset_key, cfg.model_dump(mode='json')])[:10]}")
        results.append(train_and_score(cfg, dataset, run_dir))
    report = {
        "benchmark": "quality",
        "dataset": {"key": dataset.dataset_key, "splits": dataset.num_examples, "split": args.split,
                    "holdout_breeds": args.holdout_breed, "seed": args.split_seed},
        "overrides": args.set,
        "results": results,
        "target": TARGET,
        "references": REFERENCES,
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
    }
    if args.plot:
        plot(results, Path(args.plot))
        report["plot"] = args.plot
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
