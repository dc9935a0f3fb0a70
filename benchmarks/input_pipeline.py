"""Input pipeline: images/s into `fit` (decode, resize, augment, batch) on the real sample.

    .venv/bin/python benchmarks/input_pipeline.py            # 160x160, batch 32, a few minutes

Measured in one process, in rounds over the pipelines, so the shared machine's
load hits every pipeline alike, but ONE pipeline at a time: no other iterator
is alive while one is timed (tf.data's prefetching threads of an idle
iterator would otherwise work, and be charged, during another's timing):

* reference: the Keras example's own per-file pipeline (keras.io "Image
  segmentation with a U-Net-like architecture", `get_dataset`): file paths ->
  `tf.io.read_file` -> `tf.io.decode_png` -> `tf.image.resize` (+ trimap,
  nearest) -> `batch(32)`, on the extracted files of the sample, every epoch;
* segpipe: `segpipe.data.input.training_dataset(augment=True)` on the train
  split's TFRecords. Epoch 1 decodes, resizes and fills the in-memory cache;
  later epochs only shuffle, augment and batch;
* variants: segpipe without augmentation, and without the cache (every epoch decodes);
* what training consumes: images/s of a `fit` epoch of the cpu-quick preset's
  model on the same data (second epoch, after tracing).

Each pipeline is timed three ways:
* later epochs: a new iterator per pass over the train split. This is what
  `fit` does each epoch with a finite dataset such as the Keras example's, and
  it includes the iterator's start-up (~45 ms of CPU for segpipe's augmenting
  map);
* fit epochs (segpipe only): consecutive epochs of ceil(n / batch) batches
  from ONE iterator of the endless dataset, which is how `segpipe.training`
  feeds `fit` (`repeat=True` plus `steps_per_epoch`); each round starts a new
  iterator and draws one epoch's batches untimed first (start-up and what the
  prefetch buffer filled meanwhile);
* stream: `--stream-batches` batches from `repeat()`, what an epoch of
  thousands of images sees. For each, images/s (wall clock) and CPU ms per image of this
process (tf.data runs in its threads; CPU time is what the pipeline costs and
is much less sensitive to other processes' load than images/s).

Prints one JSON object with the ratios to the per-file reference and to
training's consumption, and the targets (>= 3x per-file, >= 50x training).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: benchmarks.common, segpipe

from benchmarks.common import (  # noqa: E402
    Machine,
    add_data_args,
    config_record,
    emit,
    ensure_dataset,
    extracted_pairs,
    library_versions,
    log,
    median,
    r,
)

CONSUMPTION_OVERRIDES = {"model.encoder_weights": "none"}  # speed does not depend on the weights

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


T = TypeVar("T")


def alone(measure: Callable[[], T]) -> T:
    """Run one measurement, then collect what it left: its iterator (and the iterator's tf.data threads)
    is gone before anything else is timed."""
    gc.collect()
    try:
        return measure()
    finally:
        gc.collect()


def one_pass(ds: Any) -> tuple[float, float, int]:
    """(images/s, CPU ms of this process per image, images) of one full pass (new iterator) over `ds`."""
    start, cpu, n = time.perf_counter(), time.process_time(), 0
    iterator = iter(ds)
    for images, _ in iterator:
        n += int(images.shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    del iterator
    return n / wall, 1000 * cpu / n, n


def fit_epochs(endless: Any, steps: int, n: int, warmup: int) -> list[tuple[float, float, int]]:
    """`n` epochs of `steps` batches each from ONE new iterator of the `endless` dataset (as segpipe's `fit`
    reads), after `warmup` untimed batches; the iterator is deleted before returning."""
    iterator = iter(endless)
    for _ in range(warmup):
        next(iterator)
    out = []
    for _ in range(n):
        start, cpu, images = time.perf_counter(), time.process_time(), 0
        for _ in range(steps):
            images += int(next(iterator)[0].shape[0])
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        out.append((images / wall, 1000 * cpu / images, images))
    del iterator
    return out


def stats(passes: list[tuple[float, float, int]]) -> dict[str, Any]:
    return {"images_per_s": r(median([p[0] for p in passes])), "cpu_ms_per_image": r(median([p[1] for p in passes]), 3),
            "passes_images_per_s": [r(p[0]) for p in passes], "images_per_pass": passes[0][2]}


def load_module(path: str) -> Any:
    """Import a file as a module (a baseline version of segpipe/data/input.py)."""
    import importlib.util
    import sys

    name = f"baseline_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def training_consumption(dataset_dir: Path, epochs: int = 2) -> dict[str, Any]:
    """images/s of `fit` epochs of the cpu-quick preset's model and recipe (the last epoch is reported)."""
    import keras

    from segpipe.config import build_config
    from segpipe.data.input import num_examples, training_dataset
    from segpipe.training.losses import build_loss
    from segpipe.models import build_model
    from segpipe.config.budget import training_plan
    from segpipe.training import build_optimizer, precision_policy

    cfg = build_config("cpu-quick", CONSUMPTION_OVERRIDES)
    t = cfg.train
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision_policy(t.mixed_precision))
    ds = training_dataset(dataset_dir, img_size=t.img_size, batch_size=t.batch_size, augment=t.augment, seed=0,
                          repeat=True)
    n = num_examples(dataset_dir, "train")
    steps = -(-n // t.batch_size)
    n = steps * t.batch_size  # images per fit epoch (full batches of the endless dataset)
    model = build_model(cfg.model.name, (t.img_size, t.img_size, 3), 3, **cfg.model.params())
    model.compile(optimizer=build_optimizer(t, training_plan(t, n)), loss=build_loss(t.loss, num_classes=3),
                  metrics=[keras.metrics.MeanIoU(num_classes=3, sparse_y_pred=False, name="mean_iou"),
                           keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
                  jit_compile=t.jit_compile)
    times: list[tuple[float, float]] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append((time.perf_counter() - self.start, time.process_time() - self.cpu))
            log(f"training consumption: fit epoch {epoch + 1}: {times[-1][0]:.1f} s")

    model.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[EpochTimer()])
    keras.mixed_precision.set_global_policy("float32")
    wall, cpu = times[-1]
    return {
        "what": f"fit epochs of the cpu-quick preset ({cfg.model.name}, base_filters {cfg.model.base_filters}, "
                f"depth {cfg.model.depth}, {t.img_size}px, batch {t.batch_size}, loss {t.loss}, augment, "
                f"precision {t.mixed_precision}), "
                f"{n} train images; the last epoch is reported (epoch 1 includes tracing and the cache fill)",
        "epoch_seconds": [r(w, 2) for w, _ in times],
        "images_per_s": r(n / wall, 2),
        "cpu_ms_per_image": r(1000 * cpu / n, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    p.add_argument("--epochs-per-round", type=int, default=2)
    p.add_argument("--stream-batches", type=int, default=60, help="batches per streamed pass (repeat())")
    p.add_argument("--no-training", action="store_true", help="skip measuring training's consumption")
    p.add_argument("--baseline-input", metavar="FILE",
                   help="another version of segpipe/data/input.py to time beside the current one, e.g. "
                        "`git show HEAD:segpipe/data/input.py > /tmp/input_old.py`")
    args = p.parse_args()
    machine = Machine()

    from segpipe.data.input import num_examples, training_dataset

    dataset_dir = ensure_dataset(args.work_dir, args.source)
    images, trimaps = extracted_pairs(args.work_dir)
    size, batch, stream = args.img_size, args.batch_size, args.stream_batches
    n_train = num_examples(dataset_dir, "train")
    log(f"dataset {dataset_dir.name}: {n_train} train images; {len(images)} extracted files for the reference")

    def segpipe(repeat: bool = False, **kw: Any) -> Any:
        ds = training_dataset(dataset_dir, img_size=size, batch_size=batch, seed=0, repeat=repeat, **kw)
        return ds.take(stream) if repeat else ds

    steps = -(-n_train // batch)

    def endless(augment: bool) -> Any:  # what segpipe.training hands to fit: one iterator for the whole run
        return training_dataset(dataset_dir, img_size=size, batch_size=batch, seed=0, augment=augment, repeat=True)

    keras_ds = keras_example_dataset(images, trimaps, (size, size), batch)
    pipelines = {  # name -> (per-epoch dataset, streamed dataset or None, endless dataset for fit or None)
        "keras_example_per_file": (keras_ds, keras_ds.repeat().take(stream), None),
        "segpipe_augment_cached": (segpipe(augment=True), segpipe(augment=True, repeat=True), endless(True)),
        "segpipe_no_augment_cached": (segpipe(augment=False), segpipe(augment=False, repeat=True), endless(False)),
        "segpipe_augment_no_cache": (segpipe(augment=True, cache=False), None, None),
    }
    if args.baseline_input:
        old = load_module(args.baseline_input)
        old_ds = lambda **kw: old.training_dataset(dataset_dir, img_size=size, batch_size=batch, seed=0,  # noqa: E731
                                                   augment=True, **kw)
        pipelines["baseline_augment_cached"] = (old_ds(), old_ds(repeat=True).take(stream), None)
    # ONE pipeline at a time: tf.data works in background threads (parallel map, prefetch) for as long as an
    # iterator lives, so no iterator outlives its own measurement (each is deleted and collected before the
    # next timing starts) and no pipeline's CPU time is charged to another. Datasets without an iterator do
    # no work; they are kept so that their in-memory caches stay filled between rounds.
    results: dict[str, dict[str, Any]] = {}
    for name, (epoch_ds, stream_ds, endless_ds) in pipelines.items():  # epoch 1 (segpipe: decode + fill cache)
        first = alone(lambda: one_pass(epoch_ds))
        if stream_ds is not None:
            alone(lambda: one_pass(stream_ds))  # its own cache fill / warm-up, not reported
        if endless_ds is not None:
            alone(lambda: fit_epochs(endless_ds, steps, 0, warmup=steps))  # its own cache fill, not reported
        results[name] = {"epoch1_images_per_s": r(first[0]), "epoch1_cpu_ms_per_image": r(first[1], 2)}
        log(f"{name}: epoch 1: {first[0]:.0f} images/s, {first[1]:.2f} CPU ms/image")
    epochs, streams, fits = defaultdict(list), defaultdict(list), defaultdict(list)
    for rnd in range(args.rounds):
        for name, (epoch_ds, stream_ds, endless_ds) in pipelines.items():
            epochs[name] += [alone(lambda: one_pass(epoch_ds)) for _ in range(args.epochs_per_round)]
            if stream_ds is not None:
                streams[name].append(alone(lambda: one_pass(stream_ds)))
            if endless_ds is not None:
                # A fresh iterator; the first `steps` batches (its start-up, and what its prefetch buffer
                # filled meanwhile) are drawn untimed, then consecutive fit epochs are timed.
                fits[name] += alone(lambda: fit_epochs(endless_ds, steps, args.epochs_per_round, warmup=steps))
            log(f"round {rnd + 1}: {name}: epoch {epochs[name][-1][0]:.0f} images/s"
                + (f", fit epoch {fits[name][-1][0]:.0f} images/s" if endless_ds is not None else "")
                + (f", stream {streams[name][-1][0]:.0f} images/s" if stream_ds is not None else ""))
    for name in pipelines:
        results[name]["later_epochs"] = stats(epochs[name])
        if streams[name]:
            results[name]["stream"] = stats(streams[name])
        if fits[name]:
            results[name]["fit_epochs"] = stats(fits[name])

    consumption = None if args.no_training else training_consumption(dataset_dir)
    ref = results["keras_example_per_file"]
    for name, row in results.items():
        for mode in ("later_epochs", "fit_epochs", "stream"):
            if mode not in row:
                continue
            # fit epochs are compared with the reference's epochs (its fit starts an iterator per epoch)
            m, rm = row[mode], ref["later_epochs" if mode == "fit_epochs" else mode]
            m["vs_per_file"] = r(m["images_per_s"] / rm["images_per_s"], 2)
            m["cpu_vs_per_file"] = r(rm["cpu_ms_per_image"] / m["cpu_ms_per_image"], 2)
            if consumption:
                m["vs_training"] = r(m["images_per_s"] / consumption["images_per_s"], 1)
                m["cpu_pct_of_training"] = r(100 * m["cpu_ms_per_image"] / consumption["cpu_ms_per_image"], 2)
        row["epoch1_vs_per_file_epoch"] = r(row["epoch1_images_per_s"] / ref["later_epochs"]["images_per_s"], 2)

    main_row = results["segpipe_augment_cached"]
    targets = {}
    for mode in ("later_epochs", "fit_epochs", "stream"):
        m = main_row[mode]
        targets[f"{mode}_vs_per_file"] = {"target": TARGET_VS_PER_FILE, "got": m["vs_per_file"],
                                          "met": m["vs_per_file"] >= TARGET_VS_PER_FILE}
        targets[f"{mode}_cpu_vs_per_file"] = {"target": TARGET_VS_PER_FILE, "got": m["cpu_vs_per_file"],
                                              "met": m["cpu_vs_per_file"] >= TARGET_VS_PER_FILE}
        if consumption:
            targets[f"{mode}_vs_training"] = {"target": TARGET_VS_TRAINING, "got": m["vs_training"],
                                              "met": m["vs_training"] >= TARGET_VS_TRAINING}
    emit({
        "benchmark": "input_pipeline",
        "img_size": size,
        "batch_size": batch,
        "dataset_key": dataset_dir.name,
        "train_images": n_train,
        "reference_files": len(images),
        "how": f"one pipeline at a time (no other iterator alive, garbage collected between measurements): "
               f"epoch 1 once; then {args.rounds} rounds over the pipelines of {args.epochs_per_round} epochs "
               f"(new iterator each), {args.epochs_per_round} fit epochs of {steps} batches from one new iterator "
               f"of the endless dataset after {steps} untimed warm-up batches, and one stream of {stream} "
               f"batches; medians reported",
        "ratios": "vs_per_file: images/s over the per-file pipeline's images/s in the same mode (wall clock); "
                  "cpu_vs_per_file: per-file CPU ms per image over segpipe's (load-independent); vs_training: "
                  "images/s over fit's images/s; cpu_pct_of_training: pipeline CPU per image as % of fit's",
        "pipelines": results,
        "training_consumption": consumption,
        "targets": targets,
        "versions": library_versions(),
        **machine.provenance([config_record("cpu-quick", CONSUMPTION_OVERRIDES,
                                            role="training consumption (the model and recipe timed)")]),
    }, args.out)


if __name__ == "__main__":
    main()
