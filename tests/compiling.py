"""Compiling tiny Keras models in tests as segpipe's training does.

    compile_as_training(model, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")

For tests that train a model of their own (not through `segpipe.training.train`): the model tests' graph-mode train
steps and the export tests' tiny trained model.
"""

from __future__ import annotations

import keras


def compile_as_training(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss) -> keras.Model:
    """Compile for the graph-mode path as `segpipe.training.model.build_and_compile` does: the optimizer built
    first, so the first `train_on_batch` or `fit` traces its step once (Keras traces it twice when the optimizer's
    variables are made inside the first trace)."""
    optimizer.build(model.trainable_variables)
    model.compile(optimizer, loss=loss, jit_compile=False)
    return model
