"""Every figure in README.md and BENCHMARKS.md, rendered from the committed results in benchmarks/results/.

    .venv/bin/python benchmarks/render.py            # print every block
    .venv/bin/python benchmarks/render.py --write    # rewrite the blocks in README.md and BENCHMARKS.md
    .venv/bin/python benchmarks/render.py --check    # exit 1, naming each block that differs

A block is the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; BLOCKS maps each NAME to the
function that renders it from JSON files written by the benchmark scripts. Measured figures appear only
inside blocks: `tests/test_figures.py` fails when a block differs from what this renders, or when the text
outside the blocks quotes a measured-looking number.

Strict provenance (`provenance_problems`): every result a block renders records the command that wrote it,
a commit that resolves in this repository and was clean (no `+uncommitted`), the machine, and the
configurations it ran (`configs`: preset, overrides, sha256 of the resolved PipelineConfig; or a
`config_note` saying it runs none). A result whose configuration digest differs from what its preset
resolves to today (`config_drift`) renders only when EARLIER_RECIPES labels it as an earlier recipe.
Results that failed these rules were withdrawn: they left benchmarks/results/ (git history keeps them) and
WITHDRAWN says which and why.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ("README.md", "BENCHMARKS.md")
MARKER = re.compile(r"<!-- ([a-z0-9-]+):begin -->\n(.*?)<!-- \1:end -->", re.S)
NOT_MEASURED = "Not measured yet: no committed result."

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- helpers


LOADED: set[str] = set()  # every result file a block has read (tests/test_figures.py checks each one)
REFUSED: dict[str, list[str]] = {}  # result files load() refused to render, with what they lack


def load(name: str) -> dict | None:
    """A committed result, or None when it is not there or lacks strict provenance (`provenance_problems`):
    no figure renders from a file without its command, clean commit, machine and configuration."""
    path = RESULTS / name
    if not path.is_file():
        return None
    LOADED.add(name)
    result = json.loads(path.read_text())
    if problems := provenance_problems(result):
        REFUSED[name] = problems
        return None
    return result


# --------------------------------------------------------------------------- provenance rules

# Result files withdrawn by issue 19 (strict provenance, held-out hygiene): removed from benchmarks/results/;
# `git show 62ee86f:benchmarks/results/NAME` shows each as it was. The reason is what it failed.
NO_CONFIG = "no configuration digest recorded"
WITHDRAWN: dict[str, str] = {
    **{name: "no command, commit or machine recorded (the from-scratch U-Net results of earlier versions); "
             "their recipe was selected on held-out scores"
       for name in ("quality.json", "quality-cpu-quick.json", "quality-cpu-quick-160-epochs.json",
                    "quality-breed.json", "quality-breed-cpu-quick.json", "quality-per-cpu-minute.json")},
    "quality-breed-cpu-quick-hue-saturation.json": "no command, commit or machine recorded; the hue/saturation "
                                                   "option was rejected on this held-out breed's score, and the "
                                                   "file holds no validation figure to re-make that on",
    "recipe-selection.json (hand-made)": "assembled by hand from training logs that were not committed; "
                                         "replaced by the output of benchmarks/recipe_selection.py",
    "transfer-random-quiet.json": f"{NO_CONFIG}; held-out scored during training",
    "transfer-official-estimate.json": f"{NO_CONFIG}; built on transfer-random.json",
    "transfer-random-bf16.json": "written at a `+uncommitted` commit; held-out scored during training",
    "transfer-random-keras-example.json": "written at a `+uncommitted` commit; held-out scored during training",
    "transfer-random-cpu-scratch-to-070.json": "written at a `+uncommitted` commit; stopped on held-out data "
                                               "(`--stop-at-held-out`)",
    **{f"transfer-breed-{b}.json": "written at a `+uncommitted` commit; held-out scored during training"
       for b in ("Abyssinian", "american_bulldog", "Bengal")},
    "transfer-quality-per-cpu-minute.json (and .png)": "written at a `+uncommitted` commit, merging the runs "
                                                       "above",
    "roofline.json": f"{NO_CONFIG}; its commit was recorded without the `+uncommitted` check; a re-run takes "
                     "longer than the time there was",
}

# Results whose configuration digest differs from what their preset resolves to today, rendered as an
# earlier recipe: file name -> the label the text gives them. Empty: every rendered result ran today's presets.
EARLIER_RECIPES: dict[str, str] = {}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def provenance_problems(result: dict) -> list[str]:
    """What a result lacks of strict provenance (empty: nothing): its command, a clean commit that resolves in
    this repository, the machine (CPU model, cores), and its configurations (`configs` or a `config_note`)."""
    problems = []
    if not result.get("command"):
        problems.append("no command")
    commit = str(result.get("commit") or "")
    if not commit:
        problems.append("no commit")
    elif commit.endswith("+uncommitted"):
        problems.append(f"commit {commit[:10]}+uncommitted: the code it ran is not in the repository")
    elif _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        problems.append(f"commit {commit[:10]} does not resolve in this repository")
    m = result.get("machine") or {}
    if not m.get("cpu_model") or not (m.get("cpus") or m.get("cores")):
        problems.append("no machine (CPU model and cores)")
    configs = result.get("configs")
    if configs is None or (not configs and not result.get("config_note")):
        problems.append("no configuration recorded (configs, or a config_note saying it runs none)")
    for c in configs or []:
        if not (isinstance(c, dict) and c.get("digest") and "preset" in c and "overrides" in c):
            problems.append(f"a configuration without preset, overrides and digest: {str(c)[:80]}")
    return problems


# The config sections each benchmark's measurement runs through (by the result's `benchmark`): a digest that
# differs from today's only in other sections (a promotion-gate field, for a benchmark that never runs the
# gate) is not drift. A benchmark not listed here counts every section.
MEASURED_SECTIONS: dict[str, tuple[str, ...]] = {
    "quality": ("preset", "data", "model", "train", "eval"),  # trains and evaluates; no promotion gate
    "inference": ("preset", "data", "model", "train", "eval"),  # builds the preset's model, predicts, evaluates
    "input_pipeline": ("preset", "data", "model", "train", "eval"),  # the preset's model and recipe in fit
    "orchestration": ("preset", "data", "model", "train", "eval"),  # `segpipe run`: the pipeline, no gate
    "transfer-official-estimate": ("preset", "data", "model", "train", "eval"),
}


def config_drift(result: dict) -> list[str]:
    """Each recorded configuration whose digest differs from what its preset and overrides resolve to today, in
    a section the benchmark's measurement runs through (MEASURED_SECTIONS; every section when not listed)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    from benchmarks.common import config_digest, resolve_config

    sections = MEASURED_SECTIONS.get(str(result.get("benchmark")))
    out = []
    for c in result.get("configs") or []:
        try:
            today_cfg = resolve_config(c["preset"], c["overrides"])
        except Exception as exc:  # noqa: BLE001 - a preset or field that no longer exists is drift too
            out.append(f"{c['preset']}: {c['overrides']} no longer resolves ({exc})")
            continue
        today = config_digest(today_cfg)
        if today == c["digest"]:
            continue
        fields = _changed_fields(c.get("resolved") or {}, today_cfg.model_dump(mode="json"))
        if c.get("resolved") and sections and not [f for f in fields if f.split(".")[0].split(":")[0] in sections]:
            continue  # only sections this benchmark never runs through changed
        out.append(f"{c['preset']} with {c['overrides']}: ran {c['digest'][:12]}, resolves to {today[:12]} "
                   f"today (fields changed: {', '.join(fields) or 'not recorded'})")
    return out


