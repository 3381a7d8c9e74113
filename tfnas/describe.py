"""What `tfnas describe` reports: structure, parameter counts and multiply-adds of an architecture.

Not to be confused with the TensorBoard summaries of a search (tfnas/search/monitor.py).
"""
from __future__ import annotations

from tfnas import architectures, genotypes
from tfnas.proto import descriptors_pb2 as pb


def describe(desc: pb.ModelDesc, arch: str) -> dict:
    """The report of `desc` (resolved from `arch`, which names it in the report) as a JSON-ready dict."""
    from tfnas import compiler
    search = architectures.is_search_desc(desc)
    options = compiler.SEARCH_OPTIONS if search else compiler.EVAL_OPTIONS
    model = compiler.compile_model(desc, options)
    cells = []
    for cell in desc.cells:
        nodes = [[{"op": _op_text(e.op), "inputs": list(e.inputs)} for e in node.edges] for node in cell.nodes]
        cells.append({"id": cell.id, "type": pb.CellType.Name(cell.cell_type).lower(), "channels": cell.channels,
                      "nodes": nodes})
    info = {
        "arch": arch,
        "source": desc.source,
        "kind": "search" if search else "final",
        "input_shape": list(desc.input_shape),
        "num_classes": desc.num_classes,
        "num_cells": len(desc.cells),
        "channels": desc.cells[0].channels,
        "params": compiler.count_params(model, include_aux=False),
        "params_with_aux": compiler.count_params(model, include_aux=True),
        "multiply_adds": compiler.multiply_adds(model),
        "alphas": int(sum(len(a.values) for a in desc.alpha_groups.values())),
        "cells": cells,
    }
    if not search and genotypes.is_genotype(desc):
        info["genotype"] = genotypes.format_genotype(genotypes.from_desc(desc))
    return info


def _op_text(op: pb.OpDesc) -> str:
    """`mixed(8)` for a search op and its candidate count; a join with its children and the position in
    the edge's inputs each reads: `petridish_join[sep_conv_3x3@0, skip_connect@1]`."""
    if op.candidates:
        return f"{op.name}({sum(max(len(c.candidates), 1) for c in op.candidates)})"
    if op.children:
        return f"{op.name}[{', '.join(f'{c.name}@{c.input_index}' for c in op.children)}]"
    return op.name


def cells_line(desc: pb.ModelDesc) -> str:
    """The found cells on one line: the DARTS genotype where the cells are one, else each first cell of a
    type node by node (`normal: 2 <- petridish_join[...] (0,1,3); reduction: ...`)."""
    if genotypes.is_genotype(desc):
        return genotypes.format_genotype(genotypes.from_desc(desc))
    seen, parts = set(), []
    for cell in desc.cells:
        kind = pb.CellType.Name(cell.cell_type).lower()
        if kind in seen:
            continue
        seen.add(kind)
        nodes = [f"{2 + n} <- " + " + ".join(f"{_op_text(e.op)} ({','.join(map(str, e.inputs))})" for e in node.edges)
                 for n, node in enumerate(cell.nodes)]
        parts.append(f"{kind}: " + "; ".join(nodes))
    return " | ".join(parts)


def format_text(info: dict) -> str:
    lines = [f"{info['arch']}: {info['kind']} network, {info['num_cells']} cells, {info['channels']} channels, "
             f"input {'x'.join(map(str, info['input_shape']))}, {info['num_classes']} classes"]
    seen = set()
    for cell in info["cells"]:
        if cell["type"] in seen:
            continue
        seen.add(cell["type"])
        lines.append(f"  {cell['type']} cell (first: {cell['id']}, {cell['channels']} channels):")
        for i, node in enumerate(cell["nodes"]):
            edges = ", ".join(f"{e['op']} <- {','.join(map(str, e['inputs']))}" for e in node)
            lines.append(f"    node {i + 2}: {edges}")
    lines.append(f"  params:          {info['params']:,}")
    lines.append(f"  params_with_aux: {info['params_with_aux']:,}")
    lines.append(f"  multiply-adds:   {info['multiply_adds']:,}")
    if info["alphas"]:
        lines.append(f"  alphas:          {info['alphas']:,}")
    if "genotype" in info:
        lines.append(f"  genotype: {info['genotype']}")
    return "\n".join(lines)
