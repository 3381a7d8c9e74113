"""Convolutions on raw TF ops that record only the gradients a tape can need.

The tf.nn wrappers cost a few milliseconds of Python each while a step is traced, and a DARTS search step
has hundreds of convolutions; TF's registered gradient of a conv builds both the input's and the filter's
gradient (and a ShapeN) every time, where an alpha-only pass needs neither filter gradient.
"""
from __future__ import annotations

import functools

import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range

from tfnas.ops.constants import constant, shape_of
from tfnas.ops.depthwise_grad import depthwise_filter_gradient
from tfnas.ops.space_to_batch import from_blocks, subsample, to_blocks


def pad_amount(kernel: int, dilation: int = 1) -> int:
    """Symmetric padding of the DARTS code: a stride-1 op keeps the size, a stride-2 op gives ceil(n/2)."""
    return dilation * (kernel - 1) // 2


def with_gradient(name: str, forward, backprop_input, backprop_filter, x, w, **attrs):
    """forward(x, w) with TF's own gradient ops, but only those the recording tapes can need: the input's
    gradient if x is on a watched path, the filter's if w is. Sizes are constants where the shapes are
    static."""
    x, w = tf.convert_to_tensor(x), tf.convert_to_tensor(w)  # a variable is read here, as a tape sees it
    w = tf.cast(w, x.dtype)  # float32 kernels at a lower compute precision (recorded: its gradient casts back)
    with record.stop_recording():
        y = forward(input=x, filter=w, **attrs)
    need_x, need_w = record.should_record_backprop([x]), record.should_record_backprop([w])
    if need_x or need_w:
        def backward(dy):
            grads = []
            if need_x:
                grads.append(backprop_input(input_sizes=shape_of(x), filter=w, out_backprop=dy, **attrs))
            if need_w:
                grads.append(backprop_filter(input=x, filter_sizes=shape_of(w), out_backprop=dy, **attrs))
            return grads

        record.record_operation(name, [y], [t for t, need in ((x, need_x), (w, need_w)) if need], backward)
    return y


def _conv(x, w, stride: int, padding: str = "VALID", explicit: int = 0, matmul: bool = False):
    pads = [0, 0, explicit, explicit, explicit, explicit, 0, 0] if padding == "EXPLICIT" else []
    kernels = conv_kernels(x, w, matmul and stride == 1 and padding == "VALID")
    return with_gradient("Conv2D", *kernels, x, w, strides=[1, stride, stride, 1], padding=padding,
                         explicit_paddings=pads, data_format="NHWC")


# A product over this few input channels gains nothing as MatMul (PC-DARTS's 4-channel candidates on the
# CIFAR-10 search network ran slower; benchmarks/README.md): those stay Conv2D.
POINTWISE_MATMUL_MIN_INPUT_CHANNELS = 5


def conv_kernels(x, w, matmul: bool) -> tuple:
    """(forward, input gradient, filter gradient) for conv(x, w) with Conv2D's arguments: MatMul's where
    `matmul` and conv(x, w) is one matrix product per pixel (a stride-1 VALID 1x1 kernel over all of x's
    channels, not grouped, at least POINTWISE_MATMUL_MIN_INPUT_CHANNELS of them), Conv2D's otherwise."""
    if matmul and tuple(w.shape[:2]) == (1, 1) and x.shape[-1] is not None and x.shape[-1] == w.shape[2] \
            and w.shape[2] >= POINTWISE_MATMUL_MIN_INPUT_CHANNELS:
        return pointwise_forward, pointwise_backprop_input, pointwise_backprop_filter
    return tf.raw_ops.Conv2D, tf.raw_ops.Conv2DBackpropInput, tf.raw_ops.Conv2DBackpropFilter


# A 1x1 conv as MatMul on the pixel rows (CompilerOptions.pointwise_matmul). oneDNN's CPU convolution
# reorders NHWC tensors into its blocked channel layout and back, and pads channel counts such as 36 and 72
# to its vector width; a matrix product over [pixels, channels] rows reads NHWC as it lies. The functions
# take Conv2D's arguments (for with_gradient and depthwise_block) and ignore the stride, padding and
# layout attributes, which a stride-1 VALID NHWC 1x1 conv makes trivial.

def _rows(x):
    """[N, H, W, C] as [N*H*W, C] (a [1, 1, C_in, C_out] kernel as [C_in, C_out]): the same buffer."""
    return tf.reshape(x, constant((-1, int(x.shape[-1])), tf.int32))


def _image_shape(x, channels: int):
    """x's [N, H, W] with `channels`, a constant where x's shape is static."""
    if x.shape[:3].is_fully_defined():
        return constant((*x.shape[:3], channels), tf.int32)
    return tf.concat([tf.shape(x)[:3], constant((channels,), tf.int32)], 0)


def pointwise_forward(input, filter, **_):
    return tf.reshape(tf.raw_ops.MatMul(a=_rows(input), b=_rows(filter)), _image_shape(input, filter.shape[-1]))


