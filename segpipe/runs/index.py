"""The runs under WORK read back from their directories: what `segpipe runs` lists and `segpipe runs show` prints.

Only JSON and CSV are read (no TensorFlow, no Prefect), and nothing is written. A run directory
(`segpipe.training.run_dir`) holds `config.json` and `lineage.json` from its start, `history.csv` as epochs
complete, `train_summary.json` once training is complete, and the metrics `segpipe run` (`metrics.json`) or
`segpipe evaluate` (`metrics-<dataset key>-<split>.json`) wrote beside its model. The champion is the
run whose id `WORK/models/champion/lineage.json` names (`segpipe.runs.promotion`); earlier champions are kept
under `WORK/models/history/<promoted at>-<run id>/`.

Epochs: the files keep Keras' 0-based index (`best_epoch` in `train_summary.json`); a `RunRecord` says
`best_at_epoch`, 1-based, as every line a person reads does (`epoch 30/30`).
"""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segpipe.layout import WorkDir

# the names `segpipe.training.run_dir` gives them (not imported from there: it loads TensorFlow)
CONFIG_FILE, LINEAGE_FILE, SUMMARY_FILE = "config.json", "lineage.json", "train_summary.json"
HISTORY_FILE, BEST_FILE = "history.csv", "best.json"
PIPELINE_METRICS = "metrics.json"


class UnknownRunError(LookupError):
    """No run (or more than one) answers to the id given; the message lists the nearby ids."""


