"""Process-wide TensorFlow settings: from the configuration's runtime section, nowhere else."""
import subprocess
import sys

import tensorflow as tf

from tfnas import config, runtime


def _grappler_on() -> bool:
    return not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)


def test_training_graph_options_follow_the_config_then_restore():
    before = _grappler_on()
    with runtime.training_graph_options(False):
        assert not _grappler_on()
    assert _grappler_on() == before
    with runtime.training_graph_options(True):
        assert _grappler_on()
    assert _grappler_on() == before


def test_thread_pools_come_from_the_runtime_section():
    """In a fresh process (the pools are fixed once TensorFlow's runtime starts): the configured counts,
    and 0 inter-op threads meaning one per CPU core."""
    code = ("import os, tfnas.config as c, tfnas.runtime as r; "
            "cfg = c.load_config(None, ['runtime.inter_op_threads=3', 'runtime.intra_op_threads=2']); "
            "print(*r.configure_threads(cfg.runtime)); "
            "print(*r.configure_threads(c.load_config().runtime), os.cpu_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split("\n")[:2]
    assert first == "3 2"
    inter, intra, cores = second.split()
    assert (inter, intra) == (cores, "1")  # configure again before the runtime starts: the defaults


def test_runtime_settings_do_not_make_another_experiment(tmp_path):
    """A run directory may be resumed on another machine, with other thread counts."""
    from tfnas import rundir
    rundir.prepare(tmp_path, config.load_config())
    rundir.prepare(tmp_path, config.load_config(None, ["runtime.intra_op_threads=2",
                                                       "runtime.graph_optimizer=true"]))
    try:
        rundir.prepare(tmp_path, config.load_config(None, ["seed=5"]))
    except Exception as err:  # noqa: BLE001
        assert "holds a run with another configuration" in str(err)
    else:
        raise AssertionError("another seed must be another experiment")


def test_pointwise_auto_takes_matmul_only_where_it_was_measured_faster(monkeypatch):
    """runtime.pointwise: AUTO is MatMul for float32 steps on AMD CPUs, Conv2D on Intel CPUs, at a lower
    precision and on TPUs; CONV2D and MATMUL force one everywhere. The run's compiler options carry it."""
    from tfnas import compiler
    from tfnas.proto import config_pb2

    def resolved(vendor, *settings):
        monkeypatch.setattr(runtime, "cpu_vendor", lambda: vendor)
        cfg = config.load_config(None, list(settings))
        chosen = runtime.pointwise_matmul(cfg.runtime)
        assert compiler.run_options(compiler.EVAL_OPTIONS, cfg.runtime).pointwise_matmul == chosen
        return chosen

    assert config.load_config().runtime.pointwise == config_pb2.RuntimeConfig.AUTO
    assert resolved("AuthenticAMD")
    assert not resolved("GenuineIntel")
    assert not resolved("")
    assert not resolved("AuthenticAMD", "runtime.precision=mixed_bfloat16")
    assert not resolved("AuthenticAMD", "runtime.strategy=tpu")
    assert not resolved("AuthenticAMD", "runtime.pointwise=conv2d")
    assert resolved("GenuineIntel", "runtime.pointwise=matmul")
