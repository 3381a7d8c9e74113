"""DARTS (Liu, Simonyan, Yang, ICLR 2019): the micro builder of the supernet and its finalisation.

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


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def finalize(desc: pb.ModelDesc, alphas: Mapping[str, np.ndarray], edges_per_node: int = 2) -> pb.ModelDesc:
    """The discrete architecture: a plain descriptor with no mixed edges and no alphas."""
    final = pb.ModelDesc()
    final.CopyFrom(desc)
    final.ClearField("alpha_groups")
    for cell in final.cells:
        for n, node in enumerate(cell.nodes):
            scored = []
            for position, edge in enumerate(node.edges):
                op = edge.op
                if op.name != "mixed":
                    scored.append((op.rank or 1.0, position, edge))
                    continue
                weights = softmax(np.asarray(alphas[op.alpha_group], np.float64)[op.alpha_index])
                # Strongest op other than `none`; on a tie the earlier candidate, as in the reference code.
                best = max(((w, -c) for c, w in enumerate(weights) if op.candidates[c].name != "none"))
                best = (best[0], -best[1])
                chosen = pb.EdgeDesc(inputs=edge.inputs)
                chosen.op.CopyFrom(op.candidates[best[1]])
                chosen.op.rank = float(best[0])
                scored.append((best[0], position, chosen))
            # Strongest first; ties keep edge order. Kept edges stay in input order for readability.
            kept = sorted(sorted(scored, key=lambda s: (-s[0], s[1]))[:edges_per_node], key=lambda s: s[1])
            kept_edges = [pb.EdgeDesc(op=e.op, inputs=e.inputs) for _, _, e in kept]
            del node.edges[:]
            node.edges.extend(kept_edges)
    return final


def alpha_arrays(desc: pb.ModelDesc) -> dict[str, np.ndarray]:
    """The alphas stored in a descriptor, as [edges x primitives] arrays."""
    return {g: np.asarray(a.values, np.float32).reshape(a.num_edges, len(a.primitives))
            for g, a in desc.alpha_groups.items()}
