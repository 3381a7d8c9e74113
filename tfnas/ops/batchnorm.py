"""BatchNorm over NHWC as one fused op, owned by an operation layer; affine or not, weighted or not.

Under a strategy with several replicas (tfnas.distribute) each replica normalises by its own share of the
batch, and the moving statistics are averaged across replicas before they are written, so they stay
equal on every replica (a checkpoint holds one value). With the compiler option `sync_batchnorm` the
batch statistics themselves are the global batch's (summed across replicas, differentiated through the
all-reduce): a run on N replicas then computes what one device computes on the same global batch.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from tfnas import distribute
from tfnas.ops.constants import per_graph

MOMENTUM = 0.1  # PyTorch convention (new = (1 - m) * old + m * batch), as in the DARTS code.
EPSILON = 1e-5


def unit_scale_offset(channels: int, dtype):
    """Scale 1 and offset 0 of a non-affine BatchNorm."""
    return per_graph(("unit", channels, dtype), lambda: (tf.ones([channels], dtype), tf.zeros([channels], dtype)))


# oneDNN's bfloat16 BatchNorm runs its fast kernels over whole vectors of 16 channels only; over other
# channel counts it is several times slower than float32's (benchmarks/README.md). Over more than one
# block, where whole blocks add at most a third of the channels (24, 28, 36, 40, 72, ...: the evaluation
# network's 36 and 72), the op runs in bfloat16 over channels padded with zeros to whole blocks: the
# padding's copies cost less than two casts to float32 and back. Fewer channels (4, 8, 12, 20: a small
# search network's) run in float32 between two casts; padded, they would cost more.
BF16_CHANNEL_BLOCK = 16


def _bfloat16_padding(x) -> int | None:
    """Channels of zeros to append so that the op runs in x's own (half) precision; None: it runs in
    float32 (x float32, or bfloat16 over channels whose padding would cost more than the casts)."""
    if x.dtype == tf.float32:
        return None
    if x.dtype != tf.bfloat16:
        return 0
    channels = x.shape[-1]
    if channels is None:
        return None
    pad = -channels % BF16_CHANNEL_BLOCK
    return pad if not pad or (channels > BF16_CHANNEL_BLOCK and 3 * pad <= channels) else None


def _pad_channels(x, pad: int):
    """x with `pad` channels of zeros after its own; a concat, which costs a fraction of tf.pad's
    strided copy over the innermost axis."""
    static = x.shape[:-1]
    shape = static.as_list() + [pad] if static.is_fully_defined() else tf.concat([tf.shape(x)[:-1], [pad]], 0)
    return tf.concat([x, tf.zeros(shape, x.dtype)], -1)


# What the per-channel inputs of the ops hold over padded channels: unit scale and variance, zero offset
# and mean (a padded channel, all zeros, stays zero forward and backward).
_PAD_FILL = {"scale": 1.0, "offset": 0.0, "mean": 0.0, "variance": 1.0, "reserve_space_1": 0.0,
             "reserve_space_2": 1.0}


def _pad_vectors(attrs: dict, pad: int) -> dict:
    """The ops' attrs with their per-channel inputs padded (_PAD_FILL)."""
    return {key: tf.concat([tf.convert_to_tensor(value), tf.fill([pad], _PAD_FILL[key])], 0)
            if key in _PAD_FILL else value for key, value in attrs.items()}


def fused_batch_norm(x, **attrs):
    """The fused BatchNorm op on x: (y in x's dtype, mean, variance, *reserve outputs).

    FusedBatchNorm (v1), not V3, where it runs in float32: the same CPU/GPU kernels, but the gradient
    tape knows that v1's gradient ignores its statistics outputs, where for V3 it builds zero gradients
    for all five of them (5 fewer ops per BatchNorm and pass to trace). V3 takes x at a lower precision
    with float32 scale, offset and statistics. Both return the updated moving averages when
    exponential_avg_factor != 1. Over padded channels (see BF16_CHANNEL_BLOCK) y, mean and variance are
    those of x's own channels; the reserve outputs stay padded, for fused_batch_norm_grad."""
    pad = _bfloat16_padding(x)
    if pad is None:
        y, *rest = tf.raw_ops.FusedBatchNorm(x=tf.cast(x, tf.float32), **attrs)
        return (tf.cast(y, x.dtype), *rest)
    if not pad:
        return tf.raw_ops.FusedBatchNormV3(x=x, **attrs)
    channels = x.shape[-1]
    y, mean, var, *reserved = tf.raw_ops.FusedBatchNormV3(
        x=_pad_channels(x, pad), **_pad_vectors(attrs, pad))
    return (tf.split(y, [channels, pad], -1)[0], mean[:channels], var[:channels], *reserved)


