"""Training throughput levers of issue 20, in one interleaved run: images per CPU-second and CPU share.

    .venv/bin/python benchmarks/train_levers.py --source ../shared/pets-sample \
        --set model.encoder_weights=../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5 \
        --out benchmarks/results/train-levers.json

Every variant is a short `cpu-quick` training (`--budget-images`, default 648: three epochs of the sample's
random split at batch 8, all fine-tuning the whole model: `cpu-quick`'s frozen-encoder phase is a tenth of
its images) in its own process: `benchmarks/cpu_share.py`, which reports the wall and CPU-seconds at the end
of every epoch. The figures are the steady state: from the end of the first epoch (which traces and compiles
the train and validation functions, a fixed cost that would swamp a short run) to the end of the last,
validation and the epoch callbacks included. A
process of its own per run is what thread settings need (TensorFlow reads them once, at start-up), and
it keeps one variant's warm caches from helping the next. The variants run in turn, `--rounds` times,
so the machine's drift falls on all of them alike; each round's figures are divided by the reference's
of the same round, and the report gives the median of those ratios.

What each variant changes (nothing else differs; all share `--set` and the budget):
  cpu-quick        the reference: the preset as it is
  bn-frozen        train.freeze_encoder_bn=true: the encoder's BatchNormalization stays in inference
                   mode after unfreezing too (no batch statistics, no gradient for them)
  bn-frozen-folded bn-frozen, and each batch norm that does not train computed inside the convolution
                   before it (train.fold_frozen_bn=true: the same function, fewer ops per step)
  aspp-128         model.aspp_filters=128: DeepLabV3+'s ASPP and decoder convolutions at half the width (they
                   do over half of the model's multiply-adds at 256)
  aspp-128-bn-frozen-folded   aspp-128 and bn-frozen-folded
  batch-16         train.batch_size=16 with the learning rate doubled (the linear scaling rule)
  batch-16-bn-frozen-folded   both of the above
  threads-2-1      TF_NUM_INTRAOP_THREADS=2, TF_NUM_INTEROP_THREADS=1 (TensorFlow's defaults on this
                   machine are one pool thread per core for each)
  threads-2-4      TF_NUM_INTEROP_THREADS=4: more independent ops at once, to fill the idle core
  xla              train.jit_compile=true: the train and validation steps compiled by XLA, which fuses the
                   element-wise ops and reductions (batch norm, activations) into the convolutions' loops
  steps-9          train.steps_per_execution=9: nine train steps per call of the compiled function (a third
                   of an epoch of the sample's random split), so Python and Keras' loop run once per nine steps
  steps-27         train.steps_per_execution=27: the whole epoch in one call
  replicas-2       the CPU split into two logical devices, training data-parallel on them (MirroredStrategy,
                   four images of every batch of eight each): two independent streams of ops to fill both
                   cores, where one step's own ops leave part of one idle (`cpu_share.py --cpu-replicas 2`)
  replicas-2-threads-1-2   replicas-2 with TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=2: each op on one
                   thread, the two replicas' ops side by side
  encoder-dilated  model.encoder_tail=dilated: DeepLabV3+ on the whole MobileNetV2 at output stride 16, its last
                   stage dilated (what that costs per training image; its quality is quality.py's question)
  frozen-4         train.freeze_encoder_stride=4: the encoder's stem and blocks 0 to 3's expansion (everything
                   its /4 features come from) frozen for the whole run, so no gradient is computed through them
  frozen-8         train.freeze_encoder_stride=8: the same, up to the /8 features (blocks 0 to 6's expansion)
  img-160          train.img_size=160: cpu-quick at 160 px, issue 20's throughput recipe before its
                   input-size decision
  earlier-recipe   cpu-quick as issue 20 found it: 160 px, ASPP and decoder 256 wide, the encoder's batch
                   norms training after unfreezing (the reference of the issue's throughput target)

`batch-16` alone, `threads-2-1`, `xla`, `steps-9`, `steps-27`, the `replicas-2` pair, `encoder-dilated`, the `frozen`
pair, `img-160` and `earlier-recipe` run only when `--variants` names them (the default set leaves them out to keep the run under
an hour on a slow machine).

Quality is not judged here: a four-epoch run says nothing about it. A variant that is cheaper per image
goes on to `benchmarks/quality.py` over three seeds, judged on the validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

REFERENCE = "cpu-quick"
# run only when --variants names them
OPT_IN = ("batch-16", "threads-2-1", "xla", "steps-9", "steps-27", "replicas-2", "replicas-2-threads-1-2",
          "encoder-dilated", "frozen-4", "frozen-8", "img-160", "earlier-recipe")
VARIANTS: dict[str, dict[str, Any]] = {
    "cpu-quick": {"set": [], "env": {}},
    "bn-frozen": {"set": ["train.freeze_encoder_bn=true"], "env": {}},
    "bn-frozen-folded": {"set": ["train.freeze_encoder_bn=true", "train.fold_frozen_bn=true"], "env": {}},
    "aspp-128": {"set": ["model.aspp_filters=128"], "env": {}},
    "aspp-128-bn-frozen-folded": {"set": ["model.aspp_filters=128", "train.freeze_encoder_bn=true",
                                          "train.fold_frozen_bn=true"], "env": {}},
    "batch-16": {"set": ["train.batch_size=16", "train.learning_rate=0.002"], "env": {}},
    "batch-16-bn-frozen-folded": {"set": ["train.batch_size=16", "train.learning_rate=0.002",
                                          "train.freeze_encoder_bn=true", "train.fold_frozen_bn=true"], "env": {}},
    "threads-2-1": {"set": [], "env": {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}},
    "threads-2-4": {"set": [], "env": {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "4"}},
    "xla": {"set": ["train.jit_compile=true"], "env": {}},
    "steps-9": {"set": ["train.steps_per_execution=9"], "env": {}},
    "steps-27": {"set": ["train.steps_per_execution=27"], "env": {}},
    "replicas-2": {"set": [], "env": {}, "args": ["--cpu-replicas", "2"]},
    "replicas-2-threads-1-2": {"set": [], "env": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"},
                               "args": ["--cpu-replicas", "2"]},
    "encoder-dilated": {"set": ["model.encoder_tail=dilated"], "env": {}},
    "frozen-4": {"set": ["train.freeze_encoder_stride=4"], "env": {}},
    "frozen-8": {"set": ["train.freeze_encoder_stride=8"], "env": {}},
    # cpu-quick's earlier recipes, for the throughput target against the cpu-quick it was filed on
    "img-160": {"set": ["train.img_size=160"], "env": {}},
    "earlier-recipe": {"set": ["model.aspp_filters=256", "train.freeze_encoder_bn=false",
                               "train.fold_frozen_bn=false", "train.img_size=160"], "env": {}},
}


def figures(run: dict[str, Any], skip_epochs: int) -> dict[str, float]:
    """What one cpu_share run says about throughput in the steady state: from the end of epoch `skip_epochs`
    (the first epochs trace and compile the train and validation functions) to the end of the last, the
    training images per CPU-second and per wall second and the CPU share, epochs' validation and callbacks
    included; and the CPU share of the whole run's train steps."""
    ends = run["epoch_ends"]
    if len(ends) <= skip_epochs:
        raise ValueError(f"the run has {len(ends)} epochs: none left after skipping {skip_epochs}")
    first, last = ends[skip_epochs - 1], ends[-1]
    images = run["images_per_epoch"] * (len(ends) - skip_epochs)
    wall, cpu = last["wall_s"] - first["wall_s"], last["cpu_s"] - first["cpu_s"]
    steps = run["phases"].get("train steps", {})
    return {
        "steady_images": images,
        "steady_wall_seconds": wall,
        "steady_cpu_seconds": cpu,
        "images_per_cpu_second": images / cpu,
        "images_per_wall_second": images / wall,
        "cpu_share_percent": 100 * cpu / wall,
        "whole_run_wall_seconds": run["wall_seconds"],
        "whole_run_cpu_share_percent": run["cpu_share_percent"],
        "train_steps_cpu_share_percent": steps.get("cpu_share_percent"),
    }


