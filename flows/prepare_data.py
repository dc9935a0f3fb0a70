"""Flows `download-data` (download → verify) and `prepare-data` (… → extract → validate → split → shards → manifest)."""

from __future__ import annotations

from prefect import flow

from segpipe.config import PipelineConfig
from segpipe.data import ARCHIVES
from segpipe.data.dataset import DatasetRef
from segpipe.data.download import Archive
from segpipe.layout import resolve_work_dir
from segpipe_app.tasks.data import (
    download_task,
    extract_task,
    split_task,
    validate_task,
    verify_task,
    write_manifest_task,
    write_shards_task,
)


@flow(name="download-data")
def download_data_flow(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> dict[str, Archive]:
    """Fetch both archives (in parallel) and verify them; returns the verified archives by name."""
    work = str(resolve_work_dir(work_dir))
    data = config.data
    futures = {name: download_task.submit(data.source, name, work, data.download_timeout_s) for name in ARCHIVES}
    archives = {name: future.result() for name, future in futures.items()}
    for archive in archives.values():
        verify_task(archive)
    return archives


@flow(name="prepare-data")
def prepare_data_flow(config: PipelineConfig = PipelineConfig(), work_dir: str | None = None) -> DatasetRef:
    """Build the TFRecord dataset for `config.data`; returns where it is and its content key."""
    work = str(resolve_work_dir(work_dir))
    data = config.data
    archives = download_data_flow(config, work)
    digests = {name: archive.sha256 for name, archive in archives.items()}
    roots = {name: extract_task(archive.path, archive.sha256, work) for name, archive in archives.items()}
    report = validate_task(roots["images.tar.gz"], roots["annotations.tar.gz"], digests, data.workers)
    plan = split_task(report, digests, data.content_params())
    futures = {name: write_shards_task.submit(name, plan, report, work, data.workers) for name in plan.splits}
    shards = {name: future.result() for name, future in futures.items()}
    return write_manifest_task(plan, digests, report, shards, work)
