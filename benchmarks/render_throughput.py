"""BENCHMARKS.md, section 4, issue 20's training-throughput levers: rendered from `benchmarks/train_levers.py`
(steady-state images per CPU-second and CPU share of short interleaved trainings, each against `cpu-quick`
in the same round).

The rules, fixed before any of these figures was measured:

* a lever is **cheaper** when its images per CPU-second beat `cpu-quick`'s by at least `CHEAPER` (5%) in every
  round of the interleaved run;
* a cheaper lever is then trained as a whole recipe over three seeds (`benchmarks/quality.py`), and it keeps
  **equal quality** when its best validation mean IoU, paired by seed with `cpu-quick`'s, is on average no
  lower than `EQUAL_MEAN` and no seed is lower than `EQUAL_SEED`. Held-out figures never enter either rule.
"""

from __future__ import annotations

import statistics
from typing import Callable

from benchmarks.render_border import STRIDE4, TARGETS, _missed, _quality_rows, figures
from benchmarks.render_interleaved import INTERLEAVED_2, INTERLEAVED_13
from benchmarks.render_common import load, missing, provenance
from benchmarks.render_quality import CURRENT, WHOLE_ENCODER_224, spread

LEVERS = "train-levers.json"
CHEAPER = 1.05
EQUAL_MEAN = -0.003
EQUAL_SEED = -0.010
LEVERS_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                  "--set model.encoder_weights=<weights file> --out benchmarks/results/train-levers.json")


def cheaper(summary: dict) -> bool:
    """The lever beat the reference's images per CPU-second by CHEAPER in every round."""
    return min(summary["images_per_cpu_second_vs_reference_per_round"]) >= CHEAPER


def _levers_table(d: dict) -> tuple[str, list[str]]:
    """The lever run's header sentence and table (one row per variant, against `cpu-quick` of each round)."""
    ref = d["reference"]
    rows = ["| variant | what it changes | images per CPU-s | vs `cpu-quick` (per round) | images per wall s vs "
            "`cpu-quick` | CPU share (of 200%) | train steps' CPU share | cheaper (≥ "
            f"{CHEAPER:.2f}x every round) |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, s in d["summary"].items():
        v = d["variants"][name]
        change = ", ".join([f"`{x}`" for x in v["set"]] + [f"`{k}={val}`" for k, val in v["env"].items()]
                           + ([f"`cpu_share.py {' '.join(v['args'])}`"] if v.get("args") else [])) or "—"
        per_round = ", ".join(f"{x:.2f}" for x in s["images_per_cpu_second_vs_reference_per_round"])
        verdict = "reference" if name == ref else ("**yes**" if cheaper(s) else "no")
        rows.append(f"| `{name}` | {change} | {s['images_per_cpu_second']:.2f} | "
                    f"{s['images_per_cpu_second_vs_reference']:.2f}x ({per_round}) | "
                    f"{s['images_per_wall_second_vs_reference']:.2f}x | {s['cpu_share_percent']:.0f}% | "
                    f"{s['train_steps_cpu_share_percent']:.0f}% | {verdict} |")
    first = next(iter(d["variants"].values()))["runs"][0]
    head = (f"Each run: `cpu-quick` fine-tuning the whole model for {first['epochs_completed']} epochs "
            f"(`train.budget_images={d['budget_images']}`, `train.freeze_encoder_images={d['freeze_encoder_images']}`) "
            f"in a process of its own; the figures are the steady state after the first "
            f"{'epoch' if d['skip_epochs'] == 1 else str(d['skip_epochs']) + ' epochs'}, "
            "validation and epoch callbacks included; medians over "
            f"{min(s['rounds'] for s in d['summary'].values())} interleaved rounds, each ratio against `cpu-quick` "
            "of the same round. The train steps' CPU share is over the whole run.")
    return head, rows


def _lever_run(name: str, command: str, tail: Callable[[dict], str]) -> str:
    """A lever run's block: its table, what `tail` makes of the run, and its provenance (or how to make it)."""
    d = load(name)
    if d is None:
        return missing(name, command)
    head, rows = _levers_table(d)
    return head + "\n\n" + "\n".join(rows) + "\n\n" + tail(d) + "\n\n" + provenance(d, name) + "\n"


def train_levers() -> str:
    return _lever_run(LEVERS, LEVERS_COMMAND, _cheapest_goes_on)


def _cheapest_goes_on(d: dict) -> str:
    winners = [n for n, s in d["summary"].items() if n != d["reference"] and cheaper(s)]
    if winners:
        best = max(winners, key=lambda n: d["summary"][n]["images_per_cpu_second_vs_reference"])
        others = [n for n in winners if n != best]
        return (f"Cheaper by the rule: {', '.join(f'`{n}`' for n in winners)}. The cheapest, `{best}`, is trained "
                "as a whole recipe below and judged on validation"
                + (f"; {', '.join(f'`{n}`' for n in others)} were not trained whole." if others else "."))
    return f"No lever was {CHEAPER:.2f}x cheaper than `cpu-quick` in every round."


LEVERS_XLA = "train-levers-xla.json"
LEVERS_XLA_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                      "--set model.encoder_weights=<weights file> --variants cpu-quick xla "
                      "--out benchmarks/results/train-levers-xla.json")


