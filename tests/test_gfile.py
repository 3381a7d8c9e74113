"""Run directories, configurations and descriptors named by URL (gs://bucket/run on a TPU), through
tf.io.gfile. TensorFlow's in-memory file system, ram://, stands in for GCS: nothing here touches the
network. ram:// lives as long as the process, so every test writes under a directory of its own."""
import os
import pathlib
import stat
import uuid

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfnas import checkpoints, cli, config, data as data_lib, export, files, rundir
from tfnas.errors import UserError
from tfnas.search import runner

TINY = ["search.macro.cells=3", "search.macro.nodes=2", "search.macro.channels=4",
        "search.macro.stem_multiplier=2", "search.trainer.epochs=2", "search.trainer.max_steps_per_epoch=3",
        "search.darts.warmup_epochs=0",
        "search.trainer.batch_size=16", "search.darts.primitives=[none,skip_connect,sep_conv_3x3,max_pool_3x3]",
        "deterministic=true", "seed=7"]


def ram(name: str) -> files.UrlPath:
    return files.path(f"ram://tfnas-test/{name}-{uuid.uuid4().hex[:8]}")


def test_url_paths_keep_their_scheme():
    p = files.path("gs://bucket") / "a" / "b"
    assert isinstance(p, files.UrlPath) and str(p) == os.fspath(p) == "gs://bucket/a/b"
    assert files.path("gs://bucket/a/b/") == p and files.path("gs://bucket//a/./b") == p
    assert p.name == "b" and str(p.parent) == "gs://bucket/a" and str(p.parent.parent.parent) == "gs://bucket"
    assert (p / "final_desc.pbtxt").suffix == ".pbtxt" and str(p / "x/y.txt") == "gs://bucket/a/b/x/y.txt"
    assert str((p / ".." / "c").resolve()) == "gs://bucket/a/c"
    assert str(p / "s3://other/x") == "s3://other/x"
    assert files.is_url("ram://x") and not files.is_url("runs/x") and not files.is_url("C:\\runs")


def test_a_scheme_without_a_file_system_is_one_clear_error():
    with pytest.raises(UserError, match="File system scheme 'nope' not implemented.*plugin"):
        files.path("nope://bucket/run").exists()


def test_local_paths_stay_pathlib_paths_as_given():
    for given in ("runs/x", "./runs/x", "/tmp/runs/x", pathlib.Path("runs/x")):
        p = files.path(given)
        assert type(p) is type(pathlib.Path()) and p == pathlib.Path(given)


def test_write_atomic_replaces_whole_files_locally_and_on_ram(tmp_path):
    for base in (tmp_path, ram("atomic")):
        target = base / "sub" / "f.txt"
        files.write_atomic(target, "old")
        files.write_atomic(target, b"new")
        assert target.read_bytes() == b"new"
        assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # no temporary left beside it
    assert stat.S_IMODE((tmp_path / "sub" / "f.txt").stat().st_mode) == 0o644


def test_configurations_with_includes_load_from_a_url():
    base = ram("config")
    files.write_atomic(base / "base.yaml", "search:\n  trainer:\n    batch_size: 24\n")
    files.write_atomic(base / "exp" / "run.yaml", "include: [../base.yaml]\nseed: 5\n")
    loaded = config.load_config(str(base / "exp" / "run.yaml"))
    assert loaded.seed == 5 and loaded.search.trainer.batch_size == 24
    with pytest.raises(config.ConfigError, match="nope.yaml: cannot read: No such file or directory"):
        config.load_config(str(base / "nope.yaml"))


