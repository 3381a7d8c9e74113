"""tf.distribute: one mathematics on any number of replicas (tfnas.distribute, train.steps).

The mirrored runs use the two logical CPU devices that conftest.py makes before TensorFlow starts. With
`sync_batchnorm` a run on 2 replicas computes what one device computes on the same global batch, up to
float32 summation order: the tolerances below are about 50x what was measured (2e-6 relative).
"""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import test_bilevel as tb
from tfnas import checkpoints, cli, compiler, config, descriptors, distribute, evaluation, rundir
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import runner
from tfnas.train import steps

Strategy = config_pb2.RuntimeConfig.Strategy
N, SHAPE = 8, (6, 6, 1)
AUG = config_pb2.AugmentationConfig(crop_padding=1, horizontal_flip=True, cutout=2)
MEAN, STD = np.array([100.0]), np.array([50.0])
RTOL = 1e-4


@pytest.fixture(autouse=True)
def _deterministic():
    tf.config.experimental.enable_op_determinism()


def mirrored() -> tf.distribute.Strategy:
    return distribute.get_strategy(config_pb2.RuntimeConfig(strategy=Strategy.MIRRORED, cpu_devices=2))


def uint8_batches(steps_=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 255, (N, *SHAPE)).astype(np.uint8), rng.integers(0, 3, N).astype(np.int64),
             rng.integers(0, 255, (N, *SHAPE)).astype(np.uint8), rng.integers(0, 3, N).astype(np.int64))
            for _ in range(steps_)]


