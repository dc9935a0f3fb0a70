"""Training: run directory contents, caching, resume after interruption, LR schedule, guards."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import keras  # noqa: E402  (a broken install fails here instead of skipping)

from segpipe import cancel  # noqa: E402
from segpipe.config.budget import training_plan  # noqa: E402
from segpipe.config import build_config  # noqa: E402
from segpipe.fsutil import read_json, sha256_file  # noqa: E402
from segpipe.training import (  # noqa: E402
    PRECISION_POLICIES,
    AtomicBackupAndRestore,
    AveragedWeights,
    cpu_has_native_bfloat16,
    precision_policy,
    BestModelCheckpoint,
    ResumableEarlyStopping,
    WarmupCosineDecay,
    build_optimizer,
    inference_check,
    read_history,
    run_id_for,
    train,
)
from segpipe.training.run_dir import truncate_history  # noqa: E402
from tests.synthetic import write_tiny_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(**train):
    return build_config("tiny", {"train": {"epochs": 2, "batch_size": 4, **train}})


# --------------------------------------------------------------------------- one tiny run, interrupted and resumed
#
# Tracing a Keras train step is the slow part of these tests (seconds each on a shared
# 2-core machine), so one module-scoped run is shared: it is stopped on request after its first
# epoch (`segpipe.cancel`, as Ctrl-C does), resumed to completion, and then asked for again (cached).


@pytest.fixture(scope="module")
def run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = tiny_cfg(epochs=3, augment=True, warmup_images=12, early_stopping_patience=5)
    run_dir = tmp_path_factory.mktemp("runs") / run_id_for(cfg, "tiny-ds", "test")
    first: list[tuple[int, dict]] = []

    def stop_requested_after_first_epoch(epoch: int, logs: dict) -> None:
        first.append((epoch, logs))
        if epoch == 0:  # what Ctrl-C does when its KeyboardInterrupt is lost (raised inside a finalizer):
            cancel.request()  # only the request; training must stop at the next batch by itself

    try:
        with pytest.raises(cancel.Cancelled, match="training: stopped on request"):
            train(cfg, tiny_dataset, run_dir, on_epoch_end=stop_requested_after_first_epoch, verbose=0)
    finally:
        cancel.clear()
    interrupted = {
        "backup_epoch": read_json(run_dir / "backup" / "training_metadata.json")["epoch"],
        "history": read_history(run_dir / "history.csv"),
        "summary_exists": (run_dir / "train_summary.json").exists(),
        "model_exists": (run_dir / "model.keras").exists(),
    }
    backup = h5_arrays(run_dir / "backup" / "latest.weights.h5")
    restored: dict[str, list[np.ndarray]] = {}
    restore = AtomicBackupAndRestore.on_train_begin

    def restore_and_keep(self, logs=None):  # the state the resumed fit starts from, right after the restore
        restore(self, logs)
        restored.setdefault("model", [v.numpy() for v in self.model.weights])
        restored.setdefault("optimizer", [v.numpy() for v in self.model.optimizer.variables])

    second: list[tuple[int, dict]] = []
    resumes: dict[str, list] = {"resumed": [], "straight": []}  # what on_resume was told, and when
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AtomicBackupAndRestore, "on_train_begin", restore_and_keep)
        result = train(cfg, tiny_dataset, run_dir, on_epoch_end=lambda e, logs: second.append((e, logs)),
                       on_resume=lambda kept: resumes["resumed"].append((kept, len(second))), verbose=0)
    straight_dir = tmp_path_factory.mktemp("runs") / run_dir.name
    straight = train(cfg, tiny_dataset, straight_dir, on_resume=resumes["straight"].append,
                     verbose=0)  # the same run, never interrupted
    return {"cfg": cfg, "run_dir": run_dir, "first": first, "second": second, "interrupted": interrupted,
            "result": result, "backup": backup, "restored": restored, "straight": straight, "resumes": resumes}


def h5_arrays(path: Path) -> list[np.ndarray]:
    """Every array a Keras weights file holds (model variables and optimizer slots)."""
    import h5py

    arrays: list[np.ndarray] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def as_multiset(arrays: list[np.ndarray]) -> list[tuple]:
    return sorted((a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for a in map(np.asarray, arrays))


def test_interrupted_run_leaves_a_resumable_state(run: dict) -> None:
    assert [e for e, _ in run["first"]] == [0]
    assert run["interrupted"]["backup_epoch"] == 1
    assert [row["epoch"] for row in run["interrupted"]["history"]] == [0]
    assert run["interrupted"]["model_exists"] and not run["interrupted"]["summary_exists"]


def test_on_resume_is_told_the_kept_epochs_before_the_resumed_run_trains(run: dict) -> None:
    """What the train task tells a user at once: once, with the backup's epochs, before any epoch ends; never for
    a new run."""
    assert run["resumes"] == {"resumed": [(1, 0)], "straight": []}


def test_resumed_run_continues_from_the_last_completed_epoch(run: dict) -> None:
    result = run["result"]
    assert [e for e, _ in run["second"]] == [1, 2]
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 3 and not result.cached
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    assert read_json(run["run_dir"] / "lineage.json")["resumed_at"][0]["from_epoch"] == 1
    # The resumed epochs continue the warm-up + cosine schedule where it stopped (3 steps an epoch).
    lrs = [row["learning_rate"] for row in result.history]
    expected = WarmupCosineDecay(1e-3, warmup_steps=3, total_steps=9)
    assert lrs == pytest.approx([float(expected(3 * (e + 1))) for e in range(3)], abs=1e-7)


def test_the_resumed_fit_starts_from_the_backup_bit_for_bit(run: dict) -> None:
    """Every model variable and optimizer slot (moments, iteration count) the resumed fit starts from is the
    backup's, and nothing in the backup is left unrestored."""
    restored = run["restored"]["model"] + run["restored"]["optimizer"]
    assert len(run["restored"]["optimizer"]) > len(run["restored"]["model"])  # Adam: 2 moments a variable
    assert as_multiset(restored) == as_multiset(run["backup"])


