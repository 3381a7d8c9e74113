"""Cell pictures drawn with Pillow alone.

Searched cells are easiest to judge by eye, and the pictures must be producible anywhere the library runs
(training hosts without Graphviz, TensorBoard summaries), so the layout and drawing are done here with
Pillow only: a layered left-to-right DAG (inputs, nodes in topological layers, output), edges as cubic
curves that bend around nodes in their way, labels placed greedily where they overlap nothing, and
colours by operation family. Everything is deterministic, so the same cell always gives the same bytes.
"""
from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tfnas import files
from tfnas.alphas import alpha_arrays, softmax, strongest
from tfnas.descriptors import reads_alphas
from tfnas.errors import UserError
from tfnas.proto import descriptors_pb2 as pb

# Pillow draws aliased lines: draw at this multiple and downsample, which smooths curves and text.
_SUPERSAMPLE = 2
FAMILY_COLOURS: dict[str, tuple[int, int, int]] = {
    "sep conv": (31, 119, 180), "dil conv": (230, 120, 10), "pool": (44, 150, 44),
    "skip": (70, 70, 70), "other": (200, 30, 40)}
_CONCAT_COLOUR = (150, 150, 150)
_FILLS = {"input": (200, 235, 200), "node": (190, 220, 245), "output": (240, 230, 170)}
# Where along an edge a label may sit, in order of preference: the middle first, then staggered.
_LABEL_FRACTIONS = (0.5, 0.35, 0.65, 0.42, 0.58, 0.27, 0.73, 0.2, 0.8, 0.3, 0.7, 0.45, 0.55, 0.15, 0.85)
_CURVE_SAMPLES = 48

Box = tuple[float, float, float, float]  # left, top, right, bottom


def op_family(name: str) -> str:
    """Colour family of an operation name, so that cells can be compared at a glance."""
    if name.startswith("sep_conv"):
        return "sep conv"
    if name.startswith("dil_conv"):
        return "dil conv"
    if "pool" in name:
        return "pool"
    if name in ("skip_connect", "identity"):
        return "skip"
    return "other"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The bundled default font at `size` (Pillow >= 10.1); older Pillows or builds without FreeType only
    have a fixed bitmap font, which still draws legible, if small, text."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _row_weights(weights: Mapping[Any, Any] | None, op: pb.OpDesc) -> Sequence[tuple[str, float]] | None:
    """Weights of a mixed op: `weights` is {alpha row: [(op, weight), ...]} or, so one dict can serve a
    whole model whose cell types use separate alpha sets, {alpha group: {alpha row: [...]}}."""
    if not weights:
        return None
    group = weights.get(op.alpha_group) if op.alpha_group else None
    if isinstance(group, Mapping):
        return group.get(op.alpha_index)
    return weights.get(op.alpha_index)


def edge_label(op: pb.OpDesc, weights: Mapping[Any, Any] | None = None) -> tuple[str, str]:
    """(label, family) of an edge: plain ops by name; mixed ops by their strongest candidate when weights
    are known, else just 'mixed'."""
    if not reads_alphas(op):
        return op.name, op_family(op.name)
    row = _row_weights(weights, op)
    best = strongest([w for _, w in row], [n for n, _ in row]) if row else None
    if best is None:
        return op.name, "other"
    name = row[best[0]][0]
    return f"{name} {best[1]:.2f}", op_family(name)


def alpha_weights(desc: pb.ModelDesc) -> dict[str, dict[int, list[tuple[str, float]]]]:
    """Softmaxed architecture weights stored in a saved search descriptor, in the form `draw_cell`
    takes ({group: {row: [(op, weight), ...]}}); empty when the descriptor holds none."""
    out: dict[str, dict[int, list[tuple[str, float]]]] = {}
    for group, values in alpha_arrays(desc).items():
        prims, probs = list(desc.alpha_groups[group].primitives), softmax(values)
        out[group] = {r: [(p, float(w)) for p, w in zip(prims, probs[r])] for r in range(len(probs))}
    return out


