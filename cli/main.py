"""The `segpipe` command line: run the whole pipeline or any single stage locally.

Every command builds one validated `PipelineConfig` (preset + flags) *before*
importing Prefect or TensorFlow, so a bad flag fails in milliseconds with a
message naming the field.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from segpipe.config import PRESETS, ConfigError, PipelineConfig, build_config
from segpipe.layout import ENV_WORK_DIR, WorkDir

# flag -> dotted config field
DATA_FLAGS = {
    "source": "data.source", "split": "data.split", "val_fraction": "data.val_fraction",
    "test_fraction": "data.test_fraction", "seed": "data.seed", "shard_size_mb": "data.shard_size_mb",
    "workers": "data.workers", "download_timeout": "data.download_timeout_s", "holdout_breeds": "data.holdout_breeds",
}
TRAIN_FLAGS = {
    "model": "model.name", "base_filters": "model.base_filters", "depth": "model.depth",
    "encoder": "model.encoder", "backbone": "model.encoder", "encoder_weights": "model.encoder_weights",
    "budget_images": "train.budget_images", "freeze_encoder_images": "train.freeze_encoder_images",
    "encoder_lr_multiplier": "train.encoder_lr_multiplier", "epochs": "train.epochs", "img_size": "train.img_size", "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate", "optimizer": "train.optimizer", "loss": "train.loss",
    "train_seed": "train.seed", "mixed_precision": "train.mixed_precision", "jit_compile": "train.jit_compile",
    "augment": "train.augment", "steps_per_epoch": "train.steps_per_epoch", "ema_momentum": "train.ema_momentum",
}
EVAL_FLAGS = {
    "eval_split": "eval.split", "eval_batch_size": "eval.batch_size",
    "gallery_samples": "eval.gallery_samples", "gallery_worst": "eval.gallery_worst",
    "min_mean_iou": "promotion.min_mean_iou", "tta_flip": "eval.tta_flip",
}


DEFAULT_PRESET = "cpu-quick"


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


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


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", dest="model_paths", action="append", required=True, type=Path, metavar="PATH",
                   help="a saved .keras model; repeat for an ensemble (softmax outputs averaged)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe", description="Oxford-IIIT Pet segmentation pipeline (Keras 3 + Prefect 3)."
    )
    _debug_flag(parser, sub=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    _common(p), _models(p)
    p.add_argument("paths", nargs="+", type=Path, help="image files or directories")
    p.add_argument("--out", type=Path, default=Path("predictions"), help="output directory (default ./predictions)")
    p.add_argument("--batch-size", type=int, default=8)
    _tta(p)
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
    # --preset wins over --config/--set; with neither, the default recipe (what `make run` runs)
    preset = getattr(args, "preset", None) or overrides.pop("preset", None) or DEFAULT_PRESET
    overrides.pop("preset", None)
    cfg = build_config(preset, overrides)
    if args.command in SOURCE_COMMANDS or (args.command in ("evaluate", "gallery") and _source_given(args)):
        _check_source(cfg.data.source)
    return cfg


SOURCE_COMMANDS = {"download", "prepare", "run", "retrain", "serve"}


def _check_source(source: str) -> None:
    """A missing directory or a malformed URL fails here, before Prefect starts or WORK is touched."""
    from segpipe.data.download import SourceError, resolve_source

    try:
        resolve_source(source)
    except SourceError as exc:
        raise CliError(f"data.source (--source): {exc}") from None


# Commands whose flows run TensorFlow in this process (shards, training, inference).
TENSORFLOW_COMMANDS = {"prepare", "train", "evaluate", "gallery", "predict", "run", "retrain"}


def _prepare_runtime(args: argparse.Namespace, *, in_process: bool = True) -> Path:
    """Set Prefect up for WORK and start its ephemeral server out of the terminal's reach (`cli.env`);
    with `in_process` (flows run here, not by a runner), for the rest of the command: no flow-run
    heartbeats on the ephemeral API (`cli.env.local_run_settings`). TensorFlow starts first, its
    native start-up noise filtered (`cli.quiet`)."""
    from cli.env import configure_prefect, ensure_prefect_home, local_run_settings, start_local_server

    try:
        ensure_prefect_home()
    except OSError as exc:
        raise CliError(str(exc)) from None
    work = WorkDir.at(args.work_dir).root
    configure_prefect(work, refresh=getattr(args, "refresh", False), result_storage=getattr(args, "result_storage", None))
    if in_process and args.command in TENSORFLOW_COMMANDS:
        from cli.quiet import tensorflow_started_quietly

        tensorflow_started_quietly(debug=debug_enabled(args))
    start_local_server()
    if not debug_enabled(args):
        from cli.quiet import one_line_tracebacks_on_the_console

        args.cleanup.enter_context(one_line_tracebacks_on_the_console())
    if in_process:
        args.run_started = args.cleanup.enter_context(local_run_settings())
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
    from flows.prepare_data import download_data_flow

    archives = download_data_flow(config=cfg, work_dir=str(work))
    for name, archive in archives.items():
        print(f"{name}: {archive.path} sha256 {archive.sha256}")
    return 0


def cmd_prepare(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.prepare_data import prepare_data_flow

    ref = prepare_data_flow(config=cfg, work_dir=str(work))
    counts = ", ".join(f"{name} {n}" for name, n in ref.num_examples.items())
    print(f"dataset {ref.dataset_key}: {counts}")
    print(f"dataset written to {ref.path}")
    print(f"validation report: {Path(ref.path) / 'validation.md'}")
    return 0


def _model_paths(args: argparse.Namespace) -> list[str]:
    missing = [str(p) for p in args.model_paths if not p.is_file()]
    if missing:
        raise CliError(f"--model: no such model file: {', '.join(missing)} (expected a saved .keras model)")
    return [str(p.resolve()) for p in args.model_paths]


def _source_given(args: argparse.Namespace) -> bool:
    return getattr(args, "source", None) is not None


def cmd_train(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.train import train_flow

    trained = train_flow(config=cfg, work_dir=str(work), dataset_key=args.dataset)
    print(f"run {trained.run_id}: best val mean IoU {trained.best_val_mean_iou} at epoch {trained.best_epoch}")
    print(f"model written to {trained.model_path}")
    print(f"run directory: {trained.run_dir}")
    return 0


def _scoring_args(args: argparse.Namespace, cfg: PipelineConfig) -> tuple[list[str], dict[str, Any], str | None]:
    """What `evaluate` and `gallery` share: model paths, the flow keywords, and `--out` made absolute."""
    models = _model_paths(args)
    work = _prepare_runtime(args)
    kwargs = {"config": cfg, "work_dir": str(work), "dataset_key": args.dataset,
              "prepare_source": _source_given(args)}
    return models, kwargs, str(Path(args.out).resolve()) if args.out else None


def cmd_evaluate(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    models, kwargs, out = _scoring_args(args, cfg)
    from flows.evaluate import evaluate_flow

    result = evaluate_flow(models, out_path=out, **kwargs)
    m = result["metrics"]
    print(f"{m['n_images']} images, split {cfg.eval.split}, at original resolution:")
    print(f"  mean IoU {m['mean_iou']:.4f}  pixel accuracy {m['pixel_accuracy']:.4f}  "
          f"foreground IoU {m['foreground_iou']:.4f}  dice {m['dice']:.4f}")
    for warning in m.get("warnings", []):
        print(f"  WARNING: {warning}")
    print(f"metrics written to {result['metrics_path']}")
    return 0


def cmd_gallery(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    models, kwargs, out = _scoring_args(args, cfg)
    from flows.evaluate import gallery_flow

    index = gallery_flow(models, out_dir=out, **kwargs)
    print(f"gallery written to {index}")
    return 0


def cmd_predict(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    models = _model_paths(args)
    _prepare_runtime(args)
    from flows.predict import predict_flow

    report = predict_flow(models, [str(p) for p in args.paths], str(args.out.resolve()), args.batch_size, cfg.eval.tta_flip)
    print(f"{len(report['written'])} masks written to {args.out} (values: 1 pet, 2 background, 3 border)")
    for failure in report["failed"]:
        print(f"  could not read {failure['input']}: {failure['error']}", file=sys.stderr)
    return 1 if report["failed"] and not report["written"] else 0


def cmd_run(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.pipeline import pipeline

    out = pipeline(config=cfg, work_dir=str(work))
    _print_pipeline(out, cfg)
    return 0


def _print_pipeline(out: Any, cfg: PipelineConfig) -> None:
    print(f"dataset:  {out.dataset.path}")
    print(f"run:      {out.trained.run_dir}")
    print(f"model:    {out.trained.model_path}")
    print(f"metrics:  {out.metrics_path} ({cfg.eval.split} mean IoU {out.metrics['mean_iou']:.4f})")
    for warning in out.metrics.get("warnings", []):
        print(f"  WARNING: {warning}")
    print(f"gallery:  {out.gallery}")


def cmd_retrain(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from flows.pipeline import retrain

    decision = retrain(config=cfg, work_dir=str(work))
    print(("PROMOTED: " if decision["promoted"] else "CHAMPION KEPT: ") + decision["reason"])
    print(f"champion: {decision['champion']}")
    return 0


def cmd_serve(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args, in_process=False)  # a runner runs the flows, heartbeats on
    os.environ[ENV_WORK_DIR] = str(work)
    from deployments.serve import serve_deployments

    print(f"serving pets-pipeline and scheduled-retrain ({args.cron}, {args.timezone}); outputs under {work}")
    serve_deployments(cfg, cron=args.cron, timezone=args.timezone)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "serve": cmd_serve,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "gallery": cmd_gallery,
    "predict": cmd_predict,
    "run": cmd_run,
    "retrain": cmd_retrain,
    "config": cmd_config,
    "datasets": cmd_datasets,
    "download": cmd_download,
    "prepare": cmd_prepare,
}


class _Interrupts:
    """How many stop signals the main thread has turned into KeyboardInterrupt (0 or 1)."""

    raised = 0


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM and Ctrl-C: ask the work in flight to stop (downloads, shard writers, validation check
    `segpipe.cancel` between chunks), then stop like Ctrl-C. Only the first signal raises: the CLI then
    records the interrupted run and stops its Prefect server, and a later signal must not break that
    (a second Ctrl-C exits at once from the watcher thread, `_exit_now`)."""
    from segpipe import cancel

    cancel.request()
    if _Interrupts.raised:
        return
    _Interrupts.raised += 1
    raise KeyboardInterrupt