def test_the_resumed_run_ends_where_the_uninterrupted_run_ends(run: dict) -> None:
    """Every logged value and every weight, to float32 rounding: TensorFlow's multi-threaded CPU kernels do not
    promise the same summation order in two runs (once, on a loaded machine, epoch 0 - before any interruption
    - differed in its last digits between the two). Where the resumed run starts is checked bit for bit above."""
    resumed, straight = run["result"], run["straight"]
    assert [sorted(row) for row in resumed.history] == [sorted(row) for row in straight.history]
    for got, want in zip(resumed.history, straight.history):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.best_val_mean_iou == pytest.approx(straight.best_val_mean_iou, rel=1e-4)
    weights = lambda path: keras.saving.load_model(path, compile=False).get_weights()  # noqa: E731
    got, want = weights(resumed.model_path), weights(straight.model_path)
    assert [w.shape for w in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)


def test_run_directory_contents(run: dict, tiny_dataset: Path) -> None:
    cfg, run_dir, result = run["cfg"], run["run_dir"], run["result"]
    logs = dict(run["first"] + run["second"])
    assert {"loss", "mean_iou", "pixel_accuracy", "val_loss", "val_mean_iou", "val_pixel_accuracy"} <= set(logs[0])
    val_scores = [logs[e]["val_mean_iou"] for e in range(3)]
    assert result.best_epoch == int(np.argmax(val_scores))
    assert result.best_val_mean_iou == pytest.approx(max(val_scores))
    assert read_json(run_dir / "best.json")["epoch"] == result.best_epoch

    assert result.model_path == run_dir / "model.keras"
    assert read_json(run_dir / "config.json") == cfg.model_dump(mode="json")
    assert [row["val_mean_iou"] for row in read_history(run_dir / "history.csv")] == pytest.approx(val_scores)
    lineage = read_json(run_dir / "lineage.json")
    assert lineage["dataset_key"] == "tiny-ds" and lineage["run_id"] == run_dir.name
    assert lineage["dataset_manifest_sha256"] == sha256_file(tiny_dataset / "manifest.json")
    assert lineage["seed"] == cfg.train.seed and lineage["keras"] == keras.__version__
    for split in ("train", "validation"):
        assert list((run_dir / "tensorboard" / split).glob("events.out.tfevents.*"))
    assert not (run_dir / "backup").exists()  # removed once the run is complete
    assert not list(run_dir.glob(".*tmp*"))  # no temporary files left behind

    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    probs = model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    assert probs.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-4)

    summary = read_json(run_dir / "train_summary.json")
    assert summary["epochs_completed"] == 3 and summary["resumed_from_epoch"] == 1
    assert summary["best_epoch"] == result.best_epoch
    assert summary["stop_reason"] == result.stop_reason == "completed"
    assert len(summary["predicted_class_share"]) == 3
    assert sum(summary["predicted_class_share"]) == pytest.approx(1.0)
    assert summary["collapsed"] == (max(summary["predicted_class_share"]) >= 0.98) == result.collapsed


