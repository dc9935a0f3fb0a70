"""`segpipe runs`, `segpipe runs show RUN` and `segpipe datasets`: tables for a person, JSON for scripts, read
from real run directories (a tiny run trained, evaluated and promoted; another interrupted after its first
epoch), without loading TensorFlow or Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segpipe_app.cli.main import main
from segpipe.config import build_config
from segpipe.fsutil import read_json
from segpipe.layout import WorkDir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "0123456789abcdef"


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from segpipe.evaluation.evaluate import evaluate, write_metrics
    from segpipe.runs.promotion import decide, promote
    from segpipe.training import run_id_for, train
    from tests.synthetic import write_tiny_dataset

    root = WorkDir(tmp_path_factory.mktemp("work"))
    dataset = write_tiny_dataset(root.dataset(KEY), {"train": 8, "val": 4, "test": 4}, key=KEY)
    done_cfg = build_config("tiny", {"train": {"epochs": 2}})
    done = root.run(run_id_for(done_cfg, KEY, "test"))
    train(done_cfg, dataset, done, verbose=0)
    metrics = evaluate([done / "model.keras"], dataset, "test", batch_size=4).metrics
    write_metrics(metrics, done / "metrics.json")
    promote(done / "model.keras", metrics, {"run_id": done.name, "run_dir": str(done)},
            decide(metrics, None, floor=0.0), root.champion)

    cut_cfg = build_config("tiny", {"train": {"epochs": 3, "seed": 7}})
    cut = root.run(run_id_for(cut_cfg, KEY, "test"))

    def stop_after_first_epoch(epoch: int, logs: dict) -> None:
        raise Interrupt("killed after the first epoch")

    with pytest.raises(Interrupt):
        train(cut_cfg, dataset, cut, on_epoch_end=stop_after_first_epoch, verbose=0)
    return {"root": root, "done": done, "cut": cut, "metrics": metrics}


def segpipe(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_runs_table(work, capsys):
    status, out, err = segpipe(capsys, "runs", "--work-dir", str(work["root"].root))
    assert status == 0 and err == ""
    header, rule, *rows = out.splitlines()
    assert header.split() == ["RUN", "MODEL", "PRESET", "DATASET", "IMAGES", "BEST", "VAL", "mIoU", "EVAL", "mIoU",
                              "EVAL", "FG", "IoU", "CHAMPION", "FINISHED", "(UTC)"]
    assert set(rule.replace(" ", "")) == {"-"}
    by_id = {row.split()[0]: row for row in rows}
    assert set(by_id) == {work["done"].name, work["cut"].name}

    summary = read_json(work["done"] / "train_summary.json")
    metrics = work["metrics"]
    done = by_id[work["done"].name].split()
    assert done[1:5] == ["unet", "tiny*", KEY[:8], f"{summary['images_seen']:,}"]  # *: tiny, changed
    assert done[5:7] == [f"{summary['best_val_mean_iou']:.4g}", f"@{summary['best_epoch'] + 1}"]  # 1-based
    assert done[7:10] == [f"{metrics['mean_iou']:.4g}", "(test)", f"{metrics['foreground_iou']:.4g}"]
    assert done[10] == "champion"
    assert done[11] == summary["finished_at"][:10]

    best = read_json(work["cut"] / "best.json")
    cut = by_id[work["cut"].name]
    assert f"{best['value']:.4g} @{best['epoch'] + 1}" in cut
    assert "unfinished, epoch 1/3" in cut and "champion" not in cut


def test_runs_json_is_what_the_files_say(work, capsys):
    status, out, _ = segpipe(capsys, "runs", "--work-dir", str(work["root"].root), "--json")
    assert status == 0
    runs = {r["run_id"]: r for r in json.loads(out)}
    done, cut = runs[work["done"].name], runs[work["cut"].name]
    summary = read_json(work["done"] / "train_summary.json")
    assert (done["complete"], done["champion"], done["dataset_key"]) == (True, True, KEY)
    assert (done["preset"], done["preset_changes"]) == ("tiny", ["train.epochs"])  # the fixture's one change
    assert (cut["preset"], cut["preset_changes"]) == ("tiny", ["train.epochs", "train.seed"])
    assert (done["best_val_mean_iou"], done["best_at_epoch"]) == (summary["best_val_mean_iou"], summary["best_epoch"] + 1)
    assert (done["images_seen"], done["epochs_completed"]) == (summary["images_seen"], summary["epochs_completed"])
    assert (done["eval_mean_iou"], done["eval_foreground_iou"], done["eval_split"]) == (
        work["metrics"]["mean_iou"], work["metrics"]["foreground_iou"], "test")
    plan = read_json(work["cut"] / "lineage.json")["plan"]
    assert (cut["complete"], cut["champion"], cut["epochs_completed"], cut["epochs_planned"]) == (False, False, 1, 3)
    assert cut["images_seen"] == plan["images_per_epoch"]
    assert cut["eval_mean_iou"] is None and cut["finished_at"] is None


def test_runs_show_text_and_json(work, capsys):
    done = work["done"]
    status, out, _ = segpipe(capsys, "runs", "show", done.name[:10], "--work-dir", str(work["root"].root))
    assert status == 0
    summary = read_json(done / "train_summary.json")
    assert out.startswith(f"run {done.name}  (complete)")
    assert f"best val mIoU    {summary['best_val_mean_iou']:.4g} at epoch {summary['best_epoch'] + 1}" in out
    assert f"mean IoU         {work['metrics']['mean_iou']:.4g}" in out
    assert "champion         champion" in out
    assert "model            unet  (preset tiny, changed: train.epochs)" in out
    assert '"name": "unet"' in out  # the configuration
    assert "code_version" in out  # the lineage

    status, out, _ = segpipe(capsys, "runs", "--work-dir", str(work["root"].root), "show", done.name, "--json")
    details = json.loads(out)
    assert details["config"] == read_json(done / "config.json")
    assert details["lineage"] == read_json(done / "lineage.json")
    assert details["summary"] == summary
    assert details["metrics"] == work["metrics"]
    assert details["run"]["best_at_epoch"] == summary["best_epoch"] + 1
    assert details["champion"]["decision"]["promote"] is True


def test_unknown_or_ambiguous_run_id_names_the_nearby_ones(work, capsys):
    root = str(work["root"].root)
    wrong = work["done"].name[:-1] + ("0" if work["done"].name[-1] != "0" else "1")
    status, out, err = segpipe(capsys, "runs", "show", wrong, "--work-dir", root)
    assert status == 2 and out == ""
    assert f"no run {wrong!r} under {work['root'].runs}; nearby: " in err and work["done"].name in err
    status, _, err = segpipe(capsys, "runs", "show", "unet-", "--work-dir", root)
    assert status == 2 and "is ambiguous" in err and work["done"].name in err and work["cut"].name in err


def test_no_runs_and_no_datasets(tmp_path, capsys):
    assert segpipe(capsys, "runs", "--work-dir", str(tmp_path)) == (0, f"no run under {tmp_path / 'runs'}\n", "")
    assert segpipe(capsys, "runs", "--work-dir", str(tmp_path), "--json") == (0, "[]\n", "")
    assert segpipe(capsys, "datasets", "--work-dir", str(tmp_path), "--json") == (0, "[]\n", "")


def test_datasets_table_and_json(work, capsys):
    status, out, _ = segpipe(capsys, "datasets", "--work-dir", str(work["root"].root))
    assert status == 0 and "{" not in out  # a table, not a Python dict
    header, _, row = out.splitlines()
    assert header.split() == ["DATASET", "CREATED", "(UTC)", "SPLIT", "TRAIN", "VAL", "TEST", "SKIPPED"]
    assert row.split() == [KEY, "-", "-", "8", "4", "4", "-"]  # a manifest without created_at, split or validation
    status, out, _ = segpipe(capsys, "datasets", "--work-dir", str(work["root"].root), "--json")
    assert json.loads(out)[0]["num_examples"] == {"train": 8, "val": 4, "test": 4}


def test_runs_loads_neither_tensorflow_nor_prefect(work):
    code = ("import sys; from segpipe_app.cli.main import main; rc = main(['runs', '--work-dir', sys.argv[1]]);"
            "assert 'tensorflow' not in sys.modules and 'prefect' not in sys.modules; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(work["root"].root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert work["done"].name in proc.stdout and proc.stderr == ""


def test_file_names_match_the_run_directory_layout():
    from segpipe.runs import index as run_index
    from segpipe.training import run_dir

    assert (run_index.CONFIG_FILE, run_index.LINEAGE_FILE, run_index.SUMMARY_FILE, run_index.HISTORY_FILE,
            run_index.BEST_FILE) == (run_dir.CONFIG_FILE, run_dir.LINEAGE_FILE, run_dir.SUMMARY_FILE,
                                     run_dir.HISTORY_FILE, run_dir.BEST_FILE)
