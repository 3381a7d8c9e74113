"""PetriDish: the candidate op leaves its parent unchanged, cells grow node by node with exact warm starts,
finalisation keeps the planted op, the gallery, the whole command line, and bad input."""
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfnas import cli, compiler, config, descriptors, macro, rundir, weights
from tfnas.proto import config_pb2, search_pb2
from tfnas.search import petridish, runner
from tfnas.search.petridish import gallery as gallery_lib
from tfnas.search.petridish.search import warm_start
from tfnas.tasks import far_correlation_task
from tfnas.train import optim
from tfnas.train.supervised import SupervisedTrainer

MACRO = config_pb2.MacroConfig(channels=4, cells=3, nodes=1, stem_multiplier=2, reduction_cells=[1],
                               project_output=True)
PRIMITIVES = ["skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3"]
SGD = config_pb2.OptimizerConfig(kind=config_pb2.OptimizerConfig.SGD, learning_rate=0.05, momentum=0.9,
                                 schedule=config_pb2.CONSTANT, weight_decay=3e-4, gradient_clip_norm=5.0)
TINY = ["search.algorithm=PETRIDISH", "search.macro.project_output=true", "search.macro.cells=3",
        "search.macro.nodes=1", "search.macro.channels=4", "search.macro.stem_multiplier=2",
        "search.macro.reduction_cells=[1]", "search.trainer.epochs=1", "search.trainer.max_steps_per_epoch=3",
        "search.trainer.batch_size=16", "search.petridish.pre_train.epochs=1",
        "search.petridish.pre_train.max_steps_per_epoch=2", "search.petridish.pre_train.batch_size=16",
        "search.petridish.n_search_iter=2", f"search.petridish.primitives=[{','.join(PRIMITIVES)}]",
        "deterministic=true", "seed=3"]


def seed_desc(empty: bool = False):
    return petridish.seed_model(macro.build_macro(MACRO, [8, 8, 1], 10), skip=not empty)


def batch(seed: int, n: int = 8):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.normal(size=(n, 8, 8, 1)).astype(np.float32)),
            tf.constant(rng.integers(0, 10, n).astype(np.int64)))


def train_a_little(net, steps: int = 3, l1: float = 0.0):
    """A few eager SGD steps: weights, moving statistics and (if any) candidate weights all move."""
    trainer = SupervisedTrainer(net, optim.make_optimizer(SGD, 1, steps, "opt"), SGD, l1=l1)
    for i in range(steps):
        trainer.train_step(batch(100 + i))


