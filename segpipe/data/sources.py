"""Where the archives live: parse a `--source` string into a `Source`.

- `"official"`: the Oxford VGG site, then its `thor` mirror (tried in order);
- an `http(s)://` base URL (the archive names are appended to it);
- a `file://` URL or a plain path to a local directory holding the archives.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from segpipe.data import ARCHIVES
from segpipe.data.download_errors import SourceError

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
_EXPECTED_SOURCE = (
    "expected 'official', an http(s) base URL, a file:// URL or a directory "
    "holding images.tar.gz and annotations.tar.gz"
)


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


def require_archives(source: Source, names: Iterable[str] = ARCHIVES) -> None:
    """A local source must hold the archives in `names` (both, before a pipeline starts on it; `resolve_source`
    alone accepts a directory holding either, for a download of one archive); a remote one is checked when it is
    fetched."""
    if source.kind != "local":
        return
    directory = Path(source.locations[0])
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise SourceError(f"source directory {directory} has no {' and no '.join(missing)}; {_EXPECTED_SOURCE}")
