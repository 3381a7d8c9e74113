"""Supervised training of one network: the evaluation from scratch, each random-search trial, and
PetriDish's pre-training and arch-training.

One SGD (or Adam) step per batch on the classification loss, plus each auxiliary tower's weighted loss
where the network has them (evaluation), with DARTS's coupled weight decay and gradient clipping. A
network with architecture weights (PetriDish's candidates) trains them in the same step, under an L1
penalty instead of the weight decay (Hu et al., 2019).
Under a strategy with several replicas, each replica's loss is its share of the global batch's mean and
the gradients are summed across replicas before clipping and decay (tfnas.distribute).
Augmentation happens before the step sees the batch (train.steps), seeded by the optimiser's iterations,
so a resumed run draws the same crops as an uninterrupted one.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from tfnas import distribute
from tfnas.compiler import NasModel
from tfnas.proto import config_pb2
from tfnas.train import optim
from tfnas.train.metrics import accuracy, cross_entropy
from tfnas.train.trainer import Trainer


class SupervisedTrainer(Trainer):
    """`train_step((x, labels))` is one optimiser step; `opt.iterations` counts them."""

    def __init__(self, net: NasModel, optimizer: keras.optimizers.Optimizer, opt_cfg: config_pb2.OptimizerConfig,
                 l1: float = 0.0, **kw):
        super().__init__(net, name=kw.pop("name", "supervised_trainer"), **kw)
        self.opt, self.opt_cfg, self.l1 = optimizer, opt_cfg, float(l1)
        self.opt.build(net.trainable_variables)
        self.scale = self.loss_scale("optimizer_loss_scale")
        self.built = True

    @property
    def step_counter(self) -> tf.Variable:
        return self.opt.iterations

    def checkpointed(self) -> dict:
        """What a checkpoint of this trainer holds besides the network's variables."""
        return {"optimizer": self.opt, **self.loss_scales}

    def train_step(self, data):
        """One step on a normalised (and augmented) batch (x, labels)."""
        x, labels = data
        weights, alphas = self.net.weights_only, self.net.alphas
        variables = weights + alphas
        with tf.GradientTape() as tape:
            logits, aux_logits = self.net.forward(x, training=True)
            loss = cross_entropy(logits, labels)
            total = loss
            for (_, weight, _), aux in zip(self.net.aux, aux_logits):
                total = total + weight * cross_entropy(aux, labels)
            if alphas and self.l1:
                total = total + self.l1 * tf.add_n([tf.reduce_sum(tf.abs(a)) for a in alphas])
            total = distribute.replica_loss(total)
        grads = self.scale.gradients(tape, total, variables)

        def update(grads):
            grads = optim.prepare_gradients(grads, variables, self.opt_cfg, decayed=len(weights))
            # Weights that the loss does not reach (PetriDish's first iteration: everything before the
            # candidates, which read their inputs through stop-gradient) are left alone, as PyTorch's SGD
            # skips them.
            self.opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        self.scale.apply(grads, update)
        self.track(loss=loss, accuracy=accuracy(logits, labels))
        return {**{k: t.result() for k, t in self.trackers.items()}, "lr": optim.current_lr(self.opt)}
