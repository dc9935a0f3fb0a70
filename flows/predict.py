"""Flow `predict-flow` (`predict_flow`): run saved model(s) over image files and directories."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.predict import predict_task


@flow(name="predict-flow")
def predict_flow(
    model_paths: list[str], inputs: list[str], out_dir: str, batch_size: int = 8, tta_flip: bool = False
) -> dict[str, Any]:
    return predict_task(model_paths, inputs, out_dir, batch_size, tta_flip)
