"""Evaluation: scoring a model on a split.

- `metrics`: the confusion matrix and the figures from it (pixel accuracy, per-class IoU, mean IoU, Dice),
  numpy only;
- `ensemble`: several models (and flip TTA) averaged into one prediction;
- `evaluate`: a model (or ensemble) over a split's TFRecords at original resolution, to `metrics.json`.

Submodules are imported by name (`from segpipe.evaluation import metrics`); this package imports nothing,
so reading metrics does not pull in TensorFlow.
"""
