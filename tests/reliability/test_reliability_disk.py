"""Disk full (ENOSPC) while writing the download's .part, a TFRecord shard and the manifest:
a clear error, nothing half-written trusted later, and a rerun after freeing space completes.

The first three tests inject ENOSPC in-process after a byte budget; the last one fills a real
(private, tiny) tmpfs so the kernel and TensorFlow's C++ writer report it themselves.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from segpipe.data import fetch as download_mod  # the module that opens the .part
from segpipe.data.download import download_archive, is_transient, resolve_source
from tests.faults import (
    FULL_DEVICE,
    enospc_open,
    leftover_temps,
    record_writer_on_a_full_device,
    run_on_full_disk,
    sha,
    tmpfs_available,
)
from tests.httpserver import LoopbackServer
from tests.synthetic import make_pets_tree

NAME = "images.tar.gz"
ARCHIVES = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}


def test_disk_full_while_downloading_then_resume_after_freeing_space(tmp_path, monkeypatch):
    payload = os.urandom(300_000)
    with LoopbackServer({NAME: payload}) as srv:
        source = resolve_source(srv.url)
        monkeypatch.setattr(download_mod, "open", enospc_open(120_000, lambda p: p.endswith(".part")), raising=False)
        with pytest.raises(OSError) as info:
            download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), progress=False)
        err = info.value
        assert err.errno == errno.ENOSPC and not is_transient(err)  # Prefect will not retry a full disk
        assert f"{tmp_path / NAME}.part" in str(err) and "free some space" in str(err)
        assert (tmp_path / f"{NAME}.part").read_bytes() == payload[:120_000]
        assert not (tmp_path / NAME).exists()

        monkeypatch.undo()  # space freed
        result = download_archive(source, NAME, tmp_path, expected_sha256=sha(payload), progress=False)
        assert srv.gets(NAME)[-1].headers["Range"] == "bytes=120000-"
        assert result.sha256 == sha(payload) and result.resumed_from == 120_000  # nothing received is fetched again


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_pets_tree(tmp_path_factory.mktemp("tree"), n_per_breed=3, include_odd=False)


@pytest.mark.skipif(not FULL_DEVICE.exists(), reason="needs /dev/full")
def test_disk_full_while_writing_a_shard_then_rerun_verifies(tree, tmp_path, monkeypatch):
    """The real TFRecordWriter reports the full disk (on /dev/full), naming only the device; the library
    must say which shard it could not write. Before, the error was TensorFlow's own, naming the
    temporary file only (the earlier test's fake writer put the path in its message itself)."""
    import tensorflow as tf

    from segpipe.data.tfrecords import verify_dataset
    from tests.faults import write_dataset

    out = tmp_path / "dataset"
    monkeypatch.setattr(tf.io, "TFRecordWriter", record_writer_on_a_full_device())
    with pytest.raises(OSError) as info:
        write_dataset(tree.images_dir, tree.annotations_dir, out, ARCHIVES)
    err = info.value
    assert err.errno == errno.ENOSPC and isinstance(err.__cause__, tf.errors.ResourceExhaustedError)
    assert "/dev/full" in str(err.__cause__) and str(out) not in str(err.__cause__)  # TensorFlow names no shard
    assert re.fullmatch(rf"\[Errno 28\] No space left on device: could not write shard {re.escape(str(out))}/"
                        r"(train|val|test)-\d{5}-of-\d{5}\.tfrecord \(\d+ of \d+ examples written\); free some space "
                        r"and run again \(the shards already written are kept\)", str(err)), str(err)
    assert not (out / "manifest.json").exists() and leftover_temps(out) == []
    assert not list(out.glob("*.tfrecord")) and "not a complete dataset" in verify_dataset(out)[0]

    monkeypatch.undo()
    write_dataset(tree.images_dir, tree.annotations_dir, out, ARCHIVES)
    assert verify_dataset(out) == []
    assert json.loads((out / "manifest.json").read_text())["num_examples"] == len(tree.valid)


def test_disk_full_while_writing_the_manifest_then_rerun_verifies(tree, tmp_path, monkeypatch):
    import segpipe.fsutil
    from segpipe.data.tfrecords import verify_dataset
    from tests.faults import write_dataset

    out = tmp_path / "dataset"
    monkeypatch.setattr(segpipe.fsutil, "open", enospc_open(100, lambda p: "manifest.json" in p), raising=False)
    with pytest.raises(OSError) as info:
        write_dataset(tree.images_dir, tree.annotations_dir, out, ARCHIVES)
    assert info.value.errno == errno.ENOSPC
    assert f"could not write {out / 'manifest.json'}" in str(info.value) and "free some space" in str(info.value)
    assert not (out / "manifest.json").exists() and leftover_temps(out) == []
    assert (out / "validation.json").is_file() and "not a complete dataset" in verify_dataset(out)[0]

    monkeypatch.undo()
    write_dataset(tree.images_dir, tree.annotations_dir, out, ARCHIVES)
    assert verify_dataset(out) == []


FULL_DISK_CHILD = """
    import json, os, sys
    from pathlib import Path
    from segpipe.data.download import download_archive, resolve_source
    from segpipe.data.tfrecords import verify_dataset
    from tests.faults import leftover_temps, write_dataset

    disk, images, annotations = (Path(a) for a in sys.argv[1:4])
    url, digest = sys.argv[4:6]
    archives = {"images.tar.gz": "a" * 64, "annotations.tar.gz": "b" * 64}
    out = {}

    def fill(leave):  # a filler file leaving `leave` bytes free
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\\0" * (st.f_bavail * st.f_frsize - leave))

    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"

    fill(40_000)
    attempt("download_full", lambda: download_archive(resolve_source(url), "images.tar.gz", disk / "dl",
                                                      expected_sha256=digest, progress=False))
    out["part_bytes"] = (disk / "dl" / "images.tar.gz.part").stat().st_size
    (disk / "filler").unlink()
    attempt("download_freed", lambda: download_archive(resolve_source(url), "images.tar.gz", disk / "dl",
                                                       expected_sha256=digest, progress=False))

    fill(8_000)
    attempt("shards_full", lambda: write_dataset(images, annotations, disk / "ds", archives))
    out["manifest_after_full"] = (disk / "ds" / "manifest.json").exists()
    out["temps_after_full"] = [p.name for p in leftover_temps(disk / "ds")]
    (disk / "filler").unlink()
    attempt("shards_freed", lambda: write_dataset(images, annotations, disk / "ds", archives))
    out["verify"] = verify_dataset(disk / "ds")
    print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(not tmpfs_available(), reason="needs `unshare -rm` to mount a private tmpfs")
def test_real_full_disk_on_a_tiny_tmpfs(tree, tmp_path):
    payload = os.urandom(200_000)
    with LoopbackServer({NAME: payload}) as srv:
        proc = run_on_full_disk(FULL_DISK_CHILD, tmp_path / "disk", 1024, str(tree.images_dir),
                                str(tree.annotations_dir), srv.url, sha(payload))
        resumed = [g.headers.get("Range") for g in srv.gets(NAME)]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["download_full"].startswith("OSError: [Errno 28] No space left on device: could not write ")
    assert 0 < out["part_bytes"] < len(payload)
    assert out["download_freed"] == "ok" and resumed == [None, f"bytes={out['part_bytes']}-"]
    assert out["shards_full"].startswith("OSError: [Errno 28] No space left on device: could not write shard ")
    assert out["manifest_after_full"] is False and out["temps_after_full"] == []
    assert out["shards_freed"] == "ok" and out["verify"] == []


def test_shard_lost_before_the_manifest_is_written_is_rebuilt_on_rerun(prefect_api, tmp_path):
    """A dataset left without its manifest (a crash before the last stage) that also lost one shard:
    the rerun must rewrite the shard, not fail on it forever."""
    from segpipe.data.tfrecords import verify_dataset
    from tests.synthetic import make_pets_archives
    from tests.reliability.test_reliability_inputs import run_prepare_flow

    digests = make_pets_archives(tmp_path / "src", n_per_breed=2, include_odd=False)
    files = {n: (tmp_path / "src" / n).read_bytes() for n in (*digests, "SHA256SUMS")}
    work = tmp_path / "work"
    small_shards = {"data.shard_size_mb": 0.004}
    with LoopbackServer(files) as srv:
        ref = run_prepare_flow(srv.url, work, work / "prefect-results", **small_shards)
        dataset = Path(ref.path)
        shards = sorted(dataset.glob("train-*.tfrecord"))
        assert len(shards) >= 2
        (dataset / "manifest.json").unlink()
        shards[-1].unlink()
        again = run_prepare_flow(srv.url, work, work / "prefect-results", **small_shards)
    assert verify_dataset(again.path) == []


def _rewritten_in_place(path: Path, data: bytes, like: os.stat_result) -> None:
    """`data` written over `path` in place (same inode), its modification time set back to `like`'s; waits until
    the change time has moved (it moves with the kernel's clock tick, not with each write)."""
    while True:
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(like.st_atime_ns, like.st_mtime_ns))
        if os.stat(path).st_ctime_ns != like.st_ctime_ns:
            return


def test_the_digest_memo_sees_a_file_rewritten_with_its_old_size_and_modification_time(tmp_path):
    """The memo behind the model and weights digests in cache keys: a file rewritten with the same size and its
    modification time set back, in place or by a rename over it, gets its new content's digest."""
    from segpipe.fsutil import sha256_file, sha256_file_memo

    path = tmp_path / "weights.h5"
    path.write_bytes(b"a" * 64)
    before = os.stat(path)
    first = sha256_file_memo(path)
    _rewritten_in_place(path, b"b" * 64, before)
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert sha256_file_memo(path) == sha256_file(path) != first

    other = tmp_path / "other.h5"
    other.write_bytes(b"c" * 64)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)
    assert sha256_file_memo(path) == hashlib.sha256(b"c" * 64).hexdigest()
