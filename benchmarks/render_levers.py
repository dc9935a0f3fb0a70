"""BENCHMARKS.md, section 4, issue 20's test-time levers and where training's CPU goes: rendered from
`benchmarks/test_time_levers.py` (validation figures only, paired by training seed against flip TTA) and
`benchmarks/cpu_share.py` (CPU share per training phase and per thread pool).

A test-time lever qualifies for adoption only when it raises validation mean IoU on every training seed by at
least `ADOPT_GAIN` (a rule fixed before the figures of seeds 1 and 2 were measured); otherwise the block says
by how much it falls short. A lever that qualifies is built into evaluate, predict and export (`BUILT`: the
way's name, and the config field that runs it), checked again on validation as built
(`benchmarks/multiscale_tta.py`, block `multiscale-tta`), and only then scored on held-out images, once.
"""

from __future__ import annotations

from benchmarks.render_common import load, missing, n1, provenance

LEVERS = "test-time-levers.json"
CPU_SHARE = "cpu-share.json"
ADOPT_GAIN = 0.005
MULTISCALE = "multiscale-tta.json"
# the ways segpipe's evaluate, predict and export can run today, besides flip, and the setting that runs them
BUILT: dict[str, str] = {"flip+sizes 160,224": "eval.tta_sizes=[224]"}
LEVERS_COMMAND = (".venv/bin/python benchmarks/test_time_levers.py --quality <a quality.py result> "
                  "--work-dir <its work dir> --out benchmarks/results/test-time-levers.json")
MULTISCALE_COMMAND = (".venv/bin/python benchmarks/multiscale_tta.py --quality <a quality.py result> "
                      "--work-dir <its work dir> --sizes 224 --out benchmarks/results/multiscale-tta.json")
CPU_SHARE_COMMAND = (".venv/bin/python benchmarks/cpu_share.py --source ../shared/pets-sample "
                     "--set model.encoder_weights=<weights file> --out benchmarks/results/cpu-share.json")


def _range(x: dict, fmt: str = "{:.3f}", signed: bool = False) -> str:
    f = (lambda v: f"{v:+.3f}") if signed else fmt.format
    return f"{f(x['mean'])} ({f(x['min'])} to {f(x['max'])})" if signed else f"{f(x['mean'])} ({f(x['min'])}–{f(x['max'])})"


def test_time_levers() -> str:
    d = load(LEVERS)
    if d is None:
        return missing(LEVERS, LEVERS_COMMAND)
    seeds = ", ".join(str(r["train_seed"]) for r in d["runs"])
    n_val = d["runs"][0]["n_val_images"]
    rows = [f"| way (validation split, {n_val} images; training seeds {seeds}) | val mean IoU | val border IoU "
            "| gain over flip, paired by seed | CPU per image vs flip | meets the adoption rule |",
            "|---|---:|---:|---:|---:|---|"]
    qualified = []
    for name, s in d["summary"].items():
        gain = s["gain_over_flip"]
        ok = name != "flip" and gain["min"] >= ADOPT_GAIN
        if ok:
            qualified.append(name)
        verdict = "reference" if name == "flip" else ("**yes**" if ok else f"no (smallest gain {gain['min']:+.3f})")
        rows.append(f"| `{name}` | {_range(s['val_mean_iou'])} | {_range(s['val_border_iou'])} | "
                    f"{'—' if name == 'flip' else _range(gain, signed=True)} | {s['cpu_per_image_vs_flip']:.2f}x | "
                    f"{verdict} |")
    unbuilt = [q for q in qualified if q not in BUILT]
    if not qualified:
        tail = (f"No test-time lever raised validation mean IoU by {ADOPT_GAIN} on every seed: `cpu-quick` keeps flip "
                "TTA alone, and none of them was scored on held-out images.")
    else:
        best = max(qualified, key=lambda q: d["summary"][q]["gain_over_flip"]["mean"])
        tail = (f"Meet the rule: {', '.join(f'`{q}`' for q in qualified)}; the largest mean gain, `{best}`, costs "
                f"{d['summary'][best]['cpu_per_image_vs_flip']:.2f}x flip TTA's CPU per image. "
                + (f"Not adopted: segpipe's evaluate, predict and export do not run {', '.join(f'`{q}`' for q in unbuilt)}, "
                   "so `cpu-quick` keeps flip TTA alone and no held-out image was scored with them." if unbuilt else
                   "Built into evaluate, predict and export as "
                   + ", ".join(f"`{BUILT[q]}`" for q in qualified) + "; checked again as built in the next block."))
    return "\n".join(rows) + "\n\n" + tail + "\n\n" + provenance(d, LEVERS) + "\n"


