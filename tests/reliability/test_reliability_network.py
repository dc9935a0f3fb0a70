"""Network faults against a real loopback server: cuts, 5xx, stalls, Range ignored, retries bounded.

"Bytes lost" = body bytes the server had to send twice = `bytes sent in total - file size`.
The Prefect tests run the real `download` task (its retry policy: 4 retries, transient errors
only), with the backoff delays set to 0 so they take seconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from segpipe.data.download import SourceError, TransientDownloadError, download_archive, resolve_source
from tests.faults import FaultScript, ThrottledServer, sha
from tests.httpserver import Fault, LoopbackServer

NAME = "images.tar.gz"
SIZE = 400_000
CUT = 60_000


@pytest.fixture()
def payload() -> bytes:
    return os.urandom(SIZE)


def files_with_sums(payload: bytes) -> dict[str, bytes]:
    other = b"annotations" * 100
    return {NAME: payload, "annotations.tar.gz": other,
            "SHA256SUMS": f"{sha(payload)}  {NAME}\n{sha(other)}  annotations.tar.gz\n".encode()}


# --------------------------------------------------------------------------- library level, one attempt per call


@pytest.mark.parametrize("cut", [0, 1, SIZE // 2, SIZE - 1])
def test_cut_at_any_point_resumes_with_zero_bytes_lost(payload, tmp_path, cut):
    with LoopbackServer({NAME: payload}) as srv:
        srv.faults[NAME] = Fault(cut_after=cut, times=1)
        source = resolve_source(srv.url)
        with pytest.raises(TransientDownloadError, match="--source"):
            download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), timeout=5, progress=False)
        assert (tmp_path / f"{NAME}.part").read_bytes() == payload[:cut]
        assert not (tmp_path / NAME).exists()
        result = download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), timeout=5, progress=False)
        assert result.sha256 == sha(payload) and result.resumed_from == cut
        assert srv.bytes_sent(NAME) - cut == SIZE - cut  # the resumed request sent only the tail
        assert srv.gets(NAME)[1].headers.get("Range") == (f"bytes={cut}-" if cut else None)


def test_stall_mid_body_times_out_and_keeps_every_byte_received(payload, tmp_path):
    """A connection that hangs mid-body: nothing received before the hang may be thrown away
    (the download reads what arrives rather than waiting for whole 1 MiB chunks)."""
    with ThrottledServer({NAME: payload}, stall_after=100_000, stall_s=30) as srv:
        source = resolve_source(srv.url)
        with pytest.raises(TransientDownloadError, match="timed out") as info:
            download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), timeout=0.5, progress=False)
        assert "--source" in str(info.value)
        assert (tmp_path / f"{NAME}.part").read_bytes() == payload[:100_000]
        result = download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), timeout=5, progress=False)
        assert result.resumed_from == 100_000 and result.sha256 == sha(payload)
        assert srv.sent(NAME) == SIZE  # zero bytes lost


# --------------------------------------------------------------------------- the Prefect `download` task


def run_download(srv_url: str, work: Path, storage: Path, timeout: float = 5.0, return_state: bool = False):
    """The real `download` task inside a flow, with zero backoff (same retries and retry condition)."""
    from prefect import flow
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe_app.tasks.data import download_task

    @flow(name="reliability-download")
    def fetch():
        return download_task.with_options(retry_delay_seconds=0)(srv_url, NAME, str(work), timeout)

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(storage)}):
        return fetch(return_state=return_state)


def download_task_run(flow_state, deadline_s: float = 60.0):
    """The `download` task run of that flow run, as the Prefect API recorded it: polled until it is recorded
    in a final state (task runs and states reach the API asynchronously), then as found at the deadline."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + deadline_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
            found = [r for r in runs if r.name.startswith("download")]
            if (found and all(r.state is not None and r.state.is_final() for r in found)) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    (run,) = found
    return run


def download_run_count(flow_state) -> int:
    """How many times Prefect ran the `download` task in that flow run."""
    return download_task_run(flow_state).run_count


def test_task_retries_mixed_faults_and_resumes_each_time(prefect_api, payload, tmp_path):
    """cut, 500, cut, 503 in a row: attempt 5 of 5 completes, every resume picks up at the cut."""
    with LoopbackServer(files_with_sums(payload)) as srv:
        srv.faults[NAME] = FaultScript(Fault(cut_after=CUT), Fault(status=500), Fault(cut_after=CUT),
                                       Fault(status=503))
        state = run_download(srv.url, tmp_path / "work", tmp_path / "results", return_state=True)
        archive = state.result()
        gets = srv.gets(NAME)
    assert archive.sha256 == sha(payload) == archive.expected_sha256
    assert Path(archive.path).read_bytes() == payload
    assert [g.status for g in gets] == [200, 500, 206, 503, 206]
    assert [g.headers.get("Range") for g in gets] == [None, f"bytes={CUT}-", f"bytes={CUT}-",
                                                      f"bytes={2 * CUT}-", f"bytes={2 * CUT}-"]
    assert srv.bytes_sent(NAME) - len(b"500 Internal Server Error\n503 Service Unavailable\n") == SIZE
    assert download_run_count(state) == 5  # 1 run + 4 retries, all by Prefect


