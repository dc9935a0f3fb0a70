"""Every stage from the CLI, as a user runs it: prepare → train → evaluate (also on a never-seen, held-out source
whose trainval.txt is empty) → gallery → predict; training refuses a dataset without a train split.

The commands run as a user's do by default: the first starts segpipe's background Prefect server and the
rest reuse it; `segpipe predict` loads .keras models in the model host (`segpipe.model_host`). The test's
`local_server_homes` stops both afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


NATIVE_NOISE = ("absl::InitializeLog", "cuInit", "oneDNN custom operations", "Could not find cuda drivers",
                "cpu_feature_guard")


def segpipe(tmp_path, *args, expect=0):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "SEGPIPE_PREFECT_SERVER": "background",
           "SEGPIPE_PRELOAD": "host"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell: the CLI must quieten TensorFlow itself
    proc = subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, f"segpipe {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    # every event and log reached the server before the command exited (cli.env.local_run_settings)
    assert "Error flushing" not in proc.stderr, proc.stderr[-4000:]
    assert "Still processing items" not in proc.stderr, proc.stderr[-4000:]  # the refused training's too
    # no TensorFlow start-up noise on any command (RELIABILITY.md, finding 3)
    assert not [n for n in NATIVE_NOISE if n in proc.stderr], proc.stderr[:3000]
    return proc if expect else proc.stdout


def recorded_runs(tmp_path) -> dict:
    """Flow and task runs in the Prefect database the CLI runs used, by state name."""
    code = (
        "import collections, json; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(json.dumps({'flows': collections.Counter(r.state.name for r in c.read_flow_runs(limit=200)),"
        " 'tasks': collections.Counter(r.state.name for r in c.read_task_runs(limit=200))}))"
    )
    from segpipe_app.cli import server

    state = server.read_state((tmp_path / "prefect-home").resolve())
    assert state is not None, "no background server was started"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": state.api_url}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def constant_model(path: Path, probs: tuple[float, float, float], size: int = 32) -> Path:
    """A saved model that predicts `probs` (pet, background, border) at every pixel of any image."""
    import keras

    inputs = keras.Input((size, size, 3))
    logits = keras.layers.Conv2D(3, 1, kernel_initializer="zeros",
                                 bias_initializer=keras.initializers.Constant(np.log(probs).tolist()))(inputs)
    keras.Model(inputs, keras.layers.Softmax()(logits)).save(path)
    return path


def test_stages_from_the_cli(tmp_path, local_server_homes):
    local_server_homes("prefect-home")
    seen, unseen = tmp_path / "seen", tmp_path / "unseen"
    make_pets_archives(seen, n_per_breed=6, seed=0)
    # a held-out set: test.txt lists every image, trainval.txt none (scoring it used to fail in the split)
    make_pets_archives(unseen, n_per_breed=3, seed=1, include_odd=False, test_only=True)
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
                  "--split", "test", "--out", str(metrics_path))  # the official split of the held-out archives
    metrics = json.loads(metrics_path.read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 12  # every image of the held-out set
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["resolution"] == "original"
    assert metrics["at_model_resolution"]["resolution"] == "model"
    unseen_key = metrics["dataset_key"]
    manifest = json.loads((Path(work) / "datasets" / unseen_key / "manifest.json").read_text())
    assert {k: v["num_examples"] for k, v in manifest["splits"].items()} == {
        "train": 0, "val": 0, "test": 12, "unassigned": 0}

    # an ensemble averages the members' softmax: with a member certain of one class everywhere (the class the
    # trained model predicts least), the average predicts that class at every pixel (scored on the same pixels)
    classes = ["pet", "background", "border"]
    rare = min(classes, key=lambda c: metrics["predicted_class_share"][c])
    assert metrics["predicted_class_share"][rare] < 0.34
    certain = constant_model(tmp_path / "certain.keras", tuple(1 - 2e-6 if c == rare else 1e-6 for c in classes))
    ensemble_out = tmp_path / "ensemble.json"
    segpipe(tmp_path, "evaluate", *common, "--model", str(model), "--model", str(certain), "--dataset", unseen_key,
            "--split", "test", "--out", str(ensemble_out))
    ensemble = json.loads(ensemble_out.read_text())
    truth = [sum(row) for row in metrics["confusion_matrix"]]  # pixels of each true class
    k = classes.index(rare)
    assert ensemble["confusion_matrix"] == [[n if j == k else 0 for j in range(3)] for n in truth]
    assert ensemble["predicted_class_share"] == {c: float(c == rare) for c in classes}
    assert [m["path"] for m in ensemble["models"]] == [str(model.resolve()), str(certain.resolve())]

    out = segpipe(tmp_path, "gallery", *common, "--model", str(model), "--source", str(unseen), "--split", "test",
                  "--out", str(tmp_path / "gallery"))
    index = tmp_path / "gallery" / "index.html"
    assert index.is_file() and "legend" in index.read_text().lower()

    # only training needs a train split, and says so
    refused = segpipe(tmp_path, "train", *common, "--dataset", unseen_key, "--epochs", "1", expect=1)
    assert f"segpipe train failed: ValueError: dataset {unseen_key} has no training examples " \
           "(train 0, val 0, test 12)" in refused.stderr
    assert "Traceback" not in refused.stderr

    images = tmp_path / "to-predict"
    images.mkdir()
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(images / "a.jpg")
    Image.fromarray(np.full((30, 20, 4), 200, np.uint8), "RGBA").save(images / "b.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = segpipe(tmp_path, "predict", "--model", str(model), str(images), "--out", str(tmp_path / "pred"))
    assert "2 masks written" in out
    mask = np.asarray(Image.open(tmp_path / "pred" / "a_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {1, 2, 3}

    # export, parity-checked on the model's own dataset, then predict with the LiteRT file: the same masks
    out = segpipe(tmp_path, "export", *common, "--model", str(model), "--format", "litert",
                  "--out", str(tmp_path / "export"))
    assert f"exported to {tmp_path / 'export'}" in out and "litert-float32" in out
    manifest = json.loads((tmp_path / "export" / "export.json").read_text())
    assert manifest["parity"]["results"]["litert-float32"]["pixel_agreement"] >= 0.99
    litert = tmp_path / "export" / "pets-float32.tflite"
    pet = tmp_path / "pet"  # an image of the kind the model was trained and parity-checked on
    pet.mkdir()
    with tarfile.open(seen / "images.tar.gz") as tar:  # the first JPEG that decodes (the archive plants odd files)
        for member in (m for m in tar.getmembers() if m.name.endswith(".jpg")):
            (pet / "pet.jpg").write_bytes(tar.extractfile(member).read())
            try:
                Image.open(pet / "pet.jpg").convert("RGB")
                break
            except OSError:
                continue
    masks = {}
    for name, m in (("keras", model), ("litert", litert)):  # tiny's eval settings (no flip TTA), as exported
        out = segpipe(tmp_path, "predict", "--preset", "tiny", "--model", str(m), str(pet),
                      "--out", str(tmp_path / f"pred-{name}"))
        assert "1 masks written" in out
        masks[name] = np.asarray(Image.open(tmp_path / f"pred-{name}" / "pet_mask.png"))
    assert (masks["litert"] == masks["keras"]).mean() >= 0.99

    runs = recorded_runs(tmp_path)  # what a Prefect UI on this database would show: every run finished
    assert runs["flows"].get("Failed") == 1, runs  # the refused training, and only that
    assert set(runs["flows"]) == {"Completed", "Failed"} and runs["flows"]["Completed"] >= 7, runs
    # the refused training is the train task's one failed run (refused before TensorFlow loads, not retried)
    assert runs["tasks"].get("Failed") == 1, runs
    assert set(runs["tasks"]) <= {"Completed", "Cached", "Failed"} and sum(runs["tasks"].values()) >= 15, runs
