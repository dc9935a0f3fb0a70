"""Test isolation: every test session gets its own Prefect home and database.

Prefect flows in tests run against a real (temporary, SQLite) Prefect API
started by `prefect_test_harness`; nothing touches the user's ~/.prefect.
"""

from __future__ import annotations

import os
import shutil
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
# CLI commands (in-process and in subprocesses) start and stop Prefect's embedded server, as before the
# background server (cli.server); tests of that server use `local_server_homes`, which stops what they started.
os.environ["SEGPIPE_PREFECT_SERVER"] = "embedded"
os.environ.pop("SEGPIPE_SERVER_PORT", None)
# `segpipe predict` loads .keras models in a child of the command, as before the model host (segpipe.model_host),
# which would outlive the test; tests of the host set SEGPIPE_PRELOAD=host and stop what they started.
os.environ["SEGPIPE_PRELOAD"] = "child"
_LOCAL_SERVER_HOMES: list[Path] = []


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary SQLite database) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """One prepared dataset for the session (tests/synthetic.py's `write_tiny_dataset`): 12 train and 4 validation
    examples of 40 x 48, key "tiny-ds". Read it, never change it: a test that alters a dataset writes its own."""
    from tests.synthetic import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("tiny-ds"), {"train": 12, "val": 4})


@pytest.fixture(scope="session")
def pets_archives(tmp_path_factory):
    """`pets_archives(**kw)`: a folder with the synthetic pets' images.tar.gz, annotations.tar.gz and SHA256SUMS
    (tests/synthetic.py's `make_pets_archives(folder, **kw)`), written once per distinct `kw` in the session.
    Read it, never change it (a `--source` for commands that download from it)."""
    from tests.synthetic import make_pets_archives

    made: dict[tuple, Path] = {}

    def make(**kw) -> Path:
        key = tuple(sorted(kw.items()))
        if key not in made:
            folder = tmp_path_factory.mktemp("pets")
            make_pets_archives(folder, **kw)
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def migrated_prefect_db(tmp_path_factory) -> Path:
    """A Prefect database with Prefect's migrations applied, made once per test session (tests/prefect_homes.py
    says why); `seed_prefect_home(home, migrated_prefect_db)` starts a fresh home with a copy."""
    from tests.prefect_homes import migrate_database

    return migrate_database(tmp_path_factory.mktemp("migrated-prefect-home"))


@pytest.fixture
def local_server_homes(tmp_path, migrated_prefect_db):
    """Makes fresh PREFECT_HOME folders (`make("name")`) for tests of segpipe's background Prefect server, each
    with a migrated database (`migrated_prefect_db`); whatever server a command started for one is stopped
    after the test (and, should that fail, at the end of the session)."""
    from tests.prefect_homes import seed_prefect_home

    made: list[Path] = []

    def make(name: str = "prefect-home") -> Path:
        home = tmp_path / name
        seed_prefect_home(home, migrated_prefect_db)
        made.append(home)
        _LOCAL_SERVER_HOMES.append(home)
        return home

    yield make
    for home in made:
        _stop_local_server(home)


def _stop_local_server(home: Path) -> None:
    """Stop every Prefect server process whose PREFECT_HOME is `home` (recorded in state.json or not), and
    the model host of that PREFECT_HOME."""
    from segpipe import model_host
    from segpipe_app.cli import server
    from tests.terminal import servers_of

    for pid in servers_of(home):
        server.stop_process(pid)
    model_host.stop(server.model_host_dir(home.resolve()))


def pytest_sessionfinish(session, exitstatus):
    """Stop an ephemeral Prefect server that a test started in this process (the CLI run in-process)
    now, while pytest's streams are open: at interpreter exit Prefect's "Stopping temporary server"
    log line would go to a closed capture file and print a "Logging error" traceback."""
    import sys

    for home in _LOCAL_SERVER_HOMES:
        _stop_local_server(home)
    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        import logging

        # Prefect's "Stopping temporary server" line is not the test run's output
        prefect_logger = logging.getLogger("prefect")
        level = prefect_logger.level
        prefect_logger.setLevel(logging.WARNING)
        try:
            server.SubprocessASGIServer().stop()  # the process's one ephemeral server (Prefect's own fixtures stop it so)
        finally:
            prefect_logger.setLevel(level)
    # the session's PREFECT_HOME (its database, results and Prefect's logs) is the test run's alone: remove it, as
    # pytest's tmp_path folders are, so that runs do not pile up homes in the temporary folder
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


# The test files that take longest, longest first (per-file seconds of a profile on 2 cores: real servers,
# workers, trainings, terminals). `make test` spreads whole files over its workers (`--dist loadfile`), each
# worker taking the next file when it runs short. Started last, one of them kept a worker busy alone at the
# end of the run; started first, the short files fill the gaps (longest-first scheduling).
# The two files that mostly wait (on a worker's polls, on servers starting) are not handed out together: the
# first three files run at once on the three workers, and with both waiting files among them the 2 cores were
# busy at 113-115% (of 200%) for the first two minutes of a profile. Each waiting file is paired with files
# that compute.
LONGEST_FIRST = (
    "tests/export/test_export.py",
    "tests/deployments/test_deployments.py",  # waits
    "tests/training/test_distributed.py",
    "tests/training/test_finetune.py",
    "tests/cli/test_local_server.py",  # waits
    "tests/training/test_progressive.py",
    "tests/models/test_models.py",
    "tests/benchmarks/test_gpu_full.py",
    "tests/cli/test_cli_interrupt.py",
    "tests/cli/test_cli_stages.py",
    "tests/reliability/test_reliability_kills.py",
    "tests/training/test_training_paths.py",
    "tests/runs/test_retrain_champion.py",
    "tests/orchestration/test_prepare_flow.py",
    "tests/models/test_encoders.py",
    "tests/training/test_training.py",
    "tests/evaluation/test_model_host.py",
    "tests/benchmarks/test_export_portability.py",
    # left to the unordered rest, these ran last and kept one worker busy alone for the last half minute
    "tests/orchestration/test_stages.py",
    "tests/training/test_edge_head.py",
    "tests/training/test_frozen_prefix.py",
    "tests/orchestration/test_pipeline_flow.py",
    "tests/training/test_bn_folding.py",
    "tests/orchestration/test_cache_coverage.py",
    "tests/evaluation/test_preload.py",
    "tests/cli/test_quiet.py",
    "tests/benchmarks/test_figures.py",
    "tests/models/test_dilated_tail.py",
    "tests/reliability/test_reliability_concurrency.py",
    "tests/cli/test_progress.py",
    "tests/evaluation/test_multiscale_tta.py",
    "tests/runs/test_runs_cli.py",
    "tests/training/test_steps_per_execution.py",
)


def pytest_configure(config):
    """Keep the collection order when xdist hands out whole files. By default (`--loadscope-reorder`) it
    re-sorts the files by their number of tests, which put the long files with few tests (real servers,
    trainings) last and so undid LONGEST_FIRST."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    if not hasattr(config.option, "loadscopereorder"):  # a pytest-xdist upgrade renamed it: LONGEST_FIRST would be lost
        raise pytest.UsageError("pytest-xdist has no loadscopereorder option any more: see tests/conftest.py")
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
    """Run the files in LONGEST_FIRST before the others (each file's own order is kept)."""
    gone = [path for path in LONGEST_FIRST if not (config.rootpath / path).is_file()]
    if gone:  # a renamed file would silently fall back to the slow order
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that do not exist: {gone}")
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
