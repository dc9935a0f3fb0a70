"""Input pipeline: images/s into `fit` (decode, resize, augment, batch) on the real sample.

    .venv/bin/python benchmarks/input_pipeline.py            # 160x160, batch 32, a few minutes

Measured in one run, so the shared machine's load hits every figure alike:

* reference: the Keras example's own per-file pipeline (keras.io "Image
  segmentation with a U-Net-like architecture", `get_dataset`): file paths ->
  `tf.io.read_file` -> `tf.io.decode_png` -> `tf.image.resize` (+ trimap,
  nearest) -> `batch(32)`, on the extracted files of the sample, every epoch;
* segpipe: `segpipe.data.input.training_dataset(augment=True)` on the train
  split's TFRecords. Epoch 1 decodes and resizes and fills the in-memory cache;
  later epochs only shuffle, augment and batch. Reported separately;
* variants: segpipe without augmentation, and without the cache (every epoch decodes);
* what training consumes: images/s of a `fit` epoch of the cpu-quick preset's
  model on the same data (second epoch, after tracing).

Prints one JSON object: per pipeline the per-epoch images/s, the steady state
(median of epochs 2..N) and the ratios to the per-file reference and to
training's consumption, with the targets (>= 3x per-file, >= 50x training).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import (
    Machine,
    add_data_args,
    emit,
    ensure_dataset,
    extracted_pairs,
    library_versions,
    log,
    median,
    r,
)

TARGET_VS_PER_FILE = 3.0
TARGET_VS_TRAINING = 50.0


def keras_example_dataset(input_img_paths: list[str], target_img_paths: list[str], img_size: tuple[int, int],
                          batch_size: int) -> Any:
    """`get_dataset` of the keras.io example, verbatim apart from the names of the imports."""
    from tensorflow import data as tf_data
    from tensorflow import image as tf_image
    from tensorflow import io as tf_io

    def load_img_masks(input_img_path: Any, target_img_path: Any) -> tuple[Any, Any]:
        input_img = tf_io.read_file(input_img_path)
        input_img = tf_io.decode_png(input_img, channels=3)
        input_img = tf_image.resize(input_img, img_size)
        input_img = tf_image.convert_image_dtype(input_img, "float32")

        target_img = tf_io.read_file(target_img_path)
        target_img = tf_io.decode_png(target_img, channels=1)
        target_img = tf_image.resize(target_img, img_size, method="nearest")
        target_img = tf_image.convert_image_dtype(target_img, "uint8")

        # Ground truth labels are 1, 2, 3. Subtract one to make them 0, 1, 2:
        target_img -= 1
        return input_img, target_img

    dataset = tf_data.Dataset.from_tensor_slices((input_img_paths, target_img_paths))
    dataset = dataset.map(load_img_masks, num_parallel_calls=tf_data.AUTOTUNE)
    return dataset.batch(batch_size)


def epoch_rates(ds: Any, epochs: int, name: str) -> list[tuple[float, float]]:
    """(images/s, CPU ms of this process per image) of each full pass over `ds` (batches pulled to Python,
    as `fit` does). tf.data works in this process's threads, so the CPU time is the pipeline's own cost,
    which other processes' load barely changes (wall-clock throughput does)."""
    rates = []
    for epoch in range(epochs):
        start, cpu, n = time.perf_counter(), time.process_time(), 0
        for images, _ in ds:
            n += int(images.shape[0])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates.append((n / wall, 1000 * cpu / n))
        log(f"{name}: epoch {epoch + 1}: {n} images, {rates[-1][0]:.0f} images/s, {rates[-1][1]:.2f} CPU ms/image")
    return rates


def summary(rates: list[tuple[float, float]]) -> dict[str, Any]:
    steady = rates[1:] or rates
    return {"epoch_images_per_s": [r(x) for x, _ in rates], "epoch_cpu_ms_per_image": [r(c, 2) for _, c in rates],
            "epoch1_images_per_s": r(rates[0][0]), "epoch1_cpu_ms_per_image": r(rates[0][1], 2),
            "steady_images_per_s": r(median([x for x, _ in steady])),
            "steady_cpu_ms_per_image": r(median([c for _, c in steady]), 3),
            "steady_is": "median of epochs 2..N"}