def xla_lever() -> str:
    """XLA (`train.jit_compile=true`) against today's `cpu-quick`, in a lever run of its own: the CPU share it
    reaches, and what each image costs for it."""
    return _lever_run(LEVERS_XLA, LEVERS_XLA_COMMAND, _xla_verdict)


def _xla_verdict(d: dict) -> str:
    x, ref = d["summary"]["xla"], d["summary"][d["reference"]]
    verdict = ("cheaper by the rule" if cheaper(x) else
               f"**not** cheaper: each training image costs {1 / x['images_per_cpu_second_vs_reference']:.1f}x "
               "the CPU-seconds of `cpu-quick`'s")
    return (f"XLA keeps the cores busier ({x['cpu_share_percent']:.0f}% against {ref['cpu_share_percent']:.0f}%) "
            f"and is {verdict}, so `cpu-quick` keeps `train.jit_compile=false`.")


LEVERS_STEPS = "train-levers-steps.json"
LEVERS_STEPS_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                        "--set model.encoder_weights=<weights file> --variants cpu-quick steps-9 steps-27 "
                        "--out benchmarks/results/train-levers-steps.json")


def steps_lever() -> str:
    """Several train steps per call of the compiled function (`train.steps_per_execution`) against today's
    `cpu-quick`, in a lever run of its own; and where the whole run's CPU share falls below the steady state's."""
    return _lever_run(LEVERS_STEPS, LEVERS_STEPS_COMMAND, _steps_verdict)


def _steps_verdict(d: dict) -> str:
    ref = d["summary"][d["reference"]]
    variants = [n for n in d["summary"] if n != d["reference"]]
    won = [n for n in variants if cheaper(d["summary"][n])]
    ratios = ", ".join(f"`{n}` {d['summary'][n]['images_per_cpu_second_vs_reference']:.2f}x" for n in variants)
    verdict = (f"Cheaper by the rule: {', '.join(f'`{n}`' for n in won)}." if won else
               f"None is cheaper by the rule ({ratios} the images per CPU-second of `cpu-quick`), so `cpu-quick` "
               "keeps `train.steps_per_execution=1`.")
    shares = (f"`cpu-quick`'s CPU share: {ref['cpu_share_percent']:.0f}% in the steady state, "
              f"{ref['whole_run_cpu_share_percent']:.0f}% over the whole run (model build, the first epoch's "
              f"tracing and the end of the run included; {ref['whole_run_wall_seconds']:.0f} s wall, medians over "
              "the rounds).")
    return verdict + " " + shares


LEVERS_REPLICAS = "train-levers-replicas.json"
LEVERS_REPLICAS_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                           "--set model.encoder_weights=<weights file> --variants cpu-quick replicas-2 "
                           "replicas-2-threads-1-2 --out benchmarks/results/train-levers-replicas.json")


def replicas_lever() -> str:
    """The CPU split into two logical devices, training data-parallel on them, against today's `cpu-quick` in a
    lever run of its own: the CPU share it reaches, and what each image costs for it."""
    return _lever_run(LEVERS_REPLICAS, LEVERS_REPLICAS_COMMAND, _replicas_verdict)


