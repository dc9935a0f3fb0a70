"""The training-side blocks of BENCHMARKS.md (benchmarks/render.py renders them): the input
pipeline, the warp check, the TFRecord conversion, train throughput, bfloat16, the storage summary and the
roofline (its tables from `roofline_markdown.render_markdown`)."""

from __future__ import annotations

from benchmarks.render_common import (NOT_MEASURED, ROOT, WITHDRAWN, load, missing, n0, n1, n2, provenance, ratio,
                                      verdict)
from benchmarks.roofline_markdown import render_markdown

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
        f"`warp_batch` against `ImageProjectiveTransformV3`, same inputs and transforms: largest image difference "
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
    """One sentence for BENCHMARKS.md section 3: what a bfloat16 training step costs against float32 on the
    machine measured."""
    d = load("train_throughput.json")
    rows = [r for r in (d or {}).get("groups", {}).get("precision", []) if "bfloat16" in str(r.get("precision"))
            and "cpu_efficiency_vs_ref" in r]
    if not rows:
        return "bfloat16 against float32: " + NOT_MEASURED.lower()
    costs = ", ".join(f"{r['model']} {1 / r['cpu_efficiency_vs_ref']:.2f}x" for r in rows)
    m = d["machine"]
    return (f"Measured on {m['cpu_model']}, {m['cpus']} cores (`benchmarks/results/train_throughput.json`, "
            f"the precision table above): CPU per image of a mixed-bfloat16 training step, as a multiple of "
            f"float32's in the same run (below 1: cheaper): {costs}. Its effect on quality was not measured "
            "separately.")


def roofline() -> str:
    result = load("roofline.json")
    if result is None or not (ROOT / "benchmarks" / "roofline.py").is_file():
        return ("Not measured with full provenance: `roofline.json` was withdrawn (" + WITHDRAWN["roofline.json"]
                + "). `.venv/bin/python benchmarks/roofline.py --out benchmarks/results/roofline.json` re-measures it.")
    return render_markdown(result).rstrip("\n") + "\n\n" + provenance(result, "roofline.json")


def storage_summary() -> str:
    """BENCHMARKS.md section 2, in short: conversion and reading speed of original-size shards."""
    conv, pipe = load("tfrecord_conversion.json"), load("input_pipeline.json")
    if conv is None or pipe is None:
        return NOT_MEASURED
    real = conv["results"]["real_sample"]
    main = pipe["pipelines"]["segpipe_augment_cached"]
    fit, first = main["fit_epochs"], main
    cm, pm = conv.get("machine", {}), pipe.get("machine", {})

    def where(m: dict) -> str:
        return f"{m['cpu_model']}, {m['cpus']} cores" if m.get("cpu_model") else f"{m.get('cpus')} cores, CPU model not recorded"

    return (f"In short, for shards of original-size images (sections 1 and 2): conversion costs about what validation's decode costs anyway "
            f"({n0(real['conversion_images_per_s'])} images/s for the {real['images']}-image sample on {where(cm)}; "
            f"peak memory {conv['peak_rss_growth_mb']:+.0f} MB from {conv['targets']['peak_rss_flat']['sizes'][0]:,} "
            f"to {conv['targets']['peak_rss_flat']['sizes'][-1]:,} images); the shards are the size of the files "
            f"({n0(real['shard_mb_total'])} MB for the sample). Reading is bounded in the first epoch by full-size "
            f"JPEG decoding ({n0(first['epoch1_images_per_s'])} images/s with augmentation), but the training "
            f"pipeline decodes and resizes once, caches, and augments per epoch, so the epochs `fit` reads deliver "
            f"{n0(fit['images_per_s'])} images/s at {pipe['img_size']} px on {where(pm)}: "
            f"{ratio(fit['vs_per_file'])} the Keras example's per-file pipeline and {ratio(fit['vs_training'])} what "
            "training consumes, in the same run.")
