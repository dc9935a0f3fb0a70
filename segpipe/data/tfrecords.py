"""Write validated examples to sharded TFRecords, describe them in a manifest, read them back.

A dataset directory holds `<split>-NNNNN-of-NNNNN.tfrecord` shards and a
`manifest.json` written last: the directory is complete only once the
manifest exists. Shards are streamed (one example in memory per writer) and
renamed into place only when complete.

Over 300 lines on purpose: writing, describing (manifest) and reading back are
the one on-disk format of a dataset; verifying a dataset reads the very shards
and records this module writes, so they change together.
"""

from __future__ import annotations

import bisect
import errno
import glob
import itertools
import logging
import math
import os
import re
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segpipe import __version__, cancel
from segpipe.data import spec
from segpipe.data.images import load_image_rgb, load_trimap_png
from segpipe.data.validate import Example
from segpipe.fsutil import atomic_path, atomic_write_json, code_version, file_lock, read_json, sha256_file
from segpipe.layout import MANIFEST
from segpipe.progress import Progress

log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 512
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ShardInfo:
    """One written shard, as the manifest records it."""

    file: str
    split: str
    num_examples: int
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "num_examples": self.num_examples, "sha256": self.sha256, "bytes": self.bytes}


def shard_name(split: str, index: int, total: int) -> str:
    """`train-00000-of-00003.tfrecord`."""
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord"


_SHARD_FILE = re.compile(r"(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5,})-of-(?P<total>\d{5,})\.tfrecord")


def split_shards_complete(dataset_dir: str | Path, split: str) -> bool:
    """True when every shard `write_split_shards` writes for `split` is in `dataset_dir` (all N of
    `<split>-i-of-N`, not just one), read from the file names alone: no manifest needed, none read.
    A split with no shard on disk is not complete (an empty split writes none: callers know it is empty)."""
    totals: dict[int, set[str]] = {}
    for path in Path(dataset_dir).glob(f"{glob.escape(split)}-*-of-*.tfrecord"):
        m = _SHARD_FILE.fullmatch(path.name)
        if m and m["split"] == split:
            totals.setdefault(int(m["total"]), set()).add(path.name)
    return any({shard_name(split, i, total) for i in range(total)} <= names for total, names in totals.items())


def dataset_complete(dataset_dir: str | Path) -> bool:
    """True once `write_manifest` ran for `dataset_dir` (it writes the manifest last); `verify_dataset`
    checks the shards against it."""
    return (Path(dataset_dir) / MANIFEST).is_file()


def estimate_bytes(example: Example) -> int:
    """Rough serialized size: file sizes, or half the raw RGB size for images converted to PNG."""
    image = example.image_path.stat().st_size
    if example.image_format != "jpeg":
        image = max(image, example.height * example.width * 3 // 2)
    return image + example.trimap_path.stat().st_size + RECORD_OVERHEAD_BYTES


def plan_shards(examples: Sequence[Example], target_shard_bytes: int) -> list[list[Example]]:
    """Cut `examples` (in order) into contiguous shards of about `target_shard_bytes` each.

    `ceil(estimated bytes / target)` shards (at most one per example), cut where the
    running byte count is closest to an equal share; none for an empty list, never an empty shard.
    """
    if target_shard_bytes <= 0:
        raise ValueError(f"target_shard_bytes must be > 0, got {target_shard_bytes}")
    if not examples:
        return []
    sizes = [estimate_bytes(e) for e in examples]
    total = sum(sizes)
    n = min(len(examples), max(1, math.ceil(total / target_shard_bytes)))
    before = list(itertools.accumulate(sizes, initial=0))  # before[i]: bytes ahead of example i
    cuts = [0]
    for k in range(1, n):  # cut k sits where the bytes ahead are closest to k/n of the total
        goal = k * total / n
        i = bisect.bisect_left(before, goal)
        if i > 0 and goal - before[i - 1] < before[i] - goal:
            i -= 1
        cuts.append(max(cuts[-1] + 1, min(i, len(examples) - (n - k))))
    cuts.append(len(examples))
    return [list(examples[a:b]) for a, b in zip(cuts, cuts[1:])]


def trimap_png(example: Example) -> bytes:
    """The trimap PNG to store: the original file when it already is an 8-bit grayscale PNG.

    Every Oxford-IIIT Pet trimap is one, and validation has decoded it and checked
    its values and size, so its bytes are kept as they are (like clean JPEGs): no
    decode and re-encode (about 2 ms per image, most of the shard-writing time; see
    benchmarks/tfrecord_conversion.py). Any other trimap (palette, RGB, 16-bit,
    1/2/4-bit) is converted by `load_trimap_png`. The PNG header decides: IHDR bit
    depth 8 and colour type 0 (grayscale).
    """
    data = example.trimap_path.read_bytes()
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24] == 8 and data[25] == 0:
        return data
    return load_trimap_png(example)


