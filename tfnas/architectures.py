"""The one resolver of an architecture argument: a published name, `darts-supernet`, a file or a message.

`tfnas describe`, `tfnas draw` and `tfnas eval` all name architectures the same way. Published cells and
finalised descriptors can be laid out at any width and depth (`macro`); the supernet is the DARTS search
network of that size. A search descriptor (with mixed edges) is used as it is: its cells cannot be
re-laid out, and `require_final` refuses it where only a finalised network makes sense (evaluation).
"""
from __future__ import annotations

from typing import Sequence

from tfnas import files, genotypes, macro as macro_lib
from tfnas.descriptors import DescriptorError, load_model_desc, reads_alphas
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb

SUPERNET = "darts-supernet"
# The DARTS CIFAR-10 search network and evaluation network: the sizes of names given without a macro.
SEARCH_MACRO = config_pb2.MacroConfig(channels=16, cells=8, nodes=4, stem_multiplier=3)
EVAL_MACRO = config_pb2.MacroConfig(channels=36, cells=20, nodes=4, stem_multiplier=3, aux_tower=True,
                                    aux_weight=0.4)
DEFAULT_INPUT_SHAPE = (32, 32, 3)
DEFAULT_CLASSES = 10


def known_names() -> list[str]:
    return sorted(set(genotypes.PUBLISHED) | {SUPERNET})


def is_search_desc(desc: pb.ModelDesc) -> bool:
    return any(reads_alphas(e.op) for c in desc.cells for n in c.nodes for e in n.edges)


def _sized(base: config_pb2.MacroConfig, channels: int | None, cells: int | None) -> config_pb2.MacroConfig:
    macro = config_pb2.MacroConfig()
    macro.CopyFrom(base)
    macro.channels = channels or macro.channels
    macro.cells = cells or macro.cells
    return macro


def _macro_of(desc: pb.ModelDesc) -> config_pb2.MacroConfig:
    """The macro layout a descriptor already has (width, depth, stem, auxiliary tower)."""
    first = desc.cells[0]
    return config_pb2.MacroConfig(channels=first.channels, cells=len(desc.cells),
                                  stem_multiplier=desc.stem.out_channels // first.channels,
                                  aux_tower=bool(desc.aux_towers),
                                  aux_weight=desc.aux_towers[0].loss_weight if desc.aux_towers else 0.0)


def resolve(arch: str | pb.ModelDesc, macro: config_pb2.MacroConfig | None = None,
            input_shape: Sequence[int] | None = None, num_classes: int | None = None,
            channels: int | None = None, cells: int | None = None, require_final: bool = False) -> pb.ModelDesc:
    """The model descriptor of `arch`, laid out by `macro` (with `channels` / `cells` overriding its width
    and depth). Names take `input_shape` and `num_classes` (default 32x32x3, 10 classes) and, without a
    macro, the DARTS sizes; files and messages keep their own layout, input shape and classes unless one of
    them is given."""
    if isinstance(arch, str) and (arch.lower() == SUPERNET or genotypes.lookup(arch) is not None):
        shape = list(input_shape or DEFAULT_INPUT_SHAPE)
        classes = num_classes or DEFAULT_CLASSES
        if arch.lower() == SUPERNET:
            if require_final:
                raise DescriptorError(f"{arch}: the search network has mixed edges; name a finalised architecture")
            from tfnas.search import darts
            desc = darts.build_supernet(macro_lib.build_macro(_sized(macro or SEARCH_MACRO, channels, cells),
                                                              shape, classes), darts.PRIMITIVES)
            desc.source = SUPERNET
            return desc
        return genotypes.to_desc(genotypes.lookup(arch), _sized(macro or EVAL_MACRO, channels, cells), shape,
                                 classes, source=arch.upper())
    if isinstance(arch, str):
        if not files.path(arch).exists():
            raise DescriptorError(f"{arch}: neither a descriptor file nor a known architecture "
                                  f"({', '.join(known_names())})")
        desc = load_model_desc(arch)
        desc.source = desc.source or arch
    else:
        desc = arch
    search = is_search_desc(desc)
    if search and require_final:
        raise DescriptorError(f"{desc.source or 'descriptor'}: a search descriptor with mixed edges; "
                              "use its search's final_desc.pbtxt")
    if macro is None and not (channels or cells or input_shape or num_classes):
        return desc
    if search:
        raise DescriptorError(f"{desc.source or 'descriptor'}: only finalised descriptors can be laid out at "
                              "another size; this one still has mixed edges")
    return genotypes.expand(desc, _sized(macro or _macro_of(desc), channels, cells),
                            list(input_shape) if input_shape else None, num_classes)
