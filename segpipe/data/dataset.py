"""Dataset identity and the dataset-writing stages: the content key, the plan, the finished dataset.

    plan = plan_dataset(report, digests, data.content_params())     # the split, and the dataset key
    shards = {s: write_dataset_shards(plan, s, report, out_dir) for s in plan.splits}
    ref = finish_dataset(plan, digests, report, shards, out_dir)    # validation, split, manifest (last), verified
    ref = locate_dataset(work_dir, key)                             # a dataset prepared earlier, verified

A stage's code is named by its entry modules only; `segpipe.codekeys` reads the rest from the import
graph (every segpipe module they can import), so a module split off another joins the key by itself.
The dataset key covers `CONTENT_ENTRY`'s code (this module included: it maps the parameters onto the
split); the task layer's cache keys name these entries. `segpipe.data.prepare.prepare_dataset` runs the
whole data stage, archives to manifest, with these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segpipe.codekeys import code_key
from segpipe.fsutil import digest_json

if TYPE_CHECKING:
    from segpipe.data.tfrecords import ShardInfo
    from segpipe.data.validate import ValidationReport

DOWNLOAD_ENTRY: tuple[str, ...] = ("segpipe.data.download",)
"""The download (and verify) stage."""

VALIDATE_ENTRY: tuple[str, ...] = ("segpipe.data.validate",)
"""Validation: which pairs decode, and what is known about each."""

CONTENT_ENTRY: tuple[str, ...] = (*VALIDATE_ENTRY, "segpipe.data.split", "segpipe.data.tfrecords", "segpipe.data.dataset")
"""The library code that decides a dataset's content (part of the dataset key); the stages that write a
dataset (split, shards, manifest) run this same code, so their cache keys name it too."""


def data_code_digest() -> str:
    """Digest of the library code that decides a dataset's content."""
    return code_key(CONTENT_ENTRY)


def dataset_key(archives: dict[str, str], params: dict[str, Any]) -> str:
    """16 hex digits from the archive digests, the content parameters and the data code.

    Same archives + same parameters + same code = same key, on any machine and
    in any directory.
    """
    return digest_json({"archives": archives, "params": params, "code": data_code_digest()})[:16]


# --------------------------------------------------------------------------- what the stages pass on


@dataclass(frozen=True)
class DatasetPlan:
    """The split of the valid examples and the dataset key it fixes (`plan_dataset`)."""

    dataset_key: str
    splits: dict[str, list[str]]
    params: dict[str, Any]

    def cache_content(self) -> dict[str, Any]:
        return {"dataset_key": self.dataset_key, "splits": self.splits}

    @property
    def num_examples(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.splits.items()}


@dataclass(frozen=True)
class DatasetRef:
    """A complete prepared dataset: its content key, where it is, and its split sizes."""

    dataset_key: str
    path: str
    num_examples: dict[str, int]

    def cache_content(self) -> str:
        return self.dataset_key


# --------------------------------------------------------------------------- the stages


def plan_dataset(report: ValidationReport, digests: Mapping[str, str], params: Mapping[str, Any]) -> DatasetPlan:
    """The seeded split of `report`'s valid examples (`params`: `DataConfig.content_params()`) and the
    dataset key of `digests` (archive name -> sha256) and `params`."""
    from segpipe.data.split import make_split

    lists = {ex.id: ex.lists for ex in report.examples}
    splits = make_split(
        [ex.id for ex in report.examples], lists, mode=params["split"], val_fraction=params["val_fraction"],
        test_fraction=params["test_fraction"], seed=params["seed"], holdout_breeds=params.get("holdout_breeds", ()),
    )
    params = dict(params)
    return DatasetPlan(dataset_key(dict(digests), params), splits, params)


def write_dataset_shards(
    plan: DatasetPlan, split: str, report: ValidationReport, out_dir: str | Path, workers: int = 2
) -> list[ShardInfo]:
    """Write `split`'s examples of `plan` as sharded TFRecords into `out_dir` (each shard atomically)."""
    from segpipe.data.tfrecords import write_split_shards

    by_id = {ex.id: ex for ex in report.examples}
    examples = [by_id[i] for i in plan.splits.get(split, [])]
    return write_split_shards(
        examples, split, out_dir, target_shard_bytes=int(plan.params["shard_size_mb"] * 2**20), workers=workers
    )


def finish_dataset(
    plan: DatasetPlan, digests: Mapping[str, str], report: ValidationReport,
    shards: Mapping[str, Sequence[ShardInfo]], out_dir: str | Path,
) -> DatasetRef:
    """validation.json, split.json, then manifest.json last (the dataset is complete once it exists),
    then every shard checked against the manifest: RuntimeError naming the problems otherwise."""
    from segpipe.data.split import write_split
    from segpipe.data.tfrecords import write_manifest
    from segpipe.data.validate import write_validation

    out_dir = Path(out_dir)
    write_validation(report, out_dir)
    write_split(plan.splits, out_dir, plan.params)
    write_manifest(
        out_dir, dataset_key=plan.dataset_key, archives=dict(digests), parameters=plan.params, shards=shards,
        validation_summary=report.counts,
    )
    _verify(out_dir, plan.dataset_key)
    return DatasetRef(plan.dataset_key, str(out_dir), plan.num_examples)


def _verify(path: str | Path, key: str) -> None:
    """RuntimeError naming every shard of the dataset in `path` that does not match its manifest."""
    from segpipe.data.tfrecords import verify_dataset

    problems = verify_dataset(path)
    if problems:
        raise RuntimeError(f"dataset {key} failed verification: " + "; ".join(problems))


def open_dataset(path: str | Path, dataset_key: str | None = None) -> DatasetRef:
    """The complete dataset in `path`, read from its manifest (`tfrecords.load_manifest`) after every shard
    is checked against it; FileNotFoundError when there is none, RuntimeError when it does not verify."""
    from segpipe.data.tfrecords import load_manifest

    manifest = load_manifest(path)
    key = dataset_key or manifest.get("dataset_key") or Path(path).name
    _verify(path, key)
    splits = manifest["splits"]
    return DatasetRef(key, str(path), {name: info["num_examples"] for name, info in splits.items()})


def locate_dataset(work_dir: str | Path | None, dataset_key: str | None = None) -> DatasetRef:
    """A prepared dataset under WORK: `dataset_key`, or the latest complete one (`open_dataset`)."""
    from segpipe.data.tfrecords import dataset_complete
    from segpipe.layout import WorkDir

    work = WorkDir.at(work_dir)
    key = dataset_key or work.latest_dataset()
    path = work.dataset(key)
    if not dataset_complete(path):
        known = ", ".join(k for k, _ in work.complete_datasets()) or "none"
        raise FileNotFoundError(f"dataset {key!r}: no complete dataset at {path} (prepared datasets: {known})")
    return open_dataset(path, key)
