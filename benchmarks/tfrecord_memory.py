"""Does writing TFRecords stream? Peak memory should not grow with the number of images.

    python benchmarks/tfrecord_memory.py --n 300 3000

For each N, a synthetic tree of N ~500x375 JPEGs is generated, then a fresh
subprocess validates it and writes its shards (so each N gets its own
`ru_maxrss`). Prints one JSON document: per N, the time and images/s of
validation and of shard writing, and the peak RSS after the imports (TensorFlow),
after validation and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def child(tree: Path, out: Path, n: int, workers: int, shard_mb: float) -> dict:
    """Validate `tree` and write the first `n` examples as one split; runs in its own process."""
    import tensorflow as tf  # noqa: F401  (imported up front so its memory is in the baseline)

    from segpipe.data.tfrecords import write_split_shards
    from segpipe.data.validate import validate_dataset

    rss_imported = peak_rss_mb()
    t0 = time.perf_counter()
    examples = validate_dataset(tree / "images", tree / "annotations", workers=workers).examples[:n]
    t1 = time.perf_counter()
    rss_validated = peak_rss_mb()
    shards = write_split_shards(examples, "train", out, target_shard_bytes=int(shard_mb * 2**20), workers=workers)
    t2 = time.perf_counter()
    return {
        "n": len(examples),
        "validate_s": round(t1 - t0, 2),
        "validate_images_per_s": round(len(examples) / (t1 - t0), 1),
        "write_s": round(t2 - t1, 2),
        "write_images_per_s": round(len(examples) / (t2 - t1), 1),
        "shards": len(shards),
        "shard_mb": round(sum(s.bytes for s in shards) / 2**20, 1),
        "peak_rss_after_imports_mb": round(rss_imported, 1),
        "peak_rss_after_validate_mb": round(rss_validated, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[300, 3000])
    p.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-mb", type=float, default=32.0)
    p.add_argument("--child", nargs=3, metavar=("TREE", "OUT", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        tree, out, n = args.child
        print(json.dumps(child(Path(tree), Path(out), int(n), args.workers, args.shard_mb)))
        return

    from tests.synthetic import DEFAULT_BREEDS, make_pets_tree

    results = []
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="segpipe-bench-") as tmp:
            t0 = time.perf_counter()
            make_pets_tree(Path(tmp) / "tree", n_per_breed=math.ceil(n / len(DEFAULT_BREEDS)),
                           size=tuple(args.size), include_odd=False, seed=n)
            generate_s = time.perf_counter() - t0
            cmd = [sys.executable, __file__, "--workers", str(args.workers), "--shard-mb", str(args.shard_mb),
                   "--child", str(Path(tmp) / "tree"), str(Path(tmp) / "out"), str(n)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                sys.exit(f"benchmark child for n={n} failed:\n{done.stderr[-4000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["generate_s"] = round(generate_s, 1)
            results.append(row)
    print(json.dumps({"image_size": args.size, "workers": args.workers, "results": results}, indent=2))


if __name__ == "__main__":
    main()
