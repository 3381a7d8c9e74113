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


def batch_specs(batch_size: int | None, image_shape: Sequence[int]) -> list[tf.TensorSpec]:
    """The signature of one stream's batch: uint8 images and int64 labels."""
    return [tf.TensorSpec([batch_size, *image_shape], tf.uint8), tf.TensorSpec([batch_size], tf.int64)]


def training_step(train_step: Callable, batch_size: int, image_shape: Sequence[int], mean: np.ndarray,
                  std: np.ndarray, streams: int = 1, jit_compile: bool = False) -> Callable[..., dict]:
    """A tf.function of `streams` (images, labels) pairs, flattened: step(x0, y0, x1, y1, ...). It calls
    `train_step((x, y))` with one stream and `train_step(((x0, y0), (x1, y1), ...))` with several (the
    DARTS search reads a training and a validation stream)."""
    @tf.function(input_signature=batch_specs(batch_size, image_shape) * streams, autograph=False,
                 jit_compile=jit_compile)
    def step(*tensors):
        batches = tuple((data_lib.preprocess(tensors[i], mean, std), tensors[i + 1])
                        for i in range(0, 2 * streams, 2))
        return train_step(batches if streams > 1 else batches[0])
    return step


def inference_function(net, image_shape: Sequence[int], mean: np.ndarray, std: np.ndarray,
                       batch_size: int | None = None, jit_compile: bool = False) -> Callable:
    """A tf.function uint8 images -> logits in inference mode; built once and reused."""
    @tf.function(input_signature=batch_specs(batch_size, image_shape)[:1], autograph=False,
                 jit_compile=jit_compile)
    def logits_of(images):
        return net(data_lib.preprocess(images, mean, std), training=False)
    return logits_of