def replica_values(variable) -> list[np.ndarray]:
    """Every replica's copy of a variable (one for a plain variable)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(v.numpy()) for v in getattr(value, "values", [value])]


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-12))


def search_pair(order: int, sync: bool, warmup_steps: int = 0, precision=pb.CompilerOptions.FLOAT32,
                scales: tuple = ()):
    """A tiny search trained 3 steps on one device and, from the same weights, on 2 mirrored replicas
    (the first `warmup_steps` without an alpha step: the warm-up's cond, whose branches all-reduce). A
    float16 search sets its loss scales to `scales[i]` before step i."""
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.sync_batchnorm = sync
    options.nested_gradients = order == 2
    options.precision = precision

    def build():
        keras.utils.set_random_seed(0)
        searcher = tb.make_search(order=order, options=options, cells=2, nodes=1, reduction_cells=(1,))
        searcher.warmup_steps = warmup_steps
        step = steps.training_step(searcher.train_step, N, SHAPE, MEAN, STD, streams=2, augmentation=AUG,
                                   counter=searcher.step_counter)
        return searcher, step

    single, single_step = build()
    with mirrored().scope():
        replicated, replicated_step = build()
    for a, b in zip(single.net.variables, replicated.net.variables):
        b.assign(a.numpy())
    for i, batch in enumerate(uint8_batches()):
        if i < len(scales):
            for loss_scale in [*single.loss_scales.values(), *replicated.loss_scales.values()]:
                loss_scale.scale.assign(scales[i])
        single_logs, replicated_logs = single_step(*batch), replicated_step(*batch)
    return single, replicated, single_logs, replicated_logs


@pytest.mark.parametrize("order, warmup_steps", [(1, 0), (2, 1)])
def test_a_mirrored_search_with_synced_batchnorm_is_the_single_device_search(order, warmup_steps):
    single, replicated, single_logs, replicated_logs = search_pair(order, sync=True, warmup_steps=warmup_steps)
    for name, value in single_logs.items():
        assert float(replicated_logs[name]) == pytest.approx(float(value), rel=1e-5), name
    for a, b in zip(single.net.variables, replicated.net.variables):
        copies = replica_values(b)
        assert len(copies) == 2
        assert np.array_equal(copies[0], copies[1]), f"{b.path} differs between replicas"
        assert rel(copies[0], a.numpy()) < RTOL, b.path
    # The alpha optimiser's moments too: the next alpha step is the same everywhere.
    for a, b in zip(single.alpha_opt.variables, replicated.alpha_opt.variables):
        assert rel(replica_values(b)[0], a.numpy()) < RTOL
    assert int(replicated.alpha_opt.iterations.numpy()) == 3 - warmup_steps


def test_without_synced_batchnorm_every_replica_still_holds_the_same_model():
    single, replicated, _, _ = search_pair(order=1, sync=False)
    moving = [v for v in replicated.net.variables if v.path.endswith(("_mean", "_var"))]
    assert moving
    for v in replicated.net.variables:
        copies = replica_values(v)
        assert np.array_equal(copies[0], copies[1]), f"{v.path} differs between replicas"
    # Each replica normalised by its own half of the batch: not the single-device statistics.
    stem = [(a, b) for a, b in zip(single.net.variables, replicated.net.variables) if b.path.endswith("_var")][0]
    assert rel(replica_values(stem[1])[0], stem[0].numpy()) > 1e-4


def test_a_mirrored_float16_search_skips_an_overflowing_step_on_every_replica():
    """A first step whose scaled gradients overflow (the scale's float16 image is infinite) is skipped on
    both replicas, and the scale halves; at a usable scale the two following steps train: every replica
    holds the same model. It is the single device's to float16's precision: float16 gradients summed in
    another order differ by a few per cent (tests/test_loss_scale.py), and a BatchNorm beta holds only
    its two updates."""
    huge = 3e38
    single, replicated, single_logs, replicated_logs = search_pair(
        1, sync=True, precision=pb.CompilerOptions.MIXED_FLOAT16, scales=(huge, 1024.0))
    for trainer in (single, replicated):
        assert int(trainer.weight_opt.iterations.numpy()) == 2 and int(trainer.alpha_opt.iterations.numpy()) == 2
        for loss_scale in trainer.loss_scales.values():
            assert [float(c) for c in replica_values(loss_scale.scale)] == [1024.0] * len(
                replica_values(loss_scale.scale))
            assert int(replica_values(loss_scale.finite_steps)[0]) == 2
    for name, value in single_logs.items():
        assert float(replicated_logs[name]) == pytest.approx(float(value), rel=1e-2), name
    worst = 0.0
    for a, b in zip(single.net.variables, replicated.net.variables):
        copies = replica_values(b)
        assert np.array_equal(copies[0], copies[1]), f"{b.path} differs between replicas"
        worst = max(worst, rel(copies[0], a.numpy()))
    print("float16 mirrored against one device, largest relative difference", worst)
    assert worst < 0.1


EVAL = ["eval.macro.cells=3", "eval.macro.channels=8", "eval.trainer.epochs=1", "eval.trainer.batch_size=32",
        "eval.trainer.max_steps_per_epoch=3", "eval.drop_path_prob=0", "deterministic=true", "seed=1",
        "data.max_train_examples=256", "data.max_test_examples=64"]


def final_weights(run) -> dict:
    reader = tf.train.load_checkpoint(str(run / rundir.WEIGHTS))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/by_path")}


def test_mirrored_evaluation_training_is_the_single_device_training(tmp_path):
    """With the auxiliary tower, affine BatchNorm and the DARTS augmentation."""
    one = evaluation.evaluate(config.load_config(None, EVAL), "DARTS_V2", tmp_path / "one", verbose=0)
    two = evaluation.evaluate(config.load_config(None, EVAL + ["runtime.strategy=MIRRORED", "runtime.cpu_devices=2",
                                                               "runtime.sync_batchnorm=true"]),
                              "DARTS_V2", tmp_path / "two", verbose=0)
    assert two["train_accuracy"] == pytest.approx(one["train_accuracy"], abs=1e-6)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys() and any("aux" in k for k in a)
    worst = max(rel(b[k], a[k]) for k in a if np.linalg.norm(a[k]) > 0)
    assert worst < RTOL


# Small enough that tracing the step on 2 replicas stays short (it is the slow part of these tests).
TINY = ["search.macro.cells=2", "search.macro.nodes=2", "search.macro.channels=4", "search.macro.stem_multiplier=2",
        "search.trainer.epochs=2", "search.trainer.max_steps_per_epoch=3", "search.darts.warmup_epochs=0",
        "search.trainer.batch_size=16", "search.darts.primitives=[none,skip_connect,sep_conv_3x3,max_pool_3x3]",
        "runtime.sync_batchnorm=true", "deterministic=true", "seed=7"]
MIRRORED = ["runtime.strategy=MIRRORED", "runtime.cpu_devices=2"]


def supernet_alphas(run) -> dict:
    desc = descriptors.load_model_desc(run / rundir.SUPERNET_DESC)
    return {g: np.asarray(a.values) for g, a in desc.alpha_groups.items()}


@pytest.fixture(scope="module")
def whole_search(tmp_path_factory):
    """The tiny search uninterrupted on one device."""
    out = tmp_path_factory.mktemp("whole")
    runner.search(config.load_config(None, TINY), out, verbose=0)
    return out


@pytest.mark.parametrize("first, second", [(MIRRORED, []), ([], MIRRORED)], ids=["mirrored-then-default",
                                                                                  "default-then-mirrored"])
def test_a_checkpoint_of_one_strategy_resumes_under_another(tmp_path, whole_search, first, second):
    cut = tmp_path / "cut"
    assert runner.search(config.load_config(None, TINY + first), cut, verbose=0, stop_after_steps=4) is None
    state = checkpoints.latest_state(cut, checkpoints.SEARCH)
    assert (state.epoch, state.step) == (1, 1)
    runner.search(config.load_config(None, TINY + second), cut, verbose=0)
    whole, resumed = supernet_alphas(whole_search), supernet_alphas(cut)
    for group, values in whole.items():
        assert rel(resumed[group], values) < RTOL, group
    # The epoch averages resumed from the other strategy's running totals count each step once.
    history = [json.loads(line) for line in (cut / rundir.ALPHA_HISTORY).read_text().splitlines()]
    reference = [json.loads(line) for line in (whole_search / rundir.ALPHA_HISTORY).read_text().splitlines()]
    for a, b in zip(history, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_a_batch_that_does_not_split_over_the_replicas_is_refused():
    with mirrored().scope():
        searcher = tb.make_search(cells=2)
        with pytest.raises(Exception, match="batch size 7 does not split evenly over the 2 replicas"):
            steps.training_step(searcher.train_step, 7, SHAPE, MEAN, STD, streams=2)


# -- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "TF_CONFIG environment variable, which is not set"),
    ("{not json", "TF_CONFIG: not JSON"),
    ('["a"]', "must be a JSON object"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker must be a non-empty list"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}', "task.type must be one of"),
    ('{"cluster": {"worker": ["localhost:1"], "ps": ["localhost:2"]}, "task": {"type": "worker", "index": 0}}',
     "cluster job 'ps' is not one of chief, worker"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
     r"task.index must be an integer in \[0, 1\)"),
])
def test_a_malformed_tf_config_is_one_line(text, message):
    with pytest.raises(distribute.StrategyError, match=message):
        distribute.parse_tf_config(text)


def test_a_good_tf_config_and_the_chief():
    cfg = distribute.parse_tf_config('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                                     '"task": {"type": "worker", "index": 1}}')
    assert cfg["task"]["index"] == 1
    assert distribute.is_chief(tf.distribute.get_strategy())  # one process, no cluster: it writes


def test_tpu_where_there_is_none_is_one_line():
    with pytest.raises(distribute.StrategyError, match="runtime.strategy: TPU: no TPU here"):
        distribute.get_strategy(config_pb2.RuntimeConfig(strategy=Strategy.TPU))


@pytest.mark.parametrize("args, env, message", [
    (["--strategy", "bogus"], {}, "Invalid value for '--strategy'"),
    (["--strategy", "tpu"], {}, "error: runtime.strategy: TPU: no TPU here"),
    (["--strategy", "multi_worker"], {"TF_CONFIG": "{oops"}, "error: TF_CONFIG: not JSON"),
    (["--set", "runtime.strategy=SIDEWAYS"], {}, "runtime.strategy"),
])
def test_cli_strategy_errors_are_one_line_and_exit_2(tmp_path, args, env, message):
    for command in ("search", "run"):
        result = CliRunner().invoke(cli.main, [command, "--out", str(tmp_path / command), *args], env=env)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output
        assert not (tmp_path / command).exists()  # nothing was written


# -- XLA --------------------------------------------------------------------------------------------------

def run_steps(build, jit: bool, augmentation, streams: int):
    keras.utils.set_random_seed(0)
    trainer = build()
    step = steps.training_step(trainer.train_step, N, SHAPE, MEAN, STD, streams=streams, augmentation=augmentation,
                               counter=trainer.step_counter, jit_compile=jit)
    for batch in uint8_batches(2):
        logs = step(*batch[:2 * streams])
    return {k: float(v) for k, v in logs.items()}, [v.numpy() for v in trainer.net.trainable_variables]


def tiny_eval_trainer():
    from tfnas import architectures
    cfg = config.load_config(None, ["eval.macro.cells=3", "eval.macro.channels=4", "eval.trainer.batch_size=8"])
    desc = architectures.resolve("DARTS_V2", cfg.eval.macro, list(SHAPE), 3, require_final=True)
    return evaluation.build_trainer(cfg, desc, steps_per_epoch=2)


@pytest.mark.parametrize("what", ["search", "evaluation"])
def test_jit_compiled_steps_compute_what_the_plain_steps_compute(what):
    """Two steps, from the same weights and batches, with crop, flip and cutout, agree to float32 rounding
    (the augmented batches are the same: every random draw is an integer one, see data._crop_and_flip)."""
    build, streams = (lambda: tb.make_search(cells=2, reduction_cells=(1,)), 2) if what == "search" else \
        (tiny_eval_trainer, 1)
    from tensorflow.python.framework import config as tf_config  # private: no public way to turn it off
    plain_logs, plain = run_steps(build, False, AUG, streams)
    tf_config.disable_op_determinism()  # XLA has no deterministic max-pool gradient (DARTS_V2's reductions)
    try:
        xla_logs, xla = run_steps(build, True, AUG, streams)
    finally:
        tf.config.experimental.enable_op_determinism()
    for name, value in plain_logs.items():
        assert xla_logs[name] == pytest.approx(value, rel=1e-5), name
    # All weights as one vector: where max pooling meets tied pixels (uint8 images), XLA may route a
    # gradient to another of the tied positions, which moves a small tensor by a few per cent.
    flat = lambda ws: np.concatenate([w.ravel() for w in ws])  # noqa: E731
    assert rel(flat(xla), flat(plain)) < 1e-4


# -- multi-worker -----------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    import socket
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def checkpoint_tensors(directory, match: str) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(directory)))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if match in k}


def test_a_multi_worker_search_in_two_processes_is_the_two_device_mirrored_search(tmp_path, whole_search):
    """Two workers on 127.0.0.1 (TF_CONFIG), one CPU each, synced BatchNorm: the chief's alphas are those
    of the same search mirrored on 2 devices of one process; the other worker, which writes nothing into
    the run, holds the same ones (its scratch checkpoints, in its own temporary directory).

    Not against the single-device search of the runner (whole_search): on this tiny search, float32
    rounding alone moves the alphas by per cent (the same single-device search with 2 intra-op threads
    instead of 1 moves the reduction alphas 0.35 % in its first step, and 2 replicas land on the 2-thread
    values), and DARTS's steps amplify it; benchmarks/README.md has the figures.

    The run directory starts with another, finished run (the single-device one) and both workers are
    given --restart: only the chief removes it, and neither reads the old run's checkpoints, or the
    search would end at the old run's alphas."""
    import os
    import shutil
    import subprocess
    import sys
    addresses = [f"127.0.0.1:{p}" for p in free_ports(2)]
    out = tmp_path / "run"
    shutil.copytree(whole_search, out)
    procs = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch), "TF_CONFIG": json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})}
        args = [sys.executable, "-m", "tfnas.cli", "search", "--out", str(out), "-q", "--strategy", "multi_worker",
                "--restart",
                *[a for kv in TINY for a in ("--set", kv)]]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-2000:]
        outputs.append(output)
    assert ["--restart: removing" in o for o in outputs] == [True, False]  # worker 0 is the chief
    runner.search(config.load_config(None, TINY + MIRRORED), tmp_path / "mirrored", verbose=0)
    mirrored_alphas, found = supernet_alphas(tmp_path / "mirrored"), supernet_alphas(out)
    for group, values in mirrored_alphas.items():
        assert rel(found[group], values) < RTOL, group
    assert (out / rundir.FINAL_DESC).exists()
    # The other worker wrote nothing into the run: every file there is one a single process writes.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in whole_search.iterdir())
    scratch = list((tmp_path / "tmp1").glob("tfnas-worker-1-*"))
    assert len(scratch) == 1
    chief = checkpoint_tensors(out / "checkpoints" / "search", "alpha_")
    other = checkpoint_tensors(scratch[0] / "search", "alpha_")
    assert chief and chief.keys() == other.keys()
    for name in chief:
        assert np.array_equal(chief[name], other[name]), name
