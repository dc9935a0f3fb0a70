"""Do the exported models give the same masks on another machine's runtimes? One bundle, two machines.

    # here: export a trained model, pick real images, and record the masks this machine's runtimes give
    .venv/bin/python benchmarks/export_portability.py prepare --model WORK/runs/<run>/model.keras \
        --bundle bench-out/portability
    # there: another machine with Python, numpy, Pillow, onnxruntime and/or ai-edge-litert, no TensorFlow or segpipe
    python3 benchmarks/export_portability.py there --bundle bench-out/portability --out-dir DIR
    # here again: compare
    .venv/bin/python benchmarks/export_portability.py compare --bundle bench-out/portability --there DIR \
        --out benchmarks/results/export-portability.json

`prepare` exports `--model` in the formats that run without TensorFlow (LiteRT and ONNX) with
`segpipe.export.export_models` (parity included, on the prepared sample's test split) and writes the bundle:
the artifacts (`ARTIFACTS`), `pets_runtime.py` and `export.json` (and `border_band.json` when the model has
one), `inputs.npz` (the encoded bytes of `--images` real JPEGs of the sample, sorted by name), and for each
artifact `labels-here-<artifact>.npz`, the masks `pets_runtime.py` gives here, run exactly as the export's
parity check runs it: a fresh `python -I` process in which `import segpipe` fails.

`there` needs only the standard library plus what `pets_runtime.py` needs (numpy, Pillow, and onnxruntime
for ONNX, ai-edge-litert for LiteRT): it runs the same worker on each artifact whose runtime this Python has,
blocking segpipe, TensorFlow and Keras, and writes `labels-there-<artifact>.npz` and `there.json` (the
worker's reports, the artifacts skipped for want of a runtime, and this Python's versions and machine).

`compare` counts, per artifact, the masks that are identical pixel for pixel and the pixel agreement per image
(the share of pixels with the same label), and records both sides' versions. It is the parity check's
question asked across machines: the export's own parity bound is against the Keras model on the machine that
exported it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# artifact -> (its file in the export, the module its runtime needs)
ARTIFACTS = {"onnx": ("pets.onnx", "onnxruntime"), "litert-float32": ("pets-float32.tflite", "ai_edge_litert"),
             "litert-float16": ("pets-float16.tflite", "ai_edge_litert"),
             "litert-int8": ("pets-int8.tflite", "ai_edge_litert")}
BUNDLE_FILES = ("pets_runtime.py", "export.json")
OPTIONAL_FILES = ("border_band.json",)
BLOCKED = ("segpipe", "tensorflow", "keras")


def run_worker(bundle: Path, artifact: str, out: Path) -> dict[str, Any]:
    """`pets_runtime.py` on one of the bundle's artifacts and its inputs, in a fresh isolated process."""
    bundle, out = bundle.resolve(), out.resolve()  # the worker runs in the bundle: relative paths would miss
    cmd = [sys.executable, "-I", str(bundle / "pets_runtime.py"), "--artifact", str(bundle / ARTIFACTS[artifact][0]),
           "--inputs", str(bundle / "inputs.npz"), "--out", str(out)]
    for name in BLOCKED:
        cmd += ["--block-import", name]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle)
    if done.returncode:
        raise SystemExit(f"pets_runtime.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def this_python() -> dict[str, Any]:
    """This Python's versions of what the exported runtimes use, and the machine (standard library only)."""
    from importlib.metadata import PackageNotFoundError, version

    from benchmarks.common import cpu_model

    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in ("numpy", "pillow", "onnxruntime", "ai-edge-litert"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {**versions, "cpu_model": cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(),
            "system": platform.system()}


def prepare(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np

    from benchmarks.common import ensure_dataset, extracted_pairs, log
    from segpipe.export.exporter import export_models

    bundle = Path(args.bundle)
    if not Path(args.model).is_file():
        raise SystemExit(f"--model: no such file {args.model} (a trained .keras model)")
    dataset_dir = ensure_dataset(args.work_dir, args.source)
    images, _ = extracted_pairs(args.work_dir)
    if len(images) < args.images:
        raise SystemExit(f"--images {args.images}: the sample under {args.work_dir} has only {len(images)}")
    picked = [Path(p) for p in images[:args.images]]
    part = bundle.with_name(bundle.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="segpipe-portability-") as tmp:
        log(f"exporting {args.model} (parity on the test split)")
        exported = export_models([Path(args.model)], Path(tmp) / "export", dataset_dir=dataset_dir, split="test",
                                 flip=args.tta_flip, formats=["litert", "onnx"])
        for name in (*BUNDLE_FILES, *OPTIONAL_FILES, *(f for f, _ in ARTIFACTS.values())):
            if (exported.out_dir / name).is_file():
                shutil.copy2(exported.out_dir / name, part / name)
    np.savez(part / "inputs.npz", **{str(i): np.frombuffer(p.read_bytes(), dtype=np.uint8)
                                     for i, p in enumerate(picked)})
    (part / "images.json").write_text(json.dumps([p.name for p in picked], indent=1) + "\n")
    if (Path(args.model).parent / "config.json").is_file():  # a training run's model: the configuration it ran
        shutil.copy2(Path(args.model).parent / "config.json", part / "model-config.json")
    reports = {name: run_worker(part, name, part / f"labels-here-{name}.npz") for name in ARTIFACTS}
    (part / "here.json").write_text(json.dumps({"worker": reports, "this_python": this_python()}, indent=1) + "\n")
    shutil.rmtree(bundle, ignore_errors=True)
    part.rename(bundle)
    log(f"bundle written to {bundle}: {len(picked)} images, masks from this machine's runtimes")
    return 0


def there(args: argparse.Namespace) -> int:
    bundle, out = Path(args.bundle), Path(args.out_dir)
    missing = [n for n in (*(f for f, _ in ARTIFACTS.values()), *BUNDLE_FILES, "inputs.npz")
               if not (bundle / n).is_file()]
    if missing:
        raise SystemExit(f"--bundle {bundle}: missing {', '.join(missing)} (made by `export_portability.py prepare`)")
    import importlib.util

    runnable = [n for n, (_, module) in ARTIFACTS.items() if importlib.util.find_spec(module) is not None]
    skipped = {n: f"no module {module} in this Python" for n, (_, module) in ARTIFACTS.items() if n not in runnable}
    if not runnable:
        raise SystemExit(f"this Python ({sys.executable}) has neither onnxruntime nor ai_edge_litert: nothing to run")
    out.mkdir(parents=True, exist_ok=True)
    reports, failed = {}, {}
    for name in runnable:
        try:
            reports[name] = run_worker(bundle, name, out / f"labels-there-{name}.npz")
        except SystemExit as error:  # one runtime failing here is a finding, not the end of the run
            failed[name] = str(error)
    (out / "there.json").write_text(json.dumps({"worker": reports, "skipped": skipped, "failed": failed,
                                                "this_python": this_python()}, indent=1) + "\n")
    print(json.dumps({"ran": sorted(reports), "skipped": skipped, "failed": failed}))
    return 1 if failed else 0


def agreement(here: dict[str, Any], there: dict[str, Any]) -> dict[str, Any]:
    """Identical masks and per-image pixel agreement between two `{index: HxW labels}` sets."""
    import numpy as np

    if sorted(here) != sorted(there):
        raise SystemExit(f"the two label sets hold different images: {len(here)} here, {len(there)} there")
    per_image = []
    for key in sorted(here, key=int):
        a, b = here[key], there[key]
        if a.shape != b.shape:
            raise SystemExit(f"image {key}: mask {a.shape} here but {b.shape} there")
        per_image.append(float(np.mean(a == b)))
    return {"n_images": len(per_image), "identical_masks": sum(x == 1.0 for x in per_image),
            "pixel_agreement_min": min(per_image), "pixel_agreement_mean": sum(per_image) / len(per_image),
            "per_image": per_image}


def compare(args: argparse.Namespace) -> int:
    import numpy as np

    from benchmarks.common import Machine, config_record, emit

    machine = Machine(probe=False)
    bundle, far = Path(args.bundle), Path(args.there)
    here, there_report = json.loads((bundle / "here.json").read_text()), json.loads((far / "there.json").read_text())
    results = {}
    for name in there_report["worker"]:
        with np.load(bundle / f"labels-here-{name}.npz") as h, np.load(far / f"labels-there-{name}.npz") as t:
            results[name] = agreement({k: h[k] for k in h.files}, {k: t[k] for k in t.files})
    manifest = json.loads((bundle / "export.json").read_text())
    emit({
        "benchmark": "export_portability",
        "artifacts": {name: ARTIFACTS[name][0] for name in results},
        "export": {"sources": manifest.get("sources"), "contract": manifest.get("contract"),
                   "parity": manifest.get("parity"), "libraries": manifest.get("libraries")},
        "images": json.loads((bundle / "images.json").read_text()),
        "model_config": (json.loads((bundle / "model-config.json").read_text())
                         if (bundle / "model-config.json").is_file() else None),
        "results": results,
        "skipped_there": there_report.get("skipped", {}),
        "failed_there": there_report.get("failed", {}),
        "here": here,
        "there": there_report,
        "blocked_imports": list(BLOCKED),
        **machine.provenance([config_record("cpu-quick", role="the exported model: a cpu-quick run's")]),
    }, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare", help="export a model and write the bundle with this machine's masks")
    a.add_argument("--model", required=True, help="a trained .keras model")
    a.add_argument("--bundle", required=True, help="the bundle directory to write")
    a.add_argument("--images", type=int, default=48, help="how many of the sample's images (sorted by name)")
    a.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=True)
    a.add_argument("--work-dir", default=str(ROOT / "bench-out" / "data"))
    a.add_argument("--source", default=str(ROOT.parent / "shared" / "pets-sample"))
    b = sub.add_parser("there", help="run the bundle's model on this machine (no TensorFlow, no segpipe needed)")
    b.add_argument("--bundle", required=True)
    b.add_argument("--out-dir", required=True, help="where labels-there.npz and there.json go")
    c = sub.add_parser("compare", help="compare the two machines' masks; writes the result JSON")
    c.add_argument("--bundle", required=True)
    c.add_argument("--there", required=True, help="the directory `there` wrote")
    c.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args(argv)
    return {"prepare": prepare, "there": there, "compare": compare}[args.step](args)


if __name__ == "__main__":
    sys.exit(main())
