"""Every recipe decision, re-made from the validation figures of committed results: recipe-selection.json.

    .venv/bin/python benchmarks/recipe_selection.py --out benchmarks/results/recipe-selection.json

DECISIONS lists each choice a preset embodies that was made by comparing trained recipes: the question, what
the preset holds today, how it was first decided, and the committed result file of each candidate
(`benchmarks/quality.py` output). `decide` reads those files and decides on their validation figures alone
(`best_val_mean_iou` of each run, paired by training seed where the seeds match; the mean over the runs
otherwise); held-out figures are never read. A decision whose evidence is missing - a candidate file that is
not in benchmarks/results/, one without strict provenance (`render_common.provenance_problems`), or runs without a
validation figure - is recorded as `withdrawn`, with what is missing: the preset's setting then rests on no
committed measurement, and the text says so. The output records the command, commit and machine like every
benchmark; it runs no PipelineConfig. `tests/benchmarks/test_figures.py` fails when the committed file's decisions
differ from what `decide` makes of the committed results now.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"

DECISIONS: list[dict[str, Any]] = [
    {
        "id": "cpu-quick-decoder",
        "question": "cpu-quick's decoder on the MobileNetV2 encoder: DeepLabV3+ or segmentation_models' U-Net (its "
                    "/2, /4, /8 and /16 skips), at about the same training CPU (issue 20's decoder lever)",
        "preset_today": "deeplabv3plus on mobilenetv2",
        "first_decided": "on validation figures assembled by hand from training logs that were never committed; "
                         "re-measured in issue 20 in one interleaved run with cpu-quick as it is, the U-Net's "
                         "budget cut to 3,500 images for about DeepLabV3+'s training CPU at 8,000",
        "candidates": {
            "deeplabv3plus-mobilenetv2, 160 px (cpu-quick then)": "quality-cpu-quick-interleaved.json",
            "unet-mobilenetv2, 3,500 images": "quality-cpu-quick-unet-mobilenetv2.json",
        },
    },
    {
        "id": "cpu-quick-input-size",
        "question": "cpu-quick's input size: 160 px, or 224 px (the ImageNet encoder's own) with the image budget "
                    "cut for about the same training CPU (issue 20, for the border class)",
        "preset_today": "224 px since the second run (decision cpu-quick-input-size-at-its-cpu); in this first run, "
                        "at 0.85x cpu-quick's training CPU, 224 px had the higher validation mean but missed the "
                        "adoption rule (a gain of 0.005 on every seed) on one seed of three",
        "first_decided": "160 px since the first cpu-quick; measured in issue 20 in one interleaved run",
        "candidates": {
            "160 px, 8,000 images (cpu-quick then)": "quality-cpu-quick-interleaved.json",
            "224 px, 4,100 images": "quality-cpu-quick-img224.json",
        },
    },
    {
        "id": "cpu-quick-input-size-at-its-cpu",
        "question": "cpu-quick's input size at cpu-quick's own training CPU: 160 px at 8,000 images, or 224 px with "
                    "the budget set before the run to 4,800 images for about the same CPU (issue 20), five seeds",
        "preset_today": "224 px (train.img_size 224), 4,800 images: switched in issue 20 on this run, where 224 px "
                        "gained on validation by at least 0.005 on every one of five seeds (BENCHMARKS.md, the "
                        "input-size block)",
        "first_decided": "160 px since the first cpu-quick; issue 20's second interleaved run, its budget and seeds "
                         "fixed before the run",
        "candidates": {
            "160 px, 8,000 images": "quality-cpu-quick-interleaved-2.json",
            "224 px, 4,800 images": "quality-cpu-quick-img224-4800.json",
        },
    },
    {
        "id": "cpu-quick-boundary-loss",
        "question": "cpu-quick's loss: cross-entropy + Dice as it is, or with the boundary-aware term "
                    "(train.boundary_loss_weight 1, radius 8 px, both fixed before the run), for the border class "
                    "(issue 20), three seeds in one interleaved run",
        "preset_today": "off (train.boundary_loss_weight 0): the term must gain on validation by at least 0.005 on "
                        "every seed to be adopted (BENCHMARKS.md, the boundary-loss block)",
        "first_decided": "cross-entropy + Dice since the first cpu-quick; issue 20's third interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-3.json",
            "with the boundary-aware term": "quality-cpu-quick-boundary-loss.json",
        },
    },
    {
        "id": "cpu-quick-edge-head",
        "question": "cpu-quick's model while training: as it is, or with the training-only edge head that regresses "
                    "each pixel's closeness to the border band (train.edge_head_weight 1, radius 8 px, both fixed "
                    "before the run), for the border class (issue 20), three seeds in one interleaved run",
        "preset_today": "off (train.edge_head_weight 0): the head must gain on validation by at least 0.005 on every "
                        "seed to be adopted (BENCHMARKS.md, the edge-head block)",
        "first_decided": "no edge head since the first cpu-quick; issue 20's fifth interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-5.json",
            "with the edge head": "quality-cpu-quick-edge-head.json",
        },
    },
    {
        "id": "cpu-quick-training-budget",
        "question": "cpu-quick's length: 4,800 training images as it is, or 6,400 (a third more, within the issue's "
                    "600-s training target; fixed before the run), issue 20, three seeds in one interleaved run",
        "preset_today": "4,800 images (train.budget_images 4800): the longer training had to gain on validation by "
                        "at least 0.005 on every seed to be adopted and gained less on each (BENCHMARKS.md, the "
                        "training-budget block)",
        "first_decided": "4,800 images since the input-size decision; issue 20's sixth interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-6.json",
            "6,400 training images": "quality-cpu-quick-budget-6400.json",
        },
    },
    {
        "id": "cpu-quick-aspp-rates",
        "question": "cpu-quick's ASPP rates: the paper's (6, 12, 18), chosen for a 33x33 map, or (3, 5, 8), the same "
                    "scaled to cpu-quick's 14x14 map at 224 px (fixed before the run), issue 20, three seeds in one "
                    "interleaved run",
        "preset_today": "(6, 12, 18) (model.aspp_rates): the scaled rates had to gain on validation by at least 0.005 "
                        "on every seed to be adopted and lost on average (BENCHMARKS.md, the aspp-rates block)",
        "first_decided": "(6, 12, 18) since the first DeepLabV3+; issue 20's seventh interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-7.json",
            "ASPP rates (3, 5, 8)": "quality-cpu-quick-aspp-rates-358.json",
        },
    },
    {
        "id": "cpu-quick-input-288",
        "question": "cpu-quick's input size with about the longer training's extra CPU: 224 px at 4,800 images as it "
                    "is, or 288 px at 4,000 (fixed before the run), issue 20, three seeds in one interleaved run",
        "preset_today": "224 px at 4,800 images: 288 px had to gain on validation by at least 0.005 on every seed to "
                        "be adopted and lost on each (BENCHMARKS.md, the input-288 block)",
        "first_decided": "224 px since the input-size decision; issue 20's eighth interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-8.json",
            "288 px, 4,000 images": "quality-cpu-quick-img288-4000.json",
        },
    },
    {
        "id": "cpu-quick-encoder-tail",
        "question": "cpu-quick's high-level features: MobileNetV2 cut at block 13's expansion as it is, or the whole "
                    "encoder at output stride 16, its last stage dilated (model.encoder_tail=dilated, fixed before "
                    "the run), issue 20, three seeds in one interleaved run",
        "preset_today": "cut (model.encoder_tail): the dilated encoder had to gain on validation by at least 0.005 on "
                        "every seed to be adopted and lost on each (BENCHMARKS.md, the encoder-dilated block)",
        "first_decided": "cut since the first DeepLabV3+; issue 20's ninth interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-9.json",
            "the whole encoder, dilated": "quality-cpu-quick-encoder-dilated.json",
        },
    },
    {
        "id": "cpu-quick-progressive",
        "question": "cpu-quick's input size while training: 224 px throughout, or the first 2,400 of its 4,800 images "
                    "at 160 px (progressive resizing: train.progressive_img_size 160, train.progressive_images 2400, "
                    "both fixed before the run), a throughput lever (issue 20), three seeds in one interleaved run",
        "preset_today": "224 px throughout (train.progressive_img_size unset): cheaper on every seed but not of equal "
                        "validation quality by the throughput rules (BENCHMARKS.md, the progressive-resizing block)",
        "first_decided": "224 px throughout since the input-size decision; issue 20's fourth interleaved run",
        "candidates": {
            "cpu-quick (224 px) as it is": "quality-cpu-quick-interleaved-4.json",
            "first 2,400 images at 160 px": "quality-cpu-quick-progressive.json",
        },
    },
    {
        "id": "cpu-quick-frozen-prefix",
        "question": "cpu-quick's encoder after its frozen phase: fine-tuned whole, or with the stem and blocks up to "
                    "its /4 features frozen for the whole run (train.freeze_encoder_stride 4, fixed before the run), "
                    "a throughput lever (issue 20), three seeds in one interleaved run",
        "preset_today": "frozen up to the /4 features (train.freeze_encoder_stride 4) since this run: cheaper per "
                        "training image on every seed and of equal validation quality by the throughput rules, both "
                        "fixed before the run (BENCHMARKS.md, the frozen-prefix block); the paired validation mean "
                        "is a little lower, within the rules' tolerance, so the choice here, on the higher mean, "
                        "is the whole encoder",
        "first_decided": "the whole encoder fine-tuned since the first cpu-quick; issue 20's tenth interleaved run",
        "candidates": {
            "cpu-quick (224 px), the whole encoder fine-tuned": "quality-cpu-quick-interleaved-10.json",
            "frozen up to the /4 features": "quality-cpu-quick-frozen-stride4.json",
        },
    },
    {
        "id": "cpu-quick-frozen-phase",
        "question": "cpu-quick's DeepLabV3+ on the MobileNetV2 encoder: with its frozen encoder phase (the first 800 "
                    "images train the decoder alone) as it is, or without it (train.freeze_encoder_images 0), issue "
                    "20, three seeds in one interleaved run",
        "preset_today": "encoder frozen for the first 800 images (train.freeze_encoder_images 800): dropping the "
                        "phase had to gain on validation by at least 0.005 on every seed to be adopted (BENCHMARKS.md, "
                        "the frozen-phase-precision block)",
        "first_decided": "on validation figures assembled by hand from training logs that were never committed; "
                         "withdrawn in issue 19; re-made in issue 20's thirteenth interleaved run",
        "candidates": {
            "cpu-quick as it is (frozen phase)": "quality-cpu-quick-interleaved-13.json",
            "no frozen phase": "quality-cpu-quick-no-frozen-phase.json",
        },
    },
    {
        "id": "cpu-quick-hue-saturation",
        "question": "cpu-quick's augmentation: no hue or saturation jitter as it is, or hue within ±30° and "
                    "saturation within 1 ± 0.6 (train.aug_hue 30, train.aug_saturation 0.6: the values the option "
                    "was first tried with, fixed before the run), for breeds of other colours (issue 20), three "
                    "seeds in one interleaved run",
        "preset_today": "none (train.aug_hue 0, train.aug_saturation 0): the jitter must gain on validation by at "
                        "least 0.005 on every seed to be adopted (BENCHMARKS.md, the hue-saturation block)",
        "first_decided": "rejected on a held-out breed's score (Bengal, one of the three behind the breed target), "
                         "withdrawn in issue 19; re-made in issue 20's eleventh interleaved run",
        "candidates": {
            "cpu-quick as it is (no hue or saturation jitter)": "quality-cpu-quick-interleaved-11.json",
            "hue ±30°, saturation 1 ± 0.6": "quality-cpu-quick-hue-saturation.json",
        },
    },
    {
        "id": "cpu-quick-loss-lovasz",
        "question": "cpu-quick's loss: cross-entropy + Dice as it is, or cross-entropy + the Lovász-softmax loss "
                    "(train.loss sce+lovasz: per image, present classes, equal weights, fixed before the run), "
                    "a surrogate of the IoU the targets measure, for the border class (issue 20), three seeds in "
                    "one interleaved run",
        "preset_today": "cross-entropy + Dice (train.loss sce+dice): the Lovász loss must gain on validation by at "
                        "least 0.005 on every seed to be adopted (BENCHMARKS.md, the Lovász block)",
        "first_decided": "cross-entropy + Dice since the first cpu-quick; issue 20's twelfth interleaved run",
        "candidates": {
            "cpu-quick as it is (cross-entropy + Dice)": "quality-cpu-quick-interleaved-12.json",
            "cross-entropy + Lovász-softmax": "quality-cpu-quick-lovasz.json",
        },
    },
    {
        "id": "cpu-quick-precision",
        "question": "cpu-quick's precision: float32 as it was, or mixed bfloat16 (train.mixed_precision bfloat16), a "
                    "throughput lever on a CPU with native bfloat16 (avx512_bf16), issue 20, three seeds in one "
                    "interleaved run",
        "preset_today": "auto (train.mixed_precision auto: mixed bfloat16 on a CPU with native bfloat16, float32 on "
                        "one without, float16 on a GPU) since this run, where bfloat16 was cheaper per training image "
                        "on every seed and kept equal validation quality by the throughput rules, both fixed before "
                        "the run (BENCHMARKS.md, the frozen-phase-precision block)",
        "first_decided": "float32 for speed on the roofline's measurements, quality compared on held-out figures; "
                         "withdrawn in issue 19; re-made in issue 20's thirteenth interleaved run",
        "candidates": {
            "float32": "quality-cpu-quick-interleaved-13.json",
            "mixed_bfloat16": "quality-cpu-quick-bfloat16.json",
        },
    },
    {
        "id": "cpu-quick-decoder-stride",
        "question": "cpu-quick's DeepLabV3+ decoder: logits at output stride 4 (the paper's) or 2 (one more skip, "
                    "from the encoder's /2 features), for the border class (issue 20)",
        "preset_today": "stride 4 (model.decoder_stride 4, the default); not switched to stride 2 in this stop: "
                        "its validation margin is within the seed spread and it costs more training CPU "
                        "(BENCHMARKS.md, the border-class section, has both)",
        "first_decided": "stride 4 was the only decoder until issue 20; the two ran side by side, seeds 0-2",
        "candidates": {
            "decoder stride 4": "quality-cpu-quick-decoder-stride4.json",
            "decoder stride 2": "quality-cpu-quick-decoder-stride2.json",
        },
    },
]


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _problems(report: dict) -> list[str]:
    from benchmarks.render_common import provenance_problems

    return provenance_problems(report)


def decide(decision: dict[str, Any]) -> dict[str, Any]:
    """One decision re-made on validation figures, or withdrawn with what is missing."""
    missing: list[str] = []
    evidence: dict[str, dict[str, Any]] = {}
    for label, name in decision["candidates"].items():
        report = _load(name)
        if report is None:
            missing.append(f"{label}: {name} is not in benchmarks/results/")
            continue
        if problems := _problems(report):
            missing.append(f"{label}: {name}: {'; '.join(problems)}")
            continue
        runs = report.get("results", [])
        vals = {r.get("train_seed"): r.get("best_val_mean_iou") for r in runs}
        if not runs or any(v is None for v in vals.values()):
            missing.append(f"{label}: {name}: runs without a validation figure (best_val_mean_iou)")
            continue
        evidence[label] = {"file": name, "best_val_mean_iou_by_seed": vals,
                           "mean": round(statistics.fmean(vals.values()), 4)}
    base = {k: decision[k] for k in ("id", "question", "preset_today", "first_decided")}
    base["candidates"] = decision["candidates"]
    if missing:
        return {**base, "status": "withdrawn", "missing": missing,
                "verdict": "not decided on validation: the preset's setting rests on no committed measurement"}
    seeds = set.intersection(*(set(e["best_val_mean_iou_by_seed"]) for e in evidence.values()))
    paired = len(seeds) > 0 and all(len(e["best_val_mean_iou_by_seed"]) == len(seeds) for e in evidence.values())
    score = {label: (statistics.fmean(e["best_val_mean_iou_by_seed"][s] for s in sorted(seeds)) if paired
                     else e["mean"]) for label, e in evidence.items()}
    chosen = max(score, key=score.get)
    wins = {label: sum(evidence[chosen]["best_val_mean_iou_by_seed"][s] >= e["best_val_mean_iou_by_seed"][s]
                       for s in seeds) for label, e in evidence.items() if label != chosen} if paired else {}
    return {**base, "status": "decided", "on": "validation mean IoU (best_val_mean_iou), "
            + ("paired by training seed" if paired else "mean over each candidate's runs"),
            "evidence": evidence, "score": {k: round(v, 4) for k, v in score.items()}, "chosen": chosen,
            "chosen_not_lower_on_seeds": wins, "seeds": sorted(seeds, key=str)}


def decide_all() -> list[dict[str, Any]]:
    return [decide(d) for d in DECISIONS]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    from benchmarks.common import Machine, emit

    machine = Machine(probe=False)
    emit({"benchmark": "recipe-selection",
          "what": "each recipe decision re-made on the validation figures of committed results "
                  "(held-out figures are never read); withdrawn where that evidence is missing",
          "decisions": decide_all(),
          **machine.provenance(config_note="runs no PipelineConfig: reads committed result files")}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
