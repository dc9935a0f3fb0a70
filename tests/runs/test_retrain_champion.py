"""The `retrain` flow on a real Prefect API: the first model is promoted (with its verified export as serving
version 1), on a new dataset the champion is re-scored on the gate split and, being better there, kept; and a
candidate that would win but whose export fails its parity check is not promoted. Every outcome is fixed by
construction, not by luck.

The champion is trained for 15 epochs on dataset A; the candidate for one epoch on dataset B (other
images, other pet colours). Measured on B's test split: champion about 0.30 mean IoU, candidate about 0.08.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.fsutil import sha256_file
from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow


def _config(source: Path, **dotted):
    from segpipe.config import build_config

    return build_config("tiny", {
        "data.source": str(source), "data.split": "random", "data.val_fraction": 0.2, "data.test_fraction": 0.25,
        "promotion.min_mean_iou": 0.0, "train.early_stopping_patience": 0,
        # the collapse rule has its own tests: here only the comparison with the champion decides
        "eval.collapse_threshold": 1.0, "promotion.export_formats": ("onnx",), **dotted,
    })


def _retrain(cfg, work: Path) -> dict:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe_app.flows.pipeline import retrain

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(work / "prefect-results")}):
        return retrain(config=cfg, work_dir=str(work))


def test_retrain_promotes_first_then_keeps_a_better_champion_rescored_on_a_new_dataset(prefect_api, tmp_path,
                                                                                      monkeypatch):
    from segpipe.evaluation import evaluate as evaluation
    from segpipe.export import parity
    from segpipe.predict import predict_paths

    src_a, src_b = tmp_path / "pets-a", tmp_path / "pets-b"
    make_pets_archives(src_a, n_per_breed=6, include_odd=False, seed=0)
    make_pets_archives(src_b, n_per_breed=6, include_odd=False, seed=1)
    work = tmp_path / "work"
    champion = work / "models" / "champion"
    serving = work / "models" / "serving" / "pets"

    first = _retrain(_config(src_a, **{"train.epochs": 15}), work)
    assert first["promoted"] and "no champion yet" in first["reason"] and first["has_champion"], first
    assert first["serving_dir"] == str(serving / "1")
    stored = json.loads((champion / "metrics.json").read_text())  # the champion's score on dataset A
    promoted_at = json.loads((champion / "lineage.json").read_text())["promoted_at"]
    champion_sha = sha256_file(champion / "model.keras")
    decision = json.loads((champion / "decision.json").read_text())
    assert decision["split"] == "val" and decision["reported"]["split"] == "test"
    assert decision["exports"]["parity"]["onnx"]["passed"]
    assert "| onnx |" in (champion / "decision.md").read_text()
    # the serving version is the champion's: predict with it gives the .keras model's masks
    images = sorted((work / "extracted").rglob("*.jpg"))[:4]
    predict_paths([champion / "model.keras"], images, tmp_path / "keras", overlay=False)
    with pytest.raises(ValueError, match=r"directory without saved_model.pb \(pets.onnx, pets_runtime.py in it\)"):
        predict_paths([serving / "1"], images, tmp_path / "served")  # exported to ONNX only, in this test
    predict_paths([serving / "1" / "pets.onnx"], images, tmp_path / "served", overlay=False)
    masks = sorted(p.name for p in (tmp_path / "keras").glob("*_mask.png"))
    keras_masks = [np.asarray(Image.open(tmp_path / "keras" / name)) for name in masks]
    served_masks = [np.asarray(Image.open(tmp_path / "served" / name)) for name in masks]
    assert len(masks) == 4 and parity.agreement(served_masks, keras_masks) >= 0.999

    second = _retrain(_config(src_b, **{"train.epochs": 1}), work)
    (rescored_path,) = work.glob("runs/*/champion-metrics-val.json")  # only the run on B had a champion to re-score
    rescored = json.loads(rescored_path.read_text())
    candidate = json.loads((rescored_path.parent / "metrics-val.json").read_text())

    # the champion was scored again, on B's validation split (the gate split), the candidate's
    assert (rescored["dataset_key"], rescored["split"]) == (candidate["dataset_key"], candidate["split"]) == (
        candidate["dataset_key"], "val")
    assert rescored["dataset_key"] != stored["dataset_key"]
    direct = evaluation.evaluate([champion / "model.keras"], Path(work / "datasets" / rescored["dataset_key"]),
                                 "val").metrics
    assert rescored["mean_iou"] == pytest.approx(direct["mean_iou"], abs=1e-9)  # of the champion's own model
    test_rescored = json.loads((rescored_path.parent / "champion-metrics-test.json").read_text())
    assert test_rescored["split"] == "test"

    # ... and being better there, it is kept
    assert candidate["mean_iou"] < rescored["mean_iou"], (candidate["mean_iou"], rescored["mean_iou"])
    assert not second["promoted"] and second["has_champion"]
    assert second["reason"] == (f"candidate mean IoU {candidate['mean_iou']:.4f} < champion's "
                                f"{rescored['mean_iou']:.4f}: champion kept")
    assert json.loads((champion / "lineage.json").read_text())["promoted_at"] == promoted_at
    assert sha256_file(champion / "model.keras") == champion_sha and not (work / "models" / "history").exists()
    # the flow run's decision artifact says so (the deployment test reads the promoted one through a worker)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        decisions = [a.data or "" for a in client.read_artifacts() if a.key == "promotion-decision"]
    assert any("# Promotion decision: KEPT CHAMPION" in d and second["reason"] in d for d in decisions), decisions

    # the champion's own recipe again (its training is cached: the candidate ties, and would be promoted),
    # but with a parity bound no export can meet: the failed check keeps the champion and serving version 1
    monkeypatch.setitem(parity.BOUNDS, "onnx", parity.Bound(max_mean_iou_delta=-1.0, min_pixel_agreement=1.1))
    third = _retrain(_config(src_a, **{"train.epochs": 15}), work)
    assert not third["promoted"] and "export failed its check" in third["reason"], third
    assert "onnx: mean IoU" in third["reason"]
    assert json.loads((champion / "lineage.json").read_text())["promoted_at"] == promoted_at
    assert sha256_file(champion / "model.keras") == champion_sha
    assert sorted(p.name for p in serving.iterdir() if not p.name.startswith(".")) == ["1"]
    print(f"champion: {stored['mean_iou']:.3f} on A, re-scored {rescored['mean_iou']:.3f} on B's val; "
          f"candidate {candidate['mean_iou']:.3f} on B's val -> kept; failed export -> kept")
