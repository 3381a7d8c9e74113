"""Op ids name their weights: in grouped and ungrouped compiles, in a supernet and the network finalised
from it, and through expansion (tfnas.weights, genotypes.expand)."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # private: TF has no public switch-off

from tfnas import checkpoints, compiler, descriptors, genotypes, macro, ops, weights
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts

PRIMITIVES = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
COLUMN = {name: i for i, name in enumerate(PRIMITIVES)}


@pytest.fixture(autouse=True)
def deterministic():
    """Determinism for these tests only: left on, it makes unseeded random ops of later tests raise."""
    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was:
        tf_config.disable_op_determinism()


def options(**changes) -> pb.CompilerOptions:
    o = pb.CompilerOptions()
    o.CopyFrom(compiler.SEARCH_OPTIONS)
    for name, value in changes.items():
        setattr(o, name, value)
    return o


GROUPED, UNGROUPED = compiler.SEARCH_OPTIONS, options(group_mixed_edges=False)
LEAD_APART = options(lead_edges_apart=True)


def supernet(cells=3, channels=4, seed=0) -> pb.ModelDesc:
    """4 channels, 2 nodes; 3 cells: c0 normal, c1 and c2 reduction (c2's s0 a FactorizedReduce)."""
    m = config_pb2.MacroConfig(channels=channels, cells=cells, nodes=2, stem_multiplier=3)
    return darts.build_supernet(macro.build_macro(m, [8, 8, 3], 10), PRIMITIVES, alpha_init_scale=1.0, seed=seed)


def images(seed=1, n=4):
    return tf.constant(np.random.default_rng(seed).normal(size=(n, 8, 8, 3)), tf.float32)


def is_pool_bn(v) -> bool:
    return "_pool_3x3_bn_" in v.path


def randomise(model, seed=0, pool_statistics=True):
    """Random weights and BatchNorm statistics (alphas left as the descriptor gave them), then two training
    passes, which move every moving statistic. `pool_statistics=False` leaves the pool BatchNorms of mixed
    ops at their start, so that in a per-edge network the edges reading one state keep equal statistics
    (as training gives them: one input, one set of statistics), which a grouped network holds once."""
    rng = np.random.default_rng(seed)
    alphas = {id(a) for a in model.alphas}
    for v in model.variables:
        if id(v) in alphas or (not pool_statistics and is_pool_bn(v)):
            continue
        value = rng.normal(size=v.shape).astype(np.float32)
        v.assign(np.abs(value) + 0.5 if v.path.endswith("_var") else 0.3 * value)
    for seed in (11, 12):
        model(images(seed), training=True)


def assert_same_outputs(a, b, atol=1e-5):
    x = images()
    np.testing.assert_allclose(a(x), b(x), atol=atol)
    np.testing.assert_allclose(a(x, training=True), b(x, training=True), atol=atol)
    np.testing.assert_allclose(a(x), b(x), atol=atol)  # the training pass moved the statistics alike


def covered(model) -> dict:
    """Per variable path, how many times op_weights references each of its entries (alphas excluded)."""
    counts = {id(v): np.zeros(v.shape, np.int32) for v in model.variables}
    for refs in weights.op_weights(model).values():
        for ref in refs.values():
            counts[id(ref.variable)][ref.index] += 1
    return {v.path: counts[id(v)] for v in model.variables if id(v) not in {id(a) for a in model.alphas}}


# --- the layout of copies -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,stride", [("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_3x3", 1),
                                         ("dil_conv_3x3", 2), ("factorized_reduce", 2), ("skip_connect", 2)])
def test_copy_j_of_a_batched_op_is_the_single_op_with_its_slices(name, stride):
    """The layers' own copy layout: copy j's slices, loaded into a one-copy op, compute copy j's output,
    and the k copies' slices tile every variable exactly once."""
    k, c = 3, 4
    desc = pb.OpDesc(name=name, id="op", in_channels=c, out_channels=c, stride=stride)
    batched = ops.create(desc, GROUPED, copies=k)
    rng = np.random.default_rng(0)
    for v in batched.weights:
        value = rng.normal(size=v.shape).astype(np.float32)
        v.assign(np.abs(value) + 0.5 if v.name.endswith("_var") else value)
    counts = {id(v): np.zeros(v.shape, np.int32) for v in batched.weights}
    singles = []
    for j in range(k):
        single = ops.create(pb.OpDesc(name=name, id=f"op{j}", in_channels=c, out_channels=c, stride=stride), GROUPED)
        mine, theirs = weights.layer_weights(batched, j), weights.layer_weights(single)
        assert sorted(mine) == sorted(theirs) and mine
        for weight, ref in mine.items():
            assert ref.shape == theirs[weight].shape, weight
            theirs[weight].variable.assign(ref.read())
            counts[id(ref.variable)][ref.index] += 1
        singles.append(single)
    assert all((n == 1).all() for n in counts.values())
    x = tf.constant(rng.normal(size=(2, 8, 8, c)), tf.float32)
    for training in (False, True):
        outs = tf.split(batched(x, training=training), k, axis=-1)
        for j, single in enumerate(singles):
            np.testing.assert_allclose(outs[j], single(x, training=training), atol=1e-5, err_msg=f"copy {j}")


