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
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_logger
from prefect.artifacts import create_markdown_artifact

from segpipe.data import dataset as dataset_mod
from segpipe.data import download as download_mod
from segpipe.data import extract as extract_mod
from segpipe.data import split as split_mod
from segpipe.data import tfrecords as tfrecords_mod
from segpipe.data import validate as validate_mod
from segpipe.layout import COMPLETE_MARKER, MANIFEST, WorkDir
from tasks.caching import DOWNLOAD_RETRIES, DOWNLOAD_RETRY_DELAYS, RETRY_JITTER, ContentKey, retry_if_transient


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


def _source_fingerprint(inputs: dict[str, Any]) -> Any:
    source = download_mod.resolve_source(inputs["source"])
    return download_mod.source_fingerprint(source, inputs.get("timeout", 60.0), names=[inputs["name"]])[inputs["name"]]


class _DownloadKey(ContentKey):
    """The download is keyed by what the source holds, not by where it is."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):  # type: ignore[override]
        try:
            fingerprint = _source_fingerprint(inputs)
        except download_mod.TransientDownloadError as exc:
            # The source cannot say what it holds right now: run uncached; the task itself retries.
            get_logger("segpipe.tasks").warning("cannot fingerprint the source (%s); running without the cache", exc)
            return None
        return super().compute_key(task_ctx, {**inputs, "fingerprint": fingerprint}, flow_parameters)


@task(
    name="download",
    retries=DOWNLOAD_RETRIES,
    retry_delay_seconds=DOWNLOAD_RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_if_transient(download_mod.is_transient),
    cache_policy=_DownloadKey(
        inputs=("name", "fingerprint"),
        modules=("segpipe.data.download",),
        outputs_ok=lambda i: (WorkDir.at(i["work_dir"]).downloads / i["name"]).is_file(),
    ),
)
def download(source: str, name: str, work_dir: str, timeout: float = 60.0) -> Archive:
    """Fetch one archive into WORK/downloads (resuming a .part), mirrors tried in order."""
    logger = get_run_logger()
    src = download_mod.resolve_source(source)
    expected = download_mod.expected_digests(src, timeout).get(name)
    # With no recorded digest, a local copy must at least be byte-identical to its source.
    must_equal = expected
    if must_equal is None and src.kind == "local":
        must_equal = download_mod.source_fingerprint(src, timeout, names=[name])[name].removeprefix("sha256:")
    logger.info("downloading %s from %s", name, src.describe())
    result = download_mod.download_archive(
        src, name, WorkDir.at(work_dir).downloads, expected_sha256=must_equal, timeout=timeout
    )
    if result.resumed_from:
        logger.info("resumed %s from byte %d", name, result.resumed_from)
    logger.info("%s: %d bytes, sha256 %s", name, result.size, result.sha256)
    return Archive(name, str(result.path), result.sha256, expected, src.describe())


@task(
    name="verify",
    cache_policy=ContentKey(
        inputs=("archive",), modules=("segpipe.data.download",), outputs_ok=lambda i: Path(i["archive"].path).is_file()
    ),
)
def verify(archive: Archive) -> str:
    """Check the archive against its recorded sha256 (SHA256SUMS or the official record)."""
    logger = get_run_logger()
    if archive.expected_sha256 is None:
        logger.warning("%s: the source records no sha256 (no SHA256SUMS); using the digest as downloaded", archive.name)
        return download_mod.verify_archive(Path(archive.path), archive.sha256)
    digest = download_mod.verify_archive(Path(archive.path), archive.expected_sha256)
    logger.info("%s verified: sha256 %s", archive.name, digest)
    return digest


@task(
    name="extract",
    cache_policy=ContentKey(
        inputs=("digest",),
        modules=("segpipe.data.extract",),
        outputs_ok=lambda i: (WorkDir.at(i["work_dir"]).extracted(i["digest"]) / COMPLETE_MARKER).is_file(),
    ),
)
def extract(archive_path: str, digest: str, work_dir: str) -> str:
    """Safely unpack a verified archive into WORK/extracted/<digest>/."""
    dest = WorkDir.at(work_dir).extracted(digest)
    result = extract_mod.extract_archive(Path(archive_path), dest, expected_sha256=digest)
    get_run_logger().info(
        "extracted %d members (%d bytes) into %s; ignored %d", result.members_extracted,
        result.bytes_extracted, dest, len(result.skipped),
    )
    return str(dest)


@task(name="validate", cache_policy=ContentKey(inputs=("digests",), modules=("segpipe.data.validate",)))
def validate(images_root: str, annotations_root: str, digests: dict[str, str], workers: int = 2) -> Any:
    """Pair and decode every image and trimap; report what was skipped or converted."""
    report = validate_mod.validate_dataset(
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


@task(name="split", cache_policy=ContentKey(inputs=("digests", "params"), modules=("segpipe.data.split", "segpipe.data.dataset")))
def split(report: Any, digests: dict[str, str], params: dict[str, Any]) -> DatasetPlan:
    """Seeded split of the valid examples; fixes the dataset key."""
    lists = {ex.id: ex.lists for ex in report.examples}
    splits = split_mod.make_split(
        [ex.id for ex in report.examples], lists, mode=params["split"], val_fraction=params["val_fraction"],
        test_fraction=params["test_fraction"], seed=params["seed"], holdout_breeds=params.get("holdout_breeds", ()),
    )
    key = dataset_mod.dataset_key(digests, params)
    logger = get_run_logger()
    logger.info("dataset %s: %s", key, ", ".join(f"{name} {len(ids)}" for name, ids in splits.items()))
    if not splits["train"]:
        logger.warning("dataset %s has no training examples (trainval.txt lists none): it can be scored, "
                       "not trained on", key)
    return DatasetPlan(key, splits, params)


def _split_shards_exist(inputs: dict[str, Any]) -> bool:
    plan: DatasetPlan = inputs["plan"]
    if not plan.splits.get(inputs["split_name"]):
        return True  # an empty split has no shards
    d = WorkDir.at(inputs["work_dir"]).dataset(plan.dataset_key)
    found = sorted(p.name for p in d.glob(f"{inputs['split_name']}-*-of-*.tfrecord"))
    if not found:
        return False
    total = int(found[0].rsplit("-of-", 1)[1].split(".")[0])
    expected = {tfrecords_mod.shard_name(inputs["split_name"], i, total) for i in range(total)}
    return expected <= set(found)  # every shard of the split, not just one


@task(
    name="write-shards",
    cache_policy=ContentKey(
        inputs=("split_name", "plan"), modules=("segpipe.data.tfrecords", "segpipe.data.spec", "segpipe.data.dataset"), outputs_ok=_split_shards_exist
    ),
)
def write_shards(split_name: str, plan: DatasetPlan, report: Any, work_dir: str, workers: int = 2) -> list[Any]:
    """Write one split's sharded TFRecords in parallel, each shard atomically."""
    by_id = {ex.id: ex for ex in report.examples}
    examples = [by_id[i] for i in plan.splits.get(split_name, [])]
    out_dir = WorkDir.at(work_dir).dataset(plan.dataset_key)
    shards = tfrecords_mod.write_split_shards(
        examples, split_name, out_dir,
        target_shard_bytes=int(plan.params["shard_size_mb"] * 2**20), workers=workers,
    )
    get_run_logger().info("%s: %d examples in %d shards", split_name, len(examples), len(shards))
    return shards