def _changed_fields(was: dict, now: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two resolved configs (added or removed too)."""
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def config_text(result: dict, name: str) -> str:
    """The configuration part of a provenance line: each preset run and its digest, or why there is none; an
    earlier recipe says so (EARLIER_RECIPES)."""
    configs = result.get("configs") or []
    if not configs:
        return f"Configuration: none ({result.get('config_note', 'not recorded')})."
    seen: dict[str, list[str]] = {}
    for c in configs:
        label = f"`{c['preset']}`" + (" with " + ", ".join(f"`{k}={v}`" for k, v in c["overrides"].items()
                                                            if not k.startswith(("data.source", "train.seed")))
                                     if any(not k.startswith(("data.source", "train.seed")) for k in c["overrides"])
                                     else "")
        seen.setdefault(label, [])
        if c["digest"][:12] not in seen[label]:
            seen[label].append(c["digest"][:12])
    parts = "; ".join(f"{label} (sha256 {', '.join(d)})" for label, d in seen.items())
    earlier = EARLIER_RECIPES.get(name)
    return f"Configuration: {parts}" + (f": **an earlier recipe**, {earlier}." if earlier else ".")


def n0(x: float) -> str:
    return f"{x:,.0f}"


def n1(x: float) -> str:
    return f"{x:,.1f}"


def n2(x: float) -> str:
    return f"{x:,.2f}"


def ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def verdict(got: float, target: float, *, at_least: bool = True, unit: str = "", fmt: Callable = n2) -> str:
    """`met` or `missed by D` (D in the target's unit)."""
    ok = got >= target if at_least else got <= target
    return "**met**" if ok else f"**missed** by {fmt(abs(target - got))}{unit}"


def load_range(m: dict) -> tuple[float | None, float | None]:
    """(1-minute load average at the start, at the end) from either machine record's keys."""
    start = m.get("load_average_start") or m.get("load_average")
    end = m.get("load_average_end") or m.get("load_average_after")
    return (start[0] if start else None, end[0] if end else None)


def provenance(result: dict, name: str) -> str:
    """Where a result came from: its file, the command, the commit and the machine - or what is missing."""
    m = result.get("machine") or {}
    start, end = load_range(m)
    load = (f"load average {start:.1f} at the start, {end:.1f} at the end" if start is not None and end is not None
            else "load average not recorded")
    problems = provenance_problems(result)
    if problems:
        return f"`benchmarks/results/{name}`: **not rendered: {'; '.join(problems)}**."
    probe = m.get("peak_matmul_gflops_float32")
    probe_text = f", fp32 matmul probe {n0(probe)} GFLOP/s at the start" if probe else ""
    commit = (result.get("commit") or "unknown")
    short = commit[:10] + ("+uncommitted" if commit.endswith("+uncommitted") else "")
    return (f"`benchmarks/results/{name}`, written by `{result['command']}` at commit `{short}`. Machine: "
            f"{m['cpu_model']}, {m.get('cpus') or m.get('cores')} cores{probe_text}; {load}. "
            + config_text(result, name))


def missing(name: str, command: str) -> str:
    if name in REFUSED:
        return (f"Not rendered: `benchmarks/results/{name}` lacks {'; '.join(REFUSED[name])}. `{command}` "
                "re-measures it.")
    return f"{NOT_MEASURED} `{command}` writes `benchmarks/results/{name}`."


# --------------------------------------------------------------------------- blocks


def transfer() -> str:
    from benchmarks import transfer_report

    return transfer_report.render()


PIPELINE_ROWS = {
    "keras_example_per_file": "**Keras example, per file (reference)**",
    "segpipe_augment_cached": "**segpipe, augment, cached**",
    "segpipe_no_augment_cached": "segpipe, no augment, cached",
    "segpipe_augment_no_cache": "segpipe, augment, no cache",
    "baseline_augment_cached": "baseline input.py, augment, cached",
}


def _cell(mode: dict | None) -> str:
    if not mode:
        return "—"
    return f"{n0(mode['images_per_s'])} ({mode['cpu_ms_per_image']:.2f})"


def quality_summary() -> str:
    """README's one-paragraph answer to "how good": cpu-quick's held-out figures (BENCHMARKS.md section 4 has
    the table, the targets and the provenance)."""
    name = "transfer-random.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/quality.py --preset cpu-quick --train-seed 0 "
                             "--train-seed 1 --train-seed 2 --out benchmarks/results/transfer-random.json")
    s = d["summary"]["cpu-quick"]

    def spread(key: str, fmt: Callable = lambda v: f"{v:.3f}") -> str:
        x = s[key]
        return f"{fmt(x['mean'])} ({fmt(x['min'])}–{fmt(x['max'])})"

    m = d["machine"]
    return (f"`cpu-quick` over {s['runs']} training seeds, scored once after training on held-out images of "
            f"`../shared/pets-sample`'s random split at original resolution: mean IoU {spread('held_out.mean_iou')}, "
            f"foreground IoU {spread('held_out.foreground_iou')}; {spread('train_cpu_seconds', n0)} CPU-s of "
            f"training on {m['cpu_model']}, {m.get('cpus') or m.get('cores')} cores "
            f"(`benchmarks/results/{name}`; the table, targets and provenance: BENCHMARKS.md section 4).")


def input_pipeline() -> str:
    name = "input_pipeline.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/input_pipeline.py --out benchmarks/results/input_pipeline.json")
    rows = ["| pipeline | epoch 1 img/s (CPU ms/img) | later epochs, new iterator each | stream | fit epochs "
            "(one iterator) |", "|---|---:|---:|---:|---:|"]
    for key, label in PIPELINE_ROWS.items():
        p = d["pipelines"].get(key)
        if p is None:
            continue
        first = f"{n0(p['epoch1_images_per_s'])} ({p['epoch1_cpu_ms_per_image']:.2f})"
        rows.append(f"| {label} | {first} | {_cell(p.get('later_epochs'))} | {_cell(p.get('stream'))} "
                    f"| {_cell(p.get('fit_epochs'))} |")
    main = d["pipelines"]["segpipe_augment_cached"]
    tc = d.get("training_consumption")
    lines = [f"Real sample, {d['train_images']} train images (the reference reads the {d['reference_files']} "
             f"extracted files), {d['img_size']}x{d['img_size']}, batch {d['batch_size']}; {d['how']}. Cells: "
             "images/s (CPU ms per image of the process).", "", *rows, ""]
    if tc:
        lines += [f"What training consumes (same run): {tc['what']}: **{n1(tc['images_per_s'])} images/s, "
                  f"{n1(tc['cpu_ms_per_image'])} CPU ms per image**.", ""]
    targets = ["| segpipe, augment, cached | fit epochs (as `fit` reads it) | later epochs | stream |",
               "|---|---:|---:|---:|"]
    for label, key, fmt in (("vs per-file, wall (target 3x)", "vs_per_file", ratio),
                            ("vs per-file, CPU (target 3x)", "cpu_vs_per_file", ratio),
                            ("vs training's consumption, wall (target 50x)", "vs_training", ratio),
                            ("input CPU as % of training's", "cpu_pct_of_training", lambda v: f"{v:.2f}%")):
        cells = []
        for mode in ("fit_epochs", "later_epochs", "stream"):
            v = main.get(mode, {}).get(key)
            if v is None:
                cells.append("—")
                continue
            t = d["targets"].get(f"{mode}_{key}")
            shortfall = f"missed by {fmt(t['target'] - v).rstrip('x%')}" if t and not t["met"] else "met"
            cells.append(fmt(v) + (f" ({shortfall})" if t else ""))
        targets.append(f"| {label} | {' | '.join(cells)} |")
    lines += [*targets, "", provenance(d, name)]
    return "\n".join(lines)


