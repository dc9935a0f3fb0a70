"""One fresh process of `benchmarks/export_inference.py`: load one model, answer images, report times and RSS.

    python -I benchmarks/serving_worker.py --runtime keras --model M.keras --image one.jpg --batch DIR
    python -I benchmarks/serving_worker.py --runtime export --model EXPORT/pets.onnx --image one.jpg --batch DIR

`keras` runs the `.keras` model as `segpipe predict` does around it (Pillow decode, antialiased resize),
through `model.predict`; `export` runs an exported artifact through the export's own `pets_runtime.py`
(SavedModel: encoded bytes into `serving_default`), in a process where segpipe cannot be imported.
Prints one JSON line: load seconds, batch-1 latencies (decode to mask), batch-8 images/s, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def keras_predictor(model_path: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    from segpipe.evaluation.ensemble import input_size, load_models, resize_probs, resize_image
    from segpipe.export.runtime import decode

    (model,) = load_models([model_path])
    size = input_size(model)

    def masks(blobs: list[bytes]) -> list:
        images = [decode(b) for b in blobs]
        batch = np.stack([np.asarray(resize_image(img, size)) for img in images])
        probs = model.predict(batch, verbose=0, batch_size=len(images))
        return [resize_probs(p, img.shape[:2]).argmax(-1) + 1 for p, img in zip(probs, images)]

    return masks


def export_predictor(artifact: Path):  # type: ignore[no-untyped-def]
    folder = artifact if artifact.is_dir() else artifact.parent
    sys.path.insert(0, str(folder))
    import pets_runtime

    pets_runtime.block_imports(["segpipe"])
    model = pets_runtime.load(artifact)
    if isinstance(model, pets_runtime.SavedModel):
        return model.predict_encoded
    return lambda blobs: pets_runtime.predict_masks(model, [pets_runtime.decode(b) for b in blobs])


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM from /proc (getrusage's ru_maxrss keeps the parent's peak across fork and
    exec on Linux, so a fresh child of a big benchmark process would report the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", choices=["keras", "export"], required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True, help="the batch-1 image")
    p.add_argument("--batch", type=Path, nargs="+", required=True, help="images for the batch-8 throughput")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    if args.runtime == "keras":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    t0 = time.perf_counter()
    masks = keras_predictor(args.model) if args.runtime == "keras" else export_predictor(args.model)
    one = args.image.read_bytes()
    (first,) = masks([one])  # the first answer: traces, allocations
    load_s = time.perf_counter() - t0
    latencies = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        masks([one])
        latencies.append(time.perf_counter() - t)
    blobs = [p.read_bytes() for p in args.batch][:8]
    masks(blobs)
    t = time.perf_counter()
    rounds = max(1, args.repeats // 3)
    for _ in range(rounds):
        masks(blobs)
    batch_s = time.perf_counter() - t
    print(json.dumps({
        "load_and_first_answer_s": load_s,
        "latency_s": latencies,
        "batch8_images_per_s": rounds * len(blobs) / batch_s,
        "peak_rss_mb": peak_rss_mb(),
        "mask_shape": list(first.shape),
        "modules": sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "segpipe", "onnxruntime",
                                                                    "ai_edge_litert"}),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
