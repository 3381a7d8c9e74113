"""Tests of the PetriDish gallery: the cut lower hull (by hand and against brute force), the knee, the budget
pick, gallery.tsv, and the plot (fixed size, deterministic, sensitive to the hull)."""
from __future__ import annotations

import io
from fractions import Fraction
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from tfnas.proto import search_pb2
from tfnas.search.petridish import gallery as g

# ------------------------------------------------------------------------------------------- lower_hull


def test_lower_hull_by_hand():
    pts = [(1, 0.5), (2, 0.3), (3, 0.35), (4, 0.1), (5, 0.2), (2.5, 0.45), (6, 0.05), (7, 0.3)]
    # (2.5, .45), (3, .35) and (5, .2) lie above the hull; (7, .3) lies beyond the lowest error.
    assert g.lower_hull(pts) == [0, 1, 3, 6]


def test_lower_hull_input_order_does_not_matter():
    pts = [(6, 0.05), (3, 0.35), (1, 0.5), (7, 0.3), (4, 0.1), (2, 0.3)]
    assert g.lower_hull(pts) == [2, 5, 4, 0]


def test_collinear_middle_point_is_not_a_corner():
    assert g.lower_hull([(0, 4), (1, 2), (2, 0)]) == [0, 2]
    # Exactly representable floats, collinear in binary too.
    assert g.lower_hull([(0.0, 1.0), (2.0, 0.25), (1.0, 0.625)]) == [0, 1]
    # Collinear with a corner after it: the middle point still drops out.
    assert g.lower_hull([(0, 6), (1, 4), (2, 2), (4, 1)]) == [0, 2, 3]


def test_duplicates_keep_the_first_index():
    pts = [(1, 0.5), (0, 2), (1, 0.5), (0, 2), (2, 0)]
    assert g.lower_hull(pts) == [1, 0, 4]
    assert g.lower_hull([(3, 0.2), (3, 0.2), (3, 0.2)]) == [0]


def test_equal_x_takes_the_lowest_error():
    pts = [(1, 3), (1, 1), (2, 0.5), (2, 2), (3, 0.5)]
    # (3, .5) errs as much as (2, .5) at more cost: the cut stops at the cheaper of the two.
    assert g.lower_hull(pts) == [1, 2]


def test_equal_error_everywhere_keeps_the_cheapest():
    assert g.lower_hull([(5, 0.2), (1, 0.2), (3, 0.2)]) == [1]


def test_dominated_point_beyond_the_lowest_error_is_cut():
    assert g.lower_hull([(1, 1.0), (2, 0.5), (3, 0.8)]) == [0, 1]
    # The cheapest point may also be the most accurate: then it alone is the frontier.
    assert g.lower_hull([(1, 0.1), (2, 0.5), (3, 0.15)]) == [0]


def test_single_and_empty():
    assert g.lower_hull([(10, 0.3)]) == [0]
    assert g.lower_hull([]) == []


def test_numpy_input():
    pts = np.array([[1, 0.5], [2, 0.3], [4, 0.1], [6, 0.05], [7, 0.3]])
    assert g.lower_hull(pts) == [0, 1, 2, 3]


def test_non_finite_points_are_rejected():
    with pytest.raises(ValueError, match="point 1"):
        g.lower_hull([(1, 0.5), (2, float("nan"))])


def _cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _check_structure(points, hull):
    """The suggested property: a strictly convex, decreasing chain from the cheapest point to the most
    accurate one, with every input point on or above it."""
    pts = [(Fraction(x), Fraction(y)) for x, y in points]
    hp = [pts[i] for i in hull]
    assert len(set(hull)) == len(hull)
    assert all(a[0] < b[0] and a[1] > b[1] for a, b in pairwise(hp))
    leftmost = min(range(len(pts)), key=lambda i: (pts[i][0], pts[i][1], i))
    best = min(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0], i))
    assert hull[0] == leftmost and hull[-1] == best
    for k in range(1, len(hp) - 1):
        assert _cross(hp[k - 1], hp[k], hp[k + 1]) > 0
    for a, b in pairwise(hp):
        for p in pts:
            if a[0] <= p[0] <= b[0]:
                assert _cross(a, b, p) >= 0
    for i in hull:  # duplicates are represented by their first index
        assert pts.index(pts[i]) == i


