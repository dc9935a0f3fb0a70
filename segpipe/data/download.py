"""Download stage: fetch `images.tar.gz` and `annotations.tar.gz` into WORK/downloads.

A *source* is where the two archives live:

- `"official"`: the Oxford VGG site, then its `thor` mirror (tried in order);
- an `http(s)://` base URL (the archive names are appended to it);
- a `file://` URL or a plain path to a local directory holding the archives.

`download_archive` makes ONE attempt per call (the Prefect task layer retries;
`is_transient` tells it which errors are worth a retry), but within that attempt
it falls back from one location to the next. HTTP downloads stream into
`<name>.part`, resume with `Range: bytes=N-` (guarded by `If-Range` when the
server gave an ETag or Last-Modified), are hashed while written, fsynced and
renamed into place only when complete. A file whose sha256 does not match is
moved to `quarantine/` and never left under the trusted name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import requests
import urllib3

from segpipe import cancel
from segpipe.data import ARCHIVES
from segpipe.fsutil import CHUNK, atomic_write_json, file_lock, sha256_file

log = logging.getLogger(__name__)

OFFICIAL_BASE_URLS: tuple[str, ...] = (
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/",
    "https://thor.robots.ox.ac.uk/datasets/pets/",
)
OFFICIAL_DIGESTS: dict[str, str] = {
    "images.tar.gz": "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
    "annotations.tar.gz": "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
}
OFFICIAL_SIZES: dict[str, int] = {"images.tar.gz": 791_918_971, "annotations.tar.gz": 19_173_078}
OFFICIAL_MD5S: dict[str, str] = {
    # The md5s torchvision's OxfordIIITPet checks, recorded for cross-reference.
    "images.tar.gz": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    "annotations.tar.gz": "95a8c909bbe2e81eed6a22bccdf3f68f",
}
SUMS_FILE = "SHA256SUMS"
SOURCE_HINT = (
    "check your network or point --source at a mirror or a local directory "
    "holding images.tar.gz and annotations.tar.gz"
)
_EXPECTED_SOURCE = (
    "expected 'official', an http(s) base URL, a file:// URL or a directory "
    "holding images.tar.gz and annotations.tar.gz"
)


class SourceError(ValueError):
    """The source is invalid or does not have the archive (404, 403, ...): retrying will not help."""


class TransientDownloadError(ConnectionError):
    """A network failure (connection, timeout, 5xx, truncated body) that a retry may fix."""


class ChecksumMismatchError(ValueError):
    """A file's sha256 differs from the expected one; the file was moved to quarantine."""

    def __init__(self, message: str, *, path: Path, expected: str, actual: str, quarantined: Path):
        super().__init__(message)
        self.path, self.expected, self.actual, self.quarantined = path, expected, actual, quarantined


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry may fix: the task layer's retry condition."""
    if isinstance(exc, ValueError):  # SourceError, ChecksumMismatchError, UnsafeArchiveError, ...
        return False
    return isinstance(
        exc,
        (TransientDownloadError, requests.ConnectionError, requests.Timeout,
         requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError),
    )


# ----------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """Where the archives live: http base URLs (tried in order) or one local directory."""

    kind: Literal["http", "local"]
    locations: tuple[str, ...]

    @property
    def is_official(self) -> bool:
        return self.kind == "http" and self.locations == OFFICIAL_BASE_URLS

    def describe(self) -> str:
        """A log-safe description: any user:password is stripped from URLs."""
        if self.is_official:
            return "official (" + ", ".join(self.locations) + ")"
        return ", ".join(redact_url(loc) for loc in self.locations)


