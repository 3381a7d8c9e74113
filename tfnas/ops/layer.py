"""The base of every operation: a Keras layer built eagerly from its descriptor, optionally as k copies.

Why raw TF ops rather than nested Keras layers: a DARTS search network has thousands of small ops, and
each nested Keras layer adds Python work to every trace and a handful of graph ops to every step.
Here a whole ReLU-conv-BN block is one layer whose `call` emits exactly the TF ops it needs, and weights
are created in `__init__` from the descriptor's channels, so a model is built without any tracing.

What changes how an op computes comes from its compiler options (`self.options`, fixed when the layer is
built) or from an argument of its call (`training`, `update_statistics`), never from module state: two
models with different options can live in one process, and replica threads trace side by side.

The compute dtype (CompilerOptions.precision) follows the same rule. Activations carry it from the stem
on and every op computes in its input's dtype, casting its float32 kernels where it reads them; Keras's
own autocasting is off (`autocast=False`): with a float32 layer policy it would cast every bfloat16
input back to float32, and a mixed layer policy would also cast the BatchNorm parameters and statistics,
which the fused BatchNorm takes in float32.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfnas.ops.conv import grouped_conv_supported
from tfnas.ops.space_to_batch import to_blocks
from tfnas.ops.channels import tile_channels
from tfnas.ops.relu import relu
from tfnas.proto import descriptors_pb2 as pb


_BATCHNORM_VECTORS = ("mean", "var", "gamma", "beta")  # the suffixes of a BatchNorm's weights (batchnorm.py)
_COMPUTE_DTYPES = {pb.CompilerOptions.FLOAT32: tf.float32, pb.CompilerOptions.MIXED_BFLOAT16: tf.bfloat16,
                   pb.CompilerOptions.MIXED_FLOAT16: tf.float16}


def compute_dtype(options: pb.CompilerOptions) -> tf.DType:
    """The dtype a network compiled with `options` computes its activations in."""
    return _COMPUTE_DTYPES[options.precision]


def layer_name(desc: pb.OpDesc) -> str | None:
    """Keras forbids '/' in layer names; descriptor ids use '.' so they map one to one."""
    return desc.id.replace("/", ".") or None


def torch_like_init(fan_in: int):
    """PyTorch's default conv/linear init (kaiming_uniform with a = sqrt(5)): U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    return keras.initializers.RandomUniform(-bound, bound)


class SharedInputs:
    """Tensors the candidates of one mixed op share. Not a dict: Keras copies dict arguments of a call."""

    def __init__(self):
        self.tensors = {}


