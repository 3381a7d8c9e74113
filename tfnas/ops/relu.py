"""ReLU at any compute precision, with a bfloat16 form that does not go through float32.

TensorFlow's CPU Relu (Eigen) converts bfloat16 to float32 and back element by element: over the same
tensor it takes longer than float32's, which moves twice the bytes (benchmarks/README.md). Read as an
int16, a bfloat16's bits order like the number for non-negative values and are negative for negative
ones, so max(bits, 0) is ReLU, as one vectorised integer op over half float32's bytes. Only negative NaNs
come out differently: 0 instead of NaN. The gradient is TensorFlow's own for Relu, ReluGrad(dy, y).
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range


def relu(x):
    """max(x, 0); in bfloat16 by its bits (module docstring)."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.bfloat16:
        return tf.nn.relu(x)
    with record.stop_recording():
        y = relu_unrecorded(x)
    if record.should_record_backprop([x]):
        record.record_operation("Relu", [y], [x], lambda dy: [tf.raw_ops.ReluGrad(gradients=dy, features=y)])
    return y


def relu_unrecorded(x):
    """relu(x) for a pass no tape records (a fused op's forward that brings its own gradient)."""
    if x.dtype != tf.bfloat16:
        return tf.nn.relu(x)
    return tf.bitcast(tf.maximum(tf.bitcast(x, tf.int16), tf.constant(0, tf.int16)), tf.bfloat16)
