"""The promotion gate: a new model replaces the champion only when it is better, and only when its export
loads and keeps parity in a fresh process.

    WORK/models/champion/         model.keras, metrics.json, lineage.json, decision.json, decision.md
    WORK/models/serving/pets/N/   the champion's verified export (segpipe.export.serving)

Rules (`decide`): the candidate's export must have passed its check; its mean IoU must clear the configured
floor, and be at least the champion's mean IoU measured on the *same* split of the same dataset: the gate
split (`promotion.gate_split`, validation by default), never the test split the figures are reported on.
The test figures of both models are reported beside the decision. The first candidate that clears the
floor is promoted.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segpipe.fsutil import atomic_write_json, atomic_write_text, file_lock, read_json, tempdir_beside


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    candidate_mean_iou: float | None
    champion_mean_iou: float | None
    floor: float
    split: str
    dataset_key: str
    exports: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None

    @property
    def leaves_a_champion(self) -> bool:
        """A champion is installed after this decision: the candidate, or the one `decide` compared it with."""
        return self.promote or self.champion_mean_iou is not None

    def to_markdown(self) -> str:
        verdict = ("PROMOTED" if self.promote else "KEPT CHAMPION" if self.leaves_a_champion
                   else "NOT PROMOTED (no champion yet)")
        fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        return "\n".join([
            f"# Promotion decision: {verdict}",
            "",
            f"{self.reason}",
            "",
            "| | mean IoU |",
            "|---|---|",
            f"| candidate | {fmt(self.candidate_mean_iou)} |",
            f"| champion | {fmt(self.champion_mean_iou)} |",
            f"| floor | {self.floor:.4f} |",
            "",
            f"Compared on split `{self.split}` of dataset `{self.dataset_key}`.",
            *self._reported_lines(),
            *self._export_lines(),
        ])

    def _reported_lines(self) -> list[str]:
        if not self.reported:
            return []
        fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        split = self.reported.get("split")
        return ["", f"Reported, not used to decide: mean IoU on split `{split}`: candidate "
                f"{fmt(self.reported.get('candidate_mean_iou'))}, champion {fmt(self.reported.get('champion_mean_iou'))}."]

    def _export_lines(self) -> list[str]:
        if not self.exports:
            return []
        lines = ["", "## Exports", "", "| artifact | mean IoU | Keras mean IoU | pixels agreeing | within bound |",
                 "|---|---|---|---|---|"]
        for name, r in (self.exports.get("parity") or {}).items():
            lines.append(f"| {name} | {r['mean_iou']:.4f} | {r['reference_mean_iou']:.4f} | "
                         f"{100 * r['pixel_agreement']:.3f}% | {'yes' if r['passed'] else 'NO'} |")
        if self.exports.get("serving_dir"):
            lines += ["", f"Serving directory: `{self.exports['serving_dir']}`"]
        if self.exports.get("error"):
            lines += ["", f"Export check failed: {self.exports['error']}"]
        return lines


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, *, floor: float,
           exports: dict[str, Any] | None = None, reported: dict[str, Any] | None = None) -> Decision:
    """Compare metrics dicts (as written by evaluation) of the candidate and the champion.

    `champion` must have been scored on the same dataset split as `candidate`;
    a mismatch is an error rather than a silent unfair comparison. `exports` is the candidate's export
    check (`{"ok": bool, "error": str | None, "parity": {...}}`): a failed check keeps the champion.
    `reported` (test figures of both) is carried into the decision, never used by it.
    """
    split, key = candidate.get("split", "?"), candidate.get("dataset_key", "?")
    cand = candidate.get("mean_iou")
    champ = None if champion is None else champion.get("mean_iou")
    if champion is not None and (champion.get("split"), champion.get("dataset_key")) != (split, key):
        raise ValueError(
            f"champion metrics are for split {champion.get('split')!r} of dataset {champion.get('dataset_key')!r}, "
            f"candidate's for split {split!r} of {key!r}: score both on the same split"
        )

    def result(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, cand, champ, floor, split, key, exports, reported)

    kept = "champion kept" if champ is not None else "not promoted, and there is no champion yet"
    if exports is not None and not exports.get("ok"):
        return result(False, f"the candidate's export failed its check ({exports.get('error')}): {kept}")
    if cand is None:
        return result(False, f"the candidate has no mean IoU (empty split?): {kept}")
    if candidate.get("collapsed"):
        return result(False, f"the candidate's predictions collapse to one class: {kept}")
    if cand < floor:
        return result(False, f"candidate mean IoU {cand:.4f} is below the floor {floor:.4f}: {kept}")
    if champ is None:
        return result(True, f"no champion yet and candidate mean IoU {cand:.4f} clears the floor {floor:.4f}: promoted")
    if cand >= champ:
        return result(True, f"candidate mean IoU {cand:.4f} >= champion's {champ:.4f}: promoted")
    return result(False, f"candidate mean IoU {cand:.4f} < champion's {champ:.4f}: champion kept")


def champion_info(champion_dir: Path) -> dict[str, Any] | None:
    """The current champion's lineage (with `model_path`), or None when there is none."""
    lineage = champion_dir / "lineage.json"
    if not (champion_dir / "model.keras").is_file() or not lineage.is_file():
        return None
    return {**read_json(lineage), "model_path": str(champion_dir / "model.keras")}


def promote(
    model_path: Path, metrics: dict[str, Any], lineage: dict[str, Any], decision: Decision, champion_dir: Path
) -> Path:
    """Install a new champion atomically: built beside, then swapped in under a lock.

    The previous champion moves to `models/history/<promoted_at>-<run id>/`,
    so nothing is lost.
    """
    champion_dir = Path(champion_dir)
    with file_lock(champion_dir.parent / ".champion.lock"):
        tmp = tempdir_beside(champion_dir)
        try:
            shutil.copy2(model_path, tmp / "model.keras")
            atomic_write_json(tmp / "metrics.json", metrics)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            atomic_write_json(tmp / "lineage.json", {**lineage, "promoted_at": stamp})
            atomic_write_json(tmp / "decision.json", asdict(decision))
            atomic_write_text(tmp / "decision.md", decision.to_markdown() + "\n")
            if champion_dir.exists():
                old = read_json(champion_dir / "lineage.json") if (champion_dir / "lineage.json").is_file() else {}
                history = champion_dir.parent / "history" / f"{old.get('promoted_at', int(time.time()))}-{old.get('run_id', 'unknown')}"
                history.parent.mkdir(parents=True, exist_ok=True)
                champion_dir.rename(history)
            tmp.rename(champion_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return champion_dir