def summarise(rounds: list[dict[str, dict[str, float]]], reference: str = REFERENCE) -> dict[str, Any]:
    """Per variant: the median of each figure over the rounds, and the median of its per-round ratio to the
    reference's figure of the same round (images per CPU-second, images per wall second)."""
    names = list(rounds[0])
    out: dict[str, Any] = {}
    for name in names:
        runs = [rnd[name] for rnd in rounds if name in rnd]
        entry = {}
        for key in runs[0]:
            values = [run[key] for run in runs if run[key] is not None]
            entry[key] = common.r(common.median(values), 3) if values else None
        for key in ("images_per_cpu_second", "images_per_wall_second"):
            ratios = [rnd[name][key] / rnd[reference][key] for rnd in rounds if name in rnd and reference in rnd]
            entry[f"{key}_vs_reference"] = common.r(common.median(ratios), 3)
            entry[f"{key}_vs_reference_per_round"] = [common.r(x, 3) for x in ratios]
        entry["rounds"] = len(runs)
        out[name] = entry
    return out


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, str(Path(__file__).with_name("cpu_share.py")), "--source", args.source,
               "--work-dir", args.work_dir, "--budget-images", str(args.budget_images), "--out", str(out),
               *spec.get("args", [])]
        for item in [*args.set, *spec["set"]]:
            cmd += ["--set", item]
        done = common.run_measured(cmd, env={**os.environ, **spec["env"]})
        if done["returncode"]:
            raise SystemExit(f"variant {name} failed ({done['returncode']}):\n{done['stderr'][-3000:]}")
        run = json.loads(out.read_text())
    return {"figures": figures(run, args.skip_epochs), "config": run["configs"][0],
            "distribution": run.get("distribution"),
            "epochs_completed": run["epochs_completed"], "child_wall_seconds": common.r(done["wall_s"], 1),
            "child_cpu_seconds": common.r(done["cpu_s"], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared" / "pets-sample"))
    p.add_argument("--work-dir", default="bench-out/train-levers")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="for every variant")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   default=[v for v in VARIANTS if v not in OPT_IN])
    p.add_argument("--budget-images", type=int, default=648,
                   help="each run's length (default: three epochs of the sample's random split at batch 8)")
    p.add_argument("--freeze-encoder-images", type=int, default=0,
                   help="the frozen phase of every variant (default none: the fine-tuning phase is 90%% of "
                        "cpu-quick's images, and one phase compiles once)")
    p.add_argument("--skip-epochs", type=int, default=1, help="epochs before the steady state")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    if REFERENCE not in args.variants:
        p.error(f"--variants must include the reference {REFERENCE!r}")
    args.set = [*args.set, f"train.freeze_encoder_images={args.freeze_encoder_images}"]
    started_machine, started_commit, command = common.machine(), common.git_commit(), common.command_line()

    rounds: list[dict[str, dict[str, float]]] = []
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in args.variants}
    for i in range(args.rounds):
        rnd = {}
        for name in args.variants:
            common.log(f"round {i + 1}/{args.rounds}: {name}")
            run = run_variant(name, args)
            details[name].append(run)
            rnd[name] = run["figures"]
            common.log(f"  {json.dumps({k: common.r(v, 2) for k, v in run['figures'].items()})}")
        rounds.append(rnd)
    common.emit({
        "benchmark": "train_levers",
        "command": command,
        "commit": started_commit,
        "reference": REFERENCE,
        "budget_images": args.budget_images,
        "freeze_encoder_images": args.freeze_encoder_images,
        "skip_epochs": args.skip_epochs,
        "variants": {name: {**VARIANTS[name], "runs": details[name]} for name in args.variants},
        "summary": summarise(rounds),
        "configs": [details[name][0]["config"] for name in args.variants],
        "machine": {**started_machine, "load_average_after": common.load_average()},
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