# ----------------------------------------------------------------------------------------------- layout

def _layers(cell: pb.CellDesc) -> dict[int, int]:
    """Layer of every state: inputs 0, a node 1 + the deepest of its inputs (nodes only read earlier
    states, so one pass in node order is a topological sweep)."""
    layer = {0: 0, 1: 0}
    for i, node in enumerate(cell.nodes):
        sources = [s for e in node.edges for s in e.inputs]
        layer[2 + i] = 1 + max((layer.get(s, 0) for s in sources), default=0)
    return layer


def _curve(p0: tuple[float, float], p3: tuple[float, float], bend: float) -> list[tuple[float, float]]:
    """Cubic Bezier leaving and entering horizontally (graph-drawing style), its middle pushed `bend`
    pixels up or down to go round obstacles."""
    d = (p3[0] - p0[0]) * 0.45
    c1, c2 = (p0[0] + d, p0[1] + bend), (p3[0] - d, p3[1] + bend)
    pts = []
    for i in range(_CURVE_SAMPLES + 1):
        t = i / _CURVE_SAMPLES
        a, b, c, e = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
        pts.append((a * p0[0] + b * c1[0] + c * c2[0] + e * p3[0], a * p0[1] + b * c1[1] + c * c2[1] + e * p3[1]))
    return pts


def _inflate(box: Box, m: float) -> Box:
    return box[0] - m, box[1] - m, box[2] + m, box[3] + m


def _inside(p: tuple[float, float], box: Box) -> bool:
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _route(p0, p3, obstacles: list[Box], top: float, bottom: float) -> list[tuple[float, float]]:
    """The least bent curve that crosses no node box and stays inside [top, bottom]: a straight-ish edge
    through an intermediate node would read as passing through it."""
    best, best_hits = None, math.inf
    for k in range(0, 16):
        for bend in ((0.0,) if k == 0 else (-30.0 * k, 30.0 * k)):
            pts = _curve(p0, p3, bend)
            hits = sum(_inside(p, b) for p in pts[2:-2] for b in obstacles)
            hits += sum(not top <= p[1] <= bottom for p in pts)
            if hits == 0:
                return pts
            if hits < best_hits:
                best, best_hits = pts, hits
    return best


class _Fonts:
    """The three text sizes, at the supersampled scale, and text measurement in layout pixels."""

    def __init__(self) -> None:
        probe = _font(13 * _SUPERSAMPLE)
        # A bitmap fallback font cannot scale, so supersampling would only shrink its text.
        self.s = _SUPERSAMPLE if isinstance(probe, ImageFont.FreeTypeFont) else 1
        self.node, self.label, self.title = (_font(n * self.s) for n in (14, 12, 16))
        self._draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(self, text: str, font) -> tuple[float, float]:
        l, t, r, b = self._draw.textbbox((0, 0), text, font=font)
        return (r - l) / self.s, (b - t) / self.s


@dataclass
class CellLayout:
    """Where everything of one cell picture goes, in pixels; separate from drawing so it can be tested."""
    width: int
    height: int
    title: str
    names: dict[Any, str]  # state (or "out") -> text in its box
    boxes: dict[Any, Box]
    edges: list[tuple[Any, Any, str, str, list[tuple[float, float]]]]  # src, dst, label, family, curve
    labels: list[tuple[Box, str, str]] = field(default_factory=list)  # rect, text, family
    legend_y: float = 0.0