def test_tensorboard_scalars_are_readable(run: dict) -> None:
    import tensorflow as tf

    def scalars(split: str) -> dict[tuple[str, int], float]:
        files = sorted((run["run_dir"] / "tensorboard" / split).glob("events.out.tfevents.*"))
        assert len(files) == 2  # one per process: the interrupted one and the resumed one
        out = {}
        for f in files:
            for record in tf.data.TFRecordDataset(str(f)).as_numpy_iterator():
                event = tf.compat.v1.Event.FromString(record)
                for v in event.summary.value:
                    out[(v.tag, event.step)] = tf.make_ndarray(v.tensor).item()
        return out

    history = run["result"].history
    train, val = scalars("train"), scalars("validation")
    for epoch in range(3):
        assert val[("epoch_mean_iou", epoch)] == pytest.approx(history[epoch]["val_mean_iou"], rel=1e-5)
        assert train[("epoch_loss", epoch)] == pytest.approx(history[epoch]["loss"], rel=1e-5)
        assert train[("epoch_learning_rate", epoch)] == pytest.approx(history[epoch]["learning_rate"], rel=1e-5)


def test_complete_run_is_returned_without_training(run: dict, tiny_dataset: Path) -> None:
    run_dir, result = run["run_dir"], run["result"]
    mtime = (run_dir / "model.keras").stat().st_mtime_ns
    seen: list[int] = []
    again = train(run["cfg"], tiny_dataset, run_dir, on_epoch_end=lambda e, logs: seen.append(e),
                  on_resume=seen.append, verbose=0)
    assert again.cached and seen == []
    assert (again.epochs_completed, again.best_epoch, again.best_val_mean_iou, again.resumed_from_epoch) == (
        result.epochs_completed, result.best_epoch, result.best_val_mean_iou, result.resumed_from_epoch)
    assert again.history == result.history
    assert (run_dir / "model.keras").stat().st_mtime_ns == mtime


def test_another_config_in_the_same_run_dir_is_refused(run: dict, tiny_dataset: Path) -> None:
    other = tiny_cfg(epochs=3, augment=True, warmup_images=12, early_stopping_patience=5, learning_rate=0.5)
    with pytest.raises(ValueError, match="different model/train config"):
        train(other, tiny_dataset, run["run_dir"], verbose=0)


def test_empty_val_split_is_refused_up_front(tmp_path: Path) -> None:
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 4, "val": 0})
    with pytest.raises(ValueError, match="has no validation examples"):
        train(tiny_cfg(), ds, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train(tiny_cfg(), tmp_path / "nowhere", tmp_path / "run", verbose=0)


# --------------------------------------------------------------------------- pieces


def test_run_id_is_content_derived() -> None:
    cfg = tiny_cfg()
    rid = run_id_for(cfg, "ds1", "v1")
    assert rid.startswith("unet-") and len(rid) == len("unet-") + 12
    assert run_id_for(tiny_cfg(), "ds1", "v1") == rid
    assert run_id_for(cfg, "ds2", "v1") != rid
    assert run_id_for(cfg, "ds1", "v2") != rid
    assert run_id_for(tiny_cfg(epochs=3), "ds1", "v1") != rid
    assert run_id_for(build_config("tiny", {"train": {"epochs": 2}, "eval": {"split": "val"}}), "ds1", "v1") == rid
    with pytest.raises(ValueError, match="dataset_key"):
        run_id_for(cfg, "", "v1")


def test_lr_schedule_warmup_then_cosine() -> None:
    s = WarmupCosineDecay(1e-3, warmup_steps=10, total_steps=110)
    lr = lambda step: float(s(step))  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(4) == pytest.approx(5e-4)
    assert lr(9) == pytest.approx(1e-3)
    assert lr(10) == pytest.approx(1e-3)
    assert lr(35) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.25)))
    assert lr(60) == pytest.approx(5e-4)
    assert lr(110) == pytest.approx(0.0, abs=1e-12)
    assert lr(500) == pytest.approx(0.0, abs=1e-12)
    values = [lr(i) for i in range(111)]
    assert all(a <= b for a, b in zip(values[:10], values[1:11]))  # rising during warm-up
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # falling after


def test_lr_schedule_constant_and_no_warmup() -> None:
    constant = WarmupCosineDecay(2e-3, warmup_steps=4, total_steps=100, decay="constant")
    assert [round(float(constant(i)), 9) for i in (0, 1, 3, 4, 99, 1000)] == [5e-4, 1e-3, 2e-3, 2e-3, 2e-3, 2e-3]
    no_warmup = WarmupCosineDecay(1e-3, warmup_steps=0, total_steps=10)
    assert float(no_warmup(0)) == pytest.approx(1e-3)
    assert float(no_warmup(5)) == pytest.approx(5e-4)
    assert float(WarmupCosineDecay(1e-3, 0, 10, decay="constant")(7)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="decay"):
        WarmupCosineDecay(1e-3, 0, 10, decay="linear")


