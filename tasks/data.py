"""Prefect tasks for the data stage: download, verify, extract, validate, split, write shards, manifest.

Each task is a thin wrapper over one library function in `segpipe.data`; this
module only adds what Prefect is for: retries, content-keyed caching, logs and
artifacts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from segpipe.data import dataset
from segpipe.data.download import download_archive, expected_digests, resolve_source, source_fingerprint, verify_archive
from segpipe.data.extract import extract_archive
from segpipe.data.split import make_split, write_split
from segpipe.data.tfrecords import verify_dataset, write_manifest, write_split_shards
from segpipe.data.validate import validate_dataset, write_validation
from segpipe.layout import MANIFEST, WorkDir
from segpipe_app.tasks.caching import (
    DOWNLOAD_CACHE,
    EXTRACT_CACHE,
    LOCATE_DATASET_CACHE,
    SPLIT_CACHE,
    VALIDATE_CACHE,
    VERIFY_CACHE,
    WRITE_MANIFEST_CACHE,
    WRITE_SHARDS_CACHE,
)
from segpipe_app.tasks.retries import DOWNLOAD_RETRY


@dataclass(frozen=True)
class Archive:
    """A downloaded archive: where it is and what it should be."""

    name: str
    path: str
    sha256: str
    expected_sha256: str | None
    source: str

    def cache_content(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "expected": self.expected_sha256}


@task(name="download", cache_policy=DOWNLOAD_CACHE, **DOWNLOAD_RETRY)
def download_task(source: str, name: str, work_dir: str, timeout: float = 60.0) -> Archive:
    """Fetch one archive into WORK/downloads (resuming a .part), mirrors tried in order."""
    logger = get_run_logger()
    src = resolve_source(source)
    expected = expected_digests(src, timeout).get(name)
    # With no recorded digest, a local copy must at least be byte-identical to its source.
    must_equal = expected
    if must_equal is None and src.kind == "local":
        must_equal = source_fingerprint(src, timeout, names=[name])[name].removeprefix("sha256:")
    logger.info("downloading %s from %s", name, src.describe())
    result = download_archive(
        src, name, WorkDir.at(work_dir).downloads, expected_sha256=must_equal, timeout=timeout
    )
    if result.resumed_from:
        logger.info("resumed %s from byte %d", name, result.resumed_from)
    logger.info("%s: %d bytes, sha256 %s", name, result.size, result.sha256)
    return Archive(name, str(result.path), result.sha256, expected, src.describe())


@task(name="verify", cache_policy=VERIFY_CACHE)
def verify_task(archive: Archive) -> str:
    """Check the archive against its recorded sha256 (SHA256SUMS or the official record)."""
    logger = get_run_logger()
    if archive.expected_sha256 is None:
        logger.warning("%s: the source records no sha256 (no SHA256SUMS); using the digest as downloaded", archive.name)
        return verify_archive(Path(archive.path), archive.sha256)
    digest = verify_archive(Path(archive.path), archive.expected_sha256)
    logger.info("%s verified: sha256 %s", archive.name, digest)
    return digest


@task(name="extract", cache_policy=EXTRACT_CACHE)
def extract_task(archive_path: str, digest: str, work_dir: str) -> str:
    """Safely unpack a verified archive into WORK/extracted/<digest>/."""
    dest = WorkDir.at(work_dir).extracted(digest)
    result = extract_archive(Path(archive_path), dest, expected_sha256=digest)
    get_run_logger().info(
        "extracted %d members (%d bytes) into %s; ignored %d", result.members_extracted,
        result.bytes_extracted, dest, len(result.skipped),
    )
    return str(dest)


@task(name="validate", cache_policy=VALIDATE_CACHE)
def validate_task(images_root: str, annotations_root: str, digests: dict[str, str], workers: int = 2) -> Any:
    """Pair and decode every image and trimap; report what was skipped or converted."""
    report = validate_dataset(
        Path(images_root) / "images", Path(annotations_root) / "annotations", workers=workers
    )
    counts = report.counts
    get_run_logger().info(
        "validated %s images: %s valid, %s converted, %s skipped",
        counts.get("images_found"), counts.get("valid"), counts.get("converted"), counts.get("skipped"),
    )
    create_markdown_artifact(
        markdown=report.to_markdown(), key="validation-report", description="segpipe data validation"
    )
    return report


@dataclass(frozen=True)
class DatasetRef:
    """A complete prepared dataset: its content key, where it is, and its split sizes."""

    dataset_key: str
    path: str
    num_examples: dict[str, int]

    def cache_content(self) -> str:
        return self.dataset_key


@dataclass(frozen=True)
class DatasetPlan:
    dataset_key: str
    splits: dict[str, list[str]]
    params: dict[str, Any]

    def cache_content(self) -> dict[str, Any]:
        return {"dataset_key": self.dataset_key, "splits": self.splits}


@task(name="split", cache_policy=SPLIT_CACHE)
def split_task(report: Any, digests: dict[str, str], params: dict[str, Any]) -> DatasetPlan:
    """Seeded split of the valid examples; fixes the dataset key."""
    lists = {ex.id: ex.lists for ex in report.examples}
    splits = make_split(
        [ex.id for ex in report.examples], lists, mode=params["split"], val_fraction=params["val_fraction"],
        test_fraction=params["test_fraction"], seed=params["seed"], holdout_breeds=params.get("holdout_breeds", ()),
    )
    key = dataset.dataset_key(digests, params)
    logger = get_run_logger()
    logger.info("dataset %s: %s", key, ", ".join(f"{name} {len(ids)}" for name, ids in splits.items()))
    if not splits["train"]:
        logger.warning("dataset %s has no training examples (trainval.txt lists none): it can be scored, "
                       "not trained on", key)
    return DatasetPlan(key, splits, params)


@task(name="write-shards", cache_policy=WRITE_SHARDS_CACHE)
def write_shards_task(split_name: str, plan: DatasetPlan, report: Any, work_dir: str, workers: int = 2) -> list[Any]:
    """Write one split's sharded TFRecords in parallel, each shard atomically."""
    by_id = {ex.id: ex for ex in report.examples}
    examples = [by_id[i] for i in plan.splits.get(split_name, [])]
    out_dir = WorkDir.at(work_dir).dataset(plan.dataset_key)
    shards = write_split_shards(
        examples, split_name, out_dir,
        target_shard_bytes=int(plan.params["shard_size_mb"] * 2**20), workers=workers,
    )
    get_run_logger().info("%s: %d examples in %d shards", split_name, len(examples), len(shards))
    return shards


