"""Claims about quality computed from paired results, never written by hand.

`paired_claim(baseline, candidate)` compares two `benchmarks/quality.py` results run with the same training
seeds (a recipe and one changed knob): per seed, the candidate's validation mean IoU (`best_val_mean_iou`,
what recipes are chosen on) and its held-out mean IoU against the baseline's. It says "not lower" for a
figure only when the candidate scored at least the baseline's on every paired seed, and otherwise says on how
many seeds it scored lower and by how much on average. With either result missing it says that quality was
not measured, naming the files. `roofline.render_markdown` uses it for the quality column of the float32
candidates (float32 against mixed bfloat16, CLAIM_PAIRS).
"""

from __future__ import annotations

import statistics
from typing import Any

# knob -> (baseline result file, candidate result file): the paired quality runs a claim rests on
CLAIM_PAIRS: dict[str, tuple[str, str]] = {
    "float32": ("quality-cpu-quick-bfloat16.json", "quality-cpu-quick-interleaved-13.json"),
}
FIGURES = (("validation", lambda r: r.get("best_val_mean_iou")),
           ("held-out", lambda r: (r.get("held_out") or {}).get("mean_iou")))


def _by_seed(report: dict[str, Any], get) -> dict[Any, float]:
    return {r.get("train_seed"): v for r in report.get("results", []) if (v := get(r)) is not None}


def paired_claim(baseline: dict[str, Any] | None, candidate: dict[str, Any] | None,
                 names: tuple[str, str] = ("baseline", "candidate")) -> str:
    """"validation not lower on 3 of 3 seeds; held-out lower on 3 of 3 seeds (mean -0.0043)" and the like."""
    if baseline is None or candidate is None:
        gone = " and ".join(f"`{n}`" for n, r in zip(names, (baseline, candidate)) if r is None)
        return f"quality not measured with full provenance ({gone} not in benchmarks/results/)"
    parts = []
    for label, get in FIGURES:
        base, cand = _by_seed(baseline, get), _by_seed(candidate, get)
        seeds = sorted(set(base) & set(cand), key=str)
        if not seeds:
            parts.append(f"{label}: no paired seeds")
            continue
        lower = [s for s in seeds if cand[s] < base[s]]
        diff = statistics.fmean(cand[s] - base[s] for s in seeds)
        if lower:
            parts.append(f"{label} lower on {len(lower)} of {len(seeds)} seeds (mean {diff:+.4f})")
        else:
            parts.append(f"{label} not lower on {len(seeds)} of {len(seeds)} seeds (mean {diff:+.4f})")
    return "; ".join(parts)
