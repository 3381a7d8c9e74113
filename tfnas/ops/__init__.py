"""Operations: every op is created by name through `registry.create` (importing this package
registers them all)."""
from tfnas.ops import darts, mixed, structural  # noqa: F401  (registration)
from tfnas.ops.darts import DARTS_PRIMITIVES
from tfnas.ops.registry import OpError, create, is_registered, names

__all__ = ["DARTS_PRIMITIVES", "OpError", "create", "is_registered", "names"]
