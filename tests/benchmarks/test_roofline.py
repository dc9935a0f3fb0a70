"""benchmarks/roofline.py and its modules: FLOP counting (TensorFlow's profiler, depthwise per layer,
roofline_models), the op grouping of the profile (roofline_profile), `render_markdown` (one table row per
preset, roofline_markdown), the machine aliases (roofline) and the head-first twin (roofline_ablations) -
without running the measurement."""

from __future__ import annotations

import types

import pytest


@pytest.fixture(scope="module")
def roofline():
    """The roofline's functions the tests call, from the modules that hold them."""
    from benchmarks import roofline, roofline_ablations, roofline_markdown, roofline_models, roofline_profile

    return types.SimpleNamespace(
        count_forward_flops=roofline_models.count_forward_flops, depthwise_layers=roofline_models.depthwise_layers,
        depthwise_flops=roofline_models.depthwise_flops, preset_config=roofline_models.preset_config,
        step_flops=roofline_models.step_flops, op_group=roofline_profile.op_group,
        render_markdown=roofline_markdown.render_markdown, add_machine_aliases=roofline.add_machine_aliases,
        head_first_pair=roofline_ablations.head_first_pair)


def test_conv_flops_are_2_h_w_cin_cout_k2_b(roofline):
    import keras

    h, w, cin, cout, k, b = 20, 24, 8, 16, 3, 2
    inp = keras.Input((h, w, cin))
    model = keras.Model(inp, keras.layers.Conv2D(cout, k, padding="same", use_bias=False)(inp))
    counted = roofline.count_forward_flops(model, b)
    expected = 2 * h * w * cin * cout * k * k * b
    assert counted["total"] == pytest.approx(expected, rel=0.01)
    assert set(counted["by_op"]) == {"Conv2D"}


