"""Dataset identity: the content key of a prepared dataset."""

from __future__ import annotations

from typing import Any

from segpipe.fsutil import digest_json, source_digest


def data_code_digest() -> str:
    """Digest of the library code that decides a dataset's content."""
    return source_digest("segpipe.data.validate", "segpipe.data.split", "segpipe.data.tfrecords", "segpipe.data.spec")


def dataset_key(archives: dict[str, str], params: dict[str, Any]) -> str:
    """16 hex digits from the archive digests, the content parameters and the data code.

    Same archives + same parameters + same code = same key, on any machine and
    in any directory.
    """
    return digest_json({"archives": archives, "params": params, "code": data_code_digest()})[:16]
