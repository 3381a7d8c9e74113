"""Bi-level DARTS search (tfnas.search.darts.bilevel) and DARTS finalisation (tfnas.search.darts.finalize).

Tiny supernets (4 channels, 6x6 images, batch 8) keep the file fast; everything runs eagerly.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnas import alphas as alphas_lib, compiler, macro
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts
from tfnas.search.darts.bilevel import BilevelSearch
from tfnas.train import optim

PRIMITIVES = ["none", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"]
WD, ALPHA_WD, CLIP = 3e-4, 1e-3, 5.0


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()


def weight_cfg(lr=0.1, momentum=0.9):
    return config_pb2.OptimizerConfig(kind=config_pb2.OptimizerConfig.SGD, learning_rate=lr, momentum=momentum,
                                      weight_decay=WD, gradient_clip_norm=CLIP, schedule=config_pb2.CONSTANT)


def alpha_cfg(lr=3e-3):
    return config_pb2.OptimizerConfig(kind=config_pb2.OptimizerConfig.ADAM, learning_rate=lr, beta_1=0.5,
                                      beta_2=0.999, weight_decay=ALPHA_WD, schedule=config_pb2.CONSTANT)


def supernet_desc(cells=2, nodes=2, reduction_cells=(), input_shape=(6, 6, 1), classes=3):
    m = config_pb2.MacroConfig(channels=4, cells=cells, nodes=nodes, stem_multiplier=1,
                               reduction_cells=list(reduction_cells))
    return darts.build_supernet(macro.build_macro(m, list(input_shape), classes), PRIMITIVES,
                                alpha_init_scale=0.1, seed=0)


def make_search(order=1, lr=0.1, momentum=0.9, alpha_lr=3e-3, options=compiler.SEARCH_OPTIONS, **desc_kw):
    net = compiler.compile_model(supernet_desc(**desc_kw), options)
    wc, ac = weight_cfg(lr, momentum), alpha_cfg(alpha_lr)
    weight_opt = optim.make_optimizer(wc, 1, 10, "weight_opt")
    alpha_opt = optim.make_optimizer(ac, 1, 10, "alpha_opt")
    return BilevelSearch(net, weight_opt, alpha_opt, wc, ac, order=order)


def batches(seed=1, n=8, shape=(6, 6, 1), classes=3):
    rng = np.random.default_rng(seed)
    xt = rng.standard_normal((n,) + shape).astype(np.float32)
    xv = rng.standard_normal((n,) + shape).astype(np.float32)
    yt = rng.integers(0, classes, n).astype(np.int64)
    yv = rng.integers(0, classes, n).astype(np.int64)
    return xt, yt, xv, yv


def loss_fn(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                                         logits=logits))


def values(variables):
    return [np.array(v.numpy()) for v in variables]


def flat(tensors):
    return np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in tensors])


def rel(a, b):
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))


def train_loss_and_grads(net, x, y, variables):
    with tf.GradientTape() as tape:
        loss = loss_fn(net(x, training=True), y)
    return loss, tape.gradient(loss, variables)


# 1. The two steps touch disjoint variable sets -------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2])
def test_weight_step_changes_no_alpha_and_alpha_step_no_weight(order):
    s = make_search(order=order)
    net = s.net
    xt, yt, xv, yv = batches()

    w0, a0 = values(net.weights_only), values(net.alphas)
    s.alpha_step(xt, yt, xv, yv)
    w1, a1 = values(net.weights_only), values(net.alphas)
    for before, after in zip(w0, w1):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(a0, a1):
        assert not np.array_equal(before, after)

    s.weight_step(xt, yt)
    w2, a2 = values(net.weights_only), values(net.alphas)
    for before, after in zip(a1, a2):
        np.testing.assert_array_equal(before, after)
    changed = [not np.array_equal(before, after) for before, after in zip(w1, w2)]
    assert all(changed), [v.path for v, c in zip(net.weights_only, changed) if not c]


# 2. Each optimiser holds state for its own variables only --------------------------------------------

def slots(opt):
    return [v for v in opt.variables if v is not opt.iterations]


def test_optimizers_hold_state_only_for_their_own_variables():
    s = make_search(order=1)
    net = s.net
    weights, alphas = net.weights_only, net.alphas
    alpha_ids = {id(a) for a in alphas}
    assert not any(id(w) in alpha_ids for w in weights)
    assert len(weights) + len(alphas) == len(net.trainable_variables)
    assert {id(v) for v in weights} | alpha_ids == {id(v) for v in net.trainable_variables}

    def check_state():
        # SGD with momentum: one momentum buffer per weight, in the same order and shapes.
        w_slots = slots(s.weight_opt)
        assert [tuple(v.shape) for v in w_slots] == [tuple(w.shape) for w in weights]
        assert len(s.weight_opt.momentums) == len(weights)
        # Adam: a momentum and a velocity per alpha matrix, nothing else.
        a_slots = slots(s.alpha_opt)
        assert len(a_slots) == 2 * len(alphas)
        assert sorted(tuple(v.shape) for v in a_slots) == sorted(2 * [tuple(a.shape) for a in alphas])
        # The alpha shape is not a weight shape here, so no alpha slipped into the weight optimiser.
        assert not {tuple(a.shape) for a in alphas} & {tuple(v.shape) for v in w_slots}

    check_state()
    assert int(s.weight_opt.iterations) == 0 and int(s.alpha_opt.iterations) == 0
    xt, yt, xv, yv = batches()
    s.train_step(((xt, yt), (xv, yv)))
    check_state()
    assert int(s.weight_opt.iterations) == 1
    assert int(s.alpha_opt.iterations) == 1
    assert all(np.any(v.numpy() != 0) for v in slots(s.weight_opt))
    assert all(np.any(v.numpy() != 0) for v in slots(s.alpha_opt))


# 3. Second-order alpha gradient ------------------------------------------------------------------------

XI = 0.5  # large enough that the Hessian term is about half of the hypergradient


def test_second_order_matches_exact_hypergradient(monkeypatch):
    """d/dalpha L_val(w - xi * (grad_w L_train(w, alpha) + wd * w), alpha), exactly, by nested tapes.

    ReLU networks are only piecewise smooth: a weight perturbation of norm 0.01 flips some ReLUs, and the
    central difference of the alpha gradient then differs from the (almost everywhere) exact Hessian by
    an O(1) amount that does not shrink with eps. To test the finite-difference arithmetic against the
    exact hypergradient, the ReLUs are replaced by softplus here (the ops call `tf.nn.relu` at run time);
    the bi-level code does not depend on the activation. The separable convs' memory-saving op (a ReLU,
    first-order gradients only) is turned off for the same reason.
    """
    monkeypatch.setattr(tf.nn, "relu", tf.nn.softplus)
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.nested_gradients = True  # nested tapes need every op recorded
    s = make_search(order=2, lr=XI, momentum=0.9, options=options)  # fresh optimiser: zero momentum buffers
    net = s.net
    weights, alphas = net.weights_only, net.alphas
    xt, yt, xv, yv = batches()

    w0, a0 = values(weights), values(alphas)
    val_logits, fd, _ = s.second_order_alpha_gradients(xt, yt, xv, yv)
    # All weights restored bit for bit; alphas untouched.
    for before, w in zip(w0, weights):
        np.testing.assert_array_equal(before, w.numpy())
    for before, a in zip(a0, alphas):
        np.testing.assert_array_equal(before, a.numpy())
    assert int(s.weight_opt.iterations) == 0 and int(s.alpha_opt.iterations) == 0

    # w' = w - xi * (grad_w L_train + wd * w); at w': grad_alpha L_val and v = grad_w' L_val.
    _, g = train_loss_and_grads(net, xt, yt, weights)
    for w, gi in zip(weights, g):
        w.assign_sub(XI * (gi + WD * w))
    with tf.GradientTape() as tape:
        logits = net(xv, training=True)
        loss = loss_fn(logits, yv)
    grads = tape.gradient(loss, alphas + weights)
    d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
    np.testing.assert_allclose(val_logits.numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    for w, before in zip(weights, w0):
        w.assign(before)

    # Exact mixed second derivative (d^2 L_train / dalpha dw) . v at w, backward over backward.
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = loss_fn(net(xt, training=True), yt)
        grad_w = inner.gradient(loss, weights)
        dot = tf.add_n([tf.reduce_sum(gw * tf.stop_gradient(vi)) for gw, vi in zip(grad_w, v)])
    mixed = outer.gradient(dot, alphas)
    for w, before in zip(weights, w0):
        np.testing.assert_array_equal(before, w.numpy())

    exact = [da - XI * h for da, h in zip(d_alpha, mixed)]
    wrong_sign = [da + XI * h for da, h in zip(d_alpha, mixed)]
    # Central differences with eps = 0.01 / ||v|| in float32: observed 1e-4 to 1.4e-3 over data seeds.
    tol = 5e-3
    assert rel(fd, exact) < tol
    # The test would catch a dropped or sign-flipped Hessian term by a wide margin (observed ~1 here).
    assert rel(d_alpha, exact) > 20 * tol
    assert rel(wrong_sign, exact) > 20 * tol
    assert rel(fd, d_alpha) > 20 * tol


def test_second_order_follows_darts_finite_difference_recipe_with_momentum():
    """On the real (ReLU) supernet, after one weight step (momentum buffers non-zero): the gradient is
    grad_alpha L_val(w') - xi * [grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)] / (2 eps)
    with w' = w - xi * (momentum * buf + grad_w L_train(w) + wd * w), buf the PyTorch momentum buffer
    (after one step: the clipped, L2-decayed gradient of that step), v = grad_w' L_val(w'),
    eps = 0.01 / ||v||: recomputed here independently of the library. The moving BatchNorm statistics
    end as in the reference code, which runs the pass at w' on a copy of the network."""
    lr, momentum = 0.1, 0.9
    s = make_search(order=2, lr=lr, momentum=momentum)
    net = s.net
    weights, alphas = net.weights_only, net.alphas
    xt, yt, xv, yv = batches()
    xt2, yt2, _, _ = batches(seed=2)

    # One weight step; the PyTorch momentum buffer after it is the prepared gradient of that step.
    _, g_prev = train_loss_and_grads(net, xt2, yt2, weights)
    g_prev, _ = tf.clip_by_global_norm(g_prev, CLIP)
    buf = [g + WD * w for g, w in zip(g_prev, weights)]
    s.weight_step(xt2, yt2)
    assert int(s.weight_opt.iterations) == 1

    stats = [v for v in net.non_trainable_variables if v.name.endswith(("_mean", "_var"))]
    assert stats
    w0, s0 = values(weights), values(stats)
    _, lib, _ = s.second_order_alpha_gradients(xt, yt, xv, yv)
    for before, w in zip(w0, weights):
        np.testing.assert_array_equal(before, w.numpy())
    lib_stats = values(stats)
    for v, before in zip(stats, s0):
        v.assign(before)

    def darts_recipe(momentum_term, val_pass_on_a_copy=True):
        _, g = train_loss_and_grads(net, xt, yt, weights)
        for w, gi, b in zip(weights, g, buf):
            w.assign_sub(lr * (momentum_term * b + gi + WD * w))
        before_val = values(stats)
        with tf.GradientTape() as tape:
            loss = loss_fn(net(xv, training=True), yv)
        if val_pass_on_a_copy:  # the copy's updated BatchNorm buffers are dropped
            for v, before in zip(stats, before_val):
                v.assign(before)
        grads = tape.gradient(loss, alphas + weights)
        d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
        eps = 0.01 / float(tf.linalg.global_norm(v))
        for w, before, vi in zip(weights, w0, v):
            w.assign(before + eps * vi)
        _, plus = train_loss_and_grads(net, xt, yt, alphas)
        for w, before, vi in zip(weights, w0, v):
            w.assign(before - eps * vi)
        _, minus = train_loss_and_grads(net, xt, yt, alphas)
        for w, before in zip(weights, w0):
            w.assign(before)
        return d_alpha, [da - lr * (p - m) / (2 * eps) for da, p, m in zip(d_alpha, plus, minus)]

    d_alpha, expected = darts_recipe(momentum)
    assert rel(lib, expected) < 1e-3  # observed ~1e-6
    assert rel(lib_stats, values(stats)) < 1e-5
    for v, before in zip(stats, s0):
        v.assign(before)
    darts_recipe(momentum, val_pass_on_a_copy=False)
    assert rel(lib_stats, values(stats)) > 1e-3  # the validation batch would show in the statistics
    # The test tells apart a virtual step without the momentum term, and a dropped Hessian term.
    _, without_momentum = darts_recipe(0.0)
    assert rel(without_momentum, expected) > 1e-2
    assert rel(lib, without_momentum) > 1e-2
    assert rel(lib, d_alpha) > 1e-2