def test_task_gives_up_after_five_attempts_with_a_clear_error_then_a_rerun_resumes(prefect_api, payload, tmp_path):
    work, storage = tmp_path / "work", tmp_path / "results"
    with LoopbackServer(files_with_sums(payload)) as srv:
        srv.faults[NAME] = FaultScript(Fault(cut_after=CUT), *[Fault(status=503)] * 10)
        with pytest.raises(TransientDownloadError) as info:
            run_download(srv.url, work, storage)
        assert len(srv.gets(NAME)) == 5  # bounded: 1 + 4 retries
        msg = str(info.value)
        assert "503" in msg and NAME in msg and "--source" in msg
        assert (work / "downloads" / f"{NAME}.part").stat().st_size == CUT  # kept for the next run

        srv.faults.clear()  # the server recovers; the next run resumes the .part
        archive = run_download(srv.url, work, storage)
        last = srv.gets(NAME)[-1]
    assert last.headers.get("Range") == f"bytes={CUT}-" and last.status == 206
    assert archive.sha256 == sha(payload) and not (work / "downloads" / f"{NAME}.part").exists()


def test_task_does_not_retry_a_404(prefect_api, payload, tmp_path):
    with LoopbackServer(files_with_sums(payload)) as srv:
        srv.faults[NAME] = Fault(status=404)
        with pytest.raises(SourceError, match="404"):
            run_download(srv.url, tmp_path / "work", tmp_path / "results")
        assert len(srv.gets(NAME)) == 1


def test_task_stall_then_resume(prefect_api, payload, tmp_path):
    with ThrottledServer(files_with_sums(payload), stall_after=150_000, stall_s=30) as srv:
        archive = run_download(srv.url, tmp_path / "work", tmp_path / "results", timeout=1.0)
        gets = srv.gets(NAME)
        sent = srv.sent(NAME)
    assert archive.sha256 == sha(payload)
    assert [g.headers.get("Range") for g in gets] == [None, "bytes=150000-"]
    assert sent == SIZE  # zero bytes lost


def test_task_with_a_server_that_ignores_range_restarts_cleanly(prefect_api, payload, tmp_path):
    with LoopbackServer(files_with_sums(payload)) as srv:
        srv.faults[NAME] = FaultScript(Fault(cut_after=CUT), Fault(ignore_range=True))
        archive = run_download(srv.url, tmp_path / "work", tmp_path / "results")
        gets = srv.gets(NAME)
        sent = srv.bytes_sent(NAME)
    assert archive.sha256 == sha(payload) and Path(archive.path).read_bytes() == payload
    assert [(g.headers.get("Range"), g.status) for g in gets] == [(None, 200), (f"bytes={CUT}-", 200)]
    assert sent == SIZE + CUT  # the server made us fetch the first CUT bytes again: nothing spliced


def wait_state(task_run, timeout: float = 20.0) -> str:
    """The task run's final state name (task-run states reach the API asynchronously)."""
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_task_run(task_run.id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run.state_name
            time.sleep(0.2)


class _Records(logging.Handler):
    """Keeps every record logged under the `prefect` logger (task runs and segpipe.tasks included)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_task_when_sha256sums_answers_503(prefect_api, payload, tmp_path):
    """The cache key cannot be computed while SHA256SUMS answers 503: a warning (no ERROR with a traceback)
    and that attempt runs uncached; the task's own retry completes the download, and as its key could be
    computed by then (Prefect computes it per attempt), the result is cached: the next run is `Cached`."""
    import prefect.main  # noqa: F401 - Prefect configures its loggers on import: attach the handler after

    from tests.prefect_states import task_states_since

    records, prefect_logger = _Records(), logging.getLogger("prefect")
    prefect_logger.addHandler(records)
    work, results = tmp_path / "work", tmp_path / "results"
    try:
        with LoopbackServer(files_with_sums(payload)) as srv:
            srv.faults["SHA256SUMS"] = Fault(status=503, times=2)
            state = run_download(srv.url, work, results, return_state=True)
            archive = state.result()
            sums_gets = srv.gets("SHA256SUMS")
            first = download_task_run(state)
            # the same download again: the retry could compute the key (SHA256SUMS answered by then), so the
            # completed result was cached after all, and this run is served from it
            rerun = download_task_run(run_download(srv.url, work, results, return_state=True))
            gets_after_rerun = len(srv.gets(NAME))
    finally:
        prefect_logger.removeHandler(records)
    assert archive.sha256 == sha(payload) == archive.expected_sha256
    assert [g.status for g in sums_gets][:2] == [503, 503]
    messages = [(r.levelno, r.getMessage()) for r in records.records]
    assert any(level == logging.WARNING and "cannot fingerprint the source" in m and "503" in m
               for level, m in messages), messages
    assert not [m for level, m in messages if "computing cache key" in m or level >= logging.ERROR]
    assert first.run_count == 2 and wait_state(first) == "Completed"  # the uncached attempt, then the retry
    assert wait_state(rerun) == "Cached" and gets_after_rerun == 1  # the archive was fetched once in all
