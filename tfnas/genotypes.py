"""DARTS-style genotypes: the published cells, conversion to and from descriptors, and expansion.

A genotype lists, per intermediate node, its (operation, input state) pairs: state 0 = s0, 1 = s1,
2 + i = node i; `*_concat` are the states joined into the cell output. The published genotypes are the
ones reported by DARTS (Liu et al., ICLR 2019) and PC-DARTS (Xu et al., ICLR 2020) for CIFAR-10.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

from tfnas import macro as macro_lib
from tfnas.descriptors import DescriptorError, concat_states, reads_alphas
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
            if reads_alphas(edge.op) or len(edge.inputs) != 1:
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


def is_genotype(desc: pb.ModelDesc) -> bool:
    """Whether a finalised descriptor's cells can be written as a DARTS genotype: single-input plain edges
    and no projecting output (a PetriDish descriptor is not one)."""
    cells = _templates(desc)
    return all(not c.post_op.name and all(len(e.inputs) == 1 and not reads_alphas(e.op) and not e.op.children
                                           for n in c.nodes for e in n.edges) for c in cells)


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


def _lay_out(fill: dict, nodes: int, macro: config_pb2.MacroConfig, input_shape: Sequence[int], num_classes: int,
             source: str) -> pb.ModelDesc:
    """The macro structure with `nodes` nodes per cell, every cell then filled by `fill[cell type](cell)`."""
    macro = config_pb2.MacroConfig.FromString(macro.SerializeToString())
    macro.nodes = nodes
    desc = macro_lib.build_macro(macro, input_shape, num_classes)
    for cell in desc.cells:
        fill[cell.cell_type](cell)
    desc.source = source
    return macro_lib.rewire(desc)


def to_desc(genotype: Genotype, macro: config_pb2.MacroConfig, input_shape: Sequence[int],
            num_classes: int, source: str = "") -> pb.ModelDesc:
    """Expands a cell pair into a network of any depth and width (the evaluation network)."""
    cells = {pb.NORMAL: (by_node(genotype.normal), genotype.normal_concat),
             pb.REDUCTION: (by_node(genotype.reduce), genotype.reduce_concat)}
    fill = {kind: (lambda cell, nodes=nodes, concat=concat: fill_cell(cell, nodes, concat))
            for kind, (nodes, concat) in cells.items()}
    return _lay_out(fill, len(cells[pb.NORMAL][0]), macro, input_shape, num_classes, source)


def rebase_id(op_id: str, template: pb.CellDesc, cell: pb.CellDesc) -> str:
    """An id of `template`'s ops as the id of the same op in `cell`: the template's cell id prefix
    replaced by the cell's (`c0.n1.e2.sep_conv_3x3` -> `c7.n1.e2.sep_conv_3x3`); the template's own cell
    keeps its ids exactly, and an id without that prefix gets the cell's in front."""
    if cell.id == template.id:
        return op_id
    if template.id and (op_id == template.id or op_id.startswith(template.id + ".")):
        return cell.id + op_id[len(template.id):]
    return f"{cell.id}.{op_id}"


def _scaled(channels: int, template: pb.CellDesc, cell: pb.CellDesc, at: str) -> int:
    """A channel count of a template op in a cell of other width (the cell's channels for the template's)."""
    if channels * cell.channels % template.channels:
        raise DescriptorError(f"{at}: {channels} channels in a cell of {template.channels} do not scale to a cell "
                              f"of {cell.channels}")
    return channels * cell.channels // template.channels


def _copy_op(op: pb.OpDesc, state: int, template: pb.CellDesc, cell: pb.CellDesc, at: str,
             default_id: str) -> pb.OpDesc:
    """One finalised op of `template` (reading `state`) as the same op of `cell`, its parts (a join's
    children) likewise, each reading its own state: id re-based, channels scaled, stride of `cell`'s type."""
    copied = pb.OpDesc()
    copied.CopyFrom(op)
    copied.id = rebase_id(op.id, template, cell) if op.id else default_id
    copied.in_channels = _scaled(op.in_channels, template, cell, at)
    copied.out_channels = _scaled(op.out_channels, template, cell, at)
    if cell.cell_type != template.cell_type and op.stride:
        copied.stride = macro_lib.edge_stride(cell, state)
    return copied


