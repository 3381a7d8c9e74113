"""The protocol of a trainer: what the keyed training loop (SearchRun.train, the evaluation) drives.

A trainer is a keras.Model around the network it trains (`net`), with a `train_step(batches) -> logs`
(custom train_step, as Keras expects), running metric trackers whose totals checkpoints keep, a step
counter that seeds each step's augmentation, and the optimisers a checkpoint must hold. A float16 network
(CompilerOptions.precision MIXED_FLOAT16) gets a dynamic loss scale per optimiser (train.loss_scale).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from tfnas import distribute
from tfnas.proto import descriptors_pb2 as pb
from tfnas.train.loss_scale import LossScale


class Trainer(keras.Model):
    """Base of SupervisedTrainer (evaluation, random-search trials) and BilevelSearch (DARTS)."""

    TRACKERS: tuple[str, ...] = ("loss", "accuracy")

    def __init__(self, net, **kw):
        super().__init__(**kw)
        self.net = net
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.TRACKERS}
        self.loss_scales: dict[str, LossScale] = {}

    def loss_scale(self, key: str) -> LossScale:
        """A new loss scale, kept under `key` in checkpoints; enabled for a float16 network only, so the
        checkpoints of other precisions hold what they always held."""
        scale = LossScale(self.net.options.precision == pb.CompilerOptions.MIXED_FLOAT16, name=key)
        if scale.enabled:
            self.loss_scales[key] = scale
        return scale

    @property
    def step_counter(self) -> tf.Variable:
        """Steps taken so far (an optimiser's iterations, which checkpoints keep)."""
        raise NotImplementedError

    def checkpointed(self) -> dict:
        """What a checkpoint of this trainer holds besides the network's variables: {key: optimiser or loss
        scale}; a subclass returns its optimisers with `**self.loss_scales`."""
        raise NotImplementedError

    def track(self, **values) -> None:
        """Adds this step's value of each named tracker. On N replicas each adds its share with weight 1/N,
        so the totals (summed over replicas when read or saved) count every step once, as on one device,
        and a checkpoint's running means resume on any number of replicas."""
        n = distribute.replicas()
        for name, value in values.items():
            if n == 1:
                self.trackers[name].update_state(value)
            else:
                self.trackers[name].update_state(value, sample_weight=1.0 / n)

    def reset_trackers(self) -> None:
        for t in self.trackers.values():
            t.reset_state()

    def call(self, x, training=False):
        return self.net(x, training=training)
