"""The `prepare-data` flow end to end on a real Prefect API, served from a real loopback HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.httpserver import Fault, LoopbackServer
from tests.prefect_states import task_states_since
from tests.prefect_homes import seed_prefect_home
from tests.synthetic import make_pets_archives, make_pets_tree

import tensorflow as tf

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "mask/encoded": tf.io.FixedLenFeature([], tf.string),
}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Synthetic archives in the official layout (every odd file kind) and what validation should find."""
    root = tmp_path_factory.mktemp("archives")
    digests = make_pets_archives(root / "src", plain_tar_for_images=True)
    info = make_pets_tree(root / "tree")  # same defaults, same seed: the same content
    files = {name: (root / "src" / name).read_bytes() for name in (*digests, "SHA256SUMS")}
    return files, info


def _run(config_overrides, work, storage):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from segpipe_app.flows.prepare_data import prepare_data_flow
    from segpipe.config import build_config

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(storage)}):
        return prepare_data_flow(config=build_config("tiny", config_overrides), work_dir=str(work))


def test_prepare_serves_reruns_from_cache_and_recomputes_only_what_changed(prefect_api, archives, tmp_path):
    files, info = archives
    work, storage = tmp_path / "work", tmp_path / "results"
    with LoopbackServer(files) as srv:
        srv.faults["images.tar.gz"] = Fault(cut_after=2000, times=1)  # first transfer cut: resumed on retry
        ref = _run({"data.source": srv.url}, work, storage)
        images_gets = srv.gets("images.tar.gz")
        assert len(images_gets) == 2 and images_gets[1].headers.get("Range") == "bytes=2000-"

        dataset = Path(ref.path)
        manifest = json.loads((dataset / "manifest.json").read_text())
        assert manifest["num_examples"] == len(info.valid)
        assert sum(ref.num_examples.values()) == len(info.valid)
        validation = json.loads((dataset / "validation.json").read_text())
        assert {s["id"] for s in validation["skipped"]} >= set(info.skipped)
        assert {c["id"] for c in validation["converted"]} == set(info.converted)
        assert not list(work.rglob("*.mat")), ".mat files must not be extracted"

        # The shards read back with plain tf.data hold exactly the valid ids.
        files_ = sorted(str(p) for p in dataset.glob("*.tfrecord"))
        ids = sorted(
            ex["image/id"].numpy().decode()
            for ex in tf.data.TFRecordDataset(files_).map(lambda s: tf.io.parse_single_example(s, SPEC))
        )
        assert ids == sorted(info.valid)

        t0 = datetime.now(timezone.utc)
        again = _run({"data.source": srv.url}, work, storage)
        assert again == ref
        stages = {"download", "verify", "extract", "validate", "split", "write-shards", "write-manifest"}
        states = task_states_since(t0, expect=stages)
        assert set(states) >= stages
        assert all(s == "Cached" for names in states.values() for s in names), states

        t1 = datetime.now(timezone.utc)
        changed = _run({"data.source": srv.url, "data.seed": 7}, work, storage)
        assert changed.dataset_key != ref.dataset_key
        states = task_states_since(t1, expect=stages)
        for name in ("download", "verify", "extract", "validate"):
            assert set(states[name]) == {"Cached"}, (name, states)
        for name in ("split", "write-shards", "write-manifest"):
            assert set(states[name]) == {"Completed"}, (name, states)


def test_deleted_dataset_is_rebuilt_not_trusted(prefect_api, archives, tmp_path):
    import shutil

    files, info = archives
    work, storage = tmp_path / "work", tmp_path / "results"
    with LoopbackServer(files) as srv:
        ref = _run({"data.source": srv.url}, work, storage)
        shutil.rmtree(ref.path)
        again = _run({"data.source": srv.url}, work, storage)
    assert again.dataset_key == ref.dataset_key
    assert json.loads((Path(again.path) / "manifest.json").read_text())["num_examples"] == len(info.valid)


