"""Shared building blocks of the operations: raw-TF BatchNorm and convolutions inside Keras layers.

Why raw TF ops rather than nested Keras layers: a DARTS search network has thousands of small ops, and
each nested Keras layer adds Python work to every trace and a handful of graph ops to every step.
Here a whole ReLU-conv-BN block is one layer whose `call` emits exactly the TF ops it needs, and weights
are created in `__init__` from the descriptor's channels, so a model is built without any tracing.
"""
from __future__ import annotations

import contextlib
import functools
import math
import weakref

import keras
import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range: see tile_channels

from tfnas.proto import descriptors_pb2 as pb

BN_MOMENTUM = 0.1  # PyTorch convention (new = (1 - m) * old + m * batch), as in the DARTS code.
BN_EPSILON = 1e-5


def layer_name(desc: pb.OpDesc) -> str | None:
    """Keras forbids '/' in layer names; descriptor ids use '.' so they map one to one."""
    return desc.id.replace("/", ".") or None


def torch_like_init(fan_in: int):
    """PyTorch's default conv/linear init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return keras.initializers.RandomUniform(-bound, bound)


class OpLayer(keras.layers.Layer):
    """Base of every operation: keeps its descriptor and builds its weights eagerly in __init__.

    `copies=k` builds k independent instances of the op that read the same input, their weights side by
    side on the channel axis: the output is [batch, h, w, k * out_channels], copy-major, each copy
    exactly what a single op with its slice of the weights computes. Grouped search cells use this to
    run all mixed edges reading one state as one set of wider kernels. Ops whose output does not depend
    on weights (pools, identity) compute it once and say so with `out_copies == 1`; ops that cannot be
    batched keep `supports_copies = False`.
    """

    supports_copies = False

    def __init__(self, desc: pb.OpDesc, options: pb.CompilerOptions, copies: int = 1, **kwargs):
        super().__init__(name=layer_name(desc), **kwargs)
        self.desc = desc
        self.options = options
        self.stride = desc.stride or 1
        if self.stride not in (1, 2):
            raise ValueError(f"operation {desc.id or desc.name}: stride must be 1 or 2, got {self.stride}")
        if copies < 1 or (copies > 1 and not self.supports_copies):
            raise ValueError(f"operation {desc.id or desc.name}: {desc.name} cannot be built as {copies} copies")
        self.copies = copies
        self.out_copies = copies
        if copies > 1:
            grouped_conv_supported()  # decided now, eagerly, not while a step is traced

    def finish_build(self) -> None:
        self.built = True

    def conv_weight(self, name: str, kh: int, kw: int, c_in: int, c_out: int):
        return self.add_weight(name=name, shape=(kh, kw, c_in, c_out),
                               initializer=torch_like_init(kh * kw * c_in))

    def depthwise_weight(self, name: str, k: int, channels: int):
        # A grouped conv with groups = channels has fan_in k * k in PyTorch.
        return self.add_weight(name=name, shape=(k, k, channels, 1), initializer=torch_like_init(k * k))

    def spread(self, x):
        """The input once per copy on the channel axis (copy-major), for per-channel kernels."""
        return tile_channels(x, self.copies)

    # Ops that start with relu(x) say so; the mixed op then hands them `shared` (SharedInputs) so that the
    # candidates reading one input compute relu(x) (and its copies) once. Grappler would merge the
    # duplicates, but the search step runs without it (tfnas/runtime.py), and fewer ops trace faster.
    reads_relu = False
    # Ops whose output is a BatchNorm's take `weight=` (a per-channel factor) and fold it into that BN.
    folds_weight = False

    def relu_input(self, x, shared: "SharedInputs | None", spread: bool, blocks: int = 0):
        """relu(x), tiled per copy if `spread`, in space-to-batch layout if `blocks` (see to_blocks)."""
        key = ("relu", self.copies if spread else 1, blocks)
        if shared is not None and key in shared.tensors:
            return shared.tensors[key]
        if blocks:
            y = to_blocks(self.relu_input(x, shared, spread), blocks)
        else:
            y = tf.nn.relu(x)
            if spread:
                y = self.spread(y)
        if shared is not None:
            shared.tensors[key] = y
        return y

    def blocks(self, x) -> int:
        """The block size b if this op can return its output for x in to_blocks(., b) layout when called
        with `blocked=True` (a mixed op then sums such outputs before one from_blocks); 0 if not."""
        return 0

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.stride), -(-w // self.stride)

    def macs(self, h: int, w: int) -> int:
        """Multiply-adds of one example at input size h x w (convolutions and dense layers only)."""
        return 0

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        s = self.stride
        out = lambda d: None if d is None else -(-d // s)  # noqa: E731 - ceil(d / s)
        return (n, out(h), out(w), self.desc.out_channels or self.desc.in_channels)


class SharedInputs:
    """Tensors the candidates of one mixed op share. Not a dict: Keras copies dict arguments of a call."""

    def __init__(self):
        self.tensors = {}


_FROZEN_STATISTICS = [False]


@contextlib.contextmanager
def frozen_moving_statistics():
    """Training passes traced inside normalise with their batch statistics but leave every BatchNorm's
    moving averages as they were. For DARTS's second-order validation pass at the virtual weights w': the
    reference code runs it on a copy of the network (`model.new()` loaded from `state_dict()`), whose
    updated BatchNorm buffers are then dropped."""
    before = _FROZEN_STATISTICS[0]
    _FROZEN_STATISTICS[0] = True
    try:
        yield
    finally:
        _FROZEN_STATISTICS[0] = before


class BatchNorm:
    """Fused BatchNorm over NHWC with moving statistics, affine or not; owned by an OpLayer."""

    def __init__(self, owner: keras.layers.Layer, name: str, channels: int, affine: bool):
        self.affine = affine
        self.channels = channels
        if affine:
            self.gamma = owner.add_weight(name=f"{name}_gamma", shape=(channels,), initializer="ones")
            self.beta = owner.add_weight(name=f"{name}_beta", shape=(channels,), initializer="zeros")
        self.moving_mean = owner.add_weight(name=f"{name}_mean", shape=(channels,), initializer="zeros",
                                            trainable=False)
        self.moving_var = owner.add_weight(name=f"{name}_var", shape=(channels,), initializer="ones",
                                           trainable=False)

    def __call__(self, x, training: bool, weight=None, copies: int = 1):
        """`weight`: a per-channel factor for the output (a mixed op's softmax weight), folded into the
        fused op's scale and offset: no separate multiply, and the op's own scale gradient is the
        weight's (forward and backward, that multiply was the largest element-wise cost of a step).

        `copies=k`: x is k copies of this BatchNorm's input side by side (tile_channels), each to be
        normalised alike and weighted by its slice of `weight`. Every copy has the same batch statistics,
        so the op runs over all k * channels with the moving statistics tiled, and the first copy's
        updated averages are kept."""
        channels = self.channels * copies
        if self.affine:
            if copies > 1:
                raise ValueError("BatchNorm copies are for non-affine BatchNorms (a search network's)")
            scale, offset = self.gamma.value, self.beta.value
            if weight is not None:
                scale, offset = scale * weight, offset * weight
        else:
            scale, offset = _unit_scale_offset(channels, x.dtype)
            if weight is not None:
                scale = weight
        moving_mean, moving_var = self.moving_mean.value, self.moving_var.value
        if copies > 1:
            moving_mean, moving_var = (tf.tile(v, [copies]) for v in (moving_mean, moving_var))
        # FusedBatchNorm (v1), not V3: the same CPU/GPU kernels, but the gradient tape knows that v1's
        # gradient ignores its statistics outputs, where for V3 it builds zero gradients for all five of
        # them: 5 fewer ops per BatchNorm and pass to trace (about 10% of a search step's graph).
        if training:
            y, mean, var, *_ = tf.raw_ops.FusedBatchNorm(
                x=x, scale=scale, offset=offset, mean=moving_mean, variance=moving_var,
                epsilon=BN_EPSILON, exponential_avg_factor=BN_MOMENTUM, data_format="NHWC", is_training=True)
            # The op returns the updated moving averages when exponential_avg_factor != 1.
            self.update_moving_statistics(mean, var, averaged=True)
            return y
        y, *_ = tf.raw_ops.FusedBatchNorm(
            x=x, scale=scale, offset=offset, mean=moving_mean, variance=moving_var,
            epsilon=BN_EPSILON, data_format="NHWC", is_training=False)
        return y

    def update_moving_statistics(self, mean, var, averaged: bool) -> None:
        """The one place the moving statistics are written; nothing under frozen_moving_statistics.
        `averaged`: mean and var are already the new averages (FusedBatchNorm with exponential_avg_factor
        BN_MOMENTUM, over `copies` of the channels: the first copy's are kept); otherwise they are this
        batch's, blended in here as (1 - m) * old + m * batch. Raw assignments: Keras's `assign` costs
        milliseconds of Python per call while a step is traced, and no gradient flows into an assignment."""
        if _FROZEN_STATISTICS[0]:
            return
        for moving, value in ((self.moving_mean, mean), (self.moving_var, var)):
            if averaged:
                if value.shape[0] != self.channels:
                    value = value[:self.channels]
                tf.raw_ops.AssignVariableOp(resource=moving.handle, value=value)
            else:
                tf.raw_ops.AssignSubVariableOp(resource=moving.handle, value=(moving.value - value) * BN_MOMENTUM)


_PER_GRAPH = weakref.WeakKeyDictionary()  # graph -> {key: tensor}


def per_graph(key: tuple, make):
    """`make()` once per traced graph and key: constants a step needs hundreds of times (each one is an op
    to trace and to run), such as the scale and offset of the non-affine BatchNorms."""
    cache = _PER_GRAPH.setdefault(tf.compat.v1.get_default_graph(), {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _unit_scale_offset(channels: int, dtype):
    """Scale 1 and offset 0 of a non-affine BatchNorm."""
    return per_graph(("unit", channels, dtype), lambda: (tf.ones([channels], dtype), tf.zeros([channels], dtype)))


def tile_channels(x, copies: int):
    """x repeated `copies` times on the channel axis (copy-major), with a gradient of two ops, the sum of
    the copies, where TF's generic gradient of Tile has about twelve to trace (a search step has hundreds
    of these, and each traced op costs time at start-up). The copies are one ConcatV2 (memcpy per row)
    rather than a Tile (Eigen's broadcasting), up to 2x faster at search shapes (32x32x32x8 twice: 0.19
    against 0.40 ms; 64x32x32x16 four times: 0.86 against 1.20 ms). Kernel time of Tile and ConcatV2 in
    the small first-order search step, interleaved profiles: 0.059/0.064 -> 0.040/0.047 s per step (of
    about 1.3 s of CPU time)."""
    if copies == 1:
        return x
    with record.stop_recording():
        y = tf.raw_ops.ConcatV2(values=[x] * copies, axis=_constant(3, tf.int32))
    if record.should_record_backprop([x]):
        if x.shape[1:].is_fully_defined():  # the batch size may be unknown
            split = _constant((-1, *x.shape[1:3], copies, x.shape[3]), tf.int32)
        else:
            dims = tf.shape(x)
            split = tf.concat([dims[:3], [copies], dims[3:]], 0)

        def backward(dy):
            return [tf.raw_ops.Sum(input=tf.raw_ops.Reshape(tensor=dy, shape=split), axis=_constant(3, tf.int32))]

        record.record_operation("TileChannels", [y], [x], backward)
    return y


def _constant(value, dtype):
    return per_graph(("constant", value, dtype), lambda: tf.constant(value, dtype))


def pad_amount(kernel: int, dilation: int = 1) -> int:
    """Symmetric padding of the DARTS code: a stride-1 op keeps the size, a stride-2 op gives ceil(n/2)."""
    return dilation * (kernel - 1) // 2


# The convolutions below call the raw TF ops: the tf.nn wrappers cost a few milliseconds of Python each
# while a step is traced, and a DARTS search step has hundreds of them.

def _conv(x, w, stride: int, padding: str = "VALID", explicit: int = 0):
    pads = [0, 0, explicit, explicit, explicit, explicit, 0, 0] if padding == "EXPLICIT" else []
    return _with_gradient(
        "Conv2D", tf.raw_ops.Conv2D, tf.raw_ops.Conv2DBackpropInput, tf.raw_ops.Conv2DBackpropFilter, x, w,
        strides=[1, stride, stride, 1], padding=padding, explicit_paddings=pads, data_format="NHWC")


def _depthwise(x, w, stride: int, padding: str):
    return _with_gradient(
        "DepthwiseConv2dNative", tf.raw_ops.DepthwiseConv2dNative, tf.raw_ops.DepthwiseConv2dNativeBackpropInput,
        _depthwise_backprop_filter, x, w, strides=[1, stride, stride, 1], padding=padding, data_format="NHWC")


_WIDE = 3  # the widest kernel for which oneDNN's depthwise filter gradient is fast


def _depthwise_backprop_filter(input, filter_sizes, out_backprop, strides, padding, data_format):
    """The filter gradient of a depthwise conv; for kernels wider than 3 columns, in blocks of 3 columns.

    oneDNN's depthwise filter gradient is 5-12x slower for a 5x5 kernel than for a 3x3 one at DARTS search
    shapes (9.3 against 1.4 ms at 64x32x32x64; 2.7 against 0.46 ms at 32x32x32x32), while a 5x3 kernel
    costs about what a 3x3 does, and so do the forward and input-gradient kernels: it was the largest
    kernel of a search step. Each block is the gradient of a kx3 conv over the input window its columns
    read: one padded (or cropped) copy of the input per block. The sums are the same, in another order."""
    kh, kw, *channels = (int(d) for d in tf.get_static_value(filter_sizes))  # static: see _shape
    call = functools.partial(tf.raw_ops.DepthwiseConv2dNativeBackpropFilter, out_backprop=out_backprop,
                             strides=strides, data_format=data_format)
    if kw <= _WIDE or not (input.shape[1:3].is_fully_defined() and out_backprop.shape[1:3].is_fully_defined()):
        return call(input=input, filter_sizes=filter_sizes, padding=padding)
    stride = strides[1]
    (rows,) = _windows(kh, kh, input.shape[1], out_backprop.shape[1], stride, padding)
    grads = []
    for cols in _windows(kw, _WIDE, input.shape[2], out_backprop.shape[2], stride, padding):
        (r_begin, r_end, *r_pads, _), (c_begin, c_end, *c_pads, skip) = rows, cols
        x = input
        # Not before the gradient arrives: the copies would otherwise be made during the forward pass, as
        # soon as the input exists, and all of them held until the backward pass (+1.8 GiB, CIFAR search).
        with tf.control_dependencies([out_backprop]):
            if (r_begin, r_end, c_begin, c_end) != (0, input.shape[1], 0, input.shape[2]):
                x = tf.slice(x, [0, r_begin, c_begin, 0], [-1, r_end - r_begin, c_end - c_begin, -1])
            if any(r_pads + c_pads):
                x = tf.raw_ops.Pad(input=x, paddings=_constant(((0, 0), tuple(r_pads), tuple(c_pads), (0, 0)),
                                                               tf.int32))
        grad = call(input=x, filter_sizes=_constant((kh, _WIDE, *channels), tf.int32), padding="VALID")
        grads.append(grad[:, skip:] if skip else grad)
    return tf.concat(grads, 1)


def _windows(taps: int, width: int, size: int, out: int, stride: int, padding: str) -> list:
    """Along one axis, for each block of `width` taps of a `taps`-wide kernel: the input it reads as a crop
    (begin, end) and zero padding (before, after), and how many of its leading taps earlier blocks already
    gave. Blocks overlap at the far end rather than use a narrower kernel."""
    before = 0 if padding == "VALID" else max((out - 1) * stride + taps - size, 0) // 2
    windows, covered = [], 0
    for start in sorted({*range(0, taps - width, width), taps - width}):
        first = start - before  # the input index the block's first tap reads for the first output
        last = first + (out - 1) * stride + width - 1
        begin, end = max(first, 0), min(last + 1, size)
        windows.append((begin, end, begin - first, last + 1 - end, covered - start))
        covered = start + width
    return windows


def _with_gradient(name: str, forward, backprop_input, backprop_filter, x, w, **attrs):
    """forward(x, w) with TF's own gradient ops, but only those the recording tapes can need: the input's
    gradient if x is on a watched path, the filter's if w is. TF's registered gradient builds both (and
    a ShapeN) for every conv: an alpha-only pass then traces hundreds of filter gradients that TF prunes
    again before running. Sizes are constants where the shapes are static."""
    x, w = tf.convert_to_tensor(x), tf.convert_to_tensor(w)  # a variable is read here, as a tape sees it
    with record.stop_recording():
        y = forward(input=x, filter=w, **attrs)
    need_x, need_w = record.should_record_backprop([x]), record.should_record_backprop([w])
    if need_x or need_w:
        def backward(dy):
            grads = []
            if need_x:
                grads.append(backprop_input(input_sizes=_shape(x), filter=w, out_backprop=dy, **attrs))
            if need_w:
                grads.append(backprop_filter(input=x, filter_sizes=_shape(w), out_backprop=dy, **attrs))
            return grads

        record.record_operation(name, [y], [t for t, need in ((x, need_x), (w, need_w)) if need], backward)
    return y


# depthwise_block records one op whose backward pass uses tensors the forward computed unrecorded: first-
# order gradients are exact, but an outer tape (gradients of gradients) would not see them depend on the
# input. Code that nests tapes through a search network, or swaps the ReLU, sets this to False; the blocks
# are then the plain composition of recorded ops.
HOLD_LESS_FOR_BACKWARD = True


def depthwise_block(x, dw, pw=None, padding: int = 0, stride: int = 1, bn: "BatchNorm | None" = None,
                    training: bool = True, recompute: bool = False):
    """[relu(bn(x)) ->] depthwise kxk (symmetric `padding`) [-> 1x1 conv `pw`, grouped as in pointwise]:
    the layers of a separable or dilated conv between their input and their last BatchNorm.

    Recorded op by op, a training pass holds for its backward pass x, and with `bn` both x (for the
    BatchNorm's gradient) and relu(y) (for the ReLU's and the depthwise filter's gradients), where
    y = bn(x) is x normalised, and the depthwise output (for the 1x1 filter gradient). Recorded as one op
    it holds y instead of x and relu(y): the ReLU's gradient reads y, relu(y) is recomputed for the filter
    gradient, and the BatchNorm's gradient needs only y and the batch's std (one tensor less per separable
    conv, 0.5 GiB of a DARTS CIFAR-10 search step, for one element-wise op in the backward pass). With
    `recompute` (CompilerOptions.recompute_depthwise) the depthwise output is recomputed too, when the 1x1
    filter gradient needs it: one more depthwise conv in a weight-gradient pass for one tensor less per
    block (a fifth of the CIFAR-10 search step's peak). `bn` must have no scale and offset (a search
    network's); its moving statistics are updated as FusedBatchNorm does."""
    grouped_ok = pw is None or x.shape[-1] == pw.shape[2] or grouped_conv_supported()
    if not (HOLD_LESS_FOR_BACKWARD and training and grouped_ok and (bn is None or not bn.affine)
            and dw.shape[0] == 2 * padding + 1):
        if bn is not None:
            x = tf.nn.relu(bn(x, training))
        y = depthwise(x, dw, stride, padding)
        return y if pw is None else pointwise(y, pw)
    if stride != 1:  # padded first, as depthwise() does, to stay on the oneDNN kernels
        x = tf.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    x, dw = tf.convert_to_tensor(x), tf.convert_to_tensor(dw)  # a variable is read here, as a tape sees it
    pw = None if pw is None else tf.convert_to_tensor(pw)
    attrs = dict(strides=[1, stride, stride, 1], padding="SAME" if stride == 1 else "VALID", data_format="NHWC")
    pw_attrs = dict(strides=[1, 1, 1, 1], padding="VALID", data_format="NHWC")
    with record.stop_recording():
        if bn is None:
            held = activated = x
        else:
            scale, offset = _unit_scale_offset(bn.channels, x.dtype)
            # Factor 1: the op returns this batch's mean and (unbiased) variance, which give 1 / std below
            # on every device (the reserve outputs hold the variance on CPU, its inverse root on GPU).
            held, mean, var, *_ = tf.raw_ops.FusedBatchNorm(
                x=x, scale=scale, offset=offset, mean=bn.moving_mean.value, variance=bn.moving_var.value,
                epsilon=BN_EPSILON, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            bn.update_moving_statistics(mean, var, averaged=False)
            pixels = held.shape[:3].num_elements() or tf.cast(tf.size(held) // bn.channels, var.dtype)
            # 1 / std of this batch, from the unbiased variance.
            inv_std = tf.math.rsqrt(var * ((pixels - 1) / pixels) + BN_EPSILON)
            activated = tf.nn.relu(held)
        mid = tf.raw_ops.DepthwiseConv2dNative(input=activated, filter=dw, **attrs)
        out = mid if pw is None else tf.raw_ops.Conv2D(input=mid, filter=pw, **pw_attrs)
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
            d_mid = tf.raw_ops.Conv2DBackpropInput(input_sizes=_shape(mid), filter=pw, out_backprop=d_out, **pw_attrs)
        if need_x:
            d_act = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=_shape(held), filter=dw,
                                                                  out_backprop=d_mid, **attrs)
            if bn is None:
                grads.append(d_act)
            else:
                # The gradient of a BatchNorm, dx = scale / std * (dy - mean(dy) - y * mean(dy * y)), from y
                # itself: mean 0 and variance 1 with epsilon 0 make the op's normalisation the identity
                # (on CPU it reads the variance, on GPU its inverse root: 1 either way), and 1 / std is
                # the scale. Before, the op got x - mean back as y * std: one more full-size pass.
                grads.append(tf.raw_ops.FusedBatchNormGrad(
                    y_backprop=tf.raw_ops.ReluGrad(gradients=d_act, features=held), x=held, scale=inv_std,
                    reserve_space_1=offset, reserve_space_2=scale,  # zeros and ones
                    epsilon=0.0, data_format="NHWC", is_training=True)[0])
        if need_dw or (need_pw and recompute):
            act = activated if bn is None else again(lambda: tf.nn.relu(held))
        if need_dw:
            grads.append(_depthwise_backprop_filter(input=act, filter_sizes=_shape(dw), out_backprop=d_mid, **attrs))
        if need_pw:
            m = again(lambda: tf.raw_ops.DepthwiseConv2dNative(input=act, filter=dw, **attrs)) \
                if recompute else mid
            grads.append(tf.raw_ops.Conv2DBackpropFilter(input=m, filter_sizes=_shape(pw), out_backprop=d_out,
                                                         **pw_attrs))
        return grads

    record.record_operation("DepthwiseBlock", [out], [t for t, need in zip(inputs, needs) if need], backward)
    return out


def _shape(t):
    return _constant(tuple(t.shape), tf.int32) if t.shape.is_fully_defined() else tf.shape(t)


def conv2d(x, w, stride: int = 1, padding: int = 0):
    if padding == 0:
        return _conv(x, w, stride)
    if stride == 1:
        return _conv(x, w, 1, "SAME")  # odd kernel, stride 1: SAME is the symmetric padding
    return _conv(x, w, stride, "EXPLICIT", padding)


def pointwise(x, w):
    """1x1 conv; grouped when x has more channels than w's input depth (k copies of a layer, see OpLayer).

    TF runs grouped convolutions with oneDNN on CPU (and on GPU/TPU), but its plain Eigen CPU kernels do
    not; there (TF_ENABLE_ONEDNN_OPTS=0) the groups run as separate convs, the same arithmetic."""
    groups = x.shape[-1] // w.shape[2]
    if groups == 1 or grouped_conv_supported():
        return _conv(x, w, 1)
    return tf.concat([_conv(xg, wg, 1)
                      for xg, wg in zip(tf.split(x, groups, -1), tf.split(w, groups, -1))], -1)


_GROUPED_CONV: list = []


def grouped_conv_supported() -> bool:
    """Whether this TensorFlow runs a grouped conv and its gradients: tried once, eagerly, on one pixel,
    when the first layer with copies is built (layers are built eagerly)."""
    if not _GROUPED_CONV:
        try:
            x, w = tf.ones([1, 1, 1, 2]), tf.ones([1, 1, 1, 2])
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = tf.nn.conv2d(x, w, 1, "VALID")
            for grad in tape.gradient(y, [x, w]):
                grad.numpy()
            _GROUPED_CONV.append(True)
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            _GROUPED_CONV.append(False)
    return _GROUPED_CONV[0]


def depthwise(x, w, stride: int, padding: int, dilation: int = 1):
    """Depthwise conv with PyTorch-style symmetric padding, native strides and exact gradients.

    TF's native dilated depthwise kernel has no dilated backward pass, so a dilated conv is an undilated
    one between space-to-batch and batch-to-space (what tf.nn.depthwise_conv2d does, without its Python).
    A dilation-2, stride-2 conv reads only even rows and columns, so it equals an undilated stride-1 conv
    on the even-indexed pixels with half the padding: 4x less work than a dilated conv then subsampling.
    Inputs are padded before a strided conv: with explicit padding TF leaves the oneDNN kernels (2-6x
    slower here).
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


def to_blocks(x, block: int, paddings=((0, 0), (0, 0))):
    """Space-to-batch: the block x block phases of the image as separate examples ([b*b*n, h/b, w/b, c]).

    A conv with dilation b is an undilated conv on each phase, and per-pixel ops (1x1 convs) and
    BatchNorm (its statistics cover the same pixels) give the same results in this layout, so a dilated
    conv block can run in it from its input to its output: one copy in, one copy out."""
    return tf.raw_ops.SpaceToBatchND(input=x, block_shape=_constant((block, block), tf.int32),
                                     paddings=_constant(tuple(tuple(p) for p in paddings), tf.int32))


def from_blocks(x, block: int, crops=(0, 0)):
    """The inverse of to_blocks; `crops` rows and columns are dropped at the far end."""
    return tf.raw_ops.BatchToSpaceND(input=x, block_shape=_constant((block, block), tf.int32),
                                     crops=_constant(((0, crops[0]), (0, crops[1])), tf.int32))


def fits_blocks(x, block: int) -> bool:
    """Whether x's (static) height and width divide by `block`: to_blocks then needs no padding."""
    h, w = x.shape[1], x.shape[2]
    return h is not None and w is not None and h % block == 0 and w % block == 0


def subsample(x, stride: int):
    """x[:, ::stride, ::stride, :] as a 1x1 average pool: the same values, and a gradient about 6x faster
    on CPU than StridedSlice's (measured: 1.5 ms against 9.2 ms at 32x32x32x32)."""
    return tf.nn.avg_pool2d(x, 1, stride, "VALID")
