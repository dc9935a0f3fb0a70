"""Quality on real data: pretrained and scratch recipes side by side, over several training seeds.

    .venv/bin/python benchmarks/quality.py --preset cpu-quick --preset cpu-scratch --preset keras-example \
        --train-seed 0 --train-seed 1 --train-seed 2 \
        --set model.encoder_weights=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 \
        --out benchmarks/results/quality-transfer.json

Trains each preset x seed on ../shared/pets-sample and scores images training never
saw. `--split random` (default) holds out a seeded part of the sample
(`--test-fraction`); `--split breed --holdout-breed Bengal` holds out a whole breed.

Nothing reads the held-out split before training ends. While training runs, the epoch
hook records each epoch's training time and validation mean IoU and keeps a copy of
every new best model training saves (chosen on validation) under
`<run>-checkpoints/`; nothing stops on held-out data (`--stop-after-cpu-seconds`
stops on a training CPU budget). After training, each kept checkpoint is scored once
on the held-out split at model resolution: the time-to-quality curve and the time to
a held-out mean IoU of 0.70 are computed from it afterwards (the validation curve's
own time to 0.70 is beside it). The final figures are the final model's at original
resolution. Recipes are chosen on validation figures only
(`benchmarks/recipe_selection.py`). `summary` gives each preset's mean and spread
(min, max) over the seeds. Training time is recorded twice: wall seconds, and
CPU-seconds of the process tree (`resource.getrusage` of this process and its
children), which do not stretch when other work shares the machine; checkpoint
copies are excluded. A cached training result is never reported. `--set` applies to
every preset (a field a preset's model does not take, such as encoder_weights for the
scratch U-Net, is dropped for that preset). Every run records the configuration it
ran (`config`: preset, overrides, sha256 of the resolved config).
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


def summarise(results: list[dict]) -> dict:
    """Per preset: mean, min and max over its runs of each figure in SUMMARY_KEYS."""
    out: dict[str, dict] = {}
    for preset in dict.fromkeys(r["preset"] for r in results):
        runs = [r for r in results if r["preset"] == preset]
        entry: dict = {"runs": len(runs), "seeds": [r["train_seed"] for r in runs]}
        for key in SUMMARY_KEYS:
            values = [v for v in (common.dotted_get(r, key) for r in runs) if v is not None]
            if values:
                entry[key] = {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4),
                              "max": round(max(values), 4), "n": len(values)}
        out[preset] = entry
    return out


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads: TensorFlow's pools too) and of its waited-for children:
    the work done, whatever else the machine runs (wall seconds stretch with the load, these do not)."""
    return common.cpu_seconds_tree()


def _first(curve: list[dict], key: str, level: float = 0.70, on: str = "held_out_mean_iou") -> float | None:
    """`key` at the first epoch whose best model so far scored at least `level` on `on` (default: the held-out
    mean IoU at model resolution, scored after training ended; `best_val_mean_iou` for the validation curve)."""
    return next((p[key] for p in curve if p.get(on) is not None and p[on] >= level), None)


class BudgetSpent(Exception):
    """Raised from the epoch hook once a run's training CPU-seconds reach `--stop-after-cpu-seconds`."""


def _score_checkpoints(curve: list[dict], dataset_dir: Path) -> None:
    """After training: each kept checkpoint (the best model so far at an epoch) scored once on the held-out split
    at model resolution, written into the curve points that it was the best model of."""
    from segpipe.evaluation import evaluate as evaluation

    scores: dict[str, dict] = {}
    for point in curve:
        path = point.pop("checkpoint")
        if path is None:  # no best model saved yet at this epoch
            point["held_out_mean_iou"] = point["held_out_foreground_iou"] = None
            continue
        if path not in scores:
            m = evaluation.evaluate([Path(path)], dataset_dir, "test", batch_size=8).metrics
            scores[path] = m["at_model_resolution"]
        point["held_out_mean_iou"] = scores[path]["mean_iou"]
        point["held_out_foreground_iou"] = scores[path]["foreground_iou"]


