"""What every block benchmarks/render.py renders shares: loading a committed result under the strict
provenance rules, the provenance line each block ends with, and the number formats.

Strict provenance (`provenance_problems`): every result a block renders records the command that wrote it,
a commit that resolves in this repository and was clean (no `+uncommitted`), the machine, and the
configurations it ran (`configs`: preset, overrides, sha256 of the resolved PipelineConfig; or a
`config_note` saying it runs none). A result whose configuration digest differs from what its preset
resolves to today (`config_drift`) renders only when EARLIER_RECIPES labels it as an earlier recipe.
Results that failed these rules were withdrawn: they left benchmarks/results/ (git history keeps them) and
WITHDRAWN says which and why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NOT_MEASURED = "Not measured yet: no committed result."

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- helpers


LOADED: set[str] = set()  # every result file a block has read (tests/benchmarks/test_figures.py checks each one)
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
    "transfer-official-estimate.json": f"{NO_CONFIG}; built on transfer-random.json",
    "transfer-random-bf16.json": "written at a `+uncommitted` commit; held-out scored during training",
    "transfer-random-keras-example.json": "written at a `+uncommitted` commit; held-out scored during training",
    "transfer-random-cpu-scratch-to-070.json": "written at a `+uncommitted` commit; stopped on held-out data "
                                               "(`--stop-at-held-out`)",
    "transfer-quality-per-cpu-minute.json (and .png)": "written at a `+uncommitted` commit, merging the runs "
                                                       "above",
    "roofline.json": f"{NO_CONFIG}; its commit was recorded without the `+uncommitted` check; a re-run takes "
                     "longer than the time there was",
}
# Withdrawn files measured again since, under the same name, by the command each new file records (issue 20):
# the new file is in benchmarks/results/, the old one in git (`git show 62ee86f:benchmarks/results/NAME`).
REMEASURED: dict[str, str] = {
    "transfer-random-quiet.json": f"{NO_CONFIG}; held-out scored during training",
    **{f"transfer-breed-{b}.json": "written at a `+uncommitted` commit; held-out scored during training"
       for b in ("Abyssinian", "american_bulldog", "Bengal")},
}

# Results whose configuration digest differs from what their preset resolves to today, rendered as an
# earlier recipe: file name -> the label the text gives them.
EARLIER_CPU_QUICK = ("`cpu-quick` before issue 20's throughput recipe (ASPP and decoder 256 wide, the encoder's batch "
                     "norms training after unfreezing, 160 px: today's `cpu-quick` with `model.aspp_filters=256`, "
                     "`train.freeze_encoder_bn=false`, `train.fold_frozen_bn=false`, `train.img_size=160`, "
                     "`train.budget_images=8000`, `train.freeze_encoder_stride=0`)")
EARLIER_CPU_QUICK_160 = ("`cpu-quick` at 160 px, before issue 20's input-size decision (issue 20's throughput recipe: "
                         "today's `cpu-quick` with `train.img_size=160`, `train.budget_images=8000`, "
                         "`train.freeze_encoder_stride=0`)")
EARLIER_CPU_QUICK_224 = ("`cpu-quick` at 224 px before its frozen prefix (issue 20): the whole encoder fine-tuned "
                         "after its frozen phase, today's `cpu-quick` with `train.freeze_encoder_stride=0`")

EARLIER_CPU_QUICK_F32 = ("`cpu-quick` in float32, before its precision decision (issue 20): today's `cpu-quick` with "
                         "`train.mixed_precision=off`")

EARLIER_RECIPES: dict[str, str] = {
    name: EARLIER_CPU_QUICK for name in (
        "cpu-share.json", "export_inference.json", "input_pipeline.json", "local_start.json", "multiscale-tta.json",
        "quality-cpu-quick-border-weight2.json", "quality-cpu-quick-decoder-stride2.json",
        "quality-cpu-quick-decoder-stride4.json", "test-time-levers.json", "transfer-breed-Abyssinian.json",
        "transfer-breed-Bengal.json", "transfer-breed-american_bulldog.json", "transfer-random-quiet.json",
        "transfer-random.json", "train-levers.json")
} | {
    name: EARLIER_CPU_QUICK_160 for name in (
        "border-band.json", "export-portability.json", "quality-cpu-quick-alone.json",
        "quality-cpu-quick-aspp128-bn-frozen-folded.json", "quality-cpu-quick-breed-Abyssinian.json",
        "quality-cpu-quick-breed-Bengal.json", "quality-cpu-quick-breed-american_bulldog.json",
        "quality-cpu-quick-interleaved.json", "quality-cpu-quick-interleaved-2.json",
        "quality-cpu-quick-unet-mobilenetv2.json", "train-levers-xla.json")
} | {
    name: EARLIER_CPU_QUICK_224 for name in (
        "quality-cpu-quick-aspp-rates-358.json", "quality-cpu-quick-boundary-loss.json",
        "quality-cpu-quick-budget-6400.json", "quality-cpu-quick-edge-head.json",
        "quality-cpu-quick-encoder-dilated.json", "quality-cpu-quick-img224-4800.json",
        "quality-cpu-quick-img224-alone.json", "quality-cpu-quick-img224.json", "quality-cpu-quick-img288-4000.json",
        *(f"quality-cpu-quick-img224-breed-{b}{s}.json" for b in ("Abyssinian", "Bengal", "american_bulldog")
          for s in ("", "-seeds")),
        *(f"quality-cpu-quick-interleaved-{n}.json" for n in range(3, 11)),
        "quality-cpu-quick-progressive.json", "train-levers-encoder-dilated.json", "train-levers-frozen-prefix.json",
        "train-levers-input-size.json", "train-levers-replicas.json", "train-levers-steps.json")
} | {
    name: EARLIER_CPU_QUICK_F32 for name in (
        "quality-cpu-quick-frozen-alone.json", "quality-cpu-quick-frozen-stride4.json",
        *(f"quality-cpu-quick-frozen-breed-{b}-seeds.json" for b in ("Abyssinian", "Bengal", "american_bulldog")),
        "quality-cpu-quick-hue-saturation.json", "quality-cpu-quick-lovasz.json",
        *(f"quality-cpu-quick-interleaved-{n}.json" for n in (11, 12, 13)), "quality-cpu-quick-no-frozen-phase.json")
}


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
    from benchmarks.common import config_digest, resolve_config

    sections = MEASURED_SECTIONS.get(str(result.get("benchmark")))
    out = []
    for c in result.get("configs") or []:
        try:
            # the files a run named need not be on this machine (a clone without ../shared): only the preset counts
            today_cfg = resolve_config(c["preset"], _overrides_as_resolved(c), check_files=False)
        except Exception as exc:  # noqa: BLE001 - a preset or field that no longer exists is drift too
            out.append(f"{c['preset']}: {c['overrides']} no longer resolves ({exc})")
            continue
        today = config_digest(today_cfg)
        if today == c["digest"]:
            continue
        changes = _changed_fields(c.get("resolved") or {}, today_cfg.model_dump(mode="json"))
        if c.get("resolved"):  # knobs added to the schema since, at the default that builds what ran then: no drift
            kept = [ch for ch in changes if not ch.added_at_default]
            if changes and not kept:
                continue
            changes = kept
        fields = [str(ch) for ch in changes]
        if c.get("resolved") and sections and not [f for f in fields if f.split(".")[0].split(":")[0] in sections]:
            continue  # only sections this benchmark never runs through changed
        out.append(f"{c['preset']} with {c['overrides']}: ran {c['digest'][:12]}, resolves to {today[:12]} "
                   f"today (fields changed: {', '.join(fields) or 'not recorded'})")
    return out


def _overrides_as_resolved(record: dict) -> dict:
    """A record's overrides, each relative path replaced by the absolute path the run resolved it to (its
    `resolved` configuration holds it): a relative path was relative to the directory the benchmark ran in, which
    is not the directory a later check runs in (a fresh clone elsewhere)."""
    from benchmarks.common import dotted_get

    out = {}
    for key, value in record["overrides"].items():
        then = dotted_get(record.get("resolved") or {}, key)
        relative = isinstance(value, str) and value and not Path(value).is_absolute()
        if relative and isinstance(then, str) and Path(then).is_absolute() and Path(then).name == Path(value).name:
            value = then
        out[key] = value
    return out


ABSENT = "<absent>"


@dataclass(frozen=True)
class Change:
    """One field whose value differs between a recorded resolved configuration and today's."""

    path: str
    was: Any
    now: Any
    added_at_default: bool  # absent from the record (added to the schema since) and at its default today

    def __str__(self) -> str:
        return f"{self.path}: {self.was!r} -> {self.now!r}"


