"""The helpers behind issue 20's lever and CPU-share benchmarks: a model rebuilt at another input size keeps
its function, the border band has the width it claims, gains are paired by seed, and the CPU-share sampler
names the phase the main thread is in and charges contiguous wall time."""

from __future__ import annotations

import sys
import time
import numpy as np
import pytest

@pytest.fixture(scope="module")
def levers(bench):
    return bench("test_time_levers")


@pytest.fixture(scope="module")
def cpu_share(bench):
    return bench("cpu_share")


def test_a_rebuilt_model_computes_the_same_function_at_its_own_size_and_runs_at_another(levers):
    from segpipe.models import build_model

    model = build_model("deeplabv3plus", (64, 64, 3), 3, encoder="mobilenetv2", encoder_weights=None,
                        aspp_filters=8, aspp_rates=(1, 2))
    batch = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    same = levers.rebuilt_at(model, 64)
    np.testing.assert_allclose(np.asarray(same(batch)), np.asarray(model(batch)), atol=1e-6)
    bigger = levers.rebuilt_at(model, 96)
    assert bigger.input_shape == (None, 96, 96, 3)
    out = np.asarray(bigger(np.random.default_rng(1).random((1, 96, 96, 3)).astype(np.float32)))
    assert out.shape == (1, 96, 96, 3)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-4)


def test_the_grown_masks_are_square_neighbourhoods(levers):
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = levers._grown(mask, 3)
    assert [int(g.sum()) for g in grown] == [1, 9, 25, 49]
    pet = np.zeros((20, 20), bool)
    pet[5:15, 5:15] = True
    inside = levers._grown(~pet, 2)[2] & pet  # the pet's pixels within 2 of its outline
    assert int(inside.sum()) == 100 - 36  # a 10x10 square less its 6x6 core


def test_gains_are_paired_by_seed(levers):
    def run(flip, other):
        ways = {"flip": flip, "x": other}
        return {"ways": {k: {"val_mean_iou": v, "val_iou": {"border": v / 2}, "cpu_seconds_per_image": 1.0}
                         for k, v in ways.items()}}

    summary = levers.summarise([run(0.70, 0.72), run(0.80, 0.79)])
    assert summary["x"]["gain_over_flip"]["min"] == pytest.approx(-0.01)
    assert summary["x"]["gain_over_flip"]["max"] == pytest.approx(0.02)
    assert summary["x"]["val_mean_iou"]["mean"] == pytest.approx(0.755)
    assert summary["flip"]["gain_over_flip"]["mean"] == 0


def test_the_phase_is_read_from_the_main_threads_stack(cpu_share):
    def fit():
        def evaluate():
            return cpu_share.phase_of(sys._getframe())

        def on_epoch_end():
            return cpu_share.phase_of(sys._getframe())

        return evaluate(), on_epoch_end(), cpu_share.phase_of(sys._getframe())

    assert fit() == ("validation", "epoch callbacks", "fit other")
    assert cpu_share.phase_of(sys._getframe()) == "setup"


def test_the_sampler_charges_every_second_and_sees_a_busy_thread(cpu_share):
    sampler = cpu_share.Sampler(0.02)
    sampler.start()
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # busy in this thread: about 100% of one core
        pass
    sampler.stop()
    elapsed = time.monotonic() - sampler.started[0]
    wall, cpu = sum(sampler.wall.values()), sum(sampler.cpu.values())
    assert set(sampler.wall) == {"setup"}
    assert 0 < wall <= elapsed  # samples are contiguous from the first reading on; the last partial one is dropped
    assert cpu > 0 and sampler.threads  # the busy loop's CPU reached the samples, read per thread
