"""The compiler reproduces the reference networks exactly and applies the options as seed 000 says."""
import numpy as np
import pytest
import tensorflow as tf

from tfnas import architectures, compiler, genotypes, macro
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts


def test_darts_v2_evaluation_network_has_the_reference_parameter_count():
    model = compiler.compile_model(architectures.resolve("DARTS_V2", channels=36, cells=20), compiler.EVAL_OPTIONS)
    # The original DARTS code reports 3.349342 M parameters (auxiliary head excluded) for this network.
    assert compiler.count_params(model, include_aux=False) == 3_349_342
    assert compiler.count_params(model, include_aux=True) == 3_825_768
    assert compiler.multiply_adds(model) == 528_359_040


def test_darts_search_network_has_the_reference_parameter_count():
    model = compiler.compile_model(architectures.resolve("darts-supernet", channels=16, cells=8))
    # The original search network (model_search.Network(16, 10, 8)) reports 1.930618 M parameters.
    assert compiler.count_params(model) == 1_930_618
    assert [a.shape for a in model.alphas] == [(14, 8), (14, 8)]
    assert not set(map(id, model.alphas)) & set(map(id, model.weights_only))


def small(options, aux=True):
    m = config_pb2.MacroConfig(channels=4, cells=3, stem_multiplier=3, aux_tower=aux, aux_weight=0.4)
    return compiler.compile_model(genotypes.to_desc(genotypes.lookup("DARTS_V2"), m, [8, 8, 1], 10), options)


def test_search_options_have_no_aux_no_drop_path_no_affine():
    search, evaluation = small(compiler.SEARCH_OPTIONS), small(compiler.EVAL_OPTIONS)
    assert search.aux == [] and len(evaluation.aux) == 1
    assert search.drop_rate is None and evaluation.drop_rate is not None
    names = lambda m: {v.path.split("/")[-1] for v in m.trainable_variables}  # noqa: E731
    assert not any(n.endswith("_gamma") for n in names(search) - {"bn_gamma"} if "stem" not in n)
    cell_gammas = [v for v in search.trainable_variables if v.path.endswith("_gamma") and "stem" not in v.path]
    assert cell_gammas == []
    assert any(v.path.endswith("_gamma") and "c0" in v.path for v in evaluation.trainable_variables)
    # The stem's BatchNorm is affine in both (as in the reference code).
    assert any("stem" in v.path and v.path.endswith("_gamma") for v in search.trainable_variables)


def test_forward_shapes_and_aux_only_when_training():
    model = small(compiler.EVAL_OPTIONS)
    x = tf.random.normal([3, 8, 8, 1])
    logits, aux = model.forward(x, training=True)
    assert logits.shape == (3, 10) and [a.shape for a in aux] == [(3, 10)]
    logits, aux = model.forward(x, training=False)
    assert aux == [] and model(x).shape == (3, 10)


def test_drop_path_never_on_identity_edges():
    model = small(compiler.EVAL_OPTIONS)
    for cell in model.cells:
        for node_edges in cell.edges:
            for _, layer, use_drop_path in node_edges:
                assert use_drop_path == (not getattr(layer, "is_identity", False))
    flagged = [u for c in small(compiler.SEARCH_OPTIONS).cells for e in c.edges for _, _, u in e]
    assert not any(flagged)


