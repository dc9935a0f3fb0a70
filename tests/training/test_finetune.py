"""Fine-tuning a pretrained encoder: frozen phase (weights and BatchNormalization statistics unchanged),
unfreezing (they change; the decoder's optimizer state carries over), the encoder's own learning-rate
multiplier, and a run killed in either phase resuming in the right phase."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from segpipe.config.budget import training_plan
from segpipe.config import build_config
from segpipe.fsutil import read_json, sha256_file
from segpipe.models import build_model
from segpipe.models.encoders import build_application, encoder_of
from segpipe.training import read_history, run_id_for, train
from segpipe.training.model import build_and_compile
from tests.synthetic import write_tiny_dataset


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "pretrained" encoder of our own: Keras' initial kernels, BN statistics and scales made non-trivial
    (not saturating every ReLU6, so gradients flow as they do with real weights)."""
    keras.utils.set_random_seed(3)
    app = build_application("mobilenetv2", (32, 32, 3), alpha=0.35)
    rng = np.random.default_rng(3)
    for v in app.weights:
        if "moving_mean" in v.path or v.path.endswith("beta"):
            v.assign(rng.normal(0.0, 0.1, v.shape).astype("float32"))
        elif "moving_variance" in v.path or v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    path = tmp_path_factory.mktemp("weights") / "mnv2-035.weights.h5"
    app.save_weights(path)
    return path


def cfg_for(weights: Path, **train):
    return build_config("tiny", {
        "model": {"encoder": "mobilenetv2", "encoder_alpha": 0.35, "encoder_weights": str(weights), "base_filters": 2},
        "train": {"img_size": 32, "batch_size": 4, "learning_rate": 1e-2, **train},
    })


