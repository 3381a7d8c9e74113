"""Resuming after a real kill -9: each process sends itself SIGKILL at a named point (tfnas.faults), is run
again without the fault, and must end bit-identical to an uninterrupted run with the same seed."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfnas import checkpoints, cli, rundir

PETRIDISH = """\
seed: 5
deterministic: true
data:
  max_train_examples: 320
  search_train_fraction: 0.8
search:
  algorithm: PETRIDISH
  macro: {channels: 4, cells: 3, nodes: 1, stem_multiplier: 2, reduction_cells: [1], project_output: true}
  trainer: {epochs: 2, batch_size: 16, max_steps_per_epoch: 2, checkpoint_every_steps: 1}
  petridish:
    n_search_iter: 1
    primitives: [skip_connect, sep_conv_3x3, max_pool_3x3]
    pre_train: {epochs: 2, batch_size: 16, max_steps_per_epoch: 2}
"""
PRE, ARCH, OUTER = (checkpoints.petridish_key(1, "pretrain"), checkpoints.petridish_key(1, "archtrain"),
                    checkpoints.PETRIDISH)
# The seed's eight termination points (seed 000, "Checkpointing search").
EIGHT = [f"{OUTER}:before", f"{PRE}:before", f"{PRE}:during", f"{PRE}:after", f"{ARCH}:before", f"{ARCH}:during",
         f"{ARCH}:after", f"{OUTER}:after"]


def tfnas(*args, fault=None, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TFNAS_FAULT", None)
    if fault:
        env["TFNAS_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "tfnas.cli", *args, "-q"], capture_output=True, text=True, env=env,
                          timeout=timeout)


def weights_of(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(prefix))
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert np.array_equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def petridish(tmp_path_factory):
    """The configuration and one uninterrupted search."""
    root = tmp_path_factory.mktemp("petridish")
    cfg = root / "petridish.yaml"
    cfg.write_text(PETRIDISH)
    done = tfnas("search", "--config", str(cfg), "--out", str(root / "whole"))
    assert done.returncode == 0, done.stderr
    return cfg, root / "whole"


def assert_same_search(run, whole):
    for name in (rundir.FINAL_DESC, rundir.GALLERY_TSV, rundir.GALLERY_STATE):
        assert (run / name).read_bytes() == (whole / name).read_bytes(), name
    assert_same_weights(run / rundir.WEIGHTS, whole / rundir.WEIGHTS)


@pytest.mark.parametrize("point", EIGHT)
def test_petridish_killed_at_each_of_the_eight_points_resumes_bit_identical(tmp_path, petridish, point):
    cfg, whole = petridish
    killed = tfnas("search", "--config", str(cfg), "--out", str(tmp_path / "run"), fault=point)
    assert killed.returncode == -9, killed.stderr                 # SIGKILL: no handler ran, nothing flushed
    assert not (tmp_path / "run" / rundir.FINAL_DESC).exists()
    resumed = tfnas("search", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_search(tmp_path / "run", whole)


def test_a_truncated_newest_checkpoint_falls_back_with_a_warning_and_ends_the_same(tmp_path, petridish):
    cfg, whole = petridish
    run = tmp_path / "run"
    assert tfnas("search", "--config", str(cfg), "--out", str(run), fault=f"{ARCH}:during").returncode == -9
    loop = checkpoints.loop_dir(run, ARCH)
    newest = max(loop.glob("ckpt-*.index"), key=lambda p: int(p.name.split(".")[0].split("-")[1]))
    data = next(loop.glob(f"{newest.name[:-len('.index')]}.data-*"))
    data.write_bytes(data.read_bytes()[:7])                      # a write cut short
    resumed = tfnas("search", "--config", str(cfg), "--out", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert f"warning: {loop / newest.name[:-len('.index')]}: unreadable checkpoint" in resumed.stderr
    assert_same_search(run, whole)


def test_a_changed_setting_is_refused_by_name_and_restart_starts_over(tmp_path, petridish):
    cfg, whole = petridish
    run = tmp_path / "run"
    assert tfnas("search", "--config", str(cfg), "--out", str(run), fault=f"{PRE}:during").returncode == -9
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    changed = CliRunner().invoke(cli.main, ["search", "--config", str(cfg), "--out", str(run), "-q",
                                            "--set", "search.petridish.l1=0.01"])
    assert changed.exit_code == 2
    assert "search.petridish.l1: 0.001 there, 0.01 here" in changed.output and "--restart" in changed.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before   # nothing touched
    restarted = tfnas("search", "--config", str(cfg), "--out", str(run), "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.startswith(f"--restart: removing {run}: checkpoints/, config.yaml")
    assert_same_search(run, whole)                                # from scratch, the same result


DARTS = """\
seed: 2
deterministic: true
data: {max_train_examples: 320}
search:
  macro: {channels: 4, cells: 3, nodes: 2, stem_multiplier: 2}
  trainer: {epochs: 2, batch_size: 16, max_steps_per_epoch: 3}
  darts: {primitives: [none, skip_connect, sep_conv_3x3, max_pool_3x3], warmup_epochs: 0}