def test_lr_schedule_serialises_and_optimizer_uses_config() -> None:
    s = WarmupCosineDecay(1e-3, warmup_steps=10, total_steps=110)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(restored, WarmupCosineDecay) and restored.get_config() == s.get_config()

    cfg = build_config("tiny", {"train": {"epochs": 4, "batch_size": 4, "warmup_images": 60, "optimizer": "adamw",
                                          "learning_rate": 0.01, "weight_decay": 0.05}})
    opt = build_optimizer(cfg.train, training_plan(cfg.train, n_train=40))  # 10 steps of 4 per epoch
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == pytest.approx(0.05)
    sched = opt.learning_rate if isinstance(opt.learning_rate, WarmupCosineDecay) else opt._learning_rate
    assert sched.get_config() == {"peak_learning_rate": 0.01, "warmup_steps": 15, "total_steps": 40, "decay": "cosine"}
    restored_opt = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert float(restored_opt._learning_rate(15)) == pytest.approx(0.01)
    assert isinstance(build_optimizer(tiny_cfg().train, training_plan(tiny_cfg().train, 12)), keras.optimizers.Adam)


def _tiny_model(bias: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> keras.Model:
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Conv2D(3, 1, activation="softmax", kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(bias))(inputs)
    return keras.Model(inputs, outputs)


def test_best_checkpoint_is_atomic_and_remembers_the_best(tmp_path: Path) -> None:
    path, state = tmp_path / "model.keras", tmp_path / "best.json"
    cb = BestModelCheckpoint(path, state)
    cb.set_model(_tiny_model())
    cb.on_epoch_end(0, {"loss": 1.0, "val_mean_iou": 0.5})
    assert path.is_file() and read_json(state) == {"epoch": 0, "monitor": "val_mean_iou", "value": 0.5}
    mtime = path.stat().st_mtime_ns

    resumed = BestModelCheckpoint(path, state)  # a resumed run reads the best so far
    resumed.set_model(_tiny_model())
    assert resumed.best == 0.5 and resumed.best_epoch == 0
    resumed.on_epoch_end(1, {"loss": 1.0, "val_mean_iou": 0.4})
    resumed.on_epoch_end(2, {"loss": float("nan"), "val_mean_iou": 0.9})
    assert path.stat().st_mtime_ns == mtime and read_json(state)["epoch"] == 0
    resumed.on_epoch_end(3, {"loss": 0.5, "val_mean_iou": 0.6})
    assert read_json(state)["epoch"] == 3 and path.stat().st_mtime_ns != mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "model.keras"]
    with pytest.raises(KeyError, match="val_mean_iou"):
        resumed.on_epoch_end(4, {"loss": 0.5})


def test_ema_validates_and_checkpoints_the_averaged_weights_and_trains_on_the_raw_ones(tmp_path: Path) -> None:
    cfg = build_config("tiny", {"train": {"ema_momentum": 0.5, "learning_rate": 0.1, "warmup_images": 0}})
    model = _tiny_model()
    opt = build_optimizer(cfg.train, training_plan(cfg.train, n_train=16))
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.5)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 32, 32, 3), dtype=np.float32), rng.integers(0, 3, (16, 32, 32, 1))

    seen: dict[str, list] = {"raw": [], "after": [], "val_kernel": []}
    kernel = lambda: model.layers[-1].kernel.numpy().copy()  # noqa: E731

    class Probe(keras.callbacks.Callback):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen[self.key].append(kernel())

        def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            if self.key == "raw":
                seen["val_kernel"].append(kernel())

    averaged = AveragedWeights()
    ckpt = BestModelCheckpoint(tmp_path / "model.keras", tmp_path / "best.json", monitor="val_score", weights=averaged)
    score = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: logs.update(val_score=float(e)))
    model.fit(x, y, batch_size=4, epochs=2, validation_data=(x[:4], y[:4]), verbose=0,
              callbacks=[Probe("raw"), averaged, score, ckpt, Probe("after")])
    saved = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    # fit leaves the raw weights in the model (segpipe's optimizers skip Keras' end-of-fit EMA copy, so a
    # run in two phases goes on from the raw weights) ...
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), seen["raw"][-1])
    with averaged.averaged():
        average = model.layers[-1].kernel.numpy()
    # ... and the checkpoint (epoch 1) holds the averaged weights, which differ from the raw ones trained on
    np.testing.assert_allclose(saved.layers[-1].kernel.numpy(), average, atol=1e-6)
    assert not np.allclose(seen["raw"][-1], average)
    # the model holds the raw weights again after the checkpoint (what training and the backup see)
    for raw, after in zip(seen["raw"], seen["after"]):
        np.testing.assert_array_equal(raw, after)
    # validation ran on the averaged weights, not the raw ones
    assert not np.allclose(seen["val_kernel"][-1], seen["raw"][-1])


