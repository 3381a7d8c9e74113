"""The filter gradient of a depthwise conv, in blocks of 3 columns for wider kernels.

oneDNN's depthwise filter gradient is several times slower for a 5x5 kernel than for a 3x3 one at DARTS
search shapes, while a 5x3 kernel costs about what a 3x3 does (figures in benchmarks/README.md): it was
the largest kernel of a search step. Each block is the gradient of a kx3 conv over the input window its
columns read: one padded (or cropped) copy of the input per block. The sums are the same, in another
order.
"""
from __future__ import annotations

import functools

import tensorflow as tf

from tfnas.ops.constants import constant

WIDE = 3  # the widest kernel for which oneDNN's depthwise filter gradient is fast


def depthwise_filter_gradient(input, filter_sizes, out_backprop, strides, padding, data_format):
    """tf.raw_ops.DepthwiseConv2dNativeBackpropFilter's arguments and result, blocked where it pays."""
    kh, kw, *channels = (int(d) for d in tf.get_static_value(filter_sizes))  # static: see constants.shape_of
    call = functools.partial(tf.raw_ops.DepthwiseConv2dNativeBackpropFilter, out_backprop=out_backprop,
                             strides=strides, data_format=data_format)
    if kw <= WIDE or not (input.shape[1:3].is_fully_defined() and out_backprop.shape[1:3].is_fully_defined()):
        return call(input=input, filter_sizes=filter_sizes, padding=padding)
    stride = strides[1]
    (rows,) = windows(kh, kh, input.shape[1], out_backprop.shape[1], stride, padding)
    grads = []
    for cols in windows(kw, WIDE, input.shape[2], out_backprop.shape[2], stride, padding):
        (r_begin, r_end, *r_pads, _), (c_begin, c_end, *c_pads, skip) = rows, cols
        x = input
        # Not before the gradient arrives: the copies would otherwise be made during the forward pass, as
        # soon as the input exists, and all of them held until the backward pass.
        with tf.control_dependencies([out_backprop]):
            if (r_begin, r_end, c_begin, c_end) != (0, input.shape[1], 0, input.shape[2]):
                x = tf.slice(x, [0, r_begin, c_begin, 0], [-1, r_end - r_begin, c_end - c_begin, -1])
            if any(r_pads + c_pads):
                x = tf.raw_ops.Pad(input=x, paddings=constant(((0, 0), tuple(r_pads), tuple(c_pads), (0, 0)),
                                                              tf.int32))
        grad = call(input=x, filter_sizes=constant((kh, WIDE, *channels), tf.int32), padding="VALID")
        grads.append(grad[:, skip:] if skip else grad)
    return tf.concat(grads, 1)


def windows(taps: int, width: int, size: int, out: int, stride: int, padding: str) -> list:
    """Along one axis, for each block of `width` taps of a `taps`-wide kernel: the input it reads as a crop
    (begin, end) and zero padding (before, after), and how many of its leading taps earlier blocks already
    gave. Blocks overlap at the far end rather than use a narrower kernel."""
    before = 0 if padding == "VALID" else max((out - 1) * stride + taps - size, 0) // 2
    blocks, covered = [], 0
    for start in sorted({*range(0, taps - width, width), taps - width}):
        first = start - before  # the input index the block's first tap reads for the first output
        last = first + (out - 1) * stride + width - 1
        begin, end = max(first, 0), min(last + 1, size)
        blocks.append((begin, end, begin - first, last + 1 - end, covered - start))
        covered = start + width
    return blocks
