"""The Keras internals `segpipe.kerascompat` fences: each test fails loudly when Keras changes one.

(The private API under `fit_under_multi_worker_strategy` is checked in tests/training/test_distributed.py.)
"""

from __future__ import annotations

import inspect
import threading

import keras  # pinned: a missing or broken install fails here, never skips
import numpy as np

from segpipe.kerascompat import ema_weights_in_model, files_fetched_by_keras, variable_key
from segpipe.models.encoders import ENCODERS


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
