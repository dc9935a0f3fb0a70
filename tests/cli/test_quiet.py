"""What a user sees: TensorFlow's native noise is filtered, at start-up and for the whole command (real
problems are not, and reach the user as they come), one-line errors unless `--debug`, Prefect's
tracebacks shortened on the console only."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segpipe_app.cli import main as cli_main
from segpipe_app.cli.quiet import filter_lines, is_noise, native_stderr_filtered
from tests.faults import REPO, wait_for
from tests.terminal import Terminal

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
# Logged later, during a command (training DeepLabV3+ on a CPU), at ERROR level.
LATE = ["E0000 00:00:1796188017.846595     986 util.cc:131] oneDNN supports DT_INT32 only on platforms with "
        "AVX-512. Falling back to the default Eigen-based implementation if present.",
        # while `segpipe export` converts to LiteRT
        "E0000 00:00:1796190230.957966   10106 node_def_util.cc:682] NodeDef mentions attribute Truncate which is "
        "not in the op definition: Op<name=Identity; signature=input:T -> output:T; attr=T:type> This may be "
        "expected if your graph generating binary is newer  than this binary. Unknown attributes will be ignored. "
        "NodeDef: {{node unnamed}}"]
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
    assert [line for line in SEEN + LATE if not is_noise(line)] == []
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


def test_the_filter_loop_passes_on_all_but_noise_partial_lines_and_carriage_returns_included():
    """`filter_lines`, the filter process's loop, on a real pipe: whole noise lines dropped, everything
    else kept in order; a partial line passed on once nothing more comes, and up to a carriage return
    at once (another process's progress bar); what is left at end of file passed on."""
    source_r, source_w = os.pipe()
    sink_r, sink_w = os.pipe()
    os.write(source_w, ("\n".join([SEEN[0], REAL[0], LATE[0], "a plain line"]) + "\n").encode())
    os.write(source_w, b"50%\r60%\r7")
    os.write(source_w, b"0%")  # no newline: passed on after the idle wait
    os.close(source_w)
    filter_lines(source_r, sink_w, driver_loaded=False, idle_s=0.05)
    os.close(sink_w)
    out = b""
    while chunk := os.read(sink_r, 1 << 16):
        out += chunk
    os.close(source_r), os.close(sink_r)
    assert out.decode() == f"{REAL[0]}\na plain line\n50%\r60%\r70%"


# A real `segpipe` process (`cli.main.main()`, the console script's entry) whose `datasets` command is
# replaced by one that starts TensorFlow only now, in the middle of the command: TensorFlow's own
# native start-up lines, the cuInit error included, are late native noise, as the oneDNN line logged
# in training is. It then logs a real absl ERROR line natively (`tf.print` to the error log), says
# whether Python's stderr is a terminal, and waits for the test's go.
LATE_TENSORFLOW = """
import os, sys, time
from pathlib import Path
from segpipe_app.cli import main as cli_main

def late_tensorflow(args, cfg):
    import tensorflow as tf

    tf.config.list_physical_devices()
    tf.print("segpipe test: a native error line", output_stream=tf.compat.v1.logging.error)
    print(f"segpipe test: python's stderr is a terminal: {sys.stderr.isatty()}", file=sys.stderr)
    go = Path(os.environ["SEGPIPE_TEST_GO"])
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0

cli_main.COMMANDS["datasets"] = late_tensorflow
sys.argv = ["segpipe", "datasets", *sys.argv[1:]]
sys.exit(cli_main.main())
"""


QUIET_IMPORT = """
    from segpipe_app.cli.quiet import tensorflow_started_quietly
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


NATIVE_ERROR = re.compile(r"E\d{4} [\d:.]+\s+\d+ logging_ops\.cc:\d+\] segpipe test: a native error line", re.M)


def late_env(go: Path) -> dict[str, str]:
    env = {**ENV, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "SEGPIPE_TEST_GO": str(go)}
    env.pop("SEGPIPE_DEBUG", None)
    return env


@pytest.mark.slow
def test_native_noise_logged_late_is_filtered_and_a_real_native_error_comes_at_once(tmp_path):
    """On a terminal: TensorFlow's native lines logged in the middle of the command are filtered, the
    native error line reaches the terminal while the command still runs, and Python's stderr is still
    the terminal (the progress bars' `isatty()`)."""
    go = tmp_path / "go"
    term = Terminal([sys.executable, "-c", LATE_TENSORFLOW], late_env(go))
    try:
        wait_for(lambda: "segpipe test: a native error line" in term.output and "is a terminal" in term.output,
                 timeout=180, proc=term.proc, what="the native error line while the command runs")
        assert term.proc.poll() is None  # still waiting for `go`: the line came as it was logged
        go.touch()
        rc = term.wait(timeout=60)
    finally:
        term.close()
    text = term.drain()
    lines = text.splitlines()
    assert rc == 0, lines
    # Python's own print and the filter process write to the terminal independently, so the two lines may
    # interleave (print writes its text and its newline separately): look for each, not for whole lines
    assert "segpipe test: python's stderr is a terminal: True" in text, lines
    assert NATIVE_ERROR.search(text), lines
    assert [line for line in lines if is_noise(line)] == [], lines


@pytest.mark.slow
def test_debug_shows_the_late_native_noise(plain_start, tmp_path):
    """The same command with --debug: nothing filtered, so the noise the test above must not show was
    really logged (and this machine's TensorFlow does log it: `plain_start`)."""
    go = tmp_path / "go"
    go.touch()
    done = subprocess.run([sys.executable, "-c", LATE_TENSORFLOW, "--debug"], capture_output=True, text=True,
                          env=late_env(go), timeout=180, cwd=REPO)
    lines = done.stderr.splitlines()
    assert done.returncode == 0, done.stderr
    assert [line for line in lines if is_noise(line)], done.stderr
    assert [line for line in lines if NATIVE_ERROR.match(line)], done.stderr


LAST_WORDS = """
import os, sys
from segpipe_app.cli import main as cli_main

NOISE_LINE = sys.argv[1]

def last_words(args, cfg):
    os.write(2, NOISE_LINE.encode() + b"\\nsegpipe test: last words\\n")  # fd 2, as native code writes
    os._exit(7)  # no exit handler, no flush: as a second Ctrl-C (cli.interrupts.exit_now) or a crash

cli_main.COMMANDS["datasets"] = last_words
sys.argv = ["segpipe", "datasets"]
sys.exit(cli_main.main())
"""


def test_lines_written_just_before_os_exit_still_arrive_filtered(tmp_path):
    """The filter is a process of its own: what was written to fd 2 just before `os._exit` still arrives,
    noise dropped; and the filter does not outlive the command's stderr (the run below returns)."""
    done = subprocess.run([sys.executable, "-c", LAST_WORDS, LATE[0]], capture_output=True, text=True,
                          env={**late_env(tmp_path / "unused"), "SEGPIPE_TEST_GO": ""}, timeout=120, cwd=REPO)
    assert done.returncode == 7
    assert done.stderr == "segpipe test: last words\n"


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

    from segpipe_app.cli.quiet import one_line_tracebacks_on_the_console

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


@pytest.mark.parametrize("failure", [None, ValueError("the run failed")])
def test_a_command_sends_what_prefect_still_queues_whether_its_run_completed_or_failed(monkeypatch, failure):
    """A failed command used to exit with its events still queued: Prefect's own drain at exit then printed
    "EventsWorker - Still processing items: 3 items remaining..." under the error line. Both ends send them
    first (`_send_what_is_queued`); an interrupt is `record_interruption`'s, not this."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from segpipe_app.cli import env

    sent: list[object] = []
    monkeypatch.setattr(env, "_send_what_is_queued", lambda url, started: sent.append((url, started)))
    # no API URL, whatever an earlier test of this worker set: the embedded server's path (a user's own URL skips it)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        if failure is None:
            with env.local_run_settings() as started:
                pass
        else:
            with pytest.raises(ValueError, match="the run failed"), env.local_run_settings() as started:
                raise failure
        assert sent == [(None, started)]
        with pytest.raises(KeyboardInterrupt), env.local_run_settings():
            raise KeyboardInterrupt
    assert len(sent) == 1


def test_the_licence_is_an_spdx_string():
    """A licence table (`license = { text = ... }`) made setuptools (>= 77, what the isolated build resolves)
    print a deprecation warning several times per `make install`."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(cli_main.__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
