"""Process-wide TensorFlow settings that tfnas chooses for its commands.

A DARTS step is tens of thousands of small, mostly independent ops. On a 2-core machine running
independent ops side by side (inter-op threads = cores, intra-op threads = 1) beat splitting each op over
both cores: the small search step took 1.08-1.21 s instead of 1.37-1.57 s (3 runs each), and the CIFAR
search step was unchanged (5.81 vs 5.93 s). Override with TFNAS_INTER_OP_THREADS / TFNAS_INTRA_OP_THREADS
(0 = TensorFlow's default).

The training steps (search and evaluation) run without Grappler, TensorFlow's graph optimiser
(`training_graph_options`): it spent 9 s of the small search step's first call (16.1 s with it, 6.9 s
without) and 16 s of the DARTS_V2 evaluation step's (33.9 s against 17.9 s), and the steps were no
slower without it (small search 0.70-0.85 s either way; evaluation 4.57 against 5.15 s, 0.5 GiB less
memory). TFNAS_GRAPPLER=1 turns it back on.
"""
from __future__ import annotations

import contextlib
import os

import tensorflow as tf


def configure_threads() -> tuple[int, int]:
    """Sets the thread pools once, before TensorFlow's runtime starts; later calls change nothing."""
    inter = int(os.environ.get("TFNAS_INTER_OP_THREADS", os.cpu_count() or 0))
    intra = int(os.environ.get("TFNAS_INTRA_OP_THREADS", 1))
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    except RuntimeError:  # the runtime already started (e.g. inside a notebook): keep what it has
        pass
    return (tf.config.threading.get_inter_op_parallelism_threads(),
            tf.config.threading.get_intra_op_parallelism_threads())


@contextlib.contextmanager
def training_graph_options():
    """Grappler off while a training step's function is first called (that is when TF optimises a graph)."""
    if os.environ.get("TFNAS_GRAPPLER", "0") not in ("", "0"):
        yield
        return
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})
