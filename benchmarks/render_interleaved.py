"""BENCHMARKS.md, section 4, issue 20's interleaved runs: for each training seed, the recipes of a run one after
the other, each with the machine to itself, so that their figures compare; each lever is paired with the run's
own `cpu-quick` by training seed on best validation mean IoU and judged by the adoption rule (render_border.py's
figures, rows and paired sentence).
"""

from __future__ import annotations

import statistics
from typing import Callable

from benchmarks.render_border import (TARGETS, IMG224_QUIET, IMG224_QUIET_COMMAND, _missed, _paired_sentence,
                                      _quality_rows, figures)
from benchmarks.render_common import load, missing, provenance
from benchmarks.render_quality import WHOLE_ENCODER_224


# --------------------------------------------------------------------------- two levers at equal training CPU

# One interleaved run (`equal_cpu`): for each training seed, cpu-quick as it is, then the U-Net decoder, then
# 224-pixel inputs, one after the other with the machine to itself; the candidates' image budgets were cut
# before the run for about cpu-quick's training CPU. Each file merges its recipe's three seeds.
INTERLEAVED = "quality-cpu-quick-interleaved.json"  # cpu-quick as it is: the run's reference
UNET = "quality-cpu-quick-unet-mobilenetv2.json"  # model.name=unet, train.budget_images=3500
IMG224 = "quality-cpu-quick-img224.json"  # train.img_size=224, train.budget_images=4100
# file -> (its row's label, the name of the per-seed outputs it merges)
EQUAL_CPU = {INTERLEAVED: ("`cpu-quick` (DeepLabV3+, 160 px, 8,000 images)", "reference"),
             UNET: ("`cpu-quick` + `model.name=unet`, 3,500 images", "unet"),
             IMG224: ("`cpu-quick` + `train.img_size=224`, 4,100 images", "img224")}
EQUAL_CPU_COMMAND = (".venv/bin/python benchmarks/quality.py --merge {0}-0.json {0}-1.json {0}-2.json "
                     "--out benchmarks/results/{1}")


def equal_cpu() -> str:
    """Issue 20's decoder lever (segmentation_models' U-Net decoder on the same MobileNetV2 encoder) and a
    resolution lever (224-pixel inputs), each against cpu-quick as it is, trained in one interleaved run at about
    the same training CPU, paired by training seed on best validation mean IoU."""
    return _interleaved(EQUAL_CPU, INTERLEAVED, EQUAL_CPU_COMMAND)


# A second interleaved run (`input_size`): for each of five training seeds, cpu-quick as it is, then 224-pixel
# inputs with the budget set before the run for cpu-quick's training CPU (the first run's 224-pixel recipe
# spent 0.85x of it at 4,100 images).
INTERLEAVED_2 = "quality-cpu-quick-interleaved-2.json"  # cpu-quick as it is: the second run's reference
# the candidate, train.img_size=224 and train.budget_images=4800, was cpu-quick until its frozen prefix
INPUT_SIZE = {INTERLEAVED_2: ("`cpu-quick` at 160 px, 8,000 images (the preset before this run)", "reference"),
              WHOLE_ENCODER_224: ("224 px, 4,800 images (`cpu-quick` since this run)", "img224b")}
INPUT_SIZE_COMMAND = (".venv/bin/python benchmarks/quality.py --merge {0}-0.json {0}-1.json {0}-2.json {0}-3.json "
                      "{0}-4.json --out benchmarks/results/{1}")


def input_size() -> str:
    """224-pixel inputs against cpu-quick as it is, at cpu-quick's training CPU, over five seeds in one
    interleaved run, paired by training seed on best validation mean IoU."""
    return _interleaved(INPUT_SIZE, INTERLEAVED_2, INPUT_SIZE_COMMAND, reference_word="160 px")


def _cpu_ratio(base: dict[str, list[float]], cand: dict[str, list[float]]) -> float:
    """The candidate's mean training CPU-seconds over the reference's, in the same run."""
    return statistics.fmean(cand["train_cpu_seconds"]) / statistics.fmean(base["train_cpu_seconds"])


def _interleaved(files: dict[str, tuple[str, str]], reference: str, command: str,
                 reference_word: str = "`cpu-quick`",
                 after: Callable[[dict[str, list[float]], dict[str, list[float]]], str] | None = None) -> str:
    """An interleaved run's table (reference first), each candidate's paired validation sentence with its
    training CPU against the reference's in the same run, what `after` makes of the reference's and the
    candidate's figures (one candidate), and every file's provenance."""
    reports = {name: load(name) for name in files}
    gone = [name for name, d in reports.items() if d is None]
    if gone:
        return "\n\n".join(missing(n, command.format(files[n][1], n)) for n in gone)
    f = {name: figures(d) for name, d in reports.items()}
    base = f[reference]
    table = "\n".join(_quality_rows(tuple((files[n][0], f[n]) for n in files)))
    lines: list[str] = []
    for name in files:
        if name == reference:
            continue
        cand = f[name]
        if base["seeds"] != cand["seeds"]:
            raise ValueError(f"{reference} and {name} must hold the same training seeds to be paired")
        lines.append(_paired_sentence(f"{files[name][0]} minus {reference_word}", base, cand)
                     + f" Its training CPU-seconds are {_cpu_ratio(base, cand):.2f}x {reference_word}'s in the same "
                     "run.")
        if after is not None:
            lines.append(after(base, cand))
    return "\n\n".join([table, *lines, *(provenance(reports[n], n) for n in files)])