@dataclass(frozen=True)
class RunRecord:
    """One run as `segpipe runs` lists it. Scores are None where the run has none (yet)."""

    run_id: str
    run_dir: str
    model: str  # the model name, with its encoder: "deeplabv3plus+mobilenetv2"
    preset: str | None  # the preset its model and train sections come from (`nearest_preset`)
    preset_changes: list[str]  # the fields that differ from that preset
    dataset_key: str | None
    complete: bool  # train_summary.json written
    epochs_completed: int
    epochs_planned: int | None
    images_seen: int | None
    best_val_mean_iou: float | None
    best_at_epoch: int | None  # 1-based
    eval_split: str | None
    eval_mean_iou: float | None
    eval_foreground_iou: float | None
    eval_metrics_path: str | None
    champion: bool
    former_champion: bool
    started_at: str | None
    finished_at: str | None

    @property
    def when(self) -> str | None:
        return self.finished_at or self.started_at

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or not a JSON object (a run being written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _history_epochs(path: Path) -> int:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return sum(1 for row in csv.DictReader(f) if row.get("epoch") not in (None, ""))
    except OSError:
        return 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _run_dirs(work: WorkDir) -> list[Path]:
    """Every run directory: one with a lineage.json or config.json (training started there)."""
    if not work.runs.is_dir():
        return []
    return sorted(d for d in work.runs.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and ((d / LINEAGE_FILE).is_file() or (d / CONFIG_FILE).is_file()))


def champion_run_id(work: WorkDir) -> str | None:
    """The run id the champion's lineage names, or None without a champion."""
    lineage = _read_json(work.champion / "lineage.json")
    if lineage is None or not (work.champion / "model.keras").is_file():
        return None
    return lineage.get("run_id")


def former_champion_run_ids(work: WorkDir) -> set[str]:
    """Run ids of the champions replaced since (`models/history/*/lineage.json`)."""
    history = work.champion.parent / "history"
    found = set()
    if history.is_dir():
        for d in history.iterdir():
            lineage = _read_json(d / "lineage.json") if d.is_dir() else None
            if lineage and lineage.get("run_id"):
                found.add(lineage["run_id"])
    return found


def evaluation_metrics(run_dir: Path, dataset_key: str | None) -> tuple[Path, dict[str, Any]] | None:
    """The run's headline evaluation: `metrics.json` (the pipeline's), else the newest
    `metrics-<its dataset key>-*.json` (`segpipe evaluate` on its own dataset), else the newest `metrics-*.json`."""
    pipeline = run_dir / PIPELINE_METRICS
    candidates = [pipeline] if pipeline.is_file() else []
    others = sorted(run_dir.glob("metrics-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates += [p for p in others if dataset_key and p.name.startswith(f"metrics-{dataset_key}-")]
    candidates += others
    for path in candidates:
        metrics = _read_json(path)
        if metrics is not None and "mean_iou" in metrics:
            return path, metrics
    return None


def _model_label(config: dict[str, Any], lineage: dict[str, Any]) -> str:
    model = config.get("model") or (lineage.get("identity") or {}).get("model") or {}
    name = model.get("name") or "?"
    return f"{name}+{model['encoder']}" if model.get("encoder") else name


def _flat(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{k}": json.dumps(v, sort_keys=True) for k, v in values.items()}


def nearest_preset(config: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(the preset whose model and train sections differ least from `config`'s, the dotted fields that differ).

    The name the config records wins; a run's config.json records none (the train task rebuilds the
    config from its sections), so the presets are compared. None when no preset shares the model name.
    """
    from segpipe.config import build_config
    from segpipe.config.presets import PRESETS

    given = {**_flat("model", config.get("model") or {}), **_flat("train", config.get("train") or {})}
    names = [config["preset"]] if config.get("preset") in PRESETS else list(PRESETS)
    best: tuple[str | None, list[str]] = (None, [])
    for name in names:
        try:
            preset = build_config(name, {"model.name": (config.get("model") or {}).get("name")}).model_dump(mode="json")
        except ValueError:  # a model this preset cannot take
            continue
        if preset["model"]["name"] != (config.get("model") or {}).get("name"):
            continue
        wanted = {**_flat("model", preset["model"]), **_flat("train", preset["train"])}
        changed = sorted(k for k in given.keys() | wanted.keys() if given.get(k) != wanted.get(k))
        if best[0] is None or len(changed) < len(best[1]):
            best = (name, changed)
    return best


def run_record(run_dir: Path, champion: str | None = None, former: frozenset[str] | set[str] = frozenset()) -> RunRecord:
    """What `run_dir` holds, as a `RunRecord`."""
    config = _read_json(run_dir / CONFIG_FILE) or {}
    lineage = _read_json(run_dir / LINEAGE_FILE) or {}
    summary = _read_json(run_dir / SUMMARY_FILE)
    plan = lineage.get("plan") or {}
    dataset_key = (summary or {}).get("dataset_key") or lineage.get("dataset_key")
    if summary is not None:
        epochs = int(summary.get("epochs_completed", 0))
        images = summary.get("images_seen")
        best_value, best_epoch = summary.get("best_val_mean_iou"), summary.get("best_epoch")
    else:  # unfinished: the epochs in history.csv, the best so far in best.json ({"epoch", "monitor", "value"})
        epochs = _history_epochs(run_dir / HISTORY_FILE)
        images = epochs * plan["images_per_epoch"] if "images_per_epoch" in plan else None
        best = _read_json(run_dir / BEST_FILE) or {}
        best_value, best_epoch = best.get("value"), best.get("epoch")
    scored = evaluation_metrics(run_dir, dataset_key)
    metrics = scored[1] if scored else {}
    return RunRecord(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        model=_model_label(config, lineage),
        **dict(zip(("preset", "preset_changes"), nearest_preset(config))),
        dataset_key=dataset_key,
        complete=summary is not None,
        epochs_completed=epochs,
        epochs_planned=(summary or {}).get("epochs_planned", plan.get("epochs")),
        images_seen=images,
        best_val_mean_iou=_float(best_value),
        best_at_epoch=best_epoch + 1 if isinstance(best_epoch, int) and not isinstance(best_epoch, bool) else None,
        eval_split=metrics.get("split"),
        eval_mean_iou=_float(metrics.get("mean_iou")),
        eval_foreground_iou=_float(metrics.get("foreground_iou")),
        eval_metrics_path=str(scored[0]) if scored else None,
        champion=champion is not None and champion == run_dir.name,
        former_champion=run_dir.name in former and champion != run_dir.name,
        started_at=lineage.get("started_at"),
        finished_at=(summary or {}).get("finished_at"),
    )


def list_runs(work: WorkDir | str | Path | None = None) -> list[RunRecord]:
    """Every run under WORK/runs, oldest first (by when it finished, or started when unfinished)."""
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    champion, former = champion_run_id(work), former_champion_run_ids(work)
    records = [run_record(d, champion, former) for d in _run_dirs(work)]
    return sorted(records, key=lambda r: (r.when or "", r.run_id))


def find_run(work: WorkDir | str | Path | None, run_id: str) -> Path:
    """The directory of run `run_id` (or of the one run whose id starts with it).

    `UnknownRunError` otherwise, naming the nearby ids (or every run when there are few).
    """
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    ids = [d.name for d in _run_dirs(work)]
    if run_id in ids:
        return work.run(run_id)
    starting = [i for i in ids if i.startswith(run_id)] if run_id else []
    if len(starting) == 1:
        return work.run(starting[0])
    if len(starting) > 1:
        raise UnknownRunError(f"run id {run_id!r} is ambiguous: it starts {', '.join(starting)}")
    if not ids:
        raise UnknownRunError(f"no run {run_id!r}: there is no run under {work.runs}")
    near = difflib.get_close_matches(run_id, ids, n=5, cutoff=0.5) or (ids if len(ids) <= 5 else [])
    hint = f"; nearby: {', '.join(near)}" if near else f"; `segpipe runs --work-dir {work.root}` lists all {len(ids)}"
    raise UnknownRunError(f"no run {run_id!r} under {work.runs}{hint}")


def run_details(work: WorkDir | str | Path | None, run_id: str) -> dict[str, Any]:
    """Everything `segpipe runs show` prints: the record, the configuration, the lineage, the training
    summary (its epochs 1-based under `best_at_epoch`), the evaluation metrics and the champion's decision."""
    work = work if isinstance(work, WorkDir) else WorkDir.at(work)
    run_dir = find_run(work, run_id)
    record = run_record(run_dir, champion_run_id(work), former_champion_run_ids(work))
    scored = evaluation_metrics(run_dir, record.dataset_key)
    details: dict[str, Any] = {
        "run": record.to_json(),
        "config": _read_json(run_dir / CONFIG_FILE),
        "lineage": _read_json(run_dir / LINEAGE_FILE),
        "summary": _read_json(run_dir / SUMMARY_FILE),
        "metrics": scored[1] if scored else None,
    }
    if record.champion:
        details["champion"] = {"dir": str(work.champion), "decision": _read_json(work.champion / "decision.json"),
                               "promoted_at": (_read_json(work.champion / "lineage.json") or {}).get("promoted_at")}
    return details
