"""The helpers behind issue 20's throughput levers: the steady state skips the first epochs, ratios are taken
against the reference of the same round, and the render's 'cheaper' rule needs every round."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def levers(bench):
    return bench("train_levers")


def _run(ends: list[tuple[float, float]], per_epoch: int = 200) -> dict:
    return {"epoch_ends": [{"epoch": i, "wall_s": w, "cpu_s": c} for i, (w, c) in enumerate(ends)],
            "images_per_epoch": per_epoch, "wall_seconds": ends[-1][0] + 1, "cpu_share_percent": 150.0,
            "phases": {"train steps": {"cpu_share_percent": 170.0}}}


def test_the_steady_state_starts_after_the_skipped_epochs(levers):
    fig = levers.figures(_run([(60, 70), (80, 106), (100, 142)]), skip_epochs=1)
    assert fig["steady_images"] == 400
    assert fig["steady_wall_seconds"] == 40 and fig["steady_cpu_seconds"] == 72
    assert fig["images_per_cpu_second"] == pytest.approx(400 / 72)
    assert fig["cpu_share_percent"] == pytest.approx(180.0)
    assert fig["train_steps_cpu_share_percent"] == 170.0
    with pytest.raises(ValueError, match="3 epochs: none left after skipping 3"):
        levers.figures(_run([(60, 70), (80, 106), (100, 142)]), skip_epochs=3)


def test_ratios_are_against_the_reference_of_the_same_round(levers):
    def fig(cpu: float, wall: float) -> dict:
        return {"images_per_cpu_second": cpu, "images_per_wall_second": wall, "cpu_share_percent": 100.0,
                "train_steps_cpu_share_percent": None}

    rounds = [{"cpu-quick": fig(10, 5), "x": fig(12, 6)}, {"cpu-quick": fig(5, 5), "x": fig(6.5, 5)},
              {"cpu-quick": fig(8, 4), "x": fig(8, 4)}]
    s = levers.summarise(rounds)
    assert s["x"]["images_per_cpu_second_vs_reference_per_round"] == [1.2, 1.3, 1.0]
    assert s["x"]["images_per_cpu_second_vs_reference"] == 1.2
    assert s["x"]["images_per_cpu_second"] == 8.0  # the median of 12, 6.5, 8
    assert s["cpu-quick"]["images_per_cpu_second_vs_reference"] == 1.0
    assert s["x"]["rounds"] == 3


def test_a_lever_is_cheaper_only_when_every_round_says_so(bench):
    render = bench("render_throughput")
    assert render.cheaper({"images_per_cpu_second_vs_reference_per_round": [1.06, 1.30]})
    assert not render.cheaper({"images_per_cpu_second_vs_reference_per_round": [1.04, 1.30]})


def test_the_throughput_target_is_read_against_the_earlier_recipe_of_each_round(bench):
    render = bench("render_throughput")
    # per round, each variant against cpu-quick; the target's ratio is cpu-quick (or img-160) over earlier-recipe
    d = {"summary": {"cpu-quick": {"images_per_cpu_second_vs_reference_per_round": [1.0, 1.0]},
                     "img-160": {"images_per_cpu_second_vs_reference_per_round": [1.8, 1.6]},
                     "earlier-recipe": {"images_per_cpu_second_vs_reference_per_round": [1.25, 0.8]}}}
    assert render.over_earlier(d, "cpu-quick") == pytest.approx([0.8, 1.25])
    assert render.over_earlier(d, "img-160") == pytest.approx([1.44, 2.0])


def test_the_earlier_recipe_variant_is_cpu_quick_as_issue_20_found_it(levers):
    from segpipe.config.schema import build_config

    spec = levers.VARIANTS["earlier-recipe"]
    cfg = build_config("cpu-quick", dict(item.split("=", 1) for item in spec["set"]))
    assert (cfg.train.img_size, cfg.model.aspp_filters, cfg.train.freeze_encoder_bn, cfg.train.fold_frozen_bn) == (
        160, 256, False, False)
    assert set(levers.OPT_IN) >= {"img-160", "earlier-recipe"}
