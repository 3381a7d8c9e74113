"""Resolves an architecture argument of the CLI: a published name, `darts-supernet`, or a file.

Published cells and finalised descriptors are expanded to the requested width and depth; the supernet
is the DARTS search network of that size.
"""
from __future__ import annotations

import pathlib

from tfnas import genotypes
from tfnas.descriptors import DescriptorError, load_model_desc
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb

SUPERNET = "darts-supernet"
# DARTS sizes: the CIFAR-10 evaluation network and search network.
EVAL_SIZE = (36, 20)
SEARCH_SIZE = (16, 8)


def known_names() -> list[str]:
    return sorted(set(genotypes.PUBLISHED) | {SUPERNET})


def is_search_desc(desc: pb.ModelDesc) -> bool:
    return any(e.op.name == "mixed" for c in desc.cells for n in c.nodes for e in n.edges)


def resolve(arch: str, channels: int | None = None, cells: int | None = None, classes: int = 10,
            image_size: int = 32, input_channels: int = 3, nodes: int = 4) -> pb.ModelDesc:
    shape = [image_size, image_size, input_channels]
    if arch.lower() == SUPERNET:
        from tfnas import macro, ops
        from tfnas.search import darts
        c, n = channels or SEARCH_SIZE[0], cells or SEARCH_SIZE[1]
        m = config_pb2.MacroConfig(channels=c, cells=n, nodes=nodes, stem_multiplier=3)
        desc = darts.build_supernet(macro.build_macro(m, shape, classes), ops.DARTS_PRIMITIVES)
        desc.source = SUPERNET
        return desc
    genotype = genotypes.lookup(arch)
    if genotype is not None:
        c, n = channels or EVAL_SIZE[0], cells or EVAL_SIZE[1]
        m = config_pb2.MacroConfig(channels=c, cells=n, stem_multiplier=3, aux_tower=True, aux_weight=0.4)
        return genotypes.to_desc(genotype, m, shape, classes, source=arch.upper())
    path = pathlib.Path(arch)
    if not path.exists():
        raise DescriptorError(f"{arch}: neither a descriptor file nor a known architecture "
                              f"({', '.join(known_names())})")
    desc = load_model_desc(path)
    if channels or cells:
        if is_search_desc(desc):
            raise DescriptorError(f"{arch}: --channels/--cells expand finalised descriptors only; "
                                  "this one still has mixed edges")
        first = desc.cells[0]
        c = channels or first.channels
        n = cells or len(desc.cells)
        m = config_pb2.MacroConfig(channels=c, cells=n, stem_multiplier=desc.stem.out_channels // first.channels,
                                   aux_tower=bool(desc.aux_towers),
                                   aux_weight=desc.aux_towers[0].loss_weight if desc.aux_towers else 0.0)
        desc = genotypes.expand(desc, m)
    return desc