def warp_check() -> str:
    name = "warp_check.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/warp_check.py --out benchmarks/results/warp_check.json")
    rows = ["| image size | transform | max abs. difference (images on [0, 1]) | label pixels that differ |",
            "|---|---|---:|---:|"]
    for c in d["cases"]:
        rows.append(f"| {c['height']}x{c['width']} | {c['transform']} | {c['max_abs_diff_on_0_1']:.1e} "
                    f"| {100 * c['label_pixels_differ']:.3f}% |")
    cost = d["cpu_ms_per_image_160"]
    return "\n".join([
        f"`_warp_batch` against `ImageProjectiveTransformV3`, same inputs and transforms: largest image difference "
        f"**{d['max_abs_diff_on_0_1']:.1e}**; labels " + ("identical in every case." if d["labels_identical"] else
                                                           "identical except in the cases with a non-zero share "
                                                           "below."),
        "", *rows, "",
        f"CPU per 160x160 image: XLA gather warp {cost['xla_gather_warp']:.2f} ms, kernel "
        f"{cost['ImageProjectiveTransformV3']:.2f} ms: the kernel costs **{d['cpu_ratio_kernel_over_xla']:.1f}x** "
        "as much, same run.", "", provenance(d, name)])


CONVERSION_ROWS = {"real_sample": "real sample", "synthetic_300": "synthetic 300", "synthetic_3000": "synthetic 3,000"}


