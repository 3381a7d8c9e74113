"""The DARTS mixed operation: softmax(alpha)-weighted sum of an edge's candidate operations.

The alphas themselves live on the model, one matrix per alpha group (all normal cells share one, all
reduction cells another); the caller passes the op its rows of softmax weights. `none` contributes
exactly zero to the sum and zero to every gradient, so it is not computed at all. As in the reference
code, search-time pooling candidates are followed by a non-affine BatchNorm.

Built with `copies=k`, one MixedOp is the k mixed edges of a cell that read the same state (see
`OpLayer`): each weighted candidate runs once with k weight sets side by side, and the weightless ones
(pools and their non-affine BatchNorm, identity) run once for all k edges, since in training their
outputs and batch statistics are the same for every edge (and so are their moving averages). The
result is the k edges' outputs, each exactly the single-edge mixed op's.
"""
from __future__ import annotations

import tensorflow as tf

from tfnas.ops.base import BatchNorm, OpLayer, SharedInputs
from tfnas.ops.registry import create, register


@register("mixed")
class MixedOp(OpLayer):
    supports_copies = True

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        if not desc.candidates:
            raise ValueError(f"operation {desc.id}: a mixed op needs candidates")
        self.primitives = [c.name for c in desc.candidates]
        self.branches = []  # (alpha column, layer, pool BN or None)
        for column, cand in enumerate(desc.candidates):
            if cand.name == "none":
                continue
            layer = create(cand, options, self.copies)
            bn = None
            if "pool" in cand.name:
                channels = (cand.out_channels or cand.in_channels) * layer.out_copies
                bn = BatchNorm(self, f"{cand.name}_bn", channels, affine=False)
            self.branches.append((column, layer, bn))
        self._layers = [layer for _, layer, _ in self.branches]  # tracked for weights and checkpoints
        self.finish_build()

    def call(self, x, weights=None, training=False):
        """`weights`: [copies, candidates] softmax rows, one per edge. Returns the `copies` edge outputs."""
        k = self.copies
        # Per candidate, each edge's weight repeated over its channels: a [k * channels] vector.
        channels = self.desc.out_channels or self.desc.in_channels
        per_copy = tf.transpose(tf.reshape(weights, [k, -1]))[:, :, None]  # [candidates, k, 1]
        # (tile + reshape rather than tf.repeat, whose index arithmetic adds int32 ops to every step)
        columns = tf.unstack(tf.reshape(tf.tile(per_copy, [1, 1, channels]), [-1, k * channels]))
        terms, shared = [], SharedInputs()
        for column, layer, bn in self.branches:
            kwargs = {"shared": shared} if layer.reads_relu else {}
            if layer.folds_weight:  # the candidate's last BatchNorm applies the weight
                terms.append(layer(x, training=training, weight=columns[column], **kwargs))
                continue
            y = layer(x, training=training, **kwargs)
            if bn is not None:
                y = bn(y, training)
            if k > 1 and layer.out_copies == 1:
                y = tf.tile(y, [1, 1, 1, k])  # one output for all k edges
            # A per-channel vector on the last axis: TF's fast broadcasting path, forward and backward.
            terms.append(columns[column] * y)
        if not terms:  # only `none` candidates
            s = self.stride
            return [tf.zeros_like(x if s == 1 else x[:, ::s, ::s, :])] * k
        out = tf.add_n(terms) if len(terms) > 1 else terms[0]
        return tf.split(out, k, axis=-1) if k > 1 else [out]

    def macs(self, h, w):
        return sum(layer.macs(h, w) for _, layer, _ in self.branches)
