"""The PetriDish operations (Hu et al., NeurIPS 2019): the candidate layer of a growing node, and the
join it finalises into.

`petridish` is the node a search iteration adds. Every candidate primitive reads every earlier state of
the cell through stop-gradient (sg(x): forward x, gradient 0); the candidates are weighted by linear
architecture weights (an alpha group with AlphaGroupDesc.LINEAR, under an L1 penalty) and summed, and
the sum joins the cell through stop-forward (sf(x) = x - sg(x): forward exactly 0, gradient identity).
The network therefore computes exactly what its parent computed, while the candidates, weights and
convolutions alike, are fitted to the parent's loss; and the parent's weights get nothing from them.
Its parts are one DARTS mixed op per input state (`candidates`, each reading `inputs[input_index]`
with its own alpha row): a mixed op takes whatever weights it is handed, so the same layer serves
softmax (DARTS) and linear (PetriDish) weights.

`petridish_join` is the finalised node: the strongest (input, candidate) pairs, each on its own state,
concatenated, then a 1x1 conv and BatchNorm (the paper's concat + projection). Its children keep the
candidates' ids, and with them their trained weights (tfnas.weights restores by id); the projection is
the join's own. It is an ordinary op: it runs in search networks (the next iteration's parent) and in
evaluation networks alike.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnas.ops.batchnorm import BatchNorm
from tfnas.ops.conv import conv2d
from tfnas.ops.layer import OpLayer
from tfnas.ops.mixed import MixedOp, branch_layout, candidate_branch
from tfnas.ops.registry import register
from tfnas.proto import descriptors_pb2 as pb

SEARCH_SUFFIX, JOIN_SUFFIX = ".petridish", ".join"


def join_id(search_id: str) -> str:
    """The id of the join a PetriDish op finalises into (`c0.n2.petridish` -> `c0.n2.join`)."""
    return search_id.removesuffix(SEARCH_SUFFIX) + JOIN_SUFFIX


def stop_forward(x):
    """x - sg(x): exactly zero forward (x - x of a finite float), the identity backward."""
    return x - tf.stop_gradient(x)


@register("petridish")
class PetriDishOp(OpLayer):
    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        if not desc.candidates:
            raise ValueError(f"operation {desc.id}: a PetriDish op needs one mixed op per input")
        self.parts = [MixedOp(part, options) for part in desc.candidates]
        self._layers = self.parts  # tracked for weights and checkpoints
        self.finish_build()

    def call(self, *xs, weights=None, rows=None, training=False, update_statistics=True):
        """`xs`: the states of the edge's `inputs`; `weights`: the alpha group's (linear) weights, each part
        reading its own row. Returns [the node's contribution], zero forward."""
        terms = [part(tf.stop_gradient(xs[part.desc.input_index]), weights=weights, rows=(part.desc.alpha_index,),
                      training=training, update_statistics=update_statistics)[0] for part in self.parts]
        return [stop_forward(tf.add_n(terms) if len(terms) > 1 else terms[0])]

    def macs_of(self, sizes):
        return sum(part.macs(*sizes[part.desc.input_index]) for part in self.parts)

    def out_size_of(self, sizes):
        part = self.parts[0]
        return part.out_size(*sizes[part.desc.input_index])

    def weight_layout(self):
        """None of its own: its weights are its parts' candidates' (tfnas.weights walks `parts`)."""
        return {}

    @classmethod
    def finalize_edge(cls, edge, weights):
        """The join of the `op.keep` (input, candidate) pairs of largest |weight| (ties: the earlier input,
        then the earlier candidate), strongest first, each with its signed weight as rank; it reads only
        their states, and it is required (rank None): later finalisations never drop it. By magnitude:
        the join's projection can take either sign, and the L1 penalty drives the useless ones to zero."""
        desc = edge.op
        values = np.asarray(weights[desc.alpha_group], np.float64)  # a LINEAR group: the values themselves
        pairs = []
        for part in desc.candidates:
            for column, cand in enumerate(part.candidates):
                if cand.name != "none":
                    weight = float(values[part.alpha_index, column])
                    pairs.append((-abs(weight), part.input_index, column, cand, weight))
        kept = sorted(pairs, key=lambda p: p[:3])[:max(desc.keep, 1)]
        states = sorted({edge.inputs[input_index] for _, input_index, _, _, _ in kept})
        join = pb.OpDesc(name="petridish_join", id=join_id(desc.id), stride=1, in_channels=desc.in_channels,
                         out_channels=desc.out_channels)
        for _, input_index, _, cand, weight in kept:
            child = join.children.add()
            child.CopyFrom(cand)
            child.rank = weight
            child.input_index = states.index(edge.inputs[input_index])
        return pb.EdgeDesc(op=join, inputs=states), None


@register("petridish_join")
class PetriDishJoin(OpLayer):
    """children (each on its input, pools followed by their non-affine BatchNorm as in the search) ->
    concat -> 1x1 conv -> BN (affine in evaluation)."""

    def __init__(self, desc, options, **kw):
        super().__init__(desc, options, **kw)
        if not desc.children:
            raise ValueError(f"operation {desc.id}: a PetriDish join needs children")
        self.branches = [candidate_branch(self, child, options, 1, f"child{j}_bn")
                         for j, child in enumerate(desc.children)]
        self._layers = [layer for layer, _ in self.branches]
        c_in = sum(child.out_channels or child.in_channels for child in desc.children)
        self.w = self.conv_weight("kernel", 1, 1, c_in, desc.out_channels)
        self.bn = BatchNorm(self, "bn", desc.out_channels, options.affine)
        self.finish_build()

    def call(self, *xs, training=False, update_statistics=True):
        ys = []
        for layer, bn in self.branches:
            y = layer(xs[layer.desc.input_index], training=training, update_statistics=update_statistics)
            ys.append(y if bn is None else bn(y, training, update_statistics=update_statistics))
        x = tf.concat(ys, -1) if len(ys) > 1 else ys[0]
        return self.bn.after_conv(lambda w: conv2d(x, w, matmul=self.options.pointwise_matmul), [self.w], training,
                                  update_statistics=update_statistics)

    def start_as_sum(self) -> None:
        """Sets the projection to sum(rank_j * child_j): the join starts from the weighted sum of its
        candidates that the search trained (BatchNorm then sets the scale), not from a random mix."""
        c = self.desc.out_channels
        kernel = np.zeros(self.w.shape, np.float32)
        for j, child in enumerate(self.desc.children):
            kernel[0, 0, j * c:(j + 1) * c, :] = child.rank * np.eye(c, dtype=np.float32)
        self.w.assign(kernel)

    def weight_layout(self):
        """Its own weights (the projection and its BatchNorm); the children's are `child_layouts`."""
        own = {id(v) for v in (self.w, self.bn.moving_mean, self.bn.moving_var)}
        if self.bn.affine:
            own |= {id(self.bn.gamma), id(self.bn.beta)}
        return {name: ref for name, ref in super().weight_layout().items() if id(ref[0]) in own}

    def child_layouts(self) -> list[dict]:
        """Per child, its weights as in `OpLayer.weight_layout` (a pool's BatchNorm as "bn_mean",
        "bn_var", the names it had as a candidate)."""
        return [branch_layout(layer, bn) for layer, bn in self.branches]

    def macs_of(self, sizes):
        total, out = 0, None
        for layer, _ in self.branches:
            hw = sizes[layer.desc.input_index]
            total += layer.macs(*hw)
            out = layer.out_size(*hw)
        return total + out[0] * out[1] * int(np.prod(self.w.shape))

    def out_size_of(self, sizes):
        layer = self.branches[0][0]
        return layer.out_size(*sizes[layer.desc.input_index])