def copy_cell(template: pb.CellDesc, cell: pb.CellDesc) -> None:
    """Replaces `cell`'s nodes, concat and projecting output by those of the finalised `template` (any
    number of edges per node, edges of any number of inputs, joins with their children), each op keeping
    its rank and its id re-based onto the cell (`rebase_id`), its channels scaled to the cell's and,
    where the cell is of another type, its stride that of the cell's edges from the state it reads.
    Mixed and PetriDish search edges are refused."""
    del cell.nodes[:]
    for n, node in enumerate(template.nodes):
        at = f"cell {template.id}, node {n}"
        copied = cell.nodes.add(id=rebase_id(node.id, template, cell) if node.id else f"{cell.id}.n{n}")
        for e, edge in enumerate(node.edges):
            if reads_alphas(edge.op) or edge.op.candidates:
                raise DescriptorError(f"{at}, edge {e}: not a finalised edge ({edge.op.name}); only finalised "
                                      "descriptors can be expanded")
            where = f"{at}, edge {e}"
            op = _copy_op(edge.op, edge.inputs[0] if edge.inputs else 0, template, cell, where,
                          macro_lib.make_op(cell, n, edge.inputs[0], edge.op.name, suffix=f".{e}").id)
            del op.children[:]
            for child in edge.op.children:
                op.children.append(_copy_op(child, edge.inputs[child.input_index], template, cell, where,
                                            f"{op.id}.{child.name}"))
            copied.edges.add(op=op, inputs=edge.inputs)
    del cell.concat[:]
    cell.concat.extend(concat_states(template))
    cell.ClearField("post_op")
    if template.post_op.name:
        cell.post_op.CopyFrom(template.post_op)
        cell.post_op.id = rebase_id(template.post_op.id, template, cell) if template.post_op.id else f"{cell.id}.out"


def _check_unique_ids(desc: pb.ModelDesc) -> None:
    seen = set()
    for cell in desc.cells:
        edge_ops = [op for node in cell.nodes for e in node.edges for op in (e.op, *e.op.children)]
        for op in [cell.s0_op, cell.s1_op, cell.post_op] + edge_ops:
            if op.id and op.id in seen:
                raise DescriptorError(f"cell {cell.id}: op id {op.id!r} is used twice after expansion")
            seen.add(op.id)


def expand(final: pb.ModelDesc, macro: config_pb2.MacroConfig, input_shape: Sequence[int] | None = None,
           num_classes: int | None = None) -> pb.ModelDesc:
    """A finalised (searched) descriptor re-laid out at another depth and width: the nodes of its first
    normal and first reduction cell (any number of edges per node, edges of any number of inputs) are
    copied into every cell of that type (`copy_cell`). Op ids and ranks are kept: in the cell with the
    template's id exactly, elsewhere re-based onto the cell (`c0.n1.e2.sep_conv_3x3` in c7 is
    `c7.n1.e2.sep_conv_3x3`), so the ops of the template cells name the same weights in both."""
    normal, reduce = _templates(final)
    templates = {pb.NORMAL: normal, pb.REDUCTION: reduce}
    fill = {kind: (lambda cell, template=template: copy_cell(template, cell)) for kind, template in templates.items()}
    desc = _lay_out(fill, len(normal.nodes), macro, input_shape or list(final.input_shape),
                    num_classes or final.num_classes, final.source)
    _check_unique_ids(desc)
    return desc


def format_genotype(g: Genotype) -> str:
    fmt = lambda pairs: "[" + ", ".join(f"('{o}', {i})" for o, i in pairs) + "]"  # noqa: E731
    return (f"Genotype(normal={fmt(g.normal)}, normal_concat={list(g.normal_concat)}, "
            f"reduce={fmt(g.reduce)}, reduce_concat={list(g.reduce_concat)})")