def fused_batch_norm_grad(y_backprop, x, reserved, **attrs):
    """dx of fused_batch_norm's op (x is the op's input, `reserved` its reserve outputs), in x's dtype."""
    pad = _bfloat16_padding(x)
    if pad is None:
        dx = tf.raw_ops.FusedBatchNormGrad(y_backprop=tf.cast(y_backprop, tf.float32), x=tf.cast(x, tf.float32),
                                           **attrs)[0]
        return tf.cast(dx, x.dtype)
    if not pad:
        return tf.raw_ops.FusedBatchNormGradV3(y_backprop=y_backprop, x=x, reserve_space_3=reserved[-1],
                                               **attrs)[0]
    dx = tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=_pad_channels(y_backprop, pad), x=_pad_channels(x, pad), reserve_space_3=reserved[-1],
        **_pad_vectors(attrs, pad))[0]
    return tf.split(dx, [x.shape[-1], pad], -1)[0]


class BatchNorm:
    """Fused BatchNorm with moving statistics; its weights are created on (and tracked by) `owner`."""

    def __init__(self, owner: keras.layers.Layer, name: str, channels: int, affine: bool):
        self.affine = affine
        self.channels = channels
        options = getattr(owner, "options", None)
        self.sync = bool(getattr(options, "sync_batchnorm", False))
        self.fold = bool(getattr(options, "fold_batchnorm", False))
        if affine:
            self.gamma = owner.add_weight(name=f"{name}_gamma", shape=(channels,), initializer="ones")
            self.beta = owner.add_weight(name=f"{name}_beta", shape=(channels,), initializer="zeros")
        self.moving_mean = owner.add_weight(name=f"{name}_mean", shape=(channels,), initializer="zeros",
                                            trainable=False)
        self.moving_var = owner.add_weight(name=f"{name}_var", shape=(channels,), initializer="ones",
                                           trainable=False)

    def __call__(self, x, training: bool, weight=None, copies: int = 1, update_statistics: bool = True):
        """`weight`: a per-channel factor for the output (a mixed op's softmax weight), folded into the
        fused op's scale and offset: no separate multiply, and the op's own scale gradient is the
        weight's.

        `copies=k`: x is k copies of this BatchNorm's input side by side (tile_channels), each to be
        normalised alike and weighted by its slice of `weight`. Every copy has the same batch statistics,
        so the op runs over all k * channels with the moving statistics tiled, and the first copy's
        updated averages are kept.

        `update_statistics=False`: a training pass normalises by its batch and leaves the moving
        statistics as they are."""
        scale, offset = self._scale_offset(weight, copies)
        moving_mean, moving_var = self.moving_mean.value, self.moving_var.value
        if copies > 1:
            moving_mean, moving_var = (tf.tile(v, [copies]) for v in (moving_mean, moving_var))
        if training and self.synced():
            return self._global_batch_norm(x, scale, offset, copies, update_statistics)
        if training:
            y, mean, var, *_ = fused_batch_norm(
                x, scale=scale, offset=offset, mean=moving_mean, variance=moving_var,
                epsilon=EPSILON, exponential_avg_factor=MOMENTUM, data_format="NHWC", is_training=True)
            # The op returns the updated moving averages when exponential_avg_factor != 1.
            if update_statistics:
                self.update_moving_statistics(mean, var, averaged=True)
            return y
        y, *_ = fused_batch_norm(
            x, scale=scale, offset=offset, mean=moving_mean, variance=moving_var,
            epsilon=EPSILON, data_format="NHWC", is_training=False)
        return y

    def _scale_offset(self, weight, copies: int):
        """The fused op's float32 scale and offset: gamma and beta (or 1 and 0), times `weight`."""
        if self.affine:
            if copies > 1:
                raise ValueError("BatchNorm copies are for non-affine BatchNorms (a search network's)")
            scale, offset = self.gamma.value, self.beta.value
            if weight is not None:
                scale, offset = scale * weight, offset * weight
        else:
            scale, offset = unit_scale_offset(self.channels * copies, tf.float32)  # float32 at any precision
            if weight is not None:
                scale = weight
        return scale, offset

    def folds(self, training: bool) -> bool:
        """Whether this pass folds the BatchNorm into the conv before it (CompilerOptions.fold_batchnorm:
        inference only; a training pass needs the batch's statistics, which no kernel can hold)."""
        return self.fold and not training

    def after_conv(self, conv, kernels: list, training: bool, weight=None, update_statistics: bool = True):
        """This BatchNorm of conv(*kernels), whose output channels are the kernels' output channels in
        order (one kernel, or the halves of a FactorizedReduce).

        Folded (see `folds`): conv(*(kernel * a)) + b, the moving statistics' affine map a x + b moved
        into the kernels' output channels and a bias, which grappler fuses with the convolution: no
        BatchNorm op, and at half precision no casts around one either."""
        if not self.folds(training):
            return self(conv(*kernels), training, weight, update_statistics=update_statistics)
        scale, offset = self._scale_offset(weight, 1)
        a = scale * tf.math.rsqrt(self.moving_var.value + EPSILON)
        b = offset - self.moving_mean.value * a
        parts = tf.split(a, [int(k.shape[-1]) for k in kernels]) if len(kernels) > 1 else [a]
        y = conv(*(tf.convert_to_tensor(k) * part for k, part in zip(kernels, parts)))
        return tf.nn.bias_add(y, tf.cast(b, y.dtype))

    def synced(self) -> bool:
        """Whether this training pass takes its batch statistics over every replica's share."""
        return self.sync and distribute.replicas() > 1

    def _global_batch_norm(self, x, scale, offset, copies: int, update_statistics: bool):
        """Batch statistics of the global batch: per-channel sums and sums of squares all-reduced in one
        collective; the moving variance takes the unbiased variance, as FusedBatchNorm's does."""
        dtype = x.dtype
        x = tf.cast(x, tf.float32)  # statistics in float32 whatever the compute precision
        local = tf.cast(tf.shape(x)[0] * tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
        sums = tf.concat([tf.reduce_sum(x, [0, 1, 2]), tf.reduce_sum(tf.square(x), [0, 1, 2]), local[None]], 0)
        (sums,) = distribute.all_reduce([sums])
        channels = x.shape[-1]
        count = sums[-1]
        mean = sums[:channels] / count
        var = tf.maximum(sums[channels:2 * channels] / count - tf.square(mean), 0.0)
        y = (x - mean) * (tf.math.rsqrt(var + EPSILON) * tf.cast(scale, tf.float32)) + tf.cast(offset, tf.float32)
        if update_statistics:
            unbiased = var * (count / tf.maximum(count - 1.0, 1.0))
            self._blend(mean[:self.channels], unbiased[:self.channels])
        return tf.cast(y, dtype)

    def _blend(self, mean, var) -> None:
        """(1 - m) * old + m * batch, written with raw assignments (see update_moving_statistics)."""
        for moving, value in ((self.moving_mean, mean), (self.moving_var, var)):
            tf.raw_ops.AssignSubVariableOp(resource=moving.handle, value=(moving.value - value) * MOMENTUM)

    def update_moving_statistics(self, mean, var, averaged: bool) -> None:
        """The one place the moving statistics are written.
        `averaged`: mean and var are already the new averages (FusedBatchNorm with exponential_avg_factor
        MOMENTUM, over `copies` of the channels: the first copy's are kept); otherwise they are this
        batch's, blended in here as (1 - m) * old + m * batch. Raw assignments: Keras's `assign` costs
        milliseconds of Python per call while a step is traced, and no gradient flows into an assignment."""
        if averaged and mean.shape[0] != self.channels:
            mean, var = mean[:self.channels], var[:self.channels]
        if distribute.replicas() > 1 and not self.synced():  # one value on every replica
            mean, var = distribute.all_reduce([mean, var], tf.distribute.ReduceOp.MEAN)
        if not averaged:
            self._blend(mean, var)
            return
        for moving, value in ((self.moving_mean, mean), (self.moving_var, var)):
            tf.raw_ops.AssignVariableOp(resource=moving.handle, value=value)
