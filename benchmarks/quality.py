"""Quality on real data: pretrained and scratch recipes side by side, over several training seeds.

    .venv/bin/python benchmarks/quality.py --preset cpu-quick --preset cpu-scratch --preset keras-example \
        --train-seed 0 --train-seed 1 --train-seed 2 \
        --set model.encoder_weights=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 \
        --out benchmarks/results/quality-transfer.json

Trains each preset x seed on ../shared/pets-sample and scores images training never
saw. `--split random` (default) holds out a seeded part of the sample
(`--test-fraction`); `--split breed --holdout-breed Bengal` holds out a whole breed.
Recipes are chosen on the validation split (`best_val_mean_iou`), never on these
held-out figures. After every epoch the best model so far (what the pipeline would
ship at that moment) is scored on the held-out images at model resolution, for the
time to reach a held-out mean IoU of 0.70 (scoring time excluded); the final figures
are at original resolution. `summary` gives each preset's mean and spread (min, max)
over the seeds. Training time is recorded twice: wall seconds, and CPU-seconds of the
process tree (`resource.getrusage` of this process and its children), which do not
stretch when other work shares the machine; "quality per CPU-minute" (the plot) uses
the CPU-seconds. A cached training result is never reported. `--set` applies to every preset (a field a preset's model does not
take, such as encoder_weights for the scratch U-Net, is dropped for that preset).
Prints one JSON object, with the command, the commit and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TARGET = {"mean_iou": 0.78, "foreground_iou": 0.88, "train_seconds": 600, "breed_mean_iou": 0.75,
          "speedup_to_070": 5.0}
SUMMARY_KEYS = ("best_val_mean_iou", "train_seconds", "train_cpu_seconds", "seconds_to_held_out_070",
                "cpu_seconds_to_held_out_070", "held_out.mean_iou", "held_out.foreground_iou",
                "held_out_without_tta.mean_iou", "held_out_without_tta.foreground_iou")


def machine(probe: bool = True) -> dict:
    """CPU model, cores, load average and (with `probe`) the fp32 matmul GFLOP/s now: `common.machine`."""
    return common.machine(probe=probe)


def commit() -> str:
    """HEAD, `+uncommitted` when segpipe/ or benchmarks/ differ from it."""
    return common.git_commit()


def _get(result: dict, dotted: str):
    for part in dotted.split("."):
        result = result.get(part) if isinstance(result, dict) else None
    return result


def summarise(results: list[dict]) -> dict:
    """Per preset: mean, min and max over its runs of each figure in SUMMARY_KEYS."""
    out: dict[str, dict] = {}
    for preset in dict.fromkeys(r["preset"] for r in results):
        runs = [r for r in results if r["preset"] == preset]
        entry: dict = {"runs": len(runs), "seeds": [r["train_seed"] for r in runs]}
        for key in SUMMARY_KEYS:
            values = [v for v in (_get(r, key) for r in runs) if v is not None]
            if values:
                entry[key] = {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
                              "max": round(max(values), 4), "n": len(values)}
        out[preset] = entry
    return out


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads: TensorFlow's pools too) and of its waited-for children:
    the work done, whatever else the machine runs (wall seconds stretch with the load, these do not)."""
    return common.cpu_seconds_tree()


def _first(curve: list[dict], key: str, level: float = 0.70) -> float | None:
    """`key` at the first epoch whose best model scored at least `level` held-out mean IoU (model resolution)."""
    return next((p[key] for p in curve if p["held_out_mean_iou"] >= level), None)


class ReachedTarget(Exception):
    """Raised from the epoch hook of a `--stop-at-held-out` run once the held-out mean IoU reaches it."""