class OpLayer(keras.layers.Layer):
    """Base of every operation: keeps its descriptor and builds its weights eagerly in __init__.

    `copies=k` builds k independent instances of the op that read the same input, their weights side by
    side on the channel axis: the output is [batch, h, w, k * out_channels], copy-major, each copy
    exactly what a single op with its slice of the weights computes. Grouped search cells use this to
    run all mixed edges reading one state as one set of wider kernels. Ops whose output does not depend
    on weights (pools, identity) compute it once and say so with `out_copies == 1`; ops that cannot be
    batched keep `supports_copies = False`.

    Every `call` takes `training` and `update_statistics`: a training pass with `update_statistics=False`
    normalises by its batch but leaves the moving BatchNorm statistics alone (DARTS's second-order pass at
    the virtual weights, which the reference code runs on a copy of the network).
    """

    supports_copies = False
    # Ops that start with relu(x) say so; the mixed op then hands them `shared` (SharedInputs) so that the
    # candidates reading one input compute relu(x) (and its copies) once. Grappler would merge the
    # duplicates, but the search step runs without it by default, and fewer ops trace faster.
    reads_relu = False
    # Ops whose output is a BatchNorm's take `weight=` (a per-channel factor) and fold it into that BN.
    folds_weight = False
    # Where each weight keeps its copies when the op is built as `copies=k`: the axis on which the k copies
    # lie side by side (copy j is the j-th of k equal slices on it), by the name the weight was created
    # with, or by a BatchNorm's name for all its vectors ("bn1" for bn1_mean, bn1_var, bn1_gamma,
    # bn1_beta); None: one variable every copy shares. Ops that support copies list every weight they
    # create; read it through `weight_layout` (tfnas.weights maps op ids to slices with it).
    copy_axes: dict[str, int | None] = {}

    def __init__(self, desc: pb.OpDesc, options: pb.CompilerOptions, copies: int = 1, **kwargs):
        super().__init__(name=layer_name(desc), autocast=False, **kwargs)
        self.desc = desc
        self.options = options
        self.activation_dtype = compute_dtype(options)
        self.stride = desc.stride or 1
        if self.stride not in (1, 2):
            raise ValueError(f"operation {desc.id or desc.name}: stride must be 1 or 2, got {self.stride}")
        if copies < 1 or (copies > 1 and not self.supports_copies):
            raise ValueError(f"operation {desc.id or desc.name}: {desc.name} cannot be built as {copies} copies")
        self.copies = copies
        self.out_copies = copies
        # Whether this TensorFlow runs grouped convs as one op: probed now, eagerly, not while tracing.
        self.grouped = copies == 1 or grouped_conv_supported(self.activation_dtype)

    def finish_build(self) -> None:
        self.built = True

    def weight_layout(self) -> dict[str, tuple]:
        """This op's weights by name: (variable, the axis its copies lie on or None if every copy shares
        it; see `copy_axes`). A layer built as one copy needs no axes; one built as k copies raises for a
        weight whose layout it does not know, rather than guess."""
        layout = {}
        for v in (*self._trainable_variables, *self._non_trainable_variables):  # this layer's own
            key = v.name
            if key not in self.copy_axes and key.rsplit("_", 1)[-1] in _BATCHNORM_VECTORS:
                key = key.rsplit("_", 1)[0]
            if key not in self.copy_axes and self.copies > 1:
                raise ValueError(f"operation {self.desc.id or self.desc.name}: no copy axis for weight {v.name!r}")
            layout[v.name] = (v, self.copy_axes.get(key))
        return layout

    @classmethod
    def finalize_edge(cls, edge: pb.EdgeDesc, weights) -> tuple[pb.EdgeDesc, float | None]:
        """What an edge with this op becomes in the final architecture (its op and the states it reads), and
        its rank among the node's edges: a plain op stays as it is and is required (None: always kept).
        Ops that read architecture weights override this; `weights` are what the edges read of each alpha
        group ({group: [edges x candidates]}, as `alphas.group_weights` computes them)."""
        return edge, None

    def macs_of(self, sizes: list[tuple[int, int]]) -> int:
        """Multiply-adds of one example given the size of each state the edge reads (ops of one input:
        `macs` at the first)."""
        return self.macs(*sizes[0])

    def out_size_of(self, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        return self.out_size(*sizes[0])

    def conv_weight(self, name: str, kh: int, kw: int, c_in: int, c_out: int):
        return self.add_weight(name=name, shape=(kh, kw, c_in, c_out),
                               initializer=torch_like_init(kh * kw * c_in))

    def depthwise_weight(self, name: str, k: int, channels: int):
        # A grouped conv with groups = channels has fan_in k * k in PyTorch.
        return self.add_weight(name=name, shape=(k, k, channels, 1), initializer=torch_like_init(k * k))

    def spread(self, x):
        """The input once per copy on the channel axis (copy-major), for per-channel kernels."""
        return tile_channels(x, self.copies)

    def relu_input(self, x, shared: SharedInputs | None, spread: bool, blocks: int = 0):
        """relu(x), tiled per copy if `spread`, in space-to-batch layout if `blocks` (see to_blocks)."""
        key = ("relu", self.copies if spread else 1, blocks)
        if shared is not None and key in shared.tensors:
            return shared.tensors[key]
        if blocks:
            y = to_blocks(self.relu_input(x, shared, spread), blocks)
        else:
            y = relu(x)
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
