"""Search: one runner (runner.py) for every algorithm behind one protocol (algorithm.py).

    algorithm.py  the Algorithm protocol and the registry of `search.algorithm` values
    runner.py     the generic search: data, run directory, keyed loops, checkpoints, final files
    finalize.py   finalisation as the ops' protocol (required edges, top-k ranked ones)
    darts/        DARTS: supernet (micro builder), bi-level trainer, alpha monitor
    random/       random search: sampled cells (micro builder), trials, trials.tsv
"""
