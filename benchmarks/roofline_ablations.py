"""Roofline (benchmarks/roofline.py), the comparisons on the default preset: the ablations (EMA, precision,
steps_per_execution, fit against a bare step loop, XLA, depthwise layers and augmentation alone, and the
profile), bfloat16 against float32 per preset, the head-first twin, and the speed-up candidates drawn from
them."""

from __future__ import annotations

from typing import Any

from benchmarks.common import load_average, log, r
from benchmarks.roofline_measure import (augment_variant, bare_step_variant, depthwise_variant, fit_variant,
                                         run_rounds)
from benchmarks.roofline_models import DEFAULT_PRESET, compiled_model, policy_for, preset_config, synthetic_dataset
from benchmarks.roofline_profile import profile_step


def ablations(peaks: dict[str, Any], steps: int, rounds: int, xla: bool, profile_steps: int) -> dict[str, Any]:
    import keras

    cfg = preset_config(DEFAULT_PRESET)
    t = cfg.train
    policy, measured_policy = policy_for(t.mixed_precision)
    ds, data = synthetic_dataset(t.img_size, t.batch_size)
    b = t.batch_size
    base = compiled_model(cfg, measured_policy)
    variants = {
        "baseline": fit_variant("baseline", base, ds, b, f"preset as trained: {measured_policy}, EMA, fit, spe 1"),
        "no_ema": fit_variant("no_ema", compiled_model(cfg, measured_policy, ema=False), ds, b, "EMA off"),
        "float32": fit_variant("float32", compiled_model(cfg, "float32"), ds, b, "float32 policy"),
        "spe8": fit_variant("spe8", compiled_model(cfg, measured_policy, steps_per_execution=8), ds, b,
                            "steps_per_execution=8"),
        "bare_step": bare_step_variant("bare_step", base, data, b, "tf.function(model.train_step) loop, no fit"),
    }
    if xla:
        variants["xla"] = fit_variant("xla", compiled_model(cfg, measured_policy, jit_compile=True), ds, b,
                                      "jit_compile=True")
        variants["xla_float32"] = fit_variant("xla_float32", compiled_model(cfg, "float32", jit_compile=True), ds,
                                              b, "jit_compile=True, float32 policy")
    if measured_policy != "float32":
        variants["float32_spe8"] = fit_variant(
            "float32_spe8", compiled_model(cfg, "float32", steps_per_execution=8), ds, b,
            "float32 policy, steps_per_execution=8")
    variants["depthwise"] = depthwise_variant(base, b)
    variants["augment"] = augment_variant(cfg)
    step_counts = {k: (steps if "spe8" not in k else max(8, steps - steps % 8)) for k in variants}
    step_counts["augment"] = steps * 2
    failed: dict[str, str] = {}
    for k, v in list(variants.items()):
        try:
            log(f"ablation warm-up {k}")
            v.warm(8 if "spe8" in k else 2)
        except Exception as exc:  # noqa: BLE001 - an unsupported knob (e.g. XLA on an op) is a result too
            text = str(exc)
            failed[k] = f"{type(exc).__name__}: {text[:200]} ... {text[-700:]}" if len(text) > 900 else \
                f"{type(exc).__name__}: {text}"
            log(f"ablation {k} failed: {failed[k]}")
            del variants[k]
    for round_i in range(rounds):
        for k, v in variants.items():
            v.time(step_counts[k])
        log(f"ablations round {round_i + 1}/{rounds}:",
            {k: round(v.samples[-1]["wall_s"] / v.samples[-1]["steps"], 3) for k, v in variants.items()},
            "load", load_average())
    summ = {k: v.summary() for k, v in variants.items()}
    log("profiling the baseline step")
    prof = profile_step(base, ds, profile_steps)
    b0 = summ["baseline"]

    def ratio(k: str, field: str = "images_per_cpu_s") -> float | None:
        return r(summ[k][field] / b0[field], 3) if k in summ else None

    shares = {
        "ema": r(1 - summ["no_ema"]["step_cpu_s"] / b0["step_cpu_s"], 3) if "no_ema" in summ else None,
        "fit_overhead_vs_bare_step": (r(1 - summ["bare_step"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                      if "bare_step" in summ else None),
        "depthwise_layers_alone": (r(summ["depthwise"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                   if "depthwise" in summ else None),
        "augmentation_per_batch_over_step": (r(summ["augment"]["step_cpu_s"] / b0["step_cpu_s"], 3)
                                             if "augment" in summ else None),
    }
    ratios = {k: {"images_per_cpu_s": ratio(k), "images_per_s": ratio(k, "images_per_s")}
              for k in summ if k not in ("baseline", "depthwise", "augment")}
    return {"preset": DEFAULT_PRESET, "policy_in_training": policy, "policy_measured": measured_policy,
            "img_size": t.img_size, "batch_size": b, "variants": summ, "failed": failed,
            "ratios_vs_baseline": ratios, "shares_of_baseline_step_cpu": shares, "profile": prof}


def precision_check(names: list[str], steps: int, rounds: int) -> dict[str, Any]:
    """For each preset whose policy here is mixed_bfloat16: its step in mixed_bfloat16 and in float32,
    interleaved in one process (ratio: float32 images per CPU-second over bfloat16's)."""
    import keras

    out: dict[str, Any] = {"load_before": load_average()}
    for name in names:
        cfg = preset_config(name)
        _, measured_policy = policy_for(cfg.train.mixed_precision)
        if measured_policy != "mixed_bfloat16":
            continue
        ds, _ = synthetic_dataset(cfg.train.img_size, cfg.train.batch_size)
        b = cfg.train.batch_size
        vs = [fit_variant("mixed_bfloat16", compiled_model(cfg, "mixed_bfloat16"), ds, b),
              fit_variant("float32", compiled_model(cfg, "float32"), ds, b)]
        run_rounds(vs, steps, rounds, warm_steps=2, label=f"precision {name}")
        summ = {v.name: v.summary() for v in vs}
        out[name] = {"variants": summ,
                     "float32_over_bfloat16_images_per_cpu_s": r(
                         summ["float32"]["images_per_cpu_s"] / summ["mixed_bfloat16"]["images_per_cpu_s"], 3),
                     "float32_over_bfloat16_images_per_s": r(
                         summ["float32"]["images_per_s"] / summ["mixed_bfloat16"]["images_per_s"], 3)}
        keras.backend.clear_session(free_memory=False)
    out["load_after"] = load_average()
    return out


def head_first_pair(policy: str, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """cpu-quick compiled with its last x4 bilinear resize on the decoder's 256 features, then the 1x1 head
    (`model.upsample_logits=false`, the layout before that knob), and its head-first twin (the default:
    the 1x1 head, then the resize on 3 logits), with the same weights: the same function, since a 1x1
    convolution and a bilinear resize (weights summing to 1) commute."""
    over = dict(overrides or {})
    base = compiled_model(preset_config(DEFAULT_PRESET, {**over, "model.upsample_logits": False}), policy)
    twin = compiled_model(preset_config(DEFAULT_PRESET, {**over, "model.upsample_logits": True}), policy)
    twin.set_weights(base.get_weights())
    return base, twin


def head_first_check(steps: int, rounds: int) -> dict[str, Any]:
    """cpu-quick with the resize before the head ("as_built": the layout before `model.upsample_logits`)
    against its head-first twin (`head_first_pair`), in mixed_bfloat16 and float32, interleaved; plus the
    largest output difference of the twins (same weights) on one batch."""
    import numpy as np

    cfg = preset_config(DEFAULT_PRESET)
    t = cfg.train
    ds, (x, _) = synthetic_dataset(t.img_size, t.batch_size)
    out: dict[str, Any] = {"load_before": load_average(), "preset": DEFAULT_PRESET}
    variants = []
    for policy in ("mixed_bfloat16", "float32"):
        base, twin = head_first_pair(policy)
        a = np.asarray(base(x, training=False), dtype=np.float64)
        b = np.asarray(twin(x, training=False), dtype=np.float64)
        out[f"max_abs_output_difference_{policy}"] = float(np.max(np.abs(a - b)))
        out[f"argmax_agreement_{policy}"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        variants += [fit_variant(f"as_built_{policy}", base, ds, t.batch_size),
                     fit_variant(f"head_first_{policy}", twin, ds, t.batch_size)]
    run_rounds(variants, steps, rounds, warm_steps=2, label="head-first")
    summ = {v.name: v.summary() for v in variants}
    base_ips = summ["as_built_mixed_bfloat16"]["images_per_cpu_s"]
    out["variants"] = summ
    out["ratios_vs_as_built_bfloat16"] = {k: r(v["images_per_cpu_s"] / base_ips, 3) for k, v in summ.items()}
    out["load_after"] = load_average()
    return out


def head_first_candidates(hf: dict[str, Any]) -> list[dict[str, Any]]:
    v = hf["variants"]
    base = v["as_built_mixed_bfloat16"]
    out = []
    for key, knob, change, quality in (
        ("head_first_mixed_bfloat16", "1x1 head before the last x4 upsampling (model code)",
         "segpipe/models/deeplabv3plus.py: softmax_head's Conv2D before output_upsample4",
         f"the same function (largest output difference {hf['max_abs_output_difference_mixed_bfloat16']:.1e})"),
        ("as_built_float32", "mixed_precision off (float32)", "cpu-quick: mixed_precision = 'off'",
         "float32 maths (the reference precision)"),
        ("head_first_float32", "head first + float32", "both of the above",
         f"the same function in float32 (largest output difference "
         f"{hf['max_abs_output_difference_float32']:.1e})"),
    ):
        out.append({"variant": key, "knob": knob, "preset_change": change, "quality": quality,
                    "images_per_cpu_s_before": base["images_per_cpu_s"],
                    "images_per_cpu_s_after": v[key]["images_per_cpu_s"],
                    "ratio_images_per_cpu_s": r(v[key]["images_per_cpu_s"] / base["images_per_cpu_s"], 3),
                    "ratio_images_per_s": r(v[key]["images_per_s"] / base["images_per_s"], 3),
                    "measured_in": "head_first"})
    return out


def candidates(abl: dict[str, Any]) -> list[dict[str, Any]]:
    """Speed-up candidates from the ablations: knob, preset change, images per CPU-second before/after."""
    v = abl["variants"]
    base = v["baseline"]
    specs = [
        ("spe8", "compile(steps_per_execution=8)", "a new train.steps_per_execution field = 8 (fit's loop: one "
         "call per 8 steps)", "none: the same maths, step by step"),
        ("xla", "compile(jit_compile=True)", "cpu-quick: train.jit_compile = true", "none in principle (XLA fuses "
         "ops; float rounding may differ in the last bits)"),
        ("xla_float32", "jit_compile=True, float32", "jit_compile = true, mixed_precision = 'off'",
         "float32 maths (the reference precision)"),
        ("float32_spe8", "float32 + steps_per_execution=8", "mixed_precision = 'off' + steps_per_execution 8",
         "float32 maths (the reference precision)"),
        ("bare_step", "no fit machinery (bound on what fit's overhead costs)", "none (a reference)", "none"),
        ("float32", "mixed_precision off (float32)", "mixed_precision = 'off'", "float32 maths (the reference "
         "precision)"),
        ("no_ema", "ema_momentum=None", "drop the EMA", "yes: validation and the saved model use the raw weights"),
    ]
    out = []
    for key, knob, change, quality in specs:
        if key not in v:
            continue
        out.append({"variant": key, "knob": knob, "preset_change": change, "quality": quality,
                    "images_per_cpu_s_before": base["images_per_cpu_s"],
                    "images_per_cpu_s_after": v[key]["images_per_cpu_s"],
                    "ratio_images_per_cpu_s": r(v[key]["images_per_cpu_s"] / base["images_per_cpu_s"], 3),
                    "ratio_images_per_s": r(v[key]["images_per_s"] / base["images_per_s"], 3)})
    return out


