"""The one place that turns a trainer's `train_step` into the traced step the loop calls.

Search, evaluation and the benchmark all run their steps through `training_step`: uint8 image batches
and int64 labels in (one pair per data stream), normalised inside the graph, the trainer's `train_step`
on the float batches, logs out. `inference_function` is the matching forward pass in inference mode.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfnas import data as data_lib, distribute
from tfnas.errors import UserError
from tfnas.proto import config_pb2


def batch_specs(batch_size: int | None, image_shape: Sequence[int]) -> list[tf.TensorSpec]:
    """The signature of one stream's batch: uint8 images and int64 labels."""
    return [tf.TensorSpec([batch_size, *image_shape], tf.uint8), tf.TensorSpec([batch_size], tf.int64)]


def training_step(train_step: Callable, batch_size: int, image_shape: Sequence[int], mean: np.ndarray,
                  std: np.ndarray, streams: int = 1, augmentation: config_pb2.AugmentationConfig | None = None,
                  seed: int = 0, counter: tf.Variable | None = None, jit_compile: bool = False,
                  strategy: tf.distribute.Strategy | None = None) -> Callable[..., dict]:
    """A step of `streams` (images, labels) pairs of global batches, flattened: step(x0, y0, x1, y1, ...).
    It calls `train_step((x, y))` with one stream and `train_step(((x0, y0), (x1, y1), ...))` with several
    (the DARTS search reads a training and a validation stream). With `augmentation`, every stream's batch
    is augmented (data.prepare_batch) with a seed drawn from (seed, counter, stream): `counter` is the
    trainer's step count, which checkpoints keep, so a resumed run augments as an uninterrupted one.

    Under a `strategy` other than the default one, each replica takes its rows of every global batch
    (with their random draws, so the global batch is augmented as on one device), `train_step` runs
    through `strategy.run`, and the logs (running means, equal counts on every replica) are averaged over
    the replicas. `jit_compile` compiles what each replica runs. The trainer's variables must have been
    made under the strategy's scope."""
    augmenting = data_lib.augments(augmentation)
    if augmenting and counter is None:
        raise ValueError("an augmented training step needs the trainer's step counter")
    strategy = strategy or tf.distribute.get_strategy()
    distributed = not distribute.is_default(strategy)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"batch size {batch_size} does not split evenly over the {replicas} replicas of "
                        f"runtime.strategy ({type(strategy).__name__}); use a multiple of {replicas}")
    share = batch_size // replicas

    def run(tensors, start=None):
        batches = []
        for i in range(streams):
            images, labels = tensors[2 * i], tensors[2 * i + 1]
            window = None if start is None else (start, batch_size)
            if augmenting:
                base = tf.stack([tf.constant(seed, tf.int64), tf.cast(counter, tf.int64)])
                x = data_lib.prepare_batch(images, mean, std, augmentation,
                                           tf.random.experimental.stateless_fold_in(base, i, alg=data_lib.RNG),
                                           window)
            else:
                x = data_lib.preprocess(images, mean, std)
            batches.append((x, labels))
        return train_step(tuple(batches) if streams > 1 else batches[0])

    specs = batch_specs(batch_size, image_shape) * streams
    if not distributed:
        return tf.function(lambda *tensors: run(tensors), input_signature=specs, autograph=False,
                           jit_compile=jit_compile)

    def replica_step(*tensors):
        context = tf.distribute.get_replica_context()
        start = tf.cast(context.replica_id_in_sync_group, tf.int32) * share
        return run(tensors, start)

    replica_fn = tf.function(replica_step, autograph=False, jit_compile=True) if jit_compile else replica_step

    @tf.function(autograph=False)
    def step(*tensors):
        logs = strategy.run(replica_fn, args=tensors)
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    def share_of(array: np.ndarray):
        """A replica's rows of a global batch (worker-local replicas only make theirs)."""
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: array[ctx.replica_id_in_sync_group * share:(ctx.replica_id_in_sync_group + 1) * share])

    def call(*arrays):
        for a, spec in zip(arrays, specs):
            if tuple(np.shape(a)) != tuple(spec.shape):
                raise ValueError(f"a batch of shape {np.shape(a)} where the step takes {spec.shape}")
        return step(*[share_of(np.asarray(a)) for a in arrays])
    return call


def inference_function(net, image_shape: Sequence[int], mean: np.ndarray, std: np.ndarray,
                       batch_size: int | None = None, jit_compile: bool = False) -> Callable:
    """A tf.function uint8 images -> logits in inference mode; built once and reused."""
    @tf.function(input_signature=batch_specs(batch_size, image_shape)[:1], autograph=False,
                 jit_compile=jit_compile)
    def logits_of(images):
        return net(data_lib.preprocess(images, mean, std), training=False)
    return logits_of
