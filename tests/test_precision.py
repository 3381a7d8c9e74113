"""Mixed-precision networks (CompilerOptions.precision, from runtime.precision): bfloat16 or float16
activations, float32 variables, optimiser state and logits; the float32 network exactly as it was.

Tiny networks (4 channels, 6x6 or 8x8 images), run eagerly, except where a traced graph is inspected.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from test_bilevel import batches, make_search, supernet_desc, weight_cfg
from tfnas import compiler, evaluation, genotypes
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search.runner import search_options
from tfnas.train import metrics

BF16, F16, F32 = pb.CompilerOptions.MIXED_BFLOAT16, pb.CompilerOptions.MIXED_FLOAT16, pb.CompilerOptions.FLOAT32
COMPUTE_OPS = {"Conv2D", "DepthwiseConv2dNative", "FusedBatchNorm", "FusedBatchNormV3", "AvgPool", "MaxPool"}


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def with_precision(options, precision):
    out = pb.CompilerOptions()
    out.CopyFrom(options)
    out.precision = precision
    return out


def step_data(**kw):
    xt, yt, xv, yv = batches(**kw)
    return (tf.constant(xt), tf.constant(yt)), (tf.constant(xv), tf.constant(yv))


def batchnorm_vectors(net):
    """(trainable gamma/beta, moving mean/var) of every BatchNorm of the network."""
    suffix = lambda v, ends: v.path.rsplit("_", 1)[-1] in ends  # noqa: E731
    return ([v for v in net.trainable_variables if suffix(v, ("gamma", "beta"))],
            [v for v in net.non_trainable_variables if suffix(v, ("mean", "var"))])


def traced_ops(net, x, **call):
    """The op types and dtypes of one traced forward pass: [(type, attribute T or None)]."""
    graph = tf.function(lambda t: net(t, **call)).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
    return [(op.type, op.get_attr("T") if "T" in op.node_def.attr else None) for op in graph.get_operations()]


def eval_desc(aux=True):
    m = config_pb2.MacroConfig(channels=4, cells=3, stem_multiplier=3, aux_tower=aux, aux_weight=0.4)
    return genotypes.to_desc(genotypes.lookup("DARTS_V2"), m, [8, 8, 1], 10)


def test_the_runtime_precision_reaches_the_compiler_options():
    assert config_pb2.RuntimeConfig.DESCRIPTOR.fields_by_name["precision"].enum_type is \
        pb.CompilerOptions.Precision.DESCRIPTOR  # one enum, in one place
    config = config_pb2.ExperimentConfig()
    config.runtime.precision = pb.CompilerOptions.MIXED_BFLOAT16
    assert search_options(config).precision == BF16
    net = compiler.compile_model(supernet_desc(), compiler.EVAL_OPTIONS, precision=config.runtime.precision)
    assert net.options.precision == BF16 and compiler.EVAL_OPTIONS.precision == F32  # the shared constant: untouched


@pytest.mark.parametrize("order", [1, 2])
def test_bfloat16_search_step_is_finite_and_keeps_its_state_float32(order):
    s = make_search(order=order, options=with_precision(compiler.SEARCH_OPTIONS, BF16), reduction_cells=(1,))
    gammas_betas, moving = batchnorm_vectors(s.net)
    assert gammas_betas and moving  # the stem's BatchNorm is affine in search networks too
    before = [v.numpy().copy() for v in moving]
    logs = s.train_step(step_data())
    assert all(np.isfinite(float(v)) for v in logs.values())
    for v in s.net.alphas + gammas_betas + moving + s.net.weights_only:
        assert v.dtype == "float32", v.path
    alpha_slots = [v for v in s.alpha_opt.variables if v is not s.alpha_opt.iterations]
    assert alpha_slots and all(v.dtype == "float32" for v in alpha_slots)
    assert all(np.all(np.isfinite(v.numpy())) for v in s.net.variables)
    assert any(np.any(v.numpy() != 0) for v in alpha_slots)  # the alpha step ran
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, moving)]
    assert all(changed), [v.path for v, c in zip(moving, changed) if not c]


def test_bfloat16_search_network_computes_in_bfloat16():
    """Every convolution and pool of the traced pass in bfloat16; every BatchNorm over whole blocks of 16
    channels in bfloat16 (V3), every one over fewer channels in float32 (v1) between casts from and back
    to bfloat16, where oneDNN's bfloat16 kernel is slow; float32 only from the pooled features on: the
    logits."""
    net = compiler.compile_model(supernet_desc(reduction_cells=(1,)), with_precision(compiler.SEARCH_OPTIONS, BF16))
    x = tf.constant(batches()[0])
    graph = tf.function(lambda t: net(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
    compute = [op.get_attr("T") for op in graph.get_operations()
               if op.type in COMPUTE_OPS - {"FusedBatchNorm", "FusedBatchNormV3"}]
    assert compute and set(compute) == {tf.bfloat16}
    norms = [op for op in graph.get_operations() if op.type in ("FusedBatchNorm", "FusedBatchNormV3")]
    blocked = [op for op in norms if op.inputs[0].shape[-1] % 16 == 0]
    assert blocked and len(blocked) < len(norms)  # both kinds occur in this network
    for op in norms:
        if op in blocked:
            assert op.type == "FusedBatchNormV3" and op.get_attr("T") == tf.bfloat16, op.name
        else:
            assert op.type == "FusedBatchNorm" and op.get_attr("T") == tf.float32, op.name
            source = op.inputs[0].op
            assert source.type == "Cast" and source.inputs[0].dtype == tf.bfloat16, op.name
            assert [c.type for c in op.outputs[0].consumers()] == ["Cast"], op.name
    assert net(x, training=True).dtype == tf.float32


def test_bfloat16_first_order_alpha_gradient_agrees_with_float32():
    """The same weights, one validation batch: the bfloat16 alpha gradient points where the float32 one
    does (cosine > 0.99) and is within 15 % of it in norm of the difference. bfloat16 keeps 8 significant
    bits; at initialisation the gradient is small next to the terms it is made of (the BatchNorm
    backward passes subtract means of bfloat16 products), so its relative error is far above a single
    rounding's; the same error is already in the gradient of the softmax weights, before the softmax."""
    desc = supernet_desc(reduction_cells=(1,))
    nets = {p: compiler.compile_model(desc, with_precision(compiler.SEARCH_OPTIONS, p)) for p in (F32, BF16)}
    nets[BF16].set_weights(nets[F32].get_weights())
    _, _, xv, yv = batches(n=16)
    grads = {}
    for p, net in nets.items():
        with tf.GradientTape() as tape:
            loss = metrics.cross_entropy(net(tf.constant(xv), training=True, update_statistics=False), yv)
        grads[p] = np.concatenate([np.ravel(g) for g in tape.gradient(loss, net.alphas)]).astype(np.float64)
    a, b = grads[BF16], grads[F32]
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    relative = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert cosine > 0.99 and relative < 0.15, (cosine, relative)