def cpu_share() -> str:
    d = load(CPU_SHARE)
    if d is None:
        return missing(CPU_SHARE, CPU_SHARE_COMMAND)
    rows = ["| main thread's phase | wall s | share of the wall time | CPU-s | CPU share (of 200%) |",
            "|---|---:|---:|---:|---:|"]
    for name, p in d["phases"].items():
        share = "—" if p["cpu_share_percent"] is None else f"{p['cpu_share_percent']:.0f}%"
        rows.append(f"| {name} | {n1(p['wall_seconds'])} | {p['share_of_wall_percent']:.0f}% | {n1(p['cpu_seconds'])} "
                    f"| {share} |")
    unsampled = d["wall_seconds"] - sum(p["wall_seconds"] for p in d["phases"].values())
    if unsampled >= 0.05:  # the sampler's last reading came this long before training returned
        rows.append(f"| after the last sample (not attributed) | {n1(unsampled)} | "
                    f"{100 * unsampled / d['wall_seconds']:.0f}% | — | — |")
    total = d["cpu_seconds"]
    pools = ", ".join(f"`{name}` {cpu / total * 100:.0f}%" for name, cpu in list(d["threads_by_name"].items())[:6])
    head = (f"{d['epochs_completed']} epochs of `cpu-quick` ({d['configs'][0]['overrides'].get('train.budget_images')} "
            f"training images) took {n1(d['wall_seconds'])} s wall and {n1(total)} CPU-seconds: "
            f"**{d['cpu_share_percent']:.0f}%** of the {100 * d['cores']}% the {d['cores']} cores give, model build "
            "and dataset set-up included.")
    main = (f"The main thread (Python, Keras' loop and callbacks, and the ops it runs itself) spent "
            f"{n1(d['main_thread_cpu_seconds'])} CPU-s of them ({d['main_thread_cpu_seconds'] / total * 100:.0f}%).")
    return (head + "\n\n" + "\n".join(rows) + "\n\nCPU-seconds by thread name (share of the total): " + pools + ". "
            + main + "\n\n"
            + provenance(d, CPU_SHARE) + "\n")


