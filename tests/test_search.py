"""DARTS search end to end: finds the right op, is deterministic, resumes exactly, writes its run dir."""
import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfnas import alphas, checkpoints, cli, config, descriptors, rundir
from tfnas.search import runner
from tfnas.tasks import far_correlation_task

TINY = ["search.macro.cells=3", "search.macro.nodes=2", "search.macro.channels=4",
        "search.macro.stem_multiplier=2", "search.trainer.epochs=2", "search.trainer.max_steps_per_epoch=3",
        "search.darts.warmup_epochs=0",
        "search.trainer.batch_size=16", "search.darts.primitives=[none,skip_connect,sep_conv_3x3,max_pool_3x3]",
        "deterministic=true", "seed=7"]


def tiny_config(*extra):
    return config.load_config(None, TINY + list(extra))


@pytest.mark.parametrize("seed", [0, 3])
def test_search_ranks_the_only_useful_operation_first(tmp_path, seed):
    primitives = ["none", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]
    cfg = config.load_config(None, [
        "search.macro.cells=2", "search.macro.nodes=1", "search.macro.channels=4", "search.macro.stem_multiplier=2",
        "search.trainer.epochs=8", "search.trainer.batch_size=32", f"search.darts.primitives=[{','.join(primitives)}]",
        "search.darts.alpha_optimizer.learning_rate=0.01", "search.darts.alpha_optimizer.schedule=CONSTANT",
        "search.darts.alpha_optimizer.weight_decay=1e-3", "search.darts.warmup_epochs=0", f"seed={seed}"])
    final = runner.search(cfg, tmp_path, verbose=0, dataset=far_correlation_task(seed))
    arrays = alphas.alpha_arrays(descriptors.load_model_desc(tmp_path / rundir.SUPERNET_DESC))
    weights = alphas.softmax(arrays["normal"])
    # Row 0: the edge that reads the stem features (s0) in both cells.
    non_none = {p: w for p, w in zip(primitives, weights[0]) if p != "none"}
    assert max(non_none, key=non_none.get) == "dil_conv_5x5", weights
    s0_edges = [e for e in final.cells[0].nodes[0].edges if list(e.inputs) == [0]]
    assert s0_edges[0].op.name == "dil_conv_5x5"
    history = [json.loads(line) for line in (tmp_path / "alpha_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 9)) and history[-1]["val_accuracy"] > 0.9



def test_the_default_schedule_moves_the_alphas_after_its_warm_up(tmp_path):
    """The built-in default's alpha schedule, shortened (4 epochs of 8 steps, 1 of warm-up): the alphas
    stay put through the warm-up, then leave uniform (ln 8 = 2.0794 nats) far enough that some operation
    holds twice the uniform weight; the paper's schedule (Adam 3e-4, weight decay 1e-3) left every weight
    within 0.002 of uniform in the default's first 3 epochs (benchmarks/README.md)."""
    cfg = config.load_config(None, ["search.trainer.epochs=4", "search.darts.warmup_epochs=1",
                                    "search.trainer.max_steps_per_epoch=8"])
    runner.search(cfg, tmp_path, verbose=0)
    history = [json.loads(line) for line in (tmp_path / "alpha_history.jsonl").read_text().splitlines()]
    first = {g: np.array(a) for g, a in history[0]["alphas"].items()}
    last = {g: np.array(a) for g, a in history[-1]["alphas"].items()}
    for g in ("normal", "reduction"):
        w0, w = alphas.softmax(first[g]), alphas.softmax(last[g])
        assert np.abs(w0 - 1 / 8).max() < 1e-3, g  # the warm-up epoch took no alpha step
        entropy = float(np.mean(-np.sum(w * np.log(w), axis=-1)))
        assert entropy < np.log(8) - 0.02 and w[:, 1:].max() >= 0.25, (g, entropy, w.max())
    tf.config.experimental.enable_op_determinism()
    runner.search(tiny_config(), tmp_path / "a", verbose=0)
    runner.search(tiny_config(), tmp_path / "b", verbose=0)
    a, b = (tmp_path / "a" / rundir.FINAL_DESC).read_bytes(), (tmp_path / "b" / rundir.FINAL_DESC).read_bytes()
    assert a == b
    assert (tmp_path / "a" / rundir.SUPERNET_DESC).read_bytes() == (tmp_path / "b" / rundir.SUPERNET_DESC).read_bytes()


@pytest.mark.parametrize("stop_after", [2, 3, 4])  # inside epoch 1, at its end, inside epoch 2
def test_interrupted_search_resumes_to_the_same_result(tmp_path, stop_after):
    tf.config.experimental.enable_op_determinism()
    runner.search(tiny_config(), tmp_path / "full", verbose=0)
    assert runner.search(tiny_config(), tmp_path / "cut", verbose=0, stop_after_steps=stop_after) is None
    assert not (tmp_path / "cut" / rundir.FINAL_DESC).exists()
    state = checkpoints.latest_state(tmp_path / "cut", checkpoints.SEARCH)
    assert state.epoch * 3 + state.step == stop_after
    runner.search(tiny_config(), tmp_path / "cut", verbose=0)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert (cut / rundir.FINAL_DESC).read_bytes() == (full / rundir.FINAL_DESC).read_bytes()
    assert (cut / rundir.SUPERNET_DESC).read_bytes() == (full / rundir.SUPERNET_DESC).read_bytes()
    hist = lambda d: [json.loads(x) for x in (d / "alpha_history.jsonl").read_text().splitlines()]  # noqa
    assert [h["epoch"] for h in hist(cut)] == [1, 2]
    for a, b in zip(hist(cut), hist(full)):  # epoch averages too, not only the final state
        assert a["alphas"] == b["alphas"]
        assert {k: a[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")} == \
            {k: b[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}


def test_run_directory_and_tensorboard(tmp_path):
    final = runner.search(tiny_config("search.darts.order=2"), tmp_path, verbose=0)
    for name in ("config.yaml", rundir.FINAL_DESC, rundir.SUPERNET_DESC, "alpha_history.jsonl"):
        assert (tmp_path / name).is_file(), name
    assert config.load_config(tmp_path / "config.yaml") == tiny_config("search.darts.order=2")
    assert all(e.op.name != "mixed" for c in final.cells for n in c.nodes for e in n.edges)
    assert all(len(n.edges) == 2 for c in final.cells for n in c.nodes)
    tags = set()
    for event_file in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    for tag in ("epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy", "epoch/lr",
                "epoch/alpha_lr", "alpha_entropy/normal", "alpha_entropy/reduction", "alphas/normal",
                "alphas/reduction", "cells/finalised", "cells/normal/skip_connect", "cells/reduction/parameter_free"):
        assert tag in tags, tag
    # A finished search is not run again: the same command returns the stored result.
    assert runner.search(tiny_config("search.darts.order=2"), tmp_path, verbose=0) == final


def test_a_run_directory_refuses_another_configuration(tmp_path):
    runner.search(tiny_config(), tmp_path, verbose=0, stop_after_steps=1)
    before = (tmp_path / "config.yaml").read_bytes()
    with pytest.raises(Exception, match="holds a run with another configuration"):
        runner.search(tiny_config("seed=8"), tmp_path, verbose=0)
    assert (tmp_path / "config.yaml").read_bytes() == before


def test_cli_search_prints_the_found_cells(tmp_path):
    result = CliRunner().invoke(cli.main, ["search", "--out", str(tmp_path / "run"), "-q",
                                           *[a for kv in TINY for a in ("--set", kv)]])
    assert result.exit_code == 0, result.output
    assert "normal cell" in result.output and "Genotype(normal=" in result.output
    assert (tmp_path / "run" / "final_cells.png").stat().st_size > 1000


def test_cli_search_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  trainer:\n    epohcs: 3\n")
    result = CliRunner().invoke(cli.main, ["search", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {bad}:3: unknown key 'epohcs' in search.trainer (did you mean 'epochs'?)"]
    assert not (tmp_path / "r").exists()


def test_a_search_that_cannot_load_its_data_fails_fast_and_writes_nothing(tmp_path):
    import time
    start = time.perf_counter()
    result = CliRunner().invoke(cli.main, ["search", "--out", str(tmp_path / "run"), "--set", "data.dataset=mnist",
                                           "--set", f"data.data_dir={tmp_path / 'tfds'}"])
    assert result.exit_code == 2 and result.output.startswith("error: dataset 'mnist' is not prepared")
    assert time.perf_counter() - start < 30 and not (tmp_path / "run").exists()


def test_the_configuration_chooses_the_search_networks_compiler_options():
    cfg = config.load_config()
    assert not runner.search_options(cfg).recompute_depthwise
    cfg.search.darts.lead_edges_apart = cfg.search.darts.recompute_depthwise = True
    options = runner.search_options(cfg)
    assert options.lead_edges_apart and options.recompute_depthwise
    assert options.group_mixed_edges and not options.affine  # compiler.SEARCH_OPTIONS otherwise