def encoder_state(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """Every encoder variable by path, split into BN moving statistics and the rest."""
    out: dict[str, dict[str, np.ndarray]] = {"bn_stats": {}, "weights": {}}
    for v in encoder_of(model).weights:
        kind = "bn_stats" if "moving_" in v.path else "weights"
        out[kind][v.path] = v.numpy().copy()
    return out


def changed(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> int:
    return sum(not np.array_equal(before[k], after[k]) for k in before)


def batches(n: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 3, (n, 32, 32, 1)).astype("int32")


def _built(cfg):
    keras.utils.set_random_seed(0)
    return build_and_compile(cfg, training_plan(cfg.train, n_train=8))[:2]  # (model, compile_phase)


def test_frozen_phase_keeps_encoder_weights_and_bn_statistics_then_unfreezing_changes_them(weights_file):
    cfg = cfg_for(weights_file, epochs=2, freeze_encoder_images=8)
    model, compile_phase = _built(cfg)
    x, y = batches()
    start = encoder_state(model)
    decoder_kernel = model.get_layer("head_logits").kernel

    compile_phase(True)
    model.fit(x, y, epochs=1, verbose=0)
    frozen = encoder_state(model)
    assert changed(start["weights"], frozen["weights"]) == 0
    assert changed(start["bn_stats"], frozen["bn_stats"]) == 0  # BN ran in inference mode
    opt = model.optimizer
    velocity = opt._velocities[opt._get_variable_index(decoder_kernel)]
    v1 = velocity.numpy().copy()
    assert v1.sum() > 0 and int(opt.iterations.numpy()) == 1
    encoder_kernel = encoder_of(model).get_layer("Conv1").kernel
    assert not opt._momentums[opt._get_variable_index(encoder_kernel)].numpy().any()  # frozen: never stepped

    compile_phase(False)
    model.fit(x, y, epochs=1, verbose=0)
    tuned = encoder_state(model)
    assert changed(frozen["weights"], tuned["weights"]) == len(tuned["weights"])
    assert changed(frozen["bn_stats"], tuned["bn_stats"]) == len(tuned["bn_stats"])
    # The same optimizer went on: its step count and the decoder's moments continue, not restarted
    # (Adam: v2 = 0.999 v1 + 0.001 g^2 >= 0.999 v1; a fresh optimizer would hold only 0.001 g^2).
    assert model.optimizer is opt and int(opt.iterations.numpy()) == 2
    assert np.all(velocity.numpy() >= 0.999 * v1 - 1e-12)
    assert opt._momentums[opt._get_variable_index(encoder_kernel)].numpy().any()  # now it steps


def test_freeze_encoder_bn_keeps_statistics_after_unfreezing(weights_file):
    model, compile_phase = _built(cfg_for(weights_file, epochs=2, freeze_encoder_images=8, freeze_encoder_bn=True))
    x, y = batches()
    start = encoder_state(model)
    compile_phase(False)
    model.fit(x, y, epochs=1, verbose=0)
    end = encoder_state(model)
    assert changed(start["bn_stats"], end["bn_stats"]) == 0
    kernels = {k: v for k, v in start["weights"].items() if k.endswith("kernel")}
    assert changed(kernels, {k: end["weights"][k] for k in kernels}) == len(kernels)


def test_encoder_learning_rate_multiplier_scales_its_steps_only(weights_file):
    x, y = batches()
    deltas = {}
    for mult in (1.0, 0.1):
        model, compile_phase = _built(cfg_for(weights_file, epochs=1, encoder_lr_multiplier=mult, learning_rate=1e-3))
        compile_phase(False)
        model.run_eagerly = True  # one step each: tracing two graphs would cost far more than the steps
        conv1, head = encoder_of(model).get_layer("Conv1").kernel, model.get_layer("head_logits").kernel
        before = conv1.numpy().copy(), head.numpy().copy()
        model.train_on_batch(x, y)
        deltas[mult] = (np.abs(conv1.numpy() - before[0]).max(), np.abs(head.numpy() - before[1]).max())
    # Adam's first step moves each variable by about lr: the encoder's by lr x multiplier.
    assert deltas[0.1][0] == pytest.approx(0.1 * deltas[1.0][0], rel=0.02)
    assert deltas[0.1][1] == pytest.approx(deltas[1.0][1], rel=0.02)


# --------------------------------------------------------------------------- kills in either phase


class Interrupt(Exception):
    pass


def _backup_encoder(cfg, run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Encoder state as the backup holds it (what a resume restarts from)."""
    model = build_model(cfg.model.name, (32, 32, 3), 3, **cfg.model.params())
    model.load_weights(run_dir / "backup" / "latest.weights.h5", skip_mismatch=True)
    return encoder_state(model)


@pytest.mark.slow
def test_runs_killed_at_the_phase_boundary_and_after_it_resume_in_the_right_phase(weights_file, tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 8, "val": 4}, key="ft-ds")
    # 2 steps of 4 = 8 images an epoch; 4 epochs, the first 2 with the encoder frozen.
    cfg = cfg_for(weights_file, budget_images=32, freeze_encoder_images=16, encoder_lr_multiplier=0.5,
                  warmup_images=8, augment=False)
    plan = training_plan(cfg.train, 8)
    assert (plan.epochs, plan.frozen_epochs) == (4, 2)
    run_dir = tmp_path / run_id_for(cfg, "ft-ds", "test")
    pretrained = encoder_state(build_model("unet", (32, 32, 3), 3, **cfg.model.params()))

    def kill_after(stop: int):
        seen: list[tuple[int, str]] = []

        def hook(epoch: int, logs: dict) -> None:
            seen.append((epoch, logs["progress"]))
            if epoch == stop:
                raise Interrupt(f"killed after epoch {epoch}")

        return hook, seen

    # Killed at the phase boundary (after the last frozen epoch), then after a fine-tuned epoch: the second run
    # resumes from a frozen-phase backup straight into fine-tuning, the last from a fine-tuned one. (A resume
    # inside one phase is the ordinary resume of test_training.py; each kill here costs a run's graph tracing.)
    start = 0
    phase_lines: list[list[str]] = []  # what on_phase was told, run by run (the train task logs it)
    for stop in (1, 2):
        hook, seen = kill_after(stop)
        phase_lines.append([])
        with pytest.raises(Interrupt):
            train(cfg, ds, run_dir, on_epoch_end=hook, on_phase=phase_lines[-1].append, verbose=0)
        assert [e for e, _ in seen] == list(range(start, stop + 1))  # each rerun starts where the last was killed
        start = stop + 1
        assert read_json(run_dir / "backup" / "training_metadata.json")["epoch"] == stop + 1
        backed_up = _backup_encoder(cfg, run_dir)
        n_changed = changed(pretrained["weights"], backed_up["weights"])
        n_stats = changed(pretrained["bn_stats"], backed_up["bn_stats"])
        if stop + 1 <= plan.frozen_epochs:
            assert n_changed == 0 and n_stats == 0, f"the encoder moved during frozen epoch {stop}"
        else:
            assert n_changed > 0 and n_stats == len(backed_up["bn_stats"]), "the encoder did not fine-tune"
        assert seen[-1][1].startswith(f"epoch {stop + 1}/4, {8 * (stop + 1)}/32 images")

    phase_lines.append([])
    result = train(cfg, ds, run_dir, on_phase=phase_lines[-1].append, verbose=0)
    assert result.epochs_completed == 4 and result.resumed_from_epoch == 3 and not result.cached
    # each run says the phases it trains, as they start: the frozen one, then (resumed) the fine-tuned one
    assert phase_lines == [["epochs up to 2: encoder frozen"], ["epochs up to 4: encoder fine-tuned"],
                           ["epochs up to 4: encoder fine-tuned"]]
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    lineage = read_json(run_dir / "lineage.json")
    assert [r["from_epoch"] for r in lineage["resumed_at"]] == [2, 3]
    assert lineage["plan"]["frozen_epochs"] == 2 and lineage["encoder_weights"]["sha256"]
    assert str(weights_file) not in (run_dir / "lineage.json").read_text()
    # The file each start loaded, by content: the same bytes on every resume, so one record.
    assert lineage["encoder_weights_files"] == [{"encoder": "mobilenetv2", "route": "file", "file": weights_file.name,
                                                 "sha256": sha256_file(weights_file)}]
    # The schedule went on across kills and the phase change: 2 steps an epoch, 2 warm-up steps.
    from segpipe.training import WarmupCosineDecay

    expected = WarmupCosineDecay(1e-2, warmup_steps=2, total_steps=8)
    np.testing.assert_allclose([row["learning_rate"] for row in result.history],
                               [float(expected(2 * (e + 1))) for e in range(4)], atol=1e-7)
    summary = read_json(run_dir / "train_summary.json")
    assert summary["epochs_planned"] == 4 and summary["images_seen"] == 32 and summary["budget_images"] == 32


def test_a_foreign_weights_file_fails_before_training(tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 4, "val": 2}, key="ft-junk")
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not an hdf5 file")
    cfg = cfg_for(junk)
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"encoder_weights: could not load .*junk\.weights\.h5.*mobilenetv2"):
        train(cfg, ds, run_dir, verbose=0)
    assert not (run_dir / "history.csv").exists() and not (run_dir / "backup").exists()
    assert read_history(run_dir / "history.csv") == []
