"""Every stage from the CLI, as a user runs it: prepare → train → evaluate (also on a never-seen source) → gallery → predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def segpipe(tmp_path, *args):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"segpipe {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    # the ephemeral server recorded every task run before the CLI stopped it (cli.env.local_run_settings)
    assert "Error flushing" not in proc.stderr, proc.stderr[-4000:]
    return proc.stdout


def recorded_runs(tmp_path) -> dict:
    """Flow and task runs in the Prefect database the CLI runs used, by state name."""
    code = (
        "import collections, json; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(json.dumps({'flows': collections.Counter(r.state.name for r in c.read_flow_runs(limit=200)),"
        " 'tasks': collections.Counter(r.state.name for r in c.read_task_runs(limit=200))}))"
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stages_from_the_cli(tmp_path):
    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    make_pets_archives(seen, n_per_breed=6, seed=0)
    make_pets_archives(unseen, n_per_breed=3, seed=1, include_odd=False)
    work = str(tmp_path / "work")
    common = ["--work-dir", work, "--preset", "tiny"]

    out = segpipe(tmp_path, "prepare", *common, "--source", str(seen), "--split", "random")
    assert "dataset written to" in out

    out = segpipe(tmp_path, "train", *common, "--epochs", "2")
    model = Path(out.split("model written to ")[1].split()[0])
    assert model.is_file() and model.parent.parent == Path(work) / "runs"
    assert len((model.parent / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs

    metrics_path = tmp_path / "unseen-metrics.json"
    out = segpipe(tmp_path, "evaluate", *common, "--model", str(model), "--source", str(unseen),
                  "--split-mode", "random", "--split", "test", "--out", str(metrics_path))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["split"] == "test" and metrics["n_images"] >= 1
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["resolution"] == "original"
    assert metrics["at_model_resolution"]["resolution"] == "model"
    unseen_key = metrics["dataset_key"]
    assert (Path(work) / "datasets" / unseen_key / "manifest.json").is_file()

    ensemble_out = tmp_path / "ensemble.json"
    segpipe(tmp_path, "evaluate", *common, "--model", str(model), "--model", str(model), "--dataset", unseen_key,
            "--split", "test", "--out", str(ensemble_out))
    assert json.loads(ensemble_out.read_text())["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-6)

    out = segpipe(tmp_path, "gallery", *common, "--model", str(model), "--dataset", unseen_key, "--split", "test",
                  "--out", str(tmp_path / "gallery"))
    index = tmp_path / "gallery" / "index.html"
    assert index.is_file() and "legend" in index.read_text().lower()

    images = tmp_path / "to-predict"
    images.mkdir()
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.full((30, 20, 4), 200, np.uint8), "RGBA").save(images / "b.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = segpipe(tmp_path, "predict", "--model", str(model), str(images), "--out", str(tmp_path / "pred"))
    assert "2 masks written" in out
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {1, 2, 3}

    runs = recorded_runs(tmp_path)  # what a Prefect UI on this database would show: every run finished
    assert set(runs["flows"]) == {"Completed"} and sum(runs["flows"].values()) >= 5, runs
    assert set(runs["tasks"]) <= {"Completed", "Cached"} and sum(runs["tasks"].values()) >= 15, runs
