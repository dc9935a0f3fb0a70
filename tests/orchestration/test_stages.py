"""`segpipe.stages`: every stage called as a plain function, as from a notebook, with no Prefect loaded.

The stages run in a child interpreter (a fresh `sys.modules`) that prints what they returned as JSON;
the test checks the values against the library's own identities (`dataset_key`, `run_id_for`) and against
the `prepare-data` flow run on the same archives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.faults import REPO, child_env
from tests.synthetic import make_pets_archives, make_pets_tree

OVERRIDES = {"data": {"val_fraction": 0.25}}


def test_the_notebook_train_takes_every_hook_the_train_task_passes():
    """`segpipe.stages.train` offers each keyword of `train_run` but the run directory (the stage computes it), so a
    notebook gets the epoch, resume and phase hooks the `train` task logs from; this fails when one is added
    to `train_run` and not here."""
    import inspect

    from segpipe import stages
    from segpipe.runs.naming import train_run

    def keywords(fn) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}

    assert keywords(stages.train) == keywords(train_run) - {"run_dir"}
    assert {"on_epoch_end", "on_resume", "on_phase"} <= keywords(stages.train)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A directory holding synthetic images.tar.gz, annotations.tar.gz and SHA256SUMS, and what it holds."""
    root = tmp_path_factory.mktemp("stages")
    digests = make_pets_archives(root / "src")
    info = make_pets_tree(root / "tree")  # same defaults, same seed: the same content
    return {"dir": root / "src", "digests": digests, "info": info}


def run_child(script: str, *args: str, timeout: float = 600) -> dict:
    """Run `script` in a fresh interpreter; the JSON of its last line. It fails when Prefect got imported."""
    code = textwrap.dedent(script) + textwrap.dedent("""
        import json, sys
        out["prefect_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "prefect")
        print(json.dumps(out, default=str))
    """)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("prefect_loaded") == []
    return out


PREPARE = """
    import sys
    from segpipe.config import build_config
    from segpipe.stages import prepare

    cfg = build_config("tiny", json.loads(sys.argv[3]))
    ref = prepare(sys.argv[1], sys.argv[2], cfg.data, progress=False)
    again = prepare(sys.argv[1], sys.argv[2], cfg.data, progress=False)
    out = {"ref": ref.__dict__, "again": again.__dict__, "params": cfg.data.content_params()}
"""
PREPARE = "import json\n" + textwrap.dedent(PREPARE)


def test_prepare_is_the_data_stage_without_prefect(source, tmp_path):
    from segpipe.data.dataset import dataset_key
    from segpipe.data.tfrecords import verify_dataset

    work = tmp_path / "work"
    out = run_child(PREPARE, str(source["dir"]), str(work), json.dumps(OVERRIDES))
    ref = out["ref"]
    assert ref["dataset_key"] == dataset_key(source["digests"], out["params"])
    assert Path(ref["path"]) == work / "datasets" / ref["dataset_key"]
    assert verify_dataset(ref["path"]) == []
    manifest = json.loads((Path(ref["path"]) / "manifest.json").read_text())
    assert manifest["dataset_key"] == ref["dataset_key"] and manifest["archives"] == source["digests"]
    assert sum(ref["num_examples"].values()) == manifest["num_examples"] == len(source["info"].valid)
    assert ref["num_examples"]["train"] > 0 and ref["num_examples"]["val"] > 0
    assert {"validation.json", "split.json"} <= {p.name for p in Path(ref["path"]).iterdir()}
    assert out["again"] == ref  # the complete dataset is reused
    assert sorted(p.parent.name for p in (work / "extracted").glob("*/.complete")) == sorted(source["digests"].values())


