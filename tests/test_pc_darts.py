"""PC-DARTS (Xu et al., ICLR 2020) as options of the DARTS package: partial channel connections and edge
normalisation. The mixed op against its definition, the edge weights against their per-node softmax,
finalisation by the product of the two weights, the full-width final cell, and the search end to end."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnas import alphas as alphas_lib, compiler, config, descriptors, macro, ops
from tfnas.compiler import SEARCH_OPTIONS
from tfnas.config import ConfigError
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts, finalize, runner
from test_ops import candidates_weighted_sum

CANDIDATES = list(darts.PRIMITIVES)
C, K = 8, 4


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def mixed_desc(stride, partial, width=C):
    desc = pb.OpDesc(name="mixed", id="m", stride=stride, in_channels=width, out_channels=width,
                     partial_channels=partial)
    for n in CANDIDATES:
        desc.candidates.add(name=n, id=f"m.{n}", stride=stride, in_channels=width // max(partial, 1),
                            out_channels=width // max(partial, 1))
    return desc


def shuffled(y, groups):
    """The reference channel shuffle: channel g * (C / groups) + j goes to j * groups + g."""
    y = np.asarray(y)
    c = y.shape[-1]
    out = np.empty_like(y)
    for g in range(groups):
        for j in range(c // groups):
            out[..., j * groups + g] = y[..., g * (c // groups) + j]
    return out


def test_one_group_is_the_darts_mixed_op_bit_for_bit():
    x = tf.random.normal([4, 8, 8, C])
    w = tf.nn.softmax(tf.random.normal([2, len(CANDIDATES)]))
    plain = ops.create(mixed_desc(1, 0), SEARCH_OPTIONS, copies=2)
    one = ops.create(mixed_desc(1, 1), SEARCH_OPTIONS, copies=2)
    for a, b in zip(one.weights, plain.weights):
        a.assign(b)
    for y1, y0 in zip(one(x, weights=w, training=True), plain(x, weights=w, training=True)):
        assert np.array_equal(y1.numpy(), y0.numpy())


@pytest.mark.parametrize("stride,copies", [(1, 1), (1, 3), (2, 2)])
def test_partial_channels_mix_a_quarter_and_shuffle_in_the_rest(stride, copies):
    """Per edge: shuffle(concat(sum_c w_c * op_c(x[:C/K]), x[C/K:] (max-pooled 2x2 at stride 2)), K), with
    the alpha gradients of that definition; the candidates are built at C/K channels."""
    mixed = ops.create(mixed_desc(stride, K), SEARCH_OPTIONS, copies=copies)
    assert all(layer.desc.in_channels == C // K for _, layer, _ in mixed.branches)
    x = tf.random.normal([4, 8, 8, C])
    alphas = tf.Variable(tf.random.normal([copies, len(CANDIDATES)]))
    part, rest = x[..., :C // K], x[..., C // K:]
    if stride == 2:
        rest = tf.nn.max_pool2d(rest, 2, 2, "VALID")  # PyTorch's MaxPool2d(2, 2) on an even size
    perm = [g * (C // K) + j for j in range(C // K) for g in range(K)]  # output channel -> input channel
    assert np.array_equal(shuffled(np.arange(C), K), perm)
    with tf.GradientTape(persistent=True) as tape:
        w = tf.nn.softmax(alphas)
        ys = mixed(x, weights=w, training=True)
        loss = tf.add_n([tf.reduce_sum(tf.sin(y) * tf.range(C, dtype=tf.float32)) for y in ys])
        expected = [tf.gather(tf.concat([total, rest], axis=-1), perm, axis=-1)
                    for total in candidates_weighted_sum(mixed, part, w, copies, C // K)]
        loss_ref = tf.add_n([tf.reduce_sum(tf.sin(y) * tf.range(C, dtype=tf.float32)) for y in expected])
    assert len(ys) == copies and ys[0].shape == (4, 8 // stride, 8 // stride, C)
    for y, ref in zip(ys, expected):
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(loss, alphas), tape.gradient(loss_ref, alphas), rtol=1e-3, atol=1e-5)


def supernet(partial=K, edge_normalization=True, cells=3, nodes=2):
    m = config_pb2.MacroConfig(channels=C, cells=cells, nodes=nodes, stem_multiplier=1)
    return darts.build_supernet(macro.build_macro(m, [8, 8, 1], 3), CANDIDATES, 0.5, seed=0,
                                partial_channels=partial, edge_normalization=edge_normalization)


def test_edge_weights_are_a_softmax_over_each_nodes_edges():
    desc = supernet()
    spec = desc.alpha_groups["normal_edges"]
    assert spec.weighting == pb.AlphaGroupDesc.NODE_SOFTMAX and list(spec.node_edges) == [2, 3]
    assert list(spec.primitives) == [darts.EDGE_WEIGHT] and spec.num_edges == 5
    # The candidate alphas are those of a search without edge weights (drawn first, same seed).
    assert desc.alpha_groups["normal"].values == supernet(edge_normalization=False).alpha_groups["normal"].values
    net = compiler.compile_model(desc)
    tf_weights = net.edge_weights()
    for group in ("normal_edges", "reduction_edges"):
        values = net.alpha_vars[group].numpy()
        ref = np.concatenate([np.exp(values[:2]) / np.exp(values[:2]).sum(), np.exp(values[2:]) / np.exp(values[2:]).sum()])
        np.testing.assert_allclose(tf_weights[group].numpy(), ref, rtol=1e-6)
        np.testing.assert_allclose(alphas_lib.group_weights(desc.alpha_groups[group], values), ref, rtol=1e-6)


@pytest.mark.parametrize("betas", [[0.0, -1e9], [0.3, -0.4]])
def test_an_edge_weight_scales_the_whole_edge_bypass_included(betas):
    """Node 0 of a cell is the sum of its two edges, each edge's whole output (candidates and bypass) times
    its edge weight: the cell folds the weight into the candidates' rows and the op scales the bypass, which
    must equal scaling the unscaled edge outputs."""
    desc = supernet(cells=1, nodes=1)
    net = compiler.compile_model(desc)
    x = tf.random.normal([2, 8, 8, 1])
    edge_group = desc.cells[0].nodes[0].edges[0].op.edge_group
    net.alpha_vars[edge_group].assign([[b] for b in betas])
    cell = net.cells[0]
    s = net.stem(x, training=False)
    weights = net.edge_weights()
    node = cell(s, s, edge_weights=weights, training=False)
    states = [cell.pre0(s, training=False), cell.pre1(s, training=False)]
    expected = 0.0
    for state in (0, 1):
        (layer, group, targets), = cell.groups[state]
        (_, row), = targets
        unscaled = layer(states[state], weights=weights[group], rows=(row,), training=False)[0]
        expected += weights[edge_group][row, 0] * unscaled
    np.testing.assert_allclose(node.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_finalisation_ranks_edges_by_candidate_weight_times_edge_weight():
    desc = supernet(cells=1, nodes=2)
    a = np.zeros((5, len(CANDIDATES)))
    sep = CANDIDATES.index("sep_conv_3x3")
    a[:, sep] = [2.0, 1.0, 3.0, 2.0, 0.5]  # node 1 (rows 2-4, states 0-2): row 2 strongest alone ...
    edges = np.array([[0.0], [0.0], [-3.0], [0.0], [0.0]])  # ... but its edge weight is small
    group = desc.cells[0].nodes[0].edges[0].op.alpha_group
    plain = finalize.finalize(supernet(cells=1, nodes=2, edge_normalization=False), {group: a}, edges_per_node=2)
    assert [list(e.inputs) for e in plain.cells[0].nodes[1].edges] == [[0], [1]]
    final = finalize.finalize(desc, {group: a, darts.edges_group(group): edges}, edges_per_node=2)
    node1 = final.cells[0].nodes[1]
    assert [list(e.inputs) for e in node1.edges] == [[1], [2]]  # row 2's product loses to row 4's
    kept = {e.inputs[0]: e for e in node1.edges}
    row_weights = alphas_lib.softmax(a)
    edge_weights = alphas_lib.node_softmax(edges, [2, 3])
    assert kept[2].op.rank == pytest.approx(row_weights[4, sep] * edge_weights[4, 0], rel=1e-6)
    for node in final.cells[0].nodes:  # the chosen operations come back at the cell's full width
        for e in node.edges:
            assert e.op.in_channels == C and e.op.out_channels == C and e.op.name == "sep_conv_3x3"
    descriptors.validate(final)
    compiler.compile_model(final, compiler.EVAL_OPTIONS)


def test_descriptor_and_configuration_errors_name_the_field():
    desc = supernet(cells=1, nodes=1)
    desc.cells[0].nodes[0].edges[0].op.candidates[1].in_channels = 3
    with pytest.raises(descriptors.DescriptorError, match="node 0, edge 0: partial_channels 4 needs"):
        descriptors.validate(desc)
    desc = supernet(cells=1, nodes=1)
    desc.cells[0].nodes[0].edges[0].op.edge_group = "normal"
    with pytest.raises(descriptors.DescriptorError, match="edge_group 'normal' is not an alpha group with "
                                                         "weighting NODE_SOFTMAX"):
        descriptors.validate(desc)
    with pytest.raises(ConfigError) as err:
        config.load_config(None, ["search.darts.partial_channels=3"])
    line = config.DEFAULT_CONFIG_PATH.read_text().splitlines().index("    channels: 8") + 1  # search.macro's
    assert str(err.value) == (f"{config.DEFAULT_CONFIG_PATH}:{line}: search.macro.channels: must be a multiple of "
                              "search.darts.partial_channels (3), got 8")


def test_a_pc_darts_search_moves_both_kinds_of_weight_and_resumes(tmp_path):
    tf.config.experimental.enable_op_determinism()
    sets = ["search.trainer.epochs=2", "search.darts.warmup_epochs=0", "search.trainer.max_steps_per_epoch=3",
            "search.macro.cells=3",
            "search.darts.partial_channels=4", "search.darts.edge_normalization=true",
            "search.darts.alpha_optimizer.learning_rate=0.05", "search.darts.alpha_optimizer.weight_decay=0"]
    cfg = config.load_config(None, sets)
    whole = runner.search(cfg, tmp_path / "whole", verbose=0)
    assert runner.search(cfg, tmp_path / "cut", verbose=0, stop_after_steps=4) is None
    assert runner.search(cfg, tmp_path / "cut", verbose=0) == whole
    trained = descriptors.load_model_desc(tmp_path / "whole" / "supernet.pbtxt")
    for group in ("normal", "reduction", "normal_edges", "reduction_edges"):  # they start within +-0.005
        assert np.abs(trained.alpha_groups[group].values).max() > 0.02, group
    for cell in whole.cells:
        for node in cell.nodes:
            assert len(node.edges) == 2 and all(e.op.in_channels == cell.channels for e in node.edges)