@task(name="write-manifest", cache_policy=WRITE_MANIFEST_CACHE)
def write_manifest_task(
    plan: DatasetPlan, digests: dict[str, str], report: Any, shards: dict[str, list[Any]], work_dir: str
) -> DatasetRef:
    """validation.json, split.json, then manifest.json last: the dataset is complete once it exists."""
    out_dir = WorkDir.at(work_dir).dataset(plan.dataset_key)
    write_validation(report, out_dir)
    write_split(plan.splits, out_dir, plan.params)
    write_manifest(
        out_dir, dataset_key=plan.dataset_key, archives=digests, parameters=plan.params, shards=shards,
        validation_summary=report.counts,
    )
    problems = verify_dataset(out_dir)
    if problems:
        raise RuntimeError(f"dataset {plan.dataset_key} failed verification: " + "; ".join(problems))
    get_run_logger().info("dataset ready: %s", out_dir)
    return DatasetRef(plan.dataset_key, str(out_dir), {name: len(ids) for name, ids in plan.splits.items()})


@task(name="locate-dataset", cache_policy=LOCATE_DATASET_CACHE)
def locate_dataset_task(work_dir: str, dataset_key: str | None = None) -> DatasetRef:
    """A prepared dataset under WORK: `dataset_key`, or the latest complete one."""
    work = WorkDir.at(work_dir)
    key = dataset_key or work.latest_dataset()
    path = work.dataset(key)
    if not (path / MANIFEST).is_file():
        known = ", ".join(k for k, _ in work.complete_datasets()) or "none"
        raise FileNotFoundError(f"dataset {key!r}: no complete dataset at {path} (prepared datasets: {known})")
    problems = verify_dataset(path)
    if problems:
        raise RuntimeError(f"dataset {key} failed verification: " + "; ".join(problems))
    splits = json.loads((path / MANIFEST).read_text())["splits"]
    return DatasetRef(key, str(path), {name: info["num_examples"] for name, info in splits.items()})

