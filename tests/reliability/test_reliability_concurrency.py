"""Two runs at once on the same work directory: two real processes (library level, umask 027) and
two Prefect `prepare-data` flows in threads. Both finish, the work is done once where a lock
guards it, and the dataset verifies.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.faults import ThrottledServer, leftover_temps, spawn_python
from tests.httpserver import LoopbackServer
from tests.synthetic import make_pets_archives, make_pets_tree
from tests.threads import run_at_once

PREPARE_CHILD = """
    import sys
    from pathlib import Path
    from tests.faults import prepare_library
    print("DATASET", prepare_library(sys.argv[1], Path(sys.argv[2])), flush=True)
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrency")
    digests = make_pets_archives(root / "src")
    info = make_pets_tree(root / "tree")
    return {n: (root / "src" / n).read_bytes() for n in (*digests, "SHA256SUMS")}, info


@pytest.fixture(scope="module")
def two_processes(archives, tmp_path_factory):
    """Two `prepare` processes started together on one WORK, with umask 027, from a slow server."""
    files, info = archives
    work = tmp_path_factory.mktemp("shared") / "work"
    with ThrottledServer(files, rate=200_000) as srv:
        children = [spawn_python(PREPARE_CHILD, srv.url, str(work), umask=0o027) for _ in range(2)]
        outputs = [child.communicate(timeout=400)[0] for child in children]
        gets = {name: len(srv.gets(name)) for name in ("images.tar.gz", "annotations.tar.gz")}
        sent = {name: srv.sent(name) for name in gets}
    return {"work": work, "info": info, "files": files, "rcs": [c.returncode for c in children],
            "outputs": outputs, "gets": gets, "sent": sent}


@pytest.mark.slow
def test_two_processes_on_one_work_dir_both_finish_and_the_dataset_verifies(two_processes):
    from segpipe.data.tfrecords import verify_dataset

    run = two_processes
    assert run["rcs"] == [0, 0], "\n".join(o[-2000:] for o in run["outputs"])
    paths = {line.split(" ", 1)[1] for o in run["outputs"] for line in o.splitlines() if line.startswith("DATASET ")}
    (dataset,) = paths  # both built the same content-keyed dataset
    assert verify_dataset(dataset) == []
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    assert manifest["num_examples"] == len(run["info"].valid)
    assert run["gets"] == {"images.tar.gz": 1, "annotations.tar.gz": 1}  # the second run waited, then reused
    assert run["sent"] == {n: len(run["files"][n]) for n in run["sent"]}  # zero bytes fetched twice
    assert leftover_temps(run["work"]) == []
    assert len(list(run["work"].glob("extracted/*/.complete"))) == 2


@pytest.mark.slow
def test_files_follow_the_users_umask(two_processes):
    """Run with umask 027: every file the pipeline made is rw-r----- and every directory rwxr-x---,
    whatever modes the archive members carried (0644 in the synthetic archives)."""
    work = two_processes["work"]
    modes = {str(p.relative_to(work)): stat.S_IMODE(p.lstat().st_mode) for p in [work, *work.rglob("*")]}
    kinds = {p: ("dir" if (work / p).is_dir() else "file") for p in modes}
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o750 if kinds[p] == "dir" else 0o640)}
    assert wrong == {}
    assert {"file", "dir"} == set(kinds.values()) and len(modes) > 60
    assert any(p.endswith(".tfrecord") for p in modes) and any(p.endswith("manifest.json") for p in modes)


def test_two_prefect_flows_at_once_on_one_work_dir(prefect_api, archives, tmp_path):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe_app.flows.prepare_data import prepare_data_flow
    from segpipe.config import build_config
    from segpipe.data.tfrecords import verify_dataset

    files, info = archives
    work = tmp_path / "work"

    def run(url: str):
        with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(work / "prefect-results")}):
            return prepare_data_flow(config=build_config("tiny", {"data.source": url}), work_dir=str(work))

    with LoopbackServer(files) as srv:
        results = run_at_once(lambda: run(srv.url), 2)
        gets = {name: len(srv.gets(name)) for name in ("images.tar.gz", "annotations.tar.gz")}
    assert len(results) == 2
    assert results[0] == results[1]
    assert verify_dataset(results[0].path) == []
    assert json.loads((Path(results[0].path) / "manifest.json").read_text())["num_examples"] == len(info.valid)
    assert gets == {"images.tar.gz": 1, "annotations.tar.gz": 1}, gets  # one GET of each archive
    assert leftover_temps(work) == []
