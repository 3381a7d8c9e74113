"""Tests of tfnas.draw: cell pictures are sensible in size, not blank, deterministic, and saved by extension."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tfnas import draw, genotypes
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb


def darts_v2() -> pb.ModelDesc:
    macro = config_pb2.MacroConfig(channels=16, cells=8, nodes=4, stem_multiplier=3)
    return genotypes.to_desc(genotypes.lookup("DARTS_V2"), macro, [32, 32, 3], 10)


def first(desc: pb.ModelDesc, cell_type: int) -> pb.CellDesc:
    return next(c for c in desc.cells if c.cell_type == cell_type)


def mixed_cell() -> pb.CellDesc:
    """Two nodes; node 1 has a mixed edge (alpha row 2) from node 0 and a plain edge from c_{k-1}."""
    cell = pb.CellDesc(id="m", cell_type=pb.NORMAL, channels=8)
    n0 = cell.nodes.add(id="m.n0")
    n0.edges.add(op=pb.OpDesc(name="sep_conv_3x3", id="m.n0.e0"), inputs=[0])
    n0.edges.add(op=pb.OpDesc(name="max_pool_3x3", id="m.n0.e1"), inputs=[1])
    n1 = cell.nodes.add(id="m.n1")
    mixed = pb.OpDesc(name="mixed", id="m.n1.e0", alpha_group="normal", alpha_index=2)
    mixed.candidates.add(name="none", id="m.n1.e0.none")
    mixed.candidates.add(name="dil_conv_5x5", id="m.n1.e0.dil")
    n1.edges.add(op=mixed, inputs=[2])
    n1.edges.add(op=pb.OpDesc(name="skip_connect", id="m.n1.e1"), inputs=[1])
    return cell


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def check_picture(image: Image.Image, min_size=(400, 250), max_size=(2500, 1500)) -> None:
    assert image.mode == "RGB"
    assert min_size[0] <= image.width <= max_size[0] and min_size[1] <= image.height <= max_size[1]
    pixels = np.asarray(image)
    assert (pixels[0, 0] == 255).all()  # white background
    assert (pixels.min(axis=2) < 200).mean() > 0.005  # lines, boxes and text were drawn
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # several colours, antialiased


@pytest.mark.parametrize("cell_type", [pb.NORMAL, pb.REDUCTION])
def test_darts_v2_cells(cell_type):
    image = draw.draw_cell(first(darts_v2(), cell_type), title="cell")
    check_picture(image)
    assert 700 <= image.width <= 1100 and 350 <= image.height <= 600  # about 900x450 for 4 nodes
    pixels = np.asarray(image).astype(int)
    # Edges are coloured by family: sep conv blue in the normal cell, pool green in the reduction cell.
    colour = draw.FAMILY_COLOURS["sep conv" if cell_type == pb.NORMAL else "pool"]
    assert (np.abs(pixels - colour).sum(axis=2) < 30).sum() > 200


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS", "DARTS_V1"])
def test_labels_do_not_overlap(name):
    macro = config_pb2.MacroConfig(channels=16, cells=8, nodes=4, stem_multiplier=3)
    desc = genotypes.to_desc(genotypes.lookup(name), macro, [32, 32, 3], 10)
    for cell_type in (pb.NORMAL, pb.REDUCTION):
        layout = draw.layout_cell(first(desc, cell_type), "t")
        assert len(layout.labels) == 8 and len(layout.edges) == 8 + 4  # 8 ops, 4 concatenated nodes
        rects = [r for r, _, _ in layout.labels]
        for i, a in enumerate(rects):
            assert 0 <= a[0] and a[2] <= layout.width and 0 <= a[1] and a[3] <= layout.height
            for b in rects[i + 1:] + list(layout.boxes.values()):
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
        # Input boxes left of nodes, nodes left of the output.
        assert layout.boxes[0][2] < min(layout.boxes[s][0] for s in range(2, 6))
        assert max(layout.boxes[s][2] for s in range(2, 6)) < layout.boxes["out"][0]


def test_deterministic():
    cell = first(darts_v2(), pb.NORMAL)
    assert png(draw.draw_cell(cell, "a")) == png(draw.draw_cell(cell, "a"))
    assert png(draw.draw_cells(darts_v2())) == png(draw.draw_cells(darts_v2()))
    assert png(draw.draw_cell(cell, "a")) != png(draw.draw_cell(cell, "b"))


def test_mixed_labels():
    cell = mixed_cell()
    assert draw.edge_label(cell.nodes[1].edges[0].op) == ("mixed", "other")
    weights = {2: [("none", 0.6), ("dil_conv_5x5", 0.31), ("max_pool_3x3", 0.09)]}
    assert draw.edge_label(cell.nodes[1].edges[0].op, weights) == ("dil_conv_5x5 0.31", "dil conv")
    # Weights per alpha group (one dict for a whole model), and a row that is missing.
    assert draw.edge_label(cell.nodes[1].edges[0].op, {"normal": weights})[0] == "dil_conv_5x5 0.31"
    assert draw.edge_label(cell.nodes[1].edges[0].op, {5: [("skip_connect", 1.0)]})[0] == "mixed"
    plain, weighted = draw.draw_cell(cell), draw.draw_cell(cell, "mixed", weights)
    check_picture(plain)
    check_picture(weighted)
    assert png(plain) != png(weighted)


def test_alpha_weights_from_descriptor():
    desc = pb.ModelDesc()
    desc.cells.add().CopyFrom(mixed_cell())
    group = desc.alpha_groups["normal"]
    group.primitives.extend(["none", "dil_conv_5x5"])
    group.num_edges = 3
    group.values.extend([0, 0, 0, 0, 0.0, np.log(3.0)])
    weights = draw.alpha_weights(desc)
    assert weights["normal"][2][1][0] == "dil_conv_5x5"
    assert weights["normal"][2][1][1] == pytest.approx(0.75)
    assert png(draw.draw_cells(desc)) == png(draw.draw_cells(desc, weights))


def test_draw_cells_stacks_normal_and_reduction():
    desc = darts_v2()
    both = draw.draw_cells(desc)
    normal = draw.draw_cell(first(desc, pb.NORMAL), "normal cell")
    check_picture(both, max_size=(2500, 2500))
    assert both.height > 2 * normal.height - 10 and both.width >= normal.width
    only_normal = pb.ModelDesc()
    only_normal.cells.add().CopyFrom(first(desc, pb.NORMAL))
    assert png(draw.draw_cells(only_normal)) == png(normal)
    with pytest.raises(ValueError):
        draw.draw_cells(pb.ModelDesc())


def test_odd_cells():
    """A chain of nodes (deep layers), a concat that includes an input, a multi-input edge."""
    cell = pb.CellDesc(id="c")
    for i in range(5):
        cell.nodes.add().edges.add(op=pb.OpDesc(name="conv_7x1_1x7"), inputs=[1 + i])
    cell.nodes[4].edges.add(op=pb.OpDesc(name="avg_pool_3x3"), inputs=[0, 3])
    cell.concat.extend([1, 4, 6])
    image = draw.draw_cell(cell)
    check_picture(image)
    assert image.width > 1100  # seven columns
    check_picture(draw.draw_cell(pb.CellDesc(id="empty")), min_size=(100, 100))


def test_save(tmp_path):
    image = draw.draw_cell(mixed_cell())
    draw.save(image, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as saved:
        assert saved.format == "PNG" and saved.size == image.size
        assert (np.asarray(saved.convert("RGB")) == np.asarray(image)).all()
    draw.save(image, str(tmp_path / "a.JPG"))
    with Image.open(tmp_path / "a.JPG") as saved:
        assert saved.format == "JPEG" and saved.size == image.size
    draw.save(image, tmp_path / "a.svg")
    svg = (tmp_path / "a.svg").read_text()
    assert svg.startswith("<svg") and f'width="{image.width}"' in svg
    data = svg.split("base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(data) == png(image)
    with pytest.raises(ValueError, match="unknown extension") as info:
        draw.save(image, tmp_path / "a.bmpx")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        draw.save(image, tmp_path / "noext")


def test_to_tensor_image():
    image = draw.draw_cell(mixed_cell())
    tensor = draw.to_tensor_image(image)
    assert tensor.shape == (1, image.height, image.width, 3) and tensor.dtype == np.uint8
    assert (tensor[0] == np.asarray(image)).all()
    assert draw.to_tensor_image(image.convert("RGBA")).shape == tensor.shape