def _replicas_verdict(d: dict) -> str:
    ref = d["summary"][d["reference"]]
    variants = [n for n in d["summary"] if n != d["reference"]]
    strategies = {f"{r['distribution']['strategy']} over {r['distribution']['replicas']} replicas"
                  for n in variants for r in d["variants"][n]["runs"]}
    won = [n for n in variants if cheaper(d["summary"][n])]
    parts = ", ".join(f"`{n}` {d['summary'][n]['images_per_cpu_second_vs_reference']:.2f}x the images per CPU-second "
                      f"at a CPU share of {d['summary'][n]['cpu_share_percent']:.0f}%" for n in variants)
    verdict = (f"Cheaper by the rule: {', '.join(f'`{n}`' for n in won)}." if won else
               f"None is cheaper by the rule ({parts}, against {ref['cpu_share_percent']:.0f}% for `cpu-quick`).")
    return f"Every replica run trained under {' and '.join(sorted(strategies))} (lineage.json). {verdict}"


LEVERS_DILATED = "train-levers-encoder-dilated.json"
LEVERS_DILATED_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                          "--set model.encoder_weights=<weights file> --variants cpu-quick encoder-dilated "
                          "--out benchmarks/results/train-levers-encoder-dilated.json")


def dilated_cost() -> str:
    """What the whole encoder at output stride 16 costs per training image, measured before its quality run."""
    return _lever_run(LEVERS_DILATED, LEVERS_DILATED_COMMAND, _dilated_verdict)


def _dilated_verdict(d: dict) -> str:
    s = d["summary"]["encoder-dilated"]
    return (f"Each training image costs {1 / s['images_per_cpu_second_vs_reference']:.2f}x the CPU-seconds of "
            f"`cpu-quick`'s (rounds: {', '.join(f'{1 / x:.2f}' for x in s['images_per_cpu_second_vs_reference_per_round'])}"
            "): the estimate fixed before the quality run below.")


LEVERS_FROZEN = "train-levers-frozen-prefix.json"
LEVERS_FROZEN_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                         "--set model.encoder_weights=<weights file> --variants cpu-quick frozen-4 frozen-8 "
                         "earlier-recipe --out benchmarks/results/train-levers-frozen-prefix.json")


def frozen_prefix_cost() -> str:
    """What the encoder frozen up to its /4 or /8 features saves per fine-tuning image, against cpu-quick and
    against the earlier recipe of issue 20's throughput target, measured before the quality run."""
    return _lever_run(LEVERS_FROZEN, LEVERS_FROZEN_COMMAND, _frozen_verdict)


def _frozen_verdict(d: dict) -> str:
    lines = []
    for name in ("frozen-4", "frozen-8"):
        s, ratios = d["summary"][name], over_earlier(d, name)
        lines.append(f"- `{name}`: {s['images_per_cpu_second_vs_reference']:.2f}x `cpu-quick`'s training images per "
                     f"CPU-second (rounds: {', '.join(f'{x:.2f}' for x in s['images_per_cpu_second_vs_reference_per_round'])}"
                     f"), {statistics.median(ratios):.2f}x the earlier recipe's (rounds: "
                     f"{', '.join(f'{x:.2f}' for x in ratios)}; the target ≥ {THROUGHPUT_TARGET:.1f}x), at a CPU "
                     f"share of {s['cpu_share_percent']:.0f}% against {d['summary'][d['reference']]['cpu_share_percent']:.0f}%.")
    return "\n".join(lines)


LEVERS_INPUT_SIZE = "train-levers-input-size.json"
LEVERS_INPUT_SIZE_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                             "--set model.encoder_weights=<weights file> --variants cpu-quick img-160 earlier-recipe "
                             "--out benchmarks/results/train-levers-input-size.json")
EARLIER = "earlier-recipe"  # cpu-quick as issue 20 found it: the reference of its throughput target
THROUGHPUT_TARGET = 1.5  # issue 20: training images per CPU-second against the cpu-quick it was filed on


def over_earlier(d: dict, name: str) -> list[float]:
    """Per round, `name`'s images per CPU-second over the earlier recipe's of the same round."""
    s = d["summary"]
    return [a / b for a, b in zip(s[name]["images_per_cpu_second_vs_reference_per_round"],
                                  s[EARLIER]["images_per_cpu_second_vs_reference_per_round"])]


def input_size_throughput() -> str:
    """cpu-quick at 224 px and at 160 px against the earlier cpu-quick in one lever run: issue 20's throughput
    target (training images per CPU-second, median of the per-round ratios)."""
    return _lever_run(LEVERS_INPUT_SIZE, LEVERS_INPUT_SIZE_COMMAND, _against_earlier)


