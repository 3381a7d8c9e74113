"""Copies of a tensor side by side on the channel axis, with a gradient of two ops."""
from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range

from tfnas.ops.constants import constant


def tile_channels(x, copies: int):
    """x repeated `copies` times on the channel axis (copy-major). Its recorded gradient is the sum of
    the copies (a reshape and a sum), where TF's generic gradient of Tile has about twelve ops to trace (a
    search step has hundreds of these, and each traced op costs start-up). The copies are one ConcatV2
    (a memory copy per row) rather than a Tile (Eigen's broadcasting), which is faster at search shapes
    (benchmarks/README.md)."""
    if copies == 1:
        return x
    with record.stop_recording():
        y = tf.raw_ops.ConcatV2(values=[x] * copies, axis=constant(3, tf.int32))
    if record.should_record_backprop([x]):
        if x.shape[1:].is_fully_defined():  # the batch size may be unknown
            split = constant((-1, *x.shape[1:3], copies, x.shape[3]), tf.int32)
        else:
            dims = tf.shape(x)
            split = tf.concat([dims[:3], [copies], dims[3:]], 0)

        def backward(dy):
            return [tf.raw_ops.Sum(input=tf.raw_ops.Reshape(tensor=dy, shape=split), axis=constant(3, tf.int32))]

        record.record_operation("TileChannels", [y], [x], backward)
    return y
