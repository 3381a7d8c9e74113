"""Where the training steps run: one `tf.distribute` strategy per process, chosen by `runtime.strategy`.

tfnas scales on TensorFlow's own engine rather than on anything of its own: the networks, trainers and
optimisers are created under the strategy's scope (their variables become mirrored), the step builder
(train.steps) runs each step through `strategy.run` on each replica's share of the global batch, and the
trainers keep one mathematics for any number of replicas (`replica_loss`, `all_reduce`): losses scaled by
the global batch, gradients summed across replicas before clipping and weight decay, so every replica
applies the same update and the architecture weights stay identical everywhere.

    DEFAULT       one device (what a plain TensorFlow program does)
    MIRRORED      every local GPU, or `runtime.cpu_devices` logical CPU devices (a laptop, the tests)
    MULTI_WORKER  the workers of TF_CONFIG, each with its local devices; worker 0 (or the chief) writes
    TPU           Colab's or this TPU VM's TPU, or the one `runtime.tpu` names

A process has one strategy: MultiWorkerMirroredStrategy and the TPU system can be set up only once, and
logical CPU devices only before TensorFlow's runtime starts, so strategies are cached by their settings.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import tensorflow as tf

from tfnas import files
from tfnas.errors import UserError
from tfnas.proto import config_pb2

Strategy = config_pb2.RuntimeConfig.Strategy
_strategies: dict[tuple, tf.distribute.Strategy] = {}


class StrategyError(UserError):
    """The configured strategy cannot be set up here (no TPU, a malformed TF_CONFIG, ...)."""


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` is TensorFlow's default (no distribution: variables and steps as they are)."""
    return type(strategy).__name__ == "_DefaultDistributionStrategy"


def get_strategy(runtime: config_pb2.RuntimeConfig | None = None) -> tf.distribute.Strategy:
    """The strategy `runtime` asks for, created on first use and reused after."""
    if runtime is None or runtime.strategy == Strategy.DEFAULT:
        return tf.distribute.get_strategy()
    key = (runtime.strategy, runtime.cpu_devices, runtime.tpu)
    if key not in _strategies:
        if runtime.strategy == Strategy.MIRRORED:
            _strategies[key] = _mirrored(runtime.cpu_devices)
        elif runtime.strategy == Strategy.MULTI_WORKER:
            _strategies[key] = _multi_worker()
        elif runtime.strategy == Strategy.TPU:
            _strategies[key] = _tpu(runtime.tpu)
        else:
            raise StrategyError(f"runtime.strategy: unknown strategy {runtime.strategy}")
    return _strategies[key]


def ensure_cpu_devices(count: int) -> list[str]:
    """At least `count` logical CPU devices (split from the one physical CPU); the names of the first
    `count`. They can be made only before TensorFlow's runtime starts (this does not start it); later,
    what it has must already suffice."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) < count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < count:
                raise StrategyError(f"runtime.cpu_devices: {count} logical CPU devices must be made before "
                                    f"TensorFlow starts, and this process already runs with {have}; start a new "
                                    "process") from None
    return [f"/device:CPU:{i}" for i in range(count)]


def _mirrored(cpu_devices: int) -> tf.distribute.Strategy:
    if cpu_devices:
        devices = ensure_cpu_devices(cpu_devices)
        # Reduction through one device: NCCL, the GPU default, has no CPU kernels.
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy()


def parse_tf_config(text: str | None = None) -> dict:
    """TF_CONFIG, checked: a JSON object with a cluster of worker (and chief) addresses and this process's
    task in it. Every fault is one line that says what is wrong."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        raise StrategyError("runtime.strategy: MULTI_WORKER reads its cluster from the TF_CONFIG environment "
                            "variable, which is not set")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise StrategyError(f"TF_CONFIG: not JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(cfg, dict):
        raise StrategyError("TF_CONFIG: must be a JSON object with \"cluster\" and \"task\"")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise StrategyError("TF_CONFIG: \"cluster\" must be an object of job name -> list of \"host:port\"")
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise StrategyError(f"TF_CONFIG: cluster job {job!r} is not one of chief, worker (MULTI_WORKER trains "
                                "synchronously on every task; parameter servers and side evaluators are not used)")
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) and ":" in a for a in addresses):
            raise StrategyError(f"TF_CONFIG: cluster.{job} must be a non-empty list of \"host:port\", got "
                                f"{addresses!r}")
    if "worker" not in cluster and "chief" not in cluster:
        raise StrategyError("TF_CONFIG: the cluster has no worker")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise StrategyError(f"TF_CONFIG: task.type must be one of the cluster's jobs "
                            f"({', '.join(cluster)}), got {None if not isinstance(task, dict) else task.get('type')!r}")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise StrategyError(f"TF_CONFIG: task.index must be an integer in [0, {len(cluster[task['type']])}), "
                            f"got {index!r}")
    return cfg


