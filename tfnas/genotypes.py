"""DARTS-style genotypes: the published cells, conversion to and from descriptors, and expansion.

A genotype lists, per intermediate node, its (operation, input state) pairs: state 0 = s0, 1 = s1,
2 + i = node i; `*_concat` are the states joined into the cell output. The published genotypes are the
ones reported by DARTS (Liu et al., ICLR 2019) and PC-DARTS (Xu et al., ICLR 2020) for CIFAR-10.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from tfnas import macro as macro_lib
from tfnas.descriptors import DescriptorError, concat_states
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb


class Genotype(NamedTuple):
    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]


def _pairs(text: str) -> list[tuple[str, int]]:
    """'sep_conv_3x3 1, skip_connect 0, ...' -> [('sep_conv_3x3', 1), ('skip_connect', 0), ...]."""
    return [(op, int(i)) for op, i in (p.split() for p in text.split(","))]


PUBLISHED: dict[str, Genotype] = {
    "DARTS_V1": Genotype(
        normal=_pairs("sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 0, sep_conv_3x3 1, "
                      "skip_connect 0, sep_conv_3x3 1, sep_conv_3x3 0, skip_connect 2"),
        normal_concat=[2, 3, 4, 5],
        reduce=_pairs("max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 0, "
                      "max_pool_3x3 0, skip_connect 2, skip_connect 2, avg_pool_3x3 0"),
        reduce_concat=[2, 3, 4, 5]),
    "DARTS_V2": Genotype(
        normal=_pairs("sep_conv_3x3 0, sep_conv_3x3 1, sep_conv_3x3 0, sep_conv_3x3 1, "
                      "sep_conv_3x3 1, skip_connect 0, skip_connect 0, dil_conv_3x3 2"),
        normal_concat=[2, 3, 4, 5],
        reduce=_pairs("max_pool_3x3 0, max_pool_3x3 1, skip_connect 2, max_pool_3x3 1, "
                      "max_pool_3x3 0, skip_connect 2, skip_connect 2, max_pool_3x3 1"),
        reduce_concat=[2, 3, 4, 5]),
    "PC_DARTS": Genotype(
        normal=_pairs("sep_conv_3x3 1, skip_connect 0, sep_conv_3x3 0, dil_conv_3x3 1, "
                      "sep_conv_5x5 0, sep_conv_3x3 1, avg_pool_3x3 0, dil_conv_3x3 1"),
        normal_concat=[2, 3, 4, 5],
        reduce=_pairs("sep_conv_5x5 1, max_pool_3x3 0, sep_conv_5x5 1, sep_conv_5x5 2, "
                      "sep_conv_3x3 0, sep_conv_3x3 3, sep_conv_3x3 1, sep_conv_3x3 2"),
        reduce_concat=[2, 3, 4, 5]),
}
PUBLISHED["DARTS"] = PUBLISHED["DARTS_V2"]


def lookup(name: str) -> Genotype | None:
    """A published genotype by name, case-insensitively ('darts_v2', 'DARTS-V2', 'pc_darts')."""
    key = name.upper().replace("-", "_")
    return PUBLISHED.get(key)


Nodes = list[list[tuple[str, int]]]  # per node, its (operation, input state) pairs


def _cell_nodes(cell: pb.CellDesc) -> Nodes:
    """A finalised cell's edges as (op, input) pairs per node; mixed or multi-input edges are refused."""
    nodes = []
    for ni, node in enumerate(cell.nodes):
        pairs = []
        for ei, edge in enumerate(node.edges):
            if edge.op.name == "mixed" or len(edge.inputs) != 1:
                raise DescriptorError(f"cell {cell.id}, node {ni}, edge {ei}: not a finalised single-input edge"
                                      f" ({edge.op.name}); a genotype holds only plain operations")
            pairs.append((edge.op.name, edge.inputs[0]))
        nodes.append(pairs)
    return nodes


