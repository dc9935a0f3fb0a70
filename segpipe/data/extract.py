"""Extract stage: unpack a downloaded archive safely into WORK/extracted/<archive-digest>.

The destination counts as complete only when `dest/.complete` (JSON: archive sha256,
counts, skipped members) exists. Extraction goes to a temporary directory beside
`dest` that is renamed into place after the marker is written, so a crash never
leaves anything that looks complete, and a second call is a no-op.

Safety: compression is detected from magic bytes (the official `.tar.gz` files have
been reported to be plain tar), every member is checked before it is written
(absolute paths, `..`, links leaving the destination, device files, member count and
declared total size), and tarfile's `data` filter runs on top. A rejected archive
raises `UnsafeArchiveError` and leaves nothing behind.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from segpipe.data.checksums import verify_archive
from segpipe.fsutil import atomic_write_json, current_umask, file_lock, read_json, sha256_file, tempdir_beside
from segpipe.layout import COMPLETE_MARKER

log = logging.getLogger(__name__)

MAGIC: tuple[tuple[bytes, str], ...] = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


class ArchiveError(ValueError):
    """The archive cannot be read as a tar archive (corrupt, truncated, not a tar)."""


class UnsafeArchiveError(ArchiveError):
    """The archive has a member that would escape the destination, or exceeds the size limits."""


@dataclass(frozen=True)
class ExtractResult:
    dest: Path
    members_extracted: int
    bytes_extracted: int
    skipped: list[tuple[str, str]]
    archive_sha256: str = ""
    cached: bool = False  # True when `dest` was already complete


@dataclass
class _Tally:
    members: int = 0
    declared: int = 0
    extracted: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def detect_compression(path: Path) -> str:
    """"gz", "bz2", "xz" or "" (plain tar), from the file's first bytes, not its name."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in MAGIC if head.startswith(magic)), "")


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    max_members: int = 100_000,
    max_total_bytes: int = 8 * 2**30,
) -> ExtractResult:
    """Extract `archive` into `dest` once; later calls return the recorded result at once."""
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        done = _read_marker(dest, expected_sha256)
        if done is not None:
            return done
        _remove_stale(dest)
        if not archive.is_file():
            raise FileNotFoundError(f"archive {archive} not found: run the download stage first")
        sha = verify_archive(archive, expected_sha256) if expected_sha256 else sha256_file(archive)
        tmp = tempdir_beside(dest)
        try:
            tally = _extract_into(archive, tmp, max_members, max_total_bytes)
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it 0700
            marker = {
                "archive": archive.name,
                "archive_sha256": sha,
                "compression": detect_compression(archive) or "none",
                "members_extracted": tally.extracted,
                "bytes_extracted": tally.bytes,
                "skipped": tally.skipped,
            }
            atomic_write_json(tmp / COMPLETE_MARKER, marker)  # last: only now does it look complete
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("extracted %d members (%d bytes) of %s into %s", tally.extracted, tally.bytes, archive, dest)
    return ExtractResult(dest, tally.extracted, tally.bytes, tally.skipped, sha)


def extraction_complete(dest: str | os.PathLike[str]) -> bool:
    """True once `extract_archive` finished `dest` (it writes the `.complete` marker, then renames into place)."""
    return (Path(dest) / COMPLETE_MARKER).is_file()


def _read_marker(dest: Path, expected_sha256: str | None) -> ExtractResult | None:
    """The recorded result when `dest` is complete (and from the expected archive), else None."""
    try:
        m = read_json(dest / COMPLETE_MARKER)
        result = ExtractResult(
            dest, int(m["members_extracted"]), int(m["bytes_extracted"]),
            [(str(n), str(r)) for n, r in m["skipped"]], str(m["archive_sha256"]), cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if expected_sha256 and result.archive_sha256 != expected_sha256.lower():
        log.warning("%s was extracted from another archive (sha256 %s); extracting again", dest, result.archive_sha256)
        return None
    return result


def _remove_stale(dest: Path) -> None:
    """Remove an incomplete `dest` and temp dirs left beside it by a crashed run (we hold the lock)."""
    for tmp in glob.glob(os.path.join(glob.escape(str(dest.parent)), glob.escape(f".{dest.name}.tmp-") + "*")):
        log.warning("removing %s left by an interrupted extraction", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        log.warning("removing incomplete %s (no %s marker)", dest, COMPLETE_MARKER)
        shutil.rmtree(dest)


def _extract_into(archive: Path, tmp: Path, max_members: int, max_total_bytes: int) -> _Tally:
    tally = _Tally()
    compression = detect_compression(archive)
    try:
        with tarfile.open(archive, "r|" + compression) as tar:
            members = _checked_members(tar, archive, tally, max_members, max_total_bytes)
            tar.extractall(tmp, members=members, filter=_filter)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{archive}: unsafe member {exc.tarinfo.name!r}: {exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(
            f"cannot read {archive} as a {compression or 'plain'} tar archive: {exc}; "
            f"delete it so that it is downloaded again"
        ) from exc
    return tally


def _checked_members(
    tar: tarfile.TarFile, archive: Path, tally: _Tally, max_members: int, max_total_bytes: int
) -> Iterator[tarfile.TarInfo]:
    """Yield the members to extract, rejecting unsafe ones before anything of them is written."""
    for member in tar:
        tally.members += 1
        tally.declared += max(member.size, 0)
        if tally.members > max_members:
            raise UnsafeArchiveError(
                f"{archive}: more than {max_members} members (at {member.name!r}); refusing to extract"
            )
        if tally.declared > max_total_bytes:
            raise UnsafeArchiveError(
                f"{archive}: member {member.name!r} brings the declared size to {tally.declared} bytes, "
                f"over the {max_total_bytes}-byte limit (decompression-bomb guard)"
            )
        reason = unsafe_reason(member)
        if reason:
            raise UnsafeArchiveError(f"{archive}: unsafe member {member.name!r}: {reason}")
        skip = skip_reason(member)
        if skip:
            tally.skipped.append((member.name, skip))
            continue
        tally.extracted += 1
        tally.bytes += member.size if member.isreg() else 0
        yield member


def _escapes(path: str) -> bool:
    norm = posixpath.normpath(path)
    return path.startswith("/") or norm == ".." or norm.startswith("../")


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` would be unsafe, or None."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path traversal ('..' component)"
    if member.issym() and _escapes(posixpath.join(posixpath.dirname(name), member.linkname)):
        return f"symlink to {member.linkname!r} points outside the destination"
    if member.islnk() and _escapes(member.linkname):
        return f"hard link to {member.linkname!r} points outside the destination"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        kind = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}
        return f"{kind.get(member.type, 'special file (type ' + repr(member.type) + ')')} not allowed"
    return None


def skip_reason(member: tarfile.TarInfo) -> str | None:
    """Why `member` is left out (macOS metadata, MATLAB files), or None to extract it."""
    parts = PurePosixPath(member.name).parts
    if "__MACOSX" in parts:
        return "macOS metadata (__MACOSX)"
    if parts and parts[-1].startswith("._"):
        return "AppleDouble metadata file"
    if parts and parts[-1].lower().endswith(".mat") and not member.isdir():
        return "MATLAB .mat file, not part of the dataset"
    return None


def _filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's `data` filter, then no mode at all: files get the umask's default permissions."""
    return tarfile.data_filter(member, path).replace(mode=None, deep=False)