def multiscale_tta() -> str:
    d = load(MULTISCALE)
    if d is None:
        return missing(MULTISCALE, MULTISCALE_COMMAND)
    s, runs = d["summary"], d["runs"]
    sizes = ",".join(map(str, d["sizes"]))
    seeds = ", ".join(str(r["train_seed"]) for r in runs)
    rows = [f"| training seed | val mean IoU, flip | val mean IoU, flip + sizes {sizes} | gain | "
            "held-out mean IoU, flip | held-out mean IoU, flip + sizes | held-out border IoU, flip → flip + sizes |",
            "|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        v, f, m = r["val"], r["held_out_flip_from_quality"], r["held_out_flip+sizes"]
        rows.append(f"| {r['train_seed']} | {v['flip']['mean_iou']:.3f} | {v['flip+sizes']['mean_iou']:.3f} | "
                    f"{v['flip+sizes']['mean_iou'] - v['flip']['mean_iou']:+.4f} | {f['mean_iou']:.3f} | "
                    f"{m['mean_iou']:.3f} | {f['iou']['border']:.3f} → {m['iou']['border']:.3f} |")
    gain, held = s["val_gain_over_flip"], s["held_out"]
    verdict = (f"**Meets the rule** on validation (smallest gain {gain['min']:+.4f})." if s["meets_rule_on_validation"]
               else f"**Misses the rule** on validation: the smallest gain is {gain['min']:+.4f}, "
                    f"{ADOPT_GAIN - gain['min']:.4f} short of {ADOPT_GAIN} (mean {gain['mean']:+.4f}).")
    text = (f"Validation ({s['n_val_images']} images) and held-out ({s['n_held_out_images']} images) splits; training "
            f"seeds {seeds}.\n\n" + "\n".join(rows) + "\n\n" + verdict
            + f" Held-out, over the {len(runs)} seeds: mean IoU {_range(held['flip']['mean_iou'])} with flip TTA, "
            f"{_range(held['flip+sizes']['mean_iou'])} with flip + sizes {sizes}; foreground IoU "
            f"{_range(held['flip']['foreground_iou'])} → {_range(held['flip+sizes']['foreground_iou'])}; border IoU "
            f"{_range(held['flip']['border_iou'])} → {_range(held['flip+sizes']['border_iou'])}. A whole evaluate "
            f"call costs {s['cpu_per_image_vs_flip']:.2f}x flip TTA's CPU per image, and building the model at the "
            f"extra size {s['rebuild_seconds']['mean']:.1f} s once per command.")
    return text + "\n\n" + provenance(d, MULTISCALE) + "\n"



BAND = "border-band.json"
BAND_COMMAND = (".venv/bin/python benchmarks/border_band.py --quality <quality.py results> "
                "--work-dir <its work dir> --out benchmarks/results/border-band.json")


def border_band() -> str:
    """The calibrated border band as built (`train.border_band=calibrated`) against the argmax."""
    d = load(BAND)
    if d is None:
        return missing(BAND, BAND_COMMAND)
    s, runs = d["summary"], d["runs"]
    rows = ["| training seed | val mean IoU, argmax | best band on val (inner/outer, ‰ of the longer side) | "
            "its val mean IoU | gain | val border IoU, argmax → band | held-out mean IoU, argmax → band | "
            "held-out border IoU, argmax → band |",
            "|---:|---:|---|---:|---:|---|---|---|"]
    for r in runs:
        c, b, a, h = r["calibration"], r["best_band_on_val"], r["held_out_argmax"], r["held_out_best_band"]
        rows.append(f"| {r['train_seed']} | {c['argmax']['mean_iou']:.3f} | {b['band'][0]}/{b['band'][1]} | "
                    f"{b['mean_iou']:.3f} | {r['val_gain_of_best_band']:+.4f} | {c['argmax']['border_iou']:.3f} → "
                    f"{b['border_iou']:.3f} | {a['mean_iou']:.3f} → {h['mean_iou']:.3f} | "
                    f"{a['iou']['border']:.3f} → {h['iou']['border']:.3f} |")
    gain = s["val_gain_of_best_band"]
    kept = ", ".join("the argmax" if b is None else f"band {b[0]}/{b[1]}" for b in s["bands_kept_by_calibration"])
    verdict = (f"**Meets the rule** on validation (smallest gain {gain['min']:+.4f})." if s["meets_rule_on_validation"]
               else f"**Misses the rule** on validation: the best band's smallest gain is {gain['min']:+.4f}, "
                    f"{ADOPT_GAIN - gain['min']:.4f} short of {ADOPT_GAIN}.")
    seeds = "seed" if len(runs) == 1 else "seeds"
    text = (f"Validation ({s['n_val_images']} images) and held-out ({s['n_held_out_images']} images) splits, "
            "both scored without test-time augmentation, as the calibration predicts, "
            f"{len(runs)} training {seeds}; {len(d['grid']) ** 2 - 1} bands tried.\n\n" + "\n".join(rows)
            + "\n\n" + verdict + f" What a calibrated training run would keep: {kept}. The calibration adds "
            f"{s['calibration_cpu_seconds']['mean']:.0f} CPU-seconds to a training run.")
    return text + "\n\n" + provenance(d, BAND) + "\n"