def test_every_variable_of_a_grouped_supernet_belongs_to_an_op():
    """Each weighted candidate's variable is tiled by its k edges exactly once; only a grouped pool's
    BatchNorm is shared, once per edge of its group; the per-edge compile has the same ids and shapes."""
    grouped, per_edge = (compiler.compile_model(supernet(), o) for o in (GROUPED, UNGROUPED))
    for path, counts in covered(grouped).items():
        if "_pool_3x3_bn_" in path:
            assert counts.min() == counts.max() >= 1, path
        else:
            assert (counts == 1).all(), path
    assert all((counts == 1).all() for counts in covered(per_edge).values())
    shapes = lambda m: {i: {n: r.shape for n, r in w.items()} for i, w in weights.op_weights(m).items()}  # noqa: E731
    assert shapes(grouped) == shapes(per_edge)
    ids = [op.id for op in weights._descriptor_ops(grouped.desc)]
    assert list(weights.op_weights(grouped)) == ids  # every op of the descriptor, in its order
    refs = weights.op_weights(grouped)
    assert str(refs["c0.n1.e0.sep_conv_3x3"]["pw1"]) == "c0.from0.sep_conv_3x3/pw1[axis 3: 4:8]"  # copy 1 of 2
    assert refs["c0.n0.e0.max_pool_3x3"]["bn_mean"].variable is refs["c0.n1.e0.max_pool_3x3"]["bn_mean"].variable
    assert refs["c0.n0.e0.skip_connect"] == {} and sorted(refs["c1.n0.e0.skip_connect"]) == [
        "bn_mean", "bn_var", "conv1", "conv2"]  # stride 2: a FactorizedReduce


# --- grouped <-> per-edge -------------------------------------------------------------------------------

@pytest.mark.parametrize("source_options,target_options", [(GROUPED, UNGROUPED), (UNGROUPED, GROUPED),
                                                           (LEAD_APART, UNGROUPED), (GROUPED, LEAD_APART)],
                         ids=["grouped->per-edge", "per-edge->grouped", "lead-apart->per-edge",
                              "grouped->lead-apart"])
def test_a_supernet_restores_across_edge_grouping(source_options, target_options):
    desc = supernet()
    source, target = compiler.compile_model(desc, source_options), compiler.compile_model(desc, target_options)
    randomise(source, pool_statistics=source_options.group_mixed_edges)
    report = weights.restore(target, source)
    assert not report.new and not report.missing and not report.reshaped and not report.conflicts
    assert len(report.restored) == sum(len(w) for w in weights.op_weights(target).values())
    assert_same_outputs(source, target)


def test_per_edge_pool_statistics_a_grouped_network_cannot_hold_are_reported():
    """A grouped pool's BatchNorm is its edges' one set of statistics: per-edge values that differ (never
    after training, where they see one input) are reported as conflicts; the last edge's are kept."""
    desc = supernet()
    per_edge, grouped = compiler.compile_model(desc, UNGROUPED), compiler.compile_model(desc, GROUPED)
    randomise(per_edge)  # independent random statistics per edge
    report = weights.restore(grouped, per_edge)
    assert report.conflicts and all("_pool_3x3/bn_" in k for k in report.conflicts)
    assert "conflicts (" in report.summary()


# --- supernet -> finalised network ----------------------------------------------------------------------

def one_hot_alphas(choices: dict) -> dict:
    """Alphas whose softmax is (to float32) one-hot: per alpha group, per edge row, the chosen candidate."""
    big = 60.0
    alphas = {}
    for group, names in choices.items():
        a = np.full((len(names), len(PRIMITIVES)), -big, np.float32)
        for row, name in enumerate(names):
            a[row, COLUMN[name]] = big
        alphas[group] = a
    return alphas


