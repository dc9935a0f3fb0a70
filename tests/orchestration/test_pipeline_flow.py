"""The `pipeline` flow on a real Prefect API: outputs, full caching, partial recompute.

The `retrain` flow's promotion gate: tests/runs/test_retrain_champion.py (both outcomes fixed by construction)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.prefect_states import task_states_since
from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("pets")
    make_pets_archives(src, n_per_breed=6)
    return src


def _config(source, **dotted):
    from segpipe.config import build_config

    return build_config("tiny", {"data.source": str(source), "data.split": "random", **dotted})


def _run(flow, cfg, work):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(work / "prefect-results")}):
        return flow(config=cfg, work_dir=str(work))


def test_pipeline_outputs_then_cached_then_only_evaluation_recomputed(prefect_api, source, tmp_path):
    from segpipe_app.flows.pipeline import pipeline

    work = tmp_path / "work"
    first = _run(pipeline, _config(source), work)
    run_dir = Path(first.trained.run_dir)
    assert run_dir.parent == work / "runs"
    for name in ("config.json", "model.keras", "history.csv", "metrics.json", "lineage.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run_dir / "gallery" / "index.html").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("pixel_accuracy", "mean_iou", "iou", "dice", "foreground_iou", "confusion_matrix", "n_images",
                "mean_iou_no_border"):
        assert key in metrics, key
    assert set(metrics["iou"]) == {"pet", "background", "border"}
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["dataset_key"] == first.dataset.dataset_key and "code_version" in lineage

    t0 = datetime.now(timezone.utc)
    again = _run(pipeline, _config(source), work)
    assert again.trained == first.trained and again.metrics == first.metrics
    stages = {"download", "verify", "extract", "validate", "split", "write-shards", "write-manifest", "train",
              "evaluate", "gallery"}
    states = task_states_since(t0, expect=stages)
    assert stages <= set(states)
    assert all(s == "Cached" for names in states.values() for s in names), states

    t1 = datetime.now(timezone.utc)
    changed = _run(pipeline, _config(source, **{"eval.split": "val"}), work)
    assert changed.trained == first.trained
    states = task_states_since(t1, expect=stages)
    for name in ("download", "verify", "extract", "validate", "split", "write-shards", "write-manifest", "train"):
        assert set(states[name]) == {"Cached"}, (name, states)
    assert set(states["evaluate"]) == {"Completed"} and set(states["gallery"]) == {"Completed"}
    assert json.loads((run_dir / "metrics.json").read_text())["split"] == "val"


@pytest.mark.parametrize("flow_name", ["train_flow", "pipeline"])
def test_the_configured_collapse_threshold_reaches_training(flow_name, prefect_api, tmp_path, monkeypatch):
    """`eval.collapse_threshold` (training flags a collapsed model with it) reaches the library's `train` through
    the flows and the `train` task: the task used to rebuild the config with a default eval section."""
    from types import SimpleNamespace

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe import training
    from segpipe.config import EvalConfig
    import segpipe_app.flows.pipeline
    import segpipe_app.flows.train
    from segpipe.data.dataset import DatasetRef
    from segpipe_app import flows

    seen = []

    def fake_train(cfg, dataset_dir, run_dir, **kwargs):
        seen.append(cfg)
        return SimpleNamespace(model_path=Path(run_dir) / "model.keras", resumed_from_epoch=0, best_val_mean_iou=0.5,
                               best_epoch=0, epochs_completed=1, border_band=None)

    ref = DatasetRef("threshold-ds", str(tmp_path / "dataset"), {"train": 4, "val": 2, "test": 2})
    monkeypatch.setattr(training, "train", fake_train)
    monkeypatch.setattr(flows.train, "locate_dataset_task", lambda work, key: ref)
    monkeypatch.setattr(flows.pipeline, "prepare_data_flow", lambda config, work: ref)
    scored = {"metrics": {}, "per_image": [], "metrics_path": ""}
    monkeypatch.setattr(flows.pipeline, "evaluate_task", lambda *a: scored)
    monkeypatch.setattr(flows.pipeline, "gallery_task", lambda *a: "")
    cfg = _config(tmp_path, **{"eval.collapse_threshold": 0.6})
    assert cfg.eval.collapse_threshold != EvalConfig().collapse_threshold
    flow = {"train_flow": flows.train.train_flow, "pipeline": flows.pipeline.pipeline}[flow_name]
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "prefect-results")}):
        flow(config=cfg, work_dir=str(tmp_path / "work"))
    assert [c.eval.collapse_threshold for c in seen] == [0.6]


def test_retrains_scoring_of_the_candidate_on_the_eval_split_is_the_pipelines_cached_evaluation(tmp_path):
    """retrain scores the candidate on the gate split. When that is the eval split, its call differs from the
    pipeline's only in naming the split, with the same metrics file, so the key is the pipeline's and evaluate's
    cache returns those scores (no second evaluation). Another split is another key and another file."""
    from types import SimpleNamespace

    from segpipe.config import EvalConfig
    from segpipe.data.dataset import DatasetRef
    from segpipe_app.flows.pipeline import METRICS_FILE, metrics_name
    from segpipe_app.tasks import caching
    from segpipe_app.tasks.evaluation import evaluate_task

    model = tmp_path / "model.keras"
    model.write_bytes(b"stand-in model bytes")
    e = EvalConfig(split="test")
    dataset = DatasetRef("k1", str(tmp_path / "datasets" / "k1"), {"train": 4, "val": 2, "test": 2})

    def key(out_name: str, **split) -> str | None:
        return caching.EVALUATE_CACHE.compute_key(
            task_ctx=SimpleNamespace(task=evaluate_task, result_store=None), flow_parameters={},
            inputs={"model_paths": [str(model)], "dataset": dataset, "eval_config": e,
                    "out_path": str(tmp_path / out_name), **split})

    assert metrics_name("test", e.split) == METRICS_FILE and metrics_name("val", e.split) == "metrics-val.json"
    (tmp_path / METRICS_FILE).write_text("{}")  # the pipeline's evaluation has written its file
    pipeline_key = key(METRICS_FILE)
    assert pipeline_key is not None and pipeline_key == key(metrics_name("test", e.split), split="test")
    (tmp_path / "metrics-val.json").write_text("{}")
    assert key(metrics_name("val", e.split), split="val") not in (None, pipeline_key)
