"""Run identity, importable without TensorFlow: same data + config + code = same run directory.

The code is the train stage's: every segpipe module `segpipe.training` can import (`TRAIN_ENTRY`, read
from the import graph by `segpipe.codekeys`), so the run id and the train task's cache key cover the
same source.
"""

from __future__ import annotations

from typing import Any

from segpipe.codekeys import code_key
from segpipe.config import PipelineConfig
from segpipe.fsutil import digest_json

TRAIN_ENTRY: tuple[str, ...] = ("segpipe.training",)
"""The train stage's entry module: its code key covers every segpipe module this can import."""


def train_code_key() -> str:
    """The code key of the train stage (`segpipe.codekeys.code_key(TRAIN_ENTRY)`)."""
    return code_key(TRAIN_ENTRY)


def run_identity(cfg: PipelineConfig) -> dict[str, Any]:
    """The parts of the config that change what training produces; a weights file by its sha256, not its path."""
    return {"model": cfg.model.cache_content(), "train": cfg.train.model_dump(mode="json")}


def run_id_for(cfg: PipelineConfig, dataset_key: str, code: str | None = None) -> str:
    """`<model>-<12 hex>` from dataset key, model and train config, and code (default: `train_code_key()`)."""
    if not dataset_key:
        raise ValueError("dataset_key must be a non-empty string")
    if code is None:
        code = train_code_key()
    digest = digest_json({"dataset_key": dataset_key, **run_identity(cfg), "code": code})
    return f"{cfg.model.name}-{digest[:12]}"
