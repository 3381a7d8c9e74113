"""The PetriDish gallery: every model a search finalised, and which of them are worth keeping.

A forward search (Hu et al., NeurIPS 2019, "Efficient Forward Architecture Search") does not end with one
answer: it grows a family of models of increasing cost. The gallery records each with its size, cost and
validation error so that the user, not the search, picks the trade-off. As in the paper, the models worth
keeping are those on the lower convex hull of (multiply-adds, error): any other model is beaten, or matched,
by a mix of two hull models at no more cost, so the hull is the frontier the search should keep extending.

Everything here is TensorFlow-free, so galleries can be inspected and plotted on any host.
"""
from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from fractions import Fraction

from PIL import Image, ImageDraw, ImageFont

from tfnas import draw
from tfnas.proto import search_pb2

Point = tuple[float, float]
_Exact = tuple[Fraction, Fraction]

TSV_COLUMNS = ("model", "iteration", "phase", "nodes", "params", "multiply_adds", "val_error", "on_hull")

# Plot geometry in output pixels; fixed so that pictures of successive iterations line up frame by frame.
PLOT_SIZE = (760, 480)
_AREA = (80, 66, PLOT_SIZE[0] - 26, PLOT_SIZE[1] - 60)  # left, top, right, bottom of the data area
_SUPERSAMPLE = 2
PHASE_COLOURS: dict[str, tuple[int, int, int]] = {"pretrain": (31, 119, 180), "search": (230, 120, 10)}
_OTHER_PHASE = (120, 120, 120)
_HULL_COLOUR = (200, 30, 40)
_GRID = (228, 228, 228)
_AXIS = (90, 90, 90)
_TEXT = (40, 40, 40)


def _exact(points: Sequence[Point]) -> list[_Exact]:
    """Points as exact rationals: every float is one, so hull decisions (collinear or a corner) never
    depend on the rounding of a cross product, and a point counts as collinear exactly when it is."""
    out = []
    for i, p in enumerate(points):
        x, y = float(p[0]), float(p[1])
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"point {i} is not finite: ({p[0]!r}, {p[1]!r})")
        out.append((Fraction(p[0]), Fraction(p[1])))
    return out


def _cross(o: _Exact, a: _Exact, b: _Exact) -> Fraction:
    """> 0 when o -> a -> b turns counter-clockwise (b lies left of, i.e. above, the line o -> a)."""
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def lower_hull(points: Sequence[Point]) -> list[int]:
    """Indices of the lower convex hull of (multiply-adds, error) points, by increasing x, from the
    cheapest point to the lowest-error one.

    The hull is cut at the lowest error because every hull point beyond it costs more and errs no less:
    it is dominated, and a frontier that included it would invite the search to grow models that buy
    nothing. Only strict corners count: a point on a straight segment between two others is matched by a
    mix of them, so it adds nothing to the frontier. Duplicates keep the first index so that the earliest
    model finalised, which the later ones merely repeat, stands for them.
    """
    pts = _exact(points)
    if not pts:
        return []
    # Andrew's monotone chain, lower half: sort by (x, y), keep only left (counter-clockwise) turns.
    order = sorted(range(len(pts)), key=lambda i: (pts[i][0], pts[i][1], i))
    chain: list[int] = []
    for i in order:
        if chain and pts[chain[-1]] == pts[i]:
            continue
        while len(chain) >= 2 and _cross(pts[chain[-2]], pts[chain[-1]], pts[i]) <= 0:
            chain.pop()
        chain.append(i)
    best = min(range(len(chain)), key=lambda k: (pts[chain[k]][1], pts[chain[k]][0]))
    return chain[:best + 1]


def knee(points: Sequence[Point], hull: Sequence[int]) -> int:
    """The hull point where extra cost stops buying much accuracy: the one farthest below the chord from
    the cheapest to the most accurate hull point.

    Both axes are first scaled to [0, 1] by the hull's range, because multiply-adds and error have no
    common unit and the knee must not move when either is rescaled. With one or two hull points there is
    no bend, and the most accurate model is the natural choice; so too when no point lies below the chord.
    """
    if not hull:
        raise ValueError("knee of an empty hull")
    if len(hull) <= 2:
        return hull[-1]
    pts = _exact([points[i] for i in hull])
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = min(xs), min(ys)
    sx, sy = (max(xs) - x0) or Fraction(1), (max(ys) - y0) or Fraction(1)
    scaled = [((x - x0) / sx, (y - y0) / sy) for x, y in pts]
    a, b = scaled[0], scaled[-1]
    # The chord's length is the same for every point, so the cross product ranks distances exactly.
    best, best_depth = hull[-1], Fraction(0)
    for k in sorted(range(len(hull)), key=lambda k: (pts[k][0], k)):
        depth = -_cross(a, b, scaled[k]) if a[0] <= b[0] else _cross(a, b, scaled[k])
        if depth > best_depth:
            best, best_depth = hull[k], depth
    return best


