"""Flow `export-flow` (`export_flow`): export saved model(s) for serving and check their parity."""

from __future__ import annotations

from typing import Any

from prefect import flow

from segpipe_app.tasks.export import export_task


@flow(name="export-flow")
def export_flow(
    model_paths: list[str], out_dir: str, dataset_dir: str, split: str = "test",
    formats: list[str] | None = None, tta_flip: bool = False,
) -> dict[str, Any]:
    return export_task(model_paths, out_dir, dataset_dir, split, formats or ["saved_model", "litert", "onnx"], tta_flip)
