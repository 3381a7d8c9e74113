"""The DARTS mixed operation: softmax(alpha)-weighted sum of an edge's candidate operations.

The alphas themselves live on the model, one matrix per alpha group (all normal cells share one, all
reduction cells another); the caller passes the op its rows of softmax weights. `none` contributes
exactly zero to the sum and zero to every gradient, so it is not computed at all. As in the reference
code, search-time pooling candidates are followed by a non-affine BatchNorm.

Built with `copies=k`, one MixedOp is the k mixed edges of a cell that read the same state (see
`OpLayer`): each weighted candidate runs once with k weight sets side by side, and the weightless ones
(pools, identity) run once for all k edges. A pool's non-affine BatchNorm has the same batch statistics
(and so the same moving averages) for every edge; it runs once, either over the pool's output before
it is tiled and weighted, or, in alpha passes where that is faster (`_fold_pool_weight`), over the k
copies of that output with each edge's softmax weight folded in as its scale, as the weighted candidates
fold theirs. The result is the k edges' outputs, each exactly the single-edge mixed op's.

With `partial_channels` K > 1 (PC-DARTS, Xu et al. 2020) the candidates see only the first 1/K of the
input's channels and are built at that width, so the supernet holds about 1/K of the candidates'
activations; the other channels bypass the edge (max-pooled 2x2 on a stride-2 edge, as in the paper's
code), are concatenated after the mixed part and the result is shuffled in K channel groups, so the next
edges see a different slice of each state. The k copies of a grouped op share the bypass.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record  # private, stable in the pinned TF range

from tfnas.alphas import strongest
from tfnas.ops.batchnorm import BatchNorm
from tfnas.ops.channels import tile_channels
from tfnas.ops.constants import per_graph
from tfnas.ops.layer import OpLayer, SharedInputs
from tfnas.ops.registry import create, register
from tfnas.proto import descriptors_pb2 as pb
from tfnas.ops.space_to_batch import from_blocks


@register("mixed")
class MixedOp(OpLayer):
    supports_copies = True

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        if not desc.candidates:
            raise ValueError(f"operation {desc.id}: a mixed op needs candidates")
        self.partial = max(desc.partial_channels, 1)
        self.primitives = [c.name for c in desc.candidates]
        self.branches = []  # (alpha column, layer, pool BN or None)
        for column, cand in enumerate(desc.candidates):
            if cand.name == "none":
                continue
            self.branches.append((column, *candidate_branch(self, cand, options, self.copies, f"{cand.name}_bn")))
        self._layers = [layer for _, layer, _ in self.branches]  # tracked for weights and checkpoints
        self.finish_build()

    def call(self, x, weights=None, rows=None, training=False, update_statistics=True, edge_scale=None):
        """`weights`: softmax rows [edges, candidates]; `rows`: the `copies` rows this op's edges read
        (default: the first `copies`). Returns the `copies` edge outputs. With edge normalisation the rows
        come already scaled by the edges' weights, and `edge_scale` ([edges, 1]) scales the bypass of a
        partial-channel op."""
        rows = tuple(range(self.copies)) if rows is None else tuple(rows)
        if self.partial == 1:
            return self._mix(x, weights, rows, training, update_statistics)
        c = x.shape[-1] // self.partial
        bypass = x[..., c:]
        if self.stride == 2:
            bypass = tf.nn.max_pool2d(bypass, 2, 2, "SAME")
        outs = self._mix(x[..., :c], weights, rows, training, update_statistics)
        if edge_scale is not None:
            edge_scale = tf.cast(edge_scale, bypass.dtype)  # float32 weights, scaling activations
        return [shuffle_channels(tf.concat([y, bypass if edge_scale is None else bypass * edge_scale[r, 0]], axis=-1),
                                 self.partial) for y, r in zip(outs, rows)]

    def _mix(self, x, weights, rows: tuple, training, update_statistics):
        k = self.copies
        # The weights stay float32 (softmax of float32 alphas): BatchNorms take them as their scale. Where
        # they multiply activations of a lower compute precision they are cast to it (`scaling`).
        weights = tf.convert_to_tensor(weights, tf.float32)
        if len(rows) != k:
            raise ValueError(f"operation {self.desc.id}: {k} copies need {k} weight rows, got {len(rows)}")
        # Per candidate, each edge's weight repeated over its channels: columns[c] is a [k * channels]
        # vector. One MatMul with a 0/1 matrix picks and repeats them, exactly (one non-zero term per
        # entry); its gradient is a MatMul too, where gather/tile/reshape took about 30 ops to trace.
        channels = (self.desc.out_channels or self.desc.in_channels) // self.partial
        expand = _row_expansion(int(weights.shape[0]), rows, channels)
        expanded = tf.raw_ops.MatMul(a=weights, b=expand, transpose_a=True, transpose_b=False)
        columns = tf.unstack(expanded)
        cast_columns = []

        def scaling(column, y):
            """Candidate `column`'s weights in y's dtype (one cast for all candidates, where needed)."""
            if y.dtype == columns[column].dtype:
                return columns[column]
            if not cast_columns:
                cast_columns.extend(tf.unstack(tf.cast(expanded, y.dtype)))
            return cast_columns[column]

        terms, shared, blocked = [], SharedInputs(), {}  # blocked: block size -> outputs in that layout
        # A pool's BatchNorm takes the weights as its scale where its output is not shared by k copies,
        # and for k copies in passes that differentiate the weights (alpha passes): see _fold_pool_weight.
        fold_pools = training and record.should_record_backprop([weights])
        for column, layer, bn in self.branches:
            kwargs = {"update_statistics": update_statistics}
            if layer.reads_relu:
                kwargs["shared"] = shared
            if layer.folds_weight:  # the candidate's last BatchNorm applies the weight
                block = layer.blocks(x)
                if block:
                    kwargs["blocked"] = True
                y = layer(x, training=training, weight=columns[column], **kwargs)
                (blocked.setdefault(block, []) if block else terms).append(y)
                continue
            y = layer(x, training=training, **kwargs)
            shared_out = k > 1 and layer.out_copies == 1
            if bn is not None and (not shared_out or (fold_pools and _fold_pool_weight(k, bn.channels))):
                # The weight folded into the pool's BatchNorm (which runs over all k copies at once).
                y = tile_channels(y, k) if shared_out else y
                terms.append(bn(y, training, weight=columns[column], copies=k if shared_out else 1,
                                update_statistics=update_statistics))
                continue
            if bn is not None:
                y = bn(y, training, update_statistics=update_statistics)
            if shared_out:
                y = tile_channels(y, k)  # one output for all k edges
            # A per-channel vector on the last axis: TF's fast broadcasting path, forward and backward.
            terms.append(scaling(column, y) * y)
        for block, ys in blocked.items():  # summed in block layout, copied back once
            terms.append(from_blocks(tf.add_n(ys) if len(ys) > 1 else ys[0], block))
        if not terms:  # only `none` candidates
            s = self.stride
            return [tf.zeros_like(x if s == 1 else x[:, ::s, ::s, :])] * k
        out = tf.add_n(terms) if len(terms) > 1 else terms[0]
        return tf.split(out, k, axis=-1) if k > 1 else [out]

    def macs(self, h, w):
        return sum(layer.macs(h, w) for _, layer, _ in self.branches)

    def weight_layout(self):
        """None of its own: a mixed op's weights are its candidates' (`candidate_layouts`)."""
        return {}

    def candidate_layouts(self) -> dict[int, dict]:
        """Per computed candidate (by alpha column), its weights as in `OpLayer.weight_layout`: the
        candidate layer's own and, for a pool, those of the BatchNorm that follows it ("bn_mean",
        "bn_var"). The k edges of a grouped op share that BatchNorm (their pools see one input, so one set
        of statistics): every copy maps to the same variables; a one-copy op has its own."""
        return {column: branch_layout(layer, bn) for column, layer, bn in self.branches}

    @classmethod
    def finalize_edge(cls, edge, weights):
        """The strongest candidate other than `none` under the edge's softmax weights (its alpha row), with
        that weight as its rank; on a tie the earlier candidate, as in the reference code. With edge
        normalisation the rank is that weight times the edge's weight (PC-DARTS); the operation is still
        the row's strongest. A partial-channel candidate comes back at the edge's full width."""
        desc = edge.op
        row = np.asarray(weights[desc.alpha_group], np.float64)[desc.alpha_index]
        column, weight = strongest(row, [c.name for c in desc.candidates])
        if desc.edge_group:
            weight *= float(np.asarray(weights[desc.edge_group], np.float64)[desc.alpha_index, 0])
        chosen = pb.EdgeDesc(op=desc.candidates[column], inputs=edge.inputs)
        chosen.op.rank = weight
        if desc.partial_channels > 1:
            chosen.op.in_channels, chosen.op.out_channels = desc.in_channels, desc.out_channels
        return chosen, weight


def candidate_branch(owner: OpLayer, cand: pb.OpDesc, options: pb.CompilerOptions, copies: int, bn_name: str
                     ) -> tuple[OpLayer, BatchNorm | None]:
    """A candidate's layer and, for a pool, the non-affine BatchNorm that follows it in the DARTS search
    space (created on `owner` as `bn_name`). One definition for the mixed op and for the PetriDish join,
    whose chosen candidates keep their trained weights, pool statistics included."""
    layer = create(cand, options, copies)
    bn = None
    if "pool" in cand.name:
        bn = BatchNorm(owner, bn_name, (cand.out_channels or cand.in_channels) * layer.out_copies, affine=False)
    return layer, bn


def branch_layout(layer: OpLayer, bn: BatchNorm | None) -> dict:
    """A candidate branch's weights as in `OpLayer.weight_layout`: the layer's own and its pool BatchNorm's
    ("bn_mean", "bn_var": the same names wherever the branch lives, so weights restore by op id). Built as
    k copies, a pool's BatchNorm is shared by the k edges (their pools see one input): every copy maps to
    the same variables."""
    layout = dict(layer.weight_layout())
    if bn is not None:
        axis = 0 if layer.out_copies > 1 else None
        vectors = ([bn.gamma, bn.beta] if bn.affine else []) + [bn.moving_mean, bn.moving_var]
        for v in vectors:  # "max_pool_3x3_bn_mean" -> "bn_mean"
            name = "bn_" + v.name.rsplit("_", 1)[1]
            if name in layout:
                raise ValueError(f"operation {layer.desc.id}: {layer.desc.name} has a weight {name!r} of its own")
            layout[name] = (v, axis)
    return layout


def shuffle_channels(x, groups: int):
    """PC-DARTS's channel shuffle in NHWC: channel g * (C / groups) + j moves to j * groups + g. With the
    static shape of a traced step the reshapes take constants (no shape ops of their own)."""
    shape = x.shape.as_list() if x.shape.is_fully_defined() else tf.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
    y = tf.reshape(x, [n, h, w, groups, c // groups])
    return tf.reshape(tf.transpose(y, [0, 1, 2, 4, 3]), shape)


def _fold_pool_weight(copies: int, channels: int) -> bool:
    """Whether, in a pass that differentiates the edges' weights, a pool's BatchNorm shared by k > 1 edges
    takes their weights as its scale, running over the k copies of its input (see BatchNorm's `copies`),
    rather than over one copy and followed by a tile and a multiply (with one edge it always takes it:
    the same BatchNorm, one multiply less). Folded, the multiply and the reduction that gives the weights'
    gradient go; the BatchNorm runs k times wider. That was faster wherever k x channels is a multiple of
    16 and slower elsewhere, where oneDNN's BatchNorm covers a partial vector of 16 floats (measurements in
    benchmarks/README.md). A weight-gradient pass needs no weight gradient there, and folded its BatchNorm
    gradients would hold the k tiled copies instead of one, so it never folds."""
    return (copies * channels) % 16 == 0


def _row_expansion(edges: int, rows: tuple, channels: int):
    """[edges, len(rows) * channels] 0/1 matrix: column i * channels + j picks row rows[i]. Made once per
    traced graph and shape (the normal cells of a network share them)."""
    def make():
        m = np.zeros((edges, len(rows) * channels), np.float32)
        for i, r in enumerate(rows):
            m[r, i * channels:(i + 1) * channels] = 1.0
        return tf.constant(m)
    return per_graph(("row_expansion", edges, rows, channels), make)
