"""Operations outside the cells' nodes: stem, a cell's projecting output, global pooling, classifier and the
auxiliary tower.

The stem's BatchNorm is affine in search and evaluation alike, as in the DARTS code; the auxiliary tower
exists only in evaluation (the compiler leaves it out of search models).

At a lower compute precision (CompilerOptions.precision) the stem casts the input to it, and the head
(global pooling and classifier, the auxiliary tower's classifier) computes in float32: a mean over a few
pixels and a [batch, C] x [C, classes] product cost nothing next to the cells, and the logits, and so the
losses, come out float32 without the trainers casting anything.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnas.ops.batchnorm import BatchNorm
from tfnas.ops.conv import conv2d, pad_amount
from tfnas.ops.layer import OpLayer, torch_like_init
from tfnas.ops.registry import register
from tfnas.ops.relu import relu


@register("stem")
class Stem(OpLayer):
    """kxk conv (stride from the descriptor) -> affine BN; DARTS CIFAR: 3x3 to 3 * C channels."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        k = desc.kernel_size or 3
        self.padding = pad_amount(k)
        self.w = self.conv_weight("kernel", k, k, desc.in_channels, desc.out_channels)
        self.bn = BatchNorm(self, "bn", desc.out_channels, affine=True)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        x = tf.cast(x, self.activation_dtype)
        return self.bn.after_conv(lambda w: conv2d(x, w, self.stride, self.padding), [self.w], training,
                                  update_statistics=update_statistics)

    def macs(self, h, w):
        oh, ow = self.out_size(h, w)
        return oh * ow * int(np.prod(self.w.shape))


@register("project_channels")
class ProjectChannels(OpLayer):
    """1x1 conv (no bias) -> BN: a cell's concatenated states projected to a fixed width (CellDesc.post_op,
    Archai's `proj_channels` for PetriDish), affine in evaluation only, as the cells' other BatchNorms."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        self.w = self.conv_weight("kernel", 1, 1, desc.in_channels, desc.out_channels)
        self.bn = BatchNorm(self, "bn", desc.out_channels, options.affine)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        return self.bn.after_conv(lambda w: conv2d(x, w, matmul=self.options.pointwise_matmul), [self.w], training,
                                  update_statistics=update_statistics)

    def macs(self, h, w):
        return h * w * int(np.prod(self.w.shape))


@register("global_avg_pool")
class GlobalAvgPool(OpLayer):
    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        return tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@register("linear")
class Linear(OpLayer):
    """Dense classifier with bias: in_channels features -> out_channels logits."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        init = torch_like_init(desc.in_channels)
        self.w = self.add_weight(name="kernel", shape=(desc.in_channels, desc.out_channels), initializer=init)
        self.b = self.add_weight(name="bias", shape=(desc.out_channels,), initializer=init)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        return tf.matmul(tf.cast(x, tf.float32), self.w) + self.b

    def macs(self, h, w):
        return int(np.prod(self.w.shape))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.desc.out_channels)


@register("aux_tower")
class AuxTower(OpLayer):
    """DARTS's CIFAR auxiliary head: ReLU, 5x5 avg pool stride 3, 1x1 conv 128 + BN + ReLU, 2x2 conv 768 +
    BN + ReLU, classifier. The reference assumes an 8x8 input; on smaller maps the pool pads (SAME) and
    the 2x2 conv shrinks to the map, so any input size gives a 768-feature vector."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        self.w1 = self.conv_weight("conv1", 1, 1, desc.in_channels, 128)
        self.bn1 = BatchNorm(self, "bn1", 128, affine=True)
        self.w2 = self.conv_weight("conv2", 2, 2, 128, 768)
        self.bn2 = BatchNorm(self, "bn2", 768, affine=True)
        init = torch_like_init(768)
        self.fc_w = self.add_weight(name="fc_kernel", shape=(768, desc.out_channels), initializer=init)
        self.fc_b = self.add_weight(name="fc_bias", shape=(desc.out_channels,), initializer=init)
        self.finish_build()

    def call(self, x, training=False, update_statistics=True):
        x = relu(x)
        x = tf.nn.avg_pool2d(x, 5, 3, "VALID" if x.shape[1] >= 5 and x.shape[2] >= 5 else "SAME")
        x = relu(self.bn1(tf.nn.conv2d(x, tf.cast(self.w1, x.dtype), 1, "VALID"), training,
                                update_statistics=update_statistics))
        w2 = tf.cast(self.w2, x.dtype)
        if x.shape[1] < 2 or x.shape[2] < 2:
            w2 = w2[: min(2, x.shape[1]), : min(2, x.shape[2])]
        x = relu(self.bn2(tf.nn.conv2d(x, w2, 1, "VALID"), training, update_statistics=update_statistics))
        x = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])
        return tf.matmul(x, self.fc_w) + self.fc_b

    def macs(self, h, w):
        ph, pw = (h - 5) // 3 + 1 if h >= 5 else -(-h // 3), (w - 5) // 3 + 1 if w >= 5 else -(-w // 3)
        kh, kw = min(2, ph), min(2, pw)
        return (ph * pw * int(np.prod(self.w1.shape)) + (ph - kh + 1) * (pw - kw + 1) * kh * kw * 128 * 768
                + int(np.prod(self.fc_w.shape)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.desc.out_channels)