def train_and_score(cfg, dataset, run_dir: Path, stop_at: float | None = None,
                    give_up_cpu_s: float | None = None) -> dict:
    """Train `cfg` into `run_dir`; score on the held-out split. With `stop_at`, training stops at the first
    epoch whose best model reaches that held-out mean IoU (a time-to-target measurement of a long recipe)."""
    from segpipe import evaluation, training

    best_file, curve, state = run_dir / "best.json", [], {"eval_s": 0.0, "eval_cpu_s": 0.0, "best": None, "score": None}
    started, cpu_started = time.monotonic(), cpu_seconds()

    def on_epoch_end(epoch: int, logs: dict) -> None:
        t0, c0 = time.monotonic(), cpu_seconds()
        best = best_file.read_text() if best_file.is_file() else None
        if best != state["best"]:  # a new best model: score it on the held-out images
            state["best"] = best
            m = evaluation.evaluate([run_dir / "model.keras"], Path(dataset.path), "test", batch_size=8).metrics
            state["score"] = m["at_model_resolution"]
        train_s = t0 - started - state["eval_s"]
        curve.append({"epoch": epoch + 1, "train_seconds": round(train_s, 1),
                      "train_cpu_seconds": round(c0 - cpu_started - state["eval_cpu_s"], 1),
                      "held_out_mean_iou": state["score"]["mean_iou"],
                      "held_out_foreground_iou": state["score"]["foreground_iou"],
                      "val_mean_iou": logs.get("val_mean_iou")})
        state["eval_s"] += time.monotonic() - t0
        state["eval_cpu_s"] += cpu_seconds() - c0
        print(f"[quality] epoch {epoch + 1}: {curve[-1]}", file=sys.stderr, flush=True)
        if stop_at is not None and state["score"]["mean_iou"] >= stop_at:
            raise ReachedTarget(epoch)
        if give_up_cpu_s is not None and curve[-1]["train_cpu_seconds"] >= give_up_cpu_s:
            raise ReachedTarget(epoch)  # not reached within the CPU budget: recorded as such

    try:
        result = training.train(cfg, Path(dataset.path), run_dir, on_epoch_end=on_epoch_end, verbose=2)
    except ReachedTarget:
        return {"preset": cfg.preset, "model": cfg.model.name, "train_seed": cfg.train.seed,
                "stopped_at_held_out_mean_iou": stop_at, "gave_up_after_cpu_seconds": give_up_cpu_s,
                "reached": _first(curve, "train_seconds") is not None, "epochs_completed": len(curve),
                "train_seconds": curve[-1]["train_seconds"], "train_cpu_seconds": curve[-1]["train_cpu_seconds"],
                "seconds_to_held_out_070": _first(curve, "train_seconds"),
                "cpu_seconds_to_held_out_070": _first(curve, "train_cpu_seconds"), "curve": curve}
    if result.cached:  # the run directory was removed first, so this cannot happen; never report a cached run
        raise SystemExit(f"{run_dir}: training returned a cached result; a benchmark must train")
    train_seconds = time.monotonic() - started - state["eval_s"]
    train_cpu_seconds = cpu_seconds() - cpu_started - state["eval_cpu_s"]
    m = evaluation.evaluate([Path(result.model_path)], Path(dataset.path), "test", batch_size=8,
                            flip=cfg.eval.tta_flip).metrics
    plain = (evaluation.evaluate([Path(result.model_path)], Path(dataset.path), "test", batch_size=8).metrics
             if cfg.eval.tta_flip else m)
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "train_seed": cfg.train.seed,
        "best_val_mean_iou": result.best_val_mean_iou,
        "seconds_to_held_out_070": _first(curve, "train_seconds"),
        "cpu_seconds_to_held_out_070": _first(curve, "train_cpu_seconds"),
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch + 1,
        "held_out": {k: m[k] for k in ("n_images", "mean_iou", "foreground_iou", "pixel_accuracy", "dice",
                                       "mean_iou_no_border", "iou", "collapsed", "predicted_class_share")},
        "tta": m["tta"],
        "held_out_without_tta": {k: plain[k] for k in ("mean_iou", "foreground_iou", "iou")},
        "held_out_at_model_resolution": {k: m["at_model_resolution"][k] for k in ("mean_iou", "foreground_iou")},
        "warnings": m.get("warnings", []),
        "curve": curve,
        "cached": result.cached,
    }


def _x(point: dict) -> float:
    """A curve point's training CPU-seconds (older results without them: wall seconds; see `plot`)."""
    return point["train_cpu_seconds"] if point.get("train_cpu_seconds") is not None else point["train_seconds"]