def _schema_defaults() -> dict:
    """Every field's default, as `PipelineConfig().model_dump(mode="json")` gives it (nested by section)."""
    from segpipe.config import PipelineConfig

    return PipelineConfig().model_dump(mode="json")


def _changed_fields(was: dict, now: dict, prefix: str = "", defaults: dict | None = None) -> list[Change]:
    """The fields whose values differ between two resolved configs (added or removed too), dotted."""
    defaults = _schema_defaults() if defaults is None else defaults
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key, ABSENT), now.get(key, ABSENT)
        default = defaults.get(key, ABSENT) if isinstance(defaults, dict) else ABSENT
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_fields(a, b, f"{prefix}{key}.", default if isinstance(default, dict) else {})
        elif a != b:
            out.append(Change(f"{prefix}{key}", a, b, added_at_default=a == ABSENT and b == default))
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


def load_text(result: dict) -> str:
    """The 1-minute load average at the start and end: the run's own, or each merged run's (a merged file's
    machine is the one that merged, which trained nothing)."""
    start, end = load_range(result.get("machine") or {})
    if start is not None and end is not None:
        return f"load average {start:.1f} at the start, {end:.1f} at the end"
    runs = [load_range(part.get("machine") or {}) for part in result.get("merged_from") or []]
    if runs and all(a is not None and b is not None for a, b in runs):
        return "load average of each merged run, at its start and end: " + ", ".join(f"{a:.1f} and {b:.1f}" for a, b in runs)
    return "load average not recorded"


def provenance(result: dict, name: str) -> str:
    """Where a result came from: its file, the command, the commit and the machine - or what is missing."""
    m = result.get("machine") or {}
    load = load_text(result)
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