def layout_cell(cell: pb.CellDesc, title: str = "", weights: Mapping[Any, Any] | None = None,
                fonts: _Fonts | None = None) -> CellLayout:
    """Layered layout of a cell: columns by topological layer, edges routed round nodes, labels placed."""
    fonts = fonts or _Fonts()
    layer = _layers(cell)
    n_states = 2 + len(cell.nodes)
    concat = [s for s in (list(cell.concat) or range(2, n_states)) if 0 <= s < n_states]
    out_col = max(layer.values()) + 1
    by_layer: dict[int, list[int]] = {}
    for s in range(n_states):
        by_layer.setdefault(layer[s], []).append(s)
    rows = max(len(v) for v in by_layer.values())

    # Columns are as wide as the labels ending in them need: the gap in front of a crowded layer widens.
    margin_x = 75
    into = [sum(len(e.inputs) for s in by_layer.get(c, []) if s >= 2 for e in cell.nodes[s - 2].edges)
            for c in range(out_col + 1)]
    xs = [float(margin_x)]
    for c in range(1, out_col + 1):
        xs.append(xs[-1] + (220.0 if c == out_col else min(340.0, max(220.0, 150.0 + 25.0 * into[c]))))
    area_h = max(340.0, 105.0 * rows)
    title_h = 30 if title else 0
    top = 14 + title_h
    legend_h = 40
    width, height = int(xs[-1] + margin_x), int(top + area_h + legend_h)

    # Node boxes, layer by layer; within a layer ordered by the mean height of their inputs (barycentre
    # heuristic), which keeps edges from crossing needlessly.
    centre: dict[Any, tuple[float, float]] = {}
    names: dict[Any, str] = {0: "c_{k-2}", 1: "c_{k-1}", **{s: str(s - 2) for s in range(2, n_states)}}
    for lay in sorted(by_layer):
        states = by_layer[lay]
        if lay > 0:
            def key(s: int) -> tuple[float, int]:
                src = [centre[i][1] for e in cell.nodes[s - 2].edges for i in e.inputs if i in centre]
                return (sum(src) / len(src) if src else 0.0, s)
            states = sorted(states, key=key)
        for j, s in enumerate(states):
            centre[s] = (xs[lay], top + (j + 0.5) * area_h / len(states))
    centre["out"], names["out"] = (xs[out_col], top + area_h / 2), "c_{k}"
    boxes: dict[Any, Box] = {}
    for k, (x, y) in centre.items():
        w = max(fonts.size(names[k], fonts.node)[0] + 20, 34.0)
        boxes[k] = (x - w / 2, y - 15, x + w / 2, y + 15)

    # Segments: one per (edge, input state), then the concatenation into the output.
    segs: list[tuple[Any, Any, str, str]] = []
    for i, node in enumerate(cell.nodes):
        for e in node.edges:
            if e.op.children:  # a PetriDish join: each child on its own input, labelled by its op
                for child in e.op.children:
                    src = e.inputs[child.input_index]
                    if src in centre and src < 2 + i:
                        segs.append((src, 2 + i, child.name, op_family(child.name)))
                continue
            label, fam = edge_label(e.op, weights)
            for k, src in enumerate(e.inputs):
                if src in centre and src < 2 + i:
                    segs.append((src, 2 + i, label if k == 0 else "", fam))
    segs += [(s, "out", "", "concat") for s in concat]

    # Spread the ends of edges meeting at one box along its side, ordered by the other end's height, so
    # arrowheads do not pile up on one point.
    ends: dict[tuple[int, str], tuple[float, float]] = {}
    for side, mine, other in (("out", 0, 1), ("in", 1, 0)):
        groups: dict[Any, list[int]] = {}
        for n, seg in enumerate(segs):
            groups.setdefault(seg[mine], []).append(n)
        for k, members in groups.items():
            members.sort(key=lambda n: (centre[segs[n][other]][1], centre[segs[n][other]][0]))
            step = min(7.0, 20.0 / max(1, len(members) - 1))
            for j, n in enumerate(members):
                y = centre[k][1] + (j - (len(members) - 1) / 2) * step
                ends[(n, side)] = (boxes[k][2] if side == "out" else boxes[k][0], y)

    node_boxes = {k: _inflate(b, 6) for k, b in boxes.items()}
    curves = [_route(ends[(n, "out")], ends[(n, "in")], [b for k, b in node_boxes.items() if k not in (src, dst)],
                     top - 8, top + area_h + 8) for n, (src, dst, _, _) in enumerate(segs)]
    result = CellLayout(width, height, title, names, boxes,
                        [(*seg, c) for seg, c in zip(segs, curves)], legend_y=height - legend_h / 2)

    # Labels: greedily, each where it overlaps no node or earlier label and as few other edges as
    # possible (a label sitting on a crossing is ambiguous), preferring the middle of its own edge.
    taken = list(node_boxes.values())
    limits = (2.0, top - title_h / 2, width - 2.0, top + area_h + 10)
    for n, (src, dst, label, fam) in enumerate(segs):
        if not label:
            continue
        tw, th = fonts.size(label, fonts.label)
        others = [p for m, c in enumerate(curves) if m != n for p in c]
        best, best_cost = None, math.inf
        for f in _LABEL_FRACTIONS:
            x, y = curves[n][round(f * _CURVE_SAMPLES)]
            rect = (x - tw / 2 - 3, y - th / 2 - 3, x + tw / 2 + 3, y + th / 2 + 3)
            cost = 100 * sum(_overlap(_inflate(rect, 1), t) for t in taken)
            cost += 0 if (rect[0] >= limits[0] and rect[2] <= limits[2] and rect[1] >= limits[1]
                          and rect[3] <= limits[3]) else 1e9
            cost += 20 * sum(_inside(p, rect) for p in others) + 40 * abs(f - 0.5)
            if cost < best_cost:
                best, best_cost = rect, cost
        taken.append(best)
        result.labels.append((best, label, fam))
    return result