def test_precision_option_sets_the_compute_dtype(tiny_dataset: Path, tmp_path: Path) -> None:
    assert PRECISION_POLICIES == {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    assert precision_policy("off") == "float32" and precision_policy("bfloat16") == "mixed_bfloat16"
    native = cpu_has_native_bfloat16()
    import tensorflow as tf

    expected = ("mixed_float16" if tf.config.list_logical_devices("GPU")
                else "mixed_bfloat16" if native else "float32")
    assert precision_policy("auto") == expected
    assert cpu_has_native_bfloat16("processor : 0\nflags\t\t: fpu sse avx512f avx512_bf16 fma\n")
    assert cpu_has_native_bfloat16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_has_native_bfloat16("flags : fpu sse avx2 avx512f fma\nbugs : avx512_bf16_not_a_flag\n")
    assert build_config("tiny", {"train": {"mixed_precision": True}}).train.mixed_precision == "float16"
    assert build_config("tiny", {"train": {"mixed_precision": False}}).train.mixed_precision == "off"
    cfg = tiny_cfg(epochs=1, mixed_precision="bfloat16", ema_momentum=0.9)
    result = train(cfg, tiny_dataset, tmp_path / "run", verbose=0)
    saved = keras.saving.load_model(result.model_path, compile=False)
    assert saved.layers[1].dtype_policy.name == "mixed_bfloat16"
    assert saved.layers[-1].dtype_policy.compute_dtype == "float32"  # the softmax
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    assert read_json(tmp_path / "run" / "lineage.json")["dtype_policy"] == "mixed_bfloat16"


def test_early_stopping_replays_epochs_before_a_resume() -> None:
    cb = ResumableEarlyStopping([0.5, 0.4, 0.3], monitor="val_mean_iou", mode="max", patience=3)
    cb.set_model(_tiny_model())
    cb.on_train_begin()
    assert cb.best == 0.5 and cb.wait == 2
    cb.on_epoch_end(3, {"val_mean_iou": 0.45})
    assert cb.model.stop_training and cb.stopped_epoch == 3


def test_truncate_history_drops_epochs_not_backed_up(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_mean_iou\r\n0,1.0,0.2\r\n1,0.9,0.3\r\n2,0.8,0.4\r\n")
    truncate_history(path, 2)
    assert read_history(path) == [{"epoch": 0, "loss": 1.0, "val_mean_iou": 0.2},
                                  {"epoch": 1, "loss": 0.9, "val_mean_iou": 0.3}]
    truncate_history(path, 0)
    assert not path.exists()


def test_inference_check_flags_a_collapsed_model(tiny_dataset: Path, tmp_path: Path) -> None:
    _tiny_model(bias=(0.0, 5.0, 0.0)).save(tmp_path / "collapsed.keras")
    check = inference_check(tmp_path / "collapsed.keras", tiny_dataset, img_size=32, batch_size=4,
                            collapse_threshold=0.98)
    assert check["collapsed"] is True
    assert check["predicted_class_share"] == {"pet": 0.0, "background": 1.0, "border": 0.0}
    assert check["n_pixels"] == 4 * 32 * 32


# --------------------------------------------------------------------------- a real kill


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from segpipe.config import build_config
    from segpipe.training import train

    def hook(epoch, logs):
        print(f"epoch {epoch + 1} done", flush=True)
        if epoch == 0:
            time.sleep(600)  # killed here, after epoch 1 is fully saved

    cfg = build_config("tiny", {"train": {"epochs": 3, "batch_size": 4}})
    train(cfg, Path(sys.argv[1]), Path(sys.argv[2]), on_epoch_end=hook, verbose=0)
""")


@pytest.mark.slow
def test_sigkilled_run_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_dataset), str(run_dir)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    try:
        for line in child.stdout:
            if "epoch 1 done" in line or time.monotonic() > deadline:
                break
        assert child.poll() is None, "the child exited before it could be killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert not (run_dir / "train_summary.json").exists()

    cfg = build_config("tiny", {"train": {"epochs": 3, "batch_size": 4}})
    result = train(cfg, tiny_dataset, run_dir, verbose=0)
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 3
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    keras.saving.load_model(result.model_path, compile=False)
