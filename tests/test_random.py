"""Random search: sampling from (seed, trial) alone, determinism, exact resume after kill -9, bad input."""
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfnas import checkpoints, cli, config, macro, rundir
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import random as random_lib
from tfnas.search.random import algorithm as random_algorithm

TINY = ["search.algorithm=RANDOM", "search.macro.cells=3", "search.macro.nodes=2", "search.macro.channels=4",
        "search.macro.stem_multiplier=2", "search.random.trials=3", "search.random.epochs=2",
        "search.trainer.max_steps_per_epoch=3", "search.trainer.batch_size=16",
        "search.random.primitives=[none,skip_connect,sep_conv_3x3,max_pool_3x3]", "deterministic=true", "seed=7"]
PRIMITIVES = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"]


def tiny(*extra):
    return config.load_config(None, TINY + list(extra))


def macro_desc(nodes=4):
    m = config.load_config().search.macro
    m.nodes = nodes
    return macro.build_macro(m, [8, 8, 1], 10)


def test_each_node_gets_distinct_inputs_and_no_none():
    for trial in range(20):
        desc = random_lib.sample(macro_desc(), PRIMITIVES, 2, seed=0, trial=trial)
        for cell in desc.cells:
            for n, node in enumerate(cell.nodes):
                inputs = [e.inputs[0] for e in node.edges]
                assert len(inputs) == 2 == len(set(inputs)) and all(0 <= s < 2 + n for s in inputs)
                assert all(e.op.name in PRIMITIVES[1:] for e in node.edges)
        same_type = [c for c in desc.cells if c.cell_type == pb.NORMAL]
        assert all([[(e.op.name, e.inputs[0]) for e in n.edges] for n in c.nodes] ==
                   [[(e.op.name, e.inputs[0]) for e in n.edges] for n in same_type[0].nodes] for c in same_type)


def test_a_trial_depends_on_seed_and_index_alone():
    a = random_lib.sample(macro_desc(), PRIMITIVES, 2, seed=3, trial=5)
    for _ in range(3):  # no state carried between calls or trials
        random_lib.sample(macro_desc(), PRIMITIVES, 2, seed=3, trial=1)
    assert random_lib.sample(macro_desc(), PRIMITIVES, 2, seed=3, trial=5) == a
    others = {random_lib.sample(macro_desc(), PRIMITIVES, 2, seed=s, trial=t).SerializeToString()
              for s, t in ((3, 4), (3, 6), (4, 5))}
    assert a.SerializeToString() not in others and len(others) == 3


def test_same_seed_same_files_other_seed_other_trials(tmp_path):
    tf.config.experimental.enable_op_determinism()
    from tfnas.search import runner
    runner.search(tiny(), tmp_path / "a", verbose=0)
    runner.search(tiny(), tmp_path / "b", verbose=0)
    runner.search(tiny("seed=8"), tmp_path / "c", verbose=0)
    read = lambda d, f: (tmp_path / d / f).read_bytes()  # noqa: E731
    assert read("a", rundir.FINAL_DESC) == read("b", rundir.FINAL_DESC)
    assert read("a", rundir.TRIALS) == read("b", rundir.TRIALS)
    lines = read("a", rundir.TRIALS).decode().splitlines()
    assert lines[0].split("\t") == list(random_algorithm.TSV_COLUMNS) and len(lines) == 4
    genotypes_of = lambda d: [x.split("\t")[-1] for x in read(d, rundir.TRIALS).decode().splitlines()[1:]]  # noqa: E731
    assert genotypes_of("a") != genotypes_of("c")
    # The best trial is the final descriptor, and every run file is there.
    rows = [x.split("\t") for x in lines[1:]]
    best = max(rows, key=lambda r: (float(r[1]), -int(r[0])))
    final = (tmp_path / "a" / rundir.FINAL_DESC).read_text()
    assert final.count("cells {") == 3 and (tmp_path / "a" / rundir.FINAL_CELLS).stat().st_size > 1000
    from tfnas import descriptors, genotypes
    assert genotypes.format_genotype(genotypes.from_desc(descriptors.load_model_desc(
        tmp_path / "a" / rundir.FINAL_DESC))) == best[4]
    # TensorBoard: one step per trial.
    steps = set()
    for f in (tmp_path / "a" / rundir.TENSORBOARD).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            if any(v.tag == "trial/val_accuracy" for v in event.summary.value):
                steps.add(event.step)
    assert steps == {1, 2, 3}


def _search_command(out):
    args = [sys.executable, "-m", "tfnas.cli", "search", "--out", str(out), "-q",
            "--set", "search.trainer.checkpoint_every_steps=1"]
    return args + [a for kv in TINY for a in ("--set", kv)]


def test_a_search_killed_inside_a_trial_resumes_to_the_same_result(tmp_path):
    """kill -9 in the middle of trial 1's training (tfnas.faults), then the same command again."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    full = subprocess.run(_search_command(tmp_path / "full"), capture_output=True, text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    killed = subprocess.run(_search_command(cut), capture_output=True, text=True, timeout=600,
                            env=dict(env, TFNAS_FAULT=f"{checkpoints.random_trial_key(1)}:during"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoints.latest_state(cut, checkpoints.random_trial_key(1)) is not None  # it had saved, then died
    assert not checkpoints.is_done(cut, checkpoints.random_trial_key(1))
    assert not (cut / rundir.FINAL_DESC).exists()
    assert (checkpoints.outputs_dir(cut, checkpoints.random_trial_key(0)) / random_algorithm.RESULT_FILE).exists()
    again = subprocess.run(_search_command(cut), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    for name in (rundir.FINAL_DESC, rundir.TRIALS):
        assert (cut / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


@pytest.mark.parametrize("override,message", [
    ("search.algorithm=ENAS", "search.algorithm: expected one of DARTS, RANDOM, PETRIDISH, got 'ENAS'"),
    ("search.random.trials=0", "search.random.trials: must be >= 1, got 0"),
    ("search.random.edges_per_node=3", "search.random.edges_per_node: must be 1 or 2"),
    ("search.random.primitives=[sep_conv_3x3,conv_9x9]", "search.random.primitives: unknown operation 'conv_9x9'"),
])
def test_bad_input_is_one_line_naming_the_file_and_key_and_writes_nothing(tmp_path, override, message):
    path = tmp_path / "bad.yaml"
    key, value = override.split("=")
    section, *rest = key.split(".")
    if rest[0] == "algorithm":
        path.write_text(f"search:\n  algorithm: {value}\n")
    else:
        path.write_text(f"search:\n  algorithm: RANDOM\n  random:\n    {rest[1]}: {value}\n")
    result = CliRunner().invoke(cli.main, ["search", "--config", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    line = 2 if "algorithm" in override else 4  # the line of the key in bad.yaml
    assert result.output.startswith(f"error: {path}:{line}: {message}"), result.output
    assert not (tmp_path / "run").exists()