@pytest.mark.slow
def test_prepare_gives_the_prepare_flows_dataset_key(prefect_api, source, tmp_path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe.config import build_config
    from segpipe_app.flows.prepare_data import prepare_data_flow

    library = run_child(PREPARE, str(source["dir"]), str(tmp_path / "library"), json.dumps(OVERRIDES))["ref"]
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "results")}):
        flow = prepare_data_flow(config=build_config("tiny", {**OVERRIDES, "data.source": str(source["dir"])}),
                                 work_dir=str(tmp_path / "flow"))
    assert flow.dataset_key == library["dataset_key"]
    assert flow.num_examples == library["num_examples"]
    ids = [json.loads((Path(p) / "split.json").read_text())["ids"] for p in (flow.path, library["path"])]
    assert ids[0] == ids[1]


NOTEBOOK = """
    import json, sys
    from pathlib import Path
    from segpipe.config import build_config
    from segpipe.stages import evaluate, export, gallery, predict, prepare, train

    src, work = sys.argv[1], Path(sys.argv[2])
    cfg = build_config("tiny", {**json.loads(sys.argv[3]), "train": {"budget_images": 8}})
    ds = prepare(src, work, cfg.data, progress=False)
    run = train(cfg, ds, work)
    scores = evaluate([run.model_path], ds, cfg.eval, out_path=Path(run.run_dir) / "metrics.json")
    index = gallery([run.model_path], ds, cfg.eval, Path(run.run_dir) / "gallery", scores=scores)
    images = sorted((work / "extracted").glob("*/images/*.jpg"))[:3]
    report = predict([run.model_path], images, work / "predictions")
    exported = export([run.model_path], work / "export", ds, cfg.eval, formats=["saved_model"])
    out = {"export": {"out_dir": str(exported.out_dir), "parity": [r.to_dict() for r in exported.parity]},"dataset": ds.__dict__, "run": run.__dict__, "metrics": scores.metrics, "per_image": scores.per_image,
           "index": index, "written": report.written, "failed": report.failed,
           "inputs": [str(p) for p in images], "config": cfg.model_dump(mode="json")}
"""


@pytest.mark.slow
def test_a_notebook_runs_every_stage_without_prefect(source, tmp_path):
    from segpipe.config import PipelineConfig
    from segpipe.runs.naming import run_id_for

    work = tmp_path / "work"
    out = run_child(NOTEBOOK, str(source["dir"]), str(work), json.dumps(OVERRIDES))
    ds, run, metrics = out["dataset"], out["run"], out["metrics"]
    cfg = PipelineConfig.model_validate(out["config"])

    assert run["run_id"] == run_id_for(cfg, ds["dataset_key"]) and run["dataset_key"] == ds["dataset_key"]
    assert Path(run["run_dir"]) == work / "runs" / run["run_id"]
    assert {"train_summary.json", "model.keras", "metrics.json"} <= {p.name for p in Path(run["run_dir"]).iterdir()}
    assert run["epochs_completed"] >= 1 and 0.0 <= run["best_val_mean_iou"] <= 1.0

    assert metrics["split"] == cfg.eval.split and metrics["dataset_key"] == ds["dataset_key"]
    assert metrics["n_images"] == ds["num_examples"][cfg.eval.split] == len(out["per_image"])
    for name in ("mean_iou", "pixel_accuracy", "foreground_iou"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert json.loads((Path(run["run_dir"]) / "metrics.json").read_text())["mean_iou"] == metrics["mean_iou"]

    assert Path(out["index"]) == Path(run["run_dir"]) / "gallery" / "index.html" and Path(out["index"]).is_file()

    assert out["failed"] == [] and [w["input"] for w in out["written"]] == out["inputs"]
    for w in out["written"]:
        assert Path(w["mask"]).is_file() and Path(w["overlay"]).is_file()

    # export: the eval section's split and flip, every artifact within its parity bound, installed whole
    assert out["export"]["out_dir"] == str(work / "export")
    assert (work / "export" / "saved_model.pb").is_file() and (work / "export" / "export.json").is_file()
    assert [r["artifact"] for r in out["export"]["parity"]] == ["saved_model"]
    assert all(r["passed"] for r in out["export"]["parity"])
    contract = json.loads((work / "export" / "export.json").read_text())["contract"]
    assert contract["tta_flip"] == cfg.eval.tta_flip
