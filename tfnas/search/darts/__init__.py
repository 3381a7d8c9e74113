"""DARTS (Liu, Simonyan, Yang, ICLR 2019): the micro builder of the supernet and its finalisation.

The package: this module (TensorFlow-free: the supernet, finalisation), algorithm.py (DARTS behind the
search protocol), bilevel.py (its trainer), monitor.py (its TensorBoard view of the alphas).

The micro builder connects every node to every earlier state with a mixed edge; the edges of all cells
of one type read one shared alpha matrix ("normal" or "reduction"), rows in edge order. Finalisation
keeps, per node, the k incoming edges whose strongest operation other than `none` has the largest
softmax weight, each with that operation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tfnas import macro as macro_lib
from tfnas.proto import descriptors_pb2 as pb

GROUPS = {pb.NORMAL: "normal", pb.REDUCTION: "reduction"}
# The candidate operations of DARTS, in the reference code's order (the alpha column order): the default
# of search.darts.primitives. Each is an op of the registry (tfnas/ops/darts.py).
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def build_supernet(macro_desc: pb.ModelDesc, primitives: Sequence[str], alpha_init_scale: float = 1e-3,
                   seed: int = 0) -> pb.ModelDesc:
    """Fills the macro descriptor's empty nodes with mixed edges; alphas start at scale * N(0, 1)."""
    desc = pb.ModelDesc()
    desc.CopyFrom(macro_desc)
    edge_count = {}
    for cell in desc.cells:
        group = GROUPS[cell.cell_type]
        index = 0
        for n, node in enumerate(cell.nodes):
            del node.edges[:]
            for state in range(2 + n):
                op = macro_lib.make_op(cell, n, state, "mixed")
                op.alpha_group, op.alpha_index = group, index
                for name in primitives:
                    cand = macro_lib.make_op(cell, n, state, name, suffix=f".{name}")
                    op.candidates.append(cand)
                node.edges.add(op=op, inputs=[state])
                index += 1
        if edge_count.setdefault(group, index) != index:
            raise ValueError(f"cell {cell.id}: {group} cells differ in edge count; alphas cannot be shared")
    rng = np.random.default_rng(seed)
    for group in sorted(edge_count):
        values = alpha_init_scale * rng.standard_normal((edge_count[group], len(primitives)))
        desc.alpha_groups[group].CopyFrom(pb.AlphaGroupDesc(
            primitives=list(primitives), num_edges=edge_count[group], values=values.astype(np.float32).ravel()))
    return desc


def with_alphas(supernet: pb.ModelDesc, alphas: Mapping[str, np.ndarray]) -> pb.ModelDesc:
    """The search descriptor holding the current alphas (what supernet.pbtxt keeps)."""
    trained = pb.ModelDesc()
    trained.CopyFrom(supernet)
    for g, a in alphas.items():
        del trained.alpha_groups[g].values[:]
        trained.alpha_groups[g].values.extend(np.asarray(a, np.float32).ravel().tolist())
    return trained


def finalize(desc: pb.ModelDesc, alphas: Mapping[str, np.ndarray], edges_per_node: int = 2) -> pb.ModelDesc:
    """The discrete architecture: per node the `edges_per_node` mixed edges whose strongest operation other
    than `none` weighs most, each turned into that operation with its weight as rank (search.finalize)."""
    from tfnas.search import finalize as finalize_lib
    return finalize_lib.finalize(desc, alphas, edges_per_node)
