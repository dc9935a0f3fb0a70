"""The one-screen results table that README.md's "Results" and the top of BENCHMARKS.md show (block
`results-summary`): five rows - quality, training speed, data preparation, serving, local start-up - each with
what was measured, the machine it was measured on, and the BENCHMARKS.md section (and result files) behind it.

Every figure in a row is read from the result files its details cell names, loaded under the strict
provenance rules of render_common (a row whose files are missing or refused says so instead); comparisons
are the ratios those files measured in one run; the commands, commits and load averages stay in BENCHMARKS.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from benchmarks.render_common import EARLIER_RECIPES, load, n0, n1, n2, ratio
from benchmarks.render_quality import CURRENT

# BENCHMARKS.md's section headings each row links to (tests/benchmarks/test_figures.py checks they are still there).
SECTIONS = {
    "quality": "4. Quality: a pretrained encoder against training from scratch",
    "training": "3. Training throughput and precision",
    "input": "1. Input pipeline (images/s into `fit`)",
    "conversion": "2. TFRecord conversion (images/s, peak RSS)",
    "serving": "7. Serving the exports (`segpipe export`: SavedModel, LiteRT, ONNX)",
    "start": "8. Local start-up (the background Prefect server)",
}

# The result files behind each row (the JSON under benchmarks/results/).
FILES = {
    "quality": (CURRENT,),
    "training speed": ("train_throughput.json",),
    "data preparation": ("tfrecord_conversion.json", "input_pipeline.json"),
    "serving": ("export_inference.json",),
    "local start-up": ("local_start.json",),
}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def section_link(key: str) -> str:
    number = SECTIONS[key].split(".", 1)[0]
    return f"[section {number}](BENCHMARKS.md#{anchor(SECTIONS[key])})"


def machine(m: dict) -> str:
    return f"{m['cpu_model']}, {m.get('cpus') or m.get('cores')} cores"


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def quality_row(d: dict) -> str:
    s, t = d["summary"]["cpu-quick"], d["target"]

    def spread(key: str, fmt: Callable = lambda v: f"{v:.3f}") -> str:
        x = s[key]
        return f"{fmt(x['mean'])} ({fmt(x['min'])}–{fmt(x['max'])})"

    def against(key: str, target: float) -> str:
        return f"target {target:.2f}: {met(s[key]['mean'] >= target)}"

    return (f"`cpu-quick`, {s['runs']} training seeds, held-out images of the sample's random split: **mean IoU "
            f"{spread('held_out.mean_iou')}** ({against('held_out.mean_iou', t['mean_iou'])}), foreground IoU "
            f"{spread('held_out.foreground_iou')} ({against('held_out.foreground_iou', t['foreground_iou'])}); "
            f"{spread('train_cpu_seconds', n0)} CPU-s of training per run")


def training_row(d: dict) -> str:
    groups = d["groups"]
    fp32 = [r for r in groups.get("models", []) if "images_per_s" in r]
    bf16 = [r for r in groups.get("precision", []) if "cpu_efficiency_vs_ref" in r]
    speed = ", ".join(f"{r['model']} {n1(r['images_per_s'])} img/s ({n1(r['cpu_ms_per_image'])} CPU ms/img)"
                      for r in fp32)
    text = (f"float32 training steps on in-memory data, {d['img_size']} px, batch {d['batch_size']}: {speed}")
    if bf16:
        text += ("; mixed bfloat16's CPU efficiency against float32 in the same run (above 1: cheaper): "
                 + ", ".join(f"{r['model']} {n2(r['cpu_efficiency_vs_ref'])}" for r in bf16))
    return text


def preparation_row(conv: dict, pipe: dict) -> str:
    real = conv["results"]["real_sample"]
    target = conv["targets"]["conversion_vs_decode_reencode"]
    fit = pipe["pipelines"]["segpipe_augment_cached"]["fit_epochs"]
    return (f"TFRecord conversion of the {real['images']}-image sample: **{n0(real['conversion_images_per_s'])} "
            f"images/s**, {100 * real['vs_decode_reencode']:.0f}% of decode + re-encode (target "
            f"{100 * target['target']:.0f}%: {met(real['vs_decode_reencode'] >= target['target'])}); the epochs "
            f"`fit` reads: **{n0(fit['images_per_s'])} images/s** at {pipe['img_size']} px, "
            f"{ratio(fit['vs_per_file'])} the Keras example's per-file pipeline in the same run")


def serving_row(d: dict) -> str:
    from benchmarks.render_serving import SERVING_ROWS

    t, res = d["targets"], d["results"]
    fast, light = res[t["fastest_export"]], res[t["lightest_tf_free_runtime"]]
    return (f"{SERVING_ROWS[t['fastest_export']]}: **{n1(fast['latency_ms'])} ms** for one image against Keras "
            f"`predict`'s {n1(res['keras']['latency_ms'])} ms, **{ratio(t['fastest_speedup_vs_keras'])}** faster "
            f"(target {t['fastest_speedup_target']:g}x: "
            f"{met(t['fastest_speedup_vs_keras'] >= t['fastest_speedup_target'])}); "
            f"{SERVING_ROWS[t['lightest_tf_free_runtime']]}: peak memory {n0(light['peak_rss_mb'])} MB, "
            f"{n2(t['lightest_rss_vs_keras'])} of the Keras process's (target at most {n2(t['rss_target'])}: "
            f"{met(t['lightest_rss_vs_keras'] <= t['rss_target'])})")


def start_row(d: dict) -> str:
    p = d["prepare_cached_s"]
    text = (f"a cached `segpipe prepare`: **{n1(p['background_reused']['median'])} s** with the background server "
            f"reused, {n1(p['embedded']['median'])} s with an embedded server per command ("
            f"{ratio(p['embedded_over_background'])}, same run; target {p['target']:g} s: "
            f"{met(p['background_meets_target'])})")
    one = d.get("predict_one_image_s")
    if one and {"keras_background", "litert_background", "target"} <= set(one):
        k, lite = one["keras_background"]["median"], one["litert_background"]["median"]
        text += (f"; `segpipe predict` of one image, background server: `.keras` **{n1(k)} s**, LiteRT "
                 f"**{n1(lite)} s** (target {one['target']:g} s: {met(k <= one['target'])}, "
                 f"{met(lite <= one['target'])})")
        if "keras_child_over_host" in one:
            text += (f"; loading the `.keras` model in the model host, TensorFlow already imported: "
                     f"{ratio(one['keras_child_over_host'])} faster than in a child of the command, "
                     f"{ratio(one['keras_no_preload_over_preload'])} faster than in the command after Prefect")
        elif "keras_no_preload_over_preload" in one:
            text += (f"; loading the `.keras` model in a child while Prefect starts: "
                     f"{ratio(one['keras_no_preload_over_preload'])} faster than after it")
    return text


ROWS: dict[str, tuple[str, Callable[..., str]]] = {
    "quality": ("quality", quality_row),
    "training speed": ("training", training_row),
    "data preparation": ("conversion", preparation_row),
    "serving": ("serving", serving_row),
    "local start-up": ("start", start_row),
}


def results_summary() -> str:
    """The five-row table: what, measured, machine, details (the BENCHMARKS.md section and the result files)."""
    lines = ["| what | measured | machine | details |", "|---|---|---|---|"]
    for what, (section, render_row) in ROWS.items():
        names = FILES[what]
        results = [load(n) for n in names]
        links = [section_link(section)] + ([section_link("input")] if what == "data preparation" else [])
        details = ", ".join(links) + "; " + ", ".join(f"`{n}`" for n in names)
        if any(r is None for r in results):
            lines.append(f"| {what} | not measured with full provenance (BENCHMARKS.md says which and why) | — "
                         f"| {details} |")
            continue
        machines = [machine(r["machine"]) for r in results]
        where = machines[0] if len(set(machines)) == 1 else "; ".join(f"`{n}`: {m}" for n, m in zip(names, machines))
        earlier = [n for n in names if n in EARLIER_RECIPES]
        note = (f" (measured with the earlier `cpu-quick`: {', '.join(f'`{n}`' for n in earlier)}, labelled in "
                "BENCHMARKS.md)" if earlier else "")
        lines.append(f"| {what} | {render_row(*results)}{note} | {where} | {details} |")
    return "\n".join(lines)
