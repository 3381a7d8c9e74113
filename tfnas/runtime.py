"""Process-wide TensorFlow settings: thread pools, Grappler around a training step, seeds.

The thread pools and Grappler come from the configuration's `runtime` section (RuntimeConfig): they
describe the machine, not the experiment. A DARTS step is tens of thousands of small, mostly independent
ops, so tfnas's default runs independent ops side by side (inter-op threads = cores, intra-op threads =
1), and runs its training steps without Grappler, which costs start-up and rarely pays it back
(benchmarks/README.md has the measurements).
"""
from __future__ import annotations

import contextlib
import functools
import os

import keras
import tensorflow as tf

from tfnas.proto import config_pb2


def configure_threads(runtime: config_pb2.RuntimeConfig | None = None) -> tuple[int, int]:
    """Sets the thread pools before TensorFlow's runtime starts; once it has started (a second command in
    one process, a notebook) they cannot change, and what it has is kept. Returns (inter, intra)."""
    if runtime is None:
        from tfnas import config as config_lib
        runtime = config_lib.default_runtime()
    inter = runtime.inter_op_threads or (os.cpu_count() or 0)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(runtime.intra_op_threads)
    except RuntimeError:  # the runtime already started: keep what it has
        pass
    return (tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads())


@contextlib.contextmanager
def training_graph_options(graph_optimizer: bool = False):
    """Grappler on or off while a training step's function is first called (that is when TF optimises
    its graph): `runtime.graph_optimizer` of the configuration. The previous setting is restored."""
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not graph_optimizer})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})


@functools.cache
def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id ("AuthenticAMD", "GenuineIntel"; empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def pointwise_matmul(runtime: config_pb2.RuntimeConfig) -> bool:
    """Whether a run's ungrouped 1x1 convs run as MatMul (runtime.pointwise). AUTO takes MatMul where it
    was measured faster, float32 steps on AMD CPUs, and keeps Conv2D wherever it was not measured against
    it (Intel CPUs, lower precisions, GPUs, TPUs), so that no unmeasured machine pays for the choice;
    `benchmarks/bench.py --pair set:runtime.pointwise=conv2d set:runtime.pointwise=matmul` measures it
    anywhere."""
    if runtime.pointwise != config_pb2.RuntimeConfig.AUTO:
        return runtime.pointwise == config_pb2.RuntimeConfig.MATMUL
    if runtime.precision or runtime.strategy == config_pb2.RuntimeConfig.TPU:
        return False
    return cpu_vendor() == "AuthenticAMD" and not tf.config.list_physical_devices("GPU")


def seed_everything(config: config_pb2.ExperimentConfig) -> None:
    """Seeds Python, NumPy and TensorFlow from `config.seed`; `deterministic` turns on TF's op determinism."""
    keras.utils.set_random_seed(int(config.seed))
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
