"""Roofline (benchmarks/roofline.py), the markdown: `render_markdown(result)` turns roofline.json into the
tables of BENCHMARKS.md (benchmarks/render_training.py renders the block from it)."""

from __future__ import annotations

from typing import Any

from benchmarks.claims import CLAIM_PAIRS, paired_claim
from benchmarks.render_common import load
from benchmarks.roofline_models import DEFAULT_PRESET


def quality_text(candidate: dict[str, Any]) -> str:
    """A candidate's quality column: what the change does to the maths, and, for a float32 candidate, the
    claim `claims.paired_claim` computes from the paired float32/bfloat16 quality results (never a stored
    "not lower": results written before this strip it)."""
    text = candidate["quality"].removesuffix(": not lower")
    if "mixed_precision = 'off'" in candidate["preset_change"] or candidate.get("variant", "").endswith("float32"):
        base, cand = CLAIM_PAIRS["float32"]
        text += ": " + paired_claim(load(base), load(cand), (base, cand))
    return text


def _one_line(error: str, limit: int = 200) -> str:
    """An error message for a table cell: XLA's own reason when there is one, on one line, no pipes."""
    import re

    text = " ".join(error.split()).replace("|", "/")
    why = re.search(r"(Seen floating point types.*?disallowed|UNIMPLEMENTED[^.]*|Resource exhausted[^.]*|"
                    r"out of memory[^.]*)", text)
    text = f"{text.split(':')[0]}: {why.group(1)}" if why else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def summary_sentence(result: dict[str, Any]) -> str:
    """What the figures above say, computed from them (so the text and the tables cannot disagree)."""
    parts = []
    q = result.get("presets", {}).get(DEFAULT_PRESET, {})
    abl = result.get("ablations", {})
    shares = abl.get("profile", {}).get("share_of_op_time", {})
    if q.get("fraction_of_peak_per_cpu_s") is not None:
        parts.append(f"{DEFAULT_PRESET} reaches {q['fraction_of_peak_per_cpu_s']:.0%} of the {q.get('peak_key', 'dense conv')} roof per "
                     f"CPU-second ({q.get('depthwise_flop_share', 0):.0%} of its FLOPs are depthwise).")
    if shares:
        conv, dw = shares.get("conv (fwd+bwd)", 0.0), shares.get("depthwise conv (fwd+bwd)", 0.0)
        parts.append(f"Dense convolutions take {conv:.0%} of its op time and depthwise ones {dw:.0%}; the rest is "
                     f"memory-bound: element-wise ops, reshapes and reductions {shares.get('element-wise, reshapes, reductions', 0):.0%} "
                     f"(Keras 3's BatchNormalization is unfused element-wise arithmetic, forward and backward), "
                     f"casts {shares.get('casts (bfloat16)', 0):.0%}, resizes {shares.get('resize / upsampling', 0):.0%}, "
                     f"the optimizer {shares.get('optimizer: Adam + variables', 0):.0%}.")
    ratios = abl.get("ratios_vs_baseline", {})
    best = max(((k, v["images_per_cpu_s"]) for k, v in ratios.items() if v.get("images_per_cpu_s")),
               key=lambda kv: kv[1], default=None)
    if best:
        parts.append(f"Best knob measured in the ablations: {best[0]} at {best[1]:.2f}x images per CPU-second.")
    hf = result.get("head_first", {}).get("ratios_vs_as_built_bfloat16", {})
    if hf:
        k, v = max(hf.items(), key=lambda kv: kv[1])
        parts.append(f"With the head before the last upsampling (a model change): {k} at {v:.2f}x.")
    return " ".join(parts)