def tfrecord_conversion() -> str:
    name = "tfrecord_conversion.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/tfrecord_conversion.py "
                             "--out benchmarks/results/tfrecord_conversion.json")
    rows = ["| dataset | images | conversion img/s | validate img/s | write img/s | vs decode+re-encode (target 70%) "
            "| vs minimal work | peak RSS MB | shards MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, res in d["results"].items():
        runs = ", ".join(n0(v) for v in res["ceiling_decode_reencode_runs"])
        rows.append(f"| {CONVERSION_ROWS.get(key, key)} | {n0(res['images'])} | **{n0(res['conversion_images_per_s'])}** "
                    f"| {n0(res['validate_images_per_s'])} | {n0(res['write_images_per_s'])} "
                    f"| **{100 * res['vs_decode_reencode']:.0f}%** (ceiling runs {runs}) "
                    f"| {100 * res['vs_minimal_work']:.0f}% | {n0(res['peak_rss_mb'])} | {n1(res['shard_mb_total'])} |")
    t = d["targets"]
    shares = t["conversion_vs_decode_reencode"]["got"]
    worst = min(shares.values())
    growth = t["peak_rss_flat"]
    return "\n".join([
        f"Conversion = {d['conversion_is']} ({d['workers']} workers, {d['shard_mb']:g} MB shards; synthetic images "
        f"{d['synthetic_image_size'][0]}x{d['synthetic_image_size'][1]}).", "", *rows, "",
        f"Target 70% of decode+re-encode: {verdict(worst, 0.70, fmt=lambda v: f'{100 * v:.0f} points')} "
        f"(lowest {100 * worst:.0f}%). Peak RSS from {growth['sizes'][0]:,} to {growth['sizes'][-1]:,} images: "
        f"{growth['growth_mb']:+.0f} MB ({'flat: met' if growth['met'] else 'not flat: missed'}).", "",
        provenance(d, name)])


def train_throughput() -> str:
    name = "train_throughput.json"
    d = load(name)
    command = (".venv/bin/python benchmarks/train_throughput.py --models unet deeplabv3plus --detail-models unet "
               "deeplabv3plus --no-xla --no-threads --precisions mixed_bfloat16 --out benchmarks/results/"
               "train_throughput.json")
    if d is None:
        return missing(name, command)
    lines = [f"Synthetic in-memory data, {d['img_size']}x{d['img_size']}, batch {d['batch_size']}; {d['timed']}; "
             f"{d['warmup_steps']} warm-up steps untimed. Ratios against the reference measured in the same run: "
             f"{d['ratios']}.", ""]
    for group, rows in d["groups"].items():
        lines += [f"| {group}: configuration | model | img/s (runs) | CPU ms/img | speed vs reference "
                  "| CPU efficiency vs reference |", "|---|---|---:|---:|---:|---:|"]
        for row in rows:
            runs = ", ".join(n1(v) for v in row.get("images_per_s_runs", []))
            setting = " ".join([row.get("precision", ""), "XLA" if row.get("xla") else "",
                                f"threads {row['threads']}" if group == "threads" else ""]).strip()
            if "images_per_s" not in row:  # a configuration that failed: its error is in the file
                lines.append(f"| {setting} | {row.get('model', '')} | failed | — | — | — |")
                continue
            lines.append(f"| {setting} | {row.get('model', '')} "
                         f"| {n1(row['images_per_s'])} ({runs}) | {n1(row['cpu_ms_per_image'])} "
                         f"| {n2(row['speed_vs_ref'])} | **{n2(row['cpu_efficiency_vs_ref'])}** |")
        lines.append("")
    lines.append(provenance(d, name))
    return "\n".join(lines)


def bfloat16_summary() -> str:
    """One sentence for the README: what a bfloat16 training step costs against float32 on the machine measured."""
    d = load("train_throughput.json")
    rows = [r for r in (d or {}).get("groups", {}).get("precision", []) if "bfloat16" in str(r.get("precision"))
            and "cpu_efficiency_vs_ref" in r]
    if not rows:
        return "bfloat16 against float32: " + NOT_MEASURED.lower()
    costs = ", ".join(f"{r['model']} {1 / r['cpu_efficiency_vs_ref']:.2f}x" for r in rows)
    m = d["machine"]
    return (f"Measured on {m['cpu_model']}, {m['cpus']} cores (`benchmarks/results/train_throughput.json`, "
            f"BENCHMARKS.md section 3): CPU per image of a mixed-bfloat16 training step, as a multiple of "
            f"float32's in the same run (below 1: cheaper): {costs}. Its effect on quality was not measured "
            "separately.")


def orchestration() -> str:
    name = "orchestration.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/orchestration.py --out benchmarks/results/orchestration.json")
    cli, noop, first, again = d["cli_startup"], d["noop_flow_process"], d["first_run"], d["cached_rerun"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in list(first["stage_s"].items())[:3])

    def imports(row: dict) -> str:
        names = [k for k, v in row.get("imports", {}).items() if v]
        return f"imports {', '.join(names)}" if names else "imports no tensorflow, keras or prefect"

    rows = [
        "| what | wall s |", "|---|---:|",
        f"| `python -c pass` | {cli['python -c pass']['wall_s_median']:.2f} |",
        f"| `segpipe --help` ({imports(cli['segpipe --help'])}) | **{cli['segpipe --help']['wall_s_median']:.2f}** |",
        f"| `segpipe config` ({imports(cli['segpipe config'])}) | **{cli['segpipe config']['wall_s_median']:.2f}** |",
        f"| no-op flow process, first ever (creates the Prefect database) | {noop['first_ever_wall_s']:.1f} |",
        f"| no-op flow process (Prefect import {noop['prefect_import_s_median']:.1f} s, ephemeral API start and one "
        f"flow run {noop['flow_call_s_median']:.1f} s) | **{noop['wall_s_median']:.1f}** |",
        f"| `segpipe run --preset {d['preset']}`, first run ({first['task_runs']} task runs, {first['flow_runs']} "
        f"flow runs) | **{first['wall_s']:.1f}** |",
        f"|   of which stage work ({stages}, ...) | {first['stage_work_s']:.2f} "
        f"({100 * first['stage_share_of_wall']:.0f}%) |",
        f"| `segpipe run --preset {d['preset']}`, cached rerun ("
        f"{', '.join(f'{n} {s}' for s, n in again['task_states'].items())}) | **{again['wall_s']:.1f}** |",
        f"| rerun / first run (target < {100 * d['target']['rerun_vs_first']:.0f}%) | **{100 * d['rerun_vs_first']:.0f}%: "
        f"{'met' if d['target']['met'] else 'not met'}** |",
        f"| rerun minus the no-op flow process | {d['rerun_minus_noop_flow_s']:.1f} |",
    ]
    miss = "" if d["target"]["met"] else (
        f" Missed by {100 * (d['rerun_vs_first'] - d['target']['rerun_vs_first']):.0f} points on this dataset, "
        "whose training takes seconds: both runs are dominated by the fixed start-up costs above.")
    return "\n".join([f"Dataset: {d['dataset']}.", "", *rows, "", f"Target: cached rerun < "
                      f"{100 * d['target']['rerun_vs_first']:.0f}% of the first run.{miss}", "", provenance(d, name)])


