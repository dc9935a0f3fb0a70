"""The quality blocks of BENCHMARKS.md (benchmarks/render.py renders them): the transfer-learning tables
(`transfer`, from the `benchmarks/quality.py` results named below), the one-paragraph summary that opens
section 4, the recipe decisions and the list of withdrawn results.

`.venv/bin/python benchmarks/transfer_report.py` prints the transfer tables alone.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

from benchmarks.render_common import REMEASURED, RESULTS, WITHDRAWN, load, missing, n0, provenance, provenance_problems

RANDOM = "transfer-random.json"  # the earlier cpu-quick, 3 training seeds, random split
# today's cpu-quick where its precision (auto) is bfloat16: a CPU with avx512_bf16, as in this run; 3 seeds, random
CURRENT = "quality-cpu-quick-bfloat16.json"
WHOLE_ENCODER_224 = "quality-cpu-quick-img224-4800.json"  # cpu-quick at 224 px before its frozen prefix, 5 seeds
BEFORE = "transfer-random-bf16.json"  # the same, with cpu-quick as it was before the roofline (section "Roofline")
KERAS = "transfer-random-keras-example.json"  # keras-example, same split
SCRATCH = "transfer-random-cpu-scratch.json"  # cpu-scratch, same split, stopped at a training CPU budget
OFFICIAL = "transfer-official-estimate.json"  # benchmarks/official_estimate.py
QUIET = "transfer-random-quiet.json"  # cpu-quick, seed 0 again, timed alone on a quiet machine
BREEDS = ("Abyssinian", "american_bulldog", "Bengal")
BREED = "transfer-breed-{}.json"  # cpu-quick, one breed held out


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


def random_split_table(quick: dict, keras: dict | None, scratch: dict | None, before: dict | None = None) -> list[str]:
    rows = [
        "| recipe (runs) | held-out mean IoU | held-out foreground IoU | training s (wall) | training CPU-s | "
        "wall s to held-out 0.70 | CPU-s to 0.70 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report in (("`cpu-quick`", quick), ("`cpu-quick` before the roofline (bfloat16, features resized)",
                                                    before), ("`keras-example`", keras), ("`cpu-scratch`", scratch)):
        if report is None:
            continue
        rs = report["results"]
        budget = [r["stopped_after_cpu_seconds"] for r in rs if r.get("stopped_after_cpu_seconds")]
        stop_note = f", stopped at a training budget of {budget[0]:,.0f} CPU-s" if budget else ""
        rows.append(
            f"| {label} ({len(rs)} seed{'s' if len(rs) > 1 else ''}: {', '.join(str(r['train_seed']) for r in rs)}"
            f"{stop_note}) "
            f"| {spread(_held_out(rs, 'mean_iou'))} "
            f"| {spread(_held_out(rs, 'foreground_iou'))} "
            f"| {seconds([r['train_seconds'] for r in rs])} "
            f"| {seconds([r['train_cpu_seconds'] for r in rs])} "
            f"| {seconds([r['seconds_to_held_out_070'] for r in rs])} "
            f"| {seconds([r['cpu_seconds_to_held_out_070'] for r in rs])} |"
        )
    return rows


def transfer() -> str:
    """BENCHMARKS.md section 4: the transfer-learning tables (random split, breed hold-outs, targets)."""
    quick, keras, scratch, before = load(RANDOM), load(KERAS), load(SCRATCH), load(BEFORE)
    breeds = {b: r for b in BREEDS if (r := load(BREED.format(b))) is not None}
    if quick is None:
        gone = [n for n in (RANDOM, BEFORE, KERAS, "transfer-random-cpu-scratch-to-070.json", QUIET, OFFICIAL,
                            *(BREED.format(b) for b in BREEDS)) if n in WITHDRAWN]
        return ("No quality result with full provenance: " + ", ".join(f"`{n}`" for n in gone) + " were withdrawn "
                "(the reasons are in BENCHMARKS.md, \"Withdrawn and re-measured\"). The commands in BENCHMARKS.md "
                "section 4 re-measure them with `benchmarks/quality.py`, which now touches the "
                "held-out split only after training ends and records each run's configuration digest.")
    lines = [
        f"Random split of `../shared/pets-sample` (split seed {quick['dataset']['seed']}: "
        f"{quick['dataset']['splits'].get('train', 0)} train / {quick['dataset']['splits'].get('val', 0)} val / "
        f"{quick['dataset']['splits'].get('test', 0)} held-out images). Held-out figures at original resolution "
        "with each preset's own evaluation settings (flip TTA for cpu-quick and cpu-scratch), mean (min–max) over "
        "the runs; the held-out split was scored only after training ended (the time to 0.70 from kept "
        "checkpoints). Machine: "
        f"{quick['machine']['cpu_model']}, {quick['machine']['cpus']} cores, load average "
        f"{quick['machine']['load_average'][0]:.1f} at the start and {quick['machine']['load_average_after'][0]:.1f} "
        "at the end (shared with other work: wall times are inflated, CPU-seconds less so).",
        "",
        *random_split_table(quick, keras, scratch, before),
    ]
    if before:
        lines += ["", "`cpu-quick` now trains in float32 with DeepLabV3+ resizing its logits, not its features (BENCHMARKS.md, "
                      "\"Roofline for training\"); the row before the roofline is the same recipe in bfloat16 with the "
                      "earlier layout, from another run (compare its quality; its times were taken at another load)."]
    quick_070 = [r["cpu_seconds_to_held_out_070"] for r in quick["results"] if r.get("cpu_seconds_to_held_out_070")]
    scratch_070 = [r["cpu_seconds_to_held_out_070"] for r in (scratch or {}).get("results", [])
                   if r.get("cpu_seconds_to_held_out_070")]
    gave_up = [r["stopped_after_cpu_seconds"] for r in (scratch or {}).get("results", [])
               if r.get("cpu_seconds_to_held_out_070") is None and r.get("stopped_after_cpu_seconds")]
    if quick_070 and scratch_070:
        lines += ["", f"Time to a held-out mean IoU of 0.70, in CPU-seconds: cpu-scratch / cpu-quick = "
                      f"{statistics.fmean(scratch_070):,.0f} / {statistics.fmean(quick_070):,.0f} = "
                      f"**{statistics.fmean(scratch_070) / statistics.fmean(quick_070):.1f}x** (target: at least "
                      f"{quick['target']['speedup_to_070']:g}x; the two were measured in different runs at different "
                      "loads, CPU-seconds being the figure that load moves least)."]
    elif quick_070 and gave_up:
        lines += ["", f"Time to a held-out mean IoU of 0.70, in CPU-seconds: cpu-scratch had not reached it after "
                      f"{gave_up[0]:,.0f} CPU-seconds (stopped there), cpu-quick took {statistics.fmean(quick_070):,.0f}: "
                      f"**more than {gave_up[0] / statistics.fmean(quick_070):.1f}x** (target: at least "
                      f"{quick['target']['speedup_to_070']:g}x; the two were measured in different runs at different "
                      "loads, CPU-seconds being the figure that load moves least)."]
    quiet = load(QUIET)
    if quiet or breeds:
        lines += ["", "The timing of one `cpu-quick` training alone and the breed hold-outs are in \"One training "
                      "alone, and the breed hold-outs (issue 20)\" below, with their files and commands; the targets "
                      "table here reads them too."]
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
    lines += ["", *targets_table(quick, breeds, quiet, quick_070, scratch_070, gave_up)]
    lines += ["", "Each file, the command that wrote it (to the path named in it; copied here unchanged), the "
                  "commit and the machine:", ""]
    for name in (RANDOM, BEFORE, KERAS, SCRATCH, OFFICIAL):
        if (data := load(name)) is not None:
            lines.append(f"* {provenance(data, name)}")
    return "\n".join(lines)


def targets_table(quick: dict, breeds: dict[str, dict], quiet: dict | None, quick_070: list[float],
                  scratch_070: list[float], gave_up: list[float]) -> list[str]:
    """The issue's targets (recorded in each result as `target`) against the figures above: met, or by how much
    they were missed."""
    target = quick["target"]
    rows = ["| target | measured | verdict |", "|---|---|---|"]

    def row(what: str, got: float | None, want: float, fmt: str, at_least: bool = True, unit: str = "") -> None:
        if got is None:
            rows.append(f"| {what} | not measured | — |")
            return
        ok = got >= want if at_least else got <= want
        rows.append(f"| {what} | {got:{fmt}}{unit} | " + ("**met**" if ok else
                    f"**missed** by {abs(want - got):{fmt}}{unit}") + " |")

    means = _held_out(quick["results"], "mean_iou")
    fgs = _held_out(quick["results"], "foreground_iou")
    n = len(quick["results"])
    row(f"held-out mean IoU ≥ {target['mean_iou']:.2f} (cpu-quick, mean of {n})",
        statistics.fmean(means) if means else None, target["mean_iou"], ".3f")
    row(f"held-out foreground IoU ≥ {target['foreground_iou']:.2f} (cpu-quick, mean of {n})",
        statistics.fmean(fgs) if fgs else None, target["foreground_iou"], ".3f")
    breed_means = [r["held_out"]["mean_iou"] for b in breeds.values() for r in b["results"]]
    row(f"breed hold-out mean IoU ≥ {target['breed_mean_iou']:.2f} (average of {len(breed_means)})",
        statistics.fmean(breed_means) if breed_means else None, target["breed_mean_iou"], ".3f")
    q = quiet["results"][0] if quiet else None
    row(f"cpu-quick training ≤ {target['train_seconds']:,} s wall (timed alone)",
        q["train_seconds"] if q else None,
        target["train_seconds"], ",.0f", at_least=False, unit=" s")
    speedup = target["speedup_to_070"]
    if quick_070 and scratch_070:
        row(f"CPU-s to held-out 0.70: cpu-scratch / cpu-quick ≥ {speedup:g}x",
            statistics.fmean(scratch_070) / statistics.fmean(quick_070), speedup, ".1f", unit="x")
    elif quick_070 and gave_up:
        bound = gave_up[0] / statistics.fmean(quick_070)
        rows.append(f"| CPU-s to held-out 0.70: cpu-scratch / cpu-quick ≥ {speedup:g}x | more than {bound:.1f}x "
                    f"(cpu-scratch stopped unreached) | " + ("**met**" if bound >= speedup else
                                                            "not decided (lower bound below the target)") + " |")
    else:
        rows.append(f"| CPU-s to held-out 0.70: cpu-scratch / cpu-quick ≥ {speedup:g}x | not measured | — |")
    return ["Against the targets (recorded in each result file as `target`):", "", *rows]


def quality_summary() -> str:
    """The one-paragraph answer to "how good" that opens BENCHMARKS.md section 4: cpu-quick's held-out figures
    (the section's table has the targets and the provenance)."""
    name = CURRENT
    d = load(name)
    if d is None:
        return missing(name, "BENCHMARKS.md section 4, \"Throughput levers\", gives the commands")
    s = d["summary"]["cpu-quick"]

    def spread(key: str, fmt: Callable = lambda v: f"{v:.3f}") -> str:
        x = s[key]
        return f"{fmt(x['mean'])} ({fmt(x['min'])}–{fmt(x['max'])})"

    m = d["machine"]
    return (f"`cpu-quick` over {s['runs']} training seeds, scored once after training on held-out images of "
            f"`../shared/pets-sample`'s random split at original resolution: mean IoU {spread('held_out.mean_iou')}, "
            f"foreground IoU {spread('held_out.foreground_iou')}; {spread('train_cpu_seconds', n0)} CPU-s of "
            f"training on {m['cpu_model']}, {m.get('cpus') or m.get('cores')} cores "
            f"(`benchmarks/results/{name}`, mixed bfloat16 on a CPU with native bfloat16; its provenance is under "
            "\"The frozen encoder phase and bfloat16\" below, and the table that follows gives the earlier `cpu-quick`).")


def recipe_selection() -> str:
    name = "recipe-selection.json"
    d = load(name)
    command = ".venv/bin/python benchmarks/recipe_selection.py --out benchmarks/results/recipe-selection.json"
    if d is None:
        return missing(name, command)
    rows = ["| decision | what the preset holds | first decided | re-made on validation |", "|---|---|---|---|"]
    for c in d["decisions"]:
        if c["status"] == "decided":
            scores = ", ".join(f"{k} {v:.3f}" for k, v in c["score"].items())
            verdict = f"**{c['chosen']}** ({c['on']}: {scores})"
        else:
            verdict = "**withdrawn**: " + "; ".join(c["missing"])
        rows.append(f"| {c['question']} | {c['preset_today']} | {c['first_decided']} | {verdict} |")
    return "\n".join([f"{d['what'][0].upper()}{d['what'][1:]}.", "", *rows, "", provenance(d, name)])


def withdrawn() -> str:
    """BENCHMARKS.md: the result files withdrawn (issue 19) and why; which files are rendered, and from what."""
    rows = ["| withdrawn result file | why |", "|---|---|"]
    rows += [f"| `{name}` | {why} |" for name, why in WITHDRAWN.items()]
    rows += [f"| `{name}` (the earlier file; re-measured, the file there now is a new run) | {why} |"
             for name, why in REMEASURED.items()]
    kept = {p.name: provenance_problems(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))}
    good = [f"`{k}`" for k, v in kept.items() if not v]
    bad = [f"`{k}` ({'; '.join(v)})" for k, v in kept.items() if v]
    return "\n".join([*rows, "", "Files in `benchmarks/results/` with full provenance (command, clean commit that "
                       "resolves here, machine, configurations): " + (", ".join(good) or "none") + "."
                       + (" Without it, not rendered: " + ", ".join(bad) + "." if bad else "")])