# 4. Full steps learn ------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [1, 2])
def test_train_steps_run_and_decrease_training_loss(order):
    s = make_search(order=order)
    net = s.net
    xt, yt, xv, yv = batches()
    a0 = values(net.alphas)
    initial = float(loss_fn(net(xt, training=True), yt))
    for _ in range(20):
        s.reset_trackers()
        logs = s.train_step(((xt, yt), (xv, yv)))
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "alpha_lr"):
            assert np.isfinite(float(logs[key])), (key, logs)
    assert int(s.weight_opt.iterations) == 20 and int(s.alpha_opt.iterations) == 20
    final = float(loss_fn(net(xt, training=True), yt))
    assert final < 0.5 * initial, (initial, final)
    assert float(logs["loss"]) < initial
    assert all(not np.array_equal(before, a.numpy()) for before, a in zip(a0, net.alphas))
    assert all(np.all(np.isfinite(v.numpy())) for v in net.trainable_variables)


# 5. One alpha matrix per cell type, fed by every cell of that type -----------------------------------

def test_alphas_shared_per_cell_type_and_every_cell_contributes():
    # c0 normal, c1 reduction, c2 normal; 2 nodes -> 2 + 3 = 5 edges per cell.
    desc = supernet_desc(cells=3, nodes=2, reduction_cells=[1], input_shape=(8, 8, 1))
    net = compiler.compile_model(desc)
    assert [c.cell_type for c in desc.cells] == [pb.NORMAL, pb.REDUCTION, pb.NORMAL]
    assert sorted(net.alpha_vars) == ["normal", "reduction"]
    for a in net.alpha_vars.values():
        assert tuple(a.shape) == (5, len(PRIMITIVES))
    assert len(net.trainable_variables) == len(net.weights_only) + 2
    # Every mixed edge reads its cell type's matrix, row = edge position within the cell.
    for cell in desc.cells:
        group = darts.GROUPS[cell.cell_type]
        edges = [e for n in cell.nodes for e in n.edges]
        assert [(e.op.name, e.op.alpha_group, e.op.alpha_index) for e in edges] == \
            [("mixed", group, i) for i in range(5)]

    # Forward pass with a separate copy of the alpha matrix per cell: the shared variable's gradient is
    # the sum of the per-cell gradients, and each normal cell contributes.
    x, y, _, _ = batches(shape=(8, 8, 1))
    copies = [tf.identity(net.alpha_vars[darts.GROUPS[c.cell_type]]) for c in desc.cells]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(copies)
        s0 = s1 = net.stem(x, training=True)
        for cell, alpha in zip(net.cells, copies):
            rows = tf.unstack(tf.nn.softmax(alpha, axis=-1))
            ew = {darts.GROUPS[cell.desc.cell_type]: [tf.unstack(r) for r in rows]}
            s0, s1 = s1, cell(s0, s1, edge_weights=ew, training=True)
        split_logits = net.classifier(net.pool(s1))
        split_loss = loss_fn(split_logits, y)
        logits = net(x, training=True)
        loss = loss_fn(logits, y)
    np.testing.assert_allclose(split_logits.numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
    per_cell = tape.gradient(split_loss, copies)
    shared = dict(zip(sorted(net.alpha_vars), tape.gradient(loss, net.alphas)))
    del tape
    c0, c1, c2 = (g.numpy() for g in per_cell)
    for contribution in (c0, c2):
        assert np.linalg.norm(contribution) > 0.05 * np.linalg.norm(c0 + c2)
    np.testing.assert_allclose(shared["normal"].numpy(), c0 + c2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(shared["reduction"].numpy(), c1, rtol=1e-4, atol=1e-7)


# 6. Finalisation -----------------------------------------------------------------------------------------

def test_finalize_keeps_best_non_none_edges_and_ops():
    desc = supernet_desc(cells=1, nodes=3)
    assert desc.alpha_groups["normal"].num_edges == 2 + 3 + 4
    original = pb.ModelDesc()
    original.CopyFrom(desc)
    #        none  skip  sep   avg
    alphas = np.array([
        [10.0, 1.0, 0.0, 0.0],   # n0 e0: `none` dominates -> still kept (2 edges only), as skip_connect
        [0.0, 0.0, 2.0, 0.0],    # n0 e1: sep_conv_3x3
        [3.0, 0.0, 2.5, 0.0],    # n1 e0: `none` largest, but sep_conv_3x3 (0.355) is the node's best
        [0.0, 0.0, 0.0, 0.0],    # n1 e1: 0.25 -> dropped
        [0.0, 0.0, 0.0, 0.2],    # n1 e2: avg_pool_3x3 (0.289)
        [0.0, 0.0, 0.0, 0.5],    # n2 e0: 0.355 -> dropped
        [0.0, 0.0, 1.0, 0.0],    # n2 e1: 0.475, tie with e2 and e3 -> kept (edge order)
        [0.0, 0.0, 1.0, 0.0],    # n2 e2: tie -> kept
        [0.0, 0.0, 1.0, 0.0],    # n2 e3: tie -> dropped (later edge)
    ], np.float32)
    final = darts.finalize(desc, {"normal": alphas}, edges_per_node=2)

    got = [[(list(e.inputs), e.op.name) for e in node.edges] for node in final.cells[0].nodes]
    assert got == [
        [([0], "skip_connect"), ([1], "sep_conv_3x3")],
        [([0], "sep_conv_3x3"), ([2], "avg_pool_3x3")],
        [([1], "sep_conv_3x3"), ([2], "sep_conv_3x3")],
    ]
    # The kept op is the supernet's candidate (ids, channels, stride), with no mixed/none anywhere.
    for n, node in enumerate(final.cells[0].nodes):
        for e in node.edges:
            assert e.op.id == f"c0.n{n}.e{e.inputs[0]}.{e.op.name}"
            assert e.op.in_channels == e.op.out_channels == 4 and e.op.stride == 1
            assert not e.op.candidates and not e.op.alpha_group
    ops = [e.op.name for c in final.cells for n in c.nodes for e in n.edges]
    assert "mixed" not in ops and "none" not in ops
    assert len(final.alpha_groups) == 0
    assert desc == original  # finalize does not modify its input

    # `none` with the largest alpha on every edge is never chosen.
    only_none = np.zeros_like(alphas)
    only_none[:, 0] = 8.0
    only_none[:, 1:] = np.random.default_rng(0).standard_normal((9, 3))
    final2 = darts.finalize(desc, {"normal": only_none}, edges_per_node=2)
    ops2 = [e.op.name for n in final2.cells[0].nodes for e in n.edges]
    assert len(ops2) == 6 and "none" not in ops2 and "mixed" not in ops2

    # The final descriptor compiles to a plain network.
    net = compiler.compile_model(final)
    assert net.alphas == []
    out = net(np.zeros((2, 6, 6, 1), np.float32), training=False)
    assert tuple(out.shape) == (2, 3)


def test_finalisation_is_the_ops_protocol_plain_edges_are_required():
    """A node keeps its required (plain) edges plus its best-ranked mixed ones: finalisation asks each op
    class (OpLayer.finalize_edge), never tests a name."""
    from tfnas.ops import registry
    from tfnas.search import finalize

    desc = supernet_desc(cells=1, nodes=2)
    fixed = desc.cells[0].nodes[1].edges.add(inputs=[0])  # a hand-placed edge beside node 1's mixed ones
    fixed.op.CopyFrom(pb.OpDesc(name="skip_connect", id="c0.n1.fixed", in_channels=4, out_channels=4, stride=1))
    alphas = np.zeros((5, 4), np.float32)
    alphas[:, 2] = np.arange(5)  # sep_conv_3x3 ever stronger down the rows
    final = finalize.finalize(desc, {"normal": alphas}, edges_per_node=1)
    node1 = [(list(e.inputs), e.op.id) for e in final.cells[0].nodes[1].edges]
    assert node1 == [([2], "c0.n1.e2.sep_conv_3x3"), ([0], "c0.n1.fixed")]  # edge order kept
    assert registry.op_class("skip_connect").finalize_edge(fixed, {}) == (fixed, None)
    edge, rank = registry.op_class("mixed").finalize_edge(desc.cells[0].nodes[0].edges[1],
                                                          {"normal": alphas_lib.softmax(alphas)})
    op = edge.op
    assert list(edge.inputs) == [1] and op.name == "sep_conv_3x3" and rank == pytest.approx(np.exp(1) / (np.exp(1) + 3))
    assert op.rank == pytest.approx(rank)  # stored as float32


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_the_skip_cap_keeps_at_most_that_many_skips_and_two_edges_per_node(cap):
    desc = supernet_desc(cells=1, nodes=4)
    rng = np.random.default_rng(cap)
    alphas = rng.normal(0.0, 0.1, (14, 4))
    alphas[:, 1] += 2.0 + rng.uniform(0.0, 1.0, 14)   # skip_connect strongest on every edge: a collapse
    plain = darts.finalize(desc, {"normal": alphas}, edges_per_node=2)
    assert sum(e.op.name == "skip_connect" for n in plain.cells[0].nodes for e in n.edges) == 8
    capped = darts.finalize(desc, {"normal": alphas}, edges_per_node=2, max_skip_connect=cap)
    names = [[e.op.name for e in n.edges] for n in capped.cells[0].nodes]
    assert all(len(node) == 2 for node in names)
    assert sum(name == "skip_connect" for node in names for name in node) == cap
    assert all(name in ("skip_connect", "sep_conv_3x3") for node in names for name in node)  # parametric
    # The skips kept are the strongest of all the skips the uncapped cell kept.
    kept = sorted((r for r, _ in darts.kept_skips(capped, desc)), reverse=True)
    assert kept == sorted((r for r, _ in darts.kept_skips(plain, desc)), reverse=True)[:cap]
    assert darts.counts(capped) == {"normal/skip_connect": cap, "normal/parameter_free": cap}


def test_beta_regularisation_ramps_up_and_adds_its_gradient_to_the_alpha_step():
    search = make_search()
    beta = BilevelSearch(search.net, search.weight_opt, search.alpha_opt, search.weight_cfg, search.alpha_cfg,
                         beta_regularization=5.0, epochs=4, steps_per_epoch=10)
    assert float(beta.beta_weight()) == 0.0                       # epoch 0: the plain DARTS loss
    beta.alpha_opt.iterations.assign(25)
    assert float(beta.beta_weight()) == pytest.approx(5.0 * 2 / 4)  # epoch 2 of 4
    alphas = search.net.alphas
    with tf.GradientTape() as tape:
        term = beta.beta_term(alphas)
    rows = np.concatenate([np.asarray(a.numpy(), np.float64) for a in alphas])
    expected = np.log(np.exp(rows).sum(-1)).mean()
    assert float(term) == pytest.approx(expected, rel=1e-6)
    # d/d alpha of mean(logsumexp) is softmax / number of edges: it lifts no operation over another.
    for g, a in zip(tape.gradient(term, alphas), alphas):
        np.testing.assert_allclose(g.numpy(), darts_softmax(a.numpy()) / len(rows), rtol=1e-5)


def darts_softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("order", [1, 2])
def test_warm_up_epochs_train_the_weights_alone(order):
    """During the warm-up the alphas and their optimiser stay as they were, the weights train, and the
    validation batch still gives its figures; the first step after it is an alpha step."""
    search = make_search(order=order)
    warm = BilevelSearch(search.net, search.weight_opt, search.alpha_opt, search.weight_cfg, search.alpha_cfg,
                         order=order, epochs=2, steps_per_epoch=2, warmup_epochs=1)
    step = tf.function(warm.train_step)
    xt, yt, xv, yv = batches()
    alphas, weights = values(search.net.alphas), values(search.net.weights_only)
    for _ in range(2):
        logs = step(((xt, yt), (xv, yv)))
    assert all(np.array_equal(a, b) for a, b in zip(values(search.net.alphas), alphas))
    assert int(warm.alpha_opt.iterations) == 0 and int(warm.weight_opt.iterations) == 2
    assert not all(np.array_equal(a, b) for a, b in zip(values(search.net.weights_only), weights))
    assert np.isfinite(float(logs["val_loss"])) and 0 <= float(logs["val_accuracy"]) <= 1
    step(((xt, yt), (xv, yv)))
    assert int(warm.alpha_opt.iterations) == 1
    assert not any(np.array_equal(a, b) for a, b in zip(values(search.net.alphas), alphas))
