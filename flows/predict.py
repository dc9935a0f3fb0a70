"""Flows `predict-flow` (`predict_flow`): run saved or exported model(s) over image files and directories, and
`champion-predict-flow` (`champion_predict_flow`, deployment `champion-predict`): the same with the champion's
served export (the highest version under WORK/models/serving/pets/)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from segpipe.config import EvalConfig
from segpipe_app.tasks.predict import champion_export_task, predict_task


@flow(name="predict-flow")
def predict_flow(
    model_paths: list[str], inputs: list[str], out_dir: str, eval_config: EvalConfig = EvalConfig()
) -> dict[str, Any]:
    return predict_task(model_paths, inputs, out_dir, eval_config)


@flow(name="champion-predict-flow")
def champion_predict_flow(
    inputs: list[str], out_dir: str, work_dir: str | None = None, eval_config: EvalConfig = EvalConfig()
) -> dict[str, Any]:
    return predict_task([champion_export_task(work_dir)], inputs, out_dir, eval_config)
