"""Architecture weights (alphas): their softmax and the strongest candidate of an edge.

One place for what finalisation, the cell pictures and the TensorBoard monitor all read off the alphas,
so that a picture always shows the operation finalisation would keep. TensorFlow-free (NumPy only).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfnas.proto import descriptors_pb2 as pb

ZERO_OP = "none"  # the candidate that contributes nothing; never the one an edge keeps


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis (float64 in, float64 out for exact comparisons)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def strongest(weights: Sequence[float], names: Sequence[str]) -> tuple[int, float] | None:
    """(column, weight) of the heaviest candidate other than `none`; on a tie the earlier candidate, as in
    the reference code. None if every candidate is `none`."""
    best = None
    for column, (name, weight) in enumerate(zip(names, weights)):
        if name != ZERO_OP and (best is None or float(weight) > best[1]):
            best = (column, float(weight))
    return best


def alpha_arrays(desc: pb.ModelDesc) -> dict[str, np.ndarray]:
    """The alphas stored in a search descriptor, as [edges x primitives] arrays; groups whose values do
    not fill that shape (none stored yet) are left out."""
    out = {}
    for group, spec in sorted(desc.alpha_groups.items()):
        shape = (spec.num_edges, len(spec.primitives))
        if spec.primitives and len(spec.values) == shape[0] * shape[1] and shape[0]:
            out[group] = np.asarray(spec.values, np.float32).reshape(shape)
    return out


def node_softmax(values: np.ndarray, node_edges: Sequence[int]) -> np.ndarray:
    """Softmax over the rows of each node (PC-DARTS's edge weights): `node_edges` consecutive rows per node."""
    values = np.asarray(values, np.float64)
    if sum(node_edges) != len(values):
        raise ValueError(f"node_edges {list(node_edges)} do not cover {len(values)} edges")
    out, start = np.empty_like(values), 0
    for n in node_edges:
        block = values[start:start + n]
        e = np.exp(block - block.max(axis=0, keepdims=True))
        out[start:start + n] = e / e.sum(axis=0, keepdims=True)
        start += n
    return out


def group_weights(spec: pb.AlphaGroupDesc, values: np.ndarray) -> np.ndarray:
    """What the edges read of an alpha group (float64), as the compiled network computes it: softmax over
    each row (DARTS), the values themselves (LINEAR: PetriDish), or a softmax over each node's rows
    (NODE_SOFTMAX: PC-DARTS's edge weights)."""
    if spec.weighting == pb.AlphaGroupDesc.LINEAR:
        return np.asarray(values, np.float64)
    if spec.weighting == pb.AlphaGroupDesc.NODE_SOFTMAX:
        return node_softmax(values, spec.node_edges)
    return softmax(values)