def _render(lay: CellLayout, fonts: _Fonts) -> Image.Image:
    """Draws a layout on a supersampled canvas (Pillow's lines are aliased) and downsamples it."""
    s = fonts.s
    image = Image.new("RGB", (lay.width * s, lay.height * s), "white")
    draw = ImageDraw.Draw(image)
    sc = lambda pts: [(x * s, y * s) for x, y in pts]  # noqa: E731

    def text(c: tuple[float, float], txt: str, font, fill) -> None:
        # Centred by bounding box, not with anchor="mm", which bitmap fonts do not support.
        l, t, r, b = draw.textbbox((0, 0), txt, font=font)
        draw.text((round(c[0] * s - (l + r) / 2), round(c[1] * s - (t + b) / 2)), txt, font=font, fill=fill)

    def line(pts, fill, width: float = 2.0, dashed: bool = False) -> None:
        w = max(1, round(width * s))
        if dashed:
            for i in range(0, len(pts) - 1, 2):
                draw.line(sc(pts[i:i + 2]), fill=fill, width=w)
        else:
            draw.line(sc(pts), fill=fill, width=w, joint="curve")

    def arrowhead(pts, fill, length: float = 9.0, half: float = 4.5) -> None:
        (x0, y0), (x1, y1) = pts[-3], pts[-1]
        n = math.hypot(x1 - x0, y1 - y0) or 1.0
        ux, uy = (x1 - x0) / n, (y1 - y0) / n
        bx, by = x1 - ux * length, y1 - uy * length
        draw.polygon(sc([(x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)]), fill=fill)

    def box(b: Box, fill, outline, radius: float, width: float = 1.5) -> None:
        draw.rounded_rectangle([c * s for c in b], radius=radius * s, fill=fill, outline=outline,
                               width=max(1, round(width * s)))

    for concat_pass in (True, False):  # concat first, so op edges are drawn over them
        for src, dst, label, fam, curve in lay.edges:
            if (fam == "concat") == concat_pass:
                colour = _CONCAT_COLOUR if concat_pass else FAMILY_COLOURS[fam]
                line(curve, colour, 1.5 if concat_pass else 2.0, dashed=concat_pass)
                arrowhead(curve, colour)
    for k, b in lay.boxes.items():
        kind = "output" if k == "out" else "input" if k in (0, 1) else "node"
        box(b, _FILLS[kind], (90, 90, 90), 15 if kind == "node" else 6)
        text(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), lay.names[k], fonts.node, (0, 0, 0))
    for rect, label, fam in lay.labels:
        box(rect, (255, 255, 255), tuple(int(c + (255 - c) * 0.55) for c in FAMILY_COLOURS[fam]), 3, 1)
        text(((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2), label, fonts.label, FAMILY_COLOURS[fam])
    if lay.title:
        text((lay.width / 2, 23), lay.title, fonts.title, (0, 0, 0))
    # Legend: the families present in this cell, then the dashed concatenation.
    present = [f for f in FAMILY_COLOURS if any(e[3] == f for e in lay.edges)] + ["concat"]
    x, y = 16.0, lay.legend_y
    for fam in present:
        colour = _CONCAT_COLOUR if fam == "concat" else FAMILY_COLOURS[fam]
        line([(x + i * 2.0, y) for i in range(15)], colour, 2.0, dashed=fam == "concat")
        tw = fonts.size(fam, fonts.label)[0]
        text((x + 36 + tw / 2, y), fam, fonts.label, (40, 40, 40))
        x += 36 + tw + 24
    return image.resize((lay.width, lay.height), Image.LANCZOS) if s > 1 else image


def draw_cell(cell: pb.CellDesc, title: str = "", weights: Mapping[Any, Any] | None = None) -> Image.Image:
    """Picture of one cell: inputs c_{k-2}, c_{k-1} on the left, nodes in topological layers, the output
    c_{k} on the right; each edge labelled with its op (mixed edges with the strongest candidate when
    `weights` ({alpha row: [(op, weight), ...]}) are given) and coloured by op family."""
    fonts = _Fonts()
    return _render(layout_cell(cell, title, weights, fonts), fonts)


def draw_cells(desc: pb.ModelDesc, weights: Mapping[Any, Any] | None = None) -> Image.Image:
    """The first normal and first reduction cell of a model, one above the other: together they define a
    DARTS-style network. Without `weights`, mixed edges use the alphas stored in the descriptor, if any."""
    if weights is None:
        weights = alpha_weights(desc) or None
    picked = []
    for ctype, title in ((pb.NORMAL, "normal cell"), (pb.REDUCTION, "reduction cell")):
        cell = next((c for c in desc.cells if c.cell_type == ctype), None)
        if cell is not None:
            picked.append((cell, title))
    if not picked and desc.cells:
        picked = [(desc.cells[0], "cell")]
    if not picked:
        raise ValueError("the model descriptor has no cells to draw")
    images = [draw_cell(c, title, weights) for c, title in picked]
    width, height = max(i.width for i in images), sum(i.height for i in images) + 2 * (len(images) - 1)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for k, im in enumerate(images):
        if k:
            ImageDraw.Draw(out).line([(10, y), (width - 10, y)], fill=(200, 200, 200), width=2)
            y += 2
        out.paste(im, ((width - im.width) // 2, y))
        y += im.height
    return out


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save(image: Image.Image, path: str | os.PathLike) -> None:
    """Writes by extension: .png, .jpg/.jpeg, or .svg (the PNG embedded as base64 in an <image>, so
    users who ask for a vector format still get a file every browser shows)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".png":
        data = png_bytes(image)
    elif ext in (".jpg", ".jpeg"):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
    elif ext == ".svg":
        data = base64.b64encode(png_bytes(image)).decode("ascii")
        w, h = image.size
        svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
               f'width="{w}" height="{h}" viewBox="0 0 {w} {h}">\n'
               f'  <image width="{w}" height="{h}" xlink:href="data:image/png;base64,{data}"/>\n</svg>\n')
        data = svg.encode("ascii")
    else:
        raise UserError(f"cannot save picture to {path!r}: unknown extension {ext or '(none)'!r}, "
                         f"use .png, .jpg, .jpeg or .svg")
    files.write_atomic(path, data)


def to_tensor_image(image: Image.Image) -> np.ndarray:
    """uint8 [1, H, W, 3]: the batch of one that tf.summary.image expects."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8)[None]