def redact_url(url: str) -> str:
    """`url` without its user:password part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def resolve_source(source: str) -> Source:
    """Parse a `--source` string; a clear `SourceError` when it is not usable."""
    raw = (source or "").strip()
    if raw.lower() == "official":
        return Source("http", OFFICIAL_BASE_URLS)
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(raw)
        if not parts.hostname:
            raise SourceError(f"source {redact_url(raw)!r} has no host name; {_EXPECTED_SOURCE}")
        if parts.path.rsplit("/", 1)[-1] in ARCHIVES:
            raise SourceError(
                f"source {redact_url(raw)!r} names an archive; give the base URL of the directory "
                f"holding images.tar.gz and annotations.tar.gz"
            )
        return Source("http", (raw if raw.endswith("/") else raw + "/",))
    if scheme == "file":
        parts = urllib.parse.urlsplit(raw)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"source {raw!r}: file:// URLs must name a local path; {_EXPECTED_SOURCE}")
        return _local_source(urllib.request.url2pathname(parts.path), raw)
    if scheme or not raw:
        raise SourceError(f"unsupported source {redact_url(raw)!r}; {_EXPECTED_SOURCE}")
    return _local_source(raw, raw)


def _local_source(path: str, shown: str) -> Source:
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise SourceError(f"source {shown!r}: {directory} {what}; {_EXPECTED_SOURCE}")
    return Source("local", (str(directory),))


def parse_sha256sums(text: str, origin: str) -> dict[str, str]:
    """Parse `sha256sum` output (`<hex>  <name>` or `<hex> *<name>`; `#` comments and blank lines ignored)."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.rstrip("\r"))
        if not m:
            raise SourceError(
                f"{origin} line {lineno} is malformed: {line[:80]!r}; expected sha256sum format "
                f"'<64 hex digits>  <file name>'"
            )
        sums[m.group(2).strip().removeprefix("./")] = m.group(1).lower()
    return sums


def expected_digests(source: Source, timeout: float = 60.0) -> dict[str, str | None]:
    """The sha256 each archive must have, or None where the source publishes none.

    official: the pinned `OFFICIAL_DIGESTS`. Otherwise a `SHA256SUMS` file beside the archives
    (http: the first location that has one; 404 everywhere means no digests; local: the file).
    An archive the file does not list gets None.
    """
    if source.is_official:
        return dict(OFFICIAL_DIGESTS)
    if source.kind == "local":
        path = Path(source.locations[0]) / SUMS_FILE
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
        origin = str(path)
    else:
        text, origin = _fetch_sums(source, timeout)
    sums = parse_sha256sums(text, origin) if text is not None else {}
    return {name: sums.get(name) for name in ARCHIVES}


def _fetch_sums(source: Source, timeout: float) -> tuple[str | None, str]:
    errors: list[str] = []
    answered = False
    for base in source.locations:
        url = base + SUMS_FILE
        try:
            with requests.get(url, timeout=_timeouts(timeout), stream=True) as resp:
                if resp.status_code == 404:
                    answered = True
                    continue
                _raise_for_status(resp, url)
                body = resp.raw.read(1 << 20, decode_content=True)
                return body.decode("utf-8", errors="replace"), redact_url(url)
        except _NETWORK_ERRORS as exc:
            errors.append(f"{redact_url(url)}: {exc}")
        except TransientDownloadError as exc:
            errors.append(str(exc))
    if not answered and errors:
        raise TransientDownloadError(f"could not fetch {SUMS_FILE}: {'; '.join(errors)}; {SOURCE_HINT}")
    return None, ""


def source_fingerprint(source: Source, timeout: float = 60.0, names: Iterable[str] = ARCHIVES) -> dict[str, str]:
    """A content key for caching the download stage: changes when the archives would change.

    Only the archives in `names` are fingerprinted (a local archive is hashed whole).

    - local: `{name: "sha256:<hex>"}` of each file (hashed; a missing archive is a `SourceError`);
    - http with known digests (official, or a SHA256SUMS): `{name: "sha256:<hex>"}`, no download;
    - http without digests: `{name: "<url>|<Content-Length>|<ETag or Last-Modified>"}` from a HEAD
      request (credentials stripped from the URL).
    """
    if source.kind == "local":
        out = {}
        for name in names:
            path = Path(source.locations[0]) / name
            if not path.is_file():
                raise SourceError(f"{name} not found in source directory {source.locations[0]}")
            out[name] = "sha256:" + sha256_file(path)
        return out
    digests = expected_digests(source, timeout)
    return {
        name: f"sha256:{digests[name]}" if digests.get(name) else _head_fingerprint(source, name, timeout)
        for name in names
    }


