"""Run identity, importable without TensorFlow: same data + config + code = same run directory."""

from __future__ import annotations

from typing import Any

from segpipe.config import PipelineConfig
from segpipe.fsutil import digest_json


def run_identity(cfg: PipelineConfig) -> dict[str, Any]:
    """The parts of the config that change what training produces; a weights file by its sha256, not its path."""
    return {"model": cfg.model.cache_content(), "train": cfg.train.model_dump(mode="json")}


def run_id_for(cfg: PipelineConfig, dataset_key: str, code: str) -> str:
    """`<model>-<12 hex>` from dataset key, model and train config, and code version."""
    if not dataset_key:
        raise ValueError("dataset_key must be a non-empty string")
    digest = digest_json({"dataset_key": dataset_key, **run_identity(cfg), "code": code})
    return f"{cfg.model.name}-{digest[:12]}"
