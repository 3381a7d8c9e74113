"""tfnas: neural architecture search for TensorFlow and Keras 3.

The path of data is one-way: configuration -> macro descriptor (macro.py) -> micro builder (genotypes.py,
search/) -> model descriptor (protos/) -> Keras model (compiler.py) -> trainer -> finalised descriptor ->
evaluation model -> SavedModel. Importing this package does not import TensorFlow.
"""
__version__ = "0.1.0"
