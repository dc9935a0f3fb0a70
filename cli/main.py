"""The `segpipe` command line: run the whole pipeline or any single stage locally.

Every command builds one validated `PipelineConfig` (preset + flags) *before*
importing Prefect or TensorFlow, so a bad flag fails in milliseconds with a
message naming the field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from segpipe.config import PRESETS, ConfigError, PipelineConfig, build_config
from segpipe.layout import ENV_WORK_DIR, WorkDir

# flag -> dotted config field
DATA_FLAGS = {
    "source": "data.source", "split": "data.split", "val_fraction": "data.val_fraction",
    "test_fraction": "data.test_fraction", "seed": "data.seed", "shard_size_mb": "data.shard_size_mb",
    "workers": "data.workers", "download_timeout": "data.download_timeout_s",
}
TRAIN_FLAGS = {
    "model": "model.name", "base_filters": "model.base_filters", "depth": "model.depth",
    "backbone": "model.backbone", "encoder_weights": "model.encoder_weights",
    "epochs": "train.epochs", "img_size": "train.img_size", "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate", "optimizer": "train.optimizer", "loss": "train.loss",
    "train_seed": "train.seed", "mixed_precision": "train.mixed_precision", "jit_compile": "train.jit_compile",
    "augment": "train.augment", "steps_per_epoch": "train.steps_per_epoch",
}
EVAL_FLAGS = {
    "eval_split": "eval.split", "eval_batch_size": "eval.batch_size",
    "gallery_samples": "eval.gallery_samples", "gallery_worst": "eval.gallery_worst",
}


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", help=f"work directory (default: ${ENV_WORK_DIR} or ./segpipe-work)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named configuration preset")
    p.add_argument("--config", type=Path, help="JSON file with a (partial) PipelineConfig")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set train.weight_decay=0 (repeatable)")
    p.add_argument("--refresh", action="store_true", help="ignore cached task results and recompute")
    p.add_argument("--result-storage", help="where Prefect persists results (default WORK/prefect-results)")


def _data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--source", help="'official', an http(s) base URL, a file:// URL or a directory with the two archives")
    g.add_argument("--split", choices=["official", "random"])
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--test-fraction", type=float, help="for --split random")
    g.add_argument("--seed", type=int, help="split seed")
    g.add_argument("--shard-size-mb", type=float)
    g.add_argument("--workers", type=int)
    g.add_argument("--download-timeout", type=float, help="seconds")


def _train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--dataset", help="dataset key under WORK/datasets (default: the latest)")
    g.add_argument("--model")
    g.add_argument("--base-filters", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--backbone")
    g.add_argument("--encoder-weights", help="none, imagenet or a path to a weights file")
    g.add_argument("--epochs", type=int)
    g.add_argument("--img-size", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--optimizer")
    g.add_argument("--loss")
    g.add_argument("--train-seed", type=int)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)


def _eval(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-split", choices=["train", "val", "test"])
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--gallery-samples", type=int)
    g.add_argument("--gallery-worst", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe", description="Oxford-IIIT Pet segmentation pipeline (Keras 3 + Prefect 3)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download and verify the two archives")
    _common(p), _data(p)
    p = sub.add_parser("prepare", help="download → verify → extract → validate → split → TFRecords")
    _common(p), _data(p)
    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    _common(p), _data(p), _train(p), _eval(p)
    p = sub.add_parser("datasets", help="list prepared datasets under WORK")
    p.add_argument("--work-dir")
    return parser


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            overrides.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"--config {args.config}: expected a readable JSON file ({exc})") from None
        overrides.pop("preset", None)
    for item in getattr(args, "set", []) or []:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise CliError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set train.epochs=3")
        overrides[field.strip()] = _parse_value(value)
    for flags in (DATA_FLAGS, TRAIN_FLAGS, EVAL_FLAGS):
        for attr, field in flags.items():
            value = getattr(args, attr, None)
            if value is not None:
                overrides[field] = value
    if isinstance(overrides.get("model.encoder_weights"), str) and overrides["model.encoder_weights"].lower() == "none":
        overrides["model.encoder_weights"] = None
    return build_config(getattr(args, "preset", None), overrides)


def _prepare_runtime(args: argparse.Namespace) -> Path:
    from cli.env import configure_prefect

    work = WorkDir.at(args.work_dir).root
    configure_prefect(work, refresh=getattr(args, "refresh", False), result_storage=getattr(args, "result_storage", None))
    return work


def cmd_config(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    print(cfg.model_dump_json(indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace, cfg: PipelineConfig | None) -> int:
    work = WorkDir.at(args.work_dir)
    rows = work.complete_datasets()
    if not rows:
        print(f"no prepared dataset under {work.datasets}")
        return 0
    for key, manifest in rows:
        counts = {s: v.get("num_examples") for s, v in manifest.get("splits", {}).items()}
        print(f"{key}  created {manifest.get('created_at')}  {counts}")
    return 0


def cmd_download(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.prepare_data import download_data

    archives = download_data(config=cfg, work_dir=str(work))
    for name, archive in archives.items():
        print(f"{name}: {archive.path} sha256 {archive.sha256}")
    return 0


def cmd_prepare(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.prepare_data import prepare_data

    dataset_dir = prepare_data(config=cfg, work_dir=str(work))
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    counts = ", ".join(f"{s} {v['num_examples']}" for s, v in manifest["splits"].items())
    print(f"dataset {manifest['dataset_key']}: {counts}")
    print(f"dataset written to {dataset_dir}")
    print(f"validation report: {Path(dataset_dir) / 'validation.md'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "config": cmd_config,
    "datasets": cmd_datasets,
    "download": cmd_download,
    "prepare": cmd_prepare,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        cfg = None if args.command == "datasets" else config_from_args(args)
        status = COMMANDS[args.command](args, cfg)
    except (ConfigError, CliError) as exc:
        print(f"segpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for the user, the traceback in the Prefect log
        if os.environ.get("SEGPIPE_DEBUG"):
            raise
        print(f"segpipe {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.command not in ("config", "datasets"):
        print(f"done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