def _against_earlier(d: dict) -> str:
    lines = []
    for name, label in ((d["reference"], "`cpu-quick` (224 px)"), ("img-160", "`cpu-quick` at 160 px")):
        ratios = over_earlier(d, name)
        median = statistics.median(ratios)
        verdict = "**met**" if median >= THROUGHPUT_TARGET else f"**missed** by {THROUGHPUT_TARGET - median:.2f}x"
        lines.append(f"- {label} over the earlier recipe: {median:.2f}x the training images per CPU-second "
                     f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); the target "
                     f"≥ {THROUGHPUT_TARGET:.1f}x: {verdict}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the cheaper recipe, trained whole

# The cheapest variant by the rule (the largest median ratio), trained as a whole recipe: three seeds, alone
RECIPE = "quality-cpu-quick-aspp128-bn-frozen-folded.json"  # the throughput recipe, 3 seeds (cpu-quick at 160 px)
RECIPE_VARIANT = "aspp-128-bn-frozen-folded"  # its name in train_levers.py
RECIPE_SETS = ("model.aspp_filters=128", "train.freeze_encoder_bn=true", "train.fold_frozen_bn=true")
RECIPE_COMMAND = ("for S in 0 1 2; do .venv/bin/python benchmarks/quality.py --source ../shared/pets-sample "
                  "--preset cpu-quick --train-seed $S --set model.encoder_weights=<weights file> "
                  + " ".join(f"--set {s}" for s in RECIPE_SETS) + " --out /tmp/r$S.json; done; "
                  ".venv/bin/python benchmarks/quality.py --merge /tmp/r0.json /tmp/r1.json /tmp/r2.json "
                  f"--out benchmarks/results/{RECIPE}")


def equal_quality(paired: list[float]) -> bool:
    """The rule of the module doc: paired validation differences, on average and per seed."""
    return sum(paired) / len(paired) >= EQUAL_MEAN and min(paired) >= EQUAL_SEED


def throughput_recipe() -> str:
    """The cheaper lever trained as a whole `cpu-quick` recipe over three seeds, one after the other alone:
    its validation quality against `cpu-quick`'s (paired by seed), then its held-out figures and one training's
    wall time and CPU share against issue 20's targets."""
    reports = {name: load(name) for name in (STRIDE4, RECIPE)}
    if reports[RECIPE] is None:
        return missing(RECIPE, RECIPE_COMMAND)
    if reports[STRIDE4] is None:
        return missing(STRIDE4, "see the block border-levers")
    base, cand = figures(reports[STRIDE4]), figures(reports[RECIPE])
    if base["seeds"] != cand["seeds"]:
        raise ValueError(f"{STRIDE4} and {RECIPE} must hold the same training seeds to be paired")
    label = "`cpu-quick` + " + " + ".join(f"`{s}`" for s in RECIPE_SETS)
    rows = _quality_rows((("`cpu-quick`", base), (label, cand)), timing=False)
    paired = [c - b for b, c in zip(base["best_val_mean_iou"], cand["best_val_mean_iou"])]
    verdict = ("**keeps equal quality** by the rule" if equal_quality(paired) else
               f"**does not keep equal quality** (the rule: mean ≥ {EQUAL_MEAN:+.3f} and every seed ≥ "
               f"{EQUAL_SEED:+.3f})")
    slowest, share = max(cand["train_seconds"]), min(cand["cpu_share"])
    probes = [m.get("machine", {}).get("peak_matmul_gflops_float32") for m in reports[RECIPE].get("merged_from", [])]
    probe = (f" The machine's float32 matmul probe at each training's start: "
             f"{', '.join(f'{x:.0f}' for x in probes)} GFLOP/s." if probes and all(probes) else "")
    timing = (f"Each of its trainings ran alone: {spread(cand['train_seconds'], 0)} s wall (target ≤ "
              f"{TARGETS['train_seconds']} s; slowest {slowest:,.0f} s: "
              f"{_missed(slowest, TARGETS['train_seconds'], False, ',.0f', ' s')}), a CPU share of the process tree of "
              f"{spread([100 * c for c in cand['cpu_share']], 0)}% (target ≥ {100 * TARGETS['cpu_share']:.0f}%; lowest "
              f"{100 * share:.0f}%: {_missed(100 * share, 100 * TARGETS['cpu_share'], True, '.0f', ' points')}), "
              f"{spread(cand['images_per_cpu_s'], 2)} training images per CPU-second." + probe)
    return "\n".join([
        *rows, "",
        "Minus `cpu-quick`, best validation mean IoU per seed: " + ", ".join(f"{d:+.3f}" for d in paired)
        + f" (mean {statistics.fmean(paired):+.4f}); it {verdict}. " + timing, "",
        provenance(reports[RECIPE], RECIPE), "", provenance(reports[STRIDE4], STRIDE4)])