def within_budget(points: Sequence[Point], hull: Sequence[int], max_x: float) -> int | None:
    """The most accurate hull model that fits a cost budget (x <= max_x), for users who deploy under a
    fixed compute limit; ties go to the cheaper. None when even the cheapest hull model is too costly."""
    fits = [i for i in hull if points[i][0] <= max_x]
    if not fits:
        return None
    return min(fits, key=lambda i: (points[i][1], points[i][0]))


def gallery_points(gallery: search_pb2.Gallery) -> list[tuple[int, float]]:
    """(multiply-adds, validation error) of each entry, in entry order: what the hull functions take."""
    return [(e.multiply_adds, e.val_error) for e in gallery.entries]


def gallery_tsv(gallery: search_pb2.Gallery, hull: Collection[int]) -> str:
    """gallery.tsv: one row per model, so that the gallery can be read or sorted in a spreadsheet or with
    shell tools without protobuf; `hull` holds positions in gallery.entries."""
    on_hull = set(hull)
    rows = ["\t".join(TSV_COLUMNS)]
    for pos in sorted(range(len(gallery.entries)), key=lambda k: (gallery.entries[k].index, k)):
        e = gallery.entries[pos]
        rows.append("\t".join((str(e.index), str(e.iteration), e.phase, str(e.nodes), str(e.params),
                               str(e.multiply_adds), f"{e.val_error:.6f}", "1" if pos in on_hull else "0")))
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------- plotting


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The bundled default font at `size` (Pillow >= 10.1); older Pillows only have a fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _padded(values: Sequence[float], min_pad: float) -> tuple[float, float]:
    """A data range with a margin, so dots do not sit on the axes, and never empty, so one entry or equal
    values do not divide by zero."""
    if not values:
        return 0.0, 1.0
    lo, hi = float(min(values)), float(max(values))
    pad = (hi - lo) * 0.07 if hi > lo else max(abs(lo) * 0.1, min_pad)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (multiples of 1, 2, 2.5 or 5 times a power of ten) across [lo, hi]: round numbers
    are what a reader interpolates between."""
    raw = (hi - lo) / target
    exp = math.floor(math.log10(raw))
    step = next(m * 10.0 ** exp for m in (1, 2, 2.5, 5, 10) if m * 10.0 ** exp >= raw * (1 - 1e-9))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _decimals(step: float) -> int:
    """Decimals that write every multiple of `step` exactly (2.5 needs one, 0.25 two)."""
    d = 0
    while d < 6 and abs(round(step, d) - step) > 1e-9 * max(1.0, abs(step)):
        d += 1
    return d


def _macs_labels(ticks: list[float]) -> list[str]:
    """Multiply-adds in the unit of the largest tick (350k, 1.2M, 3.5G): raw counts are unreadable."""
    top = max((abs(t) for t in ticks), default=0.0)
    unit, suffix = next(((u, s) for u, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if top >= u), (1.0, ""))
    step = (ticks[1] - ticks[0]) / unit if len(ticks) > 1 else 1.0
    d = _decimals(step)
    return ["0" if t == 0 else f"{t / unit:.{d}f}{suffix}" for t in ticks]


def _percent_labels(ticks: list[float]) -> list[str]:
    d = _decimals(ticks[1] - ticks[0]) if len(ticks) > 1 else 0
    return [f"{t:.{d}f}%" for t in ticks]


class _Canvas:
    """A supersampled drawing surface in output-pixel coordinates (Pillow's lines and dots are aliased)."""

    def __init__(self) -> None:
        probe = _font(12 * _SUPERSAMPLE)
        # A bitmap fallback font cannot scale, so supersampling would only shrink its text.
        self.s = _SUPERSAMPLE if isinstance(probe, ImageFont.FreeTypeFont) else 1
        self.fonts = {n: _font(n * self.s) for n in (11, 12, 16)}
        self.image = Image.new("RGB", (PLOT_SIZE[0] * self.s, PLOT_SIZE[1] * self.s), "white")
        self.draw = ImageDraw.Draw(self.image)

    def size(self, txt: str, font: int) -> tuple[float, float]:
        l, t, r, b = self.draw.textbbox((0, 0), txt, font=self.fonts[font])
        return (r - l) / self.s, (b - t) / self.s

    def text(self, x: float, y: float, txt: str, font: int, fill, align: str = "centre") -> None:
        """Text with its box centred vertically on y and centred on, ending at or starting at x; placed by
        bounding box, not by anchor, which bitmap fonts do not support."""
        s = self.s
        l, t, r, b = self.draw.textbbox((0, 0), txt, font=self.fonts[font])
        left = {"centre": x * s - (l + r) / 2, "right": x * s - r, "left": x * s - l}[align]
        self.draw.text((round(left), round(y * s - (t + b) / 2)), txt, font=self.fonts[font], fill=fill)

    def vertical_text(self, x: float, y: float, txt: str, font: int, fill) -> None:
        """Text read bottom to top, centred on (x, y): the usual place of a y-axis title."""
        l, t, r, b = self.draw.textbbox((0, 0), txt, font=self.fonts[font])
        mask = Image.new("L", (r - l + 2, b - t + 2), 0)
        ImageDraw.Draw(mask).text((1 - l, 1 - t), txt, font=self.fonts[font], fill=255)
        mask = mask.rotate(90, expand=True)
        box = (round(x * self.s - mask.width / 2), round(y * self.s - mask.height / 2))
        self.image.paste(Image.new("RGB", mask.size, fill), box, mask)

    def line(self, pts: Sequence[tuple[float, float]], fill, width: float = 1.0) -> None:
        s = self.s
        self.draw.line([(x * s, y * s) for x, y in pts], fill=fill, width=max(1, round(width * s)),
                       joint="curve")

    def dot(self, x: float, y: float, r: float, fill=None, outline=None, width: float = 1.0) -> None:
        s = self.s
        self.draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill, outline=outline,
                          width=max(1, round(width * s)))

    def result(self) -> Image.Image:
        return self.image.resize(PLOT_SIZE, Image.LANCZOS) if self.s > 1 else self.image


