"""Random search (Li & Talwalkar, UAI 2019): the micro builder that samples a cell pair.

Trial i of a search is derived from (seed, i) alone: sampling keeps no state, so any trial can be rebuilt
from the configuration, and a resumed search samples what an uninterrupted one did. Every cell of a type
gets the same sampled nodes (as a DARTS genotype does); each node reads `edges_per_node` distinct earlier
states, each through an operation drawn (with replacement) from the primitives other than `none`.
TensorFlow-free; the search itself is in algorithm.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfnas import genotypes, macro as macro_lib
from tfnas.proto import descriptors_pb2 as pb

ZERO = "none"


def sample_cells(nodes: int, primitives: Sequence[str], edges_per_node: int, seed: int, trial: int
                 ) -> dict[int, list[list[tuple[str, int]]]]:
    """{cell type: per node, its (operation, input state) pairs} of trial `trial`."""
    rng = np.random.default_rng([seed, trial])
    ops = [p for p in primitives if p != ZERO]
    cells = {}
    for cell_type in (pb.NORMAL, pb.REDUCTION):
        sampled = []
        for n in range(nodes):
            inputs = sorted(int(s) for s in rng.choice(2 + n, size=edges_per_node, replace=False))
            names = rng.choice(len(ops), size=edges_per_node)
            sampled.append([(ops[int(k)], state) for k, state in zip(names, inputs)])
        cells[cell_type] = sampled
    return cells


def sample(macro_desc: pb.ModelDesc, primitives: Sequence[str], edges_per_node: int, seed: int,
           trial: int) -> pb.ModelDesc:
    """The macro descriptor with every cell filled by trial `trial`'s sampled nodes."""
    nodes = len(macro_desc.cells[0].nodes)
    cells = sample_cells(nodes, primitives, edges_per_node, seed, trial)
    desc = pb.ModelDesc()
    desc.CopyFrom(macro_desc)
    for cell in desc.cells:
        genotypes.fill_cell(cell, cells[cell.cell_type], list(range(2, 2 + nodes)))
    desc.source = f"random search, trial {trial}"
    return macro_lib.rewire(desc)


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial `trial`'s weight initialisation and data order."""
    return int(np.random.default_rng([seed, trial, 1]).integers(2**31 - 1))
