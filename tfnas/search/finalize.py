"""Finalisation as a protocol of the operations (Archai's `finalize() -> (desc, rank)`).

Every op class says how its edge finalises (`OpLayer.finalize_edge`): a plain op keeps itself and is
*required* (rank None: always kept); an op that reads architecture weights turns into what those weights
choose: the DARTS mixed op into its strongest candidate, with a rank; the PetriDish op into a join of its
strongest (input, candidate) pairs, required, reading only their inputs. A node keeps its required edges plus its
`edges_per_node` best-ranked ones (ties in edge order), in edge order. No algorithm tests op names here:
a new kind of searchable op finalises by implementing `finalize_edge`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from tfnas.proto import descriptors_pb2 as pb


def finalize(desc: pb.ModelDesc, alphas: Mapping[str, np.ndarray], edges_per_node: int) -> pb.ModelDesc:
    """The discrete architecture of `desc` under `alphas` ({alpha group: [edges x candidates]}; a group
    left out keeps the values stored in `desc`): every edge finalised by its op from the weights its group
    gives it (alphas.group_weights), the alpha groups dropped."""
    from tfnas.alphas import alpha_arrays, group_weights
    from tfnas.ops import registry
    import tfnas.ops  # noqa: F401  (registers every op)

    weights = {g: group_weights(desc.alpha_groups[g] if g in desc.alpha_groups else pb.AlphaGroupDesc(), a)
               for g, a in {**alpha_arrays(desc), **alphas}.items()}
    final = pb.ModelDesc()
    final.CopyFrom(desc)
    final.ClearField("alpha_groups")
    for cell in final.cells:
        for node in cell.nodes:
            required, ranked = [], []
            for position, edge in enumerate(node.edges):
                chosen, rank = registry.op_class(edge.op.name).finalize_edge(edge, weights)
                (required if rank is None else ranked).append((rank, position, chosen))
            best = sorted(ranked, key=lambda r: (-r[0], r[1]))[:edges_per_node]
            kept = sorted(required + best, key=lambda r: r[1])
            del node.edges[:]
            node.edges.extend(edge for _, _, edge in kept)
    return final
