"""TFRecord conversion: images/s and peak RSS against the raw decode + re-encode ceiling.

    .venv/bin/python benchmarks/tfrecord_conversion.py             # real sample + 300 and 3,000 synthetic
    .venv/bin/python benchmarks/tfrecord_conversion.py --n 300 3000 --no-real

Datasets: the real sample's extracted files (303 images of real sizes) and
synthetic trees of N ~500x375 JPEGs (`tests.synthetic.make_pets_tree`).

Conversion is what `segpipe prepare` does per image: `validate_dataset` (full
decode of every image and trimap, checks) then `write_split_shards` (original
JPEG bytes - no re-encode for clean JPEGs -, the trimap decoded again and
re-encoded as PNG, `tf.train.Example` serialisation, sha256 of each shard).
Each conversion runs in a fresh subprocess, so its `ru_maxrss` is its own peak.

Ceilings, measured in their own subprocess with the same worker count:
  decode_reencode  PIL decode + JPEG encode (quality 90) of each image: the
                   reference named in the issue (target: conversion >= 70% of it);
  minimal_work     PIL decode of the image and trimap + PNG encode of the trimap:
                   the least work segpipe's design needs (validate everything,
                   store the original JPEG, store the trimap as PNG).

Prints one JSON object; progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import (Machine, add_data_args, emit, ensure_dataset, log, peak_rss_mb_self, r,  # noqa: E402
                               run_measured)

TARGET_SHARE = 0.70


# --------------------------------------------------------------------------- children


def _pairs(images_dir: Path, annotations_dir: Path, n: int) -> list[tuple[Path, Path]]:
    trimaps = annotations_dir / "trimaps"
    images = sorted(p for p in images_dir.glob("*.jpg") if not p.name.startswith("."))
    return [(p, trimaps / f"{p.stem}.png") for p in images if (trimaps / f"{p.stem}.png").is_file()][:n]


def child_ceiling(images_dir: Path, annotations_dir: Path, n: int, workers: int) -> dict[str, Any]:
    """Both ceilings over the first `n` image/trimap pairs, `workers` threads."""
    from PIL import Image

    pairs = _pairs(images_dir, annotations_dir, n)

    def decode_reencode(pair: tuple[Path, Path]) -> int:
        buf = io.BytesIO()
        with Image.open(pair[0]) as img:
            img.convert("RGB").save(buf, format="JPEG", quality=90)
        return buf.tell()

    def minimal_work(pair: tuple[Path, Path]) -> int:
        with Image.open(pair[0]) as img:
            img.load()
        buf = io.BytesIO()
        with Image.open(pair[1]) as tri:
            tri.load()
            tri.save(buf, format="PNG")
        return buf.tell()

    out: dict[str, Any] = {"n": len(pairs)}
    for name, fn in (("decode_reencode", decode_reencode), ("minimal_work", minimal_work)):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fn, pairs))
        out[f"{name}_images_per_s"] = len(pairs) / (time.perf_counter() - start)
    return out


def child_convert(images_dir: Path, annotations_dir: Path, out: Path, n: int, workers: int,
                  shard_mb: float) -> dict[str, Any]:
    """Validate, then write the first `n` valid examples as one split; runs in its own process."""
    import tensorflow as tf  # noqa: F401  (imported up front so its memory is in the baseline)

    from segpipe.data.tfrecords import write_split_shards
    from segpipe.data.validate import validate_dataset

    rss_imported = peak_rss_mb_self()
    t0 = time.perf_counter()
    examples = validate_dataset(images_dir, annotations_dir, workers=workers).examples[:n]
    t1 = time.perf_counter()
    rss_validated = peak_rss_mb_self()
    shards = write_split_shards(examples, "train", out, target_shard_bytes=int(shard_mb * 2**20), workers=workers)
    t2 = time.perf_counter()
    return {
        "n": len(examples),
        "validate_s": t1 - t0,
        "write_s": t2 - t1,
        "shards": len(shards),
        "shard_mb": sum(s.bytes for s in shards) / 2**20,
        "peak_rss_after_imports_mb": rss_imported,
        "peak_rss_after_validate_mb": rss_validated,
        "peak_rss_mb": peak_rss_mb_self(),
    }


# --------------------------------------------------------------------------- parent


def child_json(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    done = run_measured([sys.executable, __file__, *args])
    if done["returncode"]:
        raise SystemExit(f"benchmark child {args[:2]} failed:\n{done['stderr'][-4000:]}")
    return json.loads(done["stdout"].strip().splitlines()[-1]), done


def measure(label: str, images_dir: Path, annotations_dir: Path, n: int, workers: int, shard_mb: float,
            tmp: Path) -> dict[str, Any]:
    """Ceilings, conversion, ceilings again (the load may drift); conversion's share of each ceiling."""
    common = [str(images_dir), str(annotations_dir), str(n), "--workers", str(workers)]
    before, _ = child_json(["--child-ceiling", *common])
    conv, done = child_json(["--child-convert", *common, "--shard-mb", str(shard_mb),
                             "--child-out", str(tmp / f"out-{label}")])
    after, _ = child_json(["--child-ceiling", *common])
    total_s = conv["validate_s"] + conv["write_s"]
    rate = conv["n"] / total_s
    row: dict[str, Any] = {
        "images": conv["n"],
        "conversion_images_per_s": r(rate),
        "validate_images_per_s": r(conv["n"] / conv["validate_s"]),
        "write_images_per_s": r(conv["n"] / conv["write_s"]),
        "shards": conv["shards"],
        "shard_mb_total": r(conv["shard_mb"]),
        "peak_rss_after_imports_mb": r(conv["peak_rss_after_imports_mb"]),
        "peak_rss_after_validate_mb": r(conv["peak_rss_after_validate_mb"]),
        "peak_rss_mb": r(conv["peak_rss_mb"]),
        "peak_rss_mb_wait4": r(done["peak_rss_mb"]),
    }
    for name in ("decode_reencode", "minimal_work"):
        ceiling = (before[f"{name}_images_per_s"] + after[f"{name}_images_per_s"]) / 2
        row[f"ceiling_{name}_images_per_s"] = r(ceiling)
        row[f"ceiling_{name}_runs"] = [r(before[f"{name}_images_per_s"]), r(after[f"{name}_images_per_s"])]
        row[f"vs_{name}"] = r(rate / ceiling, 3)
    log(f"{label}: {row['conversion_images_per_s']} images/s, {row['vs_decode_reencode']:.0%} of decode+re-encode, "
        f"{row['vs_minimal_work']:.0%} of the minimal work, peak RSS {row['peak_rss_mb']} MB")
    return row