def render_markdown(result: dict[str, Any]) -> str:
    """The markdown tables for BENCHMARKS.md: peaks, the roofline per preset, cpu-quick's profile and shares,
    and the speed-up candidates."""
    lines: list[str] = []
    m = result.get("machine", {})
    peaks = result.get("peaks", {})
    g = peaks.get("gflops", {})
    gc = peaks.get("gflops_per_cpu_s", {})
    if g:
        lines += [f"Peaks on {m.get('cpu_model', '?')} ({m.get('cores', '?')} cores; load "
                  f"{m.get('load_before', ['?'])[0]} -> {m.get('load_after', ['?'])[0]}), best of "
                  f"{peaks.get('rounds', '?')} interleaved rounds:", "",
                  "| probe | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 | float32 GFLOP per CPU-s "
                  "| bfloat16 GFLOP per CPU-s |", "|---|---:|---:|---:|---:|---:|"]
        for probe, label in (("matmul", f"matmul {peaks.get('matmul_n', '')}²"), ("conv3x3", "conv 3x3 64→64, 80², b8"),
                             ("depthwise3x3", "depthwise 3x3 64 ch, 80², b8")):
            lines.append(f"| {label} | {_f(g.get(probe + '_float32'), '{:.1f}')} | "
                         f"{_f(g.get(probe + '_bfloat16'), '{:.1f}')} | "
                         f"{_f(peaks.get('bf16_over_fp32', {}).get(probe))} | "
                         f"{_f(gc.get(probe + '_float32'), '{:.1f}')} | {_f(gc.get(probe + '_bfloat16'), '{:.1f}')} |")
        lines.append("")
    presets = result.get("presets", {})
    if presets:
        lines += ["Roofline per preset: train-step FLOPs = 3x the forward pass (TensorFlow's profiler on the frozen "
                  "graph, depthwise convolutions counted per layer); fraction of peak = GFLOP per CPU-second of the "
                  "step over the dense 3x3 conv probe's at the step's dtype (per CPU-second on both sides, so the "
                  "changing load of the shared machine cancels; the wall-clock figures are in the JSON).", "",
                  "| preset | model | size, batch | dtype measured | train-step GFLOP | depthwise FLOP share "
                  "| step wall s | step CPU s | GFLOP per CPU-s | roof per CPU-s | fraction of peak | images / CPU-s |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, p in presets.items():
            if "error" in p:
                lines.append(f"| {name} | – | – | – | – | – | – | – | – | – | failed: {_one_line(p['error'])} | – |")
                continue
            model = p["model"] + (f" / {p['encoder']}" if p.get("encoder") else "")
            batch = str(p["batch_size"]) + (f" (preset: {p['preset_batch_size']})"
                                             if p.get("preset_batch_size", p["batch_size"]) != p["batch_size"] else "")
            lines.append(
                f"| {name} | {model} | {p['img_size']}, {batch} | {p['policy_measured']} | "
                f"{p['train_step_flops'] / 1e9:.3g} | {_f(p.get('depthwise_flop_share'), '{:.1%}')} | "
                f"{_f(p['step_wall_s'], '{:.3f}')} | {_f(p['step_cpu_s'], '{:.3f}')} | "
                f"{_f(p.get('achieved_gflops_per_cpu_s'), '{:.1f}')} | {_f(p.get('peak_gflops_per_cpu_s'), '{:.0f}')} | "
                f"{_f(p.get('fraction_of_peak_per_cpu_s'), '{:.1%}')} | {_f(p['images_per_cpu_s'])} |")
        lines.append("")
    abl = result.get("ablations", {})
    prof = abl.get("profile", {})
    if prof.get("share_of_op_time"):
        lines += [f"Where {abl.get('preset', 'cpu-quick')}'s step time goes (TensorFlow profiler, "
                  f"{prof.get('steps')} steps; shares of the summed op time, which is "
                  f"{_f(prof.get('op_time_over_cpu_time'))}x the process's CPU time):", "",
                  "| group | share of op time | ms per step |", "|---|---:|---:|"]
        per = prof.get("per_step_ms_by_group", {})
        for group, share in prof["share_of_op_time"].items():
            lines.append(f"| {group} | {_f(share, '{:.1%}')} | {_f(per.get(group), '{:.0f}')} |")
        lines.append("")
    if abl.get("variants"):
        b = abl["variants"].get("baseline", {})
        lines += [f"{abl.get('preset', 'cpu-quick')} ablations, interleaved in one run (medians; ratio = images "
                  "per CPU-second over the baseline's):", "",
                  "| variant | what | step wall s | step CPU s | images / CPU-s | ratio |", "|---|---|---:|---:|---:|---:|"]
        for k, v in abl["variants"].items():
            ratio = (v["images_per_cpu_s"] / b["images_per_cpu_s"]) if b.get("images_per_cpu_s") else None
            if k in ("depthwise", "augment"):
                ratio_s = f"{v['step_cpu_s'] / b['step_cpu_s']:.1%} of a step" if b.get("step_cpu_s") else "–"
            else:
                ratio_s = _f(ratio, "{:.2f}x")
            lines.append(f"| {k} | {v.get('note', '')} | {_f(v['step_wall_s'], '{:.3f}')} | "
                         f"{_f(v['step_cpu_s'], '{:.3f}')} | {_f(v['images_per_cpu_s'])} | {ratio_s} |")
        for k, why in abl.get("failed", {}).items():
            lines.append(f"| {k} | failed: {_one_line(why)} | – | – | – | – |")
        lines.append("")
    cands = result.get("candidates", [])
    if cands:
        lines += ["Speed-up candidates for the default preset (images per CPU-second, each against the as-built "
                  "baseline timed in the same interleaved run):", "",
                  "| knob | preset change | before | after | ratio | ratio (images/s) | quality |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for c in cands:
            lines.append(f"| {c['knob']} | {c['preset_change']} | {_f(c['images_per_cpu_s_before'])} | "
                         f"{_f(c['images_per_cpu_s_after'])} | {_f(c['ratio_images_per_cpu_s'], '{:.2f}x')} | "
                         f"{_f(c['ratio_images_per_s'], '{:.2f}x')} | {quality_text(c)} |")
        lines.append("")
    prec = {k: v for k, v in result.get("precision", {}).items() if isinstance(v, dict) and "variants" in v}
    if prec:
        lines += ["bfloat16 against float32 per preset (interleaved in one run; images per CPU-second):", "",
                  "| preset | mixed_bfloat16 | float32 | float32 / bfloat16 | (images/s) |", "|---|---:|---:|---:|---:|"]
        for name, v in prec.items():
            lines.append(f"| {name} | {_f(v['variants']['mixed_bfloat16']['images_per_cpu_s'])} | "
                         f"{_f(v['variants']['float32']['images_per_cpu_s'])} | "
                         f"{_f(v['float32_over_bfloat16_images_per_cpu_s'], '{:.2f}x')} | "
                         f"{_f(v['float32_over_bfloat16_images_per_s'], '{:.2f}x')} |")
        lines.append("")
    hf = result.get("head_first", {})
    if hf.get("variants"):
        lines += [f"{hf.get('preset', DEFAULT_PRESET)} as built (1x1 head after the last x4 bilinear upsampling) against "
                  "the head-first twin (the same layers and weights, the head before the upsampling: the same "
                  "function, the resize on 3 channels instead of 256), interleaved in one run; largest output "
                  f"difference {_f(hf.get('max_abs_output_difference_float32'), '{:.1e}')} (float32), "
                  f"{_f(hf.get('max_abs_output_difference_mixed_bfloat16'), '{:.1e}')} (bfloat16):", "",
                  "| variant | step wall s | step CPU s | images / CPU-s | ratio to as built, bfloat16 |",
                  "|---|---:|---:|---:|---:|"]
        for k, v in hf["variants"].items():
            lines.append(f"| {k} | {_f(v['step_wall_s'], '{:.3f}')} | {_f(v['step_cpu_s'], '{:.3f}')} | "
                         f"{_f(v['images_per_cpu_s'])} | {_f(hf['ratios_vs_as_built_bfloat16'].get(k), '{:.2f}x')} |")
        lines.append("")
    conclusion = summary_sentence(result)
    if conclusion:
        lines += [conclusion, ""]
    return "\n".join(lines).rstrip() + "\n"


