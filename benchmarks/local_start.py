"""Local start-up: what a command pays before and after its work, with Prefect's embedded server per command
(`SEGPIPE_PREFECT_SERVER=embedded`, the old way) against segpipe's background server reused (`cli.server`).

    .venv/bin/python benchmarks/local_start.py --out benchmarks/results/local_start.json   # a few minutes

In one run, on a tiny synthetic dataset (`tests.synthetic.make_pets_archives` into a temp dir), each command a
fresh `segpipe` process:

* `segpipe --help` and `segpipe config` (target: under `0.5` s each);
* a fully cached `segpipe prepare --preset tiny`, interleaved round by round: embedded server vs the reused
  background server (target: `3` s or less);
* `segpipe predict` of one 500x375 JPEG with a cpu-quick model (its architecture, random weights: the time
  does not depend on them) as `.keras`: loading in the model host, TensorFlow already imported there
  (`SEGPIPE_PRELOAD=host`, the default, `segpipe.model_host`; the model load is in every command); in a
  child process of the command while Prefect starts (`SEGPIPE_PRELOAD=child`); after Prefect in the
  command's own process (`SEGPIPE_PRELOAD=off`); and as the LiteRT float32 file the export writes from it
  (flip TTA inside, as the `.keras` predict runs it), interleaved the same way (target: `5` s or less).
  Before the rounds, one `.keras` predict that starts the model host (the first one after a log-in, or
  after `segpipe server stop`);
* the first command on a fresh PREFECT_HOME, both ways (the background one starts the server);
* `segpipe server status` and `segpipe server stop`.

Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import (ROOT, Machine, config_record, emit, log, median, r, run_measured,  # noqa: E402
                               segpipe_cmd)

TARGET_CACHED_PREPARE_S = 3.0
TARGET_PREDICT_S = 5.0
PREDICT_MODEL = ("cpu-quick", {})  # the cpu-quick architecture, built with random weights (the time does not
                                  # depend on them, and the benchmark needs no ImageNet download)
TARGET_CLI_S = 0.5
FINISHED = re.compile(r"\| Task run '[^']+' - Finished in state (\w+)")


def child_env(home: Path, mode: str, preload: str = "host") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SEGPIPE_SERVER_PORT")}
    env.update({"PREFECT_HOME": str(home), "SEGPIPE_PREFECT_SERVER": mode, "PYTHONPATH": str(ROOT),
                "SEGPIPE_PRELOAD": preload})
    return env


def timed(argv: list[str], home: Path, mode: str, what: str, preload: str = "host") -> dict[str, Any]:
    run = run_measured(segpipe_cmd() + argv, env=child_env(home, mode, preload), timeout=900)
    if run["returncode"] != 0:
        raise SystemExit(f"{what} failed (exit {run['returncode']}):\n{run['stderr'][-3000:]}")
    states = FINISHED.findall(run["stderr"])
    out = {"wall_s": r(run["wall_s"], 2), "cpu_s": r(run["cpu_s"], 2)}
    if states:
        out["tasks"] = len(states)
        out["tasks_cached"] = states.count("Cached")
    log(f"{what}: {run['wall_s']:.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cached prepares per mode, interleaved")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    machine = Machine()

    from tests.synthetic import make_pets_archives

    tmp = Path(tempfile.mkdtemp(prefix="segpipe-local-start-"))
    src = tmp / "pets"
    src.mkdir()
    make_pets_archives(src, n_per_breed=4, include_odd=False)
    overrides = {"data.source": str(src), "data.split": "random"}
    prepare = ["prepare", "--preset", "tiny", "--source", str(src), "--split", "random", "--work-dir", str(tmp / "work")]
    embedded, background, fresh = tmp / "home-embedded", tmp / "home-background", tmp / "home-embedded-fresh"

    try:
        result = _measure(args, prepare, embedded, background, fresh)
        result["predict_one_image_s"] = _measure_predict(args, tmp, embedded, background)
        # last, so every background command above reused the one server the first of them started
        result["server_status_s"] = timed(["server", "status"], background, "background", "segpipe server status")["wall_s"]
        result["server_stop_s"] = timed(["server", "stop"], background, "background", "segpipe server stop")["wall_s"]
    finally:
        from segpipe import model_host
        from segpipe_app.cli import server

        server.stop(background.resolve())  # after a failure too: no server left behind
        model_host.stop(server.model_host_dir(background.resolve()))
    configs = [config_record("tiny", overrides, role="prepare"),
               config_record(*PREDICT_MODEL, role="predict (the model's architecture)")]
    emit({**result, **machine.provenance(configs)}, args.out)


def _predict_inputs(tmp: Path) -> tuple[Path, Path, Path]:
    """A cpu-quick model saved as .keras, the same model as LiteRT float32 (the serving model `segpipe export`
    converts, flip TTA inside as cpu-quick sets it; written by the export's own writer, without the parity
    check: random weights give near-ties that no runtime reproduces bit for bit), and one 500x375 JPEG."""
    import numpy as np
    from PIL import Image

    from segpipe.config import build_config
    from segpipe.data import NUM_CLASSES
    from segpipe.export.formats import write_litert
    from segpipe.export.graph import serving_model
    from segpipe.models import build_model

    cfg = build_config(*PREDICT_MODEL)
    size = cfg.train.img_size
    model = build_model(cfg.model.name, (size, size, 3), NUM_CLASSES, **{**cfg.model.params(), "encoder_weights": None})
    keras_file = tmp / "model" / "model.keras"
    keras_file.parent.mkdir()
    model.save(keras_file)
    litert_dir = tmp / "litert"
    litert_dir.mkdir()
    write_litert(serving_model([model], flip=cfg.eval.tta_flip), litert_dir)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    image = np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1) + rng.normal(0, 12, (375, 500, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(tmp / "one.jpg", quality=90)
    return keras_file, litert_dir / "pets-float32.tflite", tmp / "one.jpg"


def _measure_predict(args: argparse.Namespace, tmp: Path, embedded: Path, background: Path) -> dict[str, Any]:
    keras_file, litert, image = _predict_inputs(tmp)
    work = ["--work-dir", str(tmp / "work"), "--preset", PREDICT_MODEL[0]]  # cpu-quick's flip TTA for .keras too
    variants = (("keras_embedded", keras_file, embedded, "embedded", "child"),
                ("keras_background_no_preload", keras_file, background, "background", "off"),
                ("keras_background_child", keras_file, background, "background", "child"),
                ("keras_background", keras_file, background, "background", "host"),
                ("litert_background", litert, background, "background", "host"))

    def argv(name: str, model: Path) -> list[str]:
        return ["predict", "--model", str(model), "--out", str(tmp / f"pred-{name}"), *work, str(image)]

    from segpipe import model_host
    from segpipe_app.cli.commands import HOST_IDLE_DEFAULT_S
    from segpipe_app.cli.server import model_host_dir

    model_host.stop(model_host_dir(background.resolve()))
    host_starting = timed(argv("keras_background", keras_file), background, "background",
                          "predict one image, .keras, starting the model host", preload="host")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
    for i in range(args.rounds):
        for name, model, home, mode, preload in variants:
            runs[name].append(timed(argv(name, model), home, mode, f"round {i + 1}: predict one image, {name}",
                                    preload=preload))
    medians = {name: median([x["wall_s"] for x in xs]) for name, xs in runs.items()}
    return {
        **{name: {"median": medians[name], "runs": xs} for name, xs in runs.items()},
        "keras_background_starting_the_model_host": host_starting,
        "model_host_idle_s": HOST_IDLE_DEFAULT_S,
        "keras_embedded_over_background": r(medians["keras_embedded"] / medians["keras_background"], 2),
        "keras_no_preload_over_preload": r(medians["keras_background_no_preload"] / medians["keras_background"], 2),
        "keras_child_over_host": r(medians["keras_background_child"] / medians["keras_background"], 2),
        "target": TARGET_PREDICT_S,
        "keras_background_meets_target": medians["keras_background"] <= TARGET_PREDICT_S,
        "litert_background_meets_target": medians["litert_background"] <= TARGET_PREDICT_S,
        "model": "cpu-quick architecture (deeplabv3plus on mobilenetv2, 160 px), random weights",
        "image": "one 500x375 JPEG",
    }


def _measure(args: argparse.Namespace, prepare: list[str], embedded: Path, background: Path,
             fresh: Path) -> dict[str, Any]:
    cli = {name: [timed(argv, embedded, "embedded", f"segpipe {' '.join(argv)}")["wall_s"] for _ in range(3)]
           for name, argv in (("help", ["--help"]), ("config", ["config"]))}

    uncached = timed(prepare, embedded, "embedded", "prepare, uncached (fills the task caches in WORK)")
    first_background = timed(prepare, background, "background", "prepare, cached, fresh PREFECT_HOME, background "
                                                                "(starts the server)")
    first_embedded = timed(prepare, fresh, "embedded", "prepare, cached, fresh PREFECT_HOME, embedded")
    runs: dict[str, list[dict[str, Any]]] = {"embedded": [], "background": []}
    for i in range(args.rounds):
        runs["embedded"].append(timed(prepare, embedded, "embedded", f"round {i + 1}: prepare, cached, embedded"))
        runs["background"].append(timed(prepare, background, "background",
                                        f"round {i + 1}: prepare, cached, background server reused"))

    cached = {mode: median([x["wall_s"] for x in xs]) for mode, xs in runs.items()}
    return {
        "benchmark": "local_start",
        "what": "wall seconds of fresh `segpipe` processes on a tiny synthetic dataset: a fully cached prepare "
                "and a one-image predict (cpu-quick model, .keras and LiteRT) "
                "with Prefect's embedded server started per command vs segpipe's background server reused, "
                "interleaved; the first command on a fresh PREFECT_HOME both ways; --help and config",
        "cli_s": {name: {"median": median(xs), "runs": xs, "target": TARGET_CLI_S,
                         "meets_target": median(xs) < TARGET_CLI_S} for name, xs in cli.items()},
        "prepare_cached_s": {
            "embedded": {"median": cached["embedded"], "runs": runs["embedded"]},
            "background_reused": {"median": cached["background"], "runs": runs["background"]},
            "embedded_over_background": r(cached["embedded"] / cached["background"], 2),
            "target": TARGET_CACHED_PREPARE_S,
            "background_meets_target": cached["background"] <= TARGET_CACHED_PREPARE_S,
        },
        "first_command_fresh_prefect_home_s": {"embedded": first_embedded, "background_starting_the_server":
                                               first_background},
        "prepare_uncached_embedded_s": uncached,
        "cpu_s_note": "cpu_s is the command's own CPU time and its waited-for children's: the embedded server's "
                      "is in it, the detached background server's is not",
        "rounds": args.rounds,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    main()
