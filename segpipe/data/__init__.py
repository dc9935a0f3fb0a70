"""The data half of the pipeline: download, extract, validate, split, TFRecords, input pipeline.

Submodules import TensorFlow only where they need it (`tfrecords`, `input`).
"""

CLASS_NAMES: tuple[str, ...] = ("pet", "background", "border")
"""Model labels 0, 1, 2 = trimap values 1, 2, 3."""

NUM_CLASSES: int = len(CLASS_NAMES)
"""The number of classes every model predicts: the one definition (training, evaluation and the losses import it)."""

ARCHIVES: tuple[str, ...] = ("images.tar.gz", "annotations.tar.gz")
