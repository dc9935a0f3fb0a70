"""The CLI: bad input fails before any work, fast, without importing TensorFlow or Prefect."""

import json
import subprocess
import sys

import pytest

from segpipe.config import build_config
from segpipe_app.cli.main import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "segpipe_app.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_config_prints_resolved_json(capsys):
    assert main(["config", "--preset", "cpu-quick", "--epochs", "3", "--set", "data.val_fraction=0.2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["data"]["val_fraction"] == 0.2 and cfg["preset"] == "cpu-quick"


@pytest.mark.parametrize(
    "argv, field",
    [
        (["prepare", "--val-fraction", "0"], "data.val_fraction"),
        (["prepare", "--seed", "-1"], "data.seed"),
        (["config", "--epochs", "-2"], "train.epochs"),
        (["config", "--model", "nope"], "model.name"),
        (["config", "--set", "train.img_size=30"], "train.img_size"),
        (["config", "--ema-momentum", "1.5"], "train.ema_momentum"),
        (["config", "--set", "train.mixed_precision=float8"], "train.mixed_precision"),
        (["predict", "--model", "m.keras", "img", "--batch-size", "0"], "eval.batch_size"),
    ],
)
def test_bad_parameters_exit_2_naming_the_field(argv, field, capsys, tmp_path):
    assert main([*argv, "--work-dir", str(tmp_path)]) == 2
    assert field in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may be written before validation passes"


def test_predict_with_no_input_that_exists_fails_before_any_work(tmp_path, capsys):
    """Every input missing (a typo) is exit 2 naming them, before the model host, Prefect or the output directory;
    one missing among others stays a per-input failure in the report (tests/evaluation/test_predict.py)."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"stand-in: never loaded, the inputs are checked first")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(tmp_path / "nope"), str(tmp_path / "nope.jpg"),
                 "--out", str(out), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"none of the inputs exists: {tmp_path / 'nope'}, {tmp_path / 'nope.jpg'}" in err
    assert "expected image files or directories" in err
    assert not out.exists() and not (tmp_path / "w").exists()


def test_predict_batch_size_is_the_eval_batch_size():
    """`segpipe predict --batch-size` sets eval.batch_size (what the predict flow takes), not the training batch."""
    from segpipe_app.cli.options import config_from_args
    from segpipe_app.cli.parser import build_parser

    args = build_parser().parse_args(["predict", "--model", "m.keras", "img", "--batch-size", "3"])
    cfg = config_from_args(args)
    assert (cfg.eval.batch_size, cfg.train.batch_size) == (3, build_config("cpu-quick").train.batch_size)


def test_predict_refuses_tta_flags_an_exported_model_does_not_hold(tmp_path, capsys):
    """An exported model runs the TTA it was exported with: asking predict for another is exit 2, naming the
    flag and what the export holds; asking for what it holds is fine."""
    from segpipe_app.cli.commands import _check_export_tta
    from segpipe_app.cli.parser import build_parser

    model = tmp_path / "pets.onnx"
    model.write_bytes(b"stand-in: only the manifest beside it is read before the run")
    (tmp_path / "export.json").write_text(json.dumps({"contract": {"tta_flip": True, "tta_sizes": [224]}}))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(tmp_path), "--out", str(out), "--no-tta-flip",
                 "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "--tta-flip" in err and "exported model" in err and "flip TTA on, sizes 224" in err
    assert main(["predict", "--model", str(model), str(tmp_path), "--out", str(out), "--tta-sizes", "none",
                 "--work-dir", str(tmp_path / "w")]) == 2
    assert "--tta-sizes" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "w").exists()
    parse = build_parser().parse_args
    _check_export_tta(parse(["predict", "--model", str(model), "x", "--tta-flip", "--tta-sizes", "224"]))
    _check_export_tta(parse(["predict", "--model", str(model), "x"]))
    _check_export_tta(parse(["predict", "--model", str(tmp_path / "m.keras"), "x", "--no-tta-flip"]))


def test_precision_ema_and_tta_flags(capsys):
    argv = ["config", "--preset", "cpu-quick", "--mixed-precision", "off", "--ema-momentum", "0.9", "--no-tta-flip"]
    assert main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["train"]["mixed_precision"], cfg["train"]["ema_momentum"], cfg["eval"]["tta_flip"]) == ("off", 0.9, False)
    assert main(["config", "--mixed-precision", "bfloat16", "--tta-flip"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["train"]["mixed_precision"], cfg["eval"]["tta_flip"]) == ("bfloat16", True)


def test_tta_sizes_flag(capsys):
    assert main(["config", "--preset", "cpu-quick", "--tta-sizes", "288,128"]) == 0
    assert json.loads(capsys.readouterr().out)["eval"]["tta_sizes"] == [288, 128]
    assert main(["config", "--preset", "cpu-quick", "--tta-sizes", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["eval"]["tta_sizes"] == []
    with pytest.raises(SystemExit) as exit_:
        main(["config", "--tta-sizes", "big"])
    assert exit_.value.code == 2 and "expected input sizes in pixels" in capsys.readouterr().err
    assert main(["config", "--preset", "cpu-quick", "--tta-sizes", "200"]) == 2
    assert "eval.tta_sizes" in capsys.readouterr().err


def test_set_needs_field_equals_value(capsys):
    assert main(["config", "--set", "nonsense"]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err


def test_config_file(tmp_path, capsys):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"epochs": 5}}))
    assert main(["config", "--config", str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 5
    assert main(["config", "--config", str(tmp_path / "missing.json")]) == 2


def test_bad_flag_fails_without_heavy_imports():
    code = (
        "import sys; from segpipe_app.cli.main import main; rc = main(['prepare', '--val-fraction', '2']);"
        "assert 'tensorflow' not in sys.modules and 'prefect' not in sys.modules, sorted(sys.modules);"
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "data.val_fraction" in proc.stderr


def test_datasets_lists_nothing_in_empty_work(tmp_path, capsys):
    assert main(["datasets", "--work-dir", str(tmp_path)]) == 0
    assert "no prepared dataset" in capsys.readouterr().out


def test_prefect_home_is_created_with_its_parents_or_named_in_the_error(tmp_path, monkeypatch, capsys):
    """Prefect creates PREFECT_HOME but not its parents; without them its server fails after a 90 s time-out."""
    from segpipe_app.cli.env import ensure_prefect_home

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "a" / "b" / "home"))
    assert ensure_prefect_home() == tmp_path / "a" / "b" / "home" and (tmp_path / "a" / "b" / "home").is_dir()

    (tmp_path / "file").write_text("")
    for name in ("images.tar.gz", "annotations.tar.gz"):  # a source that passes its own check, which comes first
        (tmp_path / name).write_bytes(b"never read: the command stops at PREFECT_HOME")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "file" / "home"))
    rc = main(["download", "--source", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 2 and f"PREFECT_HOME={tmp_path / 'file' / 'home'}: cannot create it" in err, err


@pytest.mark.parametrize("name, value, expected", [
    ("SEGPIPE_PRELOAD", "sometimes", "expected one of host, child, off"),
    ("SEGPIPE_MODEL_HOST_IDLE_S", "soon", "expected a number of seconds above 0"),
    ("SEGPIPE_MODEL_HOST_IDLE_S", "0", "expected a number of seconds above 0"),
    ("SEGPIPE_MODEL_HOST_IDLE_S", "inf", "expected a number of seconds above 0"),
])
def test_bad_model_host_settings_fail_before_any_work(name, value, expected, tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    monkeypatch.setenv(name, value)
    assert main(["predict", "--model", str(model), "--out", str(tmp_path / "out"), "--work-dir",
                 str(tmp_path / "work"), str(model)]) == 2
    err = capsys.readouterr().err
    assert f"{name}={value!r}: {expected}" in err, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_the_segpipe_command_flushes_what_it_prints_before_it_exits(tmp_path):
    """The command ends with os._exit after the exit handlers (cli.interrupts.exit_without_finalizing):
    everything it printed still arrives, whole, through a pipe, and its exit status is kept."""
    run = run_cli("config", "--preset", "cpu-quick")
    assert run.returncode == 0 and json.loads(run.stdout)["preset"] == "cpu-quick"
    bad = run_cli("config", "--epochs", "-2")
    assert bad.returncode == 2 and "train.epochs" in bad.stderr


def test_the_private_exit_hook_the_cli_relies_on_still_exists():
    """`cli.interrupts.exit_without_finalizing` runs the exit handlers (logging's, Prefect's queue drains,
    `weakref.finalize`) through CPython's private `atexit._run_exitfuncs` before `os._exit`. It is called
    under `suppress(Exception)`: if a Python release drops it, this test says so instead of the handlers
    being skipped in silence."""
    import atexit

    assert callable(getattr(atexit, "_run_exitfuncs", None)), "atexit._run_exitfuncs is gone: see cli/interrupts.py"


def test_a_keyboard_interrupt_lost_in_a_finalizer_prints_nothing_other_errors_still_show():
    """Ctrl-C's KeyboardInterrupt raised inside a `__del__` cannot propagate; Python would print "Exception
    ignored in ..." with a traceback on the user's terminal. The command's hook drops that one (the stop was
    requested too, and the loops check it), and leaves every other unraisable error to Python's hook."""
    code = (
        "import sys\n"
        "from segpipe_app.cli.interrupts import quiet_lost_interrupts\n"
        "sys.unraisablehook = quiet_lost_interrupts\n"
        "class Lost:\n"
        "    def __del__(self): raise KeyboardInterrupt\n"
        "class Broken:\n"
        "    def __del__(self): raise ValueError('a real error')\n"
        "Lost(); Broken(); print('carried on')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "carried on\n", run.stderr
    assert "KeyboardInterrupt" not in run.stderr
    assert "Exception ignored in" in run.stderr and "ValueError: a real error" in run.stderr