def test_bfloat16_evaluation_step_is_finite_with_float32_logits():
    config = config_pb2.ExperimentConfig()
    config.runtime.precision = pb.CompilerOptions.MIXED_BFLOAT16
    config.eval.trainer.optimizer.CopyFrom(weight_cfg())
    config.eval.trainer.epochs = 1
    trainer = evaluation.build_trainer(config, eval_desc(), steps_per_epoch=10)
    net = trainer.net
    assert net.options.precision == BF16 and net.aux
    net.drop_rate.assign(0.2)  # drop path at bfloat16
    x, y = tf.constant(batches(shape=(8, 8, 1), classes=10)[0]), tf.constant(np.arange(8) % 10)
    logits, aux_logits = net.forward(x, training=True)
    assert logits.dtype == tf.float32 and [a.dtype for a in aux_logits] == [tf.float32]
    _, moving = batchnorm_vectors(net)
    logs = trainer.train_step((x, y))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert moving and all(v.dtype == "float32" for v in moving)
    assert not {v.dtype for v in net.variables + trainer.opt.variables} & {"bfloat16", "float16"}
    assert all(np.all(np.isfinite(v.numpy())) for v in net.variables)
    assert all(v.dtype == "float32" for v in trainer.opt.variables if v is not trainer.opt.iterations)
    assert net(x).dtype == tf.float32  # inference: BatchNorm V3 with the moving statistics


@pytest.mark.parametrize("network", ["search", "evaluation"])
def test_float16_compiles_and_gives_finite_float32_logits(network):
    if network == "search":
        desc, options, x = supernet_desc(reduction_cells=(1,)), compiler.SEARCH_OPTIONS, batches()[0]
    else:
        desc, options, x = eval_desc(), compiler.EVAL_OPTIONS, batches(shape=(8, 8, 1))[0]
    net = compiler.compile_model(desc, options, precision=F16)
    for training in (True, False):
        logits, aux = net.forward(tf.constant(x), training=training)
        assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
        assert all(a.dtype == tf.float32 and np.all(np.isfinite(a.numpy())) for a in aux)
    compute = {dt for t, dt in traced_ops(net, tf.constant(x), training=True) if t in COMPUTE_OPS}
    assert compute == {tf.float16}


