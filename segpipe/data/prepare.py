"""The data stage in one call: archives from a source to a verified TFRecord dataset under WORK.

    from segpipe.config import DataConfig
    from segpipe.data.prepare import prepare_dataset
    ref = prepare_dataset("path/to/archives", "work", DataConfig(split="random"))
    ref.dataset_key, ref.path, ref.num_examples

download → verify → extract → validate → split (the dataset key) → shards → manifest, with the same library
functions the Prefect tasks of `prepare-data` call one each (`segpipe.data.download.fetch_archive`,
`verify_downloaded`, `segpipe.data.extract.extract_archive`, `segpipe.data.validate.validate_dataset`,
`segpipe.data.dataset.plan_dataset`, `write_dataset_shards`, `finish_dataset`), so the dataset key and the
files are the flow's. Every step is resumable and reuses what is complete; no Prefect, no cache records.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from segpipe.config import DataConfig
from segpipe.data import ARCHIVES
from segpipe.data.dataset import DatasetRef, finish_dataset, open_dataset, plan_dataset, write_dataset_shards
from segpipe.data.download import fetch_archive, verify_downloaded
from segpipe.data.extract import extract_archive
from segpipe.data.tfrecords import dataset_complete
from segpipe.data.validate import validate_dataset
from segpipe.layout import WorkDir

log = logging.getLogger(__name__)


def prepare_dataset(
    source: str | None, work_dir: str | os.PathLike[str] | None, data: DataConfig = DataConfig(), *,
    progress: bool | None = None,
) -> DatasetRef:
    """Prepare `data` (its content parameters, workers and download timeout) from `source` (None:
    `data.source`) under `work_dir` (None: `$SEGPIPE_WORK_DIR` or ./segpipe-work); the complete dataset.

    A dataset already complete under its key is checked against its manifest and returned as it is (written
    again when a shard no longer matches).
    """
    work = WorkDir.at(work_dir)
    source = data.source if source is None else source
    digests, roots = {}, {}
    for name in ARCHIVES:
        archive = fetch_archive(source, name, work.downloads, timeout=data.download_timeout_s, progress=progress)
        digests[name] = verify_downloaded(archive)
        roots[name] = extract_archive(Path(archive.path), work.extracted(digests[name]), expected_sha256=digests[name]).dest
    report = validate_dataset(roots["images.tar.gz"] / "images", roots["annotations.tar.gz"] / "annotations",
                              workers=data.workers)
    plan = plan_dataset(report, digests, data.content_params())
    out_dir = work.dataset(plan.dataset_key)
    if dataset_complete(out_dir):
        try:
            ref = open_dataset(out_dir, plan.dataset_key)
        except RuntimeError as exc:  # a shard changed or went missing since: write the dataset again
            log.warning("%s; writing it again", exc)
        else:
            log.info("dataset %s is already complete: %s", plan.dataset_key, out_dir)
            return ref
    shards = {name: write_dataset_shards(plan, name, report, out_dir, data.workers) for name in plan.splits}
    ref = finish_dataset(plan, digests, report, shards, out_dir)
    log.info("dataset %s ready: %s", ref.dataset_key, out_dir)
    return ref