def inference() -> str:
    name = "inference.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/inference.py --out benchmarks/results/inference.json")
    sizes = list(next(iter(d["results"].values())).keys())
    head = " | ".join(f"batch {b} img/s (CPU ms/img)" for b in sizes)
    vs = " | ".join(f"batch {b} vs {sizes[0]}" for b in sizes[1:])
    rows = [f"| | {head} | {vs} |", "|---|" + "---:|" * (2 * len(sizes) - 1)]
    for what, by in d["results"].items():
        cells = " | ".join(f"{n1(by[b]['images_per_s'])} ({n1(by[b]['cpu_ms_per_image'])})" for b in sizes)
        ratios = " | ".join(n2(by[b]["vs_batch_1"]) for b in sizes[1:])
        rows.append(f"| `{what}` | {cells} | {ratios} |")
    return "\n".join([f"Model: {d['model']}, {d['img_size']} px. `predict`: {d['predict_inputs']}; `evaluate`: the "
                      f"{d['evaluate_split']} split. Timing: {d['timing']}; model loading {d['model_load_s_median']:.2f} s.",
                      "", *rows, "", provenance(d, name)])


SERVING_ROWS = {"keras": "Keras `model.predict` (reference)", "saved_model": "SavedModel (`serving_default`, bytes)",
                "litert-float32": "LiteRT float32", "litert-float16": "LiteRT float16",
                "litert-int8": "LiteRT int8 (dynamic range)", "onnx": "ONNX Runtime"}