def test_drop_path_changes_training_output_only():
    model = small(compiler.EVAL_OPTIONS, aux=False)
    x = tf.random.normal([16, 8, 8, 1])
    model.drop_rate.assign(0.0)
    a = model(x, training=False)
    model.drop_rate.assign(0.5)
    b = model(x, training=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c1, c2 = model(x, training=True), model(x, training=True)
    assert not np.allclose(c1, c2)


def test_supernet_edges_and_shared_alphas():
    m = config_pb2.MacroConfig(channels=4, cells=5, nodes=4, stem_multiplier=3)
    desc = darts.build_supernet(macro.build_macro(m, [8, 8, 1], 10), darts.PRIMITIVES, seed=3)
    for cell in desc.cells:
        assert [len(n.edges) for n in cell.nodes] == [2, 3, 4, 5]
        for n, node in enumerate(cell.nodes):
            for edge in node.edges:
                reduction = cell.cell_type == 2
                assert edge.op.stride == (2 if reduction and edge.inputs[0] < 2 else 1)
                assert all(c.stride == edge.op.stride for c in edge.op.candidates)
    values = np.asarray(desc.alpha_groups["normal"].values)
    assert values.shape == (14 * 8,) and 0 < np.abs(values).max() < 1e-2
    model = compiler.compile_model(desc)
    assert model(tf.random.normal([2, 8, 8, 1]), training=True).shape == (2, 10)


def per_edge_twin(grouped):
    """The same supernet compiled edge by edge, holding exactly the grouped network's weights."""
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.group_mixed_edges = False
    twin = compiler.compile_model(grouped.desc, options)
    by_path = {v.path: v for v in twin.variables}
    for v in grouped.variables:  # stem, preprocessing, head, alphas: same paths
        if v.path in by_path:
            by_path[v.path].assign(v)
    for gc, tc in zip(grouped.cells, twin.cells):
        assert all(not edges for edges in gc.edges)  # every supernet edge is in a group
        for state, groups in gc.groups.items():
            for layer, _, targets in groups:
                edges = [e for node, _ in targets for inputs, e, _ in tc.edges[node] if inputs == [state]]
                assert len(edges) == layer.copies == len(targets)
                for e, edge in enumerate(edges):
                    for (_, gl, gbn), (_, el, ebn) in zip(layer.branches, edge.branches):
                        assert gl.desc.name == el.desc.name
                        for gv, ev in zip(gl.weights, el.weights):
                            axis = 2 if len(gv.shape) == 4 and gv.shape[3] == 1 else len(gv.shape) - 1
                            ev.assign(tf.split(gv, gl.out_copies, axis=axis)[e if gl.out_copies > 1 else 0])
                        if gbn is not None:  # the pools' shared statistics
                            ebn.moving_mean.assign(gbn.moving_mean)
                            ebn.moving_var.assign(gbn.moving_var)
    return twin


@pytest.mark.parametrize("lead_apart", [False, True])
def test_grouped_mixed_edges_compute_the_per_edge_supernet(lead_apart):
    """Grouping the mixed edges by input state changes the graph, not the mathematics: same parameters,
    multiply-adds, logits, alpha and weight gradients, and moving statistics."""
    m = config_pb2.MacroConfig(channels=4, cells=3, nodes=3, stem_multiplier=3)
    desc = darts.build_supernet(macro.build_macro(m, [8, 8, 3], 5), darts.PRIMITIVES, seed=3)
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.lead_edges_apart = lead_apart
    import keras
    keras.utils.set_random_seed(0)
    grouped = compiler.compile_model(desc, options)
    twin = per_edge_twin(grouped)
    assert compiler.count_params(grouped) == compiler.count_params(twin) == 47_225
    assert compiler.multiply_adds(grouped) == compiler.multiply_adds(twin)
    # 3 cells x 3 nodes: 9 mixed edges per cell, grouped by the 4 states that feed a later node; with the
    # lead edges apart, states 0-2 each have a one-edge group into their first node besides the rest.
    layers = [[len(t) for state in sorted(c.groups) for _, _, t in c.groups[state]] for c in grouped.cells]
    assert layers == [[1, 2, 1, 2, 1, 1, 1]] * 3 if lead_apart else [[3, 3, 2, 1]] * 3
    assert len(grouped.trainable_variables) < len(twin.trainable_variables) * (0.8 if lead_apart else 0.5)
    x, y = tf.constant(np.random.default_rng(1).normal(size=(4, 8, 8, 3)), tf.float32), tf.constant([0, 1, 2, 3])

    def grads(net):
        with tf.GradientTape() as tape:
            logits = net(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return logits, tape.gradient(loss, net.alphas + [net.stem.w, net.cells[1].pre0.w])

    (lg, gg), (lt, gt) = grads(grouped), grads(twin)
    np.testing.assert_allclose(lg, lt, atol=1e-6)
    for a, b in zip(gg, gt):  # summation order differs: float32 round-off only
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grouped(x), twin(x), atol=1e-6)  # moving statistics moved alike


def test_a_compiled_network_has_every_weight_before_its_first_call(tmp_path):
    """Weights are created from the descriptor while the layers are built, so a checkpoint can be
    restored into a network that has never run (restoring into an unbuilt Keras model is silently
    wrong), and calling it creates nothing more."""
    from tfnas import checkpoints
    a, b = small(compiler.SEARCH_OPTIONS), small(compiler.SEARCH_OPTIONS)
    assert a.built and all(layer.built for layer in a._flatten_layers())
    before = [v.path for v in a.variables]
    checkpoints.save_weights(a, tmp_path / "w")
    checkpoints.load_weights(b, tmp_path / "w")  # b has never been called
    a(tf.zeros([2, 8, 8, 1]), training=True)
    assert [v.path for v in a.variables] == before


def test_weights_round_trip_every_variable_by_name(tmp_path):
    """Keras 3 keeps sub-layers in lists that tf.train.Checkpoint(model=...) does not follow; the
    name-keyed checkpoints must hold every variable, BatchNorm statistics included."""
    from tfnas import checkpoints
    a, b = small(compiler.EVAL_OPTIONS), small(compiler.EVAL_OPTIONS)
    x = tf.random.normal([4, 8, 8, 1])
    a(x, training=True)  # moves BatchNorm statistics away from their initial values
    for v in a.trainable_variables:
        v.assign(v + 0.5)
    checkpoints.save_weights(a, tmp_path / "w")
    checkpoints.load_weights(b, tmp_path / "w")
    assert len(a.variables) == len(b.variables) > 100
    for va, vb in zip(a.variables, b.variables):
        assert va.path == vb.path
        np.testing.assert_array_equal(va.numpy(), vb.numpy(), err_msg=va.path)
    np.testing.assert_allclose(a(x), b(x), atol=1e-6)


def test_multiply_adds_follow_each_state_resolution():
    """In a reduction cell, edges from the inputs run at the input size and edges between nodes at half."""
    m = config_pb2.MacroConfig(channels=4, cells=1, nodes=2, stem_multiplier=1, reduction_cells=[0])
    desc = macro.build_macro(m, [8, 8, 3], 10)
    genotypes.fill_cell(desc.cells[0], [[("skip_connect", 1), ("skip_connect", 0)],
                                        [("sep_conv_3x3", 2), ("skip_connect", 0)]], [2, 3])
    model = compiler.compile_model(macro.rewire(desc), compiler.EVAL_OPTIONS)
    c = 8  # reduction doubles the channels
    stem = 8 * 8 * 9 * 3 * 4
    pre = 2 * 8 * 8 * 4 * c                         # two 1x1 preprocessing convs at 8x8
    skips = 3 * 4 * 4 * (c * c // 2) * 2            # three stride-2 skips = FactorizedReduce at 4x4 output
    sep = 2 * 4 * 4 * (9 * c + c * c)               # sep_conv_3x3 between nodes, at 4x4
    head = 2 * c * 10
    assert compiler.multiply_adds(model) == stem + pre + skips + sep + head


@pytest.mark.parametrize("search", [False, True])
def test_pointwise_matmul_computes_the_conv2d_network(search):
    """CompilerOptions.pointwise_matmul changes kernels, not the mathematics: an evaluation network (1x1
    preprocessing, separable and dilated convs) and a search network (grouped copies, which keep Conv2D)
    give Conv2D's logits and weight gradients with MatMuls in the traced step."""
    import keras
    if search:
        desc = darts.build_supernet(macro.build_macro(config_pb2.MacroConfig(channels=4, cells=3, nodes=3,
                                                                             stem_multiplier=3), [8, 8, 1], 5),
                                    darts.PRIMITIVES, seed=3)
        base = compiler.SEARCH_OPTIONS
    else:
        desc, base = small(compiler.EVAL_OPTIONS).desc, compiler.EVAL_OPTIONS
    nets = []
    for matmul in (False, True):
        options = pb.CompilerOptions()
        options.CopyFrom(base)
        options.pointwise_matmul = matmul
        keras.utils.set_random_seed(0)
        nets.append(compiler.compile_model(desc, options))
    for a, b in zip(nets[0].variables, nets[1].variables):
        assert a.path == b.path
        b.assign(a)
    x, y = tf.constant(np.random.default_rng(1).normal(size=(4, 8, 8, 1)), tf.float32), tf.constant([0, 1, 2, 3])

    def step(net):
        @tf.function
        def fn(x):
            with tf.GradientTape() as tape:
                logits = net.forward(x, training=True)[0]
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            return logits, tape.gradient(loss, net.weights_only)
        return fn

    fns = [step(net) for net in nets]
    matmuls = [sum(op.type == "MatMul" for op in fn.get_concrete_function(x).graph.get_operations()) for fn in fns]
    assert matmuls[1] > matmuls[0]
    if not search:
        nets[0].drop_rate.assign(0.0), nets[1].drop_rate.assign(0.0)
    (la, ga), (lb, gb) = fns[0](x), fns[1](x)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
    assert [g is None for g in ga] == [g is None for g in gb] and sum(g is not None for g in ga) > 20
    for a, b in zip(ga, gb):  # summation order differs: float32 round-off only
        if a is not None:  # the auxiliary tower's weights: not in this loss
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
