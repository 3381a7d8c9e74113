"""Optimisers and learning-rate schedules as the DARTS code uses them.

PyTorch's `weight_decay` is an L2 term added to the gradient (coupled) after gradient clipping; Keras's
is decoupled. To keep DARTS's arithmetic, decay and clipping are applied here, by `prepare_gradients`,
and the Keras optimisers run without their own weight decay. Schedules change once per epoch, as
`CosineAnnealingLR.step()` does at the start of each epoch in the reference code (PyTorch 0.3.1).
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfnas.proto import config_pb2

Kind = config_pb2.OptimizerConfig.Kind


@keras.saving.register_keras_serializable("tfnas")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Constant or cosine-annealed learning rate that changes at epoch boundaries."""

    def __init__(self, initial: float, minimum: float, epochs: int, steps_per_epoch: int, cosine: bool):
        self.initial, self.minimum = float(initial), float(minimum)
        self.epochs, self.steps_per_epoch, self.cosine = max(int(epochs), 1), max(int(steps_per_epoch), 1), cosine

    def __call__(self, step):
        if not self.cosine:
            return tf.constant(self.initial, tf.float32)
        # The DARTS code calls scheduler.step() at the start of each epoch under PyTorch 0.3.1, whose
        # scheduler starts at last_epoch = -1: epoch e trains with the rate of step e (the first epoch at
        # the full rate). Newer PyTorch would shift this by one epoch.
        epoch = tf.cast(step // self.steps_per_epoch, tf.float32)
        cos = 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(epoch, self.epochs) / self.epochs))
        return self.minimum + (self.initial - self.minimum) * cos

    def get_config(self):
        return dict(initial=self.initial, minimum=self.minimum, epochs=self.epochs,
                    steps_per_epoch=self.steps_per_epoch, cosine=self.cosine)


class ReducedGradients:
    """An optimiser that takes gradients already summed across replicas (the trainers reduce them with
    tfnas.distribute.all_reduce, before clipping and weight decay, as one device would clip the global
    batch's gradient). Keras would sum them again: N times the gradient on N replicas."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


class FusedSGD(ReducedGradients, keras.optimizers.SGD):
    """Keras's SGD with momentum (the same update, variables and slots), each variable updated by one
    fused TF op instead of about eight: a DARTS supernet has hundreds of weight tensors, and every op
    costs trace time and per-step overhead."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras casts the momentum once per variable. With several replicas, Keras's own path writes each
        # replica's copy (strategy.extended.update), through update_step below.
        if self.momentum == 0 or self.nesterov or self._distribution_strategy.num_replicas_in_sync > 1:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        lr = tf.cast(learning_rate, tf.float32)
        momentum = tf.constant(self.momentum, tf.float32)
        for gradient, variable in zip(grads, trainable_variables):
            self._apply_momentum(gradient, variable, lr, momentum)

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or self.nesterov:
            return super().update_step(gradient, variable, learning_rate)
        self._apply_momentum(gradient, variable, tf.cast(learning_rate, variable.dtype),
                             tf.constant(self.momentum, variable.dtype))

    def _apply_momentum(self, gradient, variable, lr, momentum):
        m = self.momentums[self._get_variable_index(variable)]
        if isinstance(variable, keras.Variable):  # else a replica's tf.Variable (strategy.extended.update)
            variable = variable.value
        # accum = momentum * accum - lr * grad; var += accum (keras.optimizers.SGD, nesterov=False)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=m.value.handle, lr=tf.cast(lr, variable.dtype),
            grad=tf.cast(gradient, variable.dtype), momentum=tf.cast(momentum, variable.dtype),
            use_locking=False, use_nesterov=False)


class ReducedAdam(ReducedGradients, keras.optimizers.Adam):
    """Keras's Adam on gradients already summed across replicas."""


def make_optimizer(cfg: config_pb2.OptimizerConfig, epochs: int, steps_per_epoch: int,
                   name: str) -> keras.optimizers.Optimizer:
    lr = EpochSchedule(cfg.learning_rate, cfg.min_learning_rate, epochs, steps_per_epoch,
                       cosine=cfg.schedule == config_pb2.COSINE)
    if cfg.kind == Kind.SGD:
        return FusedSGD(learning_rate=lr, momentum=cfg.momentum, name=name)
    if cfg.kind == Kind.ADAM:
        # PyTorch's Adam epsilon (1e-8), not Keras's 1e-7.
        return ReducedAdam(learning_rate=lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=1e-8,
                                     name=name)
    raise ValueError(f"optimizer kind {cfg.kind} is not supported")


def prepare_gradients(grads: list, variables: list, cfg: config_pb2.OptimizerConfig,
                      decayed: int | None = None) -> list:
    """Clip by global norm (if configured), then add the coupled L2 weight decay: DARTS's order. The decay
    applies to the first `decayed` variables (default: all; PetriDish's candidate weights have an L1
    penalty in the loss instead).

    The clipping is tf.clip_by_global_norm's arithmetic (the same scale, NaN when the norm is not
    finite) without its Identity op per tensor, and the decay factor is one constant, not one per
    tensor: a supernet has hundreds of weight tensors, and each op costs trace time."""
    if cfg.gradient_clip_norm > 0:
        norm = tf.linalg.global_norm(grads)
        clip = tf.constant(cfg.gradient_clip_norm, tf.float32)
        scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        grads = [None if g is None else g * scale for g in grads]
    if cfg.weight_decay > 0:
        decay = tf.constant(cfg.weight_decay, tf.float32)
        # On the tf.Variable inside each Keras variable: its operators trace several times faster.
        n = len(grads) if decayed is None else decayed
        grads = [None if g is None else g + decay * getattr(v, "value", v)
                 for g, v in zip(grads[:n], variables[:n])] + list(grads[n:])
    return grads


def current_lr(optimizer: keras.optimizers.Optimizer):
    lr = optimizer.learning_rate
    return lr(optimizer.iterations) if callable(lr) else lr