CPU_QUICK_224 = "`cpu-quick` (224 px, 4,800 images)"  # the reference row of every run since the input-size decision


def _against_cpu_quick(reference: str, candidate: str, label: str, stem: str,
                       after: Callable[[dict[str, list[float]], dict[str, list[float]]], str] | None = None) -> str:
    """One lever against cpu-quick as it is, over three seeds in one interleaved run (`reference` is that run's
    cpu-quick, `stem` the name of the lever's per-seed outputs), paired by training seed on best validation mean
    IoU."""
    return _interleaved({reference: (CPU_QUICK_224, "reference"), candidate: (label, stem)}, reference,
                        EQUAL_CPU_COMMAND, after=after)


# A third interleaved run: for each of three training seeds, cpu-quick as it is (224 px), then the same with the
# boundary-aware loss term (segpipe.training.boundary_loss), its weight 1 and radius 8 fixed before the run.
INTERLEAVED_3 = "quality-cpu-quick-interleaved-3.json"  # cpu-quick as it is: the third run's reference
BOUNDARY = "quality-cpu-quick-boundary-loss.json"  # cpu-quick + train.boundary_loss_weight=1


def boundary_loss() -> str:
    return _against_cpu_quick(INTERLEAVED_3, BOUNDARY, "`cpu-quick` + `train.boundary_loss_weight=1` (radius 8 px)",
                              "boundary")


# A fifth interleaved run: for each of three training seeds, cpu-quick with the training-only edge head
# (segpipe.training.edge_head), its weight 1 and radius 8 fixed before the run, then cpu-quick as it is.
INTERLEAVED_5 = "quality-cpu-quick-interleaved-5.json"  # cpu-quick as it is: the fifth run's reference
EDGE_HEAD = "quality-cpu-quick-edge-head.json"  # cpu-quick + train.edge_head_weight=1


def edge_head() -> str:
    return _against_cpu_quick(INTERLEAVED_5, EDGE_HEAD, "`cpu-quick` + `train.edge_head_weight=1` (radius 8 px)",
                              "edge")


# A sixth interleaved run: for each of three training seeds, cpu-quick with a third more training images (6,400,
# not 4,800: the rest of the 600-s training target, fixed before the run), then cpu-quick as it is.
INTERLEAVED_6 = "quality-cpu-quick-interleaved-6.json"  # cpu-quick as it is: the sixth run's reference
BUDGET_6400 = "quality-cpu-quick-budget-6400.json"  # cpu-quick + train.budget_images=6400


def training_budget() -> str:
    """A longer cpu-quick training against cpu-quick as it is, over three seeds in one interleaved run, paired by
    training seed on best validation mean IoU; with the longer one's training time alone, estimated from today's
    cpu-quick timed alone and the two recipes' CPU ratio in this run, against the issue's 600-s target."""
    return _against_cpu_quick(INTERLEAVED_6, BUDGET_6400, "`cpu-quick` + `train.budget_images=6400`", "budget6400",
                              after=_estimated_alone)


def _estimated_alone(base: dict[str, list[float]], cand: dict[str, list[float]]) -> str:
    alone = load(IMG224_QUIET)
    if alone is None:
        return missing(IMG224_QUIET, IMG224_QUIET_COMMAND)
    (q,) = alone["results"]
    ratio = _cpu_ratio(base, cand)
    estimate = q["train_seconds"] * ratio
    return (f"Estimated alone: the reference's training timed alone ({q['train_seconds']:,.0f} s: `cpu-quick` at "
            f"224 px before its frozen prefix, in the one-training-alone block below) times this run's CPU ratio "
            f"({ratio:.2f}x) is {estimate:,.0f} s (target ≤ {TARGETS['train_seconds']} s: "
            f"{_missed(estimate, TARGETS['train_seconds'], False, ',.0f', ' s')}); an estimate, not a timing.")


# A seventh interleaved run: for each of three training seeds, cpu-quick with ASPP rates (3, 5, 8) (the paper's
# (6, 12, 18) scaled from its 33x33 map to cpu-quick's 14x14, fixed before the run), then cpu-quick as it is.
INTERLEAVED_7 = "quality-cpu-quick-interleaved-7.json"  # cpu-quick as it is: the seventh run's reference
RATES_358 = "quality-cpu-quick-aspp-rates-358.json"  # cpu-quick + model.aspp_rates=[3,5,8]


def aspp_rates() -> str:
    return _against_cpu_quick(INTERLEAVED_7, RATES_358, "`cpu-quick` + `model.aspp_rates=[3,5,8]`", "rates358",
                              after=_reference_alone)


