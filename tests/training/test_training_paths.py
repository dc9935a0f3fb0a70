"""Training paths no other test walked: focal loss and class weights from the configuration through
`segpipe.training.train`, `segnet` trained through the CLI, and the Prefect `train` task's retry
resuming from its backup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras

from segpipe.config import build_config
from tests.faults import REPO, write_dataset
from tests.prefect_homes import seed_prefect_home
from tests.synthetic import make_pets_archives, make_pets_tree

pytestmark = pytest.mark.slow
PARAMS = {"split": "random", "val_fraction": 0.25, "test_fraction": 0.2, "seed": 3, "shard_size_mb": 1.0}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paths")
    tree = make_pets_tree(root / "tree", n_per_breed=4, include_odd=False)
    return write_dataset(tree.images_dir, tree.annotations_dir, root / "datasets" / "paths-ds",
                         {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}, PARAMS)


def _history(run_dir: Path) -> list[dict[str, str]]:
    lines = (run_dir / "history.csv").read_text().strip().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def _val_batches(dataset_dir: Path, img_size: int, batch_size: int):
    from segpipe.data.input import eval_dataset

    return [(x.numpy(), y.numpy()) for x, y in eval_dataset(dataset_dir, "val", img_size=img_size,
                                                            batch_size=batch_size)]


def test_focal_loss_and_class_weights_go_from_the_config_through_train(dataset_dir, tmp_path):
    """The loss a run optimises is the configured one: the saved model is compiled with a FocalLoss of the
    configured gamma and class weights, and the validation loss Keras recorded for the epoch is that
    loss of the saved weights on the validation images (and not what cross-entropy or unweighted focal
    loss would give)."""
    from segpipe.training import losses
    from segpipe.training import train

    weights = [1.0, 0.25, 4.0]
    cfg = build_config("tiny", {"train.epochs": 1, "train.loss": "focal", "train.focal_gamma": 1.5,
                                "train.class_weights": weights, "train.augment": False,
                                "train.mixed_precision": "off", "train.ema_momentum": None})
    result = train(cfg, dataset_dir, tmp_path / "run", verbose=0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["loss"] == "focal"

    model = keras.models.load_model(result.model_path, compile=True)
    assert isinstance(model.loss, losses.FocalLoss) and not isinstance(model.loss, losses.SparseCategoricalCrossentropy)
    assert model.loss.gamma == 1.5 and list(model.loss.class_weights) == weights

    batches = _val_batches(dataset_dir, cfg.train.img_size, cfg.train.batch_size)

    def mean_loss(loss_fn) -> float:  # what Keras reports: per-batch means weighted by batch size
        total = sum(float(loss_fn(y, model.predict(x, verbose=0))) * len(x) for x, y in batches)
        return total / sum(len(x) for x, _ in batches)

    recorded = float(_history(tmp_path / "run")[-1]["val_loss"])
    focal = mean_loss(losses.FocalLoss(gamma=1.5, class_weights=weights))
    assert recorded == pytest.approx(focal, rel=1e-4, abs=1e-5)
    for other in (losses.FocalLoss(gamma=1.5), losses.FocalLoss(gamma=0.0, class_weights=weights),
                  losses.SparseCategoricalCrossentropy()):
        assert abs(mean_loss(other) - recorded) > 1e-3, other.get_config()  # the comparison can tell them apart


def test_segnet_trained_through_the_cli(tmp_path, migrated_prefect_db):
    """`segpipe run --model segnet`: prepared, trained, scored and rendered, and the saved model is a
    SegNet (max-pooling indices drive its unpooling)."""
    from segpipe.models.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D

    src = tmp_path / "src"
    make_pets_archives(src, n_per_breed=3, include_odd=False)
    work = tmp_path / "work"
    home = seed_prefect_home(tmp_path / "prefect-home", migrated_prefect_db)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "segpipe_app.cli.main", "run", "--preset", "tiny", "--model", "segnet", "--source", str(src),
         "--split", "random", "--set", "train.epochs=2", "--work-dir", str(work)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = Path(proc.stdout.split("run:")[1].split()[0])
    assert json.loads((run_dir / "config.json").read_text())["model"]["name"] == "segnet"
    assert len(_history(run_dir)) == 2
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    kinds = {type(layer) for layer in model.layers}
    assert MaxPoolingWithArgmax2D in kinds and MaxUnpooling2D in kinds
    assert model.output_shape == (None, 32, 32, 3)
    probs = model.predict(np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_images"] >= 1 and 0.0 <= metrics["mean_iou"] <= 1.0
    assert (run_dir / "gallery" / "index.html").is_file()


class WorkerDied(RuntimeError):
    """Stands in for what kills a training attempt (an OOM, a lost worker): retryable."""


def test_the_train_task_retry_resumes_from_its_backup(prefect_api, dataset_dir, tmp_path, monkeypatch):
    """Attempt 1 of the Prefect `train` task dies right after its second epoch is saved; Prefect retries
    the task (its own retry policy, the delay set to 0) and attempt 2 resumes from the backup: it trains
    epochs 3 and 4 only, and the run has each epoch once."""
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe import training
    from segpipe.data.dataset import DatasetRef
    from segpipe_app.tasks.training import train_task

    cfg = build_config("tiny", {"train.epochs": 4, "train.early_stopping_patience": 0})
    real_train = training.train
    attempts: list[list[int]] = []

    def train_then_die_once(*args, on_epoch_end=None, **kwargs):
        seen: list[int] = []
        attempts.append(seen)

        def after_epoch(epoch, logs):  # called once the epoch is fully saved, backup included
            seen.append(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch, logs)
            if len(attempts) == 1 and epoch == 1:
                raise WorkerDied("worker lost after epoch 2")

        return real_train(*args, on_epoch_end=after_epoch, **kwargs)

    monkeypatch.setattr(training, "train", train_then_die_once)

    splits = json.loads((dataset_dir / "manifest.json").read_text())["splits"]
    ref = DatasetRef("paths-ds", str(dataset_dir), {name: info["num_examples"] for name, info in splits.items()})

    @flow(name="train-retry")
    def fit():
        state = train_task.with_options(retry_delay_seconds=0)(ref, cfg.model, cfg.train, str(tmp_path / "work"),
                                                               return_state=True)
        return state.state_details.task_run_id, state.result()

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "results")}):
        task_run_id, trained = fit()
    assert attempts == [[0, 1], [2, 3]]  # attempt 2 trained epochs 3 and 4 only

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_task_run(task_run_id)
    assert run.run_count == 2  # one retry, by Prefect

    run_dir = Path(trained.run_dir)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed_from_epoch"] == 2 and trained.epochs_completed == 4
    assert [r["from_epoch"] for r in json.loads((run_dir / "lineage.json").read_text())["resumed_at"]] == [2]
    assert [int(row["epoch"]) for row in _history(run_dir)] == [0, 1, 2, 3]  # each epoch once
    assert not (run_dir / "backup").exists() and Path(trained.model_path).is_file()
