"""The transfer-learning tables in README.md and BENCHMARKS.md, rendered from committed results.

    .venv/bin/python benchmarks/transfer_report.py            # print the tables
    .venv/bin/python benchmarks/transfer_report.py --write    # replace them between the markers in both files

Every figure in the blocks between `<!-- transfer:begin -->` and `<!-- transfer:end -->` comes from
the JSON files named in RESULTS (written by `benchmarks/quality.py`, commands recorded inside them);
`tests/test_transfer_report.py` fails when a committed block differs from what this renders.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RANDOM = "transfer-random.json"  # cpu-quick, 3 training seeds, random split
KERAS = "transfer-random-keras-example.json"  # keras-example, same split
SCRATCH = "transfer-random-cpu-scratch-to-070.json"  # cpu-scratch, same split, stopped at held-out 0.70
OFFICIAL = "transfer-official-estimate.json"  # benchmarks/official_estimate.py
QUIET = "transfer-random-quiet.json"  # cpu-quick, seed 0 again, timed alone on a quiet machine
BREEDS = ("Abyssinian", "american_bulldog", "Bengal")
BREED = "transfer-breed-{}.json"  # cpu-quick, one breed held out
BEGIN, END = "<!-- transfer:begin -->", "<!-- transfer:end -->"


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def spread(values: list[float], digits: int = 3) -> str:
    """`0.781 (0.770-0.790)` over several runs, `0.781` for one."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def seconds(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "not reached"
    if len(vals) == 1:
        return f"{vals[0]:,.0f}"
    return f"{statistics.fmean(vals):,.0f} ({min(vals):,.0f}–{max(vals):,.0f})"


def _held_out(results: list[dict], key: str) -> list[float]:
    return [r["held_out"][key] for r in results if r.get("held_out")]


