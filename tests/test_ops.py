"""Every operation: shapes at stride 1 and 2 on odd and even sizes; search vs evaluation variants."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from tfnas import ops
from tfnas.compiler import EVAL_OPTIONS, SEARCH_OPTIONS
from tfnas.ops import channels, conv
from tfnas.ops import mixed as mixed_lib
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts

CANDIDATES = list(darts.PRIMITIVES)


@pytest.fixture(autouse=True)
def _seeded():
    """Fixed inputs and weights: comparisons with tf.nn references may differ where a value sits at a
    ReLU's kink, so every run checks the same numbers."""
    keras.utils.set_random_seed(0)
C = 6


def mixed_desc(stride, candidates=CANDIDATES):
    desc = pb.OpDesc(name="mixed", id="m", stride=stride, in_channels=C, out_channels=C)
    for n in candidates:
        desc.candidates.add(name=n, id=f"m.{n}", stride=stride, in_channels=C, out_channels=C)
    return desc


def make(name, stride, options, **fields):
    fields = {"in_channels": C, "out_channels": C, **fields}
    return ops.create(pb.OpDesc(name=name, id=f"t.{name}", stride=stride, **fields), options)


@pytest.mark.parametrize("name", CANDIDATES + ["factorized_reduce", "relu_conv_bn"])
@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("stride", [1, 2])
def test_shapes(name, size, stride):
    if name == "factorized_reduce" and stride == 1:
        pytest.skip("factorized_reduce always halves")
    layer = make(name, stride, EVAL_OPTIONS)
    x = tf.random.normal([2, size, size + 1, C])
    y = layer(x, training=True)
    expect = (2, -(-size // stride), -(-(size + 1) // stride), C) if name != "factorized_reduce" else \
        (2, -(-size // 2), -(-(size + 1) // 2), C)
    assert tuple(y.shape) == expect
    assert layer.compute_output_shape(x.shape)[1:3] == expect[1:3] or name == "factorized_reduce"


# Parameter counts of the reference implementation's modules, C = 6 channels, affine (evaluation).
EXPECTED_PARAMS = {
    "none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0,
    "sep_conv_3x3": 2 * (9 * C + C * C + 2 * C), "sep_conv_5x5": 2 * (25 * C + C * C + 2 * C),
    "dil_conv_3x3": 9 * C + C * C + 2 * C, "dil_conv_5x5": 25 * C + C * C + 2 * C,
}


@pytest.mark.parametrize("name", CANDIDATES)
def test_parameter_counts_and_affine_option(name):
    def count(layer):
        return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)

    evaluation, search = make(name, 1, EVAL_OPTIONS), make(name, 1, SEARCH_OPTIONS)
    if name == "skip_connect":
        assert count(evaluation) == 0 and count(make(name, 2, EVAL_OPTIONS)) == 2 * (C * C // 2) + 2 * C
        assert count(make(name, 2, SEARCH_OPTIONS)) == 2 * (C * C // 2)
        return
    assert count(evaluation) == EXPECTED_PARAMS[name]
    bn_params = {"sep_conv_3x3": 4 * C, "sep_conv_5x5": 4 * C, "dil_conv_3x3": 2 * C, "dil_conv_5x5": 2 * C}
    assert count(search) == EXPECTED_PARAMS[name] - bn_params.get(name, 0)


def test_ops_match_reference_arithmetic():
    """Stride-2 ops pad symmetrically like the PyTorch reference (not TF's SAME)."""
    x = tf.reshape(tf.range(2 * 6 * 6 * C, dtype=tf.float32), [2, 6, 6, C]) / 100.0
    maxp = make("max_pool_3x3", 2, EVAL_OPTIONS)(x)
    np.testing.assert_allclose(maxp[:, 0, 0], tf.reduce_max(x[:, :2, :2], axis=[1, 2]))
    avgp = make("avg_pool_3x3", 2, EVAL_OPTIONS)(x)
    np.testing.assert_allclose(avgp[:, 0, 0], tf.reduce_mean(x[:, :2, :2], axis=[1, 2]), rtol=1e-5)
    np.testing.assert_allclose(avgp[:, 1, 1], tf.reduce_mean(x[:, 1:4, 1:4], axis=[1, 2]), rtol=1e-5)
    assert np.all(make("none", 2, EVAL_OPTIONS)(x).numpy() == 0)
    assert make("skip_connect", 1, EVAL_OPTIONS)(x) is x


def test_dilated_stride2_equals_dilated_conv_then_subsample():
    layer = make("dil_conv_5x5", 2, EVAL_OPTIONS)
    x = tf.random.normal([2, 9, 9, C])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=False)
        loss = tf.reduce_sum(y * y)
    g = tape.gradient(loss, x)
    padded = tf.pad(tf.nn.relu(x), [[0, 0], [4, 4], [4, 4], [0, 0]])
    ref = tf.nn.depthwise_conv2d(padded, layer.dw, [1, 1, 1, 1], "VALID", dilations=[2, 2])[:, ::2, ::2]
    ref = layer.bn(tf.nn.conv2d(ref, layer.pw, 1, "VALID"), False)
    np.testing.assert_allclose(y, ref, atol=1e-5)
    assert g.shape == x.shape and float(tf.reduce_sum(tf.abs(g))) > 0


def test_mixed_op_weights_candidates_and_adds_pool_bn():
    desc = mixed_desc(1, ("none", "max_pool_3x3", "skip_connect"))
    mixed = ops.create(desc, SEARCH_OPTIONS)
    x = tf.random.normal([4, 5, 5, C])
    y, = mixed(x, weights=tf.constant([[0.2, 0.3, 0.5]]), training=False)
    pooled = tf.nn.max_pool2d(x, 3, 1, "SAME") / np.sqrt(1 + 1e-5)  # non-affine BN, initial statistics
    np.testing.assert_allclose(y, 0.3 * pooled + 0.5 * x, atol=1e-5)
    assert len(mixed.trainable_variables) == 0 and len(mixed.non_trainable_variables) == 2


def split_copies(batched, k):
    """The weights of copy e of an op built with copies=k: each variable's copy axis split k ways."""
    out = [[] for _ in range(k)]
    for v in batched.weights:
        axis = 2 if len(v.shape) == 4 and v.shape[3] == 1 else len(v.shape) - 1  # depthwise: input axis
        for e, part in enumerate(tf.split(v, k, axis=axis)):
            out[e].append(part)
    return out


@pytest.mark.parametrize("name,stride", [("sep_conv_3x3", 1), ("sep_conv_5x5", 2), ("dil_conv_3x3", 1),
                                         ("dil_conv_5x5", 2), ("skip_connect", 2), ("max_pool_3x3", 2),
                                         ("skip_connect", 1)])
@pytest.mark.parametrize("hw", [(7, 8), (8, 8)])  # 8 x 8: stride-1 dilated convs run in space-to-batch layout
def test_copies_equal_independent_ops(name, stride, hw):
    """k copies side by side compute exactly what k separate ops with those weights compute, gradients too."""
    k = 3
    desc = pb.OpDesc(name=name, id="t.b", stride=stride, in_channels=C, out_channels=C)
    batched = ops.create(desc, SEARCH_OPTIONS, copies=k)
    singles = [ops.create(pb.OpDesc(name=name, id=f"t.s{e}", stride=stride, in_channels=C, out_channels=C),
                          SEARCH_OPTIONS) for e in range(k)]
    for single, parts in zip(singles, split_copies(batched, k)):
        for v, part in zip(single.weights, parts):
            v.assign(part)
    x = tf.random.normal([4, *hw, C])
    shared = batched.out_copies == 1  # weightless: one output stands for every copy
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = batched(x, training=True)
        ys = [s(x, training=True) for s in singles[:1 if shared else k]]
        loss_b = tf.reduce_sum(tf.sin(y))
        loss_s = tf.add_n([tf.reduce_sum(tf.sin(t)) for t in ys])
    assert y.shape[-1] == (C if shared else k * C)
    np.testing.assert_allclose(y, tf.concat(ys, -1), atol=1e-5)
    if batched.trainable_variables:
        grads = split_copies_grads(tape.gradient(loss_b, batched.trainable_variables), batched, k)
        for single, g in zip(singles, grads):
            for a, b in zip(tape.gradient(loss_s, single.trainable_variables), g):
                # Sums over batch and pixels: without oneDNN (TF_ENABLE_ONEDNN_OPTS=0) the grouped 1x1
                # convs run as separate convs and sum in another order (differences up to 6e-5).
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(loss_b, x), tape.gradient(loss_s, x), atol=1e-4)


def split_copies_grads(grads, batched, k):
    out = [[] for _ in range(k)]
    for v, g in zip(batched.trainable_variables, grads):
        axis = 2 if len(v.shape) == 4 and v.shape[3] == 1 else len(v.shape) - 1
        for e, part in enumerate(tf.split(g, k, axis=axis)):
            out[e].append(part)
    return out


def test_ops_without_copies_refuse_them():
    with pytest.raises(ValueError, match="cannot be built as 2 copies"):
        ops.create(pb.OpDesc(name="relu_conv_bn", id="t.r", in_channels=C, out_channels=C), SEARCH_OPTIONS, copies=2)


def test_batchnorm_updates_moving_statistics_only_in_training():
    layer = make("relu_conv_bn", 1, EVAL_OPTIONS, kernel_size=1)
    x = tf.random.normal([8, 4, 4, C]) + 3.0
    layer(x, training=False)
    assert np.allclose(layer.bn.moving_mean.numpy(), 0)
    layer(x, training=True)
    assert not np.allclose(layer.bn.moving_mean.numpy(), 0)


@pytest.mark.parametrize("name", ["relu_conv_bn", "sep_conv_3x3"])
def test_frozen_moving_statistics_normalise_by_the_batch_and_change_nothing(name):
    """The second-order validation pass runs with update_statistics=False: the same training outputs,
    every moving statistic (the plain BatchNorm's and the one inside a separable conv's depthwise_block)
    left as it was, and the next pass that updates them does."""
    extra = {"kernel_size": 1} if name == "relu_conv_bn" else {}
    layer = make(name, 1, SEARCH_OPTIONS, **extra)
    stats = list(layer.non_trainable_variables)
    assert len(stats) == (2 if name == "relu_conv_bn" else 4)
    x = tf.random.normal([8, 5, 5, C]) + 3.0
    before = [v.numpy() for v in stats]
    frozen = layer(x, training=True, update_statistics=False)
    for v, b in zip(stats, before):
        np.testing.assert_array_equal(v.numpy(), b)
    np.testing.assert_allclose(frozen, layer(x, training=True), rtol=1e-5, atol=1e-5)
    assert all(not np.array_equal(v.numpy(), b) for v, b in zip(stats, before))


def test_unknown_op_is_a_clear_error():
    with pytest.raises(ops.OpError, match="unknown operation 'conv_9x9'"):
        ops.create(pb.OpDesc(name="conv_9x9"), EVAL_OPTIONS)


def test_pointwise_without_grouped_conv_kernels_computes_the_same():
    """Where TF has no grouped conv kernel (CPU without oneDNN) the groups run as separate convs."""
    x, w = tf.random.normal([2, 5, 5, 3 * C]), tf.random.normal([1, 1, C, 3 * 4])
    expected = tf.concat([tf.nn.conv2d(x[..., g * C:(g + 1) * C], w[..., g * 4:(g + 1) * 4], 1, "VALID")
                          for g in range(3)], -1)
    np.testing.assert_allclose(conv.pointwise(x, w, grouped=False), expected, rtol=1e-5, atol=1e-5)
    if conv.grouped_conv_supported():  # oneDNN (this project's default on CPU): one grouped conv
        np.testing.assert_allclose(conv.pointwise(x, w, grouped=True), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [7, 8])
def test_dilated_depthwise_equals_tf_nn(kernel, size):
    """The space-to-batch dilated conv (raw ops) is tf.nn.depthwise_conv2d's, values and gradients."""
    x, w = tf.random.normal([2, size, size + 1, C]), tf.random.normal([kernel, kernel, C, 1])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w])
        ours = conv.depthwise(x, w, 1, conv.pad_amount(kernel, 2), 2)
        ref = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME", dilations=[2, 2])
        loss_ours, loss_ref = tf.reduce_sum(tf.sin(ours)), tf.reduce_sum(tf.sin(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss_ours, [x, w]), tape.gradient(loss_ref, [x, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [7, 8])
def test_dil_conv_is_relu_dilated_depthwise_pointwise_batchnorm(kernel, size):
    """On even sizes the whole block runs in space-to-batch layout, BatchNorm included; its values,
    gradients and moving statistics are still those of the plain composition."""
    layer = make(f"dil_conv_{kernel}x{kernel}", 1, SEARCH_OPTIONS)
    assert layer.blocks(tf.zeros([1, size, size, C])) == (2 if size % 2 == 0 else 0)
    x = tf.random.normal([4, size, size, C])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = layer(x, training=True)
        mean, var = layer.bn.moving_mean.numpy(), layer.bn.moving_var.numpy()
        y = tf.nn.conv2d(tf.nn.depthwise_conv2d(tf.nn.relu(x), layer.dw, [1, 1, 1, 1], "SAME", dilations=[2, 2]),
                         layer.pw, 1, "VALID")
        m, v = tf.nn.moments(y, [0, 1, 2])
        ref = (y - m) / tf.sqrt(v + 1e-5)
        loss_ours, loss_ref = tf.reduce_sum(tf.sin(ours)), tf.reduce_sum(tf.sin(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    n = 4 * size * size
    np.testing.assert_allclose(mean, 0.1 * m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var, 0.9 + 0.1 * v * n / (n - 1), rtol=1e-4)
    for a, b in zip(tape.gradient(loss_ours, [x, layer.dw, layer.pw]), tape.gradient(loss_ref, [x, layer.dw, layer.pw])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kernel,stride,recompute,matmul", [
    (3, 1, False, False), (5, 1, False, False), (5, 2, False, False), (3, 1, True, False), (5, 2, True, False),
    (3, 1, False, True), (5, 2, True, True)])
def test_sep_conv_is_its_plain_composition_holding_less(kernel, stride, recompute, matmul):
    """The search network's separable conv (ops.depthwise_block, which holds less for the backward pass,
    with or without recomputing the depthwise outputs, its 1x1 convs as Conv2D or MatMul) has the values,
    gradients and moving statistics of relu -> dw -> 1x1 -> BN -> relu -> dw -> 1x1 -> BN."""
    options = pb.CompilerOptions()
    options.CopyFrom(SEARCH_OPTIONS)
    options.recompute_depthwise = recompute
    options.pointwise_matmul = matmul
    layer = make(f"sep_conv_{kernel}x{kernel}", stride, options)
    p = kernel // 2
    x = tf.random.normal([4, 7, 8, C]) * 2.0 + 0.5

    def bn(y):
        m, v = tf.nn.moments(y, [0, 1, 2])
        return (y - m) / tf.sqrt(v + 1e-5), m, v

    weights = [layer.dw1, layer.pw1, layer.dw2, layer.pw2]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = layer(x, training=True)
        stats = [v.numpy() for v in (layer.bn1.moving_mean, layer.bn1.moving_var)]
        padded = tf.pad(tf.nn.relu(x), [[0, 0], [p, p], [p, p], [0, 0]])
        y = tf.nn.depthwise_conv2d(padded, layer.dw1, [1, stride, stride, 1], "VALID")
        y, m1, v1 = bn(tf.nn.conv2d(y, layer.pw1, 1, "VALID"))
        y = tf.nn.conv2d(tf.nn.depthwise_conv2d(tf.nn.relu(y), layer.dw2, [1, 1, 1, 1], "SAME"), layer.pw2, 1, "VALID")
        ref = bn(y)[0]
        loss_ours, loss_ref = tf.reduce_sum(tf.sin(ours) * ours), tf.reduce_sum(tf.sin(ref) * ref)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    n = 4 * (7 if stride == 1 else 4) * (8 // stride)
    np.testing.assert_allclose(stats[0], 0.1 * m1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats[1], 0.9 + 0.1 * v1 * n / (n - 1), rtol=1e-4)
    for a, b in zip(tape.gradient(loss_ours, [x] + weights), tape.gradient(loss_ref, [x] + weights)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    with tf.GradientTape() as tape:  # an alpha-only pass: only the input's gradient is recorded
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x, training=True)))
    assert tape.gradient(loss, x).shape == x.shape


@pytest.mark.parametrize("name", ["sep_conv_3x3", "dil_conv_5x5"])
def test_recompute_depthwise_recomputes_only_for_weight_gradients(name):
    """With the option, a weight-gradient pass runs each depthwise conv again for its 1x1 filter gradient
    (and holds no depthwise output); an input-only (alpha) pass does not. Without it, none runs again."""
    options = pb.CompilerOptions()
    options.CopyFrom(SEARCH_OPTIONS)
    counts = {}
    for recompute in (False, True):
        options.recompute_depthwise = recompute
        layer = make(name, 1, options)
        for watch in ("weights", "input"):
            def step(x):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch([v.value for v in layer.trainable_weights] if watch == "weights" else x)
                    loss = tf.reduce_sum(layer(x, training=True))
                return tape.gradient(loss, layer.trainable_weights if watch == "weights" else x)
            graph = tf.function(step).get_concrete_function(tf.TensorSpec([2, 8, 8, C])).graph
            counts[recompute, watch] = [op.type for op in graph.get_operations()].count("DepthwiseConv2dNative")
    forward = counts[False, "weights"]
    assert forward == (2 if name.startswith("sep") else 1)
    assert counts == {(False, "weights"): forward, (False, "input"): forward,
                      (True, "weights"): 2 * forward, (True, "input"): forward}


def test_mixed_op_copies_dilated_candidates_into_and_out_of_blocks_once():
    """The dilated candidates of a mixed op share one space-to-batch copy of their input and are summed
    before one batch-to-space copy (on even sizes)."""
    mixed = ops.create(mixed_desc(1), SEARCH_OPTIONS, copies=2)
    weights = tf.nn.softmax(tf.random.normal([2, len(CANDIDATES)]))
    graph = tf.function(lambda x: mixed(x, weights=weights, training=True)).get_concrete_function(
        tf.TensorSpec([4, 8, 8, C])).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("SpaceToBatchND") == 1 and types.count("BatchToSpaceND") == 1


def candidates_weighted_sum(mixed, x, w, copies, channels):
    """A mixed op's definition, edge by edge: sum_c w[e, c] * op_c(x), a pool followed by its BatchNorm;
    a candidate built with copies gives edge e its e-th block of `channels`."""
    expected = []
    for e in range(copies):
        total = 0.0
        for column, layer, bn in mixed.branches:
            out = layer(x, training=True)
            if bn is not None:
                out = bn(out, True)
            total += w[e, column] * (out[..., e * channels:(e + 1) * channels] if layer.out_copies > 1 else out)
        expected.append(total)
    return expected


@pytest.mark.parametrize("fold_pools", [True, False])
@pytest.mark.parametrize("stride,copies,size", [(1, 1, 7), (2, 3, 7), (1, 3, 8), (2, 2, 8)])
def test_mixed_op_is_the_softmax_weighted_sum_of_its_candidates(stride, copies, size, fold_pools, monkeypatch):
    """The weights folded into the candidates' last BatchNorm give exactly sum_c w_c * op_c(x), per edge,
    alpha gradients included (pools' BatchNorms folded over the copies or not)."""
    monkeypatch.setattr(mixed_lib, "_fold_pool_weight", lambda k, channels: fold_pools)
    mixed = ops.create(mixed_desc(stride), SEARCH_OPTIONS, copies=copies)
    x = tf.random.normal([4, size, size, C])
    alphas = tf.Variable(tf.random.normal([copies, len(CANDIDATES)]))
    with tf.GradientTape(persistent=True) as tape:
        w = tf.nn.softmax(alphas)
        ys = mixed(x, weights=w, training=True)
        loss = tf.add_n([tf.reduce_sum(tf.sin(y)) for y in ys])
        expected = candidates_weighted_sum(mixed, x, w, copies, C)
        loss_ref = tf.add_n([tf.reduce_sum(tf.sin(y)) for y in expected])
    assert len(ys) == copies
    for y, ref in zip(ys, expected):
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, alphas), tape.gradient(loss_ref, alphas), rtol=1e-3, atol=1e-5)


def _pool_bn_widths(stride, watch_weights):
    """The channel counts of the FusedBatchNorms a grouped pool-only mixed op (3 copies) runs in training."""
    mixed = ops.create(mixed_desc(stride, ("max_pool_3x3",)), SEARCH_OPTIONS, copies=3)

    def step(x, w):
        with tf.GradientTape() as tape:
            tape.watch(w if watch_weights else x)
            ys = mixed(x, weights=w, training=True)
        return tape.gradient(ys, w if watch_weights else x)
    graph = tf.function(step).get_concrete_function(tf.TensorSpec([2, 8, 8, C]), tf.TensorSpec([3, 1])).graph
    return {int(op.inputs[1].shape[0]) for op in graph.get_operations() if op.type == "FusedBatchNorm"}


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_grouped_pool_batchnorms_keep_one_edges_moving_statistics(stride, fold, monkeypatch):
    """With k copies a pool's BatchNorm runs over the k tiled copies, each weighted by its edge (fold), or
    over one copy before the tile and the weights: either way its moving statistics must be those of the
    single edge's BatchNorm, and so must its outputs, in training and in inference."""
    monkeypatch.setattr(mixed_lib, "_fold_pool_weight", lambda copies, channels: fold)
    if fold:  # folding happens in passes that differentiate the weights only; the graph shows which ran
        assert _pool_bn_widths(stride, watch_weights=True) == {3 * C}
        assert _pool_bn_widths(stride, watch_weights=False) == {C}
    candidates = ("max_pool_3x3", "avg_pool_3x3")
    grouped = ops.create(mixed_desc(stride, candidates), SEARCH_OPTIONS, copies=3)
    single = ops.create(mixed_desc(stride, candidates), SEARCH_OPTIONS)
    x = tf.random.normal([4, 7, 7, C]) * 2.0 + 1.0
    weights = tf.nn.softmax(tf.random.normal([3, len(candidates)]))
    with tf.GradientTape() as tape:  # an alpha pass: the weights are differentiated
        tape.watch(weights)
        ys = grouped(x, weights=weights, training=True)
    assert tape.gradient(ys, weights) is not None
    ref, = single(x, weights=weights[:1], training=True)  # one training call each: equal statistics
    for (_, _, bn_g), (_, _, bn_s) in zip(grouped.branches, single.branches):
        assert bn_g.moving_mean.shape == (C,)
        assert not np.allclose(bn_g.moving_mean.numpy(), 0) and not np.allclose(bn_g.moving_var.numpy(), 1)
        for a, b in ((bn_g.moving_mean, bn_s.moving_mean), (bn_g.moving_var, bn_s.moving_var)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ys[0], ref, rtol=1e-5, atol=1e-5)
    # Inference reads the moving statistics, tiled alike for every copy.
    for e, y in enumerate(grouped(x, weights=weights, training=False)):
        ref, = single(x, weights=weights[e:e + 1], training=False)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    for e in (1, 2):  # in training, the batch statistics
        ref, = single(x, weights=weights[e:e + 1], training=True)
        np.testing.assert_allclose(ys[e], ref, rtol=1e-5, atol=1e-5)


CONV_CASES = {  # name: (our op, tf.nn reference, input channels, filter shape)
    "conv3x3-s1": (lambda x, w: conv.conv2d(x, w, 1, 1),
                   lambda x, w: tf.nn.conv2d(x, w, 1, [[0, 0], [1, 1], [1, 1], [0, 0]]), C, [3, 3, C, 4]),
    "conv3x3-s2": (lambda x, w: conv.conv2d(x, w, 2, 1),
                   lambda x, w: tf.nn.conv2d(x, w, 2, [[0, 0], [1, 1], [1, 1], [0, 0]]), C, [3, 3, C, 4]),
    "conv1x1-s2": (lambda x, w: conv.conv2d(x, w, 2, 0), lambda x, w: tf.nn.conv2d(x, w, 2, "VALID"),
                   C, [1, 1, C, 4]),
    "grouped1x1": (lambda x, w: conv.pointwise(x, w),
                   lambda x, w: tf.concat([tf.nn.conv2d(x[..., g * C:(g + 1) * C], w[..., g * 4:(g + 1) * 4], 1,
                                                        "VALID") for g in range(3)], -1), 3 * C, [1, 1, C, 12]),
    "matmul1x1": (lambda x, w: conv.conv2d(x, w, matmul=True), lambda x, w: tf.nn.conv2d(x, w, 1, "VALID"),
                  C, [1, 1, C, 4]),
    "matmul-grouped1x1": (lambda x, w: conv.pointwise(x, w, matmul=True),  # stays one grouped Conv2D
                          lambda x, w: tf.concat([tf.nn.conv2d(x[..., g * C:(g + 1) * C], w[..., g * 4:(g + 1) * 4],
                                                               1, "VALID") for g in range(3)], -1),
                          3 * C, [1, 1, C, 12]),
    "matmul-ungrouped1x1": (lambda x, w: conv.pointwise(x, w, grouped=False, matmul=True),  # a MatMul per group
                            lambda x, w: tf.concat([tf.nn.conv2d(x[..., g * C:(g + 1) * C],
                                                                 w[..., g * 4:(g + 1) * 4], 1, "VALID")
                                                    for g in range(3)], -1), 3 * C, [1, 1, C, 12]),
    "matmul1x1-4-channels": (lambda x, w: conv.conv2d(x, w, matmul=True),  # too few input channels: Conv2D
                             lambda x, w: tf.nn.conv2d(x, w, 1, "VALID"), 4, [1, 1, 4, 8]),
    "matmul3x3": (lambda x, w: conv.conv2d(x, w, 1, 1, matmul=True),  # not a 1x1 conv: Conv2D
                  lambda x, w: tf.nn.conv2d(x, w, 1, [[0, 0], [1, 1], [1, 1], [0, 0]]), C, [3, 3, C, 4]),
    "dw3x3-s1": (lambda x, w: conv.depthwise(x, w, 1, 1),
                 lambda x, w: tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), w, [1, 1, 1, 1],
                                                     "VALID"), C, [3, 3, C, 1]),
    "dw5x5-s1": (lambda x, w: conv.depthwise(x, w, 1, 2),  # filter gradient in two 5x3 blocks
                 lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"), C, [5, 5, C, 1]),
    "dw7x7-s1": (lambda x, w: conv.depthwise(x, w, 1, 3),  # three blocks, the last one overlapping
                 lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"), C, [7, 7, C, 1]),
    "dw5x5-s2": (lambda x, w: conv.depthwise(x, w, 2, 2),  # blocks cropped from the padded input
                 lambda x, w: tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]]), w, [1, 2, 2, 1],
                                                     "VALID"), C, [5, 5, C, 1]),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_convolutions_have_tf_nn_values_and_gradients(case):
    """The convolutions record their own gradients (ops.conv.with_gradient): the same as TF's."""
    ours, ref, channels, w_shape = CONV_CASES[case]
    x, w = tf.random.normal([2, 7, 8, channels]), tf.random.normal(w_shape)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, w])
        y, y_ref = ours(x, w), ref(x, w)
        loss, loss_ref = tf.reduce_sum(tf.sin(y)), tf.reduce_sum(tf.sin(y_ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(tape.gradient(loss, [x, w]), tape.gradient(loss_ref, [x, w])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("spec", [[2, 5, 4, 3 * C], [None, None, None, 3 * C]])
def test_pointwise_matmul_replaces_only_ungrouped_1x1_convs(grouped, spec):
    """CompilerOptions.pointwise_matmul: an ungrouped 1x1 conv, its input and its filter gradients are
    MatMuls (static or unknown image sizes, tf.nn's values); a grouped one stays one Conv2D and its
    gradients, and so does a 1x1 conv without the option."""
    w = tf.Variable(tf.random.normal([1, 1, C if grouped else 3 * C, 12]))

    def step(matmul):
        @tf.function
        def fn(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.sin(conv.pointwise(x, w, matmul=matmul)))
            return loss, tape.gradient(loss, [x, w])
        return fn

    for matmul in (False, True):
        graph = step(matmul).get_concrete_function(tf.TensorSpec(spec)).graph
        types = [op.type for op in graph.get_operations()]
        as_matmul = matmul and not grouped
        assert types.count("MatMul") == (3 if as_matmul else 0)
        assert sum(t.startswith("Conv2D") for t in types) == (0 if as_matmul else 3)
    x = tf.random.normal([2, 5, 4, 3 * C])
    loss, grads = step(True)(x)
    ref_loss, ref_grads = step(False)(x)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pointwise_matmul_leaves_convs_over_few_input_channels_to_conv2d():
    """Below POINTWISE_MATMUL_MIN_INPUT_CHANNELS input channels a 1x1 conv stays Conv2D with the option
    (PC-DARTS's 4-channel candidates were slower as MatMul); from there on it is a MatMul."""
    def graph_types(channels):
        w = tf.Variable(tf.random.normal([1, 1, channels, 8]))
        fn = tf.function(lambda x: conv.conv2d(x, w, matmul=True))
        return [op.type for op in fn.get_concrete_function(tf.TensorSpec([2, 5, 4, channels])).graph.get_operations()]
    few, enough = conv.POINTWISE_MATMUL_MIN_INPUT_CHANNELS - 1, conv.POINTWISE_MATMUL_MIN_INPUT_CHANNELS
    assert "Conv2D" in graph_types(few) and "MatMul" not in graph_types(few)
    assert "MatMul" in graph_types(enough) and "Conv2D" not in graph_types(enough)


def test_wide_depthwise_filter_gradients_use_kernels_at_most_three_columns_wide():
    """oneDNN's depthwise filter gradient is several times slower per tap for 5-wide kernels: the graph of a
    5x5 (and a dilated 5x5) conv's gradient holds only 3-wide ones, which still give tf.nn's gradient
    (test_convolutions_have_tf_nn_values_and_gradients, test_dilated_depthwise_equals_tf_nn)."""
    w = tf.Variable(tf.random.normal([5, 5, C, 1]))

    @tf.function
    def filter_gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv.depthwise(x, w, 1, 2) ** 2) + tf.reduce_sum(
                conv.depthwise(x, w, 1, 4, 2) ** 2)
        return tape.gradient(loss, w)

    graph = filter_gradient.get_concrete_function(tf.TensorSpec([2, 8, 8, C])).graph
    sizes = [tf.get_static_value(op.inputs[1]) for op in graph.get_operations()
             if op.type == "DepthwiseConv2dNativeBackpropFilter"]
    assert len(sizes) == 4 and all(list(s) == [5, 3, C, 1] for s in sizes)


def test_wide_depthwise_filter_gradient_with_unknown_spatial_size_is_tf_nn_s():
    """Where the traced step does not know the image size the blocks cannot be planned: TF's own kernel."""
    x, w = tf.random.normal([2, 7, 6, C]), tf.random.normal([5, 5, C, 1])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, C]), tf.TensorSpec([5, 5, C, 1])])
    def filter_gradient(x, w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = tf.reduce_sum(tf.sin(conv.depthwise(x, w, 1, 2)))
        return tape.gradient(loss, w)

    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.reduce_sum(tf.sin(tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")))
    np.testing.assert_allclose(filter_gradient(x, w), tape.gradient(loss, w), rtol=1e-4, atol=1e-4)


def test_a_tape_that_watches_only_the_input_builds_no_filter_gradient():
    """An alpha-only pass watches the alphas, not the weights: its convolutions trace no filter gradient."""
    w = tf.Variable(tf.random.normal([3, 3, C, 4]))

    @tf.function
    def input_gradient(x):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv.conv2d(x, w, 1, 1) ** 2)
        return tape.gradient(loss, x)

    graph = input_gradient.get_concrete_function(tf.TensorSpec([2, 5, 5, C])).graph
    types = [op.type for op in graph.get_operations()]
    assert types.count("Conv2DBackpropInput") == 1 and "Conv2DBackpropFilter" not in types
    x = tf.random.normal([2, 5, 5, C])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME") ** 2)
    np.testing.assert_allclose(input_gradient(x), tape.gradient(loss, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", [[2, 5, 4, C], [None, 5, 4, C], [None, None, None, C]])
def test_tile_channels_is_tf_tile_with_its_gradient(spec):
    """The tile with a two-op gradient, whatever the static shape the traced step knows."""
    x, dy = tf.random.normal([2, 5, 4, C]), tf.random.normal([2, 5, 4, 3 * C])

    @tf.function(input_signature=[tf.TensorSpec(spec), tf.TensorSpec([None, None, None, 3 * C])])
    def tiled_and_gradient(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = channels.tile_channels(x, 3)
            loss = tf.reduce_sum(y * dy)
        return y, tape.gradient(loss, x)

    y, g = tiled_and_gradient(x, dy)
    np.testing.assert_array_equal(y, tf.tile(x, [1, 1, 1, 3]))
    np.testing.assert_allclose(g, dy[..., :C] + dy[..., C:2 * C] + dy[..., 2 * C:], rtol=1e-6, atol=1e-6)


def test_shared_constants_are_per_graph_and_per_tracing_thread():
    """ops.constants caches a constant once per graph, and separately per thread: MirroredStrategy traces
    each replica on its own thread into one graph, and each replica needs its own (on its own device)."""
    import threading

    from tfnas.ops import constants
    graph, made = tf.Graph(), {}

    def trace(name):
        with graph.as_default():
            made[name] = (constants.constant((1, 2), tf.int32), constants.constant((1, 2), tf.int32))

    for name in ("replica 0", "replica 1"):
        thread = threading.Thread(target=trace, args=(name,))
        thread.start()
        thread.join()
    trace("main")
    with tf.Graph().as_default():
        elsewhere = constants.constant((1, 2), tf.int32)
    assert all(a is b for a, b in made.values())  # shared within one graph and thread
    firsts = [a for a, _ in made.values()] + [elsewhere]
    assert len({id(t) for t in firsts}) == 4 and all(t.graph is graph for t in firsts[:3])


FOLD_CASES = {  # id: (op name, stride, extra descriptor fields, input size, input channels)
    "relu_conv_bn 1x1": ("relu_conv_bn", 1, {"kernel_size": 1}, 7, C),
    "relu_conv_bn 3x3 stride 2": ("relu_conv_bn", 2, {"kernel_size": 3}, 7, C),
    "sep_conv_3x3": ("sep_conv_3x3", 1, {}, 7, C),
    "sep_conv_5x5 stride 2": ("sep_conv_5x5", 2, {}, 8, C),
    "dil_conv_3x3 space-to-batch": ("dil_conv_3x3", 1, {}, 8, C),
    "dil_conv_5x5 stride 2": ("dil_conv_5x5", 2, {}, 7, C),
    "factorized_reduce": ("factorized_reduce", 2, {}, 7, C),
    "stem": ("stem", 1, {"kernel_size": 3, "in_channels": 3}, 8, 3),
    "project_channels": ("project_channels", 1, {"in_channels": 2 * C}, 5, 2 * C),
}


def _folded_pair(case, dtype_options=pb.CompilerOptions.FLOAT32):
    """The op built twice, unfolded and with fold_batchnorm (same weights, the folded one computing in
    `dtype_options`), its BatchNorms given scales, offsets and moving statistics far from 1 and 0."""
    name, stride, fields, _, _ = FOLD_CASES[case]
    layers = []
    for fold in (False, True):
        options = pb.CompilerOptions()
        options.CopyFrom(EVAL_OPTIONS)
        options.fold_batchnorm = fold
        if fold:
            options.precision = dtype_options
        layers.append(make(name, stride, options, **fields))
    rng = np.random.default_rng(2)
    for a, b in zip(layers[0].weights, layers[1].weights):
        assert a.path == b.path
        if a.path.endswith(("_var", "_gamma")):
            a.assign(rng.uniform(0.3, 2.0, a.shape).astype(np.float32))
        elif a.path.endswith(("_mean", "_beta")):
            a.assign(rng.normal(0, 0.5, a.shape).astype(np.float32))
        b.assign(a)
    return layers


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_fold_batchnorm_computes_the_batchnorm_at_inference_without_a_batchnorm_op(case):
    """CompilerOptions.fold_batchnorm (the bfloat16 serving graph's): at inference every BatchNorm after a conv
    becomes the conv's scaled kernel and a bias, with the unfolded op's values and no BatchNorm op left;
    a training pass is the unfolded one's, batch statistics and moving averages alike."""
    plain, folded = _folded_pair(case)
    _, _, _, size, channels = FOLD_CASES[case]
    x = tf.random.normal([4, size, size, channels])
    np.testing.assert_allclose(folded(x, training=False), plain(x, training=False), rtol=1e-4, atol=1e-5)
    graph_ops = {op.type for op in tf.function(lambda x: folded(x, training=False)).get_concrete_function(
        x).graph.get_operations()}
    assert "BiasAdd" in graph_ops and not any("BatchNorm" in t for t in graph_ops), sorted(graph_ops)
    np.testing.assert_allclose(folded(x, training=True), plain(x, training=True), rtol=1e-4, atol=1e-5)
    for a, b in zip(plain.non_trainable_variables, folded.non_trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_in_bfloat16_stays_near_float32():
    """Folded at bfloat16, the kernels are scaled in float32 before their cast: the output is within
    bfloat16's rounding of the float32 BatchNorm's, not off by a rounded scale per channel."""
    plain, folded = _folded_pair("sep_conv_3x3", pb.CompilerOptions.MIXED_BFLOAT16)
    x = tf.random.normal([4, 8, 8, C])
    y = folded(tf.cast(x, tf.bfloat16), training=False)
    assert y.dtype == tf.bfloat16
    ref = plain(x, training=False).numpy()
    assert np.abs(tf.cast(y, tf.float32).numpy() - ref).max() <= 0.03 * np.abs(ref).max()
