"""BENCHMARKS.md, section 4: two settings of `cpu-quick` whose decisions were withdrawn for want of committed
evidence (`recipe_selection.py`: `cpu-quick-frozen-phase`, `cpu-quick-precision`), re-made in one interleaved run
(issue 20's thirteenth): for each of three training seeds, `cpu-quick` as it is, then without its frozen encoder
phase (`train.freeze_encoder_images=0`), then in mixed bfloat16 (`train.mixed_precision=bfloat16`), each training
with the machine to itself.

The rules were fixed before the run, and each is the one already used for a lever of its kind:

* dropping the frozen phase changes what the model learns: it is adopted only with a validation gain of at least
  `render_border.ADOPT_GAIN` on every seed (the quality levers' rule);
* mixed bfloat16 is offered for speed: it is adopted only when it is cheaper (`render_throughput.CHEAPER`, in
  training images per CPU-second, on every seed against the same run's `cpu-quick`) and keeps equal validation
  quality (`render_throughput.equal_quality`), the throughput levers' two rules.

Held-out columns are scored once per run, after training, and choose nothing.
"""

from __future__ import annotations

import statistics

from benchmarks.render_border import _paired_sentence, _quality_rows, figures
from benchmarks.render_common import load, missing, provenance
from benchmarks.render_interleaved import EQUAL_CPU_COMMAND, INTERLEAVED_13, _cpu_ratio, _reference_alone
from benchmarks.render_throughput import throughput_sentence

UNFROZEN = "quality-cpu-quick-no-frozen-phase.json"  # cpu-quick + train.freeze_encoder_images=0
BFLOAT16 = "quality-cpu-quick-bfloat16.json"  # cpu-quick + train.mixed_precision=bfloat16
# file -> (its row's label, the name of the per-seed outputs it merges)
FILES = {INTERLEAVED_13: ("`cpu-quick` in float32 as it was (224 px, 4,800 images)", "reference"),
         UNFROZEN: ("`cpu-quick` without its frozen encoder phase (`train.freeze_encoder_images=0`)", "unfrozen"),
         BFLOAT16: ("`cpu-quick` in mixed bfloat16 (`train.mixed_precision=bfloat16`)", "bf16")}


def _bfloat16_sentence(base: dict[str, list[float]], cand: dict[str, list[float]]) -> str:
    """Mixed bfloat16 by the throughput levers' two rules, paired by training seed with the run's cpu-quick."""
    share = (f" Its CPU share is {100 * statistics.fmean(cand['cpu_share']):.0f}% on average against `cpu-quick`'s "
             f"{100 * statistics.fmean(base['cpu_share']):.0f}%.")
    return throughput_sentence("Mixed bfloat16", base, cand, adopted="**becomes `cpu-quick`'s precision**",
                               after_cost=share)


def frozen_phase_precision() -> str:
    """The thirteenth interleaved run: the table, the frozen phase by the quality rule, bfloat16 by the throughput
    rules, cpu-quick's own trainings against the timing targets, and every file's provenance."""
    reports = {name: load(name) for name in FILES}
    gone = [name for name, d in reports.items() if d is None]
    if gone:
        return "\n\n".join(missing(n, EQUAL_CPU_COMMAND.format(FILES[n][1], n)) for n in gone)
    f = {name: figures(d) for name, d in reports.items()}
    base, unfrozen, bf16 = f[INTERLEAVED_13], f[UNFROZEN], f[BFLOAT16]
    for name in (UNFROZEN, BFLOAT16):
        if f[name]["seeds"] != base["seeds"]:
            raise ValueError(f"{INTERLEAVED_13} and {name} must hold the same training seeds to be paired")
    table = "\n".join(_quality_rows(tuple((label, f[name]) for name, (label, _) in FILES.items())))
    frozen = (_paired_sentence("Without the frozen phase, minus `cpu-quick`", base, unfrozen)
              + f" Its training CPU-seconds are {_cpu_ratio(base, unfrozen):.2f}x `cpu-quick`'s in the same run.")
    return "\n\n".join([table, frozen, _bfloat16_sentence(base, bf16), _reference_alone(base, bf16),
                        *(provenance(reports[n], n) for n in FILES)])
