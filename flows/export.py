"""Flow `export-flow` (`export_flow`): export saved model(s) for serving and check their parity."""

from __future__ import annotations

from typing import Any

from prefect import flow

from segpipe.config import EvalConfig
from segpipe.export.formats import FORMATS
from segpipe_app.tasks.export import export_task


@flow(name="export-flow")
def export_flow(
    model_paths: list[str], out_dir: str, dataset_dir: str, eval_config: EvalConfig = EvalConfig(),
    formats: list[str] | None = None,
) -> dict[str, Any]:
    return export_task(model_paths, out_dir, dataset_dir, eval_config, formats or list(FORMATS))
