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
                   seed: int = 0, partial_channels: int = 1, edge_normalization: bool = False) -> pb.ModelDesc:
    """Fills the macro descriptor's empty nodes with mixed edges; alphas start at scale * N(0, 1).

    PC-DARTS (Xu et al., ICLR 2020): `partial_channels` K > 1 builds the candidates at 1/K of the cell's
    channels (the mixed op passes the rest around them); `edge_normalization` adds one group of edge
    weights per cell type ("normal_edges", "reduction_edges"), a softmax over each node's edges, drawn
    after the alphas at the same scale."""
    desc = pb.ModelDesc()
    desc.CopyFrom(macro_desc)
    edge_count, node_edges = {}, {}
    k = max(partial_channels, 1)
    for cell in desc.cells:
        group = GROUPS[cell.cell_type]
        index = 0
        for n, node in enumerate(cell.nodes):
            del node.edges[:]
            for state in range(2 + n):
                op = macro_lib.make_op(cell, n, state, "mixed")
                op.alpha_group, op.alpha_index = group, index
                if k > 1:  # descriptors.validate refuses widths that do not split evenly
                    op.partial_channels = k
                if edge_normalization:
                    op.edge_group = edges_group(group)
                for name in primitives:
                    cand = macro_lib.make_op(cell, n, state, name, suffix=f".{name}")
                    cand.in_channels //= k
                    cand.out_channels //= k
                    op.candidates.append(cand)
                node.edges.add(op=op, inputs=[state])
                index += 1
        if edge_count.setdefault(group, index) != index:
            raise ValueError(f"cell {cell.id}: {group} cells differ in edge count; alphas cannot be shared")
        node_edges[group] = [2 + n for n in range(len(cell.nodes))]
    rng = np.random.default_rng(seed)
    for group in sorted(edge_count):
        values = alpha_init_scale * rng.standard_normal((edge_count[group], len(primitives)))
        desc.alpha_groups[group].CopyFrom(pb.AlphaGroupDesc(
            primitives=list(primitives), num_edges=edge_count[group], values=values.astype(np.float32).ravel()))
    if edge_normalization:  # drawn after every alpha, so the alphas are those of a search without it
        for group in sorted(edge_count):
            values = alpha_init_scale * rng.standard_normal(edge_count[group])
            desc.alpha_groups[edges_group(group)].CopyFrom(pb.AlphaGroupDesc(
                primitives=[EDGE_WEIGHT], num_edges=edge_count[group], values=values.astype(np.float32),
                weighting=pb.AlphaGroupDesc.NODE_SOFTMAX, node_edges=node_edges[group]))
    return desc


EDGE_WEIGHT = "edge"  # the one column of an edge-normalisation group


def edges_group(group: str) -> str:
    """The edge-normalisation group of an alpha group (PC-DARTS)."""
    return f"{group}_edges"


def candidate_groups(desc: pb.ModelDesc) -> list[str]:
    """The alpha groups whose rows weigh candidate operations (softmax), without the edge weights."""
    return [g for g in sorted(desc.alpha_groups)
            if desc.alpha_groups[g].weighting == pb.AlphaGroupDesc.SOFTMAX]


def with_alphas(supernet: pb.ModelDesc, alphas: Mapping[str, np.ndarray]) -> pb.ModelDesc:
    """The search descriptor holding the current alphas (what supernet.pbtxt keeps)."""
    trained = pb.ModelDesc()
    trained.CopyFrom(supernet)
    for g, a in alphas.items():
        del trained.alpha_groups[g].values[:]
        trained.alpha_groups[g].values.extend(np.asarray(a, np.float32).ravel().tolist())
    return trained


SKIP = "skip_connect"
# Operations without weights: what a collapsing DARTS search piles up (Zela et al. 2020; P-DARTS).
PARAMETER_FREE = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")


def finalize(desc: pb.ModelDesc, alphas: Mapping[str, np.ndarray], edges_per_node: int = 2,
             max_skip_connect: int = 0) -> pb.ModelDesc:
    """The discrete architecture: per node the `edges_per_node` mixed edges whose strongest operation other
    than `none` weighs most, each turned into that operation with its weight as rank (search.finalize).

    `max_skip_connect` > 0 caps the skip connections of the normal cell (P-DARTS, Chen et al. 2019, keeps
    2): while it has more, its weakest skip edge gives way to that edge's strongest parametric operation
    (its skip and parameter-free candidates are masked out and the cell finalised again, so each node still
    keeps its best `edges_per_node` edges)."""
    from tfnas.search import finalize as finalize_lib
    masked = {g: np.array(a, np.float64) for g, a in alphas.items()}
    while True:
        final = finalize_lib.finalize(desc, masked, edges_per_node)
        if max_skip_connect <= 0 or GROUPS[pb.NORMAL] not in masked:
            return final
        skips = kept_skips(final, desc)
        if len(skips) <= max_skip_connect:
            return final
        _, row = min(skips)
        primitives = list(desc.alpha_groups[GROUPS[pb.NORMAL]].primitives)
        weak = [c for c, name in enumerate(primitives) if name in PARAMETER_FREE]
        if len(weak) == len(primitives):  # nothing parametric to give way to: only the skip goes
            weak = [primitives.index(SKIP)]
        masked[GROUPS[pb.NORMAL]][row, weak] = -np.inf


def kept_skips(final: pb.ModelDesc, supernet: pb.ModelDesc) -> list[tuple[float, int]]:
    """(rank, alpha row) of each skip connection kept in the first normal cell of a finalised supernet."""
    cell = next((c for c in final.cells if c.cell_type == pb.NORMAL), None)
    if cell is None:
        return []
    rows = {e.op.id: e.op.alpha_index for c in supernet.cells if c.id == cell.id for n in c.nodes for e in n.edges}
    out = []
    for node in cell.nodes:
        for edge in node.edges:
            if edge.op.name == SKIP:
                mixed_id = edge.op.id.rsplit(".", 1)[0]  # `c0.n1.e2.skip_connect` -> its mixed edge `c0.n1.e2`
                out.append((edge.op.rank, rows[mixed_id]))
    return out


def counts(final: pb.ModelDesc) -> dict[str, int]:
    """Skip connections and parameter-free operations kept in the first cell of each type: a collapse
    onto them shows as these counts rising."""
    out = {}
    for cell_type, group in GROUPS.items():
        cell = next((c for c in final.cells if c.cell_type == cell_type), None)
        if cell is None:
            continue
        names = [e.op.name for n in cell.nodes for e in n.edges]
        out[f"{group}/skip_connect"] = sum(name == SKIP for name in names)
        out[f"{group}/parameter_free"] = sum(name in PARAMETER_FREE for name in names)
    return out
