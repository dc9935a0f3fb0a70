"""kill -9 (SIGKILL) of real child processes mid-download, mid-extraction, mid-TFRecord-write and
mid-`segpipe prepare`; the rerun must complete, trust nothing half-written and redo little.
A SIGTERM to the process group of `segpipe prepare`: it stops like Ctrl-C, records the interrupted runs
and stops its ephemeral Prefect server (which runs in its own session, so the group signal misses it);
after a `kill -9` of the CLI, the kernel stops that server (it asked for a parent-death signal).
Ctrl-C typed into a real terminal: tests/cli/test_cli_interrupt.py.

Training killed with SIGKILL after an epoch and resumed: tests/training/test_training.py::test_sigkilled_run_resumes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from segpipe.data.download import download_archive, resolve_source
from segpipe.data.extract import extract_archive
from segpipe.layout import COMPLETE_MARKER, MANIFEST
from tests.faults import (
    REPO,
    ThrottledServer,
    child_env,
    leftover_temps,
    padded_archives,
    sha,
    sigkill,
    spawn_python,
    wait_for,
    wait_for_line,
)
from tests.terminal import alive, prefect_server_of, recorded_runs

NAME = "images.tar.gz"


# --------------------------------------------------------------------------- download


DOWNLOAD_CHILD = """
    import sys
    from pathlib import Path
    from segpipe.data.download import download_archive, resolve_source
    download_archive(resolve_source(sys.argv[1]), "images.tar.gz", Path(sys.argv[2]),
                     expected_sha256=sys.argv[3], timeout=30, progress=False)
    print("DONE", flush=True)
"""


def test_sigkill_mid_download_then_rerun_resumes_from_the_part(tmp_path):
    payload = os.urandom(600_000)
    dest = tmp_path / "downloads"
    with ThrottledServer({NAME: payload}, rate=300_000) as srv:
        child = spawn_python(DOWNLOAD_CHILD, srv.url, str(dest), sha(payload))
        try:
            wait_for(lambda: srv.sent(NAME) >= 250_000, timeout=60, proc=child, what="250 kB on the wire")
            sigkill(child)
        finally:
            child.kill()
        part = dest / f"{NAME}.part"
        kept = part.stat().st_size
        assert 0 < kept < len(payload)
        assert part.read_bytes() == payload[:kept]  # what is on disk is a true prefix
        assert not (dest / NAME).exists()

        srv.rate = None
        result = download_archive(resolve_source(srv.url), NAME, dest, expected_sha256=sha(payload), progress=False)
        resume = srv.gets(NAME)[-1]
    assert resume.headers["Range"] == f"bytes={kept}-" and resume.status == 206
    assert result.resumed_from == kept and result.path.read_bytes() == payload
    lost = srv.sent(NAME) - len(payload)  # bytes the server sent twice: in flight when the child died
    assert 0 <= lost <= 64 * 1024, f"{lost} bytes re-sent after the kill"


# --------------------------------------------------------------------------- extraction


EXTRACT_CHILD = """
    import sys
    from pathlib import Path
    from segpipe.data.extract import extract_archive
    extract_archive(Path(sys.argv[1]), Path(sys.argv[2]))
    print("DONE", flush=True)
"""


def many_file_archive(path: Path, n: int, size: int) -> dict[str, bytes]:
    """A gzip tar of `n` random `size`-byte files under data/; returns {member name: bytes}."""
    members = {f"data/f{i:05d}.bin": os.urandom(size) for i in range(n)}
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return members


def test_sigkill_mid_extraction_is_never_trusted_and_the_rerun_is_complete(tmp_path):
    archive = tmp_path / "big.tar.gz"
    members = many_file_archive(archive, n=4000, size=1024)
    dest = tmp_path / "extracted" / "digest"

    def partial_count() -> int:
        for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
            data = tmp / "data"
            if data.is_dir():
                return sum(1 for _ in os.scandir(data))
        return 0

    child = spawn_python(EXTRACT_CHILD, str(archive), str(dest))
    try:
        wait_for(lambda: partial_count() >= 300, timeout=60, proc=child, what="300 members extracted")
        sigkill(child)
    finally:
        child.kill()
    (tmp,) = dest.parent.glob(f".{dest.name}.tmp-*")
    assert 300 <= partial_count() < len(members), "the kill must land mid-extraction"
    assert not dest.exists() and not (tmp / COMPLETE_MARKER).exists()  # nothing looks complete

    result = extract_archive(archive, dest)
    assert not result.cached and result.members_extracted == len(members)
    assert {f"data/{p.name}": p.read_bytes() for p in (dest / "data").iterdir()} == members
    assert (dest / COMPLETE_MARKER).is_file()
    assert leftover_temps(tmp_path / "extracted") == []  # the killed run's temp dir was removed


# --------------------------------------------------------------------------- TFRecord shards


SHARDS_CHILD = """
    import sys, threading, time
    from pathlib import Path
    from segpipe.data import tfrecords
    from tests.faults import write_dataset

    real, seen, lock = tfrecords.serialize, [0], threading.Lock()

    def serialize_then_hang(example):  # the writer code is untouched; the child just stops half way
        with lock:
            seen[0] += 1
            n = seen[0]
        if n == int(sys.argv[4]):
            print("MIDWRITE", flush=True)
        if n >= int(sys.argv[4]):
            time.sleep(600)
        return real(example)

    tfrecords.serialize = serialize_then_hang
    archives = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}
    write_dataset(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), archives)
    print("DONE", flush=True)
