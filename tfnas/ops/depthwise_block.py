"""[relu(bn(x)) ->] depthwise -> 1x1 recorded as one op that holds less for its backward pass.

The layers of a separable or dilated conv between their input and their last BatchNorm. Recorded op by op,
a training pass holds for its backward pass x, and with `bn` both x (for the BatchNorm's gradient) and
relu(y) (for the ReLU's and the depthwise filter's gradients), where y = bn(x) is x normalised, and the
depthwise output (for the 1x1 filter gradient). Recorded as one op it holds y instead of x and relu(y):
the ReLU's gradient reads y, relu(y) is recomputed for the filter gradient, and the BatchNorm's gradient
needs only y and the batch's std, for one element-wise op more in the backward pass. With `recompute`
(CompilerOptions.recompute_depthwise) the depthwise output is recomputed too, when the 1x1 filter
gradient needs it: one more depthwise conv in a weight-gradient pass for one tensor less held per block.

The one op's backward pass uses tensors its forward computed unrecorded, so its gradients are exact to
first order only: an outer tape (gradients of gradients) would not see them depend on the input. Models
compiled with CompilerOptions.nested_gradients call it with `hold_less=False`, and the block is then
the plain composition of recorded ops.
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range

from tfnas.ops.batchnorm import EPSILON, BatchNorm, fused_batch_norm, fused_batch_norm_grad, unit_scale_offset
from tfnas.ops.constants import shape_of
from tfnas.ops.conv import conv_kernels, depthwise, pointwise
from tfnas.ops.depthwise_grad import depthwise_filter_gradient
from tfnas.ops.relu import relu, relu_unrecorded


def depthwise_block(x, dw, pw=None, padding: int = 0, stride: int = 1, bn: BatchNorm | None = None,
                    training: bool = True, update_statistics: bool = True, recompute: bool = False,
                    hold_less: bool = True, grouped: bool = True, matmul: bool = False):
    """[relu(bn(x)) ->] depthwise kxk (symmetric `padding`) [-> 1x1 conv `pw`, grouped as in pointwise].
    `bn` must have no scale and offset (a search network's) for the one-op form; its moving statistics are
    updated as FusedBatchNorm does unless `update_statistics` is False. `grouped`: whether grouped 1x1
    convs run as one op (conv.grouped_conv_supported). `matmul`: an ungrouped 1x1 conv runs as MatMul
    (CompilerOptions.pointwise_matmul)."""
    grouped_ok = pw is None or x.shape[-1] == pw.shape[2] or grouped
    if not (hold_less and training and grouped_ok and (bn is None or not (bn.affine or bn.synced()))
            and dw.shape[0] == 2 * padding + 1):
        if bn is not None:
            x = relu(bn(x, training, update_statistics=update_statistics))
        y = depthwise(x, dw, stride, padding)
        return y if pw is None else pointwise(y, pw, grouped, matmul)
    if stride != 1:  # padded first, as depthwise() does, to stay on the oneDNN kernels
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    x, dw = tf.convert_to_tensor(x), tf.convert_to_tensor(dw)  # a variable is read here, as a tape sees it
    dw = tf.cast(dw, x.dtype)  # float32 kernels at a lower compute precision, as conv.with_gradient casts them
    pw = None if pw is None else tf.cast(tf.convert_to_tensor(pw), x.dtype)
    attrs = dict(strides=[1, stride, stride, 1], padding="SAME" if stride == 1 else "VALID", data_format="NHWC")
    pw_attrs = dict(strides=[1, 1, 1, 1], padding="VALID", data_format="NHWC")
    # The 1x1 conv's kernels: its input, the depthwise output, has x's channels.
    pw_forward, pw_backprop_input, pw_backprop_filter = conv_kernels(x, pw, matmul and pw is not None)
    with record.stop_recording():
        if bn is None:
            held = activated = x
        else:
            scale, offset = unit_scale_offset(bn.channels, tf.float32)  # float32 at any compute precision
            # Factor 1: the op returns this batch's mean and (unbiased) variance, which give 1 / std below
            # on every device (the reserve outputs hold the variance on CPU, its inverse root on GPU).
            held, mean, var, *reserved = fused_batch_norm(
                x, scale=scale, offset=offset, mean=bn.moving_mean.value, variance=bn.moving_var.value,
                epsilon=EPSILON, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            if update_statistics:
                bn.update_moving_statistics(mean, var, averaged=False)
            pixels = held.shape[:3].num_elements() or tf.cast(tf.size(held) // bn.channels, var.dtype)
            # 1 / std of this batch, from the unbiased variance.
            inv_std = tf.math.rsqrt(var * ((pixels - 1) / pixels) + EPSILON)
            activated = relu_unrecorded(held)
        mid = tf.raw_ops.DepthwiseConv2dNative(input=activated, filter=dw, **attrs)
        out = mid if pw is None else pw_forward(input=mid, filter=pw, **pw_attrs)
    inputs = [t for t in (x, dw, pw) if t is not None]
    needs = [record.should_record_backprop([t]) for t in inputs]
    if not any(needs):
        return out
    need_x, need_dw, need_pw = needs + [False] * (3 - len(needs))

    def backward(d_out):
        def again(make):
            """make() in the backward pass, not held from the forward (it waits for the gradient)."""
            with tf.control_dependencies([d_out]):
                return make()

        grads = []
        d_mid = d_out
        if pw is not None and (need_x or need_dw):
            d_mid = pw_backprop_input(input_sizes=shape_of(mid), filter=pw, out_backprop=d_out, **pw_attrs)
        if need_x:
            d_act = _input_gradient(shape_of(held), dw, d_mid, attrs)
            if bn is None:
                grads.append(d_act)
            else:
                # The gradient of a BatchNorm, dx = scale / std * (dy - mean(dy) - y * mean(dy * y)), from y
                # itself: mean 0 and variance 1 with epsilon 0 make the op's normalisation the identity
                # (on CPU it reads the variance, on GPU its inverse root: 1 either way), and 1 / std is
                # the scale.
                grads.append(fused_batch_norm_grad(
                    tf.raw_ops.ReluGrad(gradients=d_act, features=held), held, reserved, scale=inv_std,
                    reserve_space_1=offset, reserve_space_2=scale,  # zeros and ones
                    epsilon=0.0, data_format="NHWC", is_training=True))
        if need_dw or (need_pw and recompute):
            act = activated if bn is None else again(lambda: relu_unrecorded(held))
        if need_dw:
            grads.append(depthwise_filter_gradient(input=act, filter_sizes=shape_of(dw), out_backprop=d_mid,
                                                   **attrs))
        if need_pw:
            m = again(lambda: tf.raw_ops.DepthwiseConv2dNative(input=act, filter=dw, **attrs)) \
                if recompute else mid
            grads.append(pw_backprop_filter(input=m, filter_sizes=shape_of(pw), out_backprop=d_out, **pw_attrs))
        return grads

    record.record_operation("DepthwiseBlock", [out], [t for t, need in zip(inputs, needs) if need], backward)
    return out


def _input_gradient(input_sizes, dw, d_mid, attrs):
    """The depthwise conv's input gradient. In bfloat16 it runs in float32 between casts: inside this
    block (after the grouped 1x1 conv's input gradient) oneDNN's bfloat16 kernel took several times
    float32's time on the search networks (benchmarks/README.md)."""
    if d_mid.dtype != tf.bfloat16:
        return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=input_sizes, filter=dw, out_backprop=d_mid,
                                                             **attrs)
    grad = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=input_sizes, filter=tf.cast(dw, tf.float32),
                                                         out_backprop=tf.cast(d_mid, tf.float32), **attrs)
    return tf.cast(grad, tf.bfloat16)
