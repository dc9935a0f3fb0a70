"""kill -9 (SIGKILL) of real child processes mid-download, mid-extraction, mid-TFRecord-write and
mid-`segpipe prepare`; the rerun must complete, trust nothing half-written and redo little.
`kill -TERM` of `segpipe prepare`: it stops like Ctrl-C and takes its ephemeral Prefect server down
with it (a SIGKILL cannot be handled in-process: its server is left, so kill the process group).

Training killed with SIGKILL after an epoch and resumed: tests/test_training.py::test_sigkilled_run_resumes.
"""

from __future__ import annotations

import contextlib
import io
import os
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
    sha,
    sigkill,
    spawn_python,
    wait_for,
    wait_for_line,
)

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


def padded_archives(root: Path) -> dict[str, bytes]:
    """Synthetic archives whose images.tar.gz carries 3 MB of padding (a non-image file validation
    ignores), so a kill can land mid-transfer even though the download reads 1 MiB at a time."""
    from tests.synthetic import _tar_dir, make_pets_tree

    make_pets_tree(root / "tree", n_per_breed=2, include_odd=False)
    (root / "tree" / "images" / "padding.bin").write_bytes(os.urandom(3_000_000))
    out = {}
    for name in ("images", "annotations"):
        _tar_dir(root / "tree" / name, root / f"{name}.tar.gz", compress=True)
        out[f"{name}.tar.gz"] = (root / f"{name}.tar.gz").read_bytes()
    out["SHA256SUMS"] = "".join(f"{sha(d)}  {n}\n" for n, d in out.items()).encode()
    return out


def pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_cli_prepare_killed_mid_download_then_rerun_completes(tmp_path):
    from segpipe.data.tfrecords import verify_dataset

    files = padded_archives(tmp_path / "src")
    size = len(files[NAME])
    work = tmp_path / "work"
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    argv = [sys.executable, "-m", "cli.main", "prepare", "--preset", "tiny", "--work-dir", str(work)]
    with ThrottledServer(files, rate=1_000_000, chunk=16384) as srv:
        argv += ["--source", srv.url]
        log = open(tmp_path / "killed-run.log", "w")
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # its own process group, to find what it started
        try:
            wait_for(lambda: srv.sent(NAME) >= 1_800_000 or child.poll() is not None, timeout=240,
                     what="1.8 MB on the wire")
            assert child.poll() is None, (tmp_path / "killed-run.log").read_text()[-3000:]
            sigkill(child)  # the CLI process only, as `kill -9 <pid>` would
            orphans = [p for p in pids_in_group(child.pid) if p != child.pid]
        finally:
            child.kill()
            log.close()
            for pid in pids_in_group(child.pid):  # the ephemeral Prefect server it had started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        part = work / "downloads" / f"{NAME}.part"
        kept = part.stat().st_size
        assert part.read_bytes() == files[NAME][:kept] and kept >= 1_000_000

        srv.rate = None
        rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        resume = srv.gets(NAME)[-1]
    assert resume.headers.get("Range") == f"bytes={kept}-" and resume.status == 206
    lost = srv.sent(NAME) - size
    assert 0 <= lost <= 64 * 1024, f"{lost} bytes re-sent after the kill"
    dataset = Path(rerun.stdout.split("dataset written to ")[1].splitlines()[0])
    assert verify_dataset(dataset) == []
    assert leftover_temps(work) == [] and not part.exists()
    print(f"CLI kill: {kept} of {size} bytes kept, {lost} re-sent; orphaned processes after kill -9: {len(orphans)}")


