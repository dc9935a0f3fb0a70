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

from benchmarks.render_common import load, missing, provenance

LEVERS = "train-levers.json"
CHEAPER = 1.05
EQUAL_MEAN = -0.003
EQUAL_SEED = -0.010
LEVERS_COMMAND = (".venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample "
                  "--set model.encoder_weights=<weights file> --out benchmarks/results/train-levers.json")


def cheaper(summary: dict) -> bool:
    """The lever beat the reference's images per CPU-second by CHEAPER in every round."""
    return min(summary["images_per_cpu_second_vs_reference_per_round"]) >= CHEAPER


def train_levers() -> str:
    d = load(LEVERS)
    if d is None:
        return missing(LEVERS, LEVERS_COMMAND)
    ref = d["reference"]
    rows = ["| variant | what it changes | images per CPU-s | vs `cpu-quick` (per round) | images per wall s vs "
            "`cpu-quick` | CPU share (of 200%) | train steps' CPU share | cheaper (≥ "
            f"{CHEAPER:.2f}x every round) |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, s in d["summary"].items():
        v = d["variants"][name]
        change = ", ".join([f"`{x}`" for x in v["set"]] + [f"`{k}={val}`" for k, val in v["env"].items()]) or "—"
        per_round = ", ".join(f"{x:.2f}" for x in s["images_per_cpu_second_vs_reference_per_round"])
        verdict = "reference" if name == ref else ("**yes**" if cheaper(s) else "no")
        rows.append(f"| `{name}` | {change} | {s['images_per_cpu_second']:.2f} | "
                    f"{s['images_per_cpu_second_vs_reference']:.2f}x ({per_round}) | "
                    f"{s['images_per_wall_second_vs_reference']:.2f}x | {s['cpu_share_percent']:.0f}% | "
                    f"{s['train_steps_cpu_share_percent']:.0f}% | {verdict} |")
    first = next(iter(d["variants"].values()))["runs"][0]
    head = (f"Each run: `cpu-quick` fine-tuning the whole model for {first['epochs_completed']} epochs "
            f"(`train.budget_images={d['budget_images']}`, `train.freeze_encoder_images={d['freeze_encoder_images']}`) "
            f"in a process of its own; the figures are the steady state after the first {d['skip_epochs']} epoch(s), "
            "validation and epoch callbacks included; medians over "
            f"{min(s['rounds'] for s in d['summary'].values())} interleaved rounds, each ratio against `cpu-quick` "
            "of the same round. The train steps' CPU share is over the whole run.")
    winners = [n for n, s in d["summary"].items() if n != ref and cheaper(s)]
    tail = ("Cheaper by the rule: " + ", ".join(f"`{n}`" for n in winners) + "; their quality as whole recipes "
            "is judged on validation below." if winners else
            f"No lever was {CHEAPER:.2f}x cheaper than `cpu-quick` in every round.")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + tail + "\n\n" + provenance(d, LEVERS) + "\n"