@pytest.mark.parametrize("network", ["search", "evaluation"])
def test_float32_compiles_exactly_as_before(network):
    """FLOAT32, given or not, is the network without precision: same options, weights and outputs, and a
    traced pass with no casts (the float32 graph gains no op) and the v1 BatchNorm."""
    desc, options = (supernet_desc(reduction_cells=(1,)), compiler.SEARCH_OPTIONS) if network == "search" \
        else (eval_desc(), compiler.EVAL_OPTIONS)
    x = tf.constant(batches(shape=(6, 6, 1) if network == "search" else (8, 8, 1))[0])
    keras.utils.set_random_seed(3)
    plain = compiler.compile_model(desc, options)
    keras.utils.set_random_seed(3)
    explicit = compiler.compile_model(desc, options, precision=F32)
    assert explicit.options == options
    assert compiler.count_params(plain) == compiler.count_params(explicit)
    for a, b in zip(plain.get_weights(), explicit.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain(x, training=False).numpy(), explicit(x, training=False).numpy())
    ops_plain, ops_explicit = traced_ops(plain, x, training=True), traced_ops(explicit, x, training=True)
    assert len(ops_plain) == len(ops_explicit)
    graph = tf.function(lambda t: explicit(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape)).graph
    float_casts = [op for op in graph.get_operations() if op.type == "Cast" and op.get_attr("DstT").is_floating]
    assert float_casts == []  # (drop path casts its integer seeds, as before)
    types = {t for t, _ in ops_explicit}
    assert "FusedBatchNormV3" not in types and "FusedBatchNorm" in types
    assert {dt for t, dt in ops_explicit if t in COMPUTE_OPS} == {tf.float32}


@pytest.mark.parametrize("channels", [4, 16, 36])
def test_bfloat16_depthwise_block_gradients_match_the_composed_block(channels):
    """The one-op relu-bn-depthwise-1x1 block (its own backward pass) against the same block composed of
    recorded ops, at bfloat16: its BatchNorm in float32 between casts (4 channels), in bfloat16 (16), in
    bfloat16 over padded channels (36)."""
    from tfnas.ops.batchnorm import BatchNorm
    from tfnas.ops.depthwise_block import depthwise_block

    owner = keras.layers.Layer()
    bn = BatchNorm(owner, "bn", channels, affine=False)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((4, 6, 6, channels)), tf.bfloat16)
    dw = tf.Variable(rng.standard_normal((3, 3, channels, 1)).astype(np.float32) * 0.3)
    pw = tf.Variable(rng.standard_normal((1, 1, channels, channels)).astype(np.float32) * 0.5)
    dy = tf.constant(rng.standard_normal((4, 6, 6, channels)), tf.bfloat16)
    grads = []
    for hold_less in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = depthwise_block(x, dw, pw, padding=1, bn=bn, update_statistics=False, hold_less=hold_less)
            loss = tf.reduce_sum(tf.cast(y * dy, tf.float32))
        assert y.dtype == tf.bfloat16
        grads.append([np.asarray(tf.cast(g, tf.float32)) for g in tape.gradient(loss, [x, dw, pw])])
    for one_op, composed in zip(*grads):
        assert one_op.dtype == np.float32
        err = np.linalg.norm(one_op - composed) / np.linalg.norm(composed)
        assert err < 0.03, err


@pytest.mark.parametrize("training", [True, False])
def test_bfloat16_batchnorm_over_padded_channels_agrees_with_float32(training):
    """36 channels at bfloat16: one V3 op over 48 channels (zeros appended), no cast; its output, updated
    moving statistics and gradients (input, gamma, beta) those of float32 on the same input, within
    bfloat16's rounding of the output and of the output gradient."""
    from tfnas.ops.batchnorm import BatchNorm

    rng = np.random.default_rng(1)
    x32 = tf.constant(rng.standard_normal((4, 5, 5, 36)) * 2 + 1, tf.float32)
    x16 = tf.cast(x32, tf.bfloat16)
    x32 = tf.cast(x16, tf.float32)  # both from the same bfloat16 values
    dy = tf.constant(rng.standard_normal((4, 5, 5, 36)), tf.bfloat16)
    results = {}
    for name, x in (("bf16", x16), ("f32", x32)):
        owner = keras.layers.Layer()
        bn = BatchNorm(owner, "bn", 36, affine=True)
        bn.gamma.assign(rng.uniform(0.5, 1.5, 36) if name == "bf16" else results["bf16"][-1][0])
        bn.beta.assign(rng.uniform(-1, 1, 36) if name == "bf16" else results["bf16"][-1][1])
        bn.moving_var.assign(np.full(36, 2.0, np.float32))
        vectors = [bn.gamma.numpy(), bn.beta.numpy()]

        def call(t):
            return bn(t, training=training)

        graph = tf.function(call).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
        norms = [op for op in graph.get_operations() if op.type in ("FusedBatchNorm", "FusedBatchNormV3")]
        assert len(norms) == 1
        if name == "bf16":
            assert norms[0].type == "FusedBatchNormV3" and norms[0].get_attr("T") == tf.bfloat16
            assert norms[0].inputs[0].shape[-1] == 48
            assert not [op for op in graph.get_operations() if op.type == "Cast"]
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = call(x)
        assert y.dtype == x.dtype and y.shape == x.shape
        grads = tape.gradient(y, [x, bn.gamma, bn.beta], output_gradients=tf.cast(dy, x.dtype))
        results[name] = ([np.asarray(tf.cast(t, tf.float32)) for t in [y, *grads]],
                         [bn.moving_mean.numpy(), bn.moving_var.numpy()], vectors)
    (out16, stats16, _), (out32, stats32, _) = results["bf16"], results["f32"]
    for a, b in zip(stats16, stats32):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if training:
        assert not np.allclose(stats32[0], 0)  # the moving statistics moved
    for a, b in zip(out16, out32):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.01, np.linalg.norm(a - b) / np.linalg.norm(b)