def main() -> None:
    from segpipe.config import DataConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--n", type=int, nargs="*", default=[300, 3000], help="synthetic dataset sizes")
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    p.add_argument("--workers", type=int, default=DataConfig().workers)
    p.add_argument("--shard-mb", type=float, default=DataConfig().shard_size_mb)
    p.add_argument("--no-real", action="store_true", help="skip the real sample")
    p.add_argument("--child-ceiling", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-convert", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_ceiling:
        images, annotations, n = args.child_ceiling
        print(json.dumps(child_ceiling(Path(images), Path(annotations), int(n), args.workers)))
        return
    if args.child_convert:
        images, annotations, n = args.child_convert
        print(json.dumps(child_convert(Path(images), Path(annotations), Path(args.child_out), int(n),
                                       args.workers, args.shard_mb)))
        return

    machine = Machine()
    from tests.synthetic import DEFAULT_BREEDS, make_pets_tree

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.no_real:
            ensure_dataset(args.work_dir, args.source)
            extracted = Path(args.work_dir).resolve() / "extracted"
            images_dir = next(extracted.glob("*/images"))
            annotations_dir = next(extracted.glob("*/annotations"))
            results["real_sample"] = measure("real sample", images_dir, annotations_dir, 10**9, args.workers,
                                             args.shard_mb, tmp)
        for n in args.n:
            tree = tmp / f"tree-{n}"
            start = time.perf_counter()
            make_pets_tree(tree, n_per_breed=math.ceil(n / len(DEFAULT_BREEDS)), size=tuple(args.size),
                           include_odd=False, seed=n)
            log(f"generated {n} synthetic {args.size[0]}x{args.size[1]} images in {time.perf_counter() - start:.0f} s")
            results[f"synthetic_{n}"] = measure(f"synthetic {n}", tree / "images", tree / "annotations", n,
                                                args.workers, args.shard_mb, tmp)

    synthetic = [results[f"synthetic_{n}"] for n in args.n]
    rss_growth = (synthetic[-1]["peak_rss_mb"] - synthetic[0]["peak_rss_mb"]) if len(synthetic) > 1 else None
    shares = {k: v["vs_decode_reencode"] for k, v in results.items()}
    emit({
        "benchmark": "tfrecord_conversion",
        "workers": args.workers,
        "shard_mb": args.shard_mb,
        "synthetic_image_size": args.size,
        "conversion_is": "validate_dataset + write_split_shards of one split, fresh subprocess each",
        "results": results,
        "peak_rss_growth_mb": r(rss_growth) if rss_growth is not None else None,
        "targets": {
            "conversion_vs_decode_reencode": {"target": TARGET_SHARE, "got": shares,
                                              "met": all(v >= TARGET_SHARE for v in shares.values())},
            "peak_rss_flat": {"sizes": args.n, "growth_mb": r(rss_growth) if rss_growth is not None else None,
                              "met": rss_growth is not None and rss_growth < 50},
        },
        **machine.provenance(config_note="runs no PipelineConfig: validate_dataset and write_split_shards with "
                                         "the workers and shard size recorded above"),
    }, args.out)


if __name__ == "__main__":
    main()
