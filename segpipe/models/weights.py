"""What an `encoder_weights` setting is, by content: importable without TensorFlow.

A weights file enters the training cache key, the run id and lineage.json by its
sha256, never by its path: moving the file changes nothing, editing it changes
the run. "imagenet" is Keras' own published file (Keras fetches it by a fixed
URL into `$KERAS_HOME/models`), so the word names the content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segpipe.fsutil import sha256_file_memo

IMAGENET = "imagenet"


def no_such_weights_file(path: str | os.PathLike[str]) -> str:
    """The one message for an `encoder_weights` path that is not a file (config, digest and encoder build)."""
    return (f"no such file {str(path)!r}; expected None, 'imagenet' or the path of a .weights.h5/.h5 file "
            "of the encoder's keras.applications weights (include_top=False)")


def weights_file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file; FileNotFoundError naming it when it is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"model.encoder_weights: {no_such_weights_file(p)}")
    return sha256_file_memo(p)


def weights_identity(encoder_weights: str | None) -> Any:
    """None, "imagenet", or {"sha256": ...} of the file: what the weights are, not where."""
    if encoder_weights is None or encoder_weights == IMAGENET:
        return encoder_weights
    return {"sha256": weights_file_sha256(encoder_weights)}