# Progressive resizing (issue 20's lever): for each of three training seeds, cpu-quick as it is (224 px, 4,800
# images), then the same budget with its first 2,400 images at 160 px; both settings fixed before the run. A
# throughput lever, judged by the rules of the module doc: cheaper (images per CPU-second, every seed, in the same
# run) and equal quality on validation.
INTERLEAVED_4 = "quality-cpu-quick-interleaved-4.json"  # cpu-quick as it is: the fourth run's reference
PROGRESSIVE = "quality-cpu-quick-progressive.json"  # + train.progressive_img_size=160, train.progressive_images=2400
PROGRESSIVE_LABEL = ("`cpu-quick` + its first 2,400 images at 160 px (`train.progressive_img_size=160`, "
                     "`train.progressive_images=2400`)")
PROGRESSIVE_COMMAND = (".venv/bin/python benchmarks/quality.py --merge {0}-0.json {0}-1.json {0}-2.json "
                       "--out benchmarks/results/{1}")


def progressive() -> str:
    """Progressive resizing against cpu-quick as it is, three seeds in one interleaved run (`_throughput_lever`)."""
    return _throughput_lever(INTERLEAVED_4, PROGRESSIVE, PROGRESSIVE_LABEL, "progressive", "Progressive resizing")


# The encoder's first layers frozen for the whole run (issue 20's lever): for each of three training seeds,
# cpu-quick with train.freeze_encoder_stride=4 (fixed before the run), then cpu-quick as it is; judged as
# progressive resizing is.
INTERLEAVED_10 = "quality-cpu-quick-interleaved-10.json"  # cpu-quick as it is: the tenth run's reference
FROZEN_STRIDE4 = "quality-cpu-quick-frozen-stride4.json"  # + train.freeze_encoder_stride=4 (cpu-quick since)
FROZEN_STRIDE4_LABEL = "`cpu-quick` + its encoder frozen up to the /4 features (`train.freeze_encoder_stride=4`)"


def frozen_prefix() -> str:
    """The encoder frozen up to its /4 features against cpu-quick as it is, three seeds in one interleaved run
    (`_throughput_lever`)."""
    return _throughput_lever(INTERLEAVED_10, FROZEN_STRIDE4, FROZEN_STRIDE4_LABEL, "frozen4",
                             "The encoder frozen up to the /4 features")


def throughput_sentence(lever: str, base: dict[str, list[float]], cand: dict[str, list[float]],
                        adopted: str = "**becomes `cpu-quick`**", after_cost: str = "") -> str:
    """A throughput lever by the module doc's two rules, paired by training seed with the same run's cpu-quick
    (`figures` of each): per seed, the images per CPU-second against the reference's (cheaper?), `after_cost`, then
    the best validation mean IoU against it (equal quality?) and the verdict (`adopted` when both rules hold)."""
    speed = [c / b for b, c in zip(base["images_per_cpu_s"], cand["images_per_cpu_s"])]
    paired = [c - b for b, c in zip(base["best_val_mean_iou"], cand["best_val_mean_iou"])]
    is_cheaper, is_equal = min(speed) >= CHEAPER, equal_quality(paired)
    verdict = (f"so by the two rules it {adopted}" if is_cheaper and is_equal else
               "so by the rules it is **not adopted**: " + " and ".join(
                   part for part, failed in ((f"it is not {CHEAPER:.2f}x cheaper on every seed", not is_cheaper),
                                             ("it does not keep equal quality", not is_equal)) if failed))
    return (f"{lever} over `cpu-quick`, training images per CPU-second per seed (the same run): "
            + ", ".join(f"{x:.2f}x" for x in speed) + f" (cheaper: ≥ {CHEAPER:.2f}x on every seed: "
            + ("**yes**" if is_cheaper else "**no**") + ")." + after_cost + " Minus `cpu-quick`, best validation mean "
            "IoU per seed: " + ", ".join(f"{d:+.3f}" for d in paired) + f" (mean {statistics.fmean(paired):+.4f}; "
            f"equal quality: mean ≥ {EQUAL_MEAN:+.3f} and every seed ≥ {EQUAL_SEED:+.3f}: "
            + ("**yes**" if is_equal else "**no**") + f"); {verdict}.")


