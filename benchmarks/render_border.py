"""BENCHMARKS.md, section 4, "The border class and the decoder's output stride" (issue 20): rendered from two
`benchmarks/quality.py` outputs that ran side by side, the same seeds, on the sample's random split.

Each row gives its recipe's figures over the training seeds: the validation figure the choice is made on,
then the held-out ones (scored once per run, after training), the border's IoU on its own, and what
training cost: wall seconds, CPU-seconds of the process tree, the CPU share (CPU-seconds over wall seconds,
of the 200% two cores give) and training images per CPU-second. The ratios are against the first file's
recipe, measured in the same run.
"""

from __future__ import annotations

import math
import statistics

from benchmarks.render_common import load, missing, provenance
from benchmarks.render_quality import BREED, BREEDS, QUIET, spread

STRIDE4 = "quality-cpu-quick-decoder-stride4.json"  # cpu-quick as it is (DeepLabV3+ logits at /4)
STRIDE2 = "quality-cpu-quick-decoder-stride2.json"  # the same with model.decoder_stride=2
COMMAND = (".venv/bin/python benchmarks/quality.py --source ../shared/pets-sample --preset cpu-quick "
           "--train-seed 0 --train-seed 1 --train-seed 2 --set model.encoder_weights=<weights file>{} "
           "--out benchmarks/results/{}")
EXTRA = {STRIDE4: "", STRIDE2: " --set model.decoder_stride=2"}
# Issue 20's targets: on the random split's held-out images (the recipe chosen on validation), and for one
# training timed alone and the breed hold-outs (`alone_and_breeds`)
TARGETS = {"held_out_mean_iou": 0.80, "held_out_foreground_iou": 0.90, "held_out_border_iou": 0.62,
           "train_seconds": 600, "cpu_share": 1.80, "breed_mean_iou": 0.78}
HELD_OUT = ("held_out_mean_iou", "held_out_foreground_iou", "held_out_border_iou")
ADOPT_GAIN = 0.005  # the rule of render_levers.ADOPT_GAIN: a validation gain on every seed


def _images_seen(report: dict, run: dict) -> int:
    """Training images seen: completed epochs x whole batches of the train split (steps_per_epoch unset)."""
    batch = run["config"]["resolved"]["train"]["batch_size"]
    # one quality.py run names its dataset; a merge (`quality.py --merge`) names each merged run's
    dataset = report.get("dataset") or report["merged_from"][0]["dataset"]
    train = dataset["splits"]["train"]
    return run["epochs_completed"] * math.ceil(train / batch) * batch


