"""The DARTS operations (Liu et al., ICLR 2019): the candidates of a mixed edge and the cell preprocessing.

Shapes and parameter counts follow the reference implementation exactly (bias-free convs, one BN per
conv block, FactorizedReduce as two shifted stride-2 1x1 convs); `tests/test_ops.py` pins them.
Every BatchNorm inside a cell is affine only when the compiler options say so (evaluation).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnas.ops.batchnorm import BatchNorm
from tfnas.ops.conv import conv2d, depthwise, pad_amount, pointwise
from tfnas.ops.depthwise_block import depthwise_block
from tfnas.ops.layer import OpLayer
from tfnas.ops.registry import register
from tfnas.ops.relu import relu
from tfnas.ops.space_to_batch import fits_blocks, from_blocks


def block_options(layer: OpLayer) -> dict:
    """The depthwise_block arguments that follow from a layer's compiler options and build."""
    return dict(recompute=layer.options.recompute_depthwise, hold_less=not layer.options.nested_gradients,
                grouped=layer.grouped, matmul=layer.options.pointwise_matmul)


@register("relu_conv_bn")
class ReluConvBN(OpLayer):
    """ReLU -> kxk conv -> BN; with k = 1 it is the preprocessing of a cell input."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        k = desc.kernel_size or 1
        self.padding = pad_amount(k)
        self.w = self.conv_weight("kernel", k, k, desc.in_channels, desc.out_channels)
        self.bn = BatchNorm(self, "bn", desc.out_channels, options.affine)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        x = relu(x)
        return self.bn.after_conv(lambda w: conv2d(x, w, self.stride, self.padding, self.options.pointwise_matmul),
                                  [self.w], training, update_statistics=update_statistics)

    def macs(self, h, w):
        oh, ow = self.out_size(h, w)
        return oh * ow * int(np.prod(self.w.shape))


@register("sep_conv_3x3", candidate=True, kernel_size=3)
@register("sep_conv_5x5", candidate=True, kernel_size=5)
@register("sep_conv_7x7", candidate=True, kernel_size=7)
class SepConv(OpLayer):
    """Two blocks of ReLU -> depthwise kxk -> pointwise 1x1 -> BN; the first block carries the stride.

    As k copies: depthwise kernels over the tiled input, 1x1 convs grouped by copy (TF infers the groups
    from the kernel's input depth), BatchNorms over all copies' channels (statistics stay per channel).
    """

    supports_copies = True
    reads_relu = folds_weight = True
    # Copy j: depthwise channels j*C.. of the tiled input, 1x1 output channels (its group) and BN channels.
    copy_axes = {"dw1": 2, "pw1": 3, "bn1": 0, "dw2": 2, "pw2": 3, "bn2": 0}

    def __init__(self, desc, options, kernel_size: int, **kw):
        super().__init__(desc, options, **kw)
        c_in, c_out, k = desc.in_channels, desc.out_channels or desc.in_channels, self.copies
        self.padding = pad_amount(kernel_size)
        self.dw1 = self.depthwise_weight("dw1", kernel_size, k * c_in)
        self.pw1 = self.conv_weight("pw1", 1, 1, c_in, k * c_in)
        self.bn1 = BatchNorm(self, "bn1", k * c_in, options.affine)
        self.dw2 = self.depthwise_weight("dw2", kernel_size, k * c_in)
        self.pw2 = self.conv_weight("pw2", 1, 1, c_in, k * c_out)
        self.bn2 = BatchNorm(self, "bn2", k * c_out, options.affine)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True, shared=None, weight=None):
        block = dict(training=training, update_statistics=update_statistics, **block_options(self))
        x = self.relu_input(x, shared, spread=True)
        if self.bn1.folds(training):  # each BatchNorm folded into the 1x1 conv before it
            mid = relu(self.bn1.after_conv(lambda pw: depthwise_block(x, self.dw1, pw, self.padding, self.stride,
                                                                      **block), [self.pw1], training))
            return self.bn2.after_conv(lambda pw: depthwise_block(mid, self.dw2, pw, self.padding, **block),
                                       [self.pw2], training, weight)
        x = depthwise_block(x, self.dw1, self.pw1, self.padding, self.stride, **block)
        x = depthwise_block(x, self.dw2, self.pw2, self.padding, bn=self.bn1, **block)
        return self.bn2(x, training, weight, update_statistics=update_statistics)

    def macs(self, h, w):
        oh, ow = self.out_size(h, w)
        return oh * ow * sum(int(np.prod(v.shape)) for v in (self.dw1, self.pw1, self.dw2, self.pw2))


@register("dil_conv_3x3", candidate=True, kernel_size=3)
@register("dil_conv_5x5", candidate=True, kernel_size=5)
class DilConv(OpLayer):
    """ReLU -> depthwise kxk with dilation 2 -> pointwise 1x1 -> BN.

    At stride 1, on even sizes, the whole block runs in space-to-batch layout (space_to_batch.to_blocks): one copy
    of the input in and one of the output out, where a dilated conv alone needs the same two around the
    depthwise conv. Called with `shared` (in a mixed op), the candidates share the input's copy, and with
    `blocked=True` the output stays in that layout, so that the mixed op sums the dilated candidates
    before copying back once.
    """

    DILATION = 2
    supports_copies = True  # as SepConv
    reads_relu = folds_weight = True
    copy_axes = {"dw": 2, "pw": 3, "bn": 0}

    def __init__(self, desc, options, kernel_size: int, **kw):
        super().__init__(desc, options, **kw)
        c_in, c_out, k = desc.in_channels, desc.out_channels or desc.in_channels, self.copies
        self.padding = pad_amount(kernel_size, self.DILATION)
        self.dw = self.depthwise_weight("dw", kernel_size, k * c_in)
        self.pw = self.conv_weight("pw", 1, 1, c_in, k * c_out)
        self.bn = BatchNorm(self, "bn", k * c_out, options.affine)
        self.finish_build()

    def blocks(self, x) -> int:
        return self.DILATION if self.stride == 1 and fits_blocks(x, self.DILATION) else 0

    def call(self, x, training=False, update_statistics=True, shared=None, weight=None, blocked=False):
        if self.blocks(x):
            xb = self.relu_input(x, shared, spread=True, blocks=self.DILATION)
            y = self.bn.after_conv(
                lambda pw: depthwise_block(xb, self.dw, pw, pad_amount(self.dw.shape[0]), training=training,
                                           update_statistics=update_statistics, **block_options(self)),
                [self.pw], training, weight, update_statistics=update_statistics)
            return y if blocked else from_blocks(y, self.DILATION)
        if blocked:
            raise ValueError(f"operation {self.desc.id or self.desc.name}: no block layout for input {x.shape}")
        x = depthwise(self.relu_input(x, shared, spread=True), self.dw, self.stride, self.padding, self.DILATION)
        return self.bn.after_conv(lambda pw: pointwise(x, pw, self.grouped, self.options.pointwise_matmul),
                                  [self.pw], training, weight, update_statistics=update_statistics)

    def macs(self, h, w):
        oh, ow = self.out_size(h, w)
        return oh * ow * (int(np.prod(self.dw.shape)) + int(np.prod(self.pw.shape)))


@register("factorized_reduce")
class FactorizedReduce(OpLayer):
    """Halves the resolution without losing half the pixels: ReLU, two stride-2 1x1 convs (the second on
    the input shifted by one pixel), concatenated on channels, then BN.

    On odd sizes the reference code breaks (the shifted path is one pixel smaller); here the shifted input
    is zero-padded at the far edge so both paths give ceil(n / 2), like every other stride-2 op.
    As k copies, each conv is k times wider and the halves are interleaved back per copy before the BN.
    """

    supports_copies = True
    reads_relu = folds_weight = True
    # Copy j: output channels j*C/2.. of each conv, and its C BatchNorm channels (its two halves, in order).
    copy_axes = {"conv1": 3, "conv2": 3, "bn": 0}

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        c_out, k = desc.out_channels, self.copies
        if c_out % 2:
            raise ValueError(f"operation {desc.id or desc.name}: factorized_reduce needs even out_channels,"
                             f" got {c_out}")
        self.stride = 2
        self.w1 = self.conv_weight("conv1", 1, 1, desc.in_channels, k * c_out // 2)
        self.w2 = self.conv_weight("conv2", 1, 1, desc.in_channels, k * c_out // 2)
        self.bn = BatchNorm(self, "bn", k * c_out, options.affine)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True, shared=None, weight=None):
        x = self.relu_input(x, shared, spread=False)
        shifted = tf.slice(x, [0, 1, 1, 0], [-1, -1, -1, -1])  # not x[:, 1:, 1:]: Slice's gradient is a fast Pad
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            shifted = tf.pad(shifted, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])
        if self.copies == 1:
            return self.bn.after_conv(lambda w1, w2: tf.concat([conv2d(x, w1, 2), conv2d(shifted, w2, 2)], -1),
                                      [self.w1, self.w2], training, weight, update_statistics=update_statistics)
        halves = [conv2d(x, self.w1, 2), conv2d(shifted, self.w2, 2)]
        oh, ow, k = halves[0].shape[1], halves[0].shape[2], self.copies
        y = tf.concat([tf.reshape(half, [-1, oh, ow, k, half.shape[-1] // k]) for half in halves], -1)
        y = tf.reshape(y, [-1, oh, ow, k * y.shape[-1]])  # copy-major channels
        return self.bn(y, training, weight, update_statistics=update_statistics)

    def macs(self, h, w):
        oh, ow = self.out_size(h, w)
        return oh * ow * (int(np.prod(self.w1.shape)) + int(np.prod(self.w2.shape)))


@register("skip_connect", candidate=True)
class SkipConnect(OpLayer):
    """Identity at stride 1; at stride 2 DARTS uses a FactorizedReduce, built here as a child."""

    supports_copies = True

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        self.reduce = None
        if self.stride == 2:
            child = type(desc)()
            child.CopyFrom(desc)
            child.name = "factorized_reduce"
            child.id = f"{desc.id}.fr" if desc.id else ""
            child.out_channels = desc.out_channels or desc.in_channels
            self.reduce = FactorizedReduce(child, options, copies=self.copies)
            self.reads_relu = self.folds_weight = True
        else:
            self.out_copies = 1  # the identity is the same for every copy
        self.finish_build()

    @property
    def is_identity(self) -> bool:
        return self.reduce is None

    def call(self, x, training=False, update_statistics=True, shared=None, weight=None):
        if self.reduce is None:
            return x
        return self.reduce(x, training=training, update_statistics=update_statistics, shared=shared, weight=weight)

    def macs(self, h, w):
        return 0 if self.reduce is None else self.reduce.macs(h, w)

    def weight_layout(self):
        """At stride 2 its FactorizedReduce's weights (the op's own, under their names); none otherwise."""
        return {} if self.reduce is None else self.reduce.weight_layout()


@register("none", candidate=True)
class Zero(OpLayer):
    """The `none` candidate: zeros of the output shape (mixed ops skip it, since it adds nothing)."""

    supports_copies = True

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        self.out_copies = 1
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        s = self.stride
        return tf.zeros_like(x if s == 1 else x[:, ::s, ::s, :])


@register("max_pool_3x3", candidate=True, kind="max")
@register("avg_pool_3x3", candidate=True, kind="avg")
class Pool(OpLayer):
    """3x3 pooling with padding 1; average pooling counts only real pixels (count_include_pad=False)."""

    supports_copies = True

    def __init__(self, desc, options, kind: str, **kw):
        super().__init__(desc, options, **kw)
        self.kind = kind
        self.out_copies = 1  # no weights: every copy computes the same
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        s = self.stride
        if self.kind == "max":
            if s == 1:
                return tf.nn.max_pool2d(x, 3, 1, "SAME")
            # Padded with -inf first (every window holds a real pixel): explicit padding would leave the
            # oneDNN kernels.
            return tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf), 3, 2,
                                    "VALID")
        if s == 1:
            return tf.nn.avg_pool2d(x, 3, 1, "SAME")  # SAME averages over real pixels only
        h, w = x.shape[1], x.shape[2]
        total = tf.nn.avg_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")
        return total * tf.constant(_avg_pool_correction(h, w), x.dtype)


def _avg_pool_correction(h: int, w: int) -> np.ndarray:
    """9 / (number of real pixels in each 3x3 stride-2 window with padding 1), shape [1, oh, ow, 1]."""
    ones = np.pad(np.ones((h, w), np.float32), 1)
    oh, ow = -(-h // 2), -(-w // 2)
    counts = np.array([[ones[2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() for j in range(ow)] for i in range(oh)])
    return (9.0 / counts)[None, :, :, None].astype(np.float32)
