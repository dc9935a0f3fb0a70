"""Progress with an ETA (`segpipe.progress`): throttled plain lines, the terminal bar, lines from worker
threads in the creating thread's context, every long stage reporting through it, and the CLI's routing of
the lines into the Prefect run's logs (`cli.quiet.progress_in_the_run_logs`)."""

from __future__ import annotations

import contextvars
import logging
import threading
from pathlib import Path

import pytest

from segpipe import progress as progress_module
from segpipe.progress import Progress


class Clock:
    """A clock the test moves by hand: the throttling is decided by time, not by how fast this machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=progress_module.LOGGER)
    return caplog


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == progress_module.LOGGER]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in ours(caplog)]


def test_plain_lines_every_tenth_at_most_every_five_seconds_with_an_eta(lines):
    clock = Clock()
    with Progress("evaluate", 200, bar=False, clock=clock) as p:
        for _ in range(200):
            clock.now += 1.0  # one image a second
            p.advance()
    # 10% = 20 images = 20 s > 5 s: one line per tenth; the rate so far gives the ETA
    got = messages(lines)
    assert got[0] == "evaluate: 20/200 images (10%), ETA 3 min 00 s"
    assert got[1] == "evaluate: 40/200 images (20%), ETA 2 min 40 s"
    assert got[-2] == "evaluate: 180/200 images (90%), ETA 20 s"
    assert got[-1] == "evaluate: 200 images in 3 min 20 s"
    assert len(got) == 10  # 9 progress lines (10% .. 90%; 100% is the closing line) + the closing line
    assert [r.progress["final"] for r in ours(lines)] == [False] * 9 + [True]
    assert all(r.progress_bar is False for r in ours(lines))


def test_fast_steps_are_throttled_by_time_and_a_short_stage_says_nothing(lines):
    clock = Clock()
    with Progress("validate", 1000, bar=False, clock=clock) as p:
        for _ in range(1000):
            clock.now += 0.05  # 10% in 5 s exactly: a line per 10%; then faster
            p.advance()
    assert len(messages(lines)) == 10
    lines.clear()
    clock2 = Clock()
    with Progress("validate", 1000, bar=False, clock=clock2) as p:
        for _ in range(1000):
            clock2.now += 0.001  # the whole stage in 1 s: no line at all
            p.advance()
    assert messages(lines) == []


def test_a_slow_stage_writes_a_line_at_least_every_minute(lines):
    clock = Clock()
    with Progress("predict", 1000, bar=False, clock=clock) as p:
        for _ in range(3):
            clock.now += 61.0
            p.advance()
    assert messages(lines)[:3] == [
        "predict: 1/1,000 images (0%), ETA 16 h 55 min",
        "predict: 2/1,000 images (0%), ETA 16 h 54 min",  # 61 s a image, 998 left
        "predict: 3/1,000 images (0%), ETA 16 h 53 min",
    ]


def test_a_failed_stage_writes_no_closing_line(lines):
    clock = Clock()
    with pytest.raises(RuntimeError), Progress("write-shards train", 10, bar=False, clock=clock) as p:
        clock.now += 10
        p.advance(5)
        raise RuntimeError("disk full")
    assert messages(lines) == ["write-shards train: 5/10 images (50%), ETA 10 s"]


def test_bad_total_is_refused():
    with pytest.raises(ValueError, match="non-negative integer"):
        Progress("x", -1, bar=False)


def test_lines_from_worker_threads_are_emitted_in_the_creating_threads_context(lines):
    """What lets Prefect's run logger find the task run from the shard writers' threads."""
    run = contextvars.ContextVar("run", default=None)
    seen = []

    class Capture(logging.Filter):
        def filter(self, record):
            seen.append((threading.current_thread().name, run.get()))
            return True

    logger = logging.getLogger(progress_module.LOGGER)
    capture = Capture()
    logger.addFilter(capture)
    try:
        run.set("task-run-7")
        p = Progress("write-shards train", 40, bar=False, min_interval=0)
        workers = [threading.Thread(target=lambda: [p.advance() for _ in range(10)], name=f"w{i}") for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        p.close()
    finally:
        logger.removeFilter(capture)
    assert p.done == 40
    assert seen and {value for _, value in seen} == {"task-run-7"}
    assert {name for name, _ in seen} - {"MainThread"}  # some lines came from the workers
    assert messages(lines)[-1].startswith("write-shards train: 40 images in ")


def test_bar_on_a_terminal_shared_by_stages_at_once_and_erased(capsys, lines):
    clock = Clock()
    a = Progress("write-shards train", 10, bar=True, clock=clock)
    clock.now += 1
    a.advance(4)
    bar = capsys.readouterr().err
    assert bar.startswith("\r") and "write-shards train [" in bar and "4/10 images  40%" in bar
    assert "#" * 4 in bar and bar.endswith("\x1b[K")
    b = Progress("write-shards val", 4, bar=True, clock=clock)
    clock.now += 1
    b.advance(1)
    shared = capsys.readouterr().err
    assert "write-shards train 40%" in shared and " | write-shards val 25%" in shared
    b.close()
    a.close()
    tail = capsys.readouterr().err
    assert tail.endswith("\r\x1b[K")  # nothing left on the line
    assert all(r.progress_bar for r in ours(lines) if not r.progress["final"])


@pytest.mark.slow
def test_every_long_stage_reports(tmp_path: Path, lines, monkeypatch):
    """validate, write-shards, evaluate, the gallery (prediction and tiles) and predict on tiny real data."""
    from segpipe.data.tfrecords import write_split_shards
    from segpipe.data.validate import validate_dataset
    from segpipe.evaluation.evaluate import evaluate, render_evaluation_gallery
    from tests.synthetic import make_pets_tree

    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.0)  # every stage here takes a second or two
    make_pets_tree(tmp_path / "src", n_per_breed=2, seed=0)
    report = validate_dataset(tmp_path / "src", tmp_path / "src", workers=2)
    n = report.counts["images_found"]
    assert f"validate: {n} images in " in "\n".join(messages(lines))
    lines.clear()
    out = tmp_path / "ds"
    infos = write_split_shards(report.examples, "train", out, target_shard_bytes=2**14, workers=2)
    assert len(infos) > 1  # several shard writers advanced the one split's progress
    assert messages(lines)[-1].startswith(f"write-shards train: {len(report.examples)} images in ")

    from tests.synthetic import write_tiny_dataset
    from tests.cli.test_cli_stages import constant_model

    dataset = write_tiny_dataset(tmp_path / "tiny", {"test": 6})
    model = constant_model(tmp_path / "m.keras", (0.5, 0.3, 0.2))
    lines.clear()
    result = evaluate([model], dataset, "test", batch_size=4)
    assert messages(lines)[-1].startswith("evaluate: 6 images in ")
    lines.clear()
    render_evaluation_gallery([model], dataset, "test", tmp_path / "gallery", n_sample=1, n_worst=2, seed=0,
                              per_image=result.per_image)
    got = messages(lines)
    assert any(m.startswith("gallery: 3 images in ") for m in got), got
    assert any(m.startswith("gallery tiles: 3 images in ") for m in got), got

    import numpy as np
    from PIL import Image

    from segpipe.predict import predict_paths

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")  # counts as done: the progress reaches the total
    lines.clear()
    report = predict_paths([model], [images], tmp_path / "pred", batch_size=2)
    assert len(report.written) == 5 and len(report.failed) == 1
    assert messages(lines)[-1].startswith("predict: 6 images in ")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_cli_routes_progress_lines_into_the_task_runs_logs(monkeypatch):
    """In a real flow, with the CLI's routing on: the lines, including those of worker threads, are the task
    run's log lines in the Prefect API, and a bar-shown line stays off the console."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from segpipe_app.cli.quiet import progress_in_the_run_logs

    monkeypatch.setattr(progress_module, "MIN_INTERVAL", 0.0)

    @task(name="write-shards")
    def stage() -> str:
        from prefect.runtime import task_run

        p = Progress("write-shards test", 20)
        threads = [threading.Thread(target=lambda: [p.advance() for _ in range(10)]) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        p.close()
        return task_run.id

    @flow(name="progress-routing")
    def pipeline() -> tuple[str, str]:
        from prefect.runtime import flow_run

        return flow_run.id, stage()

    with progress_in_the_run_logs():
        flow_run_id, task_run_id = pipeline()
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    ours = [log for log in logs if log.message.startswith("write-shards test: ")]
    assert ours, [log.message for log in logs]
    assert {str(log.task_run_id) for log in ours} == {task_run_id}
    assert ours[-1].message.startswith("write-shards test: 20 images in ")
    assert any("/20 images (" in log.message for log in ours)  # lines from the worker threads


def test_console_filter_skips_what_the_bar_shows_and_clears_the_bar_first(capsys):
    from segpipe_app.cli.quiet import _BarAwareConsole

    clock = Clock()
    p = Progress("evaluate", 10, bar=True, clock=clock)
    clock.now += 1
    p.advance()
    capsys.readouterr()
    console = _BarAwareConsole()
    shown = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "evaluate: 1/10", None, None)
    shown.progress_bar = True
    assert console.filter(shown) is False
    other = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "something else", None, None)
    assert console.filter(other) is True
    assert capsys.readouterr().err == "\r\x1b[K"  # the bar erased before the other line prints
    p.close()
