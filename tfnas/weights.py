"""Weights by op id: what each operation of a descriptor owns in a compiled model, and restoring by it.

A descriptor promises that an op id names its weights. Variable paths keep that promise only where each
op is its own layer: a search network compiled with `group_mixed_edges` computes the mixed edges of a
cell that read one state as ONE layer (`c0.from1`, candidates `c0.from1.sep_conv_3x3`, ...) whose weights
hold k edges side by side. `op_weights` maps every op id of the descriptor (stem, cell preprocessing,
every edge op and every candidate of a mixed edge, auxiliary tower, classifier) to its weights, each a
`WeightRef`: a variable, or copy j's slice of it in a layer built as k copies. The layout of the copies
is the layers' own (`OpLayer.copy_axes` / `weight_layout`, `MixedOp.candidate_layouts`); which edge is
copy j is the cell's (`Cell.group_edge_ops`). So the same ids name the same numbers in a grouped and an
ungrouped compile, in the supernet and in the network finalised from it (whose edge `c0.n1.e2.sep_conv_3x3`
is the supernet's candidate of that id).

`restore(model, source)` copies weights op id by op id from another compiled model or from a checkpoint
written by `checkpoints.save_weights` (given with the descriptor and compiler options it was saved from,
`CheckpointSource`): strictly (every weight of `model` found with its shape) or partially, with a report.
Architecture parameters (alphas), the drop-path rate and its seed are not op weights: restore leaves them.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from tfnas import checkpoints, compiler
from tfnas.descriptors import op_parts
from tfnas.proto import descriptors_pb2 as pb


@dataclasses.dataclass(frozen=True)
class WeightRef:
    """One op's weight: `variable` whole (`axis` None), or its slice [start, start + size) on `axis`: copy j
    of a layer built as k copies. A variable that several ops share (the pool BatchNorm of a grouped mixed
    op) is referenced whole by each of them."""

    variable: object
    axis: int | None = None
    start: int = 0
    size: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.variable.shape)
        if self.axis is None:
            return shape
        return shape[:self.axis] + (self.size,) + shape[self.axis + 1:]

    @property
    def index(self) -> tuple:
        """The numpy index of the slice in the variable's value."""
        if self.axis is None:
            return (Ellipsis,)
        return (slice(None),) * self.axis + (slice(self.start, self.start + self.size),)

    def read(self) -> np.ndarray:
        return np.array(self.variable.numpy()[self.index])

    def __str__(self) -> str:
        where = "" if self.axis is None else f"[axis {self.axis}: {self.start}:{self.start + self.size}]"
        return f"{self.variable.path}{where}"


def _refs(layout: dict, copy: int, copies: int, op_id: str) -> dict[str, WeightRef]:
    """WeightRefs of copy `copy` of `copies` from a layer's weight layout {name: (variable, axis)}."""
    refs = {}
    for name, (variable, axis) in layout.items():
        if copies == 1 or axis is None:
            refs[name] = WeightRef(variable)
            continue
        length = int(variable.shape[axis])
        if length % copies:
            raise ValueError(f"op {op_id}: weight {name} {tuple(variable.shape)} does not split into {copies} copies"
                             f" on axis {axis}")
        size = length // copies
        refs[name] = WeightRef(variable, axis, copy * size, size)
    return refs


def layer_weights(layer, copy: int = 0) -> dict[str, WeightRef]:
    """The weights of copy `copy` of an op layer (of all of it if it was built as one copy), by name."""
    if not 0 <= copy < layer.copies:
        raise ValueError(f"op {layer.desc.id}: no copy {copy} of {layer.copies}")
    return _refs(layer.weight_layout(), copy, layer.copies, layer.desc.id)


def _descriptor_ops(desc: pb.ModelDesc) -> Iterator[pb.OpDesc]:
    """Every op of a descriptor, candidates after their mixed op, in descriptor order."""
    def walk(op):
        yield op
        for part in op_parts(op):
            yield from walk(part)

    yield desc.stem
    for cell in desc.cells:
        yield cell.s0_op
        yield cell.s1_op
        for node in cell.nodes:
            for edge in node.edges:
                yield from walk(edge.op)
        if cell.post_op.name:
            yield cell.post_op
    for aux in desc.aux_towers:
        yield aux.op
    yield desc.pool
    yield desc.logits