def export_inference() -> str:
    name = "export_inference.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/export_inference.py --model M.keras "
                             "--out benchmarks/results/export_inference.json")
    rows = ["| runtime | batch-1 latency ms (vs Keras) | batch 8 images/s (vs Keras) | peak RSS MB (vs Keras) | "
            "file MB | parity: mean IoU, pixels agreeing |", "|---|---:|---:|---:|---:|---|"]
    for key, label in SERVING_ROWS.items():
        x = d["results"][key]
        par = d["parity"].get(key)
        parity_cell = (f"{par['mean_iou']:.4f}, {100 * par['pixel_agreement']:.3f}%" if par
                       else f"{d['parity']['reference_mean_iou']:.4f} (reference)")
        if key == "keras":
            rows.append(f"| {label} | {n1(x['latency_ms'])} | {n1(x['batch8_images_per_s'])} | {n0(x['peak_rss_mb'])} | "
                        f"{n2(x['file_mb'])} | {parity_cell} |")
            continue
        rows.append(f"| {label} | {n1(x['latency_ms'])} ({ratio(x['speedup_vs_keras'])} faster) | "
                    f"{n1(x['batch8_images_per_s'])} ({ratio(x['batch8_vs_keras'])}) | {n0(x['peak_rss_mb'])} "
                    f"({n2(x['rss_vs_keras'])}) | {n2(x['file_mb'])} | {parity_cell} |")
    t = d["targets"]
    return "\n".join([
        f"Model: {d['model']} (sha256 `{d['model_sha256'][:12]}`, flip TTA {'on' if d['tta_flip'] else 'off'}); "
        f"one {d['image']['size']} JPEG, decode to "
        f"mask; {d['timing']}; parity on {d['parity']['images']} images of the prepared sample.", "", *rows, "",
        f"- Fastest export ({SERVING_ROWS[t['fastest_export']]}) against Keras `predict`, batch 1: "
        f"{ratio(t['fastest_speedup_vs_keras'])} (target 2x: "
        f"{verdict(t['fastest_speedup_vs_keras'], t['fastest_speedup_target'], unit='x')}).",
        f"- Peak RSS of the lightest TensorFlow-free runtime ({SERVING_ROWS[t['lightest_tf_free_runtime']]}) against "
        f"the Keras process: {n2(t['lightest_rss_vs_keras'])} (target at most 0.33: "
        f"{verdict(t['lightest_rss_vs_keras'], t['rss_target'], at_least=False)}).",
        "", provenance(d, name)])


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


