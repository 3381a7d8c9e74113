"""The one protocol every search algorithm implements, and the registry that maps `search.algorithm` to it.

The seed's algorithm (seed 000) is the same for all of them:

    macro_desc = build_macro(conf_macro); model_desc = build_desc(macro_desc, micro_builder)
    model = build_model(model_desc); train(model); final_desc = finalize(model)

The generic runner (search/runner.py) owns what they share: the configuration, the data and its split,
the run directory, the keyed resumable loop, checkpoints, TensorBoard, and the files every search run
writes (final_desc.pbtxt, final_cells.png). An algorithm is one small package (search/darts/,
search/random/, search/petridish/) with its micro builder, its trainer and its finaliser, and this class: `validate` reads
only its own section of the configuration (TensorFlow-free, called when a configuration is loaded), `run`
composes the runner's services (SearchRun) into its search and returns the final descriptor.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Sequence

from tfnas.config import ConfigError, check, suggest
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb

if TYPE_CHECKING:
    from tfnas.search.runner import SearchRun

Algorithm_ = config_pb2.SearchConfig.Algorithm

# search.algorithm -> the module that defines its Algorithm as `ALGORITHM` (imported when needed).
_MODULES = {Algorithm_.DARTS: "tfnas.search.darts.algorithm", Algorithm_.RANDOM: "tfnas.search.random.algorithm",
            Algorithm_.PETRIDISH: "tfnas.search.petridish.algorithm"}


class Algorithm:
    """Base of the search algorithms; subclasses set `name` and implement `validate` and `run`."""

    name = ""

    def validate(self, config: config_pb2.ExperimentConfig) -> None:
        """Raises ConfigError naming the key (`search.darts.order: ...`) for a value this algorithm cannot
        run with. Must not import TensorFlow unless a check needs the op registry."""

    def run(self, run: "SearchRun") -> pb.ModelDesc | None:
        """Searches; returns the final descriptor, or None if stopped early on purpose (tests)."""
        raise NotImplementedError


def names() -> list[str]:
    return [Algorithm_.Name(a) for a in _MODULES]


def get(algorithm: int) -> Algorithm:
    """The Algorithm of a `search.algorithm` value; a clear error for one that does not exist yet."""
    module = _MODULES.get(algorithm)
    if module is None:
        name = Algorithm_.Name(algorithm) if algorithm in Algorithm_.values() else str(algorithm)
        raise ConfigError(f"search.algorithm: {name} is not implemented yet (available: {', '.join(names())})",
                          "search.algorithm")
    return importlib.import_module(module).ALGORITHM


def check_primitives(field: str, primitives: Sequence[str], allow_none: bool = True) -> None:
    """Every name an operation of the registry, no repetitions, at least one that is not `none`."""
    from tfnas.ops import registry
    import tfnas.ops  # noqa: F401  (registers every op; imports TensorFlow)
    known = [n for n in registry.names() if registry.is_candidate(n)]
    for op in primitives:
        if op not in known or (op == "none" and not allow_none):
            raise ConfigError(f"{field}: unknown operation '{op}'{suggest(op, known)} (known: {', '.join(known)})",
                              field)
    duplicates = sorted({op for op in primitives if list(primitives).count(op) > 1})
    check(not duplicates, field, "without repetitions", duplicates)
    check(any(op != "none" for op in primitives), field, "a list with at least one operation other than 'none'",
          list(primitives))