def loss_of(net, data, training=True):
    x, y = data
    logits = net(x, training=training, update_statistics=False)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def test_the_candidate_op_leaves_a_trained_parent_unchanged_and_learns_from_its_loss():
    tf.keras.utils.set_random_seed(0)
    parent = compiler.compile_model(seed_desc())
    train_a_little(parent)
    child = compiler.compile_model(petridish.grow(seed_desc(), 1, PRIMITIVES, keep=2))
    warm_start(child, parent, grow=True)
    x, y = batch(7)
    # x - sg(x) is exactly zero for finite x, so the outputs agree exactly; 1e-6 allows for nothing else.
    for training in (False, True):
        a = parent(x, training=training, update_statistics=False)
        b = child(x, training=training, update_statistics=False)
        assert float(tf.reduce_max(tf.abs(a - b))) <= 1e-6
    with tf.GradientTape(persistent=True) as tape:
        child_loss, parent_loss = loss_of(child, (x, y)), loss_of(parent, (x, y))
    alpha_grads = tape.gradient(child_loss, child.alphas)
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in alpha_grads)
    cand = weights.op_weights(child)["c2.n0.e1.sep_conv_3x3"]["pw1"].variable
    assert float(tf.reduce_sum(tf.abs(tape.gradient(child_loss, cand)))) > 0
    # The parent's weights learn exactly what they learned without the candidates (stop-gradient inputs).
    theirs = weights.op_weights(parent)
    for op_id, refs in weights.op_weights(child).items():
        for name, ref in refs.items():
            if op_id in theirs and ref.variable.trainable:
                g_child = tape.gradient(child_loss, ref.variable)
                g_parent = tape.gradient(parent_loss, theirs[op_id][name].variable)
                assert (g_child is None) == (g_parent is None), f"{op_id}/{name}"  # c2.s0: read by no parent op
                if g_child is not None:
                    np.testing.assert_allclose(g_child.numpy(), g_parent.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("empty", [False, True])
def test_cells_grow_a_node_per_iteration_with_every_parent_weight_restored_bit_for_bit(empty):
    tf.keras.utils.set_random_seed(1)
    desc, parent = seed_desc(empty), None
    if not empty:
        parent = compiler.compile_model(desc)
        train_a_little(parent)
    x, _ = batch(9)
    for i in range(1, 4):
        grown = petridish.grow(desc, i, PRIMITIVES, keep=2, seed=i)
        assert [len(c.nodes) for c in grown.cells] == [i] * 3
        assert all(len(c.concat) == i and c.post_op.in_channels == i * c.channels for c in grown.cells)
        child = compiler.compile_model(grown)
        report = warm_start(child, parent, grow=True)
        if parent is not None:
            have = weights.op_weights(child)
            for op_id, refs in weights.op_weights(parent).items():
                for name, ref in refs.items():
                    old, new = ref.read(), have[op_id][name].read()
                    if old.shape == new.shape:
                        assert np.array_equal(old, new), f"{op_id}/{name}"
                    else:  # a projection that reads the new node: its old part in front, bit for bit
                        assert np.array_equal(new[:, :, :old.shape[2]], old), f"{op_id}/{name}"
            assert {k for k, _, _ in report.grown} == ({f"c{c}.out/kernel" for c in range(3)} if i > 1 else set())
            a, b = parent(x, training=False), child(x, training=False)
            assert float(tf.reduce_max(tf.abs(a - b))) <= 1e-6  # the grown parts change nothing
        train_a_little(child, l1=1e-3)  # the arch-training of the iteration, in miniature
        desc = petridish.finalize(grown, {g: v.numpy() for g, v in child.alpha_vars.items()})
        final = compiler.compile_model(desc)
        weights.restore(final, child, strict=False)
        trained = weights.op_weights(child)
        for cell in desc.cells:
            joins = [e.op for node in cell.nodes for e in node.edges if e.op.name == "petridish_join"]
            assert len(joins) == i and all(len(j.children) == 2 for j in joins)  # earlier joins are kept
            for child_op in joins[-1].children:  # the kept candidates keep their trained weights
                for name, ref in weights.op_weights(final)[child_op.id].items():
                    assert np.array_equal(ref.read(), trained[child_op.id][name].read()), child_op.id
        assert not desc.alpha_groups
        parent = final


def test_pre_training_needs_every_node_filled_or_every_node_empty():
    assert petridish.needs_pre_training(seed_desc(), 1)
    assert not petridish.needs_pre_training(seed_desc(empty=True), 1)
    mixed = seed_desc(empty=True)
    cell = mixed.cells[1]
    cell.nodes[0].edges.add(op=macro.make_op(cell, 0, 1, "skip_connect"), inputs=[1])
    with pytest.raises(petridish.PetridishError) as err:
        petridish.needs_pre_training(mixed, 2)
    assert str(err.value) == ("PetriDish iteration 2: cannot pre-train a model whose nodes are partly empty: "
                              "c0.n0, c2.n0 have no edges while c1.n0 have")


def test_an_empty_seed_skips_pre_training_of_the_first_iteration(tmp_path):
    cfg = config.load_config(None, TINY + ["search.petridish.empty_seed=true"])
    final = runner.search(cfg, tmp_path, verbose=0)
    loops = tmp_path / "checkpoints" / "search" / "petridish"
    assert not (loops / "iter-1" / "pretrain").exists() and (loops / "iter-1" / "archtrain" / "done").exists()
    assert (loops / "iter-2" / "pretrain" / "done").exists()
    assert [len(c.nodes) for c in final.cells] == [2, 2, 2]
    rows = (tmp_path / rundir.GALLERY_TSV).read_text().splitlines()[1:]
    assert [r.split("\t")[1:3] for r in rows] == [["1", "search"], ["2", "pretrain"], ["2", "search"]]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_planted_operation_is_among_the_kept_candidates(tmp_path, seed):
    """The far-correlation task of the DARTS tests: only dil_conv_5x5 reaches far enough, so the node that
    needs it must keep it."""
    cfg = config.load_config(None, [
        "search.algorithm=PETRIDISH", "search.macro.project_output=true", "search.macro.cells=2",
        "search.macro.nodes=1", "search.macro.channels=4", "search.macro.stem_multiplier=2",
        "search.petridish.n_search_iter=1", "search.petridish.pre_train.epochs=1", "search.trainer.epochs=4",
        "search.trainer.batch_size=32", "search.petridish.primitives=[skip_connect,sep_conv_3x3,dil_conv_5x5]",
        "search.petridish.kept_candidates=2", "data.search_train_fraction=0.8", f"seed={seed}"])
    final = runner.search(cfg, tmp_path, verbose=0, dataset=far_correlation_task(seed))
    kept = [c.name for cell in final.cells for e in cell.nodes[0].edges for c in e.op.children]
    assert "dil_conv_5x5" in kept, kept
    rows = [r.split("\t") for r in (tmp_path / rundir.GALLERY_TSV).read_text().splitlines()[1:]]
    assert float(rows[-1][6]) < float(rows[0][6])  # the grown network errs less than the seed


def test_search_writes_its_gallery_and_resumes_to_the_same_result(tmp_path):
    tf.config.experimental.enable_op_determinism()
    cfg = config.load_config(None, TINY)
    whole = runner.search(cfg, tmp_path / "whole", verbose=0)
    assert runner.search(cfg, tmp_path / "cut", verbose=0, stop_after_steps=2) is None  # inside pre-training 1
    assert runner.search(cfg, tmp_path / "cut", verbose=0) == whole
    for name in (rundir.GALLERY_TSV, rundir.GALLERY_STATE, rundir.FINAL_DESC):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name

    out = tmp_path / "whole"
    rows = [r.split("\t") for r in (out / rundir.GALLERY_TSV).read_text().splitlines()]
    assert rows[0] == list(gallery_lib.TSV_COLUMNS)
    assert [r[1:3] for r in rows[1:]] == [["1", "pretrain"], ["1", "search"], ["2", "pretrain"], ["2", "search"]]
    gallery = descriptors.from_bytes((out / rundir.GALLERY_STATE).read_bytes(), search_pb2.Gallery(), "text")
    hull = gallery_lib.lower_hull([(e.multiply_adds, e.val_error) for e in gallery.entries])
    assert [int(r[7]) for r in rows[1:]] == [int(k in hull) for k in range(4)]
    for entry in gallery.entries:
        desc = descriptors.load_model_desc(out / rundir.GALLERY_DIR / f"{entry.index}.pbtxt")
        assert all(len(c.nodes) == entry.nodes for c in desc.cells)
    assert (out / rundir.GALLERY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = descriptors.load_model_desc(out / rundir.GALLERY_DIR / "3.pbtxt")  # pick: LAST
    assert whole.source == f"{last.source}, gallery #3"
    last.source = whole.source
    assert last == whole
    steps = {}
    for event_file in (out / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for v in event.summary.value:
                steps.setdefault(v.tag, []).append(event.step)
    assert steps["petridish/search/val_error"] == [1, 2] and steps["petridish/pretrain/val_error"] == [1, 2]

    knee = config.load_config(None, TINY + ["search.petridish.pick=HULL_KNEE"])
    picked = runner.search(knee, tmp_path / "knee", verbose=0)
    index = gallery_lib.knee([(e.multiply_adds, e.val_error) for e in gallery.entries], hull)
    assert picked.source.endswith(f"gallery #{index}")


def test_run_searches_evaluates_and_exports_a_petridish_cell(tmp_path):
    tiny = TINY + ["eval.macro.cells=4", "eval.macro.channels=8", "eval.trainer.epochs=1",
                   "eval.trainer.max_steps_per_epoch=2"]
    args = ["run", "--out", str(tmp_path / "run"), "-q", *[a for kv in tiny for a in ("--set", kv)]]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "found: normal: 2 <- skip_connect (1) + petridish_join[" in result.output
    for path in ("search/gallery.tsv", "eval/final_weights.index", "export/tfnas/1/saved_model.pb"):
        assert (tmp_path / "run" / path).exists(), path
    evaluated = descriptors.load_model_desc(tmp_path / "run" / "eval" / rundir.MODEL_DESC)
    assert len(evaluated.cells) == 4 and evaluated.cells[0].channels == 8
    assert all(c.post_op.name == "project_channels" and len(c.nodes) == 2 for c in evaluated.cells)
    final = str(tmp_path / "run" / "search" / rundir.FINAL_DESC)
    described = CliRunner().invoke(cli.main, ["describe", final, "--cells", "6"])
    assert described.exit_code == 0 and "petridish_join[" in described.output and "genotype" not in described.output
    drawn = CliRunner().invoke(cli.main, ["draw", final, "-o", str(tmp_path / "cells.png")])
    assert drawn.exit_code == 0 and (tmp_path / "cells.png").stat().st_size > 1000


@pytest.mark.parametrize("line, key", [("    n_search_iter: 0", "search.petridish.n_search_iter: must be >= 1"),
                                       ("    l1: -0.5", "search.petridish.l1: must be >= 0")])
def test_bad_petridish_settings_are_one_line_and_write_nothing(tmp_path, line, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  algorithm: PETRIDISH\n  macro:\n    project_output: true\n  petridish:\n" + line + "\n")
    result = CliRunner().invoke(cli.main, ["search", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: {bad}:6: {key}")
    assert not (tmp_path / "r").exists()


def test_a_petridish_descriptor_reading_a_later_state_is_refused(tmp_path):
    desc = petridish.finalize(petridish.grow(seed_desc(), 1, PRIMITIVES, keep=2), {
        "normal": np.ones((2, 4)), "reduction": np.ones((2, 4))})
    desc.cells[0].nodes[0].edges[1].inputs.append(3)  # node 0 reading node 1: a later state
    path = tmp_path / "later.pbtxt"
    path.write_text(descriptors.to_bytes(desc, "text").decode())
    for args in (["describe", str(path)], ["eval", "--desc", str(path), "--out", str(tmp_path / "e")]):
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: {path}: cell 0 (c0), node 0, edge 1: reads state 3, but node 0 can "
                                         "read only states 0..1 (0, 1: cell inputs; 2 + i: earlier node i)")
    assert not (tmp_path / "e").exists()