def test_a_darts_search_on_ram_resumes_and_ends_as_on_the_local_disk(tmp_path, monkeypatch):
    tf.config.experimental.enable_op_determinism()
    cfg = config.load_config(None, TINY)
    runner.search(cfg, tmp_path, verbose=0)
    out = ram("search")
    assert runner.search(cfg, str(out), verbose=0, stop_after_steps=2) is None
    assert checkpoints.latest_state(str(out), checkpoints.SEARCH).step == 2
    final = runner.search(cfg, str(out), verbose=0)
    assert (out / rundir.FINAL_DESC).read_bytes() == (tmp_path / rundir.FINAL_DESC).read_bytes()
    assert (out / rundir.SUPERNET_DESC).read_bytes() == (tmp_path / rundir.SUPERNET_DESC).read_bytes()
    assert config.load_config(str(out / rundir.CONFIG_FILE)) == cfg
    for name in (rundir.FINAL_CELLS, rundir.ALPHA_HISTORY, f"{rundir.WEIGHTS}.index", "checkpoints/search/done"):
        assert (out / name).exists(), name
    assert len(list((out / "checkpoints" / "search").glob("ckpt-*.index"))) == 2  # max_to_keep, pruned by gfile
    tags = {v.tag for e in (out / rundir.TENSORBOARD).glob("events.out.tfevents.*")
            for event in tf.compat.v1.train.summary_iterator(str(e)) for v in event.summary.value}
    assert {"epoch/val_accuracy", "alphas/normal", "cells/finalised"} <= tags

    def trains_again(*args, **kwargs):
        raise AssertionError("a finished search trained again")
    monkeypatch.setattr(runner, "SearchRun", trains_again)
    assert runner.search(cfg, str(out), verbose=0) == final


def test_cli_run_evaluates_exports_resumes_and_restarts_on_ram():
    tiny = ["search.macro.cells=3", "search.macro.nodes=2", "search.macro.channels=4", "search.trainer.epochs=1",
            "search.darts.warmup_epochs=0",
            "search.trainer.max_steps_per_epoch=2", "search.darts.primitives=[none,skip_connect,sep_conv_3x3]",
            "eval.macro.cells=2", "eval.macro.channels=4", "eval.trainer.epochs=1", "eval.trainer.max_steps_per_epoch=2"]
    out = ram("run")
    args = ["run", "--out", str(out), "-q", *[a for kv in tiny for a in ("--set", kv)]]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert f"SavedModel {out}/export/tfnas/1" in result.output
    for name in ("search/final_desc.pbtxt", "eval/config.yaml", "eval/metrics.json", "eval/final_weights.index",
                 "eval/checkpoints/eval/done", "export/tfnas/1/variables/variables.index"):
        assert (out / name).exists(), name
    assert list((out / "eval" / rundir.TENSORBOARD).glob("events.out.tfevents.*"))
    assert [p.name for p in (out / "export" / "tfnas").iterdir()] == ["1"]  # the temporary directory is gone

    images = data_lib.load_dataset(config.load_config().data).test[0][:8]
    serve = tf.saved_model.load(str(out / "export" / "tfnas" / "1")).signatures["serving_default"]
    np.testing.assert_allclose(serve(images=tf.constant(images))["probabilities"].numpy(),
                               export.reference_predictions(str(out), images), atol=1e-5)
    assert (out / "export" / "tfnas" / "1" / "assets" / "classes.txt").read_text().split() == [str(i) for i in range(10)]

    again = CliRunner().invoke(cli.main, args)  # finished phases are not rerun
    assert again.exit_code == 0 and "done: test accuracy" in again.output, again.output
    exported = CliRunner().invoke(cli.main, ["export", "--run", str(out), "--version", "2"])
    assert exported.exit_code == 0 and f"exported {out}/export/tfnas/2" in exported.output, exported.output
    twice = CliRunner().invoke(cli.main, ["export", "--run", str(out), "--version", "2"])
    assert twice.exit_code == 2 and "already exists" in twice.output

    other = ram("other")
    files.write_atomic(other / "notes.txt", "mine")
    with pytest.raises(Exception, match="holds no tfnas run"):
        cli._restart(str(other), config.load_config())
    assert (other / "notes.txt").exists()
    cli._restart(str(out), config.load_config())
    assert not (out / rundir.CONFIG_FILE).exists() and not (out / "search").exists()