def op_weights(model: compiler.NasModel) -> dict[str, dict[str, WeightRef]]:
    """{op id: {weight name: WeightRef}} for every op of the model's descriptor that the model has (an
    auxiliary tower only where it was compiled), in descriptor order; weightless ops (pools, identity,
    `none`, a mixed edge itself, global pooling) map to {}. Weight names are the layer's ("dw1", "pw1",
    "bn1_mean", ...); a stride-2 skip_connect has its FactorizedReduce's ("conv1", "conv2", "bn_mean",
    "bn_var"), a pool candidate of a mixed op its BatchNorm's ("bn_mean", "bn_var")."""
    found: dict[str, dict[str, WeightRef]] = {}

    def put(op: pb.OpDesc, refs: dict[str, WeightRef]) -> None:
        if not op.id:
            if refs:
                raise ValueError(f"an op without an id ({op.name}) has weights: they cannot be named")
            return
        if op.id in found:
            raise ValueError(f"op id {op.id!r} names two operations of the model")
        found[op.id] = refs

    def plain(layer) -> None:
        put(layer.desc, layer_weights(layer))

    def mixed(layer, edge_ops) -> None:
        """Copy j of `layer` is edge op edge_ops[j]; its candidate in column c is edge_ops[j].candidates[c]."""
        layouts = layer.candidate_layouts()
        if len(edge_ops) != layer.copies:
            raise ValueError(f"op {layer.desc.id}: {layer.copies} copies but {len(edge_ops)} edge ops")
        for j, edge_op in enumerate(edge_ops):
            put(edge_op, {})
            for column, cand in enumerate(edge_op.candidates):
                put(cand, _refs(layouts.get(column, {}), j, layer.copies, cand.id))

    def edge(layer, edge_ops) -> None:
        if hasattr(layer, "candidate_layouts"):
            mixed(layer, edge_ops)
        elif hasattr(layer, "parts"):  # a PetriDish op: one mixed op per input
            put(layer.desc, {})
            for part in layer.parts:
                mixed(part, (part.desc,))
        elif hasattr(layer, "child_layouts"):  # a PetriDish join: its projection, then its children
            plain(layer)
            for child, layout in zip(layer.desc.children, layer.child_layouts()):
                put(child, _refs(layout, 0, 1, child.id))
        else:
            plain(layer)

    plain(model.stem)
    for cell in model.cells:
        plain(cell.pre0)
        plain(cell.pre1)
        for node_edges in cell.edges:
            for _, layer, _ in node_edges:
                edge(layer, (layer.desc,))
        for groups in cell.groups.values():
            for layer, _, _ in groups:
                edge(layer, cell.group_edge_ops[layer.desc.id])
        if cell.post is not None:
            plain(cell.post)
    for _, _, tower in model.aux:
        plain(tower)
    plain(model.pool)
    plain(model.classifier)
    ordered = {op.id: found.pop(op.id) for op in _descriptor_ops(model.desc) if op.id in found}
    if found:
        raise ValueError(f"op ids not in the model's descriptor: {', '.join(sorted(found))}")
    return ordered


class CheckpointSource(NamedTuple):
    """A checkpoint written by `checkpoints.save_weights`, with the descriptor it was saved from and the
    compiler options that model had (they decide its variables: grouping, affine BatchNorms, auxiliary
    towers). Options None: those of the model being restored. A plain tuple (desc, prefix[, options])
    is taken as one."""

    desc: pb.ModelDesc
    prefix: str | os.PathLike
    options: pb.CompilerOptions | None = None


def load_source(source: CheckpointSource, options: pb.CompilerOptions) -> compiler.NasModel:
    """The model a checkpoint was saved from, compiled from its descriptor (weights built, nothing traced)
    and loaded by variable path: the layers know the layout of their copies, so the checkpoint is read
    through them."""
    source = CheckpointSource(*source)
    options = source.options if source.options is not None else options
    net = compiler.compile_model(source.desc, options)
    try:
        checkpoints.load_weights(net, source.prefix)
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {os.fspath(source.prefix)} does not hold the weights of its descriptor "
                         f"compiled with these options ({first[:200]}); pass the options it was saved with: "
                         "CheckpointSource(desc, prefix, options)") from None
    return net


