"""Test isolation: every test session gets its own Prefect home and database.

Prefect flows in tests run against a real (temporary, SQLite) Prefect API
started by `prefect_test_harness`; nothing touches the user's ~/.prefect.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="segpipe-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "storage")
os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("SEGPIPE_WORK_DIR", None)


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary SQLite database) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_sessionfinish(session, exitstatus):
    """Stop an ephemeral Prefect server that a test started in this process (the CLI run in-process)
    now, while pytest's streams are open: at interpreter exit Prefect's "Stopping temporary server"
    log line would go to a closed capture file and print a "Logging error" traceback."""
    import sys

    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        server.SubprocessASGIServer().stop()  # the process's one ephemeral server (Prefect's own fixtures stop it so)