def test_checksum_mismatch_stops_before_extraction(prefect_api, archives, tmp_path):
    from segpipe.data.download import ChecksumMismatchError

    files, _ = archives
    bad = dict(files)
    data = bytearray(files["annotations.tar.gz"])
    data[len(data) // 2] ^= 0xFF
    bad["annotations.tar.gz"] = bytes(data)
    work = tmp_path / "work"
    with LoopbackServer(bad) as srv, pytest.raises(ChecksumMismatchError) as err:
        _run({"data.source": srv.url}, work, tmp_path / "results")
    assert "annotations.tar.gz" in str(err.value)
    assert not (work / "downloads" / "annotations.tar.gz").exists()
    assert list((work / "downloads" / "quarantine").iterdir())
    assert not (work / "extracted").exists() or not list((work / "extracted").glob("*/.complete"))
    assert not (work / "datasets").exists() or not list((work / "datasets").glob("*/manifest.json"))


@pytest.mark.slow
def test_cli_prepare_from_a_directory_then_cached_then_corrupt(archives, tmp_path, migrated_prefect_db):
    """`segpipe prepare` as a user runs it: its own ephemeral Prefect API, a directory source."""
    files, info = archives
    src = tmp_path / "mirror"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    env = {k: v for k, v in __import__("os").environ.items()}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect-home", migrated_prefect_db))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "segpipe_app.cli.main", "prepare", "--preset", "tiny", "--work-dir", str(tmp_path / "w"), *args],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
        )

    first = cli("--source", str(src))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "dataset written to" in first.stdout
    second = cli("--source", str(src))
    assert second.returncode == 0
    assert second.stderr.count("Cached(type=COMPLETED)") >= 9, second.stderr[-3000:]

    (src / "images.tar.gz").write_bytes(files["images.tar.gz"][:-10] + b"0123456789")
    bad = subprocess.run(
        [sys.executable, "-m", "segpipe_app.cli.main", "prepare", "--preset", "tiny", "--work-dir", str(tmp_path / "w2"),
         "--source", str(src)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert bad.returncode == 1
    assert "checksum mismatch" in bad.stderr.lower() and "images.tar.gz" in bad.stderr
    assert not list((tmp_path / "w2").glob("extracted/*/.complete"))


def test_data_cache_keys_come_from_content_never_from_paths(tmp_path):
    """The policies of tasks/caching.py on their own: moving WORK or the archives keeps every key; a digest or a
    parameter changes it."""
    from types import SimpleNamespace

    from segpipe_app.tasks import caching
    from segpipe.data.dataset import DatasetPlan
    from segpipe.data.download import Archive
    from segpipe_app.tasks.data import extract_task, split_task, validate_task, verify_task, write_shards_task

    def key(policy, task, **inputs):
        return policy.compute_key(task_ctx=SimpleNamespace(task=task, result_store=None), inputs=inputs,
                                  flow_parameters={})

    def validate(root, digest, workers):
        return key(caching.VALIDATE_CACHE, validate_task, images_root=f"{root}/i", annotations_root=f"{root}/a",
                   digests={"images.tar.gz": digest}, workers=workers)

    assert validate("/a", "1", 2) == validate("/b", "1", 8) != validate("/a", "2", 2)

    def extract(where, digest):
        return key(caching.EXTRACT_CACHE, extract_task, archive_path=f"{where}/x.tar", digest=digest,
                   work_dir=str(tmp_path / where))

    assert extract("a", "1") == extract("b", "1") != extract("a", "2")
    assert extract("a", "1").startswith("extract-")

    def verify(path, sha):
        return key(caching.VERIFY_CACHE, verify_task, archive=Archive("x.tar", path, sha, sha, "somewhere"))

    assert verify("/a/x.tar", "1") == verify("/b/x.tar", "1") != verify("/a/x.tar", "2")

    report, params = SimpleNamespace(examples=[]), {"seed": 1}
    split = key(caching.SPLIT_CACHE, split_task, report=report, digests={"d": "1"}, params=params)
    assert split == key(caching.SPLIT_CACHE, split_task, report=None, digests={"d": "1"}, params=params)
    assert split != key(caching.SPLIT_CACHE, split_task, report=report, digests={"d": "1"}, params={"seed": 2})

    plan = DatasetPlan("k", {"train": []}, params)  # an empty split has no shards to check
    shards = [key(caching.WRITE_SHARDS_CACHE, write_shards_task, split_name="train", plan=plan, report=report,
                  work_dir=str(tmp_path / w), workers=n) for w, n in (("a", 1), ("b", 4))]
    assert shards[0] == shards[1] and shards[0].startswith("write-shards-")
