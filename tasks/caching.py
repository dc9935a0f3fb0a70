"""Cache policies: the one place where Prefect caching is decided.

Every task's cache policy is a named constant below (`DOWNLOAD_CACHE`, `TRAIN_CACHE`, ...); the tasks only
name them. Retry settings are in `tasks/retries.py`.

Every cache key is a digest of *content*: archive digests, dataset keys,
configuration values and the source code of the task (Prefect's `TASK_SOURCE`) and of the
library modules it calls (`LibrarySource`): a stage names its entry modules, `task_code(*entry_modules)`,
and `segpipe.codekeys.code_key` covers every segpipe module they can import, read from the import graph. Paths and modification times never enter a key:
Prefect's `INPUTS` is used minus every path input where the inputs that matter are plain values;
`Content` names the inputs that enter where an input is an object that also carries a path
(an `Archive`, a `DatasetRef`, a `ModelConfig` with a weights file) and enters by its content.

A cached result is only trusted while the artifact it points at is still on
disk (`ArtifactCheck`): when the artifact is gone (someone deleted part of WORK) the policy
forces one fresh run instead of returning a stale result. Whether an artifact is complete is the
library's call, beside the code that writes it (`segpipe.data.download.is_downloaded`, `Archive.on_disk`,
`segpipe.data.extract.extraction_complete`, `segpipe.data.tfrecords.split_shards_complete`, `dataset_complete`,
`segpipe.runs.naming.run_complete`); this module only says which check each task's cache trusts, and never
names a file.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_logger

from segpipe.codekeys import code_key
from segpipe.data.dataset import CONTENT_ENTRY, DOWNLOAD_ENTRY, VALIDATE_ENTRY
from segpipe.data.download import TransientDownloadError, is_downloaded, resolve_source, source_fingerprint
from segpipe.data.extract import extraction_complete
from segpipe.data.tfrecords import dataset_complete, split_shards_complete
from segpipe.fsutil import digest_json, sha256_file_memo
from segpipe.gallery.render import gallery_complete
from segpipe.layout import WorkDir
from segpipe.runs.naming import TRAIN_ENTRY, run_complete, train_run_dir

TaskInputs = dict[str, Any]


# --------------------------------------------------------------------------- building blocks


@dataclass
class Content(CachePolicy):
    """Key = digest of the content of the named inputs (`cache_content()` where defined, pydantic
    models by their data); inputs not named here (paths, the work directory, worker counts) never enter."""

    names: tuple[str, ...] = ()

    def compute_key(self, task_ctx: TaskRunContext, inputs: TaskInputs, flow_parameters: Any, **kwargs: Any) -> str:
        return digest_json({name: _plain(inputs.get(name)) for name in self.names})


@dataclass
class LibrarySource(CachePolicy):
    """Key = `segpipe.codekeys.code_key(modules)`: the source of every segpipe module the entry modules can
    import, so a change to the code a task calls recomputes exactly the stages it affects (`TASK_SOURCE`
    covers the task's own source)."""

    modules: tuple[str, ...] = ()
    _digest: str | None = field(default=None, repr=False)

    def compute_key(self, task_ctx: TaskRunContext, inputs: TaskInputs, flow_parameters: Any, **kwargs: Any) -> str:
        if self._digest is None:
            self._digest = code_key(self.modules)
        return self._digest


@dataclass
class Derived(CachePolicy):
    """Adds inputs derived from the task's inputs (what a URL or a file holds) before `key` reads them.

    `derive(inputs)` returns the extra inputs, or None when they cannot be known right now: then
    the run is uncached.
    """

    key: CachePolicy = field(default_factory=lambda: NO_CACHE)
    derive: Callable[[TaskInputs], TaskInputs | None] = lambda inputs: {}

    def compute_key(self, task_ctx: TaskRunContext, inputs: TaskInputs, flow_parameters: Any, **kwargs: Any):
        extra = self.derive(inputs)
        if extra is None:
            return None
        return self.key.compute_key(task_ctx, {**inputs, **extra}, flow_parameters, **kwargs)


@dataclass
class ArtifactCheck(CachePolicy):
    """`key`, named after the task, trusted only while `outputs_ok(inputs)` (the artifact is complete):
    a cache record whose artifact is gone is bypassed once, and the fresh run writes a new one."""

    key: CachePolicy = field(default_factory=lambda: NO_CACHE)
    outputs_ok: Callable[[TaskInputs], bool] = lambda inputs: True

    def compute_key(self, task_ctx: TaskRunContext, inputs: TaskInputs, flow_parameters: Any, **kwargs: Any):
        if task_ctx is None:
            return None
        digest = self.key.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if digest is None:
            return None
        key = f"{task_ctx.task.name}-{digest[:32]}"
        if not self.outputs_ok(inputs):
            store = getattr(task_ctx, "result_store", None)
            if store is not None and store.exists(key):
                # The record exists but its artifact is gone: run once, uncached.
                return f"{key}-rebuild-{uuid.uuid4().hex}"
        return key


def _plain(value: Any) -> Any:
    """Content of a value for hashing: `cache_content()` where defined, pydantic models by their data."""
    if hasattr(value, "cache_content"):
        return value.cache_content()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def task_code(*entry_modules: str) -> CachePolicy:
    """The code a task runs: its own source and every segpipe module its entry modules can import."""
    return TASK_SOURCE + LibrarySource(modules=entry_modules)


# --------------------------------------------------------------------------- the library code of each stage

# Each stage names its entry modules; its code key is the closure under segpipe's imports (segpipe.codekeys).
# The data stages' entries are the library's own (segpipe.data.dataset), train's is the run id's (segpipe.runs.naming).
EXTRACT_ENTRY = ("segpipe.data.extract",)
EVALUATE_ENTRY = ("segpipe.evaluation.evaluate",)
GALLERY_ENTRY = ("segpipe.evaluation.evaluate", "segpipe.gallery.render")


# --------------------------------------------------------------------------- what each artifact check looks at


def _source_fingerprint(inputs: TaskInputs) -> TaskInputs | None:
    """What the source holds for this archive (a digest or an ETag), not where it is."""
    source = resolve_source(inputs["source"])
    try:
        fingerprint = source_fingerprint(source, inputs.get("timeout", 60.0), names=[inputs["name"]])
    except TransientDownloadError as exc:
        # The source cannot say what it holds right now: run uncached; the task itself retries.
        get_logger("segpipe.tasks").warning("cannot fingerprint the source (%s); running without the cache", exc)
        return None
    return {"fingerprint": fingerprint[inputs["name"]]}


def _model_digests(inputs: TaskInputs) -> TaskInputs:
    """Models enter the key by the sha256 of their files, never by their paths."""
    return {"models": [sha256_file_memo(p) if Path(p).is_file() else f"missing:{p}" for p in inputs["model_paths"]]}


def _scoring(inputs: TaskInputs) -> TaskInputs:
    """What the evaluate task's result depends on: the models' bytes and the eval section's fields that
    change the scores (not `batch_size`); `split` overrides the section's split where given."""
    e = inputs["eval_config"]
    return {**_model_digests(inputs), "split": inputs.get("split") or e.split,
            "collapse_threshold": e.collapse_threshold, "tta_flip": e.tta_flip, "tta_sizes": list(e.tta_sizes)}


def _gallery_choice(inputs: TaskInputs) -> TaskInputs:
    """What the gallery task's pictures depend on: the models' bytes and the eval section's gallery fields."""
    e = inputs["eval_config"]
    return {**_model_digests(inputs), "split": e.split, "n_sample": e.gallery_samples, "n_worst": e.gallery_worst,
            "seed": e.gallery_seed, "tta_flip": e.tta_flip, "tta_sizes": list(e.tta_sizes)}


def _downloaded(inputs: TaskInputs) -> bool:
    return is_downloaded(WorkDir.at(inputs["work_dir"]).downloads, inputs["name"])


def _archive_on_disk(inputs: TaskInputs) -> bool:
    return inputs["archive"].on_disk()


def _extracted(inputs: TaskInputs) -> bool:
    return extraction_complete(WorkDir.at(inputs["work_dir"]).extracted(inputs["digest"]))


def _split_shards_exist(inputs: TaskInputs) -> bool:
    plan = inputs["plan"]
    if not plan.splits.get(inputs["split_name"]):
        return True  # an empty split has no shards
    return split_shards_complete(WorkDir.at(inputs["work_dir"]).dataset(plan.dataset_key), inputs["split_name"])


def _manifest_written(inputs: TaskInputs) -> bool:
    return dataset_complete(WorkDir.at(inputs["work_dir"]).dataset(inputs["plan"].dataset_key))


def _trained(inputs: TaskInputs) -> bool:
    return run_complete(train_run_dir(inputs["work_dir"], inputs["dataset"].dataset_key, inputs["model"],
                                      inputs["train_config"]))


# --------------------------------------------------------------------------- the cache policy of each task

# data (tasks/data.py)
DOWNLOAD_CACHE = Derived(
    key=ArtifactCheck(
        key=Content(names=("name", "fingerprint")) + task_code(*DOWNLOAD_ENTRY, "segpipe.layout"), outputs_ok=_downloaded
    ),
    derive=_source_fingerprint,
)
VERIFY_CACHE = ArtifactCheck(
    key=Content(names=("archive",)) + task_code(*DOWNLOAD_ENTRY), outputs_ok=_archive_on_disk
)
EXTRACT_CACHE = ArtifactCheck(
    key=INPUTS - "archive_path" - "work_dir" + task_code(*EXTRACT_ENTRY), outputs_ok=_extracted
)
VALIDATE_CACHE = INPUTS - "images_root" - "annotations_root" - "workers" + task_code(*VALIDATE_ENTRY)
SPLIT_CACHE = INPUTS - "report" + task_code(*CONTENT_ENTRY)
WRITE_SHARDS_CACHE = ArtifactCheck(
    key=Content(names=("split_name", "plan")) + task_code(*CONTENT_ENTRY), outputs_ok=_split_shards_exist
)
WRITE_MANIFEST_CACHE = ArtifactCheck(
    key=Content(names=("plan", "digests")) + task_code(*CONTENT_ENTRY), outputs_ok=_manifest_written
)
LOCATE_DATASET_CACHE = NO_CACHE  # it only reads what is on disk

# training (tasks/training.py); the eval section (the collapse threshold) does not enter: it changes only
# the `collapsed` flag of a new run's train_summary.json, not the task's result
TRAIN_CACHE = ArtifactCheck(
    key=Content(names=("dataset", "model", "train_config")) + task_code(*TRAIN_ENTRY), outputs_ok=_trained
)

# evaluation (tasks/evaluation.py): the eval section enters by the fields that change the result (`_scoring`,
# `_gallery_choice`), so a change to another field (the batch size, the gallery's fields for evaluate) keeps the key
EVALUATE_CACHE = Derived(
    key=ArtifactCheck(
        key=Content(names=("models", "dataset", "split", "collapse_threshold", "tta_flip", "tta_sizes"))
        + task_code(*EVALUATE_ENTRY),
        outputs_ok=lambda i: Path(i["out_path"]).is_file(),
    ),
    derive=_scoring,
)
GALLERY_CACHE = Derived(
    key=ArtifactCheck(
        key=Content(names=("models", "dataset", "split", "n_sample", "n_worst", "seed", "per_image", "tta_flip",
                           "tta_sizes"))
        + task_code(*GALLERY_ENTRY),
        outputs_ok=lambda i: gallery_complete(i["out_dir"]),
    ),
    derive=_gallery_choice,
)

# never cached: inputs are arbitrary files (predict) or the promotion state under WORK (champion, promote)
PREDICT_CACHE = NO_CACHE
PROMOTION_CACHE = NO_CACHE
# never cached: an export is only as good as the fresh-process parity check it runs every time
EXPORT_CACHE = NO_CACHE
