"""The work-directory layout: a contract between stages, tasks and users.

    WORK/downloads/                  images.tar.gz, annotations.tar.gz (+ .part while downloading)
    WORK/extracted/<archive-digest>/ images/, annotations/ (complete only when .complete exists)
    WORK/datasets/<dataset-key>/     manifest.json, validation.json, split.json, <split>-NNNNN-of-NNNNN.tfrecord
    WORK/runs/<run-id>/              config.json, model.keras, history.csv, tensorboard/, metrics.json, gallery/
    WORK/models/champion/            the promoted model with its metrics and lineage
    WORK/prefect-results/            Prefect result storage (cache records)
    WORK/locks/                      advisory lock files

`WORK` is `--work-dir`, else `$SEGPIPE_WORK_DIR`, else `./segpipe-work`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segpipe.fsutil import read_json

ENV_WORK_DIR = "SEGPIPE_WORK_DIR"
DEFAULT_WORK_DIR = "segpipe-work"
COMPLETE_MARKER = ".complete"
MANIFEST = "manifest.json"


def resolve_work_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """`arg`, else `$SEGPIPE_WORK_DIR`, else `./segpipe-work`; made absolute, not created."""
    raw = arg if arg not in (None, "") else os.environ.get(ENV_WORK_DIR) or DEFAULT_WORK_DIR
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @classmethod
    def at(cls, arg: str | os.PathLike[str] | None = None) -> "WorkDir":
        return cls(resolve_work_dir(arg))

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def quarantine(self) -> Path:
        return self.root / "downloads" / "quarantine"

    def extracted(self, archive_digest: str) -> Path:
        return self.root / "extracted" / archive_digest

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, key: str) -> Path:
        return self.datasets / key

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def champion(self) -> Path:
        return self.root / "models" / "champion"

    @property
    def results(self) -> Path:
        return self.root / "prefect-results"

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def complete_datasets(self) -> list[tuple[str, dict]]:
        """(key, manifest) of every dataset whose manifest exists, oldest first by `created_at`."""
        found = []
        if self.datasets.is_dir():
            for d in self.datasets.iterdir():
                manifest = d / MANIFEST
                if d.is_dir() and not d.name.startswith(".") and manifest.is_file():
                    found.append((d.name, read_json(manifest)))
        return sorted(found, key=lambda kv: (kv[1].get("created_at", ""), kv[0]))

    def latest_dataset(self) -> str:
        """Key of the most recently created complete dataset; a clear error when there is none."""
        found = self.complete_datasets()
        if not found:
            raise FileNotFoundError(
                f"no prepared dataset under {self.datasets}: run `segpipe prepare --work-dir {self.root}` first"
            )
        return found[-1][0]
