"""Extract stage: compression detection, idempotence, skipping, and refusal of unsafe archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from segpipe.data.download import ChecksumMismatchError
from segpipe.data.extract import (
    ArchiveError,
    UnsafeArchiveError,
    detect_compression,
    extract_archive,
    unsafe_reason,
)
from segpipe.layout import COMPLETE_MARKER

FILES = {"annotations/list.txt": b"# header\nAbyssinian_1 1 1 1\n", "annotations/trimaps/a.png": b"\x89PNG" + b"x" * 100}


def reg(name: str, data: bytes = b"", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, b""


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    dirinfo = tarfile.TarInfo("annotations")
    dirinfo.type = tarfile.DIRTYPE
    return [(dirinfo, b"")] + [reg(n, d) for n, d in FILES.items()]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(parent: Path) -> list[str]:
    """Everything under `parent` except archives and lock files."""
    return sorted(
        str(p.relative_to(parent)) for p in parent.rglob("*")
        if not p.name.endswith((".tar.gz", ".tar.bz2", ".tar", ".lock")) and p.name != "outside"
    )


@pytest.mark.parametrize(
    ("mode", "name", "expected"),
    [("w:gz", "a.tar.gz", "gz"), ("w", "plain.tar.gz", ""), ("w:bz2", "a.tar.bz2", "bz2"), ("w:xz", "a.tar.gz", "xz")],
)
def test_extracts_each_compression_by_magic(tmp_path, mode, name, expected):
    archive = make_tar(tmp_path / "dl" / name, good_members(), mode)
    assert detect_compression(archive) == expected
    dest = tmp_path / "extracted" / "k"
    result = extract_archive(archive, dest, expected_sha256=sha(archive))
    assert result.dest == dest and not result.cached
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == data
    assert (result.members_extracted, result.bytes_extracted) == (3, sum(map(len, FILES.values())))
    marker = json.loads((dest / COMPLETE_MARKER).read_text())
    assert marker["archive_sha256"] == sha(archive) == result.archive_sha256
    assert marker["members_extracted"] == 3 and marker["compression"] == (expected or "none")
    assert leftovers(tmp_path / "extracted") == sorted(["k", "k/.complete", "k/annotations", "k/annotations/list.txt",
                                                        "k/annotations/trimaps", "k/annotations/trimaps/a.png"])


def test_second_call_is_idempotent_without_reading_the_archive(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", good_members() + [reg("images/._x.jpg", b"apple")])
    dest = tmp_path / "out"
    first = extract_archive(archive, dest)
    mtime = (dest / "annotations/list.txt").stat().st_mtime_ns
    archive.unlink()  # proves the second call does not touch the archive
    second = extract_archive(archive, dest)
    assert second.cached
    assert (second.members_extracted, second.bytes_extracted, second.skipped, second.archive_sha256) == (
        first.members_extracted, first.bytes_extracted, first.skipped, first.archive_sha256)
    assert (dest / "annotations/list.txt").stat().st_mtime_ns == mtime


def test_appledouble_macosx_and_mat_files_are_skipped(tmp_path):
    members = good_members() + [
        reg("images/Abyssinian_1.jpg", b"jpg"),
        reg("images/._Abyssinian_1.jpg", b"apple"),
        reg("__MACOSX/images/._Abyssinian_1.jpg", b"apple"),
        reg("images/Abyssinian_100.mat", b"matlab"),
    ]
    dest = tmp_path / "out"
    result = extract_archive(make_tar(tmp_path / "a.tar.gz", members), dest)
    assert (dest / "images/Abyssinian_1.jpg").read_bytes() == b"jpg"
    assert not (dest / "images/._Abyssinian_1.jpg").exists() and not (dest / "__MACOSX").exists()
    assert not (dest / "images/Abyssinian_100.mat").exists()
    assert [n for n, _ in result.skipped] == [
        "images/._Abyssinian_1.jpg", "__MACOSX/images/._Abyssinian_1.jpg", "images/Abyssinian_100.mat"]
    assert "AppleDouble" in result.skipped[0][1] and ".mat" in result.skipped[2][1]
    assert result.members_extracted == 4


def test_files_get_umask_permissions_not_archive_modes(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [reg("d/x.bin", b"x", mode=0o777), reg("d/y.bin", b"y", mode=0o600)])
    old = os.umask(0o027)
    try:
        dest = tmp_path / "out"
        extract_archive(archive, dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / "d/x.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "d/y.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o750


def huge_declared_member(path: Path) -> Path:
    """A gzip tar whose only header declares a 10 GiB file (the data is not there)."""
    info = tarfile.TarInfo("images/bomb.jpg")
    info.size = 10 * 2**30
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096))
    return path


def unsafe_cases(outside: Path) -> dict[str, tuple[list, dict, str, str]]:
    """name -> (members, extract kwargs, expected message fragment, offending member)."""
    evil_abs = str(outside / "abs.txt")
    return {
        "absolute": ([reg("ok.txt", b"ok"), reg(evil_abs, b"evil")], {}, "absolute path", evil_abs),
        "traversal": ([reg("ok.txt", b"ok"), reg("a/../../outside/trav.txt", b"evil")], {}, "path traversal",
                      "a/../../outside/trav.txt"),
        "symlink": ([special("link", tarfile.SYMTYPE, "../outside"), reg("link/sym.txt", b"evil")], {},
                    "symlink to '../outside' points outside", "'link'"),
        "abs-symlink": ([special("link", tarfile.SYMTYPE, str(outside))], {}, "points outside", "'link'"),
        "hardlink": ([special("hl", tarfile.LNKTYPE, "../outside/secret.txt")], {}, "hard link", "'hl'"),
        "device": ([reg("ok.txt", b"ok"), special("dev/null", tarfile.CHRTYPE)], {}, "character device", "dev/null"),
        "fifo": ([special("pipe", tarfile.FIFOTYPE)], {}, "fifo", "'pipe'"),
        "too-many": ([reg(f"f{i}.txt", b"x") for i in range(10)], {"max_members": 5}, "more than 5 members",
                     "f5.txt"),
        "too-big": ([reg("a.bin", b"x" * 600), reg("b.bin", b"x" * 600)], {"max_total_bytes": 1000},
                    "decompression-bomb guard", "b.bin"),
    }


@pytest.mark.parametrize("case", list(unsafe_cases(Path("/x"))) + ["huge-declared"])
def test_unsafe_archives_are_rejected_and_leave_nothing(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep me")
    if case == "huge-declared":
        archive, kwargs, needle, member = huge_declared_member(tmp_path / "bomb.tar.gz"), {}, "over the", "bomb.jpg"
    else:
        members, kwargs, needle, member = unsafe_cases(outside)[case]
        archive = make_tar(tmp_path / "evil.tar.gz", members)
    work = tmp_path / "work"
    dest = work / "extracted" / "digest"
    with pytest.raises(UnsafeArchiveError, match=needle) as info:
        extract_archive(archive, dest, **kwargs)
    assert str(archive) in str(info.value) and member in str(info.value)
    assert isinstance(info.value, ValueError)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "keep me"
    assert not dest.exists()
    assert leftovers(work) == ["extracted"]  # no temp dir, no partial dest


def test_tarfile_data_filter_also_applies(tmp_path):
    """A symlink chain that looks safe name by name but escapes once resolved: the data filter stops it."""
    members = [special("d1/l1", tarfile.SYMTYPE, ".."), special("d1/l1/l2", tarfile.SYMTYPE, "..")]
    assert [unsafe_reason(m) for m, _ in members] == [None, None]  # our lexical checks pass...
    archive = make_tar(tmp_path / "chain.tar.gz", members)
    with pytest.raises(UnsafeArchiveError, match="'d1/l1/l2'.*outside") as info:  # ...the filter does not
        extract_archive(archive, tmp_path / "work" / "d")
    assert isinstance(info.value.__context__, tarfile.FilterError)
    assert leftovers(tmp_path / "work") == []


def test_checksum_mismatch_extracts_nothing(tmp_path):
    archive = make_tar(tmp_path / "dl" / "a.tar.gz", good_members())
    dest = tmp_path / "extracted" / "k"
    with pytest.raises(ChecksumMismatchError, match="0" * 64):
        extract_archive(archive, dest, expected_sha256="0" * 64)
    assert not dest.exists() and not archive.exists()
    assert list((tmp_path / "dl" / "quarantine").iterdir())


def test_not_a_tar_is_a_clear_error(tmp_path):
    for name, data in [("junk.tar.gz", b"this is not a tar archive at all" * 40),
                       ("trunc.tar.gz", gzip.compress(b"x" * 5000)[:40])]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ArchiveError, match=f"cannot read {path}"):
            extract_archive(path, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="download stage"):
        extract_archive(tmp_path / "missing.tar.gz", tmp_path / "out")


def test_crash_leftovers_are_not_trusted_and_get_redone(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", good_members())
    dest = tmp_path / "extracted" / "k"
    stale_tmp = tmp_path / "extracted" / ".k.tmp-crashed"
    (stale_tmp / "annotations").mkdir(parents=True)
    (stale_tmp / "annotations" / "list.txt").write_bytes(b"half")
    (dest / "annotations").mkdir(parents=True)  # a dest without marker: e.g. copied by hand, or an old crash
    (dest / "annotations" / "list.txt").write_bytes(b"half")
    (dest / "junk.txt").write_text("junk")
    result = extract_archive(archive, dest)
    assert not result.cached
    assert (dest / "annotations/list.txt").read_bytes() == FILES["annotations/list.txt"]
    assert not (dest / "junk.txt").exists() and not stale_tmp.exists()
    assert (dest / COMPLETE_MARKER).is_file()


def test_marker_from_another_archive_is_redone(tmp_path):
    a = make_tar(tmp_path / "a.tar.gz", good_members())
    b = make_tar(tmp_path / "b.tar.gz", [reg("other.txt", b"other")])
    dest = tmp_path / "out"
    extract_archive(a, dest)
    result = extract_archive(b, dest, expected_sha256=sha(b))
    assert not result.cached and result.archive_sha256 == sha(b)
    assert (dest / "other.txt").read_bytes() == b"other" and not (dest / "annotations").exists()