@task(
    name="write-manifest",
    cache_policy=ContentKey(
        inputs=("plan", "digests"),
        modules=("segpipe.data.tfrecords", "segpipe.data.spec", "segpipe.data.dataset"),
        outputs_ok=lambda i: (WorkDir.at(i["work_dir"]).dataset(i["plan"].dataset_key) / MANIFEST).is_file(),
    ),
)
def write_manifest(
    plan: DatasetPlan, digests: dict[str, str], report: Any, shards: dict[str, list[Any]], work_dir: str
) -> DatasetRef:
    """validation.json, split.json, then manifest.json last: the dataset is complete once it exists."""
    out_dir = WorkDir.at(work_dir).dataset(plan.dataset_key)
    validate_mod.write_validation(report, out_dir)
    split_mod.write_split(plan.splits, out_dir, plan.params)
    tfrecords_mod.write_manifest(
        out_dir, dataset_key=plan.dataset_key, archives=digests, parameters=plan.params, shards=shards,
        validation_summary=report.counts,
    )
    problems = tfrecords_mod.verify_dataset(out_dir)
    if problems:
        raise RuntimeError(f"dataset {plan.dataset_key} failed verification: " + "; ".join(problems))
    get_run_logger().info("dataset ready: %s", out_dir)
    return DatasetRef(plan.dataset_key, str(out_dir), {name: len(ids) for name, ids in plan.splits.items()})


@task(name="locate-dataset", cache_policy=NO_CACHE)
def locate_dataset(work_dir: str, dataset_key: str | None = None) -> DatasetRef:
    """A prepared dataset under WORK: `dataset_key`, or the latest complete one."""
    work = WorkDir.at(work_dir)
    key = dataset_key or work.latest_dataset()
    path = work.dataset(key)
    if not (path / MANIFEST).is_file():
        known = ", ".join(k for k, _ in work.complete_datasets()) or "none"
        raise FileNotFoundError(f"dataset {key!r}: no complete dataset at {path} (prepared datasets: {known})")
    problems = tfrecords_mod.verify_dataset(path)
    if problems:
        raise RuntimeError(f"dataset {key} failed verification: " + "; ".join(problems))
    splits = json.loads((path / MANIFEST).read_text())["splits"]
    return DatasetRef(key, str(path), {name: info["num_examples"] for name, info in splits.items()})

