"""Macro builder: configuration -> model descriptor with the cells laid out and their nodes empty.

It decides everything above the cell: the stem, which cells reduce (DARTS: cells // 3 and 2 * cells // 3,
doubling the channels there), how each cell's two inputs are preprocessed (a FactorizedReduce for s0
after a reduction cell, else ReLU-1x1conv-BN), where the auxiliary tower reads, and the head. A micro
builder (DARTS, a genotype, PetriDish) then fills the nodes; `rewire` recomputes the channels that
depend on the nodes, so a cell may grow after the macro is laid out.
"""
from __future__ import annotations

from typing import Sequence

from tfnas.descriptors import cell_out_channels, concat_states, input_channels
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb


def reduction_indices(cells: int, explicit: Sequence[int] = ()) -> set[int]:
    """DARTS places reductions at cells // 3 and 2 * cells // 3 (fewer when cells < 3)."""
    if explicit:
        return set(explicit)
    if cells < 3:
        return set()
    return {cells // 3, 2 * cells // 3}


def build_macro(macro: config_pb2.MacroConfig, input_shape: Sequence[int], num_classes: int) -> pb.ModelDesc:
    """Lays out stem, cells (nodes empty), auxiliary tower and head from the macro configuration."""
    c = macro.channels
    stem_channels = (macro.stem_multiplier or 3) * c
    desc = pb.ModelDesc(input_shape=list(input_shape), num_classes=num_classes)
    desc.stem.CopyFrom(pb.OpDesc(name="stem", id="stem", in_channels=input_shape[2], out_channels=stem_channels,
                                 kernel_size=3, stride=1))
    reductions = reduction_indices(macro.cells, macro.reduction_cells)
    for i in range(macro.cells):
        if i in reductions:
            c *= 2
        cell = desc.cells.add(id=f"c{i}", cell_type=pb.REDUCTION if i in reductions else pb.NORMAL, channels=c)
        for j in range(macro.nodes):
            cell.nodes.add(id=f"c{i}.n{j}")
        cell.concat.extend(range(2, 2 + macro.nodes))
        if macro.project_output:
            cell.post_op.CopyFrom(pb.OpDesc(name="project_channels", id=f"c{i}.out"))
    if macro.aux_tower and macro.cells >= 1:
        after = 2 * macro.cells // 3
        desc.aux_towers.add(after_cell=after, loss_weight=macro.aux_weight,
                            op=pb.OpDesc(name="aux_tower", id="aux", out_channels=num_classes))
    desc.pool.CopyFrom(pb.OpDesc(name="global_avg_pool", id="pool"))
    desc.logits.CopyFrom(pb.OpDesc(name="linear", id="logits", out_channels=num_classes))
    return rewire(desc)


def rewire(desc: pb.ModelDesc) -> pb.ModelDesc:
    """Sets every channel count that follows from the cells' node counts and concat lists: the cell
    input preprocessing, a projecting cell output (to the cell's channels), the auxiliary tower and the
    classifier. Call after changing any cell's nodes."""
    for cell in desc.cells:
        if cell.post_op.name:
            cell.post_op.in_channels = len(concat_states(cell)) * cell.channels
            cell.post_op.out_channels = cell.channels
    inputs = input_channels(desc)
    for i, cell in enumerate(desc.cells):
        prev_reduction = i > 0 and desc.cells[i - 1].cell_type == pb.REDUCTION
        c_pp, c_p = inputs[i]
        s0 = pb.OpDesc(id=f"{cell.id}.s0", in_channels=c_pp, out_channels=cell.channels)
        if prev_reduction:
            s0.name, s0.stride = "factorized_reduce", 2
        else:
            s0.name, s0.stride, s0.kernel_size = "relu_conv_bn", 1, 1
        cell.s0_op.CopyFrom(s0)
        cell.s1_op.CopyFrom(pb.OpDesc(name="relu_conv_bn", id=f"{cell.id}.s1", in_channels=c_p,
                                      out_channels=cell.channels, kernel_size=1, stride=1))
    for aux in desc.aux_towers:
        aux.op.in_channels = cell_out_channels(desc.cells[aux.after_cell])
    desc.logits.in_channels = cell_out_channels(desc.cells[-1])
    return desc


def edge_stride(cell: pb.CellDesc, state: int) -> int:
    """Edges from the two cell inputs halve the resolution in a reduction cell."""
    return 2 if cell.cell_type == pb.REDUCTION and state < 2 else 1


def make_op(cell: pb.CellDesc, node: int, state: int, name: str, suffix: str = "") -> pb.OpDesc:
    """An edge operation of `cell` reading `state` into node `node`, with its id, channels and stride."""
    return pb.OpDesc(name=name, id=f"{cell.id}.n{node}.e{state}{suffix}", in_channels=cell.channels,
                     out_channels=cell.channels, stride=edge_stride(cell, state))
