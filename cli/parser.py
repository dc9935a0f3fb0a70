"""The `segpipe` argument parser: every command, its flags and their help text (argparse only)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from segpipe.config import PRESETS
from segpipe.layout import ENV_WORK_DIR

DEFAULT_PRESET = "cpu-quick"

DEBUG_ENV = "SEGPIPE_DEBUG"
DEBUG_HELP = (f"show tracebacks and TensorFlow's native start-up lines (also ${DEBUG_ENV}=1); by default a failure "
              "or an interrupt prints one line")


def _debug_flag(p: argparse.ArgumentParser, *, sub: bool = True) -> None:
    # on a subcommand, SUPPRESS keeps `segpipe --debug run` from being reset by the subparser's default
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if sub else False, help=DEBUG_HELP)


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """`--debug`, or SEGPIPE_DEBUG set to anything but '', 0, false or no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or bool(getattr(args, "debug", False))


def _common(p: argparse.ArgumentParser) -> None:
    _debug_flag(p)
    p.add_argument("--work-dir", help=f"work directory (default: ${ENV_WORK_DIR} or ./segpipe-work)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=f"named configuration preset (default {DEFAULT_PRESET})")
    p.add_argument("--config", type=Path, help="JSON file with a (partial) PipelineConfig")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set train.weight_decay=0 (repeatable)")
    p.add_argument("--refresh", action="store_true", help="ignore cached task results and recompute")
    p.add_argument("--result-storage", help="where Prefect persists results (default WORK/prefect-results)")


def _data(p: argparse.ArgumentParser, split_flag: str = "--split") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--source", help="'official', an http(s) base URL, a file:// URL or a directory with the two archives")
    g.add_argument(split_flag, dest="split", choices=["official", "random", "breed"], help="how the dataset is split")
    g.add_argument("--holdout-breed", dest="holdout_breeds", action="append", metavar="BREED",
                   help="with split 'breed': a breed to hold out as the test split (repeatable)")
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
    g.add_argument("--encoder", help="pretrained encoder: none, mobilenetv2, resnet50 or efficientnetb0")
    g.add_argument("--backbone", help=argparse.SUPPRESS)  # the old name of --encoder
    g.add_argument("--encoder-weights", help="none, imagenet or a path to a weights file")
    g.add_argument("--budget-images", type=int, help="length of training in images seen (epochs derived from it)")
    g.add_argument("--freeze-encoder-images", type=int, help="keep the encoder frozen for this many images seen")
    g.add_argument("--encoder-lr-multiplier", type=float, help="the encoder's learning rate relative to the decoder's")
    g.add_argument("--epochs", type=int, help="explicit number of epochs (overrides the preset's budget)")
    g.add_argument("--img-size", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--optimizer")
    g.add_argument("--loss")
    g.add_argument("--train-seed", type=int)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--mixed-precision", choices=["off", "float16", "bfloat16", "auto"],
                   help="compute dtype (auto: float16 on a GPU, bfloat16 on a CPU with AVX512_BF16/AMX, else off)")
    g.add_argument("--ema-momentum", type=float, help="average the weights with this momentum per step")
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)


def _eval(p: argparse.ArgumentParser, split_flag: str = "--eval-split") -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument(split_flag, dest="eval_split", choices=["train", "val", "test"], help="the split to score")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--gallery-samples", type=int)
    g.add_argument("--gallery-worst", type=int)
    _tta(g)


def _tta(p: Any) -> None:
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also predict the mirrored image and average (test-time augmentation)")
    p.add_argument("--tta-sizes", type=_sizes, default=None, metavar="N,N",
                   help="also predict with the model rebuilt at these input sizes and average (multi-scale "
                        "test-time augmentation), e.g. 288; 'none' for none")


def _sizes(raw: str) -> list[int]:
    """`224,256` -> [224, 256]; `none` or empty -> []."""
    text = raw.strip().lower()
    if text in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r}: expected input sizes in pixels separated by commas (e.g. 224,256), or none") from None


