"""Download stage: fetch `images.tar.gz` and `annotations.tar.gz` into WORK/downloads.

`download_archive` makes ONE attempt per call (the Prefect task layer retries;
`is_transient` tells it which errors are worth a retry), but within that attempt
it falls back from one location of the source to the next, and renames the
complete, verified `.part` into place. The parts live in their own modules:

- `sources`: what a `--source` string names (`resolve_source`, `Source`);
- `checksums`: the sha256 each archive must have (`SHA256SUMS`) and checking a file against it;
- `fetch`: the bytes: an HTTP GET that resumes a `.part`, or a local copy;
- `progress`: the progress line;
- `download_errors`: the errors and `is_transient`.

Their public names are re-exported here, so `segpipe.data.download` stays the
one import for the stage, and the stage's code key (`segpipe.data.dataset.DOWNLOAD_ENTRY`) reaches them all
through the import graph.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from segpipe.data import ARCHIVES
from segpipe.data.checksums import (
    SUMS_FILE,
    check_digest,
    check_hex,
    expected_digests,
    parse_sha256sums,
    quarantine,
    verify_archive,
)
from segpipe.data.download_errors import (
    SOURCE_HINT,
    ChecksumMismatchError,
    SourceError,
    TransientDownloadError,
    combined_error,
    is_transient,
)
from segpipe.data.fetch import copy_local, fetch_http, meta_path, network_errors, part_path, raise_for_status, timeouts
from segpipe.data.progress import Progress, ProgressCallback
from segpipe.data.sources import (
    OFFICIAL_BASE_URLS,
    OFFICIAL_DIGESTS,
    OFFICIAL_MD5S,
    OFFICIAL_SIZES,
    Source,
    redact_url,
    require_archives,
    resolve_source,
)
from segpipe.fsutil import CHUNK, file_lock, sha256_file

__all__ = [
    "ARCHIVES", "OFFICIAL_BASE_URLS", "OFFICIAL_DIGESTS", "OFFICIAL_MD5S", "OFFICIAL_SIZES",
    "SOURCE_HINT", "SUMS_FILE", "Archive", "ChecksumMismatchError", "DownloadResult", "ProgressCallback", "Source",
    "SourceError", "TransientDownloadError", "download_archive", "expected_digests", "is_transient",
    "fetch_archive", "is_downloaded", "parse_sha256sums", "redact_url", "resolve_source", "source_fingerprint",
    "verify_archive", "verify_downloaded",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed_from: int
    source_url: str | None  # log-safe; None when the file was already there
    cached: bool = False


@dataclass(frozen=True)
class Archive:
    """A downloaded archive: where it is and what it should be (`fetch_archive`). It enters a cache key by
    its content (`cache_content`): name and digests, never its path; `size` and `resumed_from` say how
    the download went."""

    name: str
    path: str
    sha256: str
    expected_sha256: str | None  # None: the source records no digest for it
    source: str  # log-safe description of where it came from
    size: int = 0
    resumed_from: int = 0

    def cache_content(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "expected": self.expected_sha256}

    def on_disk(self) -> bool:
        """True while the downloaded file is still where the download put it."""
        return Path(self.path).is_file()


def is_downloaded(dest_dir: str | os.PathLike[str], name: str) -> bool:
    """True when `download_archive` has put `name` into `dest_dir` (it renames the complete file into place)."""
    return (Path(dest_dir) / name).is_file()


def fetch_archive(
    source: str | Source, name: str, dest_dir: str | os.PathLike[str], *, timeout: float = 60.0,
    progress: bool | None = None,
) -> Archive:
    """The download stage for one archive: resolve `source`, read the sha256 it records for `name`, and
    `download_archive` into `dest_dir`. With no recorded digest, a local copy must at least be
    byte-identical to its source."""
    src = resolve_source(source) if isinstance(source, str) else source
    expected = expected_digests(src, timeout).get(name)
    must_equal = expected
    if must_equal is None and src.kind == "local":
        must_equal = source_fingerprint(src, timeout, names=[name])[name].removeprefix("sha256:")
    result = download_archive(src, name, Path(dest_dir), expected_sha256=must_equal, timeout=timeout,
                              progress=progress)
    return Archive(name, str(result.path), result.sha256, expected, src.describe(), result.size, result.resumed_from)


def verify_downloaded(archive: Archive) -> str:
    """The verify stage: the archive's sha256, checked against the digest its source records (or, where it
    records none, against the digest as downloaded); `ChecksumMismatchError` otherwise."""
    return verify_archive(Path(archive.path), archive.expected_sha256 or archive.sha256)


def download_archive(
    source: Source,
    name: str,
    dest_dir: Path,
    *,
    expected_sha256: str | None,
    timeout: float = 60.0,
    progress: bool | None = None,
    chunk_size: int = CHUNK,
    on_progress: ProgressCallback | None = None,
) -> DownloadResult:
    """Fetch `name` from `source` into `dest_dir/name` (one attempt, every location in order).

    Raises `TransientDownloadError` (retry), `SourceError` or `ChecksumMismatchError` (don't).
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / name
    expected = check_hex(expected_sha256, name) if expected_sha256 else None
    with file_lock(dest_dir / f".{name}.lock"):
        if final.is_file():
            actual = sha256_file(final)
            if expected is None or actual == expected:
                return DownloadResult(final, actual, final.stat().st_size, 0, None, cached=True)
            moved = quarantine(final, actual)
            log.warning("%s has sha256 %s, expected %s: moved to %s, downloading again", final, actual, expected, moved)
        _unlink_if_symlink(part_path(final))
        bar = Progress(name, progress, on_progress)
        errors: list[tuple[str, Exception]] = []
        for location in source.locations:
            shown = redact_url(location + name) if source.kind == "http" else str(Path(location) / name)
            try:
                if source.kind == "http":
                    sha, size, resumed = fetch_http(location + name, final, timeout, chunk_size, bar)
                else:
                    sha, size = copy_local(Path(location) / name, final, chunk_size, bar)
                    resumed = 0
                check_digest(part_path(final), name, shown, expected, sha)
            except (TransientDownloadError, SourceError, ChecksumMismatchError) as exc:
                log.warning("download of %s from %s failed: %s", name, shown, exc)
                errors.append((shown, exc))
                continue
            finally:
                bar.close()
            os.replace(part_path(final), final)
            meta_path(final).unlink(missing_ok=True)
            _fsync_dir(dest_dir)
            return DownloadResult(final, sha, size, resumed, shown)
        raise combined_error(name, errors)


def source_fingerprint(source: Source, timeout: float = 60.0, names: Iterable[str] = ARCHIVES) -> dict[str, str]:
    """A content key for caching the download stage: changes when the archives would change.

    Only the archives in `names` are fingerprinted (a local archive is hashed whole).

    - local: `{name: "sha256:<hex>"}` of each file (hashed; a missing archive is a `SourceError`);
    - http with known digests (official, or a SHA256SUMS): `{name: "sha256:<hex>"}`, no download;
    - http without digests: `{name: "<url>|<Content-Length>|<ETag or Last-Modified>"}` from a HEAD
      request (credentials stripped from the URL).
    """
    if source.kind == "local":
        names = tuple(names)
        require_archives(source, names)
        return {name: "sha256:" + sha256_file(Path(source.locations[0]) / name) for name in names}
    digests = expected_digests(source, timeout)
    return {
        name: f"sha256:{digests[name]}" if digests.get(name) else _head_fingerprint(source, name, timeout)
        for name in names
    }


def _head_fingerprint(source: Source, name: str, timeout: float) -> str:
    import requests

    errors: list[tuple[str, Exception]] = []
    for base in source.locations:
        url = base + name
        try:
            try:
                resp = requests.head(url, timeout=timeouts(timeout), allow_redirects=True)
            except network_errors() as exc:
                raise TransientDownloadError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from exc
            raise_for_status(resp, url)
        except (TransientDownloadError, SourceError) as exc:
            errors.append((redact_url(url), exc))
            continue
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        return f"{redact_url(url)}|{resp.headers.get('Content-Length', '')}|{validator}"
    raise combined_error(name, errors)


def _unlink_if_symlink(path: Path) -> None:
    """Never write through a link planted at a name we write to: it could point outside WORK."""
    if path.is_symlink():
        log.warning("%s is a symbolic link; removing it instead of writing through it", path)
        path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