def train_and_score(cfg, dataset, run_dir: Path, stop_after_cpu_s: float | None = None) -> dict:
    """Train `cfg` into `run_dir`; only then touch the held-out split.

    While training runs, the epoch hook reads nothing but training's own files and the validation figure: it
    records the training time and validation mean IoU of each epoch and, when training saved a new best model
    (chosen on validation), keeps a copy of it under `<run_dir>-checkpoints/`. With `stop_after_cpu_s`
    training stops once its CPU-seconds reach that budget (a time-to-quality run of a long recipe; nothing
    stops on held-out data). After training ends, every kept checkpoint is scored on the held-out split
    (`_score_checkpoints`: the time-to-quality curve) and the final model at original resolution."""
    from segpipe import training
    from segpipe.evaluation import evaluate as evaluation

    dataset_dir = Path(dataset.path)
    best_file, curve = run_dir / "best.json", []
    kept_dir = run_dir.with_name(run_dir.name + "-checkpoints")
    shutil.rmtree(kept_dir, ignore_errors=True)
    kept_dir.mkdir(parents=True)
    state: dict = {"copy_s": 0.0, "copy_cpu_s": 0.0, "best": None, "kept": None, "best_val": None}
    started, cpu_started = time.monotonic(), cpu_seconds()

    def on_epoch_end(epoch: int, logs: dict) -> None:
        t0, c0 = time.monotonic(), cpu_seconds()
        best = best_file.read_text() if best_file.is_file() else None
        if best != state["best"]:  # training saved a new best model (on validation): keep a copy for afterwards
            state["best"], state["best_val"] = best, json.loads(best)["value"] if best else None
            state["kept"] = kept_dir / f"epoch-{epoch + 1:03d}.keras"
            shutil.copy2(run_dir / "model.keras", state["kept"])
        curve.append({"epoch": epoch + 1, "train_seconds": round(t0 - started - state["copy_s"], 1),
                      "train_cpu_seconds": round(c0 - cpu_started - state["copy_cpu_s"], 1),
                      "val_mean_iou": logs.get("val_mean_iou"), "best_val_mean_iou": state["best_val"],
                      "checkpoint": str(state["kept"]) if state["kept"] else None})
        state["copy_s"] += time.monotonic() - t0
        state["copy_cpu_s"] += cpu_seconds() - c0
        print(f"[quality] epoch {epoch + 1}: {curve[-1]}", file=sys.stderr, flush=True)
        if stop_after_cpu_s is not None and curve[-1]["train_cpu_seconds"] >= stop_after_cpu_s:
            raise BudgetSpent(epoch)

    stopped = False
    try:
        result = training.train(cfg, dataset_dir, run_dir, on_epoch_end=on_epoch_end, verbose=2)
    except BudgetSpent:
        stopped, result = True, None
    if result is not None and result.cached:  # the run directory was removed first; never report a cached run
        raise SystemExit(f"{run_dir}: training returned a cached result; a benchmark must train")
    if not curve:
        raise SystemExit(f"{run_dir}: training completed no epoch")
    train_seconds, train_cpu_seconds = curve[-1]["train_seconds"], curve[-1]["train_cpu_seconds"]
    # training has ended: from here on the held-out split may be read
    _score_checkpoints(curve, dataset_dir)
    model_path = run_dir / "model.keras"
    m = evaluation.evaluate([model_path], dataset_dir, "test", batch_size=8, flip=cfg.eval.tta_flip,
                            tta_sizes=cfg.eval.tta_sizes).metrics
    plain = evaluation.evaluate([model_path], dataset_dir, "test", batch_size=8).metrics if cfg.eval.tta_flip else m
    best = json.loads(best_file.read_text())
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "train_seed": cfg.train.seed,
        "stopped_after_cpu_seconds": stop_after_cpu_s if stopped else None,
        "best_val_mean_iou": best["value"],
        "seconds_to_held_out_070": _first(curve, "train_seconds"),
        "cpu_seconds_to_held_out_070": _first(curve, "train_cpu_seconds"),
        "cpu_seconds_to_val_070": _first(curve, "train_cpu_seconds", on="best_val_mean_iou"),
        "epochs_completed": len(curve) if result is None else result.epochs_completed,
        "best_epoch": best["epoch"] + 1,
        "held_out": {k: m[k] for k in ("n_images", "mean_iou", "foreground_iou", "pixel_accuracy", "dice",
                                       "mean_iou_no_border", "iou", "collapsed", "predicted_class_share")},
        "tta": m["tta"],
        "held_out_without_tta": {k: plain[k] for k in ("mean_iou", "foreground_iou", "iou")},
        "held_out_at_model_resolution": {k: m["at_model_resolution"][k] for k in ("mean_iou", "foreground_iou")},
        "held_out_scored": "after training ended: the final model, and each kept checkpoint for the curve",
        "warnings": m.get("warnings", []),
        "curve": curve,
        "cached": False,
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
    d.text((left, 12), "held-out mean IoU of the best model so far (model resolution), scored after training",
           fill="black")
    d.line([(left, y(TARGET["mean_iou"])), (w - right, y(TARGET["mean_iou"]))], fill=(180, 0, 0))
    d.text((left + 6, y(TARGET["mean_iou"]) - 14), f"target {TARGET['mean_iou']:.2f}", fill=(180, 0, 0))
    colours = [(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (213, 94, 0), (86, 180, 233)]
    for i, r in enumerate(results):
        if not r.get("curve"):
            continue
        pts = [(x(_x(p)), y(p["held_out_mean_iou"])) for p in r["curve"]
               if p.get("held_out_mean_iou") is not None]
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
        "configs": [c for r in reports for c in r.get("configs", [])],
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
    p.add_argument("--stop-after-cpu-seconds", type=float, metavar="S",
                   help="stop each run once its training CPU-seconds reach S (a time-to-quality run of a long "
                        "recipe); the held-out split is scored only after training ends, as always")
    p.add_argument("--plot", help="write the quality-per-CPU-minute plot (PNG) here")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: merge the results of earlier outputs (in this order) into one report and plot")
    args = p.parse_args()
    if args.merge:
        return merge(args.merge, args.plot, args.out)

    from segpipe_app.cli.env import configure_prefect
    from segpipe_app.cli.options import parse_value
    from segpipe.config import build_config
    from segpipe.layout import WorkDir

    work = WorkDir.at(args.work_dir)
    configure_prefect(work.root)
    overrides = {"data.source": str(Path(args.source).resolve()), "data.split": args.split,
                 "data.test_fraction": args.test_fraction, "data.val_fraction": args.val_fraction,
                 "data.seed": args.split_seed, "data.holdout_breeds": args.holdout_breed}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = parse_value(value)
    requests = [(preset, _fitting(preset, overrides) | ({"train.seed": seed} if seed is not None else {}))
                for preset in (args.preset or ["cpu-quick"]) for seed in (args.train_seed or [None])]
    configs = [build_config(preset, over) for preset, over in requests]
    records = {id(cfg): common.config_record(preset, over, cfg=cfg) for cfg, (preset, over) in zip(configs, requests)}
    # the code measured is the code at the start; the machine's matmul probe runs before any training
    started_machine, started_commit, started_command = machine(), commit(), common.command_line()

    from segpipe_app.flows.prepare_data import prepare_data_flow
    from segpipe.fsutil import digest_json

    dataset = prepare_data_flow(config=configs[0], work_dir=str(work.root))
    results = []
    for cfg in configs:
        run_dir = work.run(f"quality-{cfg.preset}-{digest_json([dataset.dataset_key, cfg.model_dump(mode='json')])[:10]}")
        shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark measures training: never a cached run
        results.append({**train_and_score(cfg, dataset, run_dir, stop_after_cpu_s=args.stop_after_cpu_seconds),
                        "config": records[id(cfg)]})
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
        "configs": [r["config"] for r in results],
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