"""


@pytest.mark.slow
def test_sigkill_mid_shard_writing_then_rerun_verifies(tmp_path):
    from segpipe.data.tfrecords import load_manifest, verify_dataset
    from tests.faults import write_dataset
    from tests.synthetic import make_pets_tree

    tree = make_pets_tree(tmp_path / "tree", n_per_breed=6)
    out = tmp_path / "work" / "datasets" / "key"
    child = spawn_python(SHARDS_CHILD, str(tree.images_dir), str(tree.annotations_dir), str(out), "7")
    try:
        wait_for_line(child, "MIDWRITE", timeout=240)
        sigkill(child)
    finally:
        child.kill()
    temps = [p for p in leftover_temps(out) if f".tmp-{child.pid}-" in p.name]
    assert temps, "the kill must land while a shard is being written"
    assert not (out / MANIFEST).exists()
    assert verify_dataset(out) and "not a complete dataset" in verify_dataset(out)[0]
    temp_bytes = sum(p.stat().st_size for p in temps)

    archives = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}
    write_dataset(tree.images_dir, tree.annotations_dir, out, archives)
    assert verify_dataset(out) == []
    manifest = load_manifest(out)
    assert manifest["num_examples"] == len(tree.valid)
    assert leftover_temps(out) == [], f"{temp_bytes} bytes of dead temporary shards left behind"


# --------------------------------------------------------------------------- the whole CLI, end to end


@pytest.mark.slow
def test_cli_prepare_killed_mid_download_then_rerun_completes(tmp_path):
    """`kill -9 <pid>` of `segpipe prepare` mid-download: the rerun resumes the `.part`, and the killed
    command's ephemeral Prefect server does not outlive it (the kernel sends it SIGTERM when the CLI
    dies: `cli.env`; before, a `uvicorn` of about 200 MB was left running for ever)."""
    from segpipe.data.tfrecords import verify_dataset

    files = padded_archives(tmp_path / "src")
    size = len(files[NAME])
    work = tmp_path / "work"
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    argv = [sys.executable, "-m", "segpipe_app.cli.main", "prepare", "--preset", "tiny", "--work-dir", str(work)]
    server = None
    with ThrottledServer(files, rate=1_000_000, chunk=16384) as srv:
        argv += ["--source", srv.url]
        log = open(tmp_path / "killed-run.log", "w")
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: srv.sent(NAME) >= 1_800_000 or child.poll() is not None, timeout=240,
                     what="1.8 MB on the wire")
            assert child.poll() is None, (tmp_path / "killed-run.log").read_text()[-3000:]
            server = prefect_server_of(child.pid)
            assert server is not None, "the CLI should have started its ephemeral Prefect server"
            sigkill(child)  # the CLI process only, as `kill -9 <pid>` would
            t0 = time.monotonic()
            wait_for(lambda: not alive(server), timeout=30, poll=0.1, what="the orphaned Prefect server to stop")
            orphan_s = time.monotonic() - t0
        finally:
            child.kill()
            log.close()
            if server is not None and alive(server):  # never leave it behind, even when an assert failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server, signal.SIGKILL)
        part = work / "downloads" / f"{NAME}.part"
        kept = part.stat().st_size
        assert part.read_bytes() == files[NAME][:kept] and kept >= 1_000_000

        srv.rate = None
        rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        resume = srv.gets(NAME)[-1]
    assert resume.headers.get("Range") == f"bytes={kept}-" and resume.status == 206
    lost = srv.sent(NAME) - size
    # only what was in flight is lost: bytes in the loopback socket buffers, not yet read when the kill
    # landed (16-32 KiB on a quiet machine, 112 KiB at a load average of 13 on 2 cores)
    assert 0 <= lost <= 256 * 1024, f"{lost} bytes re-sent after the kill"
    dataset = Path(rerun.stdout.split("dataset written to ")[1].splitlines()[0])
    assert verify_dataset(dataset) == []
    assert leftover_temps(work) == [] and not part.exists()
    print(f"CLI kill -9: {kept} of {size} bytes kept, {lost} re-sent; its Prefect server stopped "
          f"{orphan_s:.2f} s later (0 orphaned processes)")


@pytest.mark.slow
def test_cli_prepare_stopped_by_a_group_sigterm_during_a_stalled_download(tmp_path):
    """SIGTERM to the whole process group (what `timeout -s TERM`, `docker stop` or a supervisor sends) of
    `segpipe prepare` while its download hangs on a server that stopped sending: the CLI exits 130 in
    seconds with one line naming the stage, the interrupted runs are Crashed in the Prefect database,
    its Prefect server stops, and every byte received is kept in the `.part` to resume.

    Before: the group signal killed the Prefect server at once, so the CLI could record nothing (the run
    stayed "Running"), and the download's blocked read held the exit until its 60 s timeout even after
    F8 (a stop request is seen between chunks; this read never returned one)."""
    files = padded_archives(tmp_path / "src")
    work = tmp_path / "work"
    home = tmp_path / "prefect-home"
    env = child_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    argv = [sys.executable, "-m", "segpipe_app.cli.main", "prepare", "--preset", "tiny", "--work-dir", str(work)]
    stall_at = 600_000
    with ThrottledServer(files, rate=400_000, chunk=16384, stall_after=stall_at, stall_s=120) as srv:
        log_path = tmp_path / "terminated-run.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen([*argv, "--source", srv.url], cwd=REPO, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # a group, as `timeout` makes
        server = None
        try:
            wait_for(lambda: srv.sent(NAME) >= stall_at or child.poll() is not None, timeout=240,
                     what="the download to stall")
            time.sleep(1.0)  # the read is now blocked on a silent connection
            assert child.poll() is None and srv.sent(NAME) == stall_at, log_path.read_text()[-3000:]
            server = prefect_server_of(child.pid)
            assert server is not None, "the CLI should have started its ephemeral Prefect server"
            t0 = time.monotonic()
            os.killpg(child.pid, signal.SIGTERM)  # the whole group
            rc = child.wait(timeout=90)
            exit_s = time.monotonic() - t0
            wait_for(lambda: not alive(server), timeout=30, poll=0.1, what="the Prefect server to stop")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            if server is not None and alive(server):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server, signal.SIGKILL)
            child.kill()
            child.wait(timeout=30)
    out = log_path.read_text()
    assert rc == 130, out[-3000:]
    # Before the download's read timeout (60 s) could have ended the blocked read: the signal ended it.
    assert exit_s < 60, f"exit took {exit_s:.1f} s after SIGTERM: as long as the read timeout"
    (line,) = [line for line in out.splitlines() if line.startswith("segpipe prepare: interrupted")]
    assert re.match(r"segpipe prepare: interrupted during download; Prefect recorded prepare-data run '[\w-]+' "
                    r"and download-data run '[\w-]+' as Crashed\. Run the same command again to resume", line), line
    assert "the download resumes from its .part file" in line and "Traceback" not in out, out[-3000:]
    runs = recorded_runs(home)
    assert ("prepare-data", "Crashed") in runs["flows"] and ("download", "Crashed") in runs["tasks"], runs
    assert not [r for r in runs["flows"] + runs["tasks"] if r[1] in ("Running", "Pending")], runs
    archive, part = work / "downloads" / NAME, work / "downloads" / f"{NAME}.part"
    assert not archive.exists() and part.read_bytes() == files[NAME][:stall_at]  # every byte received, kept
    assert not list(work.glob("datasets/*/manifest.json"))  # an interrupted run leaves no complete dataset
    print(f"CLI group SIGTERM on a stalled download: exit {rc} {exit_s:.2f} s after the signal, runs Crashed, "
          f"{stall_at} of {len(files[NAME])} B kept (0 lost), Prefect server stopped")


# --------------------------------------------------------------------------- cooperative stop (F8)


@pytest.fixture
def stop_request():
    from segpipe import cancel

    cancel.clear()
    yield cancel
    cancel.clear()


def test_a_stop_request_ends_a_download_between_chunks_keeping_the_bytes(stop_request, tmp_path):
    import hashlib

    from segpipe.data.fetch import write_chunks

    class Bar:
        def update(self, done, force=False):
            pass

    def chunks():
        yield b"a" * 10
        yield b"b" * 10
        stop_request.request()  # e.g. SIGTERM arrives while the third chunk is on the wire
        yield b"c" * 10
        raise AssertionError("the download went on after the stop request")

    part = tmp_path / "images.tar.gz.part"
    with open(part, "wb") as f, pytest.raises(stop_request.Cancelled, match="images.tar.gz.part"):
        write_chunks(chunks(), f, hashlib.sha256(), Bar(), 0)
    assert part.read_bytes() == b"a" * 10 + b"b" * 10  # kept, for the next run to resume from
    assert issubclass(stop_request.Cancelled, KeyboardInterrupt)  # never retried as a task failure


def test_a_stop_request_ends_a_download_stalled_mid_body_at_once(stop_request, tmp_path):
    """A server that stops sending mid-body leaves the download blocked in a read that returns no chunk,
    so a check between chunks never runs: the stop request shuts the socket down instead. Before, the
    stop waited for the read timeout (30 s here, 60 s by default) and then surfaced as a network error
    (which the download task would have retried)."""
    import threading

    payload = os.urandom(400_000)
    outcome: dict = {}

    def fetch(url: str) -> None:
        try:
            download_archive(resolve_source(url), NAME, tmp_path, expected_sha256=sha(payload), timeout=30,
                             progress=False)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    with ThrottledServer({NAME: payload}, stall_after=150_000, stall_s=60) as srv:
        worker = threading.Thread(target=fetch, args=(srv.url,))
        worker.start()
        wait_for(lambda: srv.sent(NAME) >= 150_000, timeout=30, what="the download to stall")
        time.sleep(0.5)  # blocked in the read now
        stop_request.request()
        worker.join(timeout=20)
    assert not worker.is_alive(), "the stalled read was not interrupted"
    # Cancelled, not a network error: the stop ended the read, not its 30 s timeout.
    assert isinstance(outcome["error"], stop_request.Cancelled), repr(outcome["error"])
    assert (tmp_path / f"{NAME}.part").read_bytes() == payload[:150_000]  # every byte received is kept


def test_a_stop_request_ends_shard_writing_and_validation_leaving_nothing(stop_request, tmp_path, monkeypatch):
    """The stop is requested while the work runs (as a SIGTERM arrives mid-shard or mid-validation), not
    before it starts: the writer stops at its next example, validation at its next image."""
    from segpipe.data import tfrecords, validate
    from tests.synthetic import make_pets_tree

    make_pets_tree(tmp_path / "tree", n_per_breed=4, include_odd=False)
    images, annotations = tmp_path / "tree" / "images", tmp_path / "tree" / "annotations"
    report = validate.validate_dataset(images, annotations)
    assert len(report.examples) == 16

    serialized, real_serialize = [], tfrecords.serialize

    def serialize_then_stop(example):
        serialized.append(example.id)
        if len(serialized) == 2:
            stop_request.request()  # mid-shard: two examples in, fourteen to go
        return real_serialize(example)

    monkeypatch.setattr(tfrecords, "serialize", serialize_then_stop)
    with pytest.raises(stop_request.Cancelled, match="writing shard train-00000"):
        tfrecords.write_shard(report.examples, tmp_path / "out" / "train-00000-of-00001.tfrecord")
    assert serialized == [e.id for e in report.examples[:2]]  # stopped at the next example, not at the end
    assert list((tmp_path / "out").iterdir()) == []  # no shard, no temporary file

    stop_request.clear()
    opened, real_open = [], validate._open_image

    def open_then_stop(path, *args, **kwargs):
        if path.suffix == ".jpg":  # the image of a pair (its trimap is opened too)
            opened.append(path.name)
            if len(opened) == 3:
                stop_request.request()  # mid-validation
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(validate, "_open_image", open_then_stop)
    with pytest.raises(stop_request.Cancelled, match="validate: stopped on request"):
        validate.validate_dataset(images, annotations, workers=2)
    # at most the images already handed to the two workers are opened after the request, not all 16
    assert 3 <= len(opened) <= 5, opened


def test_a_signal_requests_the_stop_even_when_another_handler_owns_it(stop_request):
    """While a flow runs, Prefect's SIGTERM handler is installed, not the CLI's, and it only re-raises
    to ours after the task threads in flight have finished; `on_signals` sees the signal as it arrives."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # as Prefect's bridge
    try:
        with stop_request.on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(stop_request.requested, timeout=5, poll=0.01, what="the stop request")
        assert seen == [signal.SIGTERM]  # the installed handler still ran
        stop_request.clear()
        os.kill(os.getpid(), signal.SIGTERM)  # outside the context nothing is requested any more
        time.sleep(0.2)
        assert not stop_request.requested() and seen == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)