def test_depthwise_flops_counted_per_layer(roofline):
    import keras

    h, w, c, b = 16, 16, 12, 3
    inp = keras.Input((h, w, c))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(inp)
    inner = keras.Model(inp, x, name="inner")  # nested models are searched too
    outer_in = keras.Input((h, w, c))
    model = keras.Model(outer_in, keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(inner(outer_in)))
    assert len(roofline.depthwise_layers(model)) == 2
    assert roofline.depthwise_flops(model, b) == 2 * 9 * c * b * (h * w + (h // 2) * (w // 2))


def test_tiny_preset_step_flops(roofline):
    cfg = roofline.preset_config("tiny")
    flops = roofline.step_flops(cfg)
    assert flops["forward_flops"] > 1e6
    assert flops["train_step_flops"] == pytest.approx(3 * flops["forward_flops"])
    assert flops["depthwise_flop_share"] == 0.0  # the classic U-Net has none
    assert flops["params"] > 0


def test_op_groups(roofline):
    g = roofline.op_group
    assert g("m/encoder/block_1_depthwise/depthwise", "_MklNativeDepthwiseConv2dNativeBackpropFilter").startswith(
        "depthwise")
    assert g("m/conv/convolution", "_MklNativeConv2D").startswith("conv")
    assert g("m/block/convolution/Cast", "Cast") == "casts (bfloat16)"
    assert g("StatefulPartitionedCall/adam/Sub_3", "Sub").startswith("optimizer")
    assert g("m/relu/Relu", "Relu").startswith("element-wise")


def _fake_result(names):
    preset = {"model": "unet", "encoder": None, "img_size": 32, "batch_size": 4, "policy_measured": "float32",
              "train_step_flops": 4.1e7, "depthwise_flop_share": 0.0, "step_wall_s": 0.03, "step_cpu_s": 0.012,
              "achieved_gflops_wall": 1.3, "peak_gflops": 200.0, "fraction_of_peak": 0.0065, "images_per_cpu_s": 333.3,
              "achieved_gflops_per_cpu_s": 3.8, "peak_gflops_per_cpu_s": 235.0, "fraction_of_peak_per_cpu_s": 0.016}
    variant = {"note": "x", "step_wall_s": 1.0, "step_cpu_s": 0.5, "images_per_cpu_s": 16.0, "images_per_s": 8.0}
    return {
        "machine": {"cpu_model": "Test CPU", "cores": 2, "load_before": [1.0, 1, 1], "load_after": [2.0, 2, 2]},
        "peaks": {"rounds": 2, "matmul_n": 64, "gflops": {"matmul_float32": 100.0, "matmul_bfloat16": 50.0,
                                                            "conv3x3_float32": 90.0, "conv3x3_bfloat16": 120.0,
                                                            "depthwise3x3_float32": 10.0, "depthwise3x3_bfloat16": 5.0},
                  "bf16_over_fp32": {"matmul": 0.5, "conv3x3": 1.33, "depthwise3x3": 0.5}},
        "presets": {n: dict(preset) for n in names},
        "ablations": {"preset": "cpu-quick", "variants": {"baseline": variant, "spe8": {**variant, "images_per_cpu_s": 24.0}},
                      "failed": {}, "profile": {"steps": 2, "op_time_over_cpu_time": 1.1,
                                                "share_of_op_time": {"conv (fwd+bwd)": 0.5, "casts (bfloat16)": 0.1},
                                                "per_step_ms_by_group": {"conv (fwd+bwd)": 100.0}}},
        "candidates": [{"knob": "spe", "preset_change": "spe 8", "images_per_cpu_s_before": 16.0,
                        "images_per_cpu_s_after": 24.0, "ratio_images_per_cpu_s": 1.5, "ratio_images_per_s": 1.4,
                        "quality": "none"}],
    }


def test_render_has_a_row_per_preset_and_the_tables(roofline):
    names = ["tiny", "cpu-quick", "cpu-scratch", "keras-example", "full"]
    result = _fake_result(names)
    result["presets"]["full"] = {"error": "ResourceExhaustedError: out of memory\n | more"}
    text = roofline.render_markdown(result)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in names]
    assert [r.split("|")[1].strip() for r in rows] == names
    assert "1.6%" in rows[0]  # the fraction of peak per CPU-second
    assert "failed" in rows[-1] and rows[-1].count("|") == 13  # one line, no stray pipes
    assert "| casts (bfloat16) | 10.0% |" in text
    assert "1.50x" in text and "Test CPU" in text
    assert text.endswith("\n")


def test_machine_aliases_for_the_provenance_line(roofline):
    result = roofline.add_machine_aliases(_fake_result(["tiny"]))
    m = result["machine"]
    assert m["cpus"] == 2 and m["load_average_start"][0] == 1.0 and m["load_average_end"][0] == 2.0
    assert m["peak_matmul_gflops_float32"] == 100.0


def test_head_first_twin_computes_the_same_function(roofline):
    """The 1x1 head before the last bilinear x4 upsampling: same weights, same outputs (to rounding)."""
    import numpy as np

    small = {"train.img_size": 64, "model.encoder_alpha": 0.35}
    model, twin = roofline.head_first_pair("float32", small)
    head = model.get_layer("head_logits")
    kernel, _ = head.get_weights()
    rng = np.random.default_rng(0)
    new_head = [rng.normal(size=kernel.shape).astype("float32"), np.array([0.3, -0.2, 0.1], "float32")]
    head.set_weights(new_head)
    twin.get_layer("head_logits").set_weights(new_head)
    x = rng.uniform(size=(2, 64, 64, 3)).astype("float32")
    a, b = np.asarray(model(x, training=False)), np.asarray(twin(x, training=False))
    assert twin.count_params() == model.count_params()
    assert twin.get_layer("output_upsample4").output.shape[-1] == 3
    assert a.std() > 0.01  # not a trivial (uniform) output
    np.testing.assert_allclose(a, b, atol=1e-5)
