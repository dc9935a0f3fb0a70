"""Serving speed and memory of each export format against the Keras model, in one run.

    .venv/bin/python benchmarks/export_inference.py --model WORK/runs/<cpu-quick run>/model.keras \
        --out benchmarks/results/export_inference.json

The model (a trained cpu-quick run's, or an untrained cpu-quick-shaped one when --model is not given: speed
does not depend on the weights) is exported with `segpipe.export.export_models`, parity included, on the
prepared sample. Then, in rounds so the machine's load hits every format alike, each runtime gets a fresh
process (`serving_worker.py`) that loads it and answers:

* batch-1 latency for one 500 x 375 JPEG, decode to mask included (median of the repeats, then of rounds);
* throughput at batch 8 (eight real images of the sample, decode to mask);
* the process's peak RSS (load + one image + the batch), and each artifact's size on disk.

Reference: the `.keras` model through Keras `model.predict`, with segpipe's own decoding and resizing around
it. Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import (  # noqa: E402
    ROOT,
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

RUNTIMES = ("keras", "saved_model", "litert-float32", "litert-float16", "litert-int8", "onnx")
WORKER = Path(__file__).with_name("serving_worker.py")


def untrained_cpu_quick(path: Path) -> Path:
    import keras

    from segpipe.config import build_config
    from segpipe.models import build_model

    cfg = build_config("cpu-quick")
    keras.utils.set_random_seed(0)
    params = {**cfg.model.params(), "encoder_weights": None}
    build_model(cfg.model.name, (cfg.train.img_size, cfg.train.img_size, 3), 3, **params).save(path)
    return path


def pick_images(images: list[str]) -> tuple[Path, list[Path]]:
    """The first 500 x 375 JPEG of the sample (the usual Oxford-IIIT Pet size) and eight others."""
    from PIL import Image

    one = next((Path(p) for p in images if Image.open(p).size == (500, 375)), Path(images[0]))
    return one, [Path(p) for p in images if Path(p) != one][:8]


def run_worker(runtime: str, model: Path, export_dir: Path, one: Path, batch: list[Path], repeats: int) -> dict[str, Any]:
    artifact = {"saved_model": export_dir, "onnx": export_dir / "pets.onnx"}.get(
        runtime, export_dir / f"pets-{runtime.removeprefix('litert-')}.tflite")
    cmd = [sys.executable, "-I", str(WORKER), "--runtime", "keras" if runtime == "keras" else "export",
           "--model", str(model if runtime == "keras" else artifact), "--image", str(one),
           "--batch", *map(str, batch), "--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    if done.returncode != 0:
        raise RuntimeError(f"{runtime} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--model", type=Path, help="a trained .keras model (default: an untrained cpu-quick-shaped one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="export with flip TTA (cpu-quick's setting; default on)")
    args = p.parse_args()
    machine = Machine()

    from segpipe.export.exporter import export_models
    from segpipe.fsutil import sha256_file

    dataset_dir = ensure_dataset(args.work_dir, args.source)
    images, _ = extracted_pairs(args.work_dir)
    one, batch = pick_images(images)
    with tempfile.TemporaryDirectory(prefix="segpipe-serving-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or untrained_cpu_quick(tmp / "cpu-quick-untrained.keras")
        import time

        t0 = time.perf_counter()
        exported = export_models([model], tmp / "export", dataset_dir=dataset_dir, split="test", flip=args.tta_flip)
        export_s = time.perf_counter() - t0
        log(f"export with parity: {export_s:.0f} s")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNTIMES}
        for rnd in range(args.rounds):
            for name in RUNTIMES:
                runs[name].append(run_worker(name, model, exported.out_dir, one, batch, args.repeats))
                last = runs[name][-1]
                log(f"round {rnd + 1}: {name}: {1000 * median(last['latency_s']):.0f} ms/image, "
                    f"{last['batch8_images_per_s']:.1f} images/s at batch 8, {last['peak_rss_mb']:.0f} MB")
        sizes = {"keras": size_of(model), "saved_model": size_of(exported.out_dir / "saved_model.pb")
                 + size_of(exported.out_dir / "variables"), "onnx": size_of(exported.out_dir / "pets.onnx")}
        sizes.update({f"litert-{v}": size_of(exported.out_dir / f"pets-{v}.tflite") for v in ("float32", "float16", "int8")})
        parity = exported.manifest["parity"]
        model_sha = sha256_file(model)

    results = {}
    for name, rs in runs.items():
        results[name] = {
            "latency_ms": r(1000 * median([median(x["latency_s"]) for x in rs]), 1),
            "batch8_images_per_s": r(median([x["batch8_images_per_s"] for x in rs]), 2),
            "peak_rss_mb": r(median([x["peak_rss_mb"] for x in rs]), 0),
            "load_and_first_answer_s": r(median([x["load_and_first_answer_s"] for x in rs]), 2),
            "file_mb": r(sizes[name] / 1e6, 2),
            "modules": rs[0]["modules"],
            "runs_latency_ms": [r(1000 * median(x["latency_s"]), 1) for x in rs],
        }
    ref = results["keras"]
    for row in results.values():
        row["speedup_vs_keras"] = r(ref["latency_ms"] / row["latency_ms"], 2)
        row["batch8_vs_keras"] = r(row["batch8_images_per_s"] / ref["batch8_images_per_s"], 2)
        row["rss_vs_keras"] = r(row["peak_rss_mb"] / ref["peak_rss_mb"], 2)
    exports = [k for k in RUNTIMES if k != "keras"]
    fastest = min(exports, key=lambda k: results[k]["latency_ms"])
    light = min(("litert-float32", "litert-float16", "litert-int8", "onnx"), key=lambda k: results[k]["peak_rss_mb"])
    emit({
        "benchmark": "export_inference",
        "model": str(args.model.name if args.model else "cpu-quick architecture, untrained"),
        "model_sha256": model_sha,
        "tta_flip": args.tta_flip,
        "image": {"name": one.name, "size": "500 x 375" if one.name else None},
        "batch_images": [b.name for b in batch],
        "timing": f"median over {args.repeats} repeats per fresh process, then over {args.rounds} interleaved rounds",
        "reference": "keras: the .keras model through model.predict, segpipe's decode and resize around it",
        "export_with_parity_s": r(export_s, 1),
        "parity": {k: {"mean_iou": v["mean_iou"], "pixel_agreement": v["pixel_agreement"], "passed": v["passed"]}
                   for k, v in parity["results"].items()} | {"reference_mean_iou": parity["reference"]["mean_iou"],
                                                             "images": parity["images"]},
        "results": results,
        "targets": {
            "fastest_export": fastest,
            "fastest_speedup_vs_keras": results[fastest]["speedup_vs_keras"],
            "fastest_speedup_target": 2.0,
            "lightest_tf_free_runtime": light,
            "lightest_rss_vs_keras": results[light]["rss_vs_keras"],
            "rss_target": round(1 / 3, 3),
        },
        "versions": library_versions(),
        **machine.provenance([config_record("cpu-quick", role="the model: a cpu-quick run's, or built untrained "
                                                             "from this preset")]),
    }, args.out)


if __name__ == "__main__":
    main()
