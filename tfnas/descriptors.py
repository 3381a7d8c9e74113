"""Reading, writing and checking descriptors (tfnas.ModelDesc and friends).

Descriptors are protobuf messages; on disk they are text format (.pbtxt, the default: readable and
diffable), JSON (.json) or binary (.pb / .binpb), chosen by extension. Writes are atomic so that an
interrupted run never leaves a half-written final descriptor behind.
"""
from __future__ import annotations

import os

from google.protobuf import json_format, message, text_format

from tfnas import files
from tfnas.errors import UserError
from tfnas.proto import descriptors_pb2 as pb


class DescriptorError(UserError):
    """A descriptor that cannot be read or compiled; the message names file, cell, node and edge."""


def _format(path: files.AnyPath) -> str:
    suffix = path.suffix.lower()
    if suffix in (".pbtxt", ".textproto", ".txtpb", ".txt"):
        return "text"
    if suffix == ".json":
        return "json"
    if suffix in (".pb", ".binpb", ".bin"):
        return "binary"
    raise DescriptorError(f"{path}: unknown descriptor format {suffix!r} (use .pbtxt, .json or .pb)")


def to_bytes(msg: message.Message, fmt: str) -> bytes:
    if fmt == "text":
        return text_format.MessageToString(msg).encode()
    if fmt == "json":
        return (json_format.MessageToJson(msg, preserving_proto_field_name=True) + "\n").encode()
    return msg.SerializeToString(deterministic=True)