def serialize(example: Example) -> bytes:
    """One `tf.train.Example` for `example`, per `segpipe.data.spec`."""
    image_bytes, image_format = load_image_rgb(example)
    return spec.serialize_example(
        image_bytes=image_bytes, image_format=image_format, mask_png=trimap_png(example),
        height=example.height, width=example.width, example_id=example.id, class_id=example.class_id,
        species=example.species, breed_id=example.breed_id, breed=example.breed,
    )


def write_shard(
    examples: Sequence[Example], path: str | Path, *, split: str | None = None, progress: Progress | None = None
) -> ShardInfo:
    """Stream `examples` into a TFRecord at `path` (temp name, renamed when complete); `progress` advances
    by one per example written."""
    import tensorflow as tf

    path = Path(path)
    written = 0
    with atomic_path(path) as tmp:
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:  # its write, flush or close may report the error
                for example in examples:
                    cancel.check(f"writing shard {path.name}")  # the temporary shard is removed
                    writer.write(serialize(example))
                    written += 1
                    if progress is not None:
                        progress.advance()
                writer.flush()
        except tf.errors.OpError as exc:
            raise _shard_write_error(exc, path, written, len(examples)) from exc
        digest, size = sha256_file(tmp), tmp.stat().st_size
    return ShardInfo(path.name, split or path.name.split("-")[0], len(examples), digest, size)


def _shard_write_error(exc: Any, path: Path, written: int, total: int) -> OSError:
    """TensorFlow's writer error restated as an OSError that names the shard (TensorFlow names only the
    temporary file it was given, or nothing): ENOSPC for a full disk, EIO otherwise."""
    message = getattr(exc, "message", None) or str(exc)
    where = f"could not write shard {path} ({written} of {total} examples written)"
    if "No space left on device" in message or "Disk quota exceeded" in message:
        return OSError(errno.ENOSPC, f"No space left on device: {where}; free some space and run again "
                                     "(the shards already written are kept)")
    return OSError(errno.EIO, f"{where}: {type(exc).__name__}: {message}")


def write_split_shards(
    examples: Sequence[Example], split: str, out_dir: str | Path, *, target_shard_bytes: int, workers: int = 2
) -> list[ShardInfo]:
    """Write one split's shards into `out_dir`, `workers` shards at a time; shard order is kept.

    One writer per split and directory at a time (a second process waits); temporary shards
    left by a killed writer are removed first.
    """
    if not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split name must be letters, digits or '_', got {split!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    plan = plan_shards(examples, target_shard_bytes)
    paths = [out_dir / shard_name(split, i, len(plan)) for i in range(len(plan))]
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.parent / f".{out_dir.name}.{split}.lock"):
        _remove_stale_temps(out_dir, split)
        with ThreadPoolExecutor(max_workers=workers) as pool, Progress(f"write-shards {split}", len(examples)) as p:
            return list(pool.map(lambda sp: write_shard(sp[0], sp[1], split=split, progress=p), zip(plan, paths)))


def _remove_stale_temps(out_dir: Path, split: str) -> None:
    """Delete `split`'s temporary shards left by a killed writer (only call while holding the split's lock)."""
    for tmp in glob.glob(os.path.join(glob.escape(str(out_dir)), f".{split}-*.tfrecord.tmp-*")):
        log.warning("removing %s left by an interrupted shard writer", tmp)
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------- manifest


