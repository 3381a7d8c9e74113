"""Bi-level optimisation of DARTS in a custom `train_step`: one alpha step, then one weight step.

    alpha step  on a validation batch: first order, grad_alpha L_val(w, alpha); second order, through the
                virtual step w' = w - xi * (momentum term + grad_w L_train(w, alpha) + wd * w), with the
                Hessian-vector product by central finite differences (Liu et al. 2019, eq. 7-8).
                The moving BatchNorm statistics take the batches of the virtual step, the two finite-
                difference passes and the weight step, as in the reference code, not the validation
                batch at w' (a copy of the network there).
    weight step on a training batch: grad_w L_train(w, alpha), clipped, L2-decayed, SGD with momentum.

With `beta_regularization` > 0 the alpha loss gains beta-DARTS's term (Ye et al., CVPR 2022): lambda times
the mean over edges of logsumexp(alpha), lambda = beta * epoch / epochs (epoch counted from 0), which keeps
the alphas from running away in a few operations (the skip-connection collapse of long searches).

With `warmup_epochs` > 0 the step takes no alpha step in those first epochs (PC-DARTS, P-DARTS): the alpha
batch only passes forward, for the validation figures, and the alpha optimiser (its iterations, its
moments) stays untouched. The choice is a cond (`distribute.cond`) on the weight optimiser's step count, inside the one
traced step, so a run resumed in the middle of the warm-up continues it.

Under a strategy with several replicas every loss is the replica's share of the global batch's mean and
every gradient is summed across replicas (tfnas.distribute) before it is used: the virtual step, the
finite differences and both updates are the global batch's, identical on every replica, so the second
order stays DARTS's algorithm and the alphas stay equal everywhere.

The two optimisers own disjoint variable sets (alphas / weights_only). The alpha step asks the tape for
alpha gradients only, so no weight gradient is computed for it (the reference code computes them all).
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from tfnas import distribute
from tfnas.compiler import NasModel
from tfnas.proto import config_pb2
from tfnas.train import optim
from tfnas.train.trainer import Trainer
from tfnas.train.metrics import accuracy, cross_entropy


class BilevelSearch(Trainer):
    """Wraps a search network with its two optimisers; `train_step(((xt, yt), (xv, yv)))` is one step."""

    TRACKERS = ("loss", "accuracy", "val_loss", "val_accuracy")

    def __init__(self, net: NasModel, weight_opt: keras.optimizers.Optimizer, alpha_opt: keras.optimizers.Optimizer,
                 weight_cfg: config_pb2.OptimizerConfig, alpha_cfg: config_pb2.OptimizerConfig, order: int = 1,
                 beta_regularization: float = 0.0, epochs: int = 1, steps_per_epoch: int = 1,
                 warmup_epochs: int = 0, **kw):
        super().__init__(net, name=kw.pop("name", "bilevel_search"), **kw)
        if order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 or 2, got {order}")
        self.order = order
        self.weight_opt, self.alpha_opt = weight_opt, alpha_opt
        self.weight_cfg, self.alpha_cfg = weight_cfg, alpha_cfg
        self.beta, self.epochs, self.steps_per_epoch = float(beta_regularization), max(epochs, 1), max(steps_per_epoch, 1)
        self.warmup_steps = max(int(warmup_epochs), 0) * self.steps_per_epoch
        self.weight_opt.build(net.weights_only)
        self.alpha_opt.build(net.alphas)
        self.weight_scale = self.loss_scale("weight_loss_scale")
        self.alpha_scale = self.loss_scale("alpha_loss_scale")
        self.built = True

    @property
    def step_counter(self) -> tf.Variable:
        """Steps taken (the weight optimiser's iterations): seeds each step's augmentation."""
        return self.weight_opt.iterations

    def checkpointed(self) -> dict:
        """What a checkpoint of this trainer holds besides the network's variables."""
        return {"weight_opt": self.weight_opt, "alpha_opt": self.alpha_opt, **self.loss_scales}

    # -- steps ---------------------------------------------------------------------------------

    def train_step(self, data):
        (x_train, y_train), (x_val, y_val) = data
        if self.warmup_steps:
            val_logits = distribute.cond(self.weight_opt.iterations < self.warmup_steps,
                                         lambda xt, yt, xv, yv: self.net(xv, training=True), self.alpha_step,
                                         (x_train, y_train, x_val, y_val))
        else:
            val_logits = self.alpha_step(x_train, y_train, x_val, y_val)
        train_logits, train_loss = self.weight_step(x_train, y_train)
        self.track(loss=train_loss, accuracy=accuracy(train_logits, y_train),
                   val_loss=cross_entropy(val_logits, y_val), val_accuracy=accuracy(val_logits, y_val))
        logs = {k: t.result() for k, t in self.trackers.items()}
        logs["lr"] = optim.current_lr(self.weight_opt)
        logs["alpha_lr"] = optim.current_lr(self.alpha_opt)
        return logs

    def weight_step(self, x, y):
        weights = self.net.weights_only
        with _watching(weights) as tape:
            logits = self.net(x, training=True)
            loss = cross_entropy(logits, y)
            share = distribute.replica_loss(loss)
        grads = self.weight_scale.gradients(tape, share, weights)
        self.weight_scale.apply(grads, lambda g: self.weight_opt.apply_gradients(
            zip(optim.prepare_gradients(g, weights, self.weight_cfg), weights)))
        return logits, loss

    def beta_weight(self):
        """lambda of the beta-DARTS term at this step: beta * epoch / epochs (epochs of alpha steps)."""
        epoch = tf.cast(self.alpha_opt.iterations // self.steps_per_epoch, tf.float32)
        return self.beta * epoch / self.epochs

    def beta_term(self, alphas=None):
        """Mean over every edge of every candidate alpha group (not PC-DARTS's edge weights) of
        logsumexp(alpha row)."""
        from tfnas.search.darts import candidate_groups
        alphas = [self.net.alpha_vars[g] for g in candidate_groups(self.net.desc)] if alphas is None else alphas
        rows = tf.concat([tf.reduce_logsumexp(getattr(a, "value", a), axis=-1) for a in alphas], axis=0)
        return tf.reduce_mean(rows)

    def alpha_step(self, x_train, y_train, x_val, y_val):
        alphas = self.net.alphas
        if self.order == 1:
            with _watching(alphas) as tape:
                logits = self.net(x_val, training=True)
                loss = cross_entropy(logits, y_val)
                if self.beta:
                    loss = loss + self.beta_weight() * self.beta_term()
                loss = distribute.replica_loss(loss)
            grads = self.alpha_scale.gradients(tape, loss, alphas)
            finite = None
        else:
            logits, grads, finite = self.second_order_alpha_gradients(x_train, y_train, x_val, y_val)
            if self.beta:  # the term does not depend on the weights: its gradient adds to the unrolled one
                with _watching(alphas) as tape:
                    term = self.beta_weight() * self.beta_term()
                terms = tape.gradient(term, alphas, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                grads = [g + r for g, r in zip(grads, terms)]
        self.alpha_scale.apply(grads, lambda g: self.alpha_opt.apply_gradients(
            zip(optim.prepare_gradients(g, alphas, self.alpha_cfg), alphas)), finite)
        return logits

    def second_order_alpha_gradients(self, x_train, y_train, x_val, y_val):
        """d/d alpha of L_val(w - xi * dw, alpha): the unrolled gradient of DARTS (eq. 7-8), the validation
        logits at w', and (with a loss scale) whether the virtual step's gradients were finite: where they
        overflowed, the virtual step leaves the gradient out (w' stays finite, and so do the logits) and
        the alpha step is skipped."""
        weights, alphas = self.net.weights_only, self.net.alphas
        xi = optim.current_lr(self.weight_opt)
        backup = [_read(w) for w in weights]

        # The virtual step uses the optimiser's own update direction: momentum, gradient, L2 decay.
        with _watching(weights) as tape:
            loss = distribute.replica_loss(cross_entropy(self.net(x_train, training=True), y_train))
        grads = self.alpha_scale.gradients(tape, loss, weights)
        finite = self.alpha_scale.finite(grads)
        if finite is not None:
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        direction = self.virtual_step_direction(grads, weights, backup, xi)
        for w, b, d in zip(weights, backup, direction):
            _assign(w, b - xi * d)

        # At w': gradient of L_val for alphas and for the weights. In the reference code this pass runs on
        # a copy of the network, so it leaves the moving BatchNorm statistics alone.
        with tf.GradientTape() as tape:
            logits = self.net(x_val, training=True, update_statistics=False)
            loss = distribute.replica_loss(cross_entropy(logits, y_val))
        grads = self.alpha_scale.gradients(tape, loss, alphas + weights)
        d_alpha, d_weights = grads[:len(alphas)], grads[len(alphas):]

        # Hessian-vector product (d^2 L_train / d alpha d w) . d_weights by central differences at w.
        eps = 0.01 / (tf.linalg.global_norm(d_weights) + 1e-12)
        for w, b, g in zip(weights, backup, d_weights):
            _assign(w, b + eps * g)
        grads_pos = self._alpha_grads(x_train, y_train)
        # Each weight may change again as soon as the w+ pass has read it, so without this TF ran the w-
        # pass's forward beside the w+ pass's backward, and both passes' activations were alive at once.
        with tf.control_dependencies(grads_pos):
            for w, b, g in zip(weights, backup, d_weights):
                _assign(w, b - eps * g)
        grads_neg = self._alpha_grads(x_train, y_train)
        for w, b in zip(weights, backup):
            _assign(w, b)
        hvp = self.alpha_scale.unscaled(distribute.all_reduce(
            [(p - n) / (2.0 * eps) for p, n in zip(grads_pos, grads_neg)]))
        return logits, [da - xi * h for da, h in zip(d_alpha, hvp)], finite

    def _alpha_grads(self, x, y):
        with _watching(self.net.alphas) as tape:
            loss = distribute.replica_loss(cross_entropy(self.net(x, training=True), y))
        return self.alpha_scale.local_gradients(tape, loss, self.net.alphas)

    def virtual_step_direction(self, grads, weights, values, xi):
        """momentum * buffer + grad + wd * w, in PyTorch's SGD convention (DARTS's _compute_unrolled_model).
        `values` are the weights as already read for this step (not read again per variable).

        Keras's SGD keeps v = momentum * v - lr * g; the PyTorch buffer is -v / lr.
        """
        cfg = self.weight_cfg
        decay = tf.constant(cfg.weight_decay, tf.float32)
        direction = []
        for g, w, value in zip(grads, weights, values):
            d = g + decay * value
            if cfg.momentum > 0:
                v = self.weight_opt.momentums[self.weight_opt._get_variable_index(w)]
                d = d + cfg.momentum * (-v / xi)
            direction.append(d)
        return direction


# Raw reads and assignments for the virtual step's hundreds of weight tensors: Keras's `assign` costs about
# a millisecond of Python each while the step is traced. TF orders them by the variable they touch.
def _read(v):
    return tf.raw_ops.ReadVariableOp(resource=v.value.handle, dtype=v.value.dtype)


def _assign(v, value):
    tf.raw_ops.AssignVariableOp(resource=v.value.handle, value=value)


@contextlib.contextmanager
def _watching(variables: list):
    """A tape that records only what depends on `variables`: the ops of an alpha-only pass that do not
    depend on the alphas (the stem, the first edges of the first cell) get no gradient ops at all, and the
    convolutions of such a pass trace no filter gradients (see ops.conv.with_gradient)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([getattr(v, "value", v) for v in variables])
        yield tape
