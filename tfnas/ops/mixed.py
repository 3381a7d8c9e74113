"""The DARTS mixed operation: softmax(alpha)-weighted sum of an edge's candidate operations.

The alphas themselves live on the model, one matrix per alpha group (all normal cells share one, all
reduction cells another); the model passes each edge its row of softmax weights. `none` contributes
exactly zero to the sum and zero to every gradient, so it is not computed at all. As in the reference
code, search-time pooling candidates are followed by a non-affine BatchNorm.
"""
from __future__ import annotations

import tensorflow as tf

from tfnas.ops.base import BatchNorm, OpLayer
from tfnas.ops.registry import create, register


@register("mixed")
class MixedOp(OpLayer):
    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        if not desc.candidates:
            raise ValueError(f"operation {desc.id}: a mixed op needs candidates")
        self.primitives = [c.name for c in desc.candidates]
        self.branches = []  # (alpha column, layer, pool BN or None)
        for column, cand in enumerate(desc.candidates):
            if cand.name == "none":
                continue
            layer = create(cand, options)
            bn = None
            if "pool" in cand.name:
                bn = BatchNorm(self, f"{cand.name}_bn", cand.out_channels or cand.in_channels, affine=False)
            self.branches.append((column, layer, bn))
        self._layers = [layer for _, layer, _ in self.branches]  # tracked for weights and checkpoints
        self.finish_build()

    def call(self, x, weights=None, training=False):
        out = None
        for column, layer, bn in self.branches:
            y = layer(x, training=training)
            if bn is not None:
                y = bn(y, training)
            y = weights[column] * y
            out = y if out is None else out + y
        if out is None:  # only `none` candidates
            s = self.stride
            out = tf.zeros_like(x if s == 1 else x[:, ::s, ::s, :])
        return out

    def macs(self, h, w):
        return sum(layer.macs(h, w) for _, layer, _ in self.branches)