def test_a_finalised_network_finds_every_weight_in_the_grouped_supernet_and_computes_what_it_did():
    """With alphas whose softmax is one-hot, the supernet computes exactly its finalised network (the
    dropped edge of each second node is `none`); no pool is chosen (a finalised pool has no BatchNorm)."""
    # Rows: node 0 reads states 0, 1; node 1 reads 0, 1, 2 (its `none` edge is dropped).
    alphas = one_hot_alphas({"normal": ["sep_conv_3x3", "dil_conv_3x3", "sep_conv_3x3", "none", "skip_connect"],
                             "reduction": ["skip_connect", "sep_conv_3x3", "dil_conv_3x3", "sep_conv_3x3", "none"]})
    desc = darts.with_alphas(supernet(), alphas)
    final = darts.finalize(desc, alphas)
    grouped = compiler.compile_model(desc, GROUPED)
    randomise(grouped)
    finalised = compiler.compile_model(final, GROUPED)
    names = {e.op.id: e.op.name for c in final.cells for n in c.nodes for e in n.edges}
    assert names["c0.n1.e2.skip_connect"] == "skip_connect" and names["c1.n0.e0.skip_connect"] == "skip_connect"
    report = weights.restore(finalised, grouped)  # strict: every weight found
    assert len(report.restored) == sum(len(w) for w in weights.op_weights(finalised).values())
    assert all((counts == 1).all() for counts in covered(finalised).values())  # ... and every variable
    paths = {v.path for v in grouped.variables}
    assert sum(v.path in paths for v in finalised.variables) < len(finalised.variables) // 2  # not by path
    assert_same_outputs(grouped, finalised)
    # The chosen sep_conv of c0's node 1 reads s0: copy 1 of the group `c0.from0` (node 0's edge is copy 0).
    edge = weights.op_weights(finalised)["c0.n1.e0.sep_conv_3x3"]["dw2"]
    assert str(weights.op_weights(grouped)["c0.n1.e0.sep_conv_3x3"]["dw2"]) == "c0.from0.sep_conv_3x3/dw2[axis 2: 4:8]"
    np.testing.assert_array_equal(edge.read(), weights.op_weights(grouped)["c0.n1.e0.sep_conv_3x3"]["dw2"].read())


# --- expansion ------------------------------------------------------------------------------------------

def finalised_desc() -> pb.ModelDesc:
    desc = supernet(seed=3)
    alphas = {g: np.asarray(desc.alpha_groups[g].values).reshape(desc.alpha_groups[g].num_edges, -1)
              for g in desc.alpha_groups}
    return darts.finalize(desc, alphas)


def edge_ops(cell):
    return [e.op for n in cell.nodes for e in n.edges]


def test_expansion_keeps_op_ids_and_ranks():
    final = finalised_desc()
    big = genotypes.expand(final, config_pb2.MacroConfig(channels=8, cells=6, nodes=2, stem_multiplier=3))
    descriptors.validate(big)
    templates = {pb.NORMAL: final.cells[0], pb.REDUCTION: final.cells[1]}
    assert [(op.id, op.rank) for op in edge_ops(big.cells[0])] == [(op.id, op.rank) for op in edge_ops(final.cells[0])]
    assert all(0 < op.rank < 1 for op in edge_ops(final.cells[0]))
    for cell in big.cells:
        template = templates[cell.cell_type]
        expected = [(cell.id + op.id[len(template.id):], op.rank, op.name, list(e.inputs))
                    for op, e in zip(edge_ops(template), (e for n in template.nodes for e in n.edges))]
        assert [(op.id, op.rank, op.name, list(e.inputs)) for op, e in
                zip(edge_ops(cell), (e for n in cell.nodes for e in n.edges))] == expected
        assert all(op.id.endswith("." + op.name) and op.in_channels == cell.channels for op in edge_ops(cell))
    ids = [op.id for cell in big.cells for op in edge_ops(cell)]
    assert len(ids) == len(set(ids))
    # Laid out at the searched width (cells c0 and c1 as in the search), the template cells' ops find all
    # their weights in the searched network under their ids.
    same_width = genotypes.expand(final, config_pb2.MacroConfig(channels=4, cells=5, nodes=2, stem_multiplier=3))
    searched, laid_out = compiler.compile_model(final, GROUPED), compiler.compile_model(same_width, GROUPED)
    report = weights.restore(laid_out, searched, strict=False)
    theirs = weights.op_weights(searched)
    expected = {f"{op.id}/{n}" for op in edge_ops(final.cells[0]) + edge_ops(final.cells[1]) for n in theirs[op.id]}
    assert expected and expected <= set(report.restored)


