"""The run-time blocks of BENCHMARKS.md (benchmarks/render.py renders them): orchestration (`segpipe run` and
its start-up costs), inference (`predict` and `evaluate`), the exported runtimes, and local start-up (an
embedded Prefect server per command against the background server reused)."""

from __future__ import annotations

import statistics

from benchmarks.render_common import load, missing, n0, n1, n2, provenance, ratio, verdict


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


PORTABILITY = "export-portability.json"
PORTABILITY_COMMAND = (".venv/bin/python benchmarks/export_portability.py prepare --model <a cpu-quick run's model.keras> "
                       "--bundle B; python3 benchmarks/export_portability.py there --bundle B --out-dir T (on the "
                       "other machine); .venv/bin/python benchmarks/export_portability.py compare --bundle B --there T "
                       "--out benchmarks/results/export-portability.json")


def export_portability() -> str:
    """The TensorFlow-free exports run here and on another machine's Python and runtimes: identical masks per
    artifact, and what differed between the two machines."""
    d = load(PORTABILITY)
    if d is None:
        return missing(PORTABILITY, PORTABILITY_COMMAND)
    here, there = d["here"]["this_python"], d["there"]["this_python"]
    keys = ("python", "numpy", "pillow", "onnxruntime", "ai-edge-litert", "cores")
    rows = ["| | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
            "| this machine | " + " | ".join(str(here.get(k)) for k in keys) + " |",
            "| the other machine | " + " | ".join(str(there.get(k)) for k in keys) + " |", "",
            "| artifact | images | identical masks | pixel agreement (lowest image) |", "|---|---:|---:|---:|"]
    for name, res in d["results"].items():
        rows.append(f"| `{d['artifacts'][name]}` | {res['n_images']} | {res['identical_masks']} | "
                    f"{res['pixel_agreement_min']:.4f} |")
    gaps = [f"`{n}` skipped there ({why})" for n, why in d.get("skipped_there", {}).items()]
    gaps += [f"`{n}` failed there ({why.splitlines()[0]})" for n, why in d.get("failed_there", {}).items()]
    same = all(r["identical_masks"] == r["n_images"] for r in d["results"].values())
    verdict = ("Every mask is identical, pixel for pixel, on both machines." if same else
               "Not every mask is identical across the two machines: see the table.")
    return "\n".join([*rows, "", verdict + (" " + "; ".join(gaps) + "." if gaps else ""), "",
                      provenance(d, PORTABILITY)]) + "\n"


def _wall_cpu(run: dict) -> str:
    return f"{n1(run['wall_s'])} ({n1(run['cpu_s'])})"


def local_start() -> str:
    """BENCHMARKS.md section 8: fresh `segpipe` processes with an embedded Prefect server per command against the
    background server reused (`benchmarks/local_start.py`); the one-image predict rows when the file has them."""
    name = "local_start.json"
    d = load(name)
    if d is None:
        return missing(name, ".venv/bin/python benchmarks/local_start.py --out benchmarks/results/local_start.json")
    p, first = d["prepare_cached_s"], d["first_command_fresh_prefect_home_s"]

    def cpu_median(runs: list[dict]) -> str:
        return n1(statistics.median(r["cpu_s"] for r in runs))

    rows = ["| command | embedded server per command: wall s (CPU-s) | background server: wall s (CPU-s) "
            "| embedded / background | target (background) |", "|---|---:|---:|---:|---|"]
    rows.append(f"| cached `segpipe prepare --preset tiny`, median of {d['rounds']} interleaved rounds "
                f"| {n1(p['embedded']['median'])} ({cpu_median(p['embedded']['runs'])}) "
                f"| **{n1(p['background_reused']['median'])}** ({cpu_median(p['background_reused']['runs'])}) "
                f"| {ratio(p['embedded_over_background'])} | {p['target']:g} s: "
                f"**{'met' if p['background_meets_target'] else 'not met'}** |")
    one = d.get("predict_one_image_s")
    if one and {"keras_background", "litert_background", "target"} <= set(one):
        emb = one.get("keras_embedded", {}).get("median")
        for key, label in (("keras_background", "`.keras`"), ("litert_background", "LiteRT float32")):
            ok = one.get(f"{key}_meets_target", one[key]["median"] <= one["target"])
            emb_cell = f"{n1(emb)}" if key == "keras_background" and emb is not None else "—"
            vs = (ratio(one["keras_embedded_over_background"]) if key == "keras_background"
                  and "keras_embedded_over_background" in one else "—")
            rows.append(f"| `segpipe predict` of {one.get('image', 'one image')}, {label} "
                        f"({one.get('model', 'model not recorded')}), median of {d['rounds']} rounds | {emb_cell} "
                        f"| **{n1(one[key]['median'])}** | {vs} | {one['target']:g} s: "
                        f"**{'met' if ok else 'not met'}** |")
    if one and "keras_background_child" in one:
        rows.append(f"| the same `.keras` predict with `SEGPIPE_PRELOAD=child` (TensorFlow imported and the model "
                    f"loaded in a child of the command while Prefect starts), median of {d['rounds']} rounds | — "
                    f"| {n1(one['keras_background_child']['median'])} "
                    f"| {ratio(one['keras_child_over_host'])} slower than with the model host | — |")
    if one and "keras_background_no_preload" in one:
        rows.append(f"| the same `.keras` predict with `SEGPIPE_PRELOAD=off` (the model loads after Prefect, in the "
                    f"command's own process, as before the preload), median of {d['rounds']} rounds | — "
                    f"| {n1(one['keras_background_no_preload']['median'])} "
                    f"| {ratio(one['keras_no_preload_over_preload'])} slower than with the model host | — |")
    if one and "keras_background_starting_the_model_host" in one:
        rows.append("| the first `.keras` predict, which starts the model host (once, until `segpipe server stop` "
                    f"or {one['model_host_idle_s'] / 60:g} min unused) | — | {_wall_cpu(one['keras_background_starting_the_model_host'])} | — | — |")
    rows.append("| first command on a fresh PREFECT_HOME (cached prepare; the background one starts the server) "
                f"| {_wall_cpu(first['embedded'])} | {_wall_cpu(first['background_starting_the_server'])} | — | — |")
    rows.append(f"| uncached `segpipe prepare --preset tiny` | {_wall_cpu(d['prepare_uncached_embedded_s'])} "
                "| — | — | — |")
    cli = " ".join(f"`segpipe {'--help' if k == 'help' else k}` {n2(v['median'])} s (target under "
                   f"{v['target']:g} s: {'met' if v['meets_target'] else 'not met'})." for k, v in d["cli_s"].items())
    return "\n".join([
        f"Fresh `segpipe` processes on a tiny synthetic dataset, each command timed whole. CPU-s: "
        f"{d['cpu_s_note']}.", "",
        *rows, "",
        f"{cli} `segpipe server status` {n2(d['server_status_s'])} s, `segpipe server stop` "
        f"{n2(d['server_stop_s'])} s.", "", provenance(d, name)])
