"""Byte transfer for the download stage: an HTTP GET that resumes a `.part`, or a local copy.

HTTP downloads stream into `<name>.part`, resume with `Range: bytes=N-` (guarded by
`If-Range` when the server gave an ETag or Last-Modified, recorded in the
`<name>.part.json` sidecar), and are hashed while written and fsynced. Renaming the
finished `.part` into place is the caller's (`download.download_archive`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from segpipe import cancel
from segpipe.data import ARCHIVES
from segpipe.data.download_errors import SourceError, TransientDownloadError
from segpipe.data.progress import Progress
from segpipe.data.sources import redact_url
from segpipe.fsutil import CHUNK, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import requests


def network_errors() -> tuple[type[BaseException], ...]:
    """What a failed transfer raises: requests', urllib3's and the OS's network errors (for `except`).

    A function, and `requests` imported where a transfer starts, so that importing the download stage
    does not import requests (~0.1 s of every command, a fully cached one included)."""
    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def timeouts(timeout: float) -> tuple[float, float]:
    """(connect, read) timeouts for requests: connecting never waits more than 20 s."""
    return (min(timeout, 20.0), timeout)


def raise_for_status(resp: requests.Response, url: str) -> None:
    """`TransientDownloadError` for 5xx/408/429, `SourceError` for any other non-200/206 answer."""
    code = resp.status_code
    if code in (200, 206):
        return
    if code >= 500 or code in (408, 429):
        raise TransientDownloadError(f"{redact_url(url)} answered HTTP {code} {resp.reason}")
    what = {404: "not found", 403: "forbidden", 401: "unauthorized"}.get(code, resp.reason)
    raise SourceError(f"{redact_url(url)} answered HTTP {code} ({what})")


def part_path(final: Path) -> Path:
    """Where `final` is written until it is complete."""
    return final.with_name(final.name + ".part")


def meta_path(final: Path) -> Path:
    """Sidecar recording which response the .part came from (URL, validator, total)."""
    return final.with_name(final.name + ".part.json")


def _disk_full(exc: OSError, path: Path, kept: int) -> OSError:
    """A disk-full `exc` restated with the file it hit (the kernel's message names none)."""
    return OSError(exc.errno, f"{exc.strerror}: could not write {path} ({kept} bytes kept); "
                              f"free some space and run again: the download resumes from there")


def fetch_http(url: str, final: Path, timeout: float, chunk_size: int, bar: Progress) -> tuple[str, int, int]:
    """Stream `url` into `final`.part, resuming it; returns (sha256, size, resumed_from)."""
    import requests

    part = part_path(final)
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
            with requests.get(url, headers=headers, stream=True, timeout=timeouts(timeout)) as resp:
                if resp.status_code == 416 and offset:
                    total = _total_from_content_range(resp.headers.get("Content-Range", "")) or meta.get("total")
                    if total == offset:  # the .part is already complete
                        return sha256_file(part), offset, offset
                    log.warning("%s: %s is larger than the remote file; starting over", shown, part.name)
                    part.unlink()
                    continue
                raise_for_status(resp, url)
                start, total = _response_range(resp)
                if resp.status_code == 206 and (start != offset or (meta.get("total") not in (None, total))):
                    log.warning("%s: unexpected Content-Range for a resume from %d; starting over", shown, offset)
                    part.unlink()
                    continue
                if offset and resp.status_code == 200:
                    log.warning("%s ignored the Range request (or the file changed); starting over", shown)
                validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                atomic_write_json(meta_path(final), {"url": shown, "validator": validator, "total": total})
                size, sha = _stream(resp, part, start, total, chunk_size, bar, shown)
                return sha, size, start
        raise TransientDownloadError(f"{shown}: the server's answers to a resumed download are inconsistent")
    except network_errors() as exc:
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
    resp: requests.Response, part: Path, start: int, total: int | None, chunk_size: int, bar: Progress, shown: str
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
            done = write_chunks(iter(lambda: resp.raw.read1(chunk_size, decode_content=False), b""), f, h, bar, done)
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
        meta = json.loads(meta_path(final).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    return meta if meta.get("url") == redact_url(url) else {"total": meta.get("total")}


def copy_local(src: Path, final: Path, chunk_size: int, bar: Progress) -> tuple[str, int]:
    """Copy `src` to `final`.part in chunks, hashing as it goes; returns (sha256, size)."""
    if not src.is_file():
        raise SourceError(f"{src} not found (the source directory must hold {' and '.join(ARCHIVES)})")
    total = src.stat().st_size
    h = hashlib.sha256()
    done = 0
    bar.start(0, total)
    with open(src, "rb") as fin, open(part_path(final), "wb") as fout:
        done = write_chunks(iter(lambda: fin.read(chunk_size), b""), fout, h, bar, done)
    bar.update(done, force=True)
    return h.hexdigest(), done


def write_chunks(chunks: Iterable[bytes], f: Any, h: Any, bar: Progress, done: int) -> int:
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