def pointwise_backprop_input(input_sizes, filter, out_backprop, **_):
    grad = tf.raw_ops.MatMul(a=_rows(out_backprop), b=_rows(filter), transpose_b=True)
    return tf.reshape(grad, input_sizes)


def pointwise_backprop_filter(input, filter_sizes, out_backprop, **_):
    grad = tf.raw_ops.MatMul(a=_rows(input), b=_rows(out_backprop), transpose_a=True)
    return tf.reshape(grad, filter_sizes)


def _depthwise(x, w, stride: int, padding: str):
    return with_gradient(
        "DepthwiseConv2dNative", tf.raw_ops.DepthwiseConv2dNative, tf.raw_ops.DepthwiseConv2dNativeBackpropInput,
        depthwise_filter_gradient, x, w, strides=[1, stride, stride, 1], padding=padding, data_format="NHWC")


def conv2d(x, w, stride: int = 1, padding: int = 0, matmul: bool = False):
    """`matmul`: an ungrouped stride-1 1x1 conv runs as MatMul (CompilerOptions.pointwise_matmul)."""
    if padding == 0:
        return _conv(x, w, stride, matmul=matmul)
    if stride == 1:
        return _conv(x, w, 1, "SAME")  # odd kernel, stride 1: SAME is the symmetric padding
    return _conv(x, w, stride, "EXPLICIT", padding)


def pointwise(x, w, grouped: bool = True, matmul: bool = False):
    """1x1 conv; grouped when x has more channels than w's input depth (k copies of a layer, see OpLayer).

    TF runs grouped convolutions with oneDNN on CPU (and on GPU/TPU), but its plain Eigen CPU kernels do
    not; there (`grouped=False`, see grouped_conv_supported) the groups run as separate convs, the same
    arithmetic. `matmul`: as conv2d's, for the ungrouped convs."""
    groups = x.shape[-1] // w.shape[2]
    if groups == 1 or grouped:
        return _conv(x, w, 1, matmul=matmul)
    return tf.concat([_conv(xg, wg, 1, matmul=matmul)
                      for xg, wg in zip(tf.split(x, groups, -1), tf.split(w, groups, -1))], -1)


def grouped_conv_supported(dtype: tf.DType = tf.float32) -> bool:
    """Whether this TensorFlow runs a grouped conv and its gradients in `dtype`: a fact of the installed
    build, tried once per dtype, eagerly, on one pixel, when the first layer with copies is built (the CPU
    kernels differ: oneDNN's take float32 and bfloat16, the float16 filter gradient is Eigen's)."""
    return _grouped_conv_supported(tf.as_dtype(dtype).name)


@functools.cache
def _grouped_conv_supported(dtype: str) -> bool:
    try:
        x, w = tf.ones([1, 1, 1, 2], dtype), tf.ones([1, 1, 1, 2], dtype)
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = tf.nn.conv2d(x, w, 1, "VALID")
        for grad in tape.gradient(y, [x, w]):
            grad.numpy()
        return True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return False


def depthwise(x, w, stride: int, padding: int, dilation: int = 1):
    """Depthwise conv with PyTorch-style symmetric padding, native strides and exact gradients.

    TF's native dilated depthwise kernel has no dilated backward pass, so a dilated conv is an undilated
    one between space-to-batch and batch-to-space (what tf.nn.depthwise_conv2d does, without its Python).
    A dilation-2, stride-2 conv reads only even rows and columns, so it equals an undilated stride-1 conv
    on the even-indexed pixels with half the padding: 4x less work than a dilated conv then subsampling.
    Inputs are padded before a strided conv: with explicit padding TF leaves the oneDNN kernels.
    """
    if dilation == 1:
        if stride == 1:
            return _depthwise(x, w, 1, "SAME")
        return _depthwise(tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]]), w, stride, "VALID")
    if stride == 1:
        if w.shape[0] % 2 and w.shape[0] == w.shape[1] and padding == pad_amount(w.shape[0], dilation):
            # "Same" size: a SAME conv in block space, with no padded copy of the input.
            padding, conv_padding = 0, "SAME"
        else:
            conv_padding = "VALID"
        # Padded so that both sides divide by the dilation; the extra rows/columns are cropped again (the
        # zeros they add are what lies outside the image for the SAME conv too).
        extra = tuple((-(n + 2 * padding)) % dilation for n in (x.shape[1], x.shape[2]))
        y = to_blocks(x, dilation, ((padding, padding + extra[0]), (padding, padding + extra[1])))
        return from_blocks(_depthwise(y, w, 1, conv_padding), dilation, extra)
    if dilation != stride or padding % stride:
        raise ValueError("strided dilated depthwise conv needs dilation == stride and padding % stride == 0")
    half = padding // stride
    x = subsample(x, stride)
    if half == (w.shape[0] - 1) // 2:  # always, for pad_amount's padding: odd kernel, stride 1
        return _depthwise(x, w, 1, "SAME")
    return _depthwise(tf.pad(x, [[0, 0], [half, half], [half, half], [0, 0]]), w, 1, "VALID")