def _alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_cli_prepare_stopped_with_sigterm_exits_and_stops_its_prefect_server(tmp_path):
    """`kill -TERM <pid>` of `segpipe prepare` mid-download: the CLI exits like Ctrl-C (130) within
    60 s and its ephemeral Prefect server (a uvicorn child) stops too; nothing half-written is trusted.

    The download in flight runs in a Prefect worker thread, which a signal cannot interrupt; it stops
    at its next chunk because the CLI sets `segpipe.cancel` (RELIABILITY.md, F8): the archive is left
    as a `.part` prefix to resume, well before the rest could have arrived."""
    files = padded_archives(tmp_path / "src")
    work = tmp_path / "work"
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    argv = [sys.executable, "-m", "cli.main", "prepare", "--preset", "tiny", "--work-dir", str(work)]
    with ThrottledServer(files, rate=200_000, chunk=16384) as srv:
        log_path = tmp_path / "terminated-run.log"
        with open(log_path, "w") as log:
            child = subprocess.Popen([*argv, "--source", srv.url], cwd=REPO, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        started = []
        try:
            wait_for(lambda: srv.sent(NAME) >= 500_000 or child.poll() is not None, timeout=240,
                     what="0.5 MB on the wire")
            assert child.poll() is None, log_path.read_text()[-3000:]
            started = [p for p in pids_in_group(child.pid) if p != child.pid]  # the Prefect server among them
            assert started, "the CLI should have started its ephemeral Prefect server"
            sent_at_term, t0 = srv.sent(NAME), time.monotonic()
            child.send_signal(signal.SIGTERM)  # the CLI process only, as `kill <pid>` would
            rc = child.wait(timeout=60)
            exit_s = time.monotonic() - t0
            wait_for(lambda: not any(_alive(p) for p in started), timeout=30, poll=0.2,
                     what="the Prefect server to stop after SIGTERM")
        finally:
            for pid in pids_in_group(child.pid):  # never leave anything behind, even when an assert failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child.kill()
            child.wait(timeout=30)
    out = log_path.read_text()
    assert rc == 130 and "interrupted" in out, out[-3000:]
    assert not any(_alive(p) for p in pids_in_group(child.pid))
    archive, part = work / "downloads" / NAME, work / "downloads" / f"{NAME}.part"
    # stopped mid-download (F8 fixed): a true prefix, kept for the next run to resume
    assert not archive.exists() and 0 < part.stat().st_size < len(files[NAME])
    assert part.read_bytes() == files[NAME][:part.stat().st_size]
    remaining_s = (len(files[NAME]) - sent_at_term) / 200_000
    assert exit_s < remaining_s, f"exit took {exit_s:.1f} s: the download ({remaining_s:.1f} s left) was not stopped"
    assert not list(work.glob("datasets/*/manifest.json"))  # an interrupted run leaves no complete dataset
    print(f"CLI SIGTERM: exit {rc} {exit_s:.1f} s after the signal ({sent_at_term} of {len(files[NAME])} B sent "
          f"by then, archive {'complete' if archive.exists() else 'partial'}); {len(started)} child process(es) "
          "started, all stopped")


# --------------------------------------------------------------------------- cooperative stop (F8)


@pytest.fixture
def stop_request():
    from segpipe import cancel

    cancel.clear()
    yield cancel
    cancel.clear()


def test_a_stop_request_ends_a_download_between_chunks_keeping_the_bytes(stop_request, tmp_path):
    import hashlib

    from segpipe.data.download import _write_chunks

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
        _write_chunks(chunks(), f, hashlib.sha256(), Bar(), 0)
    assert part.read_bytes() == b"a" * 10 + b"b" * 10  # kept, for the next run to resume from
    assert issubclass(stop_request.Cancelled, KeyboardInterrupt)  # never retried as a task failure


def test_a_stop_request_ends_shard_writing_and_validation_leaving_nothing(stop_request, tmp_path):
    from segpipe.data.tfrecords import write_shard
    from segpipe.data.validate import validate_dataset
    from tests.synthetic import make_pets_tree

    make_pets_tree(tmp_path / "tree", n_per_breed=2, include_odd=False)
    report = validate_dataset(tmp_path / "tree" / "images", tmp_path / "tree" / "annotations")
    assert len(report.examples) >= 4
    stop_request.request()
    with pytest.raises(stop_request.Cancelled, match="writing shard train-00000"):
        write_shard(report.examples, tmp_path / "out" / "train-00000-of-00001.tfrecord")
    assert list((tmp_path / "out").iterdir()) == []  # no shard, no temporary file
    with pytest.raises(stop_request.Cancelled, match="validating"):
        validate_dataset(tmp_path / "tree" / "images", tmp_path / "tree" / "annotations")


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