def plot(results: list[dict], path: Path) -> None:
    """Held-out mean IoU against training CPU-seconds (quality per CPU-minute), one line per run (Pillow only).

    CPU-seconds of the process tree, not wall seconds: runs measured at different loads stay comparable.
    Results recorded before CPU-seconds were kept are drawn on wall seconds and labelled so."""
    from PIL import Image, ImageDraw

    w, h, left, bottom, top, right = 1040, 560, 70, 60, 40, 340
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    wall_only = any(p.get("train_cpu_seconds") is None for r in results for p in r.get("curve", []))
    t_max = max([_x(r["curve"][-1]) for r in results if r["curve"]] + [TARGET["train_seconds"]]) * 1.05
    x = lambda t: left + (w - left - right) * t / t_max  # noqa: E731
    y = lambda v: h - bottom - (h - bottom - top) * v  # noqa: E731
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        d.line([(left - 4, y(v)), (w - right, y(v))], fill=(225, 225, 225))
        d.text((left - 34, y(v) - 6), f"{v:.1f}", fill="black")
    step = 200 if t_max > 600 else 50
    for t in range(0, int(t_max) + 1, step):
        d.text((x(t) - 10, h - bottom + 6), str(t), fill="black")
    d.text((left + 150, h - 28), ("training seconds, WALL (older results: no CPU-seconds)" if wall_only else
                                  "training CPU-seconds (process tree, scoring excluded)"), fill="black")
    d.text((left, 12), "held-out mean IoU of the best model so far (model resolution)", fill="black")
    d.line([(left, y(TARGET["mean_iou"])), (w - right, y(TARGET["mean_iou"]))], fill=(180, 0, 0))
    d.text((left + 6, y(TARGET["mean_iou"]) - 14), f"target {TARGET['mean_iou']:.2f}", fill=(180, 0, 0))
    colours = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (213, 94, 0), (86, 180, 233)]
    for i, r in enumerate(results):
        if not r.get("curve"):
            continue
        pts = [(x(_x(p)), y(p["held_out_mean_iou"])) for p in r["curve"]]
        if len(pts) > 1:
            d.line(pts, fill=colours[i % len(colours)], width=3)
        d.text((w - right + 6, top + 30 + 18 * i),
               f"{r.get('source', r['preset'])} seed {r.get('train_seed')} ({r['model']}, {r['epochs_completed']} ep)",
               fill=colours[i % len(colours)])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def merge(paths: list[str], plot_path: str | None, out: str | None) -> int:
    """One report (and plot) from several earlier outputs, e.g. presets measured in separate runs."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    report = {
        "benchmark": "quality",
        "command": common.command_line(),
        "commit": commit(),
        "machine": {**machine(probe=False), "note": "the machine that merged; each run's own is in merged_from"},
        "merged_from": [{"path": p, "command": r.get("command"), "commit": r.get("commit"), "dataset": r["dataset"],
                         "overrides": r["overrides"], "machine": r["machine"]} for p, r in zip(paths, reports)],
        "results": [{**res, "source": Path(p).stem} for p, r in zip(paths, reports) for res in r["results"]],
        "target": TARGET,
    }
    report["summary"] = summarise(report["results"])
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


def _fitting(preset: str, overrides: dict) -> dict:
    """`overrides` less the encoder fields when `preset`'s model has no encoder (cpu-scratch, keras-example)."""
    from segpipe.config import PRESETS

    if PRESETS[preset]["model"].get("encoder"):
        return dict(overrides)
    return {k: v for k, v in overrides.items() if not k.startswith("model.encoder")}


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
    p.add_argument("--train-seed", type=int, action="append", help="repeatable: one run per preset and seed")
    p.add_argument("--stop-at-held-out", type=float, metavar="MEAN_IOU",
                   help="stop each run once its best model reaches this held-out mean IoU (time to target only)")
    p.add_argument("--give-up-after-cpu-seconds", type=float, metavar="S",
                   help="with --stop-at-held-out: stop a run that has not reached it after this many CPU-seconds")
    p.add_argument("--plot", help="write the quality-per-CPU-minute plot (PNG) here")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: merge the results of earlier outputs (in this order) into one report and plot")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.plot, args.out)

    from cli.env import configure_prefect
    from cli.options import _parse_value
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
    configs = [build_config(preset, _fitting(preset, overrides) | ({"train.seed": seed} if seed is not None else {}))
               for preset in (args.preset or ["cpu-quick"]) for seed in (args.train_seed or [None])]
    # the code measured is the code at the start; the machine's matmul probe runs before any training
    started_machine, started_commit, started_command = machine(), commit(), common.command_line()

    from flows.prepare_data import prepare_data_flow
    from segpipe.fsutil import digest_json

    dataset = prepare_data_flow(config=configs[0], work_dir=str(work.root))
    results = []
    for cfg in configs:
        run_dir = work.run(f"quality-{cfg.preset}-{digest_json([dataset.dataset_key, cfg.model_dump(mode='json')])[:10]}")
        shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark measures training: never a cached run
        results.append(train_and_score(cfg, dataset, run_dir, stop_at=args.stop_at_held_out,
                                       give_up_cpu_s=args.give_up_after_cpu_seconds))
    report = {
        "benchmark": "quality",
        "command": started_command,
        "commit": started_commit,
        "dataset": {"key": dataset.dataset_key, "splits": dataset.num_examples, "split": args.split,
                    "holdout_breeds": args.holdout_breed, "seed": args.split_seed},
        "overrides": args.set,
        "summary": summarise(results),
        "results": results,
        "target": TARGET,
        "machine": {**started_machine, "load_average_after": machine(probe=False)["load_average"]},
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
