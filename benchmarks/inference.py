"""Inference speed: `segpipe predict` and `evaluate` in batches against one image at a time.

    .venv/bin/python benchmarks/inference.py                 # ~3 minutes on 2 cores

A cpu-quick-sized U-Net (base_filters 16, depth 4, 128x128, untrained: speed
does not depend on the weights) is saved once; then, alternating batch sizes
in rounds so the machine's load hits them alike:

* `segpipe.predict.predict_paths` on the extracted real images (every file of
  the sample; writes a mask and an overlay PNG per image, as the CLI does);
* `segpipe.evaluation.evaluate.evaluate` on the prepared dataset's `--split` (original-
  and model-resolution scores, per-image IoU).

Each call is timed whole (model loading included, as a user sees it); the
model-loading time is also measured on its own. Reference: batch size 1.
Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import (  # noqa: E402
    Machine,
    add_data_args,
    config_record,
    emit,
    ensure_dataset,
    extracted_pairs,
    library_versions,
    log,
    median,
    r,
)


def save_model(path: Path, img_size: int) -> Path:
    import keras

    from segpipe.config import build_config
    from segpipe.models import build_model

    cfg = build_config("cpu-scratch")  # the scratch U-Net the figures below were taken with
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model.name, (img_size, img_size, 3), 3, **cfg.model.params())
    model.save(path)
    return path


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--split", default="train", help="split to evaluate (train: the most images)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-overlay", action="store_true", help="predict: masks only")
    p.add_argument("--no-evaluate", action="store_true", help="time predict only")
    p.add_argument("--baseline-predict", metavar="FILE",
                   help="another version of segpipe/predict.py to time beside the current one (same rounds), "
                        "e.g. `git show HEAD:segpipe/predict.py > /tmp/predict_old.py`")
    args = p.parse_args()
    machine = Machine()

    from segpipe.evaluation.evaluate import evaluate, load_models
    from segpipe.predict import predict_paths

    dataset_dir = ensure_dataset(args.work_dir, args.source)
    images, _ = extracted_pairs(args.work_dir)
    images_dir = Path(images[0]).parent
    predictors = {"predict": predict_paths}
    if args.baseline_predict:
        from input_pipeline import load_module

        predictors["baseline_predict"] = load_module(args.baseline_predict).predict_paths
    results: dict[str, dict[int, list[tuple[float, float, int]]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory(prefix="segpipe-infer-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = save_model(tmp / "unet.keras", args.img_size)
        load_s = [timed(lambda: load_models([model_path]))[0] for _ in range(3)]
        log(f"model load: {median(load_s):.2f} s")
        # Warm-up: first calls pay one-off costs (imports, first traces).
        predict_paths([model_path], images[:2], tmp / "warm", batch_size=2)
        for rnd in range(args.rounds):
            for bs in args.batch_sizes:
                for name, predict in predictors.items():
                    out = tmp / f"{name}-{rnd}-{bs}"
                    wall, cpu, rep = timed(lambda: predict([model_path], [images_dir], out, batch_size=bs,
                                                           overlay=not args.no_overlay))
                    n = len(rep.written)
                    results[name][bs].append((wall, cpu, n))
                    log(f"round {rnd + 1}: {name} batch {bs}: {n} images, {n / wall:.1f} images/s")
                if args.no_evaluate:
                    continue
                wall, cpu, res = timed(lambda: evaluate([model_path], dataset_dir, args.split, batch_size=bs))
                n = res.metrics["n_images"]
                results["evaluate"][bs].append((wall, cpu, n))
                log(f"round {rnd + 1}: evaluate batch {bs}: {n} images, {n / wall:.1f} images/s")

    report: dict[str, Any] = {}
    for name, by_bs in results.items():
        rows = {}
        for bs, runs in by_bs.items():
            n = runs[0][2]
            rows[bs] = {"images": n, "images_per_s": r(median([n / w for w, _, _ in runs]), 2),
                        "cpu_ms_per_image": r(median([1000 * c / n for _, c, _ in runs]), 1),
                        "runs_images_per_s": [r(n / w, 2) for w, _, _ in runs]}
        ref = rows[args.batch_sizes[0]]
        for row in rows.values():
            row["vs_batch_1"] = r(row["images_per_s"] / ref["images_per_s"], 2)
        report[name] = {str(bs): row for bs, row in rows.items()}
    if "baseline_predict" in report:
        for bs, row in report["predict"].items():
            row["vs_baseline_predict"] = r(row["images_per_s"] / report["baseline_predict"][bs]["images_per_s"], 2)
    emit({
        "benchmark": "inference",
        "model": "unet, base_filters 16, depth 4 (cpu-scratch), untrained",
        "img_size": args.img_size,
        "predict_inputs": f"{len(images)} extracted real images (mask + {'no ' if args.no_overlay else ''}overlay "
                          "PNG per image)",
        "evaluate_split": args.split,
        "model_load_s_median": r(median(load_s), 2),
        "timing": f"median of {args.rounds} rounds; each call whole, model loading included",
        "reference": "batch size 1",
        "results": report,
        "versions": library_versions(),
        **machine.provenance([config_record("cpu-scratch", role="the model: built untrained from this preset at "
                                                              "--img-size")]),
    }, args.out)


if __name__ == "__main__":
    main()