def training_consumption(dataset_dir: Path, epochs: int = 2) -> dict[str, Any]:
    """images/s of `fit` epochs of the cpu-quick preset's model and recipe (the last epoch is reported)."""
    import keras

    from segpipe.config import build_config
    from segpipe.data.input import num_examples, training_dataset
    from segpipe.losses import build_loss
    from segpipe.models import build_model
    from segpipe.training import build_optimizer

    cfg = build_config("cpu-quick")
    t = cfg.train
    keras.utils.set_random_seed(0)
    ds = training_dataset(dataset_dir, img_size=t.img_size, batch_size=t.batch_size, augment=t.augment, seed=0)
    steps = -(-num_examples(dataset_dir, "train") // t.batch_size)
    model = build_model(cfg.model.name, (t.img_size, t.img_size, 3), 3, **cfg.model.params())
    model.compile(optimizer=build_optimizer(t, steps), loss=build_loss(t.loss, num_classes=3),
                  metrics=[keras.metrics.MeanIoU(num_classes=3, sparse_y_pred=False, name="mean_iou"),
                           keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
                  jit_compile=t.jit_compile)

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)
            cpus.append(time.process_time() - self.cpu)
            log(f"training consumption: fit epoch {epoch + 1}: {times[-1]:.1f} s")

    times: list[float] = []
    cpus: list[float] = []
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    n = num_examples(dataset_dir, "train")
    return {
        "what": f"fit epochs of the cpu-quick preset ({cfg.model.name}, base_filters {cfg.model.base_filters}, "
                f"depth {cfg.model.depth}, {t.img_size}px, batch {t.batch_size}, loss {t.loss}, augment), "
                f"{n} train images; the last epoch is reported (epoch 1 includes tracing and the cache fill)",
        "epoch_seconds": [r(x, 2) for x in times],
        "images_per_s": r(n / times[-1], 2),
        "cpu_ms_per_image": r(1000 * cpus[-1] / n, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=6, help="passes over the data per pipeline (>= 2)")
    p.add_argument("--no-training", action="store_true", help="skip measuring training's consumption")
    args = p.parse_args()
    machine = Machine()

    import tensorflow as tf

    from segpipe.data.input import num_examples, training_dataset

    dataset_dir = ensure_dataset(args.work_dir, args.source)
    images, trimaps = extracted_pairs(args.work_dir)
    size, batch, epochs = args.img_size, args.batch_size, max(2, args.epochs)
    log(f"dataset {dataset_dir.name}: {num_examples(dataset_dir, 'train')} train images; "
        f"{len(images)} extracted files for the per-file reference")

    results: dict[str, Any] = {}
    keras_ds = keras_example_dataset(images, trimaps, (size, size), batch)
    results["keras_example_per_file"] = {
        "what": f"keras.io get_dataset: {len(images)} image/trimap files decoded and resized every epoch",
        **summary(epoch_rates(keras_ds, epochs, "keras per-file")),
    }
    variants = {
        "segpipe_augment_cached": dict(augment=True, cache=True),
        "segpipe_no_augment_cached": dict(augment=False, cache=True),
        "segpipe_augment_no_cache": dict(augment=True, cache=False),
    }
    for name, kw in variants.items():
        ds = training_dataset(dataset_dir, img_size=size, batch_size=batch, seed=0, **kw)
        results[name] = {"what": f"segpipe training_dataset({kw}) on the train split TFRecords",
                         **summary(epoch_rates(ds, epochs, name))}
    # The reference once more at the end: the load may have changed meanwhile.
    again = epoch_rates(keras_ds, 2, "keras per-file (again)")
    ref = results["keras_example_per_file"]
    reference = median(ref["epoch_images_per_s"][1:] + [x for x, _ in again])
    reference_cpu = median(ref["epoch_cpu_ms_per_image"][1:] + [c for _, c in again])
    ref["repeat_at_end_images_per_s"] = [r(x) for x, _ in again]
    ref["reference_images_per_s"] = r(reference)
    ref["reference_cpu_ms_per_image"] = r(reference_cpu, 3)

    consumption = None if args.no_training else training_consumption(dataset_dir)
    for name in variants:
        row = results[name]
        row["steady_vs_per_file"] = r(row["steady_images_per_s"] / reference, 2)
        row["epoch1_vs_per_file"] = r(row["epoch1_images_per_s"] / reference, 2)
        row["steady_cpu_vs_per_file"] = r(reference_cpu / row["steady_cpu_ms_per_image"], 2)
        if consumption:
            row["steady_vs_training"] = r(row["steady_images_per_s"] / consumption["images_per_s"], 1)
            row["training_cpu_share_pct"] = r(100 * row["steady_cpu_ms_per_image"] / consumption["cpu_ms_per_image"], 2)

    main_row = results["segpipe_augment_cached"]
    targets = {
        "steady_vs_per_file": {"target": TARGET_VS_PER_FILE, "got": main_row["steady_vs_per_file"],
                               "met": main_row["steady_vs_per_file"] >= TARGET_VS_PER_FILE},
        "steady_cpu_vs_per_file": {"target": TARGET_VS_PER_FILE, "got": main_row["steady_cpu_vs_per_file"],
                                   "met": main_row["steady_cpu_vs_per_file"] >= TARGET_VS_PER_FILE},
    }
    if consumption:
        targets["steady_vs_training"] = {"target": TARGET_VS_TRAINING, "got": main_row["steady_vs_training"],
                                         "met": main_row["steady_vs_training"] >= TARGET_VS_TRAINING}
    emit({
        "benchmark": "input_pipeline",
        "img_size": size,
        "batch_size": batch,
        "epochs": epochs,
        "dataset_key": dataset_dir.name,
        "reference_is": "median of the per-file pipeline's epochs 2..N plus two more epochs at the end",
        "ratios": "x_vs_per_file = segpipe images/s / per-file images/s (wall clock); steady_cpu_vs_per_file = "
                  "per-file CPU ms per image / segpipe CPU ms per image (load-independent); "
                  "steady_vs_training = segpipe images/s / fit images/s",
        "pipelines": results,
        "training_consumption": consumption,
        "targets": targets,
        "training_cpu_share_pct_is": "CPU the input pipeline adds per image trained, as % of fit's own CPU per image",
        "versions": library_versions(),
        "tf_data_threads": "tf.data defaults (AUTOTUNE)",
        "machine": machine.report(),
    }, args.out)


if __name__ == "__main__":
    main()