def _head_fingerprint(source: Source, name: str, timeout: float) -> str:
    errors: list[tuple[str, Exception]] = []
    for base in source.locations:
        url = base + name
        try:
            try:
                resp = requests.head(url, timeout=_timeouts(timeout), allow_redirects=True)
            except _NETWORK_ERRORS as exc:
                raise TransientDownloadError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from exc
            _raise_for_status(resp, url)
        except (TransientDownloadError, SourceError) as exc:
            errors.append((redact_url(url), exc))
            continue
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        return f"{redact_url(url)}|{resp.headers.get('Content-Length', '')}|{validator}"
    raise _combined_error(name, errors)


# ----------------------------------------------------------------------------------------------------------------
# Download


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    sha256: str
    size: int
    resumed_from: int
    source_url: str | None  # log-safe; None when the file was already there
    cached: bool = False


ProgressCallback = Callable[[int, "int | None"], None]
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError,
)


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
    expected = _check_hex(expected_sha256, name) if expected_sha256 else None
    with file_lock(dest_dir / f".{name}.lock"):
        if final.is_file():
            actual = sha256_file(final)
            if expected is None or actual == expected:
                return DownloadResult(final, actual, final.stat().st_size, 0, None, cached=True)
            moved = _quarantine(final, actual)
            log.warning("%s has sha256 %s, expected %s: moved to %s, downloading again", final, actual, expected, moved)
        _unlink_if_symlink(_part(final))
        bar = _Progress(name, progress, on_progress)
        errors: list[tuple[str, Exception]] = []
        for location in source.locations:
            shown = redact_url(location + name) if source.kind == "http" else str(Path(location) / name)
            try:
                if source.kind == "http":
                    sha, size, resumed = _fetch_http(location + name, final, timeout, chunk_size, bar)
                else:
                    sha, size = _copy_local(Path(location) / name, final, chunk_size, bar)
                    resumed = 0
                _check_digest(_part(final), name, shown, expected, sha)
            except (TransientDownloadError, SourceError, ChecksumMismatchError) as exc:
                log.warning("download of %s from %s failed: %s", name, shown, exc)
                errors.append((shown, exc))
                continue
            finally:
                bar.close()
            os.replace(_part(final), final)
            _meta(final).unlink(missing_ok=True)
            _fsync_dir(dest_dir)
            return DownloadResult(final, sha, size, resumed, shown)
        raise _combined_error(name, errors)


def verify_archive(path: Path, expected_sha256: str, *, source: str | None = None) -> str:
    """sha256 of `path`; quarantine it and raise `ChecksumMismatchError` when it is not `expected_sha256`."""
    path = Path(path)
    actual = sha256_file(path)
    _check_digest(path, path.name, source or str(path), _check_hex(expected_sha256, path.name), actual)
    return actual


