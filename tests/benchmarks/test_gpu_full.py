"""benchmarks/gpu_full.py without a GPU: it checks its arguments, refuses to run on a CPU unless told to,
bounds the `full` preset with configuration fields that exist, and (slow) runs end to end with
--allow-cpu on a tiny synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import make_pets_archives

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_full.py"


def _run(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def gpu_full(bench):
    return bench("gpu_full")


def test_bad_arguments_exit_2_before_any_work(tmp_path):
    done = _run("--steps", "250", "--steps-per-epoch", "100", "--source", str(tmp_path))
    assert done.returncode == 2 and "multiple of --steps-per-epoch" in done.stderr
    done = _run("--weights", str(tmp_path / "missing.weights.h5"), "--source", str(tmp_path))
    assert done.returncode == 2 and "no such file" in done.stderr
    done = _run("--source", str(tmp_path / "nowhere"), "--weights", "none")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_full.json"
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too.
    done = _run("--source", str(tmp_path), "--weights", "none", "--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no GPU visible" in done.stderr and "--allow-cpu" in done.stderr
    assert not out.exists()


def test_overrides_bound_the_full_preset(gpu_full, tmp_path):
    """The --set names it uses exist in the configuration, and the run is --steps steps with a frozen
    first epoch then fine-tuning, as on the sample's ~212 training images."""
    from segpipe.config.budget import training_plan
    from segpipe.config import build_config

    weights = tmp_path / "encoder.weights.h5"
    weights.write_bytes(b"stand-in: the config checks that the file exists")
    args = gpu_full.parse_args(["--source", str(tmp_path), "--weights", str(weights)])
    cfg = build_config("full", gpu_full.overrides_for(args))
    assert (cfg.model.name, cfg.model.encoder, cfg.model.encoder_weights) == ("deeplabv3plus", "mobilenetv2", str(weights))
    assert (cfg.train.img_size, cfg.train.batch_size, cfg.train.mixed_precision) == (320, 32, "float16")
    plan = training_plan(cfg.train, n_train=212)
    assert plan.total_steps == args.steps == 400 and plan.steps_per_epoch == 100
    assert plan.frozen_epochs == 1 and 0 < plan.warmup_steps < plan.steps_per_epoch

    args = gpu_full.parse_args(["--source", str(tmp_path), "--weights", "none", "--set", "train.batch_size=8"])
    cfg = build_config("full", gpu_full.overrides_for(args))
    assert cfg.model.encoder_weights is None and cfg.train.batch_size == 8


def test_steady_state_leaves_compiling_epochs_out(gpu_full):
    curve = [{"train_seconds": t} for t in (40.0, 44.0, 74.0, 78.0, 82.0)]  # epochs: 40, 4, 30, 4, 4 s
    speed = gpu_full.steady_state(curve, frozen_epochs=2, steps=100, batch=32)
    assert speed["steady_epochs"] == [2, 4, 5] and speed["steady_state"]
    assert speed["step_time_ms"] == 40.0 and speed["images_per_s"] == 800.0


@pytest.mark.slow
def test_runs_end_to_end_on_a_cpu_when_allowed(tmp_path):
    make_pets_archives(tmp_path / "src")
    out = tmp_path / "gpu_full.json"
    done = _run("--allow-cpu", "--source", str(tmp_path / "src"), "--weights", "none", "--work-dir", str(tmp_path / "w"),
                "--steps", "2", "--steps-per-epoch", "1", "--set", "train.img_size=64", "--set", "train.batch_size=4",
                "--set", "train.mixed_precision=off", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["on_gpu"] is False and report["peak_gpu_memory_mib"] is None
    assert report["plan"]["total_steps"] == 2 and report["epochs_completed"] == 2
    assert report["images_per_s"] > 0 and report["step_time_ms"] > 0 and len(report["epoch_seconds"]) == 2
    assert 0.0 <= report["held_out"]["mean_iou"] <= 1.0 and report["held_out"]["n_images"] > 0
    assert report["command"].startswith("benchmarks/gpu_full.py --allow-cpu") and report["commit"]
    assert report["machine"]["cpus"] and "cpu_model" in report["machine"]


def test_missing_packages_are_named_before_any_work(gpu_full, tmp_path, monkeypatch, capsys):
    """On a machine whose Python lacks the pipeline's packages (a bare GPU image: no TensorFlow), one line
    names them and the run stops with exit 2, before it touches the data or writes a report."""
    out = tmp_path / "gpu_full.json"
    monkeypatch.setattr(gpu_full, "REQUIRED_MODULES", ("numpy", "segpipe_no_such_module", "tensorflow"))
    code = gpu_full.main(["--source", str(tmp_path), "--weights", "none", "--work-dir", str(tmp_path / "w"),
                          "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot import segpipe_no_such_module" in err and "tensorflow[and-cuda]" in err
    assert not out.exists() and not (tmp_path / "w").exists()
    assert gpu_full.missing_modules(("numpy", "segpipe_no_such_module")) == ["segpipe_no_such_module"]
