"""Exporting trained models for serving: SavedModel (TF Serving), LiteRT and ONNX, each checked for parity.

- `exporter.py`: the stage, `export_models(...)`, and the export manifest;
- `graph.py`: the serving model (preprocessing, flip TTA, ensemble inside) and the SavedModel's signatures;
- `formats.py`: one writer per format;
- `parity.py`: the fresh-process check against the Keras model, and its bounds;
- `runtime.py`: the segpipe-free runtime copied beside every export as `pets_runtime.py`;
- `serving.py`: the champion's serving layout (`WORK/models/serving/pets/<version>/`).

Importing this package loads neither TensorFlow nor Prefect.
"""