def _models(p: argparse.ArgumentParser, help: str = "a saved .keras model; repeat for an ensemble (softmax outputs averaged)") -> None:
    p.add_argument("--model", dest="model_paths", action="append", required=True, type=Path, metavar="PATH",
                   help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe", description="Oxford-IIIT Pet segmentation pipeline (Keras 3 + Prefect 3)."
    )
    _debug_flag(parser, sub=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _stage_commands(sub)
    _pipeline_commands(sub)
    return parser


def _stage_commands(sub: Any) -> None:
    """One command per stage: download, prepare, train, evaluate, gallery, predict."""
    p = sub.add_parser("download", help="download and verify the two archives")
    _common(p), _data(p)
    p = sub.add_parser("prepare", help="download → verify → extract → validate → split → TFRecords")
    _common(p), _data(p)
    p = sub.add_parser("train", help="train a model on a prepared dataset (the latest, or --dataset KEY)")
    _common(p), _train(p)
    p = sub.add_parser("evaluate", help="score saved model(s) on a prepared split or on any --source")
    _common(p), _data(p, "--split-mode"), _eval(p, "--split"), _models(p)
    p.add_argument("--dataset", help="dataset key under WORK/datasets (default: the latest)")
    p.add_argument("--out", help="where to write the metrics JSON")
    p = sub.add_parser("gallery", help="render a prediction gallery (seeded sample + worst-K)")
    _common(p), _data(p, "--split-mode"), _eval(p, "--split"), _models(p)
    p.add_argument("--dataset", help="dataset key under WORK/datasets (default: the latest)")
    p.add_argument("--out", help="gallery directory (default: beside the first model)")
    p = sub.add_parser("predict", help="write trimap masks (1 pet, 2 background, 3 border) and overlays")
    _common(p), _models(p, "a saved .keras model (repeat for an ensemble), or one exported model: a SavedModel "
                           "directory (e.g. WORK/models/serving/pets/N), a .tflite or an .onnx file")
    p.add_argument("paths", nargs="+", type=Path, help="image files or directories")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output directory (default ./predictions)")
    p.add_argument("--batch-size", dest="eval_batch_size", type=int, metavar="N",
                   help="images per model call (eval.batch_size; default: the preset's)")
    _tta(p)
    _export_command(sub)


def _export_command(sub: Any) -> None:
    """`segpipe export`: SavedModel, LiteRT and ONNX, each checked for parity in a fresh process."""
    p = sub.add_parser("export", help="export saved model(s) to SavedModel (TF Serving), LiteRT and ONNX, "
                                      "each parity-checked against the Keras model")
    _common(p), _models(p, "a saved .keras model; repeat to export an ensemble as one artifact")
    p.add_argument("--format", dest="export_formats", default="saved_model,litert,onnx",
                   help="comma-separated formats: saved_model, litert, onnx (default: all three)")
    p.add_argument("--out", type=Path, help="output directory (default: export/ beside the first model)")
    p.add_argument("--dataset", help="dataset key under WORK/datasets for the parity check "
                                     "(default: the model's own, from its run's lineage; else the latest)")
    p.add_argument("--split", dest="eval_split", choices=["train", "val", "test"],
                   help="the split parity is measured on (topped up with val below 30 images)")
    _tta(p)


def _pipeline_commands(sub: Any) -> None:
    """The whole pipeline (run, retrain, serve), and the commands that run nothing (config, datasets)."""
    p = sub.add_parser("run", help="the full pipeline: prepare → train → evaluate → gallery")
    _common(p), _data(p), _train(p), _eval(p)
    p = sub.add_parser("retrain", help="the full pipeline, then promote the model only if it beats the champion")
    _common(p), _data(p), _train(p), _eval(p)
    p.add_argument("--min-mean-iou", type=float, help="promotion floor")
    p = sub.add_parser("serve", help="serve pets-pipeline and scheduled-retrain from this process (no worker)")
    _common(p), _data(p), _train(p), _eval(p)
    p.add_argument("--cron", default="0 3 * * 1", help="retrain schedule (default: Mondays 03:00)")
    p.add_argument("--timezone", default="Europe/London")
    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    _common(p), _data(p), _train(p), _eval(p)
    p = sub.add_parser("datasets", help="list prepared datasets under WORK")
    _debug_flag(p)
    p.add_argument("--work-dir")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    _runs_command(sub)
    p = sub.add_parser("server", help="the local Prefect server that commands start once and reuse: start, status, stop")
    _debug_flag(p)
    p.add_argument("action", choices=["start", "status", "stop"],
                   help="start it (if not running), say whether it runs and where, or stop it")


def _runs_command(sub: Any) -> None:
    """`segpipe runs` (a table of the runs under WORK) and `segpipe runs show RUN` (one run in full)."""
    p = sub.add_parser("runs", help="list the training runs under WORK (`runs show RUN`: one run in full)")
    _debug_flag(p)
    p.add_argument("--work-dir", help=f"work directory (default: ${ENV_WORK_DIR} or ./segpipe-work)")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    runs = p.add_subparsers(dest="runs_action", metavar="show RUN")
    show = runs.add_parser("show", help="one run's configuration, lineage and metrics")
    show.add_argument("run_id", metavar="RUN", help="a run id (or its unique beginning), as `segpipe runs` lists it")
    _debug_flag(show)
    show.add_argument("--work-dir", default=argparse.SUPPRESS, help="work directory")
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
