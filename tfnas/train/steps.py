"""The one place that turns a trainer's `train_step` into the traced step the loop calls.

Search, evaluation and the benchmark all run their steps through `training_step`: uint8 image batches
and int64 labels in (one pair per data stream), normalised inside the graph, the trainer's `train_step`
on the float batches, logs out. `inference_function` is the matching forward pass in inference mode.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfnas import data as data_lib
from tfnas.proto import config_pb2


def batch_specs(batch_size: int | None, image_shape: Sequence[int]) -> list[tf.TensorSpec]:
    """The signature of one stream's batch: uint8 images and int64 labels."""
    return [tf.TensorSpec([batch_size, *image_shape], tf.uint8), tf.TensorSpec([batch_size], tf.int64)]


def training_step(train_step: Callable, batch_size: int, image_shape: Sequence[int], mean: np.ndarray,
                  std: np.ndarray, streams: int = 1, augmentation: config_pb2.AugmentationConfig | None = None,
                  seed: int = 0, counter: tf.Variable | None = None, jit_compile: bool = False) -> Callable[..., dict]:
    """A tf.function of `streams` (images, labels) pairs, flattened: step(x0, y0, x1, y1, ...). It calls
    `train_step((x, y))` with one stream and `train_step(((x0, y0), (x1, y1), ...))` with several (the
    DARTS search reads a training and a validation stream). With `augmentation`, every stream's batch is
    augmented (data.prepare_batch) with a seed drawn from (seed, counter, stream): `counter` is the
    trainer's step count, which checkpoints keep, so a resumed run augments as an uninterrupted one."""
    augmenting = data_lib.augments(augmentation)
    if augmenting and counter is None:
        raise ValueError("an augmented training step needs the trainer's step counter")

    @tf.function(input_signature=batch_specs(batch_size, image_shape) * streams, autograph=False,
                 jit_compile=jit_compile)
    def step(*tensors):
        batches = []
        for i in range(streams):
            images, labels = tensors[2 * i], tensors[2 * i + 1]
            if augmenting:
                base = tf.stack([tf.constant(seed, tf.int64), tf.cast(counter, tf.int64)])
                x = data_lib.prepare_batch(images, mean, std, augmentation,
                                           tf.random.experimental.stateless_fold_in(base, i))
            else:
                x = data_lib.preprocess(images, mean, std)
            batches.append((x, labels))
        return train_step(tuple(batches) if streams > 1 else batches[0])
    return step


def inference_function(net, image_shape: Sequence[int], mean: np.ndarray, std: np.ndarray,
                       batch_size: int | None = None, jit_compile: bool = False) -> Callable:
    """A tf.function uint8 images -> logits in inference mode; built once and reused."""
    @tf.function(input_signature=batch_specs(batch_size, image_shape)[:1], autograph=False,
                 jit_compile=jit_compile)
    def logits_of(images):
        return net(data_lib.preprocess(images, mean, std), training=False)
    return logits_of