def _check_hex(digest: str, name: str) -> str:
    """`digest` lower-cased; a ValueError unless it is 64 hex digits (so a typo never quarantines a good file)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digest or ""):
        raise ValueError(f"expected sha256 for {name} must be 64 hex digits, got {digest!r}")
    return digest.lower()


def _check_digest(path: Path, name: str, shown: str, expected: str | None, actual: str) -> None:
    if expected is None or actual == expected:
        return
    moved = _quarantine(path, actual, name)
    raise ChecksumMismatchError(
        f"checksum mismatch for {name} from {shown}: expected sha256 {expected}, got {actual}; "
        f"the file was moved to {moved}",
        path=path, expected=expected, actual=actual, quarantined=moved,
    )


def _quarantine(path: Path, actual: str, name: str | None = None) -> Path:
    """Move a bad file to `<its dir>/quarantine/<name>.<digest12>.bad`."""
    target = path.parent / "quarantine" / f"{name or path.name}.{actual[:12]}.bad"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def _combined_error(name: str, errors: list[tuple[str, Exception]]) -> Exception:
    tried = ", ".join(url for url, _ in errors)
    last = errors[-1][1]
    if any(isinstance(e, TransientDownloadError) for _, e in errors):
        return TransientDownloadError(
            f"could not download {name}; tried {tried}; last error: {last}; {SOURCE_HINT}"
        )
    if isinstance(last, ChecksumMismatchError):
        return last
    return SourceError(f"{name} is not available from any location (tried {tried}); last error: {last}")


def _part(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _unlink_if_symlink(path: Path) -> None:
    """Never write through a link planted at a name we write to: it could point outside WORK."""
    if path.is_symlink():
        log.warning("%s is a symbolic link; removing it instead of writing through it", path)
        path.unlink()


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: OSError, path: Path, kept: int) -> OSError:
    """A disk-full `exc` restated with the file it hit (the kernel's message names none)."""
    return OSError(exc.errno, f"{exc.strerror}: could not write {path} ({kept} bytes kept); "
                              f"free some space and run again: the download resumes from there")


def _meta(final: Path) -> Path:
    """Sidecar recording which response the .part came from (URL, validator, total)."""
    return final.with_name(final.name + ".part.json")


def _timeouts(timeout: float) -> tuple[float, float]:
    return (min(timeout, 20.0), timeout)


def _raise_for_status(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code >= 500 or code in (408, 429):
        raise TransientDownloadError(f"{redact_url(url)} answered HTTP {code} {resp.reason}")
    what = {404: "not found", 403: "forbidden", 401: "unauthorized"}.get(code, resp.reason)
    raise SourceError(f"{redact_url(url)} answered HTTP {code} ({what})")


def _fetch_http(url: str, final: Path, timeout: float, chunk_size: int, bar: "_Progress") -> tuple[str, int, int]:
    """Stream `url` into `final`.part, resuming it; returns (sha256, size, resumed_from)."""
    part = _part(final)
    shown = redact_url(url)
    try:
        for _ in range(2):  # a second round only after discarding an unusable .part
            offset = part.stat().st_size if part.is_file() else 0
            headers = {"Accept-Encoding": "identity"}
            meta = _read_meta(final, url) if offset else {}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if meta.get("validator"):
                    headers["If-Range"] = meta["validator"]
            with requests.get(url, headers=headers, stream=True, timeout=_timeouts(timeout)) as resp:
                if resp.status_code == 416 and offset:
                    total = _total_from_content_range(resp.headers.get("Content-Range", "")) or meta.get("total")
                    if total == offset:  # the .part is already complete
                        return sha256_file(part), offset, offset
                    log.warning("%s: %s is larger than the remote file; starting over", shown, part.name)
                    part.unlink()
                    continue
                _raise_for_status(resp, url)
                start, total = _response_range(resp)
                if resp.status_code == 206 and (start != offset or (meta.get("total") not in (None, total))):
                    log.warning("%s: unexpected Content-Range for a resume from %d; starting over", shown, offset)
                    part.unlink()
                    continue
                if offset and resp.status_code == 200:
                    log.warning("%s ignored the Range request (or the file changed); starting over", shown)
                validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                atomic_write_json(_meta(final), {"url": shown, "validator": validator, "total": total})
                size, sha = _stream(resp, part, start, total, chunk_size, bar, shown)
                return sha, size, start
        raise TransientDownloadError(f"{shown}: the server's answers to a resumed download are inconsistent")
    except _NETWORK_ERRORS as exc:
        cancel.check(f"downloading {shown}")  # the stop request shut the connection: not a network error
        raise TransientDownloadError(f"{shown}: {type(exc).__name__}: {exc}") from exc


def _response_range(resp: requests.Response) -> tuple[int, int | None]:
    """(first byte offset, total size or None) of a 200/206 response."""
    if resp.status_code == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
        if not m:
            return -1, None
        return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _total_from_content_range(value: str) -> int | None:
    m = re.fullmatch(r"bytes \*/(\d+)", value.strip())
    return int(m.group(1)) if m else None


def _stream(
    resp: requests.Response, part: Path, start: int, total: int | None, chunk_size: int, bar: "_Progress", shown: str
) -> tuple[int, str]:
    """Write the body to `part` from `start` (append) or 0 (truncate); returns (size, sha256)."""
    h = _hash_prefix(part, start) if start else hashlib.sha256()
    done = start
    bar.start(start, total)
    try:
        # a stop request (Ctrl-C, SIGTERM) shuts the socket down, so a read from a stalled server ends now
        # instead of at the read timeout; open(...) first: the check below must see the bytes kept
        with open(part, "r+b" if start else "wb") as f, cancel.closing_on_request(lambda: _shut_down(resp)):
            f.seek(start)
            f.truncate()
            # read1: write whatever has arrived, so a stall or a kill never throws away bytes received;
            # raw bytes: never let the HTTP layer gunzip a .tar.gz served with Content-Encoding: gzip
            done = _write_chunks(iter(lambda: resp.raw.read1(chunk_size, decode_content=False), b""), f, h, bar, done)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, part, part.stat().st_size if part.is_file() else 0) from exc
        raise
    finally:
        bar.update(done, force=True)
    if total is not None and done != total:
        raise TransientDownloadError(f"{shown}: body truncated at {done} of {total} bytes")
    return done, h.hexdigest()


def _shut_down(resp: requests.Response) -> None:
    """Shut the response's socket down (both ways): a read blocked on it returns at once."""
    import socket

    # urllib3's connection may have dropped its socket already (a response that closes the connection);
    # the http.client response still reads from it through its file object
    conn = getattr(resp.raw, "connection", None)
    fileobj = getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None)
    for sock in (getattr(conn, "sock", None), getattr(fileobj, "_sock", None)):
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _hash_prefix(path: Path, length: int) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = length
        while remaining and (block := f.read(min(CHUNK, remaining))):
            h.update(block)
            remaining -= len(block)
    return h


