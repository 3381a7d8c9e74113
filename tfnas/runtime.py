"""Process-wide TensorFlow settings that tfnas chooses for its commands.

A DARTS step is tens of thousands of small, mostly independent ops. On a 2-core machine running
independent ops side by side (inter-op threads = cores, intra-op threads = 1) beat splitting each op over
both cores: the small search step took 1.08-1.21 s instead of 1.37-1.57 s (3 runs each), and the CIFAR
search step was unchanged (5.81 vs 5.93 s). Override with TFNAS_INTER_OP_THREADS / TFNAS_INTRA_OP_THREADS
(0 = TensorFlow's default).

The training steps (search and evaluation) run without Grappler, TensorFlow's graph optimiser, unless
`trainer.graph_optimizer` asks for it (`training_graph_options`). Grappler spent 9 s of the small search
step's first call (16.1 s with it, 6.9 s without) and 16 s of the DARTS_V2 evaluation step's (33.9 s
against 17.9 s); the small search step and the evaluation step were no faster with it (0.70-0.85 s
either way; 5.15 against 4.57 s), the CIFAR-10 search step about 9 % faster (5.78 against 6.32-6.38 s)
but not once its critical path was shortened (`search.darts.lead_edges_apart`: 5.60 against 5.31 s).
TFNAS_GRAPPLER=0/1 overrides the configuration.
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
def training_graph_options(graph_optimizer: bool = False):
    """Grappler on or off while a training step's function is first called (that is when TF optimises
    its graph); `trainer.graph_optimizer` of the configuration, overridden by TFNAS_GRAPPLER=0/1."""
    env = os.environ.get("TFNAS_GRAPPLER", "")
    enabled = env == "1" if env in ("0", "1") else graph_optimizer
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": not enabled})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})