# An eleventh interleaved run: for each of three training seeds, cpu-quick as it is (its encoder frozen up to the /4
# features), then the same with hue (±30°) and saturation (1 ± 0.6) jitter, the values the option was first tried
# with, fixed before the run. The decision cpu-quick-hue-saturation, withdrawn in issue 19 (it was made on a
# held-out breed's score), re-made on validation.
INTERLEAVED_11 = "quality-cpu-quick-interleaved-11.json"  # cpu-quick as it is: the eleventh run's reference
HUE_SATURATION = "quality-cpu-quick-hue-saturation.json"  # cpu-quick + train.aug_hue=30, train.aug_saturation=0.6


def hue_saturation() -> str:
    return _against_cpu_quick(INTERLEAVED_11, HUE_SATURATION,
                              "`cpu-quick` + `train.aug_hue=30`, `train.aug_saturation=0.6`", "huesat",
                              after=_reference_alone)


# A twelfth interleaved run: for each of three training seeds, cpu-quick as it is, then the same with its Dice term
# replaced by the Lovász-softmax loss (train.loss=sce+lovasz), a surrogate of each class's IoU loss; the loss's
# form (per image, present classes, equal weight to the cross-entropy) was fixed before the run.
INTERLEAVED_12 = "quality-cpu-quick-interleaved-12.json"  # cpu-quick as it is: the twelfth run's reference
LOVASZ = "quality-cpu-quick-lovasz.json"  # cpu-quick + train.loss=sce+lovasz


# A thirteenth interleaved run (render_remade.py renders it): for each of three training seeds, cpu-quick in float32
# as it was, then without its frozen encoder phase, then in mixed bfloat16 (cpu-quick's precision since).
INTERLEAVED_13 = "quality-cpu-quick-interleaved-13.json"  # cpu-quick in float32: the thirteenth run's reference


def lovasz() -> str:
    return _against_cpu_quick(INTERLEAVED_12, LOVASZ, "`cpu-quick` + `train.loss=sce+lovasz`", "lovasz",
                              after=_reference_alone)


def _reference_alone(base: dict[str, list[float]], cand: dict[str, list[float]]) -> str:
    """cpu-quick's own trainings of an interleaved run, each with the machine to itself, against the issue's
    timing targets (the machine is in the run's provenance line)."""
    slowest, lowest = max(base["train_seconds"]), 100 * min(base["cpu_share"])
    seconds, share = TARGETS["train_seconds"], 100 * TARGETS["cpu_share"]
    return (f"`cpu-quick`'s own trainings in this run, each with the machine to itself: "
            f"{statistics.fmean(base['train_seconds']):,.0f} s wall on average, the slowest {slowest:,.0f} s "
            f"(target ≤ {seconds} s: {_missed(slowest, seconds, False, ',.0f', ' s')}); "
            f"a CPU share of the process tree of {100 * statistics.fmean(base['cpu_share']):.0f}% on average, the "
            f"lowest {lowest:.0f}% (target ≥ {share:.0f}%: {_missed(lowest, share, True, '.0f', ' points')}). "
            "The one-training-alone block below timed the same recipe at another time; the provenance lines give "
            "each machine's matmul probe.")


# An eighth interleaved run: for each of three training seeds, cpu-quick at 288 px with 4,000 training images (about
# the sixth run's extra training CPU, spent on resolution instead of images; fixed before the run), then cpu-quick.
INTERLEAVED_8 = "quality-cpu-quick-interleaved-8.json"  # cpu-quick as it is: the eighth run's reference
IMG288 = "quality-cpu-quick-img288-4000.json"  # cpu-quick + train.img_size=288, train.budget_images=4000


def input_288() -> str:
    """Larger inputs again, at about the longer training's extra CPU: paired on validation, with the training
    time alone estimated as for the longer training."""
    return _against_cpu_quick(INTERLEAVED_8, IMG288, "`cpu-quick` + `train.img_size=288`, `train.budget_images=4000`",
                              "img288", after=_estimated_alone)


# A ninth interleaved run: for each of three training seeds, cpu-quick on the whole MobileNetV2 at output stride 16
# (model.encoder_tail=dilated: its last stage dilated, fixed before the run), then cpu-quick as it is.
INTERLEAVED_9 = "quality-cpu-quick-interleaved-9.json"  # cpu-quick as it is: the ninth run's reference
ENCODER_DILATED = "quality-cpu-quick-encoder-dilated.json"  # cpu-quick + model.encoder_tail=dilated


def encoder_dilated() -> str:
    """The whole encoder at output stride 16 against cpu-quick's encoder cut at block 13: paired on validation,
    with the training time alone estimated as for the longer training, and cpu-quick's own trainings in the run
    against the timing targets."""
    return _against_cpu_quick(INTERLEAVED_9, ENCODER_DILATED, "`cpu-quick` + `model.encoder_tail=dilated`",
                              "dilated", after=lambda base, cand: "\n\n".join(
                                  (_estimated_alone(base, cand), _reference_alone(base, cand))))
