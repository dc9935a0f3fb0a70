"""Prefect tasks for the data stage: download, verify, extract, validate, split, write shards, manifest.

Each task is a thin wrapper over one library function in `segpipe.data`; this
module only adds what Prefect is for: retries, content-keyed caching, logs and
artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from segpipe.data.dataset import (
    DatasetPlan,
    DatasetRef,
    finish_dataset,
    locate_dataset,
    plan_dataset,
    write_dataset_shards,
)
from segpipe.data.download import Archive, fetch_archive, resolve_source, verify_downloaded
from segpipe.data.extract import extract_archive
from segpipe.data.validate import validate_dataset
from segpipe.layout import WorkDir
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

__all__ = [
    "download_task", "verify_task", "extract_task", "validate_task", "split_task", "write_shards_task",
    "write_manifest_task", "locate_dataset_task",
]


@task(name="download", cache_policy=DOWNLOAD_CACHE, **DOWNLOAD_RETRY)
def download_task(source: str, name: str, work_dir: str, timeout: float = 60.0) -> Archive:
    """Fetch one archive into WORK/downloads (resuming a .part), mirrors tried in order."""
    logger = get_run_logger()
    src = resolve_source(source)
    logger.info("downloading %s from %s", name, src.describe())
    archive = fetch_archive(src, name, WorkDir.at(work_dir).downloads, timeout=timeout)
    if archive.resumed_from:
        logger.info("resumed %s from byte %d", name, archive.resumed_from)
    logger.info("%s: %d bytes, sha256 %s", name, archive.size, archive.sha256)
    return archive


@task(name="verify", cache_policy=VERIFY_CACHE)
def verify_task(archive: Archive) -> str:
    """Check the archive against its recorded sha256 (SHA256SUMS or the official record)."""
    logger = get_run_logger()
    digest = verify_downloaded(archive)
    if archive.expected_sha256 is None:
        logger.warning("%s: the source records no sha256 (no SHA256SUMS); using the digest as downloaded", archive.name)
    else:
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


@task(name="split", cache_policy=SPLIT_CACHE)
def split_task(report: Any, digests: dict[str, str], params: dict[str, Any]) -> DatasetPlan:
    """Seeded split of the valid examples; fixes the dataset key."""
    plan = plan_dataset(report, digests, params)
    key, splits = plan.dataset_key, plan.splits
    logger = get_run_logger()
    logger.info("dataset %s: %s", key, ", ".join(f"{name} {len(ids)}" for name, ids in splits.items()))
    if not splits["train"]:
        logger.warning("dataset %s has no training examples (trainval.txt lists none): it can be scored, "
                       "not trained on", key)
    return plan


@task(name="write-shards", cache_policy=WRITE_SHARDS_CACHE)
def write_shards_task(split_name: str, plan: DatasetPlan, report: Any, work_dir: str, workers: int = 2) -> list[Any]:
    """Write one split's sharded TFRecords in parallel, each shard atomically."""
    shards = write_dataset_shards(plan, split_name, report, WorkDir.at(work_dir).dataset(plan.dataset_key), workers)
    get_run_logger().info("%s: %d examples in %d shards", split_name, plan.num_examples.get(split_name, 0), len(shards))
    return shards


@task(name="write-manifest", cache_policy=WRITE_MANIFEST_CACHE)
def write_manifest_task(
    plan: DatasetPlan, digests: dict[str, str], report: Any, shards: dict[str, list[Any]], work_dir: str
) -> DatasetRef:
    """validation.json, split.json, then manifest.json last: the dataset is complete once it exists."""
    ref = finish_dataset(plan, digests, report, shards, WorkDir.at(work_dir).dataset(plan.dataset_key))
    get_run_logger().info("dataset ready: %s", ref.path)
    return ref


@task(name="locate-dataset", cache_policy=LOCATE_DATASET_CACHE)
def locate_dataset_task(work_dir: str, dataset_key: str | None = None) -> DatasetRef:
    """A prepared dataset under WORK: `dataset_key`, or the latest complete one."""
    return locate_dataset(work_dir, dataset_key)
