"""One handler per `segpipe` command (`COMMANDS`): set the runtime up, run the command's flow, print
what it wrote. Each handler gets the parsed flags and the validated config and returns the exit status."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

from segpipe_app.cli.errors import CliError
from segpipe_app.cli.options import source_given
from segpipe_app.cli.parser import debug_enabled
from segpipe.config import PipelineConfig
from segpipe.layout import ENV_WORK_DIR, WorkDir

# Commands whose flows always run TensorFlow in this process (training, inference): it loads while the
# Prefect server starts. `prepare` imports it only when it writes shards (a cached prepare never does).
# How `segpipe predict` loads .keras models (`segpipe.preload`): "host" (the default) in the model host, a
# background process that keeps TensorFlow imported between commands (`segpipe.model_host`); "child" in a
# child process of this command; "off" in this process, after Prefect.
PRELOAD_ENV = "SEGPIPE_PRELOAD"
PRELOAD_MODES = ("host", "child", "off")
HOST_IDLE_ENV = "SEGPIPE_MODEL_HOST_IDLE_S"  # the model host stops after this many seconds unused
HOST_IDLE_DEFAULT_S = 900.0
TENSORFLOW_COMMANDS = {"train", "evaluate", "gallery", "predict", "export", "run", "retrain"}


def _prepare_runtime(args: argparse.Namespace, *, in_process: bool = True, tensorflow: bool | None = None) -> Path:
    """Set Prefect up for WORK and start its ephemeral server out of the terminal's reach (`cli.env`);
    with `in_process` (flows run here, not by a runner), for the rest of the command: no flow-run
    heartbeats on the ephemeral API (`cli.env.local_run_settings`). TensorFlow starts first (for the
    commands in TENSORFLOW_COMMANDS, or as `tensorflow` says), its native start-up noise filtered (`cli.quiet`)."""
    from segpipe_app.cli.env import configure_prefect, ensure_prefect_home, local_run_settings, start_local_server

    try:
        ensure_prefect_home()
    except OSError as exc:
        raise CliError(str(exc)) from None
    work = WorkDir.at(args.work_dir).root
    configure_prefect(work, refresh=getattr(args, "refresh", False), result_storage=getattr(args, "result_storage", None))
    from segpipe_app.cli import server  # the background Prefect server (reused, or starting while TensorFlow loads)

    starting = server.for_command()
    if starting is not None:
        args.cleanup.callback(starting.close)
    if in_process and (args.command in TENSORFLOW_COMMANDS if tensorflow is None else tensorflow):
        from segpipe_app.cli.quiet import tensorflow_started_quietly

        tensorflow_started_quietly(debug=debug_enabled(args))
    if starting is not None:
        server.ready(starting)
    start_local_server()  # the embedded one, when no API URL is set (SEGPIPE_PREFECT_SERVER=embedded)
    if not debug_enabled(args):
        from segpipe_app.cli.quiet import one_line_tracebacks_on_the_console

        args.cleanup.enter_context(one_line_tracebacks_on_the_console())
    if in_process:
        from segpipe_app.cli.quiet import progress_in_the_run_logs

        args.cleanup.enter_context(progress_in_the_run_logs())  # progress with an ETA, as the epoch lines
        args.run_started = args.cleanup.enter_context(local_run_settings())
    return work


def cmd_config(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    print(cfg.model_dump_json(indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace, cfg: PipelineConfig | None) -> int:
    work = WorkDir.at(args.work_dir)
    rows = work.complete_datasets()
    from segpipe_app.cli.tables import datasets_json, datasets_table

    if args.json:
        print(datasets_json(rows))
    elif not rows:
        print(f"no prepared dataset under {work.datasets}")
    else:
        print(datasets_table(rows))
    return 0


def cmd_runs(args: argparse.Namespace, cfg: PipelineConfig | None) -> int:
    """`segpipe runs`: a table of the runs under WORK; `segpipe runs show RUN`: one run in full."""
    import json

    from segpipe_app.cli.tables import run_text, runs_table
    from segpipe.runs.index import UnknownRunError, list_runs, run_details

    work = WorkDir.at(args.work_dir)
    if args.runs_action == "show":
        try:
            details = run_details(work, args.run_id)
        except UnknownRunError as exc:
            raise CliError(str(exc)) from None
        print(json.dumps(details, indent=2) if args.json else run_text(details))
        return 0
    records = list_runs(work)
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
    elif not records:
        print(f"no run under {work.runs}")
    else:
        print(runs_table(records))
    return 0


def cmd_download(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from segpipe_app.flows.prepare_data import download_data_flow

    archives = download_data_flow(config=cfg, work_dir=str(work))
    for name, archive in archives.items():
        print(f"{name}: {archive.path} sha256 {archive.sha256}")
    return 0


def cmd_prepare(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from segpipe_app.flows.prepare_data import prepare_data_flow

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



def cmd_train(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from segpipe_app.flows.train import train_flow

    trained = train_flow(config=cfg, work_dir=str(work), dataset_key=args.dataset)
    best = "none" if trained.best_val_mean_iou is None else f"{trained.best_val_mean_iou:.4g}"
    at = "" if trained.best_epoch is None else f" at epoch {trained.best_epoch + 1}"  # 1-based, as the epoch lines
    print(f"run {trained.run_id}: best val mean IoU {best}{at}")
    print(f"model written to {trained.model_path}")
    print(f"run directory: {trained.run_dir}")
    return 0


def _scoring_args(args: argparse.Namespace, cfg: PipelineConfig) -> tuple[list[str], dict[str, Any], str | None]:
    """What `evaluate` and `gallery` share: model paths, the flow keywords, and `--out` made absolute."""
    models = _model_paths(args)
    work = _prepare_runtime(args)
    kwargs = {"config": cfg, "work_dir": str(work), "dataset_key": args.dataset,
              "prepare_source": source_given(args)}
    return models, kwargs, str(Path(args.out).resolve()) if args.out else None


def cmd_evaluate(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    models, kwargs, out = _scoring_args(args, cfg)
    from segpipe_app.flows.evaluate import evaluate_flow

    result = evaluate_flow(models, out_path=out, **kwargs)
    m = result["metrics"]
    print(f"{m['n_images']} images, split {cfg.eval.split}, at original resolution "
          f"({_tta_words(cfg.eval.tta_flip, cfg.eval.tta_sizes)}):")
    print(f"  mean IoU {m['mean_iou']:.4f}  pixel accuracy {m['pixel_accuracy']:.4f}  "
          f"foreground IoU {m['foreground_iou']:.4f}  dice {m['dice']:.4f}")
    for warning in m.get("warnings", []):
        print(f"  WARNING: {warning}")
    print(f"metrics written to {result['metrics_path']}")
    return 0


def cmd_gallery(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    models, kwargs, out = _scoring_args(args, cfg)
    from segpipe_app.flows.evaluate import gallery_flow

    index = gallery_flow(models, out_dir=out, **kwargs)
    print(f"gallery written to {index}")
    return 0


def cmd_predict(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    missing = [str(p) for p in args.model_paths if not p.exists()]
    if missing:
        raise CliError(f"--model: no such file or directory: {', '.join(missing)} "
                       "(expected a .keras model or an exported SavedModel directory, .tflite or .onnx file)")
    from segpipe.predict import require_an_input

    try:
        require_an_input(args.paths)
    except FileNotFoundError as exc:
        raise CliError(f"paths: {exc}") from None
    _check_export_tta(args)
    models = [str(p.resolve()) for p in args.model_paths]
    from segpipe.preload import can_preload, preloaded

    preload, idle_s = _preload_settings()
    if preload != "off" and can_preload(args.model_paths):
        # .keras models load in the model host or a child process while this one starts Prefect and the
        # flow run; the predict task then predicts through it (`segpipe.preload`).
        from segpipe_app.cli.server import model_host_dir

        host_dir = model_host_dir() if preload == "host" else None
        args.cleanup.enter_context(preloaded(models, cfg.eval.tta_flip, host_dir, idle_s, cfg.eval.tta_sizes))
        _prepare_runtime(args, tensorflow=False)
    else:
        from segpipe.export.exporter import runs_without_tensorflow

        # A LiteRT or ONNX export runs on its own runtime: TensorFlow is not loaded at all.
        _prepare_runtime(args, tensorflow=not all(map(runs_without_tensorflow, args.model_paths)))
    from segpipe_app.flows.predict import predict_flow

    report = predict_flow(models, [str(p) for p in args.paths], str(args.out.resolve()), cfg.eval)
    print(f"{len(report['written'])} masks written to {args.out} (values: 1 pet, 2 background, 3 border)")
    for failure in report["failed"]:
        print(f"  could not read {failure['input']}: {failure['error']}", file=sys.stderr)
    return 1 if report["failed"] and not report["written"] else 0


def _check_export_tta(args: argparse.Namespace) -> None:
    """An exported model runs the test-time augmentation it was exported with: a --tta-flip or --tta-sizes
    asking for another is refused before any work, rather than silently ignored."""
    asked = {"--tta-flip": args.tta_flip, "--tta-sizes": None if args.tta_sizes is None else sorted(args.tta_sizes)}
    if all(value is None for value in asked.values()):
        return
    from segpipe.export.exporter import exported_artifact

    for path in args.model_paths:
        try:
            record = exported_artifact(path)
        except ValueError:
            return  # not a model at all: the predict flow names the problem
        if record is None:
            continue
        held = {"--tta-flip": bool(record["tta_flip"]), "--tta-sizes": sorted(record["tta_sizes"] or [])}
        for flag, value in asked.items():
            if value is not None and value != held[flag]:
                raise CliError(
                    f"{flag}: {path} is an exported model, which runs the test-time augmentation it was exported "
                    f"with ({_tta_words(held['--tta-flip'], held['--tta-sizes'])}); drop {flag}, or export the "
                    "model again with it (segpipe export)")


def _preload_settings() -> tuple[str, float]:
    """(SEGPIPE_PRELOAD, SEGPIPE_MODEL_HOST_IDLE_S), checked."""
    mode = os.environ.get(PRELOAD_ENV, "").strip().lower() or "host"
    if mode not in PRELOAD_MODES:
        raise CliError(f"{PRELOAD_ENV}={os.environ[PRELOAD_ENV]!r}: expected one of {', '.join(PRELOAD_MODES)}")
    raw = os.environ.get(HOST_IDLE_ENV, "").strip()
    try:
        idle_s = float(raw) if raw else HOST_IDLE_DEFAULT_S
    except ValueError:
        idle_s = -1.0
    if not 0 < idle_s < float("inf"):
        raise CliError(f"{HOST_IDLE_ENV}={raw!r}: expected a number of seconds above 0")
    return mode, idle_s


def _tta_words(flip: bool, sizes: Sequence[int]) -> str:
    """"flip TTA on, sizes 224" and the like, for what a command prints."""
    return f"flip TTA {'on' if flip else 'off'}" + (f", sizes {','.join(map(str, sizes))}" if sizes else "")


def cmd_export(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    from segpipe.export.exporter import check_out_dir
    from segpipe.export.formats import check_formats

    models = _model_paths(args)
    try:
        formats = check_formats(args.export_formats)
        out = check_out_dir((args.out or Path(models[0]).parent / "export").resolve())
    except (ValueError, OSError) as exc:
        raise CliError(f"--format/--out: {exc}") from None
    work = _prepare_runtime(args)
    dataset_dir = _export_dataset(args, work, models[0])
    from segpipe_app.flows.export import export_flow

    result = export_flow(models, str(out), str(dataset_dir), cfg.eval, list(formats))
    print(f"exported to {result['out_dir']}, parity on split {cfg.eval.split} of {dataset_dir.name} "
          f"({_tta_words(cfg.eval.tta_flip, cfg.eval.tta_sizes)}):")
    for name, r in result["parity"].items():
        print(f"  {name:<15} mean IoU {r['mean_iou']:.4f} (Keras {r['reference_mean_iou']:.4f})  "
              f"{100 * r['pixel_agreement']:.3f}% pixels agree")
    return 0


def _export_dataset(args: argparse.Namespace, work: Path, model: str) -> Path:
    """The dataset the parity check runs on: --dataset, else the model's run's, else the latest."""
    from segpipe.export.exporter import source_run

    workdir = WorkDir.at(work)
    key = args.dataset or source_run(model)["lineage"].get("dataset_key")
    if key is None:
        try:
            key = workdir.latest_dataset()
        except (FileNotFoundError, ValueError) as exc:
            raise CliError(f"--dataset: the parity check needs a prepared dataset: {exc}") from None
    path = workdir.dataset(key)
    if not (path / "manifest.json").is_file():
        raise CliError(f"--dataset: no prepared dataset {key!r} under {workdir.datasets} (run `segpipe prepare`)")
    return path


def cmd_run(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args)
    from segpipe_app.flows.pipeline import pipeline

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
    from segpipe_app.flows.pipeline import retrain

    decision = retrain(config=cfg, work_dir=str(work))
    print("\n".join(decision_lines(decision)))
    return 0


def decision_lines(decision: dict[str, Any]) -> list[str]:
    """What `segpipe retrain` prints of the promote task's decision."""
    if decision["has_champion"]:
        lines = [("PROMOTED: " if decision["promoted"] else "CHAMPION KEPT: ") + decision["reason"],
                 f"champion: {decision['champion']}"]
    else:  # the first retrain, not promoted: nothing is at the champion's path
        lines = [f"NOT PROMOTED: {decision['reason']}",
                 f"champion: none yet (a promoted model is installed in {decision['champion']})"]
    if decision.get("serving_dir"):
        lines.append(f"serving:  {decision['serving_dir']} (SavedModel for TF Serving, LiteRT and ONNX, parity-checked)")
    return lines


