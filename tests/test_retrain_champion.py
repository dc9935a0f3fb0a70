"""The `retrain` flow on a real Prefect API: the first model is promoted, and on a new dataset the champion
is re-scored and, being better there, kept; both outcomes are fixed by construction, not by luck.

The champion is trained for 15 epochs on dataset A; the candidate for one epoch on dataset B (other
images, other pet colours). Measured on B's test split: champion about 0.30 mean IoU, candidate about 0.08.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segpipe.fsutil import sha256_file
from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow


def _config(source: Path, **dotted):
    from segpipe.config import build_config

    return build_config("tiny", {
        "data.source": str(source), "data.split": "random", "data.val_fraction": 0.2, "data.test_fraction": 0.25,
        "promotion.min_mean_iou": 0.0, "train.early_stopping_patience": 0,
        # the collapse rule has its own tests: here only the comparison with the champion decides
        "eval.collapse_threshold": 1.0, **dotted,
    })


def _retrain(cfg, work: Path) -> dict:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.pipeline import retrain

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(work / "prefect-results")}):
        return retrain(config=cfg, work_dir=str(work))


def test_retrain_promotes_first_then_keeps_a_better_champion_rescored_on_a_new_dataset(prefect_api, tmp_path):
    from segpipe import evaluation

    src_a, src_b = tmp_path / "pets-a", tmp_path / "pets-b"
    make_pets_archives(src_a, n_per_breed=6, include_odd=False, seed=0)
    make_pets_archives(src_b, n_per_breed=6, include_odd=False, seed=1)
    work = tmp_path / "work"
    champion = work / "models" / "champion"

    first = _retrain(_config(src_a, **{"train.epochs": 15}), work)
    assert first["promoted"] and "no champion yet" in first["reason"], first
    stored = json.loads((champion / "metrics.json").read_text())  # the champion's score on dataset A
    promoted_at = json.loads((champion / "lineage.json").read_text())["promoted_at"]
    champion_sha = sha256_file(champion / "model.keras")

    second = _retrain(_config(src_b, **{"train.epochs": 1}), work)
    (rescored_path,) = work.glob("runs/*/champion-metrics.json")  # only the run on B had a champion to re-score
    rescored = json.loads(rescored_path.read_text())
    candidate = json.loads((rescored_path.parent / "metrics.json").read_text())

    # the champion was scored again, on B's test split, the candidate's
    assert (rescored["dataset_key"], rescored["split"]) == (candidate["dataset_key"], candidate["split"]) == (
        candidate["dataset_key"], "test")
    assert rescored["dataset_key"] != stored["dataset_key"]
    assert rescored["mean_iou"] != stored["mean_iou"]  # a new score, not the stored one
    direct = evaluation.evaluate([champion / "model.keras"], Path(work / "datasets" / rescored["dataset_key"]),
                                 "test").metrics
    assert rescored["mean_iou"] == pytest.approx(direct["mean_iou"], abs=1e-9)  # of the champion's own model

    # ... and being better there, it is kept
    assert candidate["mean_iou"] < rescored["mean_iou"] - 0.1, (candidate["mean_iou"], rescored["mean_iou"])
    assert not second["promoted"]
    assert second["reason"] == (f"candidate mean IoU {candidate['mean_iou']:.4f} < champion's "
                                f"{rescored['mean_iou']:.4f}: champion kept")
    assert json.loads((champion / "lineage.json").read_text())["promoted_at"] == promoted_at
    assert sha256_file(champion / "model.keras") == champion_sha and not (work / "models" / "history").exists()
    print(f"champion: {stored['mean_iou']:.3f} on A, re-scored {rescored['mean_iou']:.3f} on B; "
          f"candidate {candidate['mean_iou']:.3f} on B -> kept")