def roofline() -> str:
    result = load("roofline.json")
    if result is None or not (ROOT / "benchmarks" / "roofline.py").is_file():
        return ("Not measured with full provenance: `roofline.json` was withdrawn (" + WITHDRAWN["roofline.json"]
                + "). `.venv/bin/python benchmarks/roofline.py --out benchmarks/results/roofline.json` re-measures it.")
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import their siblings as `common`, `quality`
        sys.path.append(str(ROOT / "benchmarks"))
    from benchmarks import roofline as module

    return module.render_markdown(result).rstrip("\n") + "\n\n" + provenance(result, "roofline.json")


def withdrawn() -> str:
    """BENCHMARKS.md: the result files withdrawn (issue 19) and why; which files are rendered, and from what."""
    rows = ["| withdrawn result file | why |", "|---|---|"]
    rows += [f"| `{name}` | {why} |" for name, why in WITHDRAWN.items()]
    kept = {p.name: provenance_problems(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))}
    good = [f"`{k}`" for k, v in kept.items() if not v]
    bad = [f"`{k}` ({'; '.join(v)})" for k, v in kept.items() if v]
    return "\n".join([*rows, "", "Files in `benchmarks/results/` with full provenance (command, clean commit that "
                       "resolves here, machine, configurations): " + (", ".join(good) or "none") + "."
                       + (" Without it, not rendered: " + ", ".join(bad) + "." if bad else "")])


