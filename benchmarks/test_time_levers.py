"""Issue 20's test-time levers, on the VALIDATION split only: multi-scale TTA and a geometric border band.

    .venv/bin/python benchmarks/test_time_levers.py --quality /tmp/q/quality.json --work-dir /tmp/q/work \
        --out benchmarks/results/test-time-levers.json

For every run of a `benchmarks/quality.py` result (its final model: `model.keras` of the run, the best epoch by
validation mean IoU), the validation split is predicted at the original resolution in these ways:

* `flip`: flip TTA at the model's own input size, as `segpipe evaluate` runs `cpu-quick` today (the reference);
* `flip+sizes 160,192` and the other size sets: the trained weights rebuilt at each input size (the model is
  fully convolutional; DeepLabV3+'s image-pooling branch is the one layer whose config names a size), each
  with flip TTA, probabilities averaged at the first size, then resized to the image and argmaxed;
* `band inner W`: flip TTA, then every pixel of the predicted pet (pet probability above background's) within
  W pixels (square neighbourhood, at the original resolution) of the pet's outline becomes border - the
  border as geometry: a band along the pet/background boundary, its width W calibrated on validation;
* `band replace W/V`: the border is ONLY that band (W inside, V outside the outline); the model's own border
  class is ignored.

Per way: validation mean IoU, per-class IoU, foreground IoU, and CPU-seconds per image (this process, all its
threads: the forward passes, the resizes and the band). Gains are paired by training seed against `flip`. The
held-out split is never read: a lever chosen here is scored on held-out images by `quality.py` afterwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

SIZE_SETS = ((160, 192), (160, 224), (128, 160, 192))
INNER_WIDTHS = (2, 4, 6, 8, 10, 12, 16)
REPLACE_WIDTHS = ((8, 0), (12, 2), (16, 4))  # (inside, outside)


def rebuilt_at(model: Any, size: int) -> Any:
    """`model`'s weights in the same architecture built for `size` x `size` inputs."""
    import keras

    config = copy.deepcopy(model.get_config())

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                node["config"]["batch_shape"] = [None, size, size, 3]
            if node.get("class_name") == "UpSampling2D" and node.get("config", {}).get("name") == "aspp_pool_upsample":
                node["config"]["size"] = [size // 16, size // 16]  # DeepLabV3+'s pooled branch: input / 16
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One step of 3x3 square dilation (outside the image counts as False)."""
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def _grown(mask: np.ndarray, steps: int) -> list[np.ndarray]:
    grown = [mask]
    for _ in range(steps):
        grown.append(_dilate(grown[-1]))
    return grown


def score_run(model_path: Path, dataset_dir: Path) -> dict[str, Any]:
    """Every way's validation scores and CPU-seconds per image for one model."""
    from segpipe.data.tfrecords import read_examples
    from segpipe.evaluation.ensemble import ensemble_probs, load_models, resize_image, resize_probs
    from segpipe.evaluation.metrics import ConfusionAccumulator

    base = load_models([model_path])[0]
    own = int(base.input_shape[1])
    models = {own: base}
    for sizes in SIZE_SETS:
        for s in sizes:
            models.setdefault(s, rebuilt_at(base, s))
    examples = list(read_examples(dataset_dir, "val").as_numpy_iterator())
    ways: dict[str, tuple[ConfusionAccumulator, list[float]]] = {}

    def record(name: str, truth: np.ndarray, labels: np.ndarray, cpu: float) -> None:
        acc, cpus = ways.setdefault(name, (ConfusionAccumulator(), []))
        acc.update(truth, labels)
        cpus.append(cpu)

    steps = max(max(INNER_WIDTHS), max(w for w, _ in REPLACE_WIDTHS), max(v for _, v in REPLACE_WIDTHS))
    for ex in examples:
        truth = ex["mask"][..., 0].astype(np.int64) - 1
        for sizes in ((own,), *SIZE_SETS):
            c0 = time.process_time()
            inputs = {(s, s): np.asarray(resize_image(ex["image"], (s, s)))[None] for s in sizes}
            probs = ensemble_probs([models[s] for s in sizes], inputs, (sizes[0], sizes[0]), flip=True)[0]
            full = resize_probs(probs, truth.shape)
            labels = full.argmax(axis=-1)
            cpu = time.process_time() - c0
            if sizes == (own,):
                record("flip", truth, labels, cpu)
                c1 = time.process_time()
                pet = full[..., 0] > full[..., 1]
                outside, inside = _grown(pet, steps), _grown(~pet, steps)  # inside[w]: pet pixels within w of the edge
                band_cpu = time.process_time() - c1
                for w in INNER_WIDTHS:
                    banded = labels.copy()
                    banded[pet & inside[w]] = 2
                    record(f"band inner {w}", truth, banded, cpu + band_cpu)
                for w, v in REPLACE_WIDTHS:
                    replaced = np.where(pet, 0, 1)
                    replaced[(pet & inside[w]) | (~pet & outside[v])] = 2
                    record(f"band replace {w}/{v}", truth, replaced, cpu + band_cpu)
            else:
                record("flip+sizes " + ",".join(map(str, sizes)), truth, labels, cpu)
    out = {}
    for name, (acc, cpus) in ways.items():
        s = acc.scores()
        out[name] = {"val_mean_iou": s["mean_iou"], "val_foreground_iou": s["foreground_iou"], "val_iou": s["iou"],
                     "cpu_seconds_per_image": round(statistics.mean(cpus), 4)}
    return {"model": str(model_path), "n_val_images": len(examples), "ways": out}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per way: mean and (min, max) over the runs, and the gain over `flip` paired by run."""
    summary = {}
    for name in runs[0]["ways"]:
        vals = [r["ways"][name]["val_mean_iou"] for r in runs]
        gains = [r["ways"][name]["val_mean_iou"] - r["ways"]["flip"]["val_mean_iou"] for r in runs]
        borders = [r["ways"][name]["val_iou"]["border"] for r in runs]
        cpu = [r["ways"][name]["cpu_seconds_per_image"] / r["ways"]["flip"]["cpu_seconds_per_image"] for r in runs]
        summary[name] = {
            "val_mean_iou": {"mean": statistics.mean(vals), "min": min(vals), "max": max(vals)},
            "val_border_iou": {"mean": statistics.mean(borders), "min": min(borders), "max": max(borders)},
            "gain_over_flip": {"mean": statistics.mean(gains), "min": min(gains), "max": max(gains)},
            "cpu_per_image_vs_flip": round(statistics.mean(cpu), 3),
        }
    return summary


def run_models(work_dir: Path) -> dict[str, Path]:
    """{config digest: model.keras} of every complete run under `work_dir`/runs (the digest as quality.py
    records it: sha256 of the resolved configuration's canonical JSON)."""
    import hashlib

    out = {}
    for config in (work_dir / "runs").glob("*/config.json"):
        if (config.parent / "train_summary.json").is_file() and (config.parent / "model.keras").is_file():
            canonical = json.dumps(json.loads(config.read_text()), sort_keys=True, separators=(",", ":"))
            out[hashlib.sha256(canonical.encode()).hexdigest()] = config.parent / "model.keras"
    return out


def trained_models(quality_path: str, work_dir: str) -> tuple[dict[str, Any], Path, list[tuple[dict[str, Any], Path]]]:
    """(the quality.py result, its dataset directory, [(each run's result, its final model.keras)]); a clear
    exit when the result spans several datasets or `work_dir` lacks its dataset or a run."""
    quality = json.loads(Path(quality_path).read_text())
    # one quality.py run names its dataset; a merge of several (`quality.py --merge`) names each run's
    keys = {d["key"] for d in ([quality["dataset"]] if "dataset" in quality else
                               [m["dataset"] for m in quality.get("merged_from", [])])}
    if len(keys) != 1:
        raise SystemExit(f"--quality {quality_path}: expected its runs on one dataset; found {sorted(keys) or 'none'}")
    dataset_dir = Path(work_dir) / "datasets" / keys.pop()
    if not dataset_dir.is_dir():
        raise SystemExit(f"--work-dir {work_dir}: no dataset {dataset_dir.name} under datasets/")
    models = run_models(Path(work_dir))
    trained = []
    for result in quality["results"]:
        model = models.get(result["config"]["digest"])
        if model is None:
            raise SystemExit(f"--work-dir {work_dir}: no complete run with the configuration of seed "
                             f"{result['train_seed']} (digest {result['config']['digest'][:12]})")
        trained.append((result, model))
    return quality, dataset_dir, trained


def quality_provenance(quality: dict[str, Any], quality_path: str) -> dict[str, Any]:
    """Where the trained models came from, for a benchmark that scores them (and trains nothing)."""
    return {"quality_result": {"path": quality_path, "commit": quality.get("commit"), "command": quality.get("command")},
            "configs": quality.get("configs")}  # the trained runs' configurations


def quality_arguments(description: str, several: bool = False) -> argparse.ArgumentParser:
    """The arguments of a benchmark that scores the models of a quality.py result: --quality, --work-dir, --out
    (`several`: --quality takes several results, each on its own dataset of the work dir)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quality", required=True, nargs="+" if several else None,
                   help="a benchmarks/quality.py result (its runs' final models)" + (", or several" if several else ""))
    p.add_argument("--work-dir", required=True, help="the --work-dir that quality.py ran with (its dataset)")
    p.add_argument("--out", help="also write the JSON here")
    return p


def held_out_summary(runs: list[dict[str, Any]], ways: dict[str, str]) -> dict[str, Any]:
    """{way: mean IoU, foreground IoU and border IoU over the seeds} of the held-out figures each run holds
    under `ways[way]`."""
    return {way: {"mean_iou": common.spread([r[key]["mean_iou"] for r in runs]),
                  "foreground_iou": common.spread([r[key]["foreground_iou"] for r in runs]),
                  "border_iou": common.spread([r[key]["iou"]["border"] for r in runs])}
            for way, key in ways.items()}


def main() -> int:
    args = quality_arguments(__doc__).parse_args()
    quality, dataset_dir, trained = trained_models(args.quality, args.work_dir)
    started_machine, started_commit, command = common.machine(), common.git_commit(), common.command_line()
    runs = []
    for result, model in trained:
        common.log(f"seed {result['train_seed']}: {model}")
        runs.append({"train_seed": result["train_seed"], "best_val_mean_iou_in_training": result["best_val_mean_iou"],
                     **score_run(model, dataset_dir)})
    common.emit({
        "benchmark": "test_time_levers",
        "command": command,
        "commit": started_commit,
        **quality_provenance(quality, args.quality),
        "split_scored": "val (the held-out split is never read)",
        "summary": summarise(runs),
        "runs": runs,
        "machine": {**started_machine, "load_average_after": common.load_average()},
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