def _throughput_lever(reference: str, candidate: str, label: str, stem: str, lever: str) -> str:
    """A throughput lever against the same run's cpu-quick, paired by training seed: per seed, the images per
    CPU-second against the reference's (cheaper?) and the best validation mean IoU against it (equal quality?);
    held-out figures are shown, scored once, and choose nothing. `stem` names the lever's per-seed outputs."""
    names = {reference: "reference", candidate: stem}
    reports = {name: load(name) for name in names}
    gone = [name for name, d in reports.items() if d is None]
    if gone:
        return "\n\n".join(missing(n, PROGRESSIVE_COMMAND.format(names[n], n)) for n in gone)
    base, cand = figures(reports[reference]), figures(reports[candidate])
    if base["seeds"] != cand["seeds"]:
        raise ValueError(f"{reference} and {candidate} must hold the same training seeds to be paired")
    rows = _quality_rows((("`cpu-quick` (224 px, 4,800 images)", base), (label, cand)))
    return "\n".join([*rows, "", throughput_sentence(lever, base, cand), "",
        provenance(reports[reference], reference), "", provenance(reports[candidate], candidate)])


def presets_quality() -> str:
    """README.md, under the presets table: today's `cpu-quick` (bfloat16) against float32 (paired seeds, one
    interleaved run), float32 against the same recipe with its whole encoder fine-tuned (another), that recipe
    against 160 px (another interleaved run) and
    `cpu-quick` before issue 20 (validation, then held-out, scored once after training)."""
    reports = {name: load(name) for name in (CURRENT, INTERLEAVED_13, FROZEN_STRIDE4, INTERLEAVED_10,
                                             WHOLE_ENCODER_224, INTERLEAVED_2, STRIDE4)}
    levers = load(LEVERS)
    if any(d is None for d in reports.values()) or levers is None:
        return "Not measured yet: BENCHMARKS.md section 4 says how."
    f = {name: figures(d) for name, d in reports.items()}

    def cpu(name: str, over: str) -> float:
        return statistics.fmean(f[name]["train_cpu_seconds"]) / statistics.fmean(f[over]["train_cpu_seconds"])

    cheaper_by = levers["summary"][RECIPE_VARIANT]["images_per_cpu_second_vs_reference"]
    rows = ["| recipe | training seeds | best val mean IoU | held-out mean IoU | foreground IoU | border IoU "
            "| training cost |", "|---|---|---:|---:|---:|---:|---|"]
    for label, name, cost in (
            ("`cpu-quick` (today: 224 px, 4,800 images, its encoder frozen up to the /4 features, mixed bfloat16 on a "
             "CPU with native bfloat16)", CURRENT, f"{cpu(CURRENT, INTERLEAVED_13):.2f}x the CPU-seconds of float32, "
             "same run"),
            ("`cpu-quick` in float32 (before its precision decision)", FROZEN_STRIDE4,
             f"{cpu(FROZEN_STRIDE4, INTERLEAVED_10):.2f}x the CPU-seconds of the whole encoder fine-tuned, same run"),
            ("`cpu-quick` before its frozen prefix (224 px, 4,800 images, the whole encoder fine-tuned)",
             WHOLE_ENCODER_224, f"{cpu(WHOLE_ENCODER_224, INTERLEAVED_2):.2f}x the CPU-seconds of 160 px, same run"),
            ("`cpu-quick` at 160 px, 8,000 images (issue 20's throughput recipe)", INTERLEAVED_2,
             f"1.00x; {cheaper_by:.2f}x the training images per CPU-second of the recipe below (throughput run)"),
            ("`cpu-quick` before issue 20 (256-wide ASPP and decoder, BN trained after unfreezing)", STRIDE4, "—")):
        x = f[name]
        rows.append(f"| {label} | {', '.join(str(s) for s in x['seeds'])} | {spread(x['best_val_mean_iou'])} | "
                    f"{spread(x['held_out_mean_iou'])} | {spread(x['held_out_foreground_iou'])} | "
                    f"{spread(x['held_out_border_iou'])} | {cost} |")
    files = ", ".join(f"`benchmarks/results/{n}`" for n in (*reports, LEVERS))
    return ("\n".join(rows) + f"\n\nFrom {files} (machines, commits and commands in BENCHMARKS.md section 4).\n")