def plot(gallery: search_pb2.Gallery, hull: Sequence[int], title: str = "") -> Image.Image:
    """Validation error against multiply-adds for every gallery model, the lower hull drawn through the
    models worth keeping and each labelled with its gallery index, so the frontier and its growth across
    iterations can be judged at a glance. `hull` holds positions in gallery.entries. Drawn with Pillow
    alone, at a fixed size, and deterministically: the same gallery always gives the same bytes."""
    entries = list(gallery.entries)
    xs = [float(e.multiply_adds) for e in entries]
    ys = [100.0 * e.val_error for e in entries]
    x_lo, x_hi = _padded(xs, 1.0)
    y_lo, y_hi = _padded(ys, 0.5)
    left, top, right, bottom = _AREA

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    c = _Canvas()
    # Grid and ticks; negative ticks only appear when the data are negative, which costs and errors are not.
    x_ticks = _ticks(x_lo, x_hi)
    x_ticks = [t for t in x_ticks if t >= 0 or min(xs, default=0.0) < 0]
    y_ticks = _ticks(y_lo, y_hi)
    y_ticks = [t for t in y_ticks if t >= 0 or min(ys, default=0.0) < 0]
    for t, label in zip(x_ticks, _macs_labels(x_ticks)):
        c.line([(px(t), top), (px(t), bottom)], _GRID)
        c.line([(px(t), bottom), (px(t), bottom + 4)], _AXIS)
        c.text(px(t), bottom + 14, label, 11, _TEXT)
    for t, label in zip(y_ticks, _percent_labels(y_ticks)):
        c.line([(left, py(t)), (right, py(t))], _GRID)
        c.line([(left - 4, py(t)), (left, py(t))], _AXIS)
        c.text(left - 8, py(t), label, 11, _TEXT, align="right")
    c.line([(left, top), (left, bottom), (right, bottom)], _AXIS, 1.2)
    c.text((left + right) / 2, PLOT_SIZE[1] - 18, "multiply-adds", 12, _TEXT)
    c.vertical_text(16, (top + bottom) / 2, "validation error (%)", 12, _TEXT)
    if title:
        c.text(PLOT_SIZE[0] / 2, 22, title, 16, (0, 0, 0))

    on_hull = sorted({k for k in hull if 0 <= k < len(entries)}, key=lambda k: (xs[k], ys[k], k))
    if len(on_hull) > 1:
        c.line([(px(xs[k]), py(ys[k])) for k in on_hull], _HULL_COLOUR, 2.0)
    for k, e in enumerate(entries):
        c.dot(px(xs[k]), py(ys[k]), 4.5, fill=PHASE_COLOURS.get(e.phase, _OTHER_PHASE), outline="white")
    for k in on_hull:
        x, y = px(xs[k]), py(ys[k])
        c.dot(x, y, 7.5, outline=_HULL_COLOUR, width=1.6)
        # Below-left of a lower-hull corner lies neither a dot nor the hull line, so the label stays legible.
        label = f"#{entries[k].index}"
        w, h = c.size(label, 11)
        lx = min(max(x - 7, left + 2 + w), right - 2)
        ly = min(max(y + 8 + h / 2, top + h / 2 + 2), bottom - h / 2 - 2)
        c.text(lx, ly, label, 11, _HULL_COLOUR, align="right")

    # Legend above the data area, right-aligned: the phases, any unknown one, then the hull.
    items: list[tuple[str, tuple[int, int, int], bool]] = [(p, col, True) for p, col in PHASE_COLOURS.items()]
    if any(e.phase not in PHASE_COLOURS for e in entries):
        items.append(("other", _OTHER_PHASE, True))
    items.append(("lower hull", _HULL_COLOUR, False))
    x, y = float(right), top - 16.0
    for label, colour, is_dot in reversed(items):
        w, _ = c.size(label, 11)
        c.text(x, y, label, 11, _TEXT, align="right")
        x -= w + 6
        if is_dot:
            c.dot(x - 5, y, 4.5, fill=colour, outline="white")
            x -= 10
        else:
            c.line([(x - 18, y), (x, y)], colour, 2.0)
            x -= 18
        x -= 16
    return c.result()


def save_plot(image: Image.Image, path: str | os.PathLike) -> None:
    """Writes the plot by extension (.png, .jpg, .svg), the same way as the cell pictures."""
    draw.save(image, path)
