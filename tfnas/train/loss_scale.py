"""Dynamic loss scaling, which float16 training needs (runtime.precision: MIXED_FLOAT16).

float16 keeps 5 exponent bits: gradients of a mean loss below about 6e-8 flush to zero in the backward
pass. The loss is multiplied by a scale before differentiation (through the tape's output gradient, so the
forward pass is untouched) and the float32 gradients divided by it afterwards. When a step's gradients
are not all finite the scale was too high: the update is skipped and the scale halved; after
`growth_steps` finite steps in a row it doubles (the schedule of Micikevicius et al., 2018, and of Keras's
LossScaleOptimizer). The scale is kept per optimiser, and checkpoints keep it, so a resumed run scales as
an uninterrupted one.

The scaling sits between the trainers' gradients and their optimisers rather than in a wrapping
optimiser because the DARTS arithmetic needs the true gradients before the update: clipping, the coupled
weight decay, the virtual step and the finite differences of the second order. bfloat16 has float32's
exponent range and needs none of this; a LossScale that is not enabled is the identity and adds no op.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from tfnas import distribute

INITIAL_SCALE = 2.0 ** 15
GROWTH_STEPS = 2000


class LossScale(tf.Module):
    """The scale of one optimiser's losses; `gradients` and `apply` are what a trainer calls."""

    def __init__(self, enabled: bool, name: str, initial: float = INITIAL_SCALE, growth_steps: int = GROWTH_STEPS):
        super().__init__(name=name)
        self.enabled, self.growth_steps = bool(enabled), int(growth_steps)
        if self.enabled:
            # Every replica computes the same value from all-reduced gradients: the first replica's is kept.
            first = tf.VariableAggregation.ONLY_FIRST_REPLICA
            self.scale = tf.Variable(float(initial), dtype=tf.float32, trainable=False, aggregation=first,
                                     name="scale")
            self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=first,
                                            name="finite_steps")

    def gradients(self, tape: tf.GradientTape, loss, sources: Sequence) -> list:
        """The gradients of `loss` (a replica's share, distribute.replica_loss) summed over the replicas:
        the global batch's gradients, computed at the current scale and divided by it."""
        return self.unscaled(distribute.all_reduce(self.local_gradients(tape, loss, sources)))

    def local_gradients(self, tape: tf.GradientTape, loss, sources: Sequence) -> list:
        """This replica's gradients of `loss` at the current scale, not divided (`unscaled` divides):
        the second order combines two of them by a finite difference before it reduces and divides."""
        if not self.enabled:
            return tape.gradient(loss, sources)
        return tape.gradient(loss, sources, output_gradients=tf.cast(self.scale, loss.dtype))

    def unscaled(self, grads: Sequence) -> list:
        if not self.enabled:
            return list(grads)
        inverse = 1.0 / self.scale
        return [None if g is None else g * tf.cast(inverse, g.dtype) for g in grads]

    def finite(self, grads: Sequence):
        """Whether every gradient is finite (a boolean tensor); None when the scale is not enabled."""
        if not self.enabled:
            return None
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])

    def apply(self, grads: Sequence, apply_fn: Callable[[list], None], finite=None) -> None:
        """`apply_fn(grads)` (the optimiser's step), skipped where a gradient is not finite or `finite`
        (what else the gradients were computed from) is false; then the scale's update. `grads` are the
        all-reduced ones (equal on every replica); None entries stay None."""
        if not self.enabled:
            apply_fn(list(grads))
            return
        present = [i for i, g in enumerate(grads) if g is not None]
        finite = self.finite(grads) if finite is None else tf.logical_and(finite, self.finite(grads))

        def take(*g):
            full = [None] * len(grads)
            for i, value in zip(present, g):
                full[i] = value
            apply_fn(full)
            count = self.finite_steps + 1
            grow = count >= self.growth_steps
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            self.finite_steps.assign(tf.where(grow, tf.zeros_like(count), count))
            return tf.constant(True)

        def skip(*g):
            self.scale.assign(tf.maximum(self.scale * 0.5, 1.0))
            self.finite_steps.assign(tf.zeros_like(self.finite_steps))
            return tf.constant(False)

        distribute.cond(finite, take, skip, tuple(grads[i] for i in present))