@dataclasses.dataclass
class RestoreReport:
    """What `restore` did, by "op id/weight name": `restored`; `new`: in the model, not in the source;
    `missing`: in the source, not in the model; `reshaped`: same op and name, another shape, not restored
    ((key, shape in the model, shape in the source)); `grown`: restored into the leading part of a weight
    that is larger on one axis (restore with grow=True; same tuples); `conflicts`: a variable that several
    ops share in the model (the pool BatchNorm of a grouped mixed op) given different values by the
    source's ops (the last one is kept)."""

    restored: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    reshaped: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    grown: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)

    def summary(self, show: int = 3) -> str:
        def some(items):
            more = f", ... (+{len(items) - show})" if len(items) > show else ""
            return ", ".join(items[:show]) + more

        parts = [f"restored {len(self.restored)} weights"]
        for label, items in (("new", self.new), ("missing", self.missing),
                             ("reshaped", [f"{k} {m} vs {s}" for k, m, s in self.reshaped]),
                             ("grown", [f"{k} {s} -> {m}" for k, m, s in self.grown]),
                             ("conflicts", self.conflicts)):
            if items:
                parts.append(f"{len(items)} {label} ({some(items)})")
        return "; ".join(parts)


def _grown_axis(have: tuple, given: tuple) -> int | None:
    """The one axis on which a weight of shape `have` is larger than `given` (all others equal), or None."""
    if len(have) != len(given):
        return None
    differ = [i for i, (a, b) in enumerate(zip(have, given)) if a != b]
    return differ[0] if len(differ) == 1 and have[differ[0]] > given[differ[0]] else None


def restore(model: compiler.NasModel, source, strict: bool = True, grow: bool = False) -> RestoreReport:
    """Copies weights into `model` op id by op id from `source`: another compiled NasModel, or a
    checkpoint (`CheckpointSource`, or a tuple (desc, prefix[, options])).

    strict: every weight of `model` must be in the source with its shape, else a one-line ValueError naming
    the first that is not, and nothing is written. Not strict: what matches is restored, the rest is in
    the report. grow: a weight larger than the source's on exactly one axis (a projection that now reads
    more channels) gets the source's values in its leading part and keeps its own in the rest (a grown
    cell's new state is concatenated last); with strict, that counts as found. Grouped and ungrouped
    compiles of one descriptor, and a supernet and the network finalised from it, restore into each other
    (the ids are the same; see the module docstring)."""
    if not isinstance(source, compiler.NasModel):
        source = load_source(source, model.options)
    have, given = op_weights(model), op_weights(source)
    report = RestoreReport()
    plan, first = [], None  # (target ref, source ref, key); the first weight not found, as an error message
    for op_id, weights in have.items():
        theirs = given.get(op_id, {})
        for name, ref in weights.items():
            key = f"{op_id}/{name}"
            src = theirs.get(name)
            if src is None:
                report.new.append(key)
                first = first or f"weight {key} is not in the source"
            elif src.shape != ref.shape:
                axis = _grown_axis(ref.shape, src.shape) if grow else None
                if axis is None:
                    report.reshaped.append((key, ref.shape, src.shape))
                    first = first or f"weight {key} has shape {src.shape} in the source, {ref.shape} here"
                    continue
                plan.append((_leading(ref, axis, src.shape[axis]), src, key))
                report.grown.append((key, ref.shape, src.shape))
            else:
                plan.append((ref, src, key))
                report.restored.append(key)
    report.missing = [f"{op_id}/{name}" for op_id, weights in given.items() for name in weights
                      if name not in have.get(op_id, {})]
    if strict and first:
        more = len(report.new) + len(report.reshaped) - 1
        raise ValueError(f"restore: {first}" + (f" (and {more} more)" if more else ""))
    _write(plan, report)
    return report


def _leading(ref: WeightRef, axis: int, size: int) -> WeightRef:
    """The first `size` entries on `axis` of a whole variable's reference (a grown weight's old part)."""
    if ref.axis is not None:
        raise ValueError(f"{ref}: only whole variables can grow")
    return WeightRef(ref.variable, axis, 0, size)


def _write(plan, report: RestoreReport) -> None:
    """Writes the planned slices, each target variable assigned once; source variables read once."""
    values, targets, written = {}, {}, {}
    for ref, src, key in plan:
        sid = id(src.variable)
        if sid not in values:
            values[sid] = src.variable.numpy()
        value = values[sid][src.index]
        tid = id(ref.variable)
        if tid not in targets:
            targets[tid] = (ref.variable, np.array(ref.variable.numpy()))
        region = (tid, ref.axis, ref.start, ref.size)
        if region in written and not np.allclose(written[region], value, rtol=1e-5, atol=1e-6):
            report.conflicts.append(key)
        written[region] = value
        targets[tid][1][ref.index] = value
    for variable, value in targets.values():
        variable.assign(value)
