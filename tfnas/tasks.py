"""Synthetic tasks whose right answer is known.

A search can only be judged against an answer. On real data nobody knows the best cell, so these tasks
plant one: the data are built so that a single operation of the search space can separate the classes,
and a search that works must find it. The tests use them to check that a search ranks the right
operation first; benchmarks/search_quality.py reports how often a configuration's search does.
Each task is a `data.Dataset` made from its seed alone (numpy, no TensorFlow ops), so a seed names
the same data on every machine.
"""
from __future__ import annotations

import numpy as np

from tfnas import data as data_lib


def far_correlation_task(seed: int, n: int = 1024) -> data_lib.Dataset:
    """8x24 binary images made of 6-column blocks b, o, b, o: o = b for class 1 and o = 255 - b for
    class 0. Pixel statistics are identical in both classes; only features that compare pixels 6 columns
    apart separate them. In two DARTS cells only dil_conv_5x5 reaches that far (taps at +-4; the 3x3
    stem adds 1, two stacked sep_conv_3x3 add 2 each, skip nothing), so the search must pick it."""
    rng = np.random.default_rng(seed)
    block = rng.choice([0, 255], size=(n, 8, 6, 1)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    other = np.where(y[:, None, None, None] == 1, block, 255 - block).astype(np.uint8)
    x = np.concatenate([block, other, block, other], axis=2)
    return data_lib.Dataset("far-correlation", (x, y), (x[:64], y[:64]), ["anti", "same"])
