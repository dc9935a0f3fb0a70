"""Fresh PREFECT_HOME folders whose SQLite database is already migrated.

Migrating an empty database is most of a Prefect server's first start (about 8 of its 14 CPU-seconds here).
The `migrated_prefect_db` fixture (tests/conftest.py) runs Prefect's migrations once per test session;
`seed_prefect_home` copies that database into a new home, so each real server a test starts there skips
them. Homes that start empty still exist in the suite: the session's own PREFECT_HOME and the deployments'
server run the migrations as a user's first start does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def migrate_database(home: Path) -> Path:
    """`prefect server database upgrade` in `home` (made if missing); returns its prefect.db."""
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).parent / "prefect"
    done = subprocess.run([str(prefect), "server", "database", "upgrade", "-y"],
                          env={**os.environ, "PREFECT_HOME": str(home)}, capture_output=True, text=True, timeout=300)
    database = home / "prefect.db"
    assert done.returncode == 0 and database.is_file(), \
        f"prefect server database upgrade failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return database


def seed_prefect_home(home: Path, database: Path) -> Path:
    """`home`, made if missing, holding a copy of the migrated `database` as its prefect.db."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(database, home / "prefect.db")
    return home
