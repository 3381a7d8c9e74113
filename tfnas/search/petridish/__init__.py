"""PetriDish (Hu et al., NeurIPS 2019, "Efficient Forward Architecture Search"): the micro builder that
grows every cell by one node, and finalisation. TensorFlow-free.

The package: this module, algorithm.py (the seed's loop behind the search protocol) and gallery.py (the
finalised models, their lower convex hull and its picture).

Iteration i (1-based) of the seed's algorithm (seed 000) builds its search network with `grow(desc, i)`:
nodes after the i-th that have no edges are removed, a cell with fewer than i nodes gets empty ones,
and node i gets the PetriDish candidate op (tfnas/ops/petridish.py) on every earlier state, beside the
edges it may already have (the paper's x_out + sf(x_c)).

The seed model (`seed_model`) has the macro's nodes either empty (the seed's first case: nothing to
pre-train) or each reading s1 through skip_connect (Archai's seed; a stride-2 FactorizedReduce in
reduction cells). An empty seed network computes a constant, and its candidates read through
stop-gradient the outputs of cells that output zeros, so its first iteration learns only in the last
cell; the skip seed is a plain trainable network whose first node then grows, which is why it is the
default. The cells of
one type share their candidates' linear weights (one alpha group per type, as DARTS shares its
alphas), so that they finalise alike and the result is a cell pair that expands to any depth.
The cells' outputs are projected to a fixed width (MacroConfig.project_output), so a growing cell
leaves the cells after it unchanged; the new node's state is concatenated last, so the projection's
grown weight keeps its old part in front (tfnas.weights.restore with grow=True). Its new part keeps its
fresh initialisation rather than zeros: the new state is exactly zero when it joins (stop-forward), so
those columns cannot change the parent's function whatever they hold, while zero columns would cut the
candidates off from the loss (the gradient reaching the new state is the columns times the output's).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tfnas import macro as macro_lib
from tfnas.errors import UserError
from tfnas.proto import descriptors_pb2 as pb

GROUPS = {pb.NORMAL: "normal", pb.REDUCTION: "reduction"}
# Archai's PetriDish candidates: the DARTS operations without `none`.
PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
              "dil_conv_5x5")


class PetridishError(UserError):
    """A descriptor the PetriDish loop cannot continue from (some nodes empty and others not, say)."""


def node_edges(desc: pb.ModelDesc) -> tuple[list[str], list[str]]:
    """(ids of the nodes without edges, ids of the nodes with edges), over every cell."""
    empty, filled = [], []
    for cell in desc.cells:
        for n, node in enumerate(cell.nodes):
            (filled if node.edges else empty).append(node.id or f"{cell.id}.n{n}")
    return empty, filled


def needs_pre_training(desc: pb.ModelDesc, iteration: int) -> bool:
    """The seed's test before pre-training: every node has edges (train it), every node is empty (no point
    in training an empty model), or a mix, which no iteration of the loop produces: an error naming them."""
    empty, filled = node_edges(desc)
    if empty and filled:
        raise PetridishError(f"PetriDish iteration {iteration}: cannot pre-train a model whose nodes are partly "
                             f"empty: {', '.join(empty)} have no edges while {', '.join(filled)} have")
    return not empty


def seed_model(macro_desc: pb.ModelDesc, skip: bool) -> pb.ModelDesc:
    """The seed model of the loop: the macro descriptor's nodes empty, or (`skip`) each with one
    skip_connect from s1."""
    desc = pb.ModelDesc()
    desc.CopyFrom(macro_desc)
    if skip:
        for cell in desc.cells:
            for n, node in enumerate(cell.nodes):
                del node.edges[:]
                node.edges.add(op=macro_lib.make_op(cell, n, 1, "skip_connect", suffix=".seed"), inputs=[1])
    return macro_lib.rewire(desc)


def grow(desc: pb.ModelDesc, iteration: int, primitives: Sequence[str], keep: int = 3, init_scale: float = 0.1,
         seed: int = 0) -> pb.ModelDesc:
    """The search descriptor of iteration `iteration` (micro_builder(i) of the seed): every cell with at
    least `iteration` nodes (exactly that many from an empty seed), node `iteration` with a PetriDish op
    reading every earlier state, its candidates `primitives` and their weights uniform in
    [-init_scale, init_scale], drawn from (seed, iteration)."""
    out = pb.ModelDesc()
    out.CopyFrom(desc)
    out.ClearField("alpha_groups")
    n = iteration - 1  # the new node's index
    rows = {}
    for cell in out.cells:
        kept = [k for k, node in enumerate(cell.nodes) if k < iteration or node.edges]
        for k in reversed(range(len(cell.nodes))):
            if k not in kept:
                del cell.nodes[k]
        for k in range(len(cell.nodes), iteration):
            cell.nodes.add(id=f"{cell.id}.n{k}")
        for k, node in enumerate(cell.nodes[:n]):
            if not node.edges:
                raise PetridishError(f"PetriDish iteration {iteration}: node {node.id or k} of cell {cell.id} has no "
                                     "edges; every node before the new one must")
        node = cell.nodes[n]
        group = GROUPS[cell.cell_type]
        op = pb.OpDesc(name="petridish", id=f"{cell.id}.n{n}.petridish", stride=1, in_channels=cell.channels,
                       out_channels=cell.channels, alpha_group=group, alpha_index=0, keep=keep)
        for state in range(2 + n):
            part = macro_lib.make_op(cell, n, state, "mixed")
            part.alpha_group, part.alpha_index, part.input_index = group, state, state
            for name in primitives:
                part.candidates.append(macro_lib.make_op(cell, n, state, name, suffix=f".{name}"))
            op.candidates.append(part)
        node.edges.add(op=op, inputs=list(range(2 + n)))
        del cell.concat[:]
        cell.concat.extend(range(2, 2 + len(cell.nodes)))
        rows[group] = 2 + n
    rng = np.random.default_rng([seed, iteration])
    for group in sorted(rows):
        values = rng.uniform(-init_scale, init_scale, (rows[group], len(primitives))).astype(np.float32)
        out.alpha_groups[group].CopyFrom(pb.AlphaGroupDesc(
            primitives=list(primitives), num_edges=rows[group], values=values.ravel(),
            weighting=pb.AlphaGroupDesc.LINEAR))
    return macro_lib.rewire(out)


def finalize(desc: pb.ModelDesc, alphas: Mapping[str, np.ndarray]) -> pb.ModelDesc:
    """The finalised descriptor: every PetriDish op turned into its join (required), every other edge kept."""
    from tfnas.search import finalize as finalize_lib
    return finalize_lib.finalize(desc, alphas, edges_per_node=0)


def nodes_per_cell(desc: pb.ModelDesc) -> int:
    return max((len(cell.nodes) for cell in desc.cells), default=0)
