"""The Keras internals `segpipe.kerascompat` fences: each test fails loudly when Keras changes one.

(The private API under `fit_under_multi_worker_strategy` is checked in tests/training/test_distributed.py.)
"""

from __future__ import annotations

import inspect
import random
import threading
import time

import keras  # pinned: a missing or broken install fails here, never skips
import numpy as np

from segpipe.kerascompat import (
    _SeedsOfThisThread,
    ema_weights_in_model,
    files_fetched_by_keras,
    initializer_seeds_from,
    variable_key,
)
from segpipe.models.encoders import ENCODERS
from tests.threads import run_at_once


def _trained(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 4), dtype=np.float32), rng.random((16, 3), dtype=np.float32),
              batch_size=4, epochs=2, verbose=0)
    return model


def test_variable_key_is_the_optimizers_private_var_key() -> None:
    assert list(inspect.signature(keras.optimizers.Optimizer._var_key).parameters) == ["self", "variable"]
    optimizer = keras.optimizers.Adam()
    model = _trained(optimizer)
    kernel, bias = model.trainable_variables
    assert variable_key(optimizer, kernel) == variable_key(optimizer, kernel)
    assert variable_key(optimizer, kernel) != variable_key(optimizer, bias)
    assert variable_key(optimizer, kernel) == variable_key(optimizer, kernel.value)  # what update_step receives


class KeepRawWeights(keras.optimizers.SGD):
    """As segpipe's optimizers: the raw weights stay in the model at the end of `fit`."""

    def finalize_variable_values(self, var_list):
        pass


def test_swap_ema_weights_hooks_swap_the_averages_in_and_back() -> None:
    optimizer = KeepRawWeights(learning_rate=0.5, use_ema=True, ema_momentum=0.5)
    model = _trained(optimizer)
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=False)
    swap.set_model(model)
    weights = lambda: [w.numpy().copy() for w in model.trainable_variables]  # noqa: E731
    raw = weights()

    with ema_weights_in_model(swap):
        inside = weights()
    after = weights()
    # public: copies the averages into the model
    keras.optimizers.SGD.finalize_variable_values(optimizer, model.trainable_variables)
    averages = weights()

    for r, i, a, avg in zip(raw, inside, after, averages):
        np.testing.assert_allclose(i, avg, atol=1e-6)  # the averages were in the model inside
        assert not np.allclose(i, r)
        np.testing.assert_allclose(a, r, atol=1e-6)  # and the raw weights are back after


def test_applications_fetch_their_weights_through_file_utils_get_file(tmp_path) -> None:
    """keras.applications look `get_file` up on `keras.src.utils.file_utils` when they load ImageNet
    weights; `files_fetched_by_keras` sees the file that lookup returns (a primed cache: no download)."""
    import importlib

    from keras.src.utils import file_utils

    for spec in ENCODERS.values():  # every application segpipe uses
        module = importlib.import_module(getattr(keras.applications, spec.application).__module__)
        assert module.file_utils is file_utils and "file_utils.get_file(" in inspect.getsource(module)
    cached = tmp_path / "models" / "weights_no_top.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"primed")
    seen_elsewhere: list[list[str]] = []

    def other_thread() -> None:  # its fetches are its own
        with files_fetched_by_keras() as files:
            file_utils.get_file(cached.name, "http://127.0.0.1:9/unreachable", cache_subdir="models",
                                cache_dir=str(tmp_path))
            seen_elsewhere.append(files)

    with files_fetched_by_keras() as outer:
        with files_fetched_by_keras() as inner:
            path = file_utils.get_file(cached.name, "http://127.0.0.1:9/unreachable", cache_subdir="models",
                                       cache_dir=str(tmp_path))
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        file_utils.get_file(cached.name, "http://127.0.0.1:9/unreachable", cache_subdir="models",
                            cache_dir=str(tmp_path))
    assert path == str(cached)
    assert inner == [str(cached)] and outer == [str(cached)] * 2 and seen_elsewhere == [[str(cached)]]
    file_utils.get_file(cached.name, "http://127.0.0.1:9/unreachable", cache_subdir="models", cache_dir=str(tmp_path))
    assert outer == [str(cached)] * 2  # nothing recorded outside a block


def _deep_model_weights() -> list[np.ndarray]:
    layers = [keras.layers.Dense(4) for _ in range(24)]  # 24 unseeded initializers: 24 seeds drawn
    return keras.Sequential([keras.Input((4,)), *layers]).get_weights()


def test_initializer_seeds_come_from_the_block_whatever_other_threads_draw() -> None:
    """Keras draws unseeded initializers' seeds from Python's global `random` (through
    `keras.src.random.seed_generator.python_random`): a thread drawing from it meanwhile changes the weights
    of a model built outside `initializer_seeds_from`, never of one built inside. If Keras stops drawing
    from there, the first half fails: the fence is then not needed, or must follow Keras elsewhere."""
    from keras.src.random import seed_generator

    assert "python_random.randint" in inspect.getsource(seed_generator.make_default_seed)
    assert seed_generator.python_random is random or isinstance(seed_generator.python_random, _SeedsOfThisThread)
    keras.utils.set_random_seed(0)
    reference = _deep_model_weights()
    drawing = threading.Event()
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()
            drawing.set()
            time.sleep(0)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        assert drawing.wait(10)
        outside = []
        for _ in range(5):
            keras.utils.set_random_seed(0)
            outside.append(_deep_model_weights())
        assert any(not all(np.array_equal(a, b) for a, b in zip(w, reference)) for w in outside)
        for _ in range(3):
            keras.utils.set_random_seed(0)
            with initializer_seeds_from(0):
                inside = _deep_model_weights()
            assert all(np.array_equal(a, b) for a, b in zip(inside, reference))
    finally:
        stop.set()
        thread.join()
    random.seed(7)  # outside a block, Keras draws from the global random as before
    assert [seed_generator.python_random.randint(1, 10**9) for _ in range(3)] == _draws_after(7, 3)


def _draws_after(seed: int, n: int) -> list[int]:
    generator = random.Random(seed)
    return [generator.randint(1, 10**9) for _ in range(n)]


def test_blocks_open_in_two_threads_at_once_each_get_their_own_seeds() -> None:
    """Two threads building inside `initializer_seeds_from(0)` at the same time (say, two trainings in one
    process) each get the weights of a build alone, and neither block's end undoes the other's."""
    keras.utils.set_random_seed(0)
    with initializer_seeds_from(0):
        reference = _deep_model_weights()

    def build() -> list[list[np.ndarray]]:
        built = []
        for _ in range(3):
            with initializer_seeds_from(0):
                built.append(_deep_model_weights())
        return built

    built = [weights for thread in run_at_once(build, 2) for weights in thread]
    assert len(built) == 6
    for weights in built:
        assert all(np.array_equal(a, b) for a, b in zip(weights, reference))