def _templates(desc: pb.ModelDesc) -> tuple[pb.CellDesc, pb.CellDesc]:
    """The first normal and first reduction cell (the normal one again if there is no reduction)."""
    normal = next((c for c in desc.cells if c.cell_type == pb.NORMAL), None)
    reduce = next((c for c in desc.cells if c.cell_type == pb.REDUCTION), None)
    if normal is None:
        raise DescriptorError("the descriptor has no normal cell")
    return normal, reduce or normal


def from_desc(desc: pb.ModelDesc) -> Genotype:
    """The genotype of a finalised descriptor: its first normal and first reduction cell."""
    normal, reduce = _templates(desc)
    flat = lambda cell: [pair for node in _cell_nodes(cell) for pair in node]  # noqa: E731
    return Genotype(flat(normal), concat_states(normal), flat(reduce), concat_states(reduce))


def by_node(pairs: Sequence[tuple[str, int]], per_node: int = 2) -> Nodes:
    """DARTS genotypes list their pairs flat, `per_node` consecutive pairs to a node."""
    if len(pairs) % per_node:
        raise DescriptorError(f"{len(pairs)} (op, input) pairs cannot be split into nodes of {per_node} edges")
    return [list(pairs[i:i + per_node]) for i in range(0, len(pairs), per_node)]


def fill_cell(cell: pb.CellDesc, nodes: Nodes, concat: Sequence[int]) -> None:
    """Replaces the cell's nodes, with ids, channels and strides of this cell."""
    del cell.nodes[:]
    for n, pairs in enumerate(nodes):
        node = cell.nodes.add(id=f"{cell.id}.n{n}")
        for k, (op, state) in enumerate(pairs):
            node.edges.add(op=macro_lib.make_op(cell, n, state, op, suffix=f".{k}"), inputs=[state])
    del cell.concat[:]
    cell.concat.extend(concat)


def _lay_out(cells: dict, macro: config_pb2.MacroConfig, input_shape: Sequence[int], num_classes: int,
             source: str) -> pb.ModelDesc:
    """The macro structure with every cell filled from `cells`: {cell type: (nodes, concat)}."""
    macro = config_pb2.MacroConfig.FromString(macro.SerializeToString())
    macro.nodes = len(cells[pb.NORMAL][0])
    desc = macro_lib.build_macro(macro, input_shape, num_classes)
    for cell in desc.cells:
        fill_cell(cell, *cells[cell.cell_type])
    desc.source = source
    return macro_lib.rewire(desc)


def to_desc(genotype: Genotype, macro: config_pb2.MacroConfig, input_shape: Sequence[int],
            num_classes: int, source: str = "") -> pb.ModelDesc:
    """Expands a cell pair into a network of any depth and width (the evaluation network)."""
    cells = {pb.NORMAL: (by_node(genotype.normal), genotype.normal_concat),
             pb.REDUCTION: (by_node(genotype.reduce), genotype.reduce_concat)}
    return _lay_out(cells, macro, input_shape, num_classes, source)


def expand(final: pb.ModelDesc, macro: config_pb2.MacroConfig, input_shape: Sequence[int] | None = None,
           num_classes: int | None = None) -> pb.ModelDesc:
    """A finalised (searched) descriptor re-laid out at another depth and width: the nodes of its first
    normal and first reduction cell (any number of edges per node) are copied into every cell."""
    normal, reduce = _templates(final)
    cells = {pb.NORMAL: (_cell_nodes(normal), concat_states(normal)),
             pb.REDUCTION: (_cell_nodes(reduce), concat_states(reduce))}
    return _lay_out(cells, macro, input_shape or list(final.input_shape), num_classes or final.num_classes,
                    final.source)


def format_genotype(g: Genotype) -> str:
    fmt = lambda pairs: "[" + ", ".join(f"('{o}', {i})" for o, i in pairs) + "]"  # noqa: E731
    return (f"Genotype(normal={fmt(g.normal)}, normal_concat={list(g.normal_concat)}, "
            f"reduce={fmt(g.reduce)}, reduce_concat={list(g.reduce_concat)})")