"""


def test_a_darts_search_killed_mid_epoch_resumes_bit_identical(tmp_path):
    """(A random search killed inside a trial: tests/test_random.py.)"""
    cfg = tmp_path / "search.yaml"
    cfg.write_text(DARTS)
    assert tfnas("search", "--config", str(cfg), "--out", str(tmp_path / "whole")).returncode == 0
    killed = tfnas("search", "--config", str(cfg), "--out", str(tmp_path / "run"), fault=f"{checkpoints.SEARCH}:during")
    assert killed.returncode == -9 and checkpoints.latest_state(tmp_path / "run", checkpoints.SEARCH).epoch == 1
    resumed = tfnas("search", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    for name in (rundir.FINAL_DESC, rundir.SUPERNET_DESC):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert_same_weights(tmp_path / "run" / rundir.WEIGHTS, tmp_path / "whole" / rundir.WEIGHTS)


def test_tfnas_run_killed_during_evaluation_resumes_bit_identical(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(DARTS.replace("epochs: 2,", "epochs: 1,") + """\
eval:
  macro: {channels: 4, cells: 2}
  trainer: {epochs: 2, batch_size: 16, max_steps_per_epoch: 2}
""")
    assert tfnas("run", "--config", str(cfg), "--out", str(tmp_path / "whole")).returncode == 0
    killed = tfnas("run", "--config", str(cfg), "--out", str(tmp_path / "run"), fault=f"{checkpoints.EVAL}:during")
    assert killed.returncode == -9 and (tmp_path / "run" / "search" / rundir.FINAL_DESC).exists()
    resumed = tfnas("run", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "run" / "eval" / rundir.WEIGHTS, tmp_path / "whole" / "eval" / rundir.WEIGHTS)
    assert (tmp_path / "run" / "export" / "tfnas" / "1" / "saved_model.pb").exists()


def test_a_diverging_search_stops_with_the_step_and_keeps_its_last_checkpoint(tmp_path):
    result = CliRunner().invoke(cli.main, [
        "search", "--out", str(tmp_path / "run"), "-q", "--set", "search.macro.cells=3", "--set", "search.macro.nodes=2",
        "--set", "search.macro.channels=4", "--set", "search.trainer.max_steps_per_epoch=4",
        "--set", "search.trainer.epochs=3", "--set", "search.darts.warmup_epochs=0",
        "--set", "search.trainer.checkpoint_every_steps=1", "--set", "search.trainer.optimizer.learning_rate=1e30",
        "--set", "search.trainer.optimizer.gradient_clip_norm=0", "--set", "search.darts.primitives=[none,sep_conv_3x3]"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert re.match(r"error: search: (val_)?loss is (nan|inf|-inf) at epoch 1, step \d \(step \d of the loop\); "
                    r"training stopped, the last good checkpoint, \S+ckpt-\d, is kept$", line), line
    assert len(line.splitlines()) == 1
    loop = checkpoints.loop_dir(tmp_path / "run", checkpoints.SEARCH)
    kept = sorted(loop.glob("ckpt-*.index"))
    assert kept and not checkpoints.is_done(tmp_path / "run", checkpoints.SEARCH)
    reader = tf.train.load_checkpoint(str(kept[-1])[: -len(".index")])  # restorable, and finite
    assert all(np.isfinite(reader.get_tensor(n)).all() for n, _ in tf.train.list_variables(str(kept[-1])[:-6])
               if reader.get_variable_to_dtype_map()[n].is_floating)
