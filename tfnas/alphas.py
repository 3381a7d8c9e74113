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
