"""Dataset identity: the content key of a prepared dataset, and the entry modules of the data stages.

A stage's code is named by its entry modules only; `segpipe.codekeys` reads the rest from the import
graph (every segpipe module they can import), so a module split off another joins the key by itself.
The dataset key covers `CONTENT_ENTRY`'s code; the task layer's cache keys name these entries.
"""

from __future__ import annotations

from typing import Any

from segpipe.codekeys import code_key
from segpipe.fsutil import digest_json

DOWNLOAD_ENTRY: tuple[str, ...] = ("segpipe.data.download",)
"""The download (and verify) stage."""

VALIDATE_ENTRY: tuple[str, ...] = ("segpipe.data.validate",)
"""Validation: which pairs decode, and what is known about each."""

CONTENT_ENTRY: tuple[str, ...] = (*VALIDATE_ENTRY, "segpipe.data.split", "segpipe.data.tfrecords")
"""The library code that decides a dataset's content (part of the dataset key)."""

DATASET_ENTRY: tuple[str, ...] = (*CONTENT_ENTRY, "segpipe.data.dataset")
"""The stages that write a dataset (split, shards, manifest), the key itself included."""


def data_code_digest() -> str:
    """Digest of the library code that decides a dataset's content."""
    return code_key(CONTENT_ENTRY)


def dataset_key(archives: dict[str, str], params: dict[str, Any]) -> str:
    """16 hex digits from the archive digests, the content parameters and the data code.

    Same archives + same parameters + same code = same key, on any machine and
    in any directory.
    """
    return digest_json({"archives": archives, "params": params, "code": data_code_digest()})[:16]
