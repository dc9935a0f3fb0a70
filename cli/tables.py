"""What the listing commands print (`segpipe datasets`, `segpipe runs`, `segpipe runs show`): aligned text
tables, metrics to 4 significant digits, times to the minute, epochs 1-based. Plain Python: no Prefect,
no TensorFlow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

DASH = "-"


def metric(value: float | None) -> str:
    """`0.7417`: 4 significant digits (`0.01234`, `12.35`); a dash for no value."""
    return DASH if value is None else f"{value:.4g}"


def when(iso: str | None) -> str:
    """`2025-01-31 14:05` (UTC, as recorded) from an ISO time; a dash for none."""
    if not iso:
        return DASH
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def count(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> str:
    """Columns aligned on the widest cell, two spaces apart; the columns numbered in `right` right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# --------------------------------------------------------------------------- datasets


def datasets_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One line per prepared dataset: key, when it was made, how it was split, examples per split."""
    splits = [s for s in ("train", "val", "test") if any(s in m.get("splits", {}) for _, m in rows)]
    splits += sorted({s for _, m in rows for s in m.get("splits", {})} - set(splits))
    headers = ["DATASET", "CREATED (UTC)", "SPLIT", *(s.upper() for s in splits), "SKIPPED"]
    body = []
    for key, manifest in rows:
        params = manifest.get("parameters", {})
        n = {s: v.get("num_examples") for s, v in manifest.get("splits", {}).items()}
        skipped = manifest.get("validation", {}).get("skipped")  # the validation counts
        body.append([key, when(manifest.get("created_at")), str(params.get("split", DASH)),
                     *(count(n.get(s)) for s in splits), count(skipped)])
    return table(headers, body, right=range(3, 4 + len(splits)))


def datasets_json(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    return json.dumps([
        {"dataset_key": key, "created_at": m.get("created_at"), "parameters": m.get("parameters", {}),
         "num_examples": {s: v.get("num_examples") for s, v in m.get("splits", {}).items()}}
        for key, m in rows
    ], indent=2)


# --------------------------------------------------------------------------- runs


def _champion(r: Any) -> str:
    return "champion" if r.champion else "former" if r.former_champion else ""


def runs_table(records: Sequence[Any]) -> str:
    """One line per run (`segpipe.runs.index.RunRecord`), oldest first."""
    headers = ["RUN", "MODEL", "PRESET", "DATASET", "IMAGES", "BEST VAL mIoU", "EVAL mIoU", "EVAL FG IoU",
               "CHAMPION", "FINISHED (UTC)"]
    body = []
    for r in records:
        best = metric(r.best_val_mean_iou)
        if r.best_at_epoch is not None:
            best += f" @{r.best_at_epoch}"
        finished = when(r.finished_at) if r.complete else f"unfinished, epoch {r.epochs_completed}/{r.epochs_planned or '?'}"
        preset = DASH if r.preset is None else r.preset + ("*" if r.preset_changes else "")
        body.append([r.run_id, r.model, preset, (r.dataset_key or DASH)[:8], count(r.images_seen), best,
                     metric(r.eval_mean_iou) + (f" ({r.eval_split})" if r.eval_split else ""),
                     metric(r.eval_foreground_iou), _champion(r), finished])
    return table(headers, body, right=(4,))


def run_text(details: dict[str, Any]) -> str:
    """`segpipe runs show`: the run, its scores, its lineage and its configuration, for a person."""
    r = details["run"]
    summary, lineage, metrics = details.get("summary") or {}, details.get("lineage") or {}, details.get("metrics")
    status = "complete" if r["complete"] else "unfinished"
    champion = "champion" if r["champion"] else "former champion" if r["former_champion"] else "no"
    lines = [
        f"run {r['run_id']}  ({status})",
        f"  directory        {r['run_dir']}",
        f"  model            {r['model']}" + (f"  (preset {r['preset']}" + (
            f", changed: {', '.join(r['preset_changes'])})" if r["preset_changes"] else ")") if r["preset"] else ""),
        f"  dataset          {r['dataset_key'] or DASH}",
        f"  champion         {champion}",
        f"  started          {when(r['started_at'])}",
        f"  finished         {when(r['finished_at'])}",
        "",
        "training",
        f"  epochs           {r['epochs_completed']}/{r['epochs_planned'] or '?'}"
        + (f"  (stopped: {summary['stop_reason']})" if summary.get("stop_reason", "completed") != "completed" else ""),
        f"  images seen      {count(r['images_seen'])}",
        f"  best val mIoU    {metric(r['best_val_mean_iou'])}"
        + (f" at epoch {r['best_at_epoch']}" if r["best_at_epoch"] is not None else ""),
    ]
    if summary.get("collapsed"):
        lines.append("  WARNING: the best model's predictions collapse to one class")
    lines += ["", "evaluation"]
    if metrics:
        lines += [
            f"  split            {metrics.get('split', DASH)} of dataset {metrics.get('dataset_key', DASH)}"
            f" ({count(metrics.get('n_images'))} images)",
            f"  mean IoU         {metric(metrics.get('mean_iou'))}",
            f"  foreground IoU   {metric(metrics.get('foreground_iou'))}",
            f"  pixel accuracy   {metric(metrics.get('pixel_accuracy'))}",
            f"  dice             {metric(metrics.get('dice'))}",
            f"  metrics file     {r['eval_metrics_path']}",
        ]
        lines += [f"  WARNING: {w}" for w in metrics.get("warnings", [])]
    else:
        lines.append("  not evaluated (`segpipe evaluate --model RUN_DIR/model.keras` scores it)")
    lines += ["", "lineage"]
    for key in ("dataset_dir", "dataset_manifest_sha256", "code_version", "seed", "encoder", "encoder_weights",
                "dtype_policy", "python", "tensorflow", "keras", "devices"):
        if key in lineage:
            value = lineage[key]
            lines.append(f"  {key:<24} {', '.join(value) if isinstance(value, list) else value}")
    for resumed in lineage.get("resumed_at", []):
        lines.append(f"  resumed                  {when(resumed.get('at'))} after epoch {resumed.get('from_epoch')}")
    if details.get("champion"):
        decision = (details["champion"].get("decision") or {}).get("reason")
        lines.append(f"  promoted                 {details['champion'].get('promoted_at')}: {decision}")
    lines += ["", "configuration"]
    lines += ["  " + line for line in json.dumps(details.get("config") or {}, indent=2).splitlines()]
    return "\n".join(lines)
