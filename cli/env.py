"""Prefect environment for local runs, set before Prefect is imported.

- No API URL configured → Prefect's embedded ephemeral API on SQLite (no server to start).
- Analytics off.
- `PREFECT_HOME` is left alone (Prefect's default, ~/.prefect) unless the user set it.
- Task results and cache records persist under WORK/prefect-results, so caches live and die with WORK.
"""

from __future__ import annotations

import os
from pathlib import Path

from segpipe.layout import WorkDir


def configure_prefect(work: Path, *, refresh: bool = False, result_storage: str | None = None) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = result_storage or str(WorkDir(work).results)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
