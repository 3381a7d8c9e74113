"""tfnas: neural architecture search for TensorFlow and Keras 3.

The path of data is one-way: configuration -> macro descriptor (macro.py) -> micro builder (genotypes.py,
search/) -> model descriptor (protos/) -> Keras model (compiler.py) -> trainer -> finalised descriptor ->
evaluation model -> SavedModel. Importing this package does not import TensorFlow.
"""
__version__ = "0.1.0"

import os as _os

# TensorFlow does not turn oneDNN on by itself on AMD CPUs, and the DARTS search step is much faster with it
# (shared/reference/tensorflow-stack.md). Set before TensorFlow is imported; a user's own value wins.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
