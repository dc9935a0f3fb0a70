"""benchmarks/export_portability.py: the bundle made here, run by the `there` step (with this machine's Python
standing in for another machine's), compared; the agreement arithmetic; and a bundle missing its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import make_pets_archives

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "export_portability.py"


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_agreement_counts_identical_masks_and_the_share_of_equal_pixels(bench):
    portability = bench("export_portability")
    here = {"0": np.ones((2, 2), np.uint8), "1": np.array([[1, 2], [3, 3]], np.uint8)}
    there = {"0": np.ones((2, 2), np.uint8), "1": np.array([[1, 2], [3, 1]], np.uint8)}
    got = portability.agreement(here, there)
    assert (got["n_images"], got["identical_masks"], got["per_image"]) == (2, 1, [1.0, 0.75])
    assert (got["pixel_agreement_min"], got["pixel_agreement_mean"]) == (0.75, 0.875)
    with pytest.raises(SystemExit, match="different images"):
        portability.agreement(here, {"0": here["0"]})
    with pytest.raises(SystemExit, match=r"image 1: mask \(2, 2\) here but \(1, 4\) there"):
        portability.agreement(here, {**there, "1": there["1"].reshape(1, 4)})


def test_there_names_what_an_incomplete_bundle_lacks(tmp_path):
    (tmp_path / "pets.onnx").write_bytes(b"")
    done = _run("there", "--bundle", str(tmp_path), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 1 and ("missing pets-float32.tflite, pets-float16.tflite, pets-int8.tflite, "
                                     "pets_runtime.py, export.json, inputs.npz") in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prepare_there_compare_on_one_machine_agree_exactly(tmp_path):
    """The whole round on one machine (the same Python on both sides): every mask identical, the worker
    imported neither segpipe nor Keras, and the result records both sides and the export's parity."""
    import keras

    from segpipe.models import build_model

    make_pets_archives(tmp_path / "src")
    keras.utils.set_random_seed(0)
    build_model("unet", (32, 32, 3), base_filters=4, depth=2).save(tmp_path / "model.keras")
    bundle, far = tmp_path / "bundle", tmp_path / "there"
    done = _run("prepare", "--model", str(tmp_path / "model.keras"), "--bundle", str(bundle), "--images", "5",
                "--work-dir", str(tmp_path / "w"), "--source", str(tmp_path / "src"))
    assert done.returncode == 0, done.stderr[-3000:]
    artifacts = ["onnx", "litert-float32", "litert-float16", "litert-int8"]
    assert {"pets.onnx", "pets-int8.tflite", "pets_runtime.py", "export.json", "inputs.npz", "here.json",
            "images.json", *(f"labels-here-{a}.npz" for a in artifacts)} <= {p.name for p in bundle.iterdir()}
    assert not bundle.with_name("bundle.partial").exists()
    done = _run("there", "--bundle", "bundle", "--out-dir", "there", cwd=tmp_path)  # relative, as typed
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "result.json"
    done = _run("compare", "--bundle", str(bundle), "--there", str(far), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted(result["results"]) == sorted(artifacts) and result["skipped_there"] == result["failed_there"] == {}
    for name in artifacts:
        got = result["results"][name]
        assert (got["n_images"], got["identical_masks"], got["pixel_agreement_min"]) == (5, 5, 1.0), name
        worker = result["there"]["worker"][name]
        assert worker["imported"] == [] and worker["kind"] == name.split("-")[0] and worker["n_images"] == 5
    assert result["there"]["this_python"]["onnxruntime"] and result["there"]["this_python"]["ai-edge-litert"]
    assert "onnx" in result["export"]["parity"]["results"] and len(result["images"]) == 5
    assert result["commit"] and result["machine"]["cpu_model"] and result["configs"][0]["preset"] == "cpu-quick"