def storage_summary() -> str:
    """README, "Original size or pre-resized?": conversion and reading speed of original-size shards."""
    conv, pipe = load("tfrecord_conversion.json"), load("input_pipeline.json")
    if conv is None or pipe is None:
        return NOT_MEASURED
    real = conv["results"]["real_sample"]
    main = pipe["pipelines"]["segpipe_augment_cached"]
    fit, first = main["fit_epochs"], main
    cm, pm = conv.get("machine", {}), pipe.get("machine", {})

    def where(m: dict) -> str:
        return f"{m['cpu_model']}, {m['cpus']} cores" if m.get("cpu_model") else f"{m.get('cpus')} cores, CPU model not recorded"

    return (f"Measured (BENCHMARKS.md): conversion costs about what validation's decode costs anyway "
            f"({n0(real['conversion_images_per_s'])} images/s for the {real['images']}-image sample on {where(cm)}; "
            f"peak memory {conv['peak_rss_growth_mb']:+.0f} MB from {conv['targets']['peak_rss_flat']['sizes'][0]:,} "
            f"to {conv['targets']['peak_rss_flat']['sizes'][-1]:,} images); the shards are the size of the files "
            f"({n0(real['shard_mb_total'])} MB for the sample). Reading is bounded in the first epoch by full-size "
            f"JPEG decoding ({n0(first['epoch1_images_per_s'])} images/s with augmentation), but the training "
            f"pipeline decodes and resizes once, caches, and augments per epoch, so the epochs `fit` reads deliver "
            f"{n0(fit['images_per_s'])} images/s at {pipe['img_size']} px on {where(pm)}: "
            f"{ratio(fit['vs_per_file'])} the Keras example's per-file pipeline and {ratio(fit['vs_training'])} what "
            "training consumes, in the same run.")


BLOCKS: dict[str, Callable[[], str]] = {
    "transfer": transfer,
    "quality-summary": quality_summary,
    "input-pipeline": input_pipeline,
    "warp-check": warp_check,
    "tfrecord-conversion": tfrecord_conversion,
    "train-throughput": train_throughput,
    "bfloat16": bfloat16_summary,
    "orchestration": orchestration,
    "inference": inference,
    "export-inference": export_inference,
    "recipe-selection": recipe_selection,
    "roofline": roofline,
    "storage": storage_summary,
    "withdrawn": withdrawn,
}


# --------------------------------------------------------------------------- documents


def blocks_in(text: str) -> list[str]:
    return [m.group(1) for m in MARKER.finditer(text)]


def rendered(text: str, cache: dict[str, str] | None = None) -> str:
    """`text` with every block replaced by what BLOCKS renders (KeyError for a block nobody renders)."""
    cache = {} if cache is None else cache

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in cache:
            cache[name] = BLOCKS[name]().rstrip("\n")
        return f"<!-- {name}:begin -->\n{cache[name]}\n<!-- {name}:end -->"

    return MARKER.sub(fill, text)


def differences(paths: list[Path]) -> list[str]:
    """One entry per block whose committed text differs from what renders now (a short diff each)."""
    out, cache = [], {}
    for path in paths:
        text = path.read_text()
        for m in MARKER.finditer(text):
            name = m.group(1)
            if name not in BLOCKS:
                out.append(f"{path.name}: block {name!r}: nothing renders it (BLOCKS in benchmarks/render.py)")
                continue
            if name not in cache:
                cache[name] = BLOCKS[name]().rstrip("\n")
            if m.group(2).rstrip("\n") != cache[name]:
                diff = difflib.unified_diff(m.group(2).rstrip("\n").splitlines(), cache[name].splitlines(),
                                            "committed", "rendered", lineterm="", n=0)
                out.append(f"{path.name}: block {name!r} differs:\n" + "\n".join(list(diff)[:20]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in README.md and BENCHMARKS.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when a block differs from what renders")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paths = [args.root / name for name in DOCS]
    if args.check:
        diffs = differences(paths)
        for d in diffs:
            print(d)
        return 1 if diffs else 0
    if args.write:
        cache: dict[str, str] = {}
        for path in paths:
            text = path.read_text()
            new = rendered(text, cache)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.name}: {', '.join(blocks_in(text))}")
        return 0
    for name, fn in BLOCKS.items():
        print(f"<!-- {name} -->\n{fn()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