def _brute_force(points):
    """Independent definition: a point (the first of its duplicates, no costlier than the most accurate
    point) is a hull corner iff no point lies directly below it and no chord between two other points that
    strictly spans it passes on or below it."""
    pts = [tuple(p) for p in points]
    bx = min(pts, key=lambda p: (p[1], p[0]))[0]
    out = []
    for i, p in enumerate(pts):
        if pts.index(p) != i or p[0] > bx:
            continue
        if any(q[0] == p[0] and q[1] < p[1] for q in pts):
            continue
        others = [q for q in set(pts) if q != p]
        spanned = any(_cross(a, b, p) >= 0 for a in others for b in others if a[0] < p[0] < b[0])
        if not spanned:
            out.append(i)
    return sorted(out, key=lambda i: pts[i][0])


def test_lower_hull_random_floats_property():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 40))
        pts = [(float(x), float(y)) for x, y in zip(rng.uniform(0, 5e6, n), rng.uniform(0.02, 0.9, n))]
        _check_structure(pts, g.lower_hull(pts))


def test_lower_hull_random_grid_against_brute_force():
    # Small integer grids give many duplicates, equal x, equal y and collinear triples.
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 18))
        pts = [(int(x), int(y)) for x, y in zip(rng.integers(0, 7, n), rng.integers(0, 7, n))]
        hull = g.lower_hull(pts)
        assert hull == _brute_force(pts), pts
        _check_structure(pts, hull)


# ------------------------------------------------------------------------------------ knee, within_budget

L_SHAPE = [(0, 1.0), (1, 0.2), (2, 0.15), (10, 0.1), (5, 0.6)]


def test_knee_of_an_l_shaped_frontier():
    hull = g.lower_hull(L_SHAPE)
    assert hull == [0, 1, 2, 3]
    assert g.knee(L_SHAPE, hull) == 1


def test_knee_does_not_depend_on_units():
    scaled = [(x * 1_000_000, y * 100) for x, y in L_SHAPE]
    assert g.knee(scaled, g.lower_hull(scaled)) == 1


def test_knee_tie_goes_to_the_cheaper():
    # Scaled to [0, 1], (2, 3) and (3, 2) are equally far below the chord x + y = 1.
    pts = [(10, 0), (3, 2), (2, 3), (0, 10)]
    hull = g.lower_hull(pts)
    assert hull == [3, 2, 1, 0]
    assert g.knee(pts, hull) == 2


def test_knee_of_short_hulls_is_the_most_accurate():
    assert g.knee([(1, 0.3)], [0]) == 0
    pts = [(1, 0.3), (2, 0.1)]
    assert g.knee(pts, g.lower_hull(pts)) == 1
    with pytest.raises(ValueError):
        g.knee(pts, [])


def test_within_budget():
    hull = g.lower_hull(L_SHAPE)
    assert g.within_budget(L_SHAPE, hull, 1.5) == 1
    assert g.within_budget(L_SHAPE, hull, 2) == 2  # the budget is inclusive
    assert g.within_budget(L_SHAPE, hull, -1) is None
    assert g.within_budget(L_SHAPE, hull, 1e9) == 3
    # (5, .6) fits a budget of 6 but is not on the hull; the best hull model within it is (2, .15).
    assert g.within_budget(L_SHAPE, hull, 6) == 2


# ------------------------------------------------------------------------------------------ gallery.tsv


