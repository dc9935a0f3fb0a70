"""Private Keras attributes segpipe depends on, and Keras behaviour it relies on beyond the documented
API, fenced in this one module.

`tests/models/test_kerascompat.py` fails loudly when Keras changes any of them.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from typing import Any


def variable_key(optimizer: Any, variable: Any) -> Any:
    """The key a Keras optimizer files `variable` under (a Keras variable, or the backend variable
    that `update_step` receives, mirrored components included). Keras' optimizers subclass API
    (`_get_variable_index`) rests on the same key; there is no public one."""
    return optimizer._var_key(variable)


@contextlib.contextmanager
def ema_weights_in_model(swap: Any) -> Iterator[None]:
    """The optimizer's EMA averages in the model's weights inside, the raw weights back on the way out.

    `swap` is a `keras.callbacks.SwapEMAWeights(swap_on_epoch=False)` attached to the model (through
    `fit`), used outside validation and prediction (in another callback's `on_epoch_end`, say). Keras
    has no public swap (`SwapEMAWeights._swap_variables` is private): the callback's `on_test_begin`
    swaps the averages in, and its `on_test_end` swaps them back, as they do around each validation.
    """
    swap.on_test_begin()
    try:
        yield
    finally:
        swap.on_test_end()


def fit_reads_one_iterator(model: Any) -> None:
    """Let `model.fit` under a distribution strategy read its training data through one iterator only.

    Before the first step of every `fit` under a strategy (MirroredStrategy, MultiWorkerMirroredStrategy),
    Keras 3's TensorFlow trainer (`_maybe_symbolic_build`, through 3.15 at least) opens an iterator of its
    own over the training dataset, reads one batch from it only to learn its shapes, drops it, and then
    opens the iterator it trains on. A dataset shuffled with `reshuffle_each_iteration` (or augmented from
    `Dataset.random(rerandomize_each_iteration=True)`) draws the seeds of every new pass from one
    generator shared by all its iterators, and the dropped iterator's prefetch threads may still start
    the stream's next epoch, drawing a seed, before the training iterator starts. Which permutation a
    process then trains on depends on timing: two workers of one job trained on different permutations
    (tests/training/test_distributed.py). Here the model is built from the dataset's element spec (zeros of
    those shapes), so `fit` opens only the iterator it trains on, as it does without a strategy.

    Call on a model built and compiled under its strategy, before `fit`.
    """
    import tensorflow as tf

    strategy = model.distribute_strategy

    def zeros(spec: Any) -> Any:
        return tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)

    def build_from_element_spec(iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None:  # Keras' TFEpochIterator; its data adapter holds the dataset given to fit
            data_batch = tf.nest.map_structure(zeros, iterator.data_adapter.get_tf_dataset().element_spec)
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_element_spec


def fit_under_multi_worker_strategy(model: Any) -> None:
    """Let `model.fit` (and its validation) run under MultiWorkerMirroredStrategy with several workers.

    Keras 3's TensorFlow trainer (through 3.15 at least) fails there twice (keras-team/keras#20585):

    - before the first step (`_maybe_symbolic_build`) it reduces the first distributed batch over
      all replicas with `strategy.reduce("MEAN", batch)`, only to learn its shapes, which fails for a
      batch of several tensors such as (images, labels): "Attempt to convert a value (PerReplica...)
      with an unsupported type". The model is built from the dataset's element spec instead, without
      reading a batch (`fit_reads_one_iterator`);
    - after each step it reduces every logged value over the workers with
      `strategy.reduce("MEAN", value, axis=0)`, which fails for the scalars that `train_step` and
      `test_step` return ("Invalid reduction dimension 0 for input with 0 dimensions"). The steps
      here return each scalar as a vector of one, which that reduce turns back into the scalar (the
      values are the same on every replica: metric variables are kept in sync across replicas).

    Call on a model built and compiled under the strategy, before `fit`.
    """
    import tensorflow as tf

    fit_reads_one_iterator(model)

    def vectors(step: Any) -> Any:
        def step_with_vector_outputs(data: Any) -> Any:
            return tf.nest.map_structure(
                lambda v: tf.reshape(v, [1]) if isinstance(v, tf.Tensor) and v.shape.rank == 0 else v, step(data)
            )

        return step_with_vector_outputs

    model.train_step = vectors(model.train_step)
    model.test_step = vectors(model.test_step)


_SEEDS = threading.local()  # per thread: the private generators of the `initializer_seeds_from` blocks open in it


class _SeedsOfThisThread:
    """Stands in for Python's `random` module in Keras' `seed_generator`: the generator of the innermost
    `initializer_seeds_from` block open in the calling thread, or the global `random` outside any block."""

    def __getattr__(self, name: str) -> Any:
        stack = getattr(_SEEDS, "stack", ())
        return getattr(stack[-1] if stack else random, name)


@contextlib.contextmanager
def initializer_seeds_from(seed: int) -> Iterator[None]:
    """Inside the block, the seeds Keras draws in this thread for unseeded initializers (and any other
    unseeded `SeedGenerator`) come from a private `random.Random(seed)`, not from Python's global `random`.

    Keras draws each of them with `keras.src.random.seed_generator.make_default_seed`, which calls
    `random.randint` through that module's `python_random` attribute: the process-wide generator that
    `keras.utils.set_random_seed` seeds. Another thread drawing from it while a model is built changes the
    model's initial weights, and a seeded run then trains other weights now and then. One such thread is
    there once a flow has run in the process: Prefect's events client keeps a websocket open in its
    `GlobalEventLoopThread`, and the `websockets` package draws each keepalive ping's payload (every 20 s)
    with `random.getrandbits`. The private generator, seeded like the global one, gives the seeds
    `set_random_seed(seed)` gives when nothing else draws.

    The attribute is replaced once by a stand-in that routes each draw by thread (as `files_fetched_by_keras`
    wraps `get_file`) and stays: outside a block every thread draws from the global `random` as before, and
    blocks open in two threads at once neither share a generator nor undo each other.
    """
    from keras.src.random import seed_generator

    if not isinstance(seed_generator.python_random, _SeedsOfThisThread):
        seed_generator.python_random = _SeedsOfThisThread()
    generator = random.Random(seed)
    _SEEDS.stack = [*getattr(_SEEDS, "stack", ()), generator]
    try:
        yield
    finally:
        _SEEDS.stack = [g for g in _SEEDS.stack if g is not generator]


_FETCHED = threading.local()  # per thread: the lists of the `files_fetched_by_keras` blocks open in it


@contextlib.contextmanager
def files_fetched_by_keras() -> Iterator[list[str]]:
    """The paths Keras' `get_file` returns in this thread inside the block: the files that
    `keras.applications` then load as ImageNet weights (downloaded, or found in `$KERAS_HOME/models`).

    Keras has no public way to learn which file an application loaded: each application calls
    `keras.src.utils.file_utils.get_file(...)` through that module's attribute and passes the path
    straight to `load_weights`. That attribute is wrapped once (the wrapper only records, per thread,
    while a block is open in that thread) and stays wrapped.
    """
    from keras.src.utils import file_utils

    get_file = file_utils.get_file
    if not getattr(get_file, "_segpipe_records", False):

        def recording_get_file(*args: Any, **kwargs: Any) -> Any:
            path = get_file(*args, **kwargs)
            for files in getattr(_FETCHED, "stack", ()):
                files.append(str(path))
            return path

        recording_get_file._segpipe_records = True  # type: ignore[attr-defined]
        file_utils.get_file = recording_get_file
    files: list[str] = []
    _FETCHED.stack = [*getattr(_FETCHED, "stack", ()), files]
    try:
        yield files
    finally:
        _FETCHED.stack = [f for f in _FETCHED.stack if f is not files]
