"""Issue 20: the border drawn as geometry (`train.border_band=calibrated`, `segpipe.evaluation.band`) against
the model's own argmax, on trained `cpu-quick` models: chosen on validation, then scored once on held-out images.

    .venv/bin/python benchmarks/border_band.py --quality /tmp/q/quality.json --work-dir /tmp/q/work \
        --out benchmarks/results/border-band.json

For each training seed of a `benchmarks/quality.py` result, `calibrate_band` scores every band of
`segpipe.evaluation.band.GRID` (inner x outer widths, thousandths of the image's longer side) on the
validation split at original resolution, exactly as a training run with `train.border_band=calibrated` does
at its end (the model's own predictions, no test-time augmentation). The adoption rule is
`render_levers.ADOPT_GAIN` on every seed, for the band the calibration would keep. Only after that, whatever
it says, two recipes are scored ONCE on the held-out split through `segpipe.evaluation.evaluate`: the
argmax, and the model carrying the band that was best on validation (whether or not it beat the argmax).
`calibration_cpu_seconds` is what the calibration adds to a training run (this process, all threads).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks.render_levers import ADOPT_GAIN  # noqa: E402
from benchmarks.test_time_levers import (held_out_summary, quality_arguments, quality_provenance,  # noqa: E402
                                         trained_models)

KEPT = ("mean_iou", "foreground_iou", "pixel_accuracy", "iou", "n_images")


def _held_out(model: Path, dataset_dir: Path, band: tuple[int, int] | None) -> dict[str, Any]:
    """The held-out split's figures of `model` carrying `band` (a copy of the file is given the band)."""
    from segpipe.evaluation.band import save_with_band
    from segpipe.evaluation.evaluate import evaluate

    with tempfile.TemporaryDirectory(prefix="border-band-") as tmp:
        copy = Path(shutil.copy2(model, Path(tmp) / "model.keras"))
        save_with_band(copy, band)
        metrics = evaluate([copy], dataset_dir, "test", batch_size=8).metrics
    return {k: metrics[k] for k in KEPT}


def _on_validation(result: dict[str, Any], model: Path, dataset_dir: Path) -> dict[str, Any]:
    """One training seed's calibration: every band's validation figures, the best band, its gain, its cost."""
    from segpipe.evaluation.band import calibrate_band
    from segpipe.evaluation.ensemble import load_models

    common.log(f"seed {result['train_seed']}: calibrating on validation, {model}")
    c0 = time.process_time()
    calibration = calibrate_band(load_models([model]), dataset_dir, split="val")
    cpu = time.process_time() - c0
    best = max(calibration.candidates, key=lambda c: c["mean_iou"])
    return {"train_seed": result["train_seed"], "model": str(model), "calibration": calibration.to_dict(),
            "calibration_cpu_seconds": round(cpu, 1), "best_band_on_val": best,
            "val_gain_of_best_band": round(best["mean_iou"] - calibration.argmax["mean_iou"], 6)}


def main() -> int:
    from segpipe.evaluation.band import GRID

    args = quality_arguments(__doc__, several=True).parse_args()
    machine, commit, command = common.machine(), common.git_commit(), common.command_line()
    runs, sources = [], []
    for path in args.quality:  # several results: each names its own dataset (the same split, another key)
        quality, dataset_dir, trained = trained_models(path, args.work_dir)
        sources.append(quality_provenance(quality, path))
        runs += [{**_on_validation(result, model, dataset_dir), "dataset_dir": str(dataset_dir)}
                 for result, model in trained]
    gains = [r["val_gain_of_best_band"] for r in runs]
    adopt = min(gains) >= ADOPT_GAIN
    for run in runs:  # the choice is made: held-out images, once per recipe
        common.log(f"seed {run['train_seed']}: held-out split")
        model, dataset_dir = Path(run["model"]), Path(run["dataset_dir"])
        run["held_out_argmax"] = _held_out(model, dataset_dir, None)
        run["held_out_best_band"] = _held_out(model, dataset_dir, tuple(run["best_band_on_val"]["band"]))
    held = held_out_summary(runs, {"argmax": "held_out_argmax", "best_band": "held_out_best_band"})
    common.emit({
        "benchmark": "border_band",
        "command": command,
        "commit": commit,
        "machine": {**machine, "load_average_after": common.load_average()},
        "grid": list(GRID),
        "quality_results": [s["quality_result"] for s in sources],
        "configs": [c for s in sources for c in (s["configs"] or [])],
        "rule": f"adopt when the best band raises validation mean IoU over the argmax by >= {ADOPT_GAIN} on every "
                "training seed",
        "summary": {
            "val_gain_of_best_band": common.spread(gains),
            "meets_rule_on_validation": adopt,
            "bands_kept_by_calibration": [r["calibration"]["band"] for r in runs],
            "val_border_iou": {"argmax": common.spread([r["calibration"]["argmax"]["border_iou"] for r in runs]),
                               "best_band": common.spread([r["best_band_on_val"]["border_iou"] for r in runs])},
            "calibration_cpu_seconds": common.spread([r["calibration_cpu_seconds"] for r in runs]),
            "held_out": held,
            "n_held_out_images": runs[0]["held_out_argmax"]["n_images"],
            "n_val_images": runs[0]["calibration"]["n_images"],
        },
        "runs": runs,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