def three_entries() -> search_pb2.Gallery:
    gal = search_pb2.Gallery()
    gal.entries.add(index=0, iteration=1, phase="pretrain", nodes=1, params=120000, multiply_adds=350000,
                    val_error=0.25)
    gal.entries.add(index=1, iteration=1, phase="search", nodes=2, params=180000, multiply_adds=520000,
                    val_error=0.2712345678)
    gal.entries.add(index=2, iteration=2, phase="pretrain", nodes=2, params=200000, multiply_adds=1200000,
                    val_error=0.125)
    return gal


def test_gallery_tsv_exact_text():
    gal = three_entries()
    hull = g.lower_hull(g.gallery_points(gal))
    assert hull == [0, 2]
    expected = ("model\titeration\tphase\tnodes\tparams\tmultiply_adds\tval_error\ton_hull\n"
                "0\t1\tpretrain\t1\t120000\t350000\t0.250000\t1\n"
                "1\t1\tsearch\t2\t180000\t520000\t0.271235\t0\n"
                "2\t2\tpretrain\t2\t200000\t1200000\t0.125000\t1\n")
    assert g.gallery_tsv(gal, hull) == expected
    assert g.gallery_tsv(gal, set(hull)) == expected


def test_gallery_tsv_rows_in_index_order():
    gal = search_pb2.Gallery()
    gal.entries.add(index=1, phase="search", multiply_adds=2, val_error=0.1)
    gal.entries.add(index=0, phase="pretrain", multiply_adds=1, val_error=0.2)
    lines = g.gallery_tsv(gal, [1]).splitlines()
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["0", "1"]
    assert [ln.split("\t")[-1] for ln in lines[1:]] == ["1", "0"]  # hull holds entry positions
    assert g.gallery_tsv(search_pb2.Gallery(), []) == "\t".join(g.TSV_COLUMNS) + "\n"


# ------------------------------------------------------------------------------------------------- plot


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_plot_fixed_size_deterministic_and_not_blank():
    gal = three_entries()
    hull = g.lower_hull(g.gallery_points(gal))
    a, b = g.plot(gal, hull, "gallery"), g.plot(gal, hull, "gallery")
    assert a.size == g.PLOT_SIZE
    assert png(a) == png(b)
    pixels = np.asarray(a.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in (*g.PHASE_COLOURS.values(), g._HULL_COLOUR):
        assert (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 10


def test_plot_changes_with_the_hull_and_title():
    gal = three_entries()
    base = png(g.plot(gal, [0, 2]))
    assert png(g.plot(gal, [0, 1, 2])) != base
    assert png(g.plot(gal, [0, 2], "titled")) != base


@pytest.mark.parametrize("entries", [
    [(1_234_567, 0.25)],                      # one entry
    [(500_000, 0.3), (500_000, 0.2)],         # identical x
    [(100_000, 0.2), (900_000, 0.2)],         # identical y
    [(0, 0.0), (0, 0.0)],                     # everything at zero
    [],                                       # nothing finalised yet
])
def test_plot_degenerate_galleries(entries):
    gal = search_pb2.Gallery()
    for k, (x, y) in enumerate(entries):
        gal.entries.add(index=k, phase="search" if k else "pretrain", multiply_adds=x, val_error=y)
    image = g.plot(gal, g.lower_hull(g.gallery_points(gal)), "degenerate")
    assert image.size == g.PLOT_SIZE


def test_tick_labels_are_readable():
    assert g._macs_labels(g._ticks(100_000, 950_000)) == ["200k", "400k", "600k", "800k"]
    assert g._macs_labels([1.0e6, 1.5e6, 2.0e6]) == ["1.0M", "1.5M", "2.0M"]
    assert g._percent_labels([10.0, 12.5, 15.0]) == ["10.0%", "12.5%", "15.0%"]


def test_save_plot_by_extension(tmp_path):
    image = g.plot(three_entries(), [0, 2])
    g.save_plot(image, tmp_path / "gallery.png")
    with Image.open(tmp_path / "gallery.png") as im:
        assert im.size == g.PLOT_SIZE
    g.save_plot(image, tmp_path / "gallery.svg")
    assert (tmp_path / "gallery.svg").read_text().startswith("<svg")
