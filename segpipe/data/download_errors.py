"""The download stage's errors, and which of them a retry may fix (`is_transient`)."""

from __future__ import annotations

from pathlib import Path

SOURCE_HINT = (
    "check your network or point --source at a mirror or a local directory "
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
    import requests  # here, not at the top: importing the download stage need not import requests
    import urllib3

    return isinstance(
        exc,
        (TransientDownloadError, requests.ConnectionError, requests.Timeout,
         requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError),
    )


def combined_error(name: str, errors: list[tuple[str, Exception]]) -> Exception:
    """One error for every location of a source having failed: transient if any failure was."""
    tried = ", ".join(url for url, _ in errors)
    last = errors[-1][1]
    if any(isinstance(e, TransientDownloadError) for _, e in errors):
        return TransientDownloadError(
            f"could not download {name}; tried {tried}; last error: {last}; {SOURCE_HINT}"
        )
    if isinstance(last, ChecksumMismatchError):
        return last
    return SourceError(f"{name} is not available from any location (tried {tried}); last error: {last}")
