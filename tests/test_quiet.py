"""What a user sees: TensorFlow's native start-up noise is filtered (real problems are not), one-line
errors unless `--debug`, Prefect's tracebacks shortened on the console only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from cli import main as cli_main
from cli.quiet import is_noise, native_stderr_filtered

# Lines TensorFlow 2.21 printed on this project's CPU machines, on every command, before the fix.
SEEN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796065292.403471    5395 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To "
    "turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796065292.403940    5395 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796065292.513626    5395 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
]
CUINIT = ("E0000 00:00:1796065294.316464    5395 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
REAL = [
    "E0000 00:00:1796065294.316464    5395 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:1119 : "
    "RESOURCE_EXHAUSTED: OOM when allocating tensor",
    "W0000 00:00:1796065294.316464    5395 port.cc:200] something else entirely",
    "Traceback (most recent call last):",
    "segpipe run failed: ValueError: dataset abc has no training examples",
]


def test_known_startup_lines_are_noise_and_nothing_else_is():
    assert [line for line in SEEN if not is_noise(line)] == []
    assert is_noise(CUINIT, driver_loaded=False)  # no NVIDIA driver: the GPU was never an option
    assert not is_noise(CUINIT, driver_loaded=True)  # with a driver, "GPU will not be used" is a real problem
    assert [line for line in REAL if is_noise(line)] == []


def test_the_filter_drops_noise_written_by_native_code_and_keeps_the_rest(capfd):
    with native_stderr_filtered():
        os.write(2, ("\n".join([*SEEN, REAL[0], "a plain line"]) + "\n").encode())  # fd 2, as C++ writes
        print("python's own stderr", file=sys.stderr)
    err = capfd.readouterr().err.splitlines()
    assert [line for line in err if line != "python's own stderr"] == [REAL[0], "a plain line"]
    assert "python's own stderr" in err


QUIET_IMPORT = """
    from cli.quiet import tensorflow_started_quietly
    tensorflow_started_quietly(debug={debug})
    import os
    os.write(2, b"after the import\\n")
"""


ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a user's shell


@pytest.fixture(scope="module")
def plain_start():
    """TensorFlow started without the filter: the noise a user saw."""
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
                           capture_output=True, text=True, env={**ENV, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    noise = [line for line in plain.stderr.splitlines() if is_noise(line)]
    assert noise, f"TensorFlow printed no start-up noise here, so this test proves nothing:\n{plain.stderr}"
    return noise


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True])
def test_tensorflow_starts_without_its_noise_unless_debug(debug, plain_start):
    env = ENV
    quiet = subprocess.run([sys.executable, "-c", textwrap.dedent(QUIET_IMPORT.format(debug=debug))],
                           capture_output=True, text=True, env=env, timeout=120, cwd=cli_main.__file__.rsplit("/cli/", 1)[0])
    assert quiet.returncode == 0, quiet.stderr
    kept = quiet.stderr.splitlines()
    if debug:
        assert [line for line in kept if is_noise(line)], quiet.stderr  # --debug shows everything
    else:
        assert kept == ["after the import"], quiet.stderr


def test_errors_are_one_line_unless_debug(monkeypatch, capsys):
    def boom(args, cfg):
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(cli_main.COMMANDS, "datasets", boom)
    monkeypatch.delenv("SEGPIPE_DEBUG", raising=False)
    assert cli_main.main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert err == "segpipe datasets failed: RuntimeError: disk on fire\n"
    for argv in (["--debug", "datasets"], ["datasets", "--debug"]):
        with pytest.raises(RuntimeError, match="disk on fire"):
            cli_main.main(argv)
    monkeypatch.setenv("SEGPIPE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli_main.main(["datasets"])
    monkeypatch.setenv("SEGPIPE_DEBUG", "0")
    assert cli_main.main(["datasets"]) == 1


def test_prefect_tracebacks_are_one_line_on_the_console_only():
    from prefect.logging.handlers import PrefectConsoleHandler

    from cli.quiet import one_line_tracebacks_on_the_console

    with one_line_tracebacks_on_the_console():
        (console,) = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
        try:
            raise ValueError("dataset abc has no training examples")
        except ValueError:
            record = logging.getLogger("segpipe.test").makeRecord(
                "segpipe.test", logging.ERROR, __file__, 1, "training failed", (), sys.exc_info())
        other = logging.Formatter()  # another handler (Prefect's API handler) formats the same record
        full = other.format(record)
        shown = console.format(record)
        assert "Traceback (most recent call last)" in full
        assert "Traceback" not in shown and shown.endswith("training failed\nValueError: dataset abc has no training examples")
        assert "Traceback (most recent call last)" in other.format(record)  # the record itself is untouched
    assert "Traceback (most recent call last)" in console.format(record)  # restored afterwards


def test_the_licence_is_an_spdx_string():
    """A licence table (`license = { text = ... }`) made setuptools (>= 77, what the isolated build resolves)
    print a deprecation warning several times per `make install`."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(cli_main.__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