def figures(report: dict) -> dict[str, list[float]]:
    """Per-seed figures of one quality report (train_seed order)."""
    runs = sorted(report["results"], key=lambda r: r["train_seed"])
    return {
        "seeds": [r["train_seed"] for r in runs],
        "best_val_mean_iou": [r["best_val_mean_iou"] for r in runs],
        "held_out_mean_iou": [r["held_out"]["mean_iou"] for r in runs],
        "held_out_foreground_iou": [r["held_out"]["foreground_iou"] for r in runs],
        "held_out_border_iou": [r["held_out"]["iou"]["border"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "train_cpu_seconds": [r["train_cpu_seconds"] for r in runs],
        "cpu_share": [r["train_cpu_seconds"] / r["train_seconds"] for r in runs],
        "images_per_cpu_s": [_images_seen(report, r) / r["train_cpu_seconds"] for r in runs],
    }


def _quality_rows(recipes: tuple[tuple[str, dict[str, list[float]]], ...], timing: bool = True) -> list[str]:
    """The table of `figures` per recipe; with `timing`, what training cost too."""
    head = "| recipe | seeds | best val mean IoU | held-out mean IoU | foreground IoU | border IoU |"
    rule = "|---|---|---:|---:|---:|---:|"
    if timing:
        head += " train wall s | train CPU-s | CPU share (of 200%) | images per CPU-s |"
        rule += "---:|---:|---:|---:|"
    rows = [head, rule]
    for label, f in recipes:
        row = (f"| {label} | {', '.join(map(str, f['seeds']))} | {spread(f['best_val_mean_iou'])} "
               f"| {spread(f['held_out_mean_iou'])} | {spread(f['held_out_foreground_iou'])} "
               f"| {spread(f['held_out_border_iou'])} |")
        if timing:
            row += (f" {spread(f['train_seconds'], 0)} | {spread(f['train_cpu_seconds'], 0)} "
                    f"| {spread([100 * c for c in f['cpu_share']], 0)}% | {spread(f['images_per_cpu_s'], 2)} |")
        rows.append(row)
    return rows


def _paired_sentence(label: str, base: dict[str, list[float]], cand: dict[str, list[float]]) -> str:
    """`cand` minus `base` in best validation mean IoU per seed, and whether it meets the adoption rule."""
    paired = [c - b for b, c in zip(base["best_val_mean_iou"], cand["best_val_mean_iou"])]
    verdict = ("**meets** the adoption rule" if min(paired) >= ADOPT_GAIN else
               f"**misses** the adoption rule (a gain of {ADOPT_GAIN} on every seed): its smallest gain is "
               f"{min(paired):+.3f}")
    return (f"{label}, best validation mean IoU per seed: {', '.join(f'{d:+.3f}' for d in paired)} "
            f"(mean {statistics.fmean(paired):+.4f}); it {verdict}.")


def border_levers() -> str:
    reports = {name: load(name) for name in (STRIDE4, STRIDE2)}
    gone = [name for name, d in reports.items() if d is None]
    if gone:
        return "\n\n".join(missing(name, COMMAND.format(EXTRA[name], name)) for name in gone)
    base, cand = (figures(reports[n]) for n in (STRIDE4, STRIDE2))
    rows = _quality_rows((("`cpu-quick` (decoder stride 4)", base), ("`cpu-quick` + `model.decoder_stride=2`", cand)))
    if base["seeds"] != cand["seeds"]:
        raise ValueError(f"{STRIDE4} and {STRIDE2} must hold the same training seeds to be paired")
    paired = [c - b for b, c in zip(base["best_val_mean_iou"], cand["best_val_mean_iou"])]
    speed = statistics.fmean(cand["images_per_cpu_s"]) / statistics.fmean(base["images_per_cpu_s"])
    best = max((base, cand), key=lambda f: statistics.fmean(f["best_val_mean_iou"]))
    verdict = ", ".join(f"{k.replace('_', ' ')} ≥ {t:g}: {'met' if (v := statistics.fmean(best[k])) >= t else 'not met'} "
                        f"({v:.3f})" for k, t in ((k, TARGETS[k]) for k in HELD_OUT))
    return "\n".join([
        *rows, "",
        f"Decoder stride 2 minus stride 4, best validation mean IoU per seed: "
        f"{', '.join(f'{d:+.3f}' for d in paired)} (mean {statistics.fmean(paired):+.4f}). Training images per "
        f"CPU-second, stride 2 over stride 4 in the same run: {speed:.2f}x. The recipe with the higher validation "
        f"mean against the issue's held-out targets: {verdict}. The CPU share is each process's while the two "
        f"trainings shared the two cores, so it does not measure the issue's share of one training alone.", "",
        provenance(reports[STRIDE4], STRIDE4), "", provenance(reports[STRIDE2], STRIDE2)])



# --------------------------------------------------------------------------- the border class weighted in the loss

BORDER_WEIGHT = "quality-cpu-quick-border-weight2.json"  # cpu-quick with train.class_weights=[1,1,2]
BORDER_WEIGHT_COMMAND = COMMAND.format(" --set 'train.class_weights=[1,1,2]'", BORDER_WEIGHT)


def border_weight() -> str:
    """The border class weighted 2x in both terms of the loss (a boundary-aware loss in its simplest form),
    against `cpu-quick` as it is (STRIDE4), paired by training seed on best validation mean IoU."""
    reports = {name: load(name) for name in (STRIDE4, BORDER_WEIGHT)}
    gone = [name for name, d in reports.items() if d is None]
    if gone:
        return "\n\n".join(missing(n, COMMAND.format(EXTRA[n], n) if n in EXTRA else BORDER_WEIGHT_COMMAND)
                           for n in gone)
    base, cand = (figures(reports[n]) for n in (STRIDE4, BORDER_WEIGHT))
    if base["seeds"] != cand["seeds"]:
        raise ValueError(f"{STRIDE4} and {BORDER_WEIGHT} must hold the same training seeds to be paired")
    rows = _quality_rows((("`cpu-quick`", base), ("`cpu-quick` + `train.class_weights=[1,1,2]`", cand)), timing=False)
    return "\n".join([
        *rows, "", _paired_sentence("Border weight 2 minus `cpu-quick`", base, cand), "",
        provenance(reports[BORDER_WEIGHT], BORDER_WEIGHT), "", provenance(reports[STRIDE4], STRIDE4)])


# --------------------------------------------------------------------------- timed alone, and the breed hold-outs


def quiet_command(name: str) -> str:
    """The command of one `cpu-quick` training on the random split (seed 0), timed alone, writing results/`name`."""
    return (".venv/bin/python benchmarks/quality.py --source ../shared/pets-sample --preset cpu-quick "
            "--train-seed 0 --set model.encoder_weights=<weights file> --out benchmarks/results/" + name)


def breed_command(seed: str, out: str) -> str:
    """The command of one `cpu-quick` breed hold-out (`{b}` left for the breed) with training seed `seed`."""
    return (".venv/bin/python benchmarks/quality.py --source ../shared/pets-sample --split breed "
            f"--holdout-breed {{b}} --preset cpu-quick --train-seed {seed} --set model.encoder_weights=<weights file> "
            f"--out {out}")


QUIET_COMMAND = quiet_command(QUIET)
BREED_COMMAND = breed_command("0", "benchmarks/results/transfer-breed-{b}.json")


def _missed(got: float, want: float, at_least: bool, fmt: str, unit: str = "") -> str:
    ok = got >= want if at_least else got <= want
    return "**met**" if ok else f"**missed** by {abs(want - got):{fmt}}{unit}"


IMG224_BREED = "quality-cpu-quick-img224-breed-{}.json"  # cpu-quick at 224 px before its frozen prefix, one breed
BREED_160 = "quality-cpu-quick-breed-{}.json"  # cpu-quick at 160 px (issue 20's throughput recipe), one breed held out


def _breed_table(label: str, breeds: dict[str, dict], *, timed: bool, verdict: bool = True) -> list[str]:
    """One row per held-out breed of `label`'s recipe, then their average against the issue's target."""
    head = f"| held-out breed ({label}, seed 0) | train images | best val mean IoU | held-out mean IoU | foreground IoU | border IoU |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if timed:
        head, rule = head + " train wall s | CPU share (of 200%) |", rule + "---:|---:|"
    rows, means = [head, rule], []
    for breed, report in breeds.items():
        (r,) = report["results"]
        means.append(r["held_out"]["mean_iou"])
        row = (f"| {breed} | {report['dataset']['splits'].get('train', 0)} | {r['best_val_mean_iou']:.3f} "
               f"| {r['held_out']['mean_iou']:.3f} | {r['held_out']['foreground_iou']:.3f} "
               f"| {r['held_out']['iou']['border']:.3f} |")
        if timed:
            row += f" {r['train_seconds']:,.0f} | {100 * figures(report)['cpu_share'][0]:.0f}% |"
        rows.append(row)
    avg = statistics.fmean(means)
    tail = (f"Average held-out mean IoU over the {len(means)} breeds ({label}): **{avg:.3f}**"
            + (f" (target ≥ {TARGETS['breed_mean_iou']:.2f}: {_missed(avg, TARGETS['breed_mean_iou'], True, '.3f')})"
               if verdict else "") + "."
            + ("" if len(breeds) == len(BREEDS) else f" Not measured: {', '.join(b for b in BREEDS if b not in breeds)}."))
    return ["\n".join(rows), tail]


IMG224_BREED_SEEDS = "quality-cpu-quick-img224-breed-{}-seeds.json"  # the same, training seeds 0, 1 and 2 merged
IMG224_BREED_SEEDS_COMMAND = (
    "for S in 1 2; do " + breed_command("$S", "breed-{b}-$S.json") + "; done; .venv/bin/python benchmarks/quality.py "
    "--merge benchmarks/results/" + IMG224_BREED.format("{b}") + " breed-{b}-1.json breed-{b}-2.json --out "
    "benchmarks/results/" + IMG224_BREED_SEEDS.format("{b}"))


def _breed_seeds_table(label: str, breeds: dict[str, dict]) -> list[str]:
    """One row per held-out breed over its training seeds (mean, min-max), then the average over the breeds of
    each seed, and their mean and spread against the issue's target."""
    rows = [f"| held-out breed ({label}) | seeds | train images | best val mean IoU | held-out mean IoU "
            "| foreground IoU | border IoU |", "|---|---|---:|---:|---:|---:|---:|"]
    per_seed: dict[int, list[float]] = {}
    for breed, report in breeds.items():
        f = figures(report)
        for seed, value in zip(f["seeds"], f["held_out_mean_iou"]):
            per_seed.setdefault(seed, []).append(value)
        datasets = {m["dataset"]["key"]: m["dataset"] for m in report["merged_from"]}
        if len(datasets) != 1:
            raise ValueError(f"{breed}: the merged runs trained on {len(datasets)} datasets; expected one")
        (dataset,) = datasets.values()
        rows.append(f"| {breed} | {', '.join(map(str, f['seeds']))} | {dataset['splits'].get('train', 0)} "
                    f"| {spread(f['best_val_mean_iou'])} | {spread(f['held_out_mean_iou'])} "
                    f"| {spread(f['held_out_foreground_iou'])} | {spread(f['held_out_border_iou'])} |")
    complete = {seed: v for seed, v in sorted(per_seed.items()) if len(v) == len(breeds)}
    averages = [statistics.fmean(v) for v in complete.values()]
    mean = statistics.fmean(averages)
    target = TARGETS["breed_mean_iou"]
    tail = (f"Average held-out mean IoU over the {len(breeds)} breeds ({label}), per training seed: "
            + ", ".join(f"seed {seed} {a:.3f}" for seed, a in zip(complete, averages))
            + f"; over the seeds **{mean:.3f}** ({min(averages):.3f}–{max(averages):.3f}; target ≥ {target:.2f}: "
            f"{_missed(mean, target, True, '.3f')}).")
    return ["\n".join(rows), tail]


FROZEN_QUIET = "quality-cpu-quick-frozen-alone.json"  # cpu-quick with its frozen prefix (stride 4), timed alone
FROZEN_BREED_SEEDS = "quality-cpu-quick-frozen-breed-{}-seeds.json"  # the same, one breed held out, seeds 0-2 merged
FROZEN_QUIET_COMMAND = quiet_command(FROZEN_QUIET)
FROZEN_BREED_SEEDS_COMMAND = (
    "for S in 0 1 2; do " + breed_command("$S", "breed-{b}-$S.json") + "; done; .venv/bin/python benchmarks/quality.py "
    "--merge breed-{b}-0.json breed-{b}-1.json breed-{b}-2.json --out benchmarks/results/"
    + FROZEN_BREED_SEEDS.format("{b}"))
IMG224_QUIET = "quality-cpu-quick-img224-alone.json"  # cpu-quick at 224 px before its frozen prefix, timed alone
QUIET_160 = "quality-cpu-quick-alone.json"  # cpu-quick at 160 px (issue 20's throughput recipe), seed 0, timed alone
IMG224_QUIET_COMMAND = quiet_command(IMG224_QUIET)
IMG224_BREED_COMMAND = breed_command("0", "benchmarks/results/" + IMG224_BREED.format("{b}"))


def _alone(label: str, report: dict) -> str:
    """One training timed alone: wall seconds and the process tree's CPU share against the issue's targets."""
    (q,) = report["results"]
    f = figures(report)
    share = f["cpu_share"][0]
    m = report["machine"]
    return (
        f"{label} timed alone (nothing else ran; load average {m['load_average'][0]:.1f} at the start, "
        f"{m['load_average_after'][0]:.1f} at the end, on {m['cpu_model']}, {m['cpus']} cores), seed "
        f"{q['train_seed']} on the random split trained in **{q['train_seconds']:,.0f} s** wall "
        f"({q['epochs_completed']} epochs; target ≤ {TARGETS['train_seconds']} s: "
        f"{_missed(q['train_seconds'], TARGETS['train_seconds'], False, ',.0f', ' s')}), "
        f"{q['train_cpu_seconds']:,.0f} CPU-seconds of the process tree: a CPU share of **{100 * share:.0f}%** of "
        f"the 200% two cores give (target ≥ {100 * TARGETS['cpu_share']:.0f}%: "
        f"{_missed(100 * share, 100 * TARGETS['cpu_share'], True, '.0f', ' points')}), "
        f"{f['images_per_cpu_s'][0]:.2f} training images per CPU-second. Best validation mean IoU "
        f"{q['best_val_mean_iou']:.3f}; held-out (scored once, after training) mean IoU "
        f"{q['held_out']['mean_iou']:.3f}, foreground {q['held_out']['foreground_iou']:.3f}, border "
        f"{q['held_out']['iou']['border']:.3f}.")


def _frozen(quiet: dict | None, seeds: dict[str, dict]) -> list[str]:
    """cpu-quick in float32 (its encoder's first layers frozen for the whole run), the recipe before its precision
    decision: one training timed alone, then the breed hold-outs over three training seeds, each against the issue's
    targets. Today's cpu-quick (mixed bfloat16 on a CPU with native bfloat16) has not been timed alone or held out
    by breed; the block says so first."""
    label = ("`cpu-quick` in float32 (224 px, encoder frozen up to its /4 features, 4,800 images; before its "
             "precision decision)")
    parts = ["Today's `cpu-quick` (mixed bfloat16 on a CPU with native bfloat16, since issue 20's thirteenth "
             "interleaved run) is not timed alone or held out by breed yet: its trainings in that run are in \"The "
             "frozen encoder phase and bfloat16\" above. The figures below are the float32 recipe's.",
             missing(FROZEN_QUIET, FROZEN_QUIET_COMMAND) if quiet is None else _alone(label, quiet)]
    if len(seeds) < len(BREEDS):
        return parts + [missing(FROZEN_BREED_SEEDS.format(b), FROZEN_BREED_SEEDS_COMMAND.format(b=b))
                        for b in BREEDS if b not in seeds]
    trained = sorted({seed for r in seeds.values() for seed in figures(r)["seeds"]})
    return [*parts, "Breed hold-out for `cpu-quick` in float32 (`--split breed --holdout-breed B`: trained and "
            "validated on the two other breeds, scored once after training on every image of B, original "
            f"resolution, flip TTA), training seeds {', '.join(map(str, trained))} per breed, run one after the "
            "other after the training timed alone; the table gives no wall seconds or CPU shares, the timing is "
            "the run above:",
            *_breed_seeds_table("`cpu-quick` in float32", seeds)]


def alone_and_breeds() -> str:
    """Issue 20's timing of one cpu-quick training alone (wall seconds, the process tree's CPU share) and the breed
    hold-outs (mean IoU on a breed training never saw): today's recipe (`_frozen`), the 224-px recipe before its frozen
    prefix, the 160-px one and the earlier one, each against the issue's targets."""
    quiet, quiet_160, img224_quiet = load(QUIET), load(QUIET_160), load(IMG224_QUIET)
    breeds = {b: r for b in BREEDS if (r := load(BREED.format(b))) is not None}
    breeds_160 = {b: r for b in BREEDS if (r := load(BREED_160.format(b))) is not None}
    img224 = {b: r for b in BREEDS if (r := load(IMG224_BREED.format(b))) is not None}
    img224_seeds = {b: r for b in BREEDS if (r := load(IMG224_BREED_SEEDS.format(b))) is not None}
    frozen_quiet = load(FROZEN_QUIET)
    frozen_seeds = {b: r for b in BREEDS if (r := load(FROZEN_BREED_SEEDS.format(b))) is not None}
    parts: list[str] = [*_frozen(frozen_quiet, frozen_seeds),
        missing(IMG224_QUIET, IMG224_QUIET_COMMAND) if img224_quiet is None
        else _alone("`cpu-quick` at 224 px before its frozen prefix (4,800 images)", img224_quiet),
        *([] if quiet_160 is None else [_alone("`cpu-quick` at 160 px (issue 20's throughput recipe)", quiet_160)]),
        missing(QUIET, QUIET_COMMAND) if quiet is None else _alone("The earlier `cpu-quick`", quiet)]
    if len(img224_seeds) == len(BREEDS):
        seeds = sorted({seed for r in img224_seeds.values() for seed in figures(r)["seeds"]})
        later = " and ".join(str(seed) for seed in seeds if seed != 0)
        parts.append("Breed hold-out (`--split breed --holdout-breed B`: trained and validated on the two other "
                     "breeds, scored once after training on every image of B, original resolution, flip TTA), "
                     f"training seeds {', '.join(map(str, seeds))} per breed for the 224-px recipe before its "
                     "frozen prefix (seed 0 is the run of "
                     f"the one-seed table that follows, merged with seed{'s' if len(seeds) > 2 else ''} {later}):")
        parts += _breed_seeds_table("`cpu-quick`, 224 px", img224_seeds)
        commits = sorted({m["commit"][:10] for r in img224_seeds.values() for m in r["merged_from"]})
        parts.append(f"The runs of seed{'s' if len(seeds) > 2 else ''} {later} ran one after the other"
                     + ("" if len(commits) == 1 else f", at a later commit than seed 0's (the merged runs' commits: "
                        f"{', '.join(f'`{c}`' for c in commits)}; the notes after this block say what changed between them)")
                     + ". The table gives no wall seconds or CPU shares: the issue's timing targets are for the random "
                     "split's training timed alone, above.")
    else:
        parts += [missing(IMG224_BREED_SEEDS.format(b), IMG224_BREED_SEEDS_COMMAND.format(b=b))
                  for b in BREEDS if b not in img224_seeds]
    parts.append("Breed hold-out, one training seed per breed:")
    if img224:
        parts += _breed_table("`cpu-quick`, 224 px", img224, timed=False)
        parts.append("The 224-px hold-outs ran one after the other with the machine to themselves, apart from this "
                     "repository's own short tests, rendering and a gallery checked by hand; so their wall seconds "
                     "and CPU shares are not given.")
    parts += [missing(IMG224_BREED.format(b), IMG224_BREED_COMMAND.format(b=b)) for b in BREEDS if b not in img224]
    if breeds_160:
        parts += _breed_table("`cpu-quick` at 160 px", breeds_160, timed=False)
        parts.append("The 160-px `cpu-quick` hold-outs ran one after the other while another training shared the "
                     "machine, so their wall seconds and CPU shares are not given.")
    if breeds:
        parts += _breed_table("the earlier `cpu-quick`", breeds, timed=True, verdict=False)
        parts.append("The earlier recipe's hold-outs ran one after the other alone.")
    else:
        parts += [missing(BREED.format(b), BREED_COMMAND.format(b=b)) for b in BREEDS]
    named = ((FROZEN_QUIET, frozen_quiet), *((FROZEN_BREED_SEEDS.format(b), r) for b, r in frozen_seeds.items()),
             (IMG224_QUIET, img224_quiet), *((IMG224_BREED_SEEDS.format(b), r) for b, r in img224_seeds.items()),
             *((IMG224_BREED.format(b), r) for b, r in img224.items()),
             (QUIET_160, quiet_160), *((BREED_160.format(b), r) for b, r in breeds_160.items()),
             (QUIET, quiet), *((BREED.format(b), r) for b, r in breeds.items()))
    parts += [provenance(d, n) for n, d in named if d is not None]
    return "\n\n".join(parts)