def random_split_table(quick: dict, keras: dict | None, scratch: dict | None) -> list[str]:
    rows = [
        "| recipe (runs) | held-out mean IoU | held-out foreground IoU | training s (wall) | training CPU-s | "
        "wall s to held-out 0.70 | CPU-s to 0.70 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report in (("`cpu-quick`", quick), ("`keras-example`", keras), ("`cpu-scratch`", scratch)):
        if report is None:
            continue
        rs = report["results"]
        stopped = all("stopped_at_held_out_mean_iou" in r for r in rs)
        stop_note = "; ".join(
            f"stopped after {r['train_cpu_seconds']:,.0f} CPU-s ({r['epochs_completed']} epochs), best so far "
            f"{r['curve'][-1]['held_out_mean_iou']:.3f} at model resolution"
            + ("" if r.get("reached") is False else f" (reached {r['stopped_at_held_out_mean_iou']:.2f})")
            for r in rs) if stopped else ""
        rows.append(
            f"| {label} ({len(rs)} seed{'s' if len(rs) > 1 else ''}: {', '.join(str(r['train_seed']) for r in rs)}) "
            f"| {spread(_held_out(rs, 'mean_iou')) if not stopped else stop_note} "
            f"| {spread(_held_out(rs, 'foreground_iou')) if not stopped else '—'} "
            f"| {seconds([r['train_seconds'] for r in rs]) if not stopped else '—'} "
            f"| {seconds([r['train_cpu_seconds'] for r in rs]) if not stopped else '—'} "
            f"| {seconds([r['seconds_to_held_out_070'] for r in rs])} "
            f"| {seconds([r['cpu_seconds_to_held_out_070'] for r in rs])} |"
        )
    return rows


def breed_table(reports: dict[str, dict]) -> list[str]:
    rows = ["| held-out breed (cpu-quick, seed 0) | train images | mean IoU | foreground IoU | training s (wall) |",
            "|---|---|---|---|---|"]
    means = []
    for breed, report in reports.items():
        (r,) = report["results"]
        means.append(r["held_out"]["mean_iou"])
        rows.append(f"| {breed} | {report['dataset']['splits'].get('train', 0)} | {r['held_out']['mean_iou']:.3f} "
                    f"| {r['held_out']['foreground_iou']:.3f} | {r['train_seconds']:,.0f} |")
    if means:
        rows.append(f"| **average of {len(means)}** | | **{statistics.fmean(means):.3f}** | | |")
    return rows


def render() -> str:
    quick, keras, scratch = load(RANDOM), load(KERAS), load(SCRATCH)
    breeds = {b: r for b in BREEDS if (r := load(BREED.format(b))) is not None}
    if quick is None:
        return "(no results yet: run the commands below)"
    lines = [
        f"Random split of `../shared/pets-sample` (split seed {quick['dataset']['seed']}: "
        f"{quick['dataset']['splits'].get('train', 0)} train / {quick['dataset']['splits'].get('val', 0)} val / "
        f"{quick['dataset']['splits'].get('test', 0)} held-out images). Held-out figures at original resolution "
        "with each preset's own evaluation settings (flip TTA for cpu-quick and cpu-scratch), mean (min–max) over "
        "the runs; times exclude held-out scoring. Machine: "
        f"{quick['machine']['cpu_model']}, {quick['machine']['cpus']} cores, load average "
        f"{quick['machine']['load_average'][0]:.1f} at the start and {quick['machine']['load_average_after'][0]:.1f} "
        "at the end (shared with other work: wall times are inflated, CPU-seconds less so).",
        "",
        *random_split_table(quick, keras, scratch),
    ]
    quick_070 = [r["cpu_seconds_to_held_out_070"] for r in quick["results"] if r.get("cpu_seconds_to_held_out_070")]
    scratch_070 = [r["cpu_seconds_to_held_out_070"] for r in (scratch or {}).get("results", [])
                   if r.get("cpu_seconds_to_held_out_070")]
    gave_up = [r["gave_up_after_cpu_seconds"] for r in (scratch or {}).get("results", [])
               if r.get("reached") is False and r.get("gave_up_after_cpu_seconds")]
    if quick_070 and scratch_070:
        lines += ["", f"Time to a held-out mean IoU of 0.70, in CPU-seconds: cpu-scratch / cpu-quick = "
                      f"{statistics.fmean(scratch_070):,.0f} / {statistics.fmean(quick_070):,.0f} = "
                      f"**{statistics.fmean(scratch_070) / statistics.fmean(quick_070):.1f}x** (target: at least 5x)."]
    elif quick_070 and gave_up:
        lines += ["", f"Time to a held-out mean IoU of 0.70, in CPU-seconds: cpu-scratch had not reached it after "
                      f"{gave_up[0]:,.0f} CPU-seconds (stopped there), cpu-quick took {statistics.fmean(quick_070):,.0f}: "
                      f"**more than {gave_up[0] / statistics.fmean(quick_070):.0f}x** (target: at least 5x)."]
    quiet = load(QUIET)
    if quiet:
        (q,) = quiet["results"]
        verdict = "met" if q["train_seconds"] <= 600 else f"missed by {q['train_seconds'] - 600:,.0f} s"
        lines += ["", f"Timed alone (nothing else running; load average {quiet['machine']['load_average'][0]:.1f} at "
                      f"the start, {quiet['machine']['load_average_after'][0]:.1f} at the end), the same cpu-quick "
                      f"recipe (seed {q['train_seed']}) trained in **{q['train_seconds']:,.0f} s** wall "
                      f"({q['train_cpu_seconds']:,.0f} CPU-s, {q['epochs_completed']} epochs) on this machine: the "
                      f"600 s target is {verdict}. It scored {q['held_out']['mean_iou']:.3f} / "
                      f"{q['held_out']['foreground_iou']:.3f} on the held-out images, and reached 0.70 after "
                      f"{q['seconds_to_held_out_070']:,.0f} s."]
    official = load(OFFICIAL)
    if official:
        lines += ["", f"On the official trainval split ({official['official']['train']:,} train / "
                      f"{official['official']['val']} val) the same budget is {official['official']['plan']['epochs']} "
                      f"epochs of {official['official']['plan']['images_per_epoch']:,} images (encoder frozen for "
                      f"{official['official']['plan']['frozen_epochs']}); from the measured costs (the runs above, and "
                      f"{official['forward_cpu_seconds_per_image'] * 1000:.1f} CPU-ms per validation image measured by "
                      f"`benchmarks/official_estimate.py`) training takes about "
                      f"{official['estimated_train_cpu_seconds_official']:,.0f} CPU-seconds there, "
                      f"{official['ratio_official_to_sample']:.2f}x the sample's (more validation images; the first "
                      f"pass also decodes {official['official']['train']:,} full-size JPEGs instead of "
                      f"{official['sample']['train']}, not included)."]
    if breeds:
        lines += ["", "Breed hold-out (`--split breed --holdout-breed B`: trained on the two other breeds, scored on "
                      "every image of B, original resolution, flip TTA):", "", *breed_table(breeds)]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"markers {BEGIN} ... {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="replace the blocks in README.md and BENCHMARKS.md")
    args = p.parse_args()
    block = render()
    if not args.write:
        print(block)
        return 0
    for name in ("README.md", "BENCHMARKS.md"):
        path = ROOT / name
        path.write_text(replace_block(path.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
