"""benchmarks/bench.py's CPU kinds and peaks, for both kinds of this project's machines on either one.

bench.py is a script, not a module of tfnas: it is imported by path. Importing it imports tfnas (which
does not import TensorFlow) and no TensorFlow.
"""
import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("tfnas_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2".split()
AVX512 = AVX2 + "avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni".split()


def test_amd_avx512_bf16(bench):
    # The AMD EPYC of this project: reports avx512f and avx512_bf16, no AMX.
    kind = bench.cpu_kind("AuthenticAMD", AVX512 + ["avx512_bf16"])
    assert kind["kind"] == "AMD" and kind["reference"] == "AMD"
    assert kind["flop_per_cycle"] == {"FLOAT32": 32, "MIXED_BFLOAT16": 64, "MIXED_FLOAT16": 32}
    assert kind["bf16_flop_per_cycle"] == 64
    assert "two 256-bit halves" in kind["flop_per_cycle_convention"]["FLOAT32"]


def test_amd_avx2(bench):
    kind = bench.cpu_kind("AuthenticAMD", AVX2)
    assert kind["kind"] == "AMD" and kind["reference"] == "AMD"
    assert kind["fp32_flop_per_cycle"] == 32
    assert kind["bf16_flop_per_cycle"] is None  # no bf16 peak: bf16 is converted to fp32
    assert kind["flop_per_cycle"]["MIXED_BFLOAT16"] == 32
    assert "fp32" in kind["flop_per_cycle_convention"]["MIXED_BFLOAT16"]


def test_intel_amx(bench):
    # The Intel Xeon of this project: AVX-512 and AMX.
    kind = bench.cpu_kind("GenuineIntel", AVX512 + ["avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"])
    assert kind["kind"] == "Intel" and kind["reference"] == "Intel"
    assert kind["flop_per_cycle"] == {"FLOAT32": 64, "MIXED_BFLOAT16": 1024, "MIXED_FLOAT16": 64}
    assert "assumed" in kind["flop_per_cycle_convention"]["FLOAT32"]


def test_intel_avx512_without_amx(bench):
    assert bench.cpu_kind("GenuineIntel", AVX512 + ["avx512_bf16"])["flop_per_cycle"]["MIXED_BFLOAT16"] == 128
    kind = bench.cpu_kind("GenuineIntel", AVX512)
    assert kind["fp32_flop_per_cycle"] == 64 and kind["bf16_flop_per_cycle"] is None
    assert kind["flop_per_cycle"]["MIXED_BFLOAT16"] == 64


def test_other_vendor(bench):
    kind = bench.cpu_kind("HygonGenuine", AVX2)
    assert kind["kind"] == "other" and kind["reference"] is None and kind["fp32_flop_per_cycle"] == 32
    kind = bench.cpu_kind("unknown", ["sse2"])
    assert kind["fp32_flop_per_cycle"] == 16 and "unknown vector unit" in kind["flop_per_cycle_convention"]["FLOAT32"]


def test_reference_tables(bench):
    ref = bench.REFERENCE
    assert set(ref) == {"AMD", "Intel"}
    assert ref["AMD"]["small-o1"]["s_per_step"] == 6.64
    assert ref["AMD"]["small-o1"]["images_per_s"] == pytest.approx(32 / 6.64)
    assert ref["AMD"]["cifar-infer"]["images_per_s"] == pytest.approx(64 / 3.42)
    assert ref["AMD"]["eval-train"]["images_per_s"] == pytest.approx(96 / 8.3)
    assert ref["Intel"]["eval-train"]["images_per_s"] == pytest.approx(96 / 7.95)
    assert ref["Intel"]["small-o1"]["s_per_step"] == 6.3
    assert "cifar-infer" not in ref["Intel"]
    assert all(case in bench.CASES for table in ref.values() for case in table)


def test_profile_kernel_times_by_op_type(bench, tmp_path):
    # A real profile of a tiny function: op types come out by name, per step, and the table prints them.
    import tensorflow as tf

    @tf.function
    def step(x):
        return tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(x, tf.ones([3, 3, 4, 4]), 1, "SAME")))

    x = tf.ones([2, 8, 8, 4])
    step(x)
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(2):
        step(x).numpy()
    tf.profiler.experimental.stop()
    got = bench.kernel_times(str(tmp_path), steps=2)
    assert got["threads"] >= 1 and got["kernel_s_per_step"] > 0
    assert {"Relu", "Sum"} <= set(got["ops"]) and any("Conv2D" in k for k in got["ops"]), got["ops"]
    assert abs(sum(got["ops"].values()) - got["kernel_s_per_step"]) < 1e-12
    assert list(got["ops"].values()) == sorted(got["ops"].values(), reverse=True)

    row = dict(case="small-o1", profile=dict(steps=2, wall_s_per_step=0.01, **got))
    text = bench.profile_tables([dict(row, side="A", round=1), dict(row, side="B", round=1)])
    assert "profile small-o1" in text and "A1" in text and "B1" in text and "Relu" in text
    assert bench.profile_tables([dict(case="x")]) == ""