def cmd_server(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    """`segpipe server start|status|stop`: the background Prefect server of PREFECT_HOME (`cli.server`)."""
    from segpipe_app.cli import server

    from segpipe import model_host

    home = server.prefect_home()
    host_dir = server.model_host_dir(home)
    if args.action == "stop":
        stopped = server.stop(home)
        print(f"stopped the local Prefect server ({stopped.describe()})" if stopped
              else f"no local Prefect server running for PREFECT_HOME={home}")
        if (pid := model_host.stop(host_dir)) is not None:
            print(f"stopped the model host (pid {pid})")
        return 0
    own = server.configured_api_url()
    embedded = server.mode() == "embedded"
    if own:
        print(f"PREFECT_API_URL is set ({own}): segpipe commands use that server, not a local one")
    elif embedded:
        print(f"{server.MODE_ENV}=embedded: each command starts and stops Prefect's embedded server")
    if args.action == "start":
        if own or embedded:
            return 0  # no command would use it: nothing started
        state = server.ensure(home)
    else:
        verdict = server.check(home)
        state = verdict.state if verdict.reusable else None
        if state is None:
            print(f"no local Prefect server running for PREFECT_HOME={home}"
                  + (f" ({verdict.why})" if verdict.why else ""))
            _print_model_host(host_dir)
            return 1
    print(f"local Prefect server running: {state.api_url} ({state.describe()}, PREFECT_HOME={state.prefect_home}, "
          f"since {state.started_at}; log {state.log})")
    print(f"Prefect UI: {state.api_url.removesuffix('/api')}")
    _print_model_host(host_dir)
    return 0


def _print_model_host(host_dir: Path) -> None:
    """The model host's line of `segpipe server status`, when one runs (`segpipe.model_host`)."""
    from segpipe import model_host

    if (pid := model_host.running_pid(host_dir)) is not None:
        print(f"model host running: pid {pid}, TensorFlow imported for `segpipe predict` (log "
              f"{host_dir / model_host.LOG_NAME})")


def cmd_serve(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    work = _prepare_runtime(args, in_process=False)  # a runner runs the flows, heartbeats on
    os.environ[ENV_WORK_DIR] = str(work)
    from segpipe_app.deployments.serve import serve_deployments

    print(f"serving pets-pipeline and scheduled-retrain ({args.cron}, {args.timezone}); outputs under {work}")
    serve_deployments(cfg, cron=args.cron, timezone=args.timezone)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "serve": cmd_serve,
    "server": cmd_server,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "gallery": cmd_gallery,
    "predict": cmd_predict,
    "export": cmd_export,
    "run": cmd_run,
    "retrain": cmd_retrain,
    "config": cmd_config,
    "datasets": cmd_datasets,
    "runs": cmd_runs,
    "download": cmd_download,
    "prepare": cmd_prepare,
}

