"""Dataset identity: the content key of a prepared dataset, and the code each data stage depends on.

The module lists below are the one record of which library modules make up each
data stage: the dataset key digests `CODE_MODULES`, and the task layer's cache
keys import these lists rather than naming modules themselves.
"""

from __future__ import annotations

from typing import Any

from segpipe.fsutil import digest_json, source_digest

DOWNLOAD_MODULES: tuple[str, ...] = (
    "segpipe.data.download", "segpipe.data.sources", "segpipe.data.checksums", "segpipe.data.fetch",
    "segpipe.data.progress", "segpipe.data.download_errors",
)
"""The download (and verify) stage."""

VALIDATE_MODULES: tuple[str, ...] = (
    "segpipe.data.validate", "segpipe.data.lists", "segpipe.data.images", "segpipe.data.names",
)
"""Validation: which pairs decode, and what is known about each."""

CODE_MODULES: tuple[str, ...] = (*VALIDATE_MODULES, "segpipe.data.split", "segpipe.data.tfrecords", "segpipe.data.spec")
"""The library code that decides a dataset's content (part of the dataset key)."""

DATASET_MODULES: tuple[str, ...] = (*CODE_MODULES, "segpipe.data.dataset")
"""Everything the stages that write a dataset (split, shards, manifest) depend on, the key itself included."""

INPUT_MODULES: tuple[str, ...] = (
    "segpipe.data.input", "segpipe.data.augment", "segpipe.data.augment_knobs", "segpipe.data.tfrecords",
    "segpipe.data.spec",
)
"""The input pipeline that training and evaluation read a dataset through."""


def data_code_digest() -> str:
    """Digest of the library code that decides a dataset's content."""
    return source_digest(*CODE_MODULES)


def dataset_key(archives: dict[str, str], params: dict[str, Any]) -> str:
    """16 hex digits from the archive digests, the content parameters and the data code.

    Same archives + same parameters + same code = same key, on any machine and
    in any directory.
    """
    return digest_json({"archives": archives, "params": params, "code": data_code_digest()})[:16]