def _read_meta(final: Path, url: str) -> dict:
    """What the sidecar says about the .part; its validator only counts for the same URL."""
    try:
        meta = json.loads(_meta(final).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return meta if meta.get("url") == redact_url(url) else {"total": meta.get("total")}


def _copy_local(src: Path, final: Path, chunk_size: int, bar: "_Progress") -> tuple[str, int]:
    """Copy `src` to `final`.part in chunks, hashing as it goes; returns (sha256, size)."""
    if not src.is_file():
        raise SourceError(f"{src} not found (the source directory must hold {' and '.join(ARCHIVES)})")
    total = src.stat().st_size
    h = hashlib.sha256()
    done = 0
    bar.start(0, total)
    with open(src, "rb") as fin, open(_part(final), "wb") as fout:
        done = _write_chunks(iter(lambda: fin.read(chunk_size), b""), fout, h, bar, done)
    bar.update(done, force=True)
    return h.hexdigest(), done


def _write_chunks(chunks: Iterable[bytes], f: Any, h: Any, bar: "_Progress", done: int) -> int:
    """Write, hash and count each chunk as it arrives, then fsync; returns the bytes done."""
    for chunk in chunks:
        cancel.check(f"writing {f.name}")  # the bytes so far stay in the file, to resume from
        f.write(chunk)
        h.update(chunk)
        done += len(chunk)
        bar.update(done)
    cancel.check(f"writing {f.name}")  # a stop request shut the connection down: not a truncated body
    f.flush()
    os.fsync(f.fileno())
    return done


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Progress:
    """A throttled (~4 updates/s) progress line on stderr plus an optional callback."""

    INTERVAL = 0.25

    def __init__(self, label: str, enabled: bool | None, callback: ProgressCallback | None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.callback = callback
        self.total: int | None = None
        self.first = self.done = 0
        self.t0 = self.last = 0.0
        self.drawn = False

    def start(self, done: int, total: int | None) -> None:
        self.first = self.done = done
        self.total = total
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = time.monotonic()
        if not force and now - self.last < self.INTERVAL:
            return
        self.last = now
        if self.callback is not None:
            self.callback(done, self.total)
        if self.enabled:
            rate = (done - self.first) / max(now - self.t0, 1e-6) / 1e6
            of = f"/{self.total / 1e6:.1f}" if self.total else ""
            pct = f" {100 * done / self.total:5.1f}%" if self.total else ""
            sys.stderr.write(f"\r{self.label}: {done / 1e6:.1f}{of} MB{pct} {rate:.1f} MB/s ")
            sys.stderr.flush()
            self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False
