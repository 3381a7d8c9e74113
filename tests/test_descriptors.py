import pytest

from tfnas import descriptors, genotypes, macro
from tfnas.descriptors import DescriptorError
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts


def small_desc():
    m = config_pb2.MacroConfig(channels=8, cells=3, nodes=4, stem_multiplier=3, aux_tower=True, aux_weight=0.4)
    return genotypes.to_desc(genotypes.lookup("DARTS_V2"), m, [16, 16, 3], 10, source="DARTS_V2")


@pytest.mark.parametrize("suffix", [".pbtxt", ".json", ".pb"])
def test_round_trip_every_format(tmp_path, suffix):
    for desc in (small_desc(), darts.build_supernet(small_desc(), ["none", "skip_connect", "sep_conv_3x3"])):
        path = tmp_path / f"d{suffix}"
        descriptors.save(desc, path)
        assert descriptors.load_model_desc(path) == desc


def test_unknown_format_and_corrupt_files(tmp_path):
    with pytest.raises(DescriptorError, match="unknown descriptor format"):
        descriptors.save(small_desc(), tmp_path / "d.xml")
    bad = tmp_path / "bad.pbtxt"
    bad.write_text("cells { nodez {} }")
    with pytest.raises(DescriptorError, match=r"bad.pbtxt: 1:.*nodez"):
        descriptors.load_model_desc(bad)
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(DescriptorError, match="bad.pb"):
        descriptors.load_model_desc(bad)


def test_macro_layout_follows_darts():
    m = config_pb2.MacroConfig(channels=16, cells=8, nodes=4, stem_multiplier=3)
    desc = macro.build_macro(m, [32, 32, 3], 10)
    types = [c.cell_type for c in desc.cells]
    assert [i for i, t in enumerate(types) if t == pb.REDUCTION] == [2, 5]
    assert [c.channels for c in desc.cells] == [16, 16, 32, 32, 32, 64, 64, 64]
    assert desc.stem.out_channels == 48
    # s0 after a reduction cell goes through FactorizedReduce; channels follow the concat of 4 nodes.
    assert [c.s0_op.name for c in desc.cells][3] == "factorized_reduce"
    assert desc.cells[3].s0_op.in_channels == 4 * 16 and desc.cells[3].s1_op.in_channels == 4 * 32
    assert desc.logits.in_channels == 4 * 64
    assert macro.reduction_indices(20) == {6, 13} and macro.reduction_indices(1) == set()


def test_rewire_after_a_cell_grows():
    desc = small_desc()
    node = desc.cells[0].nodes.add(id="c0.n4")
    node.edges.add(op=macro.make_op(desc.cells[0], 4, 1, "skip_connect"), inputs=[1])
    desc.cells[0].concat.append(6)
    with pytest.raises(DescriptorError, match="channel mismatch"):
        descriptors.validate(desc)
    descriptors.validate(macro.rewire(desc))
    assert desc.cells[1].s1_op.in_channels == 5 * 8


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.cells[1].nodes[0].edges[0].op.__setattr__("name", "sep_conv_9x9"),
     r"cell 1 \(c1\), node 0, edge 0: unknown operation 'sep_conv_9x9'"),
    (lambda d: d.cells[0].nodes[1].edges[1].inputs.__setitem__(0, 4),
     r"cell 0 \(c0\), node 1, edge 1: reads state 4, but node 1 can read only states 0..2"),
    (lambda d: d.cells[2].nodes[3].edges[0].inputs.__setitem__(0, -1),
     r"cell 2 \(c2\), node 3, edge 0: reads state -1"),
    (lambda d: d.cells[2].nodes[3].edges[0].ClearField("inputs"), r"cell 2 \(c2\), node 3, edge 0: edge reads no state"),
    (lambda d: d.cells[2].s1_op.__setattr__("in_channels", 7),
     r"cell 2 \(c2\), s1_op: channel mismatch: in_channels 7 but its input has 64"),
    (lambda d: d.cells[0].nodes[2].edges[0].op.__setattr__("in_channels", 5),
     r"cell 0 \(c0\), node 2, edge 0: channel mismatch: in_channels 5 != cell channels 8"),
    (lambda d: d.ClearField("cells"), "the model has no cells"),
    (lambda d: d.cells[1].concat.append(9), r"cell 1 \(c1\): concat names state 9"),
    (lambda d: d.logits.__setattr__("in_channels", 3), "logits: channel mismatch"),
])
def test_invalid_descriptors_name_cell_node_and_edge(mutate, message):
    desc = small_desc()
    mutate(desc)
    with pytest.raises(DescriptorError, match=message):
        descriptors.validate(desc, where="d.pbtxt")


def test_genotype_round_trip_and_expansion():
    for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS"):
        g = genotypes.lookup(name)
        desc = genotypes.to_desc(g, config_pb2.MacroConfig(channels=8, cells=5, stem_multiplier=3), [8, 8, 1], 10)
        assert genotypes.from_desc(desc) == g
        big = genotypes.expand(desc, config_pb2.MacroConfig(channels=36, cells=20, stem_multiplier=3))
        assert len(big.cells) == 20 and big.cells[0].channels == 36 and big.cells[-1].channels == 144
        assert genotypes.from_desc(big) == g
        assert list(big.input_shape) == [8, 8, 1]
    assert genotypes.lookup("darts-v2") is genotypes.PUBLISHED["DARTS_V2"]
    with pytest.raises(ValueError, match="not a finalised"):
        genotypes.from_desc(darts.build_supernet(small_desc(), ["skip_connect"]))


def test_expansion_keeps_any_number_of_edges_per_node():
    desc = small_desc()
    for cell in desc.cells:  # a third edge into the last node of every cell
        last = len(cell.nodes) - 1
        cell.nodes[last].edges.add(op=macro.make_op(cell, last, 2, "skip_connect", suffix=".2"), inputs=[2])
    descriptors.validate(desc)
    big = genotypes.expand(desc, config_pb2.MacroConfig(channels=16, cells=6, stem_multiplier=3))
    descriptors.validate(big)
    assert [len(n.edges) for n in big.cells[0].nodes] == [2, 2, 2, 3]
    assert [list(e.inputs) for e in big.cells[0].nodes[3].edges] == [list(e.inputs) for e in desc.cells[0].nodes[3].edges]
    assert big.cells[2].nodes[0].edges[0].op.stride == 2  # a reduction cell's edge from an input