def _exit_now(signum: int) -> None:
    """A second Ctrl-C: stop at once, without recording the run (called from `cancel`'s watcher thread,
    so it works even while the main thread is busy or blocked)."""
    from cli.env import server_pid

    with contextlib.suppress(Exception):
        os.write(2, b"\nsegpipe: interrupted again: stopping now, without recording the run's state "
                    b"(completed work is kept; run the same command again to resume)\n")
    pid = server_pid()
    if pid is not None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    from segpipe import cancel

    cancel.clear()
    _Interrupts.raised = 0
    previous = (
        {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    )
    try:
        # even while Prefect's SIGTERM handler is the one installed; a second Ctrl-C exits at once
        with cancel.on_signals(on_repeat=_exit_now):
            status = _run(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status == 130 and argv is None and in_main_thread:  # the `segpipe` command itself, not a caller's main([...])
        _exit_without_finalizing(status)
    return status


def _exit_without_finalizing(status: int) -> None:
    """After an interrupt, exit once the exit handlers have run, without the interpreter's finalization.

    Tearing down an interrupted TensorFlow run (its input pipeline's threads, its runtime) took
    4-7 s more on 2 busy cores after everything of ours was done. The exit handlers still run
    (Prefect's, logging's), buffered TensorBoard events are written first, and every file the
    pipeline trusts was already written atomically.
    """
    import atexit
    import gc

    tf = sys.modules.get("tensorflow")
    if tf is not None:
        with contextlib.suppress(Exception):
            for obj in gc.get_objects():
                if isinstance(obj, tf.summary.SummaryWriter):
                    with contextlib.suppress(Exception):
                        obj.flush()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _is_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C or SIGTERM, however it surfaced: KeyboardInterrupt (segpipe.cancel.Cancelled is one),
    Prefect's TerminationSignal, or anything raised after a stop was requested."""
    from segpipe import cancel

    return (isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal"
            or cancel.requested() or _Interrupts.raised > 0)


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    args.run_started = None
    debug = debug_enabled(args)
    try:
        cfg = None if args.command == "datasets" else config_from_args(args)
        with contextlib.ExitStack() as args.cleanup:
            status = COMMANDS[args.command](args, cfg)
    except (ConfigError, CliError) as exc:
        print(f"segpipe {args.command}: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # noqa: BLE001 - one clear line for the user, the traceback in the Prefect log
        if _is_interrupt(exc):
            return _interrupted(args, exc, debug)
        if debug or not isinstance(exc, Exception):
            raise
        print(f"segpipe {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.command not in ("config", "datasets"):
        print(f"done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return status


# What survives an interrupt of each stage, and how the next run picks it up.
RESUME_HINTS = {
    "download": "the download resumes from its .part file",
    "train": "training resumes from its last completed epoch",
}


def _interrupted(args: argparse.Namespace, exc: BaseException, debug: bool) -> int:
    """Record the interrupted runs as Crashed on the Prefect server, stop the server, print one line, 130."""
    import traceback

    from segpipe import cancel

    cancel.request()  # anything still running in a worker thread stops at its next check
    _Interrupts.raised = max(_Interrupts.raised, 1)  # a later signal must not interrupt this clean-up
    if debug:
        traceback.print_exception(exc)
    stages: list[str] = []
    recorded = ""
    if args.run_started is not None:
        from cli.env import record_interruption, server_pid, stop_local_server

        local = server_pid() is not None
        try:
            info = record_interruption(args.run_started)
        except Exception as err:  # noqa: BLE001 - the server is unreachable: say so, do not fail again
            if debug:
                traceback.print_exception(err)
            recorded = f"; its run state could not be recorded ({type(err).__name__})"
        else:
            stages = info.stages
            for state in sorted({state for _, _, state in info.flow_runs}):
                runs = [f"{flow} run '{name}'" for flow, name, st in info.flow_runs if st == state]
                recorded += f"; Prefect recorded {' and '.join(runs)} as {state}"
        if local:
            with contextlib.suppress(Exception):
                stop_local_server()
    what = f" during {', '.join(stages)}" if stages else ""
    resume = "; ".join(["completed stages are reused from the cache", *(RESUME_HINTS[s] for s in stages if s in RESUME_HINTS)])
    sys.stdout.flush()
    print(f"segpipe {args.command}: interrupted{what}{recorded}. Run the same command again to resume "
          f"({resume}).", file=sys.stderr, flush=True)
    return 130


if __name__ == "__main__":
    sys.exit(main())
