"""segpipe: semantic segmentation of Oxford-IIIT Pet with Keras 3 on TensorFlow.

The library never imports Prefect and imports TensorFlow only in the modules
that need it, so `import segpipe` stays cheap.
"""

__version__ = "0.1.0"