def test_expansion_keeps_multi_input_edges():
    final = finalised_desc()
    for cell in final.cells:  # an edge reading two states
        cell.nodes[1].edges.add(op=macro.make_op(cell, 1, 2, "skip_connect", suffix=".pair"), inputs=[2, 0])
    descriptors.validate(final)
    big = genotypes.expand(final, config_pb2.MacroConfig(channels=8, cells=6, nodes=2, stem_multiplier=3))
    descriptors.validate(big)
    for cell in big.cells:
        pair = cell.nodes[1].edges[-1]
        assert list(pair.inputs) == [2, 0] and pair.op.id == f"{cell.id}.n1.e2.pair"
    with pytest.raises(descriptors.DescriptorError, match="not a finalised"):
        genotypes.from_desc(final)  # a genotype holds single-input edges only


def test_published_genotypes_still_compile_and_keep_their_ids():
    m = config_pb2.MacroConfig(channels=4, cells=3, stem_multiplier=3)
    desc = genotypes.to_desc(genotypes.lookup("DARTS_V2"), m, [8, 8, 3], 10)
    assert edge_ops(desc.cells[0])[0].id == "c0.n0.e0.0"
    for o in (compiler.EVAL_OPTIONS, GROUPED):
        net = compiler.compile_model(desc, o)
        assert net(images(n=2)).shape == (2, 10) and weights.op_weights(net)


# --- partial restores and checkpoints -------------------------------------------------------------------

def test_partial_restore_reports_new_missing_and_reshaped():
    base = compiler.compile_model(supernet(), GROUPED)
    deeper = compiler.compile_model(supernet(cells=4), GROUPED)  # c3: one more (normal) cell
    wider = compiler.compile_model(supernet(channels=6), GROUPED)
    c3 = lambda keys: [k for k in keys if k.startswith("c3.")]  # noqa: E731

    report = weights.restore(deeper, base, strict=False)
    assert report.new and report.new == c3(report.new) and not report.missing and not report.reshaped
    assert report.new[0] == "c3.s0/conv1"  # c3 follows a reduction: its s0 is a FactorizedReduce
    assert len(report.restored) == sum(len(w) for w in weights.op_weights(base).values())
    with pytest.raises(ValueError, match=r"^restore: weight c3\.s0/conv1 is not in the source \(and \d+ more\)$"):
        weights.restore(deeper, base)

    report = weights.restore(base, deeper, strict=False)
    assert report.missing and report.missing == c3(report.missing) and not report.new and not report.reshaped
    assert set(report.missing) == set(c3(f"{i}/{n}" for i, w in weights.op_weights(deeper).items() for n in w))

    before = wider.stem.w.numpy()
    report = weights.restore(wider, base, strict=False)
    assert report.restored == ["logits/bias"] and not report.new and not report.missing
    assert ("stem/kernel", (3, 3, 3, 18), (3, 3, 3, 12)) in report.reshaped
    np.testing.assert_array_equal(wider.stem.w.numpy(), before)  # reshaped: left alone
    assert report.summary().startswith("restored 1 weights; ") and "reshaped (stem/kernel" in report.summary()
    with pytest.raises(ValueError, match=r"stem/kernel has shape \(3, 3, 3, 12\) in the source"):
        weights.restore(wider, base)


def test_restore_from_a_checkpoint_with_its_descriptor(tmp_path):
    desc = supernet()
    source = compiler.compile_model(desc, GROUPED)
    randomise(source)
    prefix = checkpoints.save_weights(source, tmp_path / "w")
    per_edge = compiler.compile_model(desc, UNGROUPED)
    report = weights.restore(per_edge, weights.CheckpointSource(desc, prefix, GROUPED))
    assert not report.new and not report.missing
    assert_same_outputs(source, per_edge)
    with pytest.raises(ValueError, match="pass the options it was saved with"):
        weights.restore(per_edge, (desc, prefix))  # compiled with the model's options: not grouped
    # A finalised network from the search checkpoint, without compiling the search network by hand.
    final = darts.finalize(desc, {g: a.numpy() for g, a in source.alpha_vars.items()})
    finalised = compiler.compile_model(final, GROUPED)
    weights.restore(finalised, (desc, prefix, GROUPED))
