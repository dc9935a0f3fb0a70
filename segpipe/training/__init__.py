"""Training: a config and a prepared dataset in, a run directory out.

    run_dir = work.run(run_id_for(cfg, dataset_key))   # the code: every module training can import
    result = train(cfg, dataset_dir, run_dir)

A run directory holds

    config.json          the full PipelineConfig
    lineage.json         dataset key and manifest digest, code version, seed, library versions,
                         the run identity (encoder weights by sha256, never by path), the plan and
                         the encoder weights files actually loaded, "imagenet" included (name, sha256)
    model.keras          the best model so far by val_mean_iou (replaced atomically)
    best.json            epoch and score of model.keras
    history.csv          one row per completed epoch (epoch indices are 0-based, as in Keras)
    tensorboard/         TensorBoard logs
    backup/              weights, optimizer state and epochs completed (`AtomicBackupAndRestore`);
                         removed once the run is complete
    train_summary.json   written last: the run is complete once it exists

Because the run id is derived from data + config + code, a killed or retried
run lands in the same directory and resumes from its last completed epoch
(weights and optimizer state from the backup, and the input stream from the batch
an uninterrupted run would read next, so it ends where an uninterrupted run ends);
a complete run is returned without training again.

The run's length comes from its budget of images seen (`segpipe.config.budget`). A
model on a pretrained encoder can keep the encoder frozen for the first
`train.freeze_encoder_images` (whole epochs; its BatchNormalization then runs
in inference mode) and fine-tune it afterwards at `train.encoder_lr_multiplier`
times the learning rate. The optimizer is built once over every variable that
will ever train, so unfreezing keeps the decoder's optimizer state and a resume
in either phase restores the same variables.

Training runs under `segpipe.training.distribute.strategy()`: one device, MirroredStrategy over
several, or MultiWorkerMirroredStrategy over the worker processes that TF_CONFIG names.
`train.batch_size` is the global batch in every case. With several workers, every worker
calls `train` with the same arguments (the run directory on a volume they all see); only the
chief writes the run directory. The others start from a copy of its state (backup, history,
best model), so each restores the same epoch and takes the same decisions, run every step,
and write into a scratch directory of their own that is removed at the end. The workers leave
`train` together, once the chief has written train_summary.json, and return the same result
(with `chief=False` on all but the chief); when one fails, the others fail too (their
collective ops lose a peer), so a restarted job starts all of them again and they resume
together. (Keras 3 needs `kerascompat.fit_under_multi_worker_strategy` for that strategy.)

The package, a module a role: `loop` (`train` and its fit), `model` (the model, compiled for either
phase), `optimizers` and `schedule` (the learning rate), `precision` (mixed precision), `callbacks`,
`run_dir` (the run directory's files, history, lineage, resume state) and `check` (the inference-mode
check and train_summary.json). Keras private attributes stay in `segpipe.kerascompat`.
"""

from segpipe.runs.naming import run_id_for
from segpipe.training.callbacks import (AtomicBackupAndRestore, AveragedWeights, BestModelCheckpoint, BudgetProgress,
                                        LearningRateLogger, ResumableEarlyStopping)
from segpipe.training.check import inference_check
from segpipe.training.loop import train
from segpipe.training.model import set_encoder_trainable
from segpipe.training.optimizers import FineTuneAdam, FineTuneAdamW, build_optimizer
from segpipe.training.precision import PRECISION_POLICIES, cpu_has_native_bfloat16, precision_policy
from segpipe.training.run_dir import (BACKUP_DIR, BEST_FILE, CONFIG_FILE, HISTORY_FILE, LINEAGE_FILE, MODEL_FILE,
                                      MONITOR, SUMMARY_FILE, TENSORBOARD_DIR, TrainResult, read_history)
from segpipe.training.schedule import WarmupCosineDecay

__all__ = [
    "AtomicBackupAndRestore", "AveragedWeights", "BestModelCheckpoint", "BudgetProgress", "LearningRateLogger",
    "ResumableEarlyStopping", "inference_check", "train", "set_encoder_trainable", "FineTuneAdam",
    "FineTuneAdamW", "build_optimizer", "PRECISION_POLICIES", "cpu_has_native_bfloat16", "precision_policy",
    "BACKUP_DIR", "BEST_FILE", "CONFIG_FILE", "HISTORY_FILE", "LINEAGE_FILE", "MODEL_FILE", "MONITOR",
    "SUMMARY_FILE", "TENSORBOARD_DIR", "TrainResult", "read_history", "WarmupCosineDecay",
    "run_id_for",
]