def _multi_worker() -> tf.distribute.Strategy:
    parse_tf_config()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as err:
        raise StrategyError(f"runtime.strategy: MULTI_WORKER could not start: {str(err).splitlines()[0]}") from None
    files.set_writer(is_chief(strategy))
    return strategy


_scratch: list[str] = []


def scratch_dir() -> str:
    """A local directory of this process's own, for what a worker that is not the chief must save but
    nobody reads (its checkpoints: saving is a collective all workers take part in)."""
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix=f"tfnas-worker-{worker_index()}-"))
    return _scratch[0]


def _tpu(name: str) -> tf.distribute.Strategy:
    if not name:  # found here without asking any server: a TPU VM's local chips, or Colab's TPU node
        if tf.config.list_physical_devices("TPU"):
            name = "local"
        elif os.environ.get("COLAB_TPU_ADDR"):
            name = f"grpc://{os.environ['COLAB_TPU_ADDR']}"
        else:
            raise StrategyError("runtime.strategy: TPU: no TPU here (no local TPU devices, no COLAB_TPU_ADDR); "
                                "name one with runtime.tpu, or choose another runtime.strategy")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise StrategyError(f"runtime.tpu: cannot connect to the TPU {name!r}: {detail}") from None
    return tf.distribute.TPUStrategy(resolver)


# -- inside a step ------------------------------------------------------------------------------------

def replicas() -> int:
    """Replicas that share each step's global batch (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_loss(loss):
    """The share of one replica's mean loss in the global mean: gradients summed across replicas are then
    the gradients of the global batch's mean loss, as on one device."""
    n = replicas()
    return loss if n == 1 else loss * (1.0 / n)


def all_reduce(values: list, op: tf.distribute.ReduceOp = tf.distribute.ReduceOp.SUM) -> list:
    """`values` summed (or averaged) over the replicas, in one collective; as they are on one replica.
    None entries stay None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return list(values)
    present = [v for v in values if v is not None]
    reduced = iter(context.all_reduce(op, present)) if present else iter(())
    return [None if v is None else next(reduced) for v in values]


def cond(pred, true_fn: Callable, false_fn: Callable, args: tuple = ()):
    """`tf.cond(pred, lambda: true_fn(*args), lambda: false_fn(*args))` inside a replica's step, where a
    branch may all-reduce or apply gradients. `pred` must be the same on every replica (a step count, a
    test of all-reduced gradients). MirroredStrategy synchronises its replicas by merge calls, which a
    branch of a cond inside the replica function cannot make: there the choice is made once, in the
    cross-replica context, and each branch runs on every replica (as Keras's LossScaleOptimizer applies
    its gradients). Data reaches the branches through `args`, each replica's own; the branches return
    tensors of the same structure."""
    context = tf.distribute.get_replica_context()
    if (context is None or context.num_replicas_in_sync == 1
            or tf.__internal__.distribute.strategy_supports_no_merge_call()):
        return tf.cond(pred, lambda: true_fn(*args), lambda: false_fn(*args))

    def merged(strategy, pred, *args):
        first = strategy.experimental_local_results(pred)[0]
        return tf.cond(first, lambda: strategy.extended.call_for_each_replica(true_fn, args=args),
                       lambda: strategy.extended.call_for_each_replica(false_fn, args=args))
    return context.merge_call(merged, args=(pred, *args))


# -- files --------------------------------------------------------------------------------------------

def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run's files: always, except on the workers of a multi-worker run
    other than the chief (the task "chief", or worker 0 where the cluster has none)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_index(strategy: tf.distribute.Strategy | None = None) -> int:
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_id is not None else 0


def barrier(strategy: tf.distribute.Strategy | None = None) -> None:
    """Waits until every worker of a multi-worker run gets here (a one-number all-reduce): what the chief
    wrote before it is there for every worker to read after it. Nothing elsewhere."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)



def summary_writer(directory) -> tf.summary.SummaryWriter:
    """TensorBoard's writer for `directory`; one that writes nothing on a worker that is not the chief."""
    return tf.summary.create_file_writer(str(directory)) if files.writes() else tf.summary.create_noop_writer()
