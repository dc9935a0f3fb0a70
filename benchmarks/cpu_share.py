"""Where the CPU goes while training: CPU share per training phase and per thread pool (issue 20).

    .venv/bin/python benchmarks/cpu_share.py --source ../shared/pets-sample \
        --set model.encoder_weights=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 \
        --out benchmarks/results/cpu-share.json

Trains `--preset` (default cpu-quick) for `--budget-images` (default 1,632: three frozen-encoder epochs of the
sample and three fine-tuning ones) with nothing else running, and samples the process every `--interval`
seconds:

* the CPU-seconds of every thread of the process (`/proc/self/task/*/stat`), grouped by thread name
  (TensorFlow's compute pool, tf.data's pools, the Python main thread, ...);
* what the main thread is doing, from its Python stack (`sys._current_frames`): `train steps` (inside the
  compiled train function), `validation` (inside fit's evaluate), `epoch callbacks` (on_epoch_end /
  on_epoch_begin: history, TensorBoard, checkpoint, backup), `batch callbacks`, `fit other`, or `setup`
  (building the model, the dataset, before fit).

Each sample's CPU delta is charged to the phase the main thread was in at its end, so per phase the report
gives wall seconds, CPU-seconds and the CPU share (of 100% per core). The machine has 2 cores: 200% is full.
`epoch_ends` adds the wall and process CPU-seconds at the end of every epoch (once it is saved), from which
`benchmarks/train_levers.py` takes the steady state after the first epochs (tracing and compiling).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PHASES = (  # first match wins, over every function name on the main thread's stack
    ("validation", {"evaluate"}),
    ("epoch callbacks", {"on_epoch_end", "on_epoch_begin"}),
    ("batch callbacks", {"on_train_batch_end", "on_train_batch_begin"}),
    ("train steps", {"fit+compiled"}),  # fit's call into the compiled train function (TensorFlow's eager runtime)
    ("fit other", {"fit"}),
)
COMPILED = "polymorphic_function"  # the directory of tf.function's Python frames


def thread_cpu() -> dict[int, tuple[str, float]]:
    """{tid: (thread name, CPU-seconds)} of every live thread of this process."""
    out = {}
    for entry in os.scandir("/proc/self/task"):
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # the thread ended between listing and reading
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def phase_of(frame: Any) -> str:
    names, compiled = set(), False
    while frame is not None:
        names.add(frame.f_code.co_name)
        compiled = compiled or COMPILED in frame.f_code.co_filename
        frame = frame.f_back
    if compiled and "fit" in names:
        names.add("fit+compiled")
    for phase, markers in PHASES:
        if names & markers:
            return phase
    return "setup"


class Sampler(threading.Thread):
    """Samples thread CPU and the main thread's phase every `interval` seconds until `stop`."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="cpu-share-sampler")
        self.interval, self.main = interval, threading.main_thread().ident
        self.stopped = threading.Event()
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.threads: dict[int, tuple[str, float]] = {}
        self.base: dict[int, tuple[str, float]] = {}

    def run(self) -> None:
        last_t, last_cpu = self.started
        while not self.stopped.wait(self.interval):
            now, cpu = time.monotonic(), self._total()
            frame = sys._current_frames().get(self.main)
            phase = phase_of(frame)
            self.wall[phase] += now - last_t
            self.cpu[phase] += cpu - last_cpu
            last_t, last_cpu = now, cpu

    def start(self) -> None:
        """Take the first reading here, in the caller's thread: the sampler's own thread may wait for the GIL."""
        self.base = thread_cpu()  # what the threads had spent before: imports, dataset preparation
        self.started = (time.monotonic(), self._total())
        super().start()

    def _total(self) -> float:
        current = thread_cpu()
        self.threads.update(current)  # ended threads keep their last reading
        return sum(cpu for _, cpu in self.threads.values())

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "pets-sample"))
    p.add_argument("--work-dir", default="bench-out/cpu-share")
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--budget-images", type=int, default=1632)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--cpu-replicas", type=int, default=1,
                   help="split the CPU into this many logical devices before TensorFlow starts, so that training "
                        "runs data-parallel on them (MirroredStrategy, each replica a part of every batch)")
    p.add_argument("--out")
    args = p.parse_args()
    if args.cpu_replicas < 1:
        p.error(f"--cpu-replicas: expected a whole number >= 1, got {args.cpu_replicas}")
    if args.cpu_replicas > 1:  # before any other TensorFlow op: logical devices cannot change once it starts
        import tensorflow as tf

        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)

    import json
    import shutil

    from segpipe.config import build_config
    from segpipe.layout import WorkDir
    from segpipe_app.cli.env import configure_prefect
    from segpipe_app.cli.options import parse_value

    work = WorkDir.at(args.work_dir)
    configure_prefect(work.root)
    # the data as benchmarks/quality.py splits it (272 training images: 34 batches of 8 per epoch)
    overrides: dict[str, Any] = {"data.source": str(Path(args.source).resolve()), "data.split": "random",
                                 "data.test_fraction": 0.2, "data.val_fraction": 0.1, "data.seed": 0,
                                 "train.budget_images": args.budget_images}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = parse_value(value)
    cfg = build_config(args.preset, overrides)
    started_machine, started_commit, command = common.machine(), common.git_commit(), common.command_line()

    from segpipe import training
    from segpipe.config.budget import training_plan
    from segpipe.runs.naming import LINEAGE_FILE
    from segpipe_app.flows.prepare_data import prepare_data_flow

    dataset = prepare_data_flow(config=cfg, work_dir=str(work.root))
    run_dir = work.run("cpu-share")
    shutil.rmtree(run_dir, ignore_errors=True)  # measure training, never a cached run
    sampler = Sampler(args.interval)
    sampler.start()
    t0, cpu0 = sampler.started[0], time.process_time()
    epochs: list[dict[str, float]] = []  # the wall and process CPU-seconds at the end of each epoch (all saved)

    def epoch_end(epoch: int, logs: dict[str, Any]) -> None:
        epochs.append({"epoch": epoch, "wall_s": round(time.monotonic() - t0, 2),
                       "cpu_s": round(time.process_time() - cpu0, 2)})

    result = training.train(cfg, Path(dataset.path), run_dir, on_epoch_end=epoch_end, verbose=2)
    sampler.stop()
    wall = time.monotonic() - t0

    phases = {
        name: {"wall_seconds": round(sampler.wall[name], 2), "cpu_seconds": round(sampler.cpu[name], 2),
               "cpu_share_percent": round(100 * sampler.cpu[name] / sampler.wall[name], 1) if sampler.wall[name] else None,
               "share_of_wall_percent": round(100 * sampler.wall[name] / wall, 1)}
        for name in sorted(sampler.wall, key=sampler.wall.get, reverse=True)
    }
    pools: dict[str, float] = defaultdict(float)
    for tid, (name, cpu) in sampler.threads.items():
        pools[name] += cpu - sampler.base.get(tid, (name, 0.0))[1]
    total_cpu = sum(pools.values())
    common.emit({
        "benchmark": "cpu_share",
        "command": command,
        "commit": started_commit,
        "configs": [common.config_record(args.preset, overrides, cfg=cfg)],
        "epochs_completed": result.epochs_completed,
        "distribution": json.loads((run_dir / LINEAGE_FILE).read_text())["distribution"],
        "images_per_epoch": training_plan(cfg.train, dataset.num_examples["train"]).images_per_epoch,
        "epoch_ends": epochs,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(total_cpu, 1),
        "cpu_share_percent": round(100 * total_cpu / wall, 1),
        "cores": os.cpu_count(),
        "phases": phases,
        "main_thread_cpu_seconds": round(sampler.threads[os.getpid()][1] - sampler.base[os.getpid()][1], 1),
        "threads_by_name": {k: round(v, 1) for k, v in sorted(pools.items(), key=lambda kv: -kv[1]) if v >= 0.05},
        "machine": {**started_machine, "load_average_after": common.load_average()},
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