def test_bfloat16_evaluation_network_batchnorms_by_channel_count():
    """DARTS_V2 at 12 channels, bfloat16: its stages' BatchNorms over 12 channels in float32 between casts,
    over 24 in bfloat16 over 32 channels (padded), over 48 and the stem's 36 in bfloat16 over 48 channels
    (as they are, and padded)."""
    desc = genotypes.to_desc(genotypes.lookup("DARTS_V2"), config_pb2.MacroConfig(
        channels=12, cells=3, stem_multiplier=3, aux_tower=False), [8, 8, 1], 10)
    net = compiler.compile_model(desc, compiler.EVAL_OPTIONS, precision=BF16)
    x = tf.constant(batches(shape=(8, 8, 1))[0])
    graph = tf.function(lambda t: net(t, training=True)).get_concrete_function(tf.TensorSpec(x.shape, x.dtype)).graph
    kinds = {}
    for op in graph.get_operations():
        if op.type in ("FusedBatchNorm", "FusedBatchNormV3"):
            kinds.setdefault(op.inputs[0].shape[-1], set()).add((op.type, op.get_attr("T")))
    assert kinds.pop(12) == {("FusedBatchNorm", tf.float32)}
    assert kinds.pop(32) == {("FusedBatchNormV3", tf.bfloat16)}
    assert kinds == {48: {("FusedBatchNormV3", tf.bfloat16)}}
    for training in (True, False):
        logits, _ = net.forward(x, training=training)
        assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))


@pytest.mark.parametrize("space", ["pc_darts", "petridish"])
def test_bfloat16_partial_channel_and_petridish_networks_give_alpha_gradients(space):
    """The other searches' ops at bfloat16: PC-DARTS's bypass scaled by its float32 edge weights, the
    PetriDish candidates' linear weights through stop-forward."""
    import test_pc_darts
    import test_petridish
    from tfnas.search import petridish

    if space == "pc_darts":
        desc, classes = test_pc_darts.supernet(), 3
    else:
        desc, classes = petridish.grow(test_petridish.seed_desc(), 1, test_petridish.PRIMITIVES, keep=2), 10
    net = compiler.compile_model(desc, compiler.SEARCH_OPTIONS, precision=BF16)
    x = tf.constant(np.random.default_rng(0).standard_normal((8, *desc.input_shape)), tf.float32)
    y = tf.constant(np.arange(8) % classes)
    with tf.GradientTape() as tape:
        logits = net(x, training=True, update_statistics=False)
        loss = metrics.cross_entropy(logits, y)
    grads = tape.gradient(loss, net.alphas)
    assert logits.dtype == tf.float32 and np.isfinite(float(loss))
    assert all(g.dtype == tf.float32 and np.all(np.isfinite(g)) and np.any(g.numpy() != 0) for g in grads)


def test_bfloat16_relu_by_bits_is_relu_with_relus_gradient():
    from tfnas.ops.relu import relu
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.75, 2.0, 3e38, np.inf], np.float32)
    x = tf.constant(np.concatenate([values, np.random.default_rng(0).normal(size=1000).astype(np.float32)]),
                    tf.bfloat16)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        mine, theirs = relu(x), tf.nn.relu(x)
    assert mine.dtype == tf.bfloat16
    np.testing.assert_array_equal(tf.cast(mine, tf.float32).numpy(), tf.cast(theirs, tf.float32).numpy())
    assert not np.any(np.signbit(tf.cast(mine, tf.float32).numpy()))  # -0 comes out +0
    dy = tf.cast(tf.range(x.shape[0], dtype=tf.float32) + 1, tf.bfloat16)
    np.testing.assert_array_equal(tape.gradient(mine, x, dy).numpy(), tape.gradient(theirs, x, dy).numpy())
    x32 = tf.constant(values)
    graph = tf.function(relu).get_concrete_function(tf.TensorSpec([None], tf.float32)).graph
    assert "Relu" in {op.type for op in graph.get_operations()}  # float32: TensorFlow's own op
    np.testing.assert_array_equal(relu(x32).numpy(), tf.nn.relu(x32).numpy())
