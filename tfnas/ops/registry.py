"""The one registry of operations: every op, structural or candidate, is created here by name.

Descriptors name operations by string (`OpDesc.name`); the compiler turns each into a Keras layer with
`create(desc, options)`. Registering a class with fixed keyword arguments lets one class serve a family
(`sep_conv_3x3`, `sep_conv_5x5`) while each name still has exactly one definition.
"""
from __future__ import annotations

from typing import Callable

from tfnas.errors import UserError
from tfnas.proto import descriptors_pb2 as pb

_REGISTRY: dict[str, Callable[..., object]] = {}
_CLASSES: dict[str, type] = {}
_CANDIDATES: set[str] = set()


class OpError(UserError):
    """An operation descriptor that cannot be built (unknown name, bad channels or stride)."""


def register(name: str, candidate: bool = False, **fixed) -> Callable:
    """Class decorator: `@register("sep_conv_3x3", candidate=True, kernel_size=3)`; may be stacked.
    `candidate`: the op can be an edge of a cell on its own (a search space's primitive)."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"operation {name!r} is registered twice")
        _REGISTRY[name] = lambda desc, options, copies=1: cls(desc, options, copies=copies, **fixed)
        _CLASSES[name] = cls
        if candidate:
            _CANDIDATES.add(name)
        return cls

    return wrap


def op_class(name: str) -> type:
    """The layer class registered under `name` (for what an op says about itself, e.g. finalisation)."""
    if name not in _CLASSES:
        raise OpError(f"unknown operation {name!r} (known: {', '.join(names())})")
    return _CLASSES[name]


def is_candidate(name: str) -> bool:
    return name in _CANDIDATES


def names() -> list[str]:
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def create(desc: pb.OpDesc, options: pb.CompilerOptions, copies: int = 1):
    """Builds the Keras layer of one operation descriptor (`copies`: see `OpLayer`)."""
    factory = _REGISTRY.get(desc.name)
    if factory is None:
        raise OpError(f"unknown operation {desc.name!r} (known: {', '.join(names())})")
    return factory(desc, options, copies)
