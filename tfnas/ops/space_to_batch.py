"""Space-to-batch layout for dilated convolutions, and subsampling with a fast gradient."""
from __future__ import annotations

import tensorflow as tf

from tfnas.ops.constants import constant


def to_blocks(x, block: int, paddings=((0, 0), (0, 0))):
    """Space-to-batch: the block x block phases of the image as separate examples ([b*b*n, h/b, w/b, c]).

    A conv with dilation b is an undilated conv on each phase, and per-pixel ops (1x1 convs) and
    BatchNorm (its statistics cover the same pixels) give the same results in this layout, so a dilated
    conv block can run in it from its input to its output: one copy in, one copy out."""
    return tf.raw_ops.SpaceToBatchND(input=x, block_shape=constant((block, block), tf.int32),
                                     paddings=constant(tuple(tuple(p) for p in paddings), tf.int32))


def from_blocks(x, block: int, crops=(0, 0)):
    """The inverse of to_blocks; `crops` rows and columns are dropped at the far end."""
    return tf.raw_ops.BatchToSpaceND(input=x, block_shape=constant((block, block), tf.int32),
                                     crops=constant(((0, crops[0]), (0, crops[1])), tf.int32))


def fits_blocks(x, block: int) -> bool:
    """Whether x's (static) height and width divide by `block`: to_blocks then needs no padding."""
    h, w = x.shape[1], x.shape[2]
    return h is not None and w is not None and h % block == 0 and w % block == 0


def subsample(x, stride: int):
    """x[:, ::stride, ::stride, :] as a 1x1 average pool: the same values, with a gradient much faster on
    CPU than StridedSlice's (benchmarks/README.md)."""
    return tf.nn.avg_pool2d(x, 1, stride, "VALID")