def from_bytes(data: bytes, msg: message.Message, fmt: str, where: str = "<bytes>") -> message.Message:
    try:
        if fmt == "text":
            text_format.Parse(data.decode(), msg)
        elif fmt == "json":
            json_format.Parse(data.decode(), msg)
        else:
            msg.ParseFromString(data)
    except (text_format.ParseError, json_format.ParseError, message.DecodeError, UnicodeDecodeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DescriptorError(f"{where}: {detail}") from None
    return msg


def save(msg: message.Message, path: str | os.PathLike) -> None:
    path = files.path(path)
    files.write_atomic(path, to_bytes(msg, _format(path)))


def load_model_desc(path: str | os.PathLike) -> pb.ModelDesc:
    path = files.path(path)
    if not path.is_file():
        raise DescriptorError(f"{path}: no such descriptor file")
    desc = from_bytes(path.read_bytes(), pb.ModelDesc(), _format(path), str(path))
    validate(desc, where=str(path))
    return desc


def reads_alphas(op: pb.OpDesc) -> bool:
    """Whether an op reads architecture weights (a search-time op, e.g. DARTS's mixed op): its descriptor
    names the alpha group and row it reads."""
    return bool(op.alpha_group)


def cell_out_channels(cell: pb.CellDesc) -> int:
    """The concatenated states' channels, or its projecting output's (`post_op`)."""
    if cell.post_op.name:
        return cell.post_op.out_channels
    return len(concat_states(cell)) * cell.channels


def op_parts(op: pb.OpDesc) -> list[pb.OpDesc]:
    """The ops an op is made of: a mixed or PetriDish op's candidates, a join's children."""
    return [*op.candidates, *op.children]


def concat_states(cell: pb.CellDesc) -> list[int]:
    """States joined into the cell output; by default every intermediate node."""
    return list(cell.concat) or list(range(2, 2 + len(cell.nodes)))


def input_channels(desc: pb.ModelDesc) -> list[tuple[int, int]]:
    """(channels of s0, channels of s1) that each cell receives, from the stem and earlier cells."""
    stem = desc.stem.out_channels
    prev_prev, prev, out = stem, stem, []
    for cell in desc.cells:
        out.append((prev_prev, prev))
        prev_prev, prev = prev, cell_out_channels(cell)
    return out


def validate(desc: pb.ModelDesc, where: str = "descriptor") -> None:
    """Checks the structure a compiler relies on; raises DescriptorError naming cell, node and edge."""
    from tfnas import ops  # registry; imported lazily so that reading descriptors stays light

    def fail(msg: str):
        raise DescriptorError(f"{where}: {msg}")

    def check_op(op: pb.OpDesc, at: str):
        if not op.name:
            fail(f"{at}: operation has no name")
        if not ops.is_registered(op.name):
            fail(f"{at}: unknown operation {op.name!r}")
        if op.stride not in (0, 1, 2):
            fail(f"{at}: stride must be 1 or 2, got {op.stride}")
        for cand in op.candidates:
            check_op(cand, f"{at}, candidate {cand.name!r}")
        for child in op.children:
            check_op(child, f"{at}, child {child.id or child.name!r}")

    def check_parts(op: pb.OpDesc, inputs: int, at: str):
        """Every part of a multi-input op reads one of its edge's inputs."""
        for part in op_parts(op):
            if not 0 <= part.input_index < inputs:
                fail(f"{at}, part {part.id or part.name}: input_index {part.input_index}, but the edge reads "
                     f"{inputs} state(s)")
            check_parts(part, inputs, at)

    def check_alpha_reads(op: pb.OpDesc, at: str):
        """A partial-channel edge splits its width evenly; an edge's weight group exists and has its row."""
        k = op.partial_channels
        if k > 1 and (op.in_channels % k or any(c.in_channels != op.in_channels // k for c in op.candidates)):
            fail(f"{at}: partial_channels {k} needs in_channels ({op.in_channels}) a multiple of {k} and "
                 f"candidates of in_channels {op.in_channels // k}")
        if op.edge_group:
            spec = desc.alpha_groups[op.edge_group] if op.edge_group in desc.alpha_groups else None
            if spec is None or spec.weighting != pb.AlphaGroupDesc.NODE_SOFTMAX:
                fail(f"{at}: edge_group {op.edge_group!r} is not an alpha group with weighting NODE_SOFTMAX")
            if sum(spec.node_edges) != spec.num_edges or not 0 <= op.alpha_index < spec.num_edges:
                fail(f"{at}: edge_group {op.edge_group!r} has node_edges {list(spec.node_edges)} for "
                     f"{spec.num_edges} edges; row {op.alpha_index} is not one of them")

    if len(desc.input_shape) != 3 or min(desc.input_shape) < 1:
        fail(f"input_shape must be [height, width, channels], got {list(desc.input_shape)}")
    if desc.num_classes < 1:
        fail(f"num_classes must be >= 1, got {desc.num_classes}")
    if not desc.cells:
        fail("the model has no cells")
    check_op(desc.stem, "stem")
    if desc.stem.in_channels != desc.input_shape[2]:
        fail(f"stem: in_channels {desc.stem.in_channels} != input channels {desc.input_shape[2]}")
    expected = input_channels(desc)
    for ci, cell in enumerate(desc.cells):
        name = f"cell {ci} ({cell.id or 'no id'})"
        if cell.channels < 1:
            fail(f"{name}: channels must be >= 1, got {cell.channels}")
        for which, op, have in (("s0_op", cell.s0_op, expected[ci][0]), ("s1_op", cell.s1_op, expected[ci][1])):
            check_op(op, f"{name}, {which}")
            if op.in_channels != have:
                fail(f"{name}, {which}: channel mismatch: in_channels {op.in_channels} but its input has {have}")
            if op.out_channels != cell.channels:
                fail(f"{name}, {which}: channel mismatch: out_channels {op.out_channels} != cell channels "
                     f"{cell.channels}")
        for ni, node in enumerate(cell.nodes):
            if not node.edges:
                fail(f"{name}, node {ni}: the node has no edges, so it computes nothing")
            for ei, edge in enumerate(node.edges):
                at = f"{name}, node {ni}, edge {ei}"
                check_op(edge.op, at)
                if not edge.inputs:
                    fail(f"{at}: edge reads no state")
                for s in edge.inputs:
                    if s < 0 or s >= 2 + ni:
                        fail(f"{at}: reads state {s}, but node {ni} can read only states 0..{1 + ni}"
                             " (0, 1: cell inputs; 2 + i: earlier node i)")
                if edge.op.in_channels and edge.op.in_channels != cell.channels:
                    fail(f"{at}: channel mismatch: in_channels {edge.op.in_channels} != cell channels "
                         f"{cell.channels}")
                check_parts(edge.op, len(edge.inputs), at)
                check_alpha_reads(edge.op, at)
        n_states = 2 + len(cell.nodes)
        for s in concat_states(cell):
            if s < 0 or s >= n_states:
                fail(f"{name}: concat names state {s}, but the cell has states 0..{n_states - 1}")
        if not concat_states(cell):
            fail(f"{name}: the cell has no nodes and no concat: it outputs nothing")
        if cell.post_op.name:
            check_op(cell.post_op, f"{name}, post_op")
            have = len(concat_states(cell)) * cell.channels
            if cell.post_op.in_channels != have:
                fail(f"{name}, post_op: channel mismatch: in_channels {cell.post_op.in_channels} but the concatenated "
                     f"states have {have}")
    final = cell_out_channels(desc.cells[-1])
    check_op(desc.logits, "logits")
    if desc.logits.in_channels != final:
        fail(f"logits: channel mismatch: in_channels {desc.logits.in_channels} != last cell output {final}")
    if desc.logits.out_channels != desc.num_classes:
        fail(f"logits: out_channels {desc.logits.out_channels} != num_classes {desc.num_classes}")
    for ai, aux in enumerate(desc.aux_towers):
        if not 0 <= aux.after_cell < len(desc.cells):
            fail(f"aux tower {ai}: after_cell {aux.after_cell} is not a cell index")
        check_op(aux.op, f"aux tower {ai}")
        have = cell_out_channels(desc.cells[aux.after_cell])
        if aux.op.in_channels != have:
            fail(f"aux tower {ai}: channel mismatch: in_channels {aux.op.in_channels} != cell output {have}")
