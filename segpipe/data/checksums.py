"""The sha256 each archive must have (`SHA256SUMS` or the official record), and checking a file against it.

A file whose sha256 does not match is moved to `quarantine/` beside it and never
left under the trusted name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from segpipe.data import ARCHIVES
from segpipe.data.download_errors import SOURCE_HINT, ChecksumMismatchError, SourceError, TransientDownloadError
from segpipe.data.fetch import network_errors, raise_for_status, timeouts
from segpipe.data.sources import OFFICIAL_DIGESTS, Source, redact_url
from segpipe.fsutil import sha256_file

SUMS_FILE = "SHA256SUMS"


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
    import requests

    errors: list[str] = []
    answered = False
    for base in source.locations:
        url = base + SUMS_FILE
        try:
            with requests.get(url, timeout=timeouts(timeout), stream=True) as resp:
                if resp.status_code == 404:
                    answered = True
                    continue
                raise_for_status(resp, url)
                body = resp.raw.read(1 << 20, decode_content=True)
                return body.decode("utf-8", errors="replace"), redact_url(url)
        except network_errors() as exc:
            errors.append(f"{redact_url(url)}: {exc}")
        except TransientDownloadError as exc:
            errors.append(str(exc))
    if not answered and errors:
        raise TransientDownloadError(f"could not fetch {SUMS_FILE}: {'; '.join(errors)}; {SOURCE_HINT}")
    return None, ""


def verify_archive(path: Path, expected_sha256: str, *, source: str | None = None) -> str:
    """sha256 of `path`; quarantine it and raise `ChecksumMismatchError` when it is not `expected_sha256`."""
    path = Path(path)
    actual = sha256_file(path)
    check_digest(path, path.name, source or str(path), check_hex(expected_sha256, path.name), actual)
    return actual


def check_hex(digest: str, name: str) -> str:
    """`digest` lower-cased; a ValueError unless it is 64 hex digits (so a typo never quarantines a good file)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digest or ""):
        raise ValueError(f"expected sha256 for {name} must be 64 hex digits, got {digest!r}")
    return digest.lower()


def check_digest(path: Path, name: str, shown: str, expected: str | None, actual: str) -> None:
    """Nothing when `actual` is `expected` (or nothing is expected); else quarantine `path` and raise."""
    if expected is None or actual == expected:
        return
    moved = quarantine(path, actual, name)
    raise ChecksumMismatchError(
        f"checksum mismatch for {name} from {shown}: expected sha256 {expected}, got {actual}; "
        f"the file was moved to {moved}",
        path=path, expected=expected, actual=actual, quarantined=moved,
    )


def quarantine(path: Path, actual: str, name: str | None = None) -> Path:
    """Move a bad file to `<its dir>/quarantine/<name>.<digest12>.bad`."""
    target = path.parent / "quarantine" / f"{name or path.name}.{actual[:12]}.bad"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target