def build_manifest(
    *,
    dataset_key: str,
    archives: Mapping[str, str],
    parameters: Mapping[str, Any],
    shards: Mapping[str, Sequence[ShardInfo]],
    validation_summary: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest document (see `write_manifest`)."""
    splits = {
        name: {"num_examples": sum(s.num_examples for s in infos), "shards": [s.to_dict() for s in infos]}
        for name, infos in shards.items()
    }
    return {
        "dataset_key": dataset_key,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "segpipe_version": __version__,
        "spec_version": spec.SPEC_VERSION,
        "feature_spec": dict(spec.FEATURE_KEYS),
        "archives": dict(archives),
        "parameters": dict(parameters),
        "validation": dict(validation_summary),
        "splits": splits,
        "num_examples": sum(s["num_examples"] for s in splits.values()),
    }


def write_manifest(
    dataset_dir: str | Path,
    *,
    dataset_key: str,
    archives: Mapping[str, str],
    parameters: Mapping[str, Any],
    shards: Mapping[str, Sequence[ShardInfo]],
    validation_summary: Mapping[str, Any],
) -> Path:
    """Write `manifest.json` atomically; call it last, after every shard is in place."""
    dataset_dir = Path(dataset_dir)
    for infos in shards.values():
        for s in infos:
            path = dataset_dir / s.file
            if not path.is_file() or path.stat().st_size != s.bytes:
                raise FileNotFoundError(f"shard {path} is missing or not {s.bytes} bytes; not writing the manifest")
    doc = build_manifest(dataset_key=dataset_key, archives=archives, parameters=parameters,
                         shards=shards, validation_summary=validation_summary)
    return atomic_write_json(dataset_dir / MANIFEST, doc)


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete dataset; a clear error when there is none."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset_dir} is not a complete dataset: no {MANIFEST} (run `segpipe prepare` to build one)"
        )
    return read_json(path)


def count_records(path: str | Path) -> int:
    """Number of records in a TFRecord file, from its framing (no TensorFlow, no CRC check)."""
    n, size = 0, Path(path).stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(8)
            if len(header) < 8:
                raise ValueError(f"{path}: truncated record header at byte {pos}")
            (length,) = struct.unpack("<Q", header)
            pos += 8 + 4 + length + 4
            if pos > size:
                raise ValueError(f"{path}: truncated record at byte {pos - length - 16}")
            f.seek(pos)
            n += 1
    return n


def verify_dataset(dataset_dir: str | Path) -> list[str]:
    """Problems with a dataset directory (missing shard, sha256/size/count mismatch); [] when sound."""
    dataset_dir = Path(dataset_dir)
    try:
        manifest = load_manifest(dataset_dir)
    except FileNotFoundError as exc:
        return [str(exc)]
    problems = []
    total = 0
    for split, info in manifest.get("splits", {}).items():
        split_total = 0
        for s in info["shards"]:
            path = dataset_dir / s["file"]
            split_total += s["num_examples"]
            if not path.is_file():
                problems.append(f"{split}: shard {s['file']} is missing")
                continue
            if path.stat().st_size != s["bytes"]:
                size = path.stat().st_size
                problems.append(f"{split}: shard {s['file']} is {size} bytes, manifest says {s['bytes']}")
            if sha256_file(path) != s["sha256"]:
                problems.append(f"{split}: shard {s['file']} sha256 does not match the manifest")
            try:
                n = count_records(path)
                if n != s["num_examples"]:
                    problems.append(f"{split}: shard {s['file']} holds {n} records, manifest says {s['num_examples']}")
            except ValueError as exc:
                problems.append(f"{split}: {exc}")
        if split_total != info["num_examples"]:
            problems.append(f"{split}: shards hold {split_total} examples, manifest says {info['num_examples']}")
        total += split_total
    if total != manifest.get("num_examples"):
        problems.append(f"splits hold {total} examples, manifest says {manifest.get('num_examples')}")
    return problems


# --------------------------------------------------------------------------- reading


def shard_files(dataset_dir: str | Path, split: str) -> list[str]:
    """Paths of `split`'s shards, from the manifest."""
    manifest = load_manifest(dataset_dir)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {dataset_dir}; it has {', '.join(sorted(splits)) or 'none'}")
    return [str(Path(dataset_dir) / s["file"]) for s in splits[split]["shards"]]


def read_examples(
    dataset_dir: str | Path,
    split: str,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
    num_parallel_calls: int | None = None,
) -> Any:
    """A `tf.data.Dataset` of parsed example dicts (see `segpipe.data.spec.parse_example`).

    Deterministic order unless `shuffle_files`; then the shard order is
    reshuffled each epoch and records interleave as they come.
    """
    import tensorflow as tf

    files = shard_files(dataset_dir, split)
    calls = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, dtype=tf.string))
    if shuffle_files and files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=calls, deterministic=not shuffle_files,
    )
    ds = ds.map(spec.parse_example, num_parallel_calls=calls, deterministic=not shuffle_files)
    return ds.prefetch(tf.data.AUTOTUNE)
