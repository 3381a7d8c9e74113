"""Constants a traced step needs hundreds of times, made once per graph and per tracing thread.

Each `tf.constant` is an op to trace and to run; the BatchNorm unit scales, shape vectors and the mixed
op's row expansions repeat across every cell and pass of a step, so each is made once per traced graph.
The cache is per thread as well: `tf.distribute.MirroredStrategy` traces each replica's function on its
own thread, under its own device scope, into the same graph, and a constant must live on the replica's
device (and two threads must not fill one dictionary at once). It is a cache of immutable values: it never
changes what an op computes.
"""
from __future__ import annotations

import threading
import weakref
from typing import Callable

import tensorflow as tf

_LOCAL = threading.local()  # per thread: WeakKeyDictionary graph -> {key: tensor}


def per_graph(key: tuple, make: Callable[[], object]):
    """`make()` once per (traced graph, thread) and key."""
    caches = getattr(_LOCAL, "caches", None)
    if caches is None:
        caches = _LOCAL.caches = weakref.WeakKeyDictionary()
    cache = caches.setdefault(tf.compat.v1.get_default_graph(), {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def constant(value, dtype):
    """A shared tf.constant (value must be hashable: nested tuples of numbers)."""
    return per_graph(("constant", value, dtype), lambda: tf.constant(value, dtype))


def shape_of(t):
    """t's shape as a constant where it is static, else tf.shape(t)."""
    return constant(tuple(t.shape), tf.int32) if t.shape.is_fully_defined() else tf.shape(t)
