#!/usr/bin/env python
"""tfnas benchmark: DARTS search steps, search-network inference, evaluation training, SavedModel latency.

    python benchmarks/bench.py [--cases LIST] [--steps N] [--set KEY=VALUE ...] [--json out.json]
                               [--timeout S] [--xla] [--precision P] [--pair A B [--rounds R]]

Cases (--cases, a comma list; default all, run in this order):

    small-o1, small-o2   DARTS search step, first / second order; small network: 8 channels, 5 cells, batch 32
    cifar-o1, cifar-o2   the same on the DARTS CIFAR-10 search network: 16 channels, 8 cells, batch 64
    pc-cifar-o1          cifar-o1 as PC-DARTS searches: 1/4 of each edge's channels through its candidates
                         (search.darts.partial_channels=4) and edge normalisation, batch 64 as for DARTS
    small-infer          the small search network in inference mode, batch 32
    cifar-infer          the CIFAR-10 search network in inference mode, batch 64
    eval-train           the `tfnas eval` training step of DARTS_V2: 36 channels, 20 cells, batch 96
    export               that DARTS_V2 network exported as a SavedModel: serving latency at batch 1 and 64

Search networks: 4 nodes, stem multiplier 3, the default configuration's 8 DARTS primitives, 32x32x3
inputs, 10 classes. Every case runs in a fresh child process (this script with the hidden `--child CASE`),
so tracing caches and memory never carry over from one measurement to the next, and a child that dies (out
of memory, the timeout) leaves an error in its row instead of ending the run.

Settings come from the configuration, as for the commands: configs/default.yaml with `--set KEY=VALUE`
(repeatable, the CLI's syntax), e.g. `--set search.darts.lead_edges_apart=true --set
search.darts.recompute_depthwise=true --set runtime.graph_optimizer=true`. The case fixes the network's
size (search.macro / the DARTS_V2 evaluation network) and, for search steps, search.darts.order.

What each child builds and times, through the functions the commands use:

    search    darts.algorithm.build_search (macro -> supernet -> compiled network -> BilevelSearch with the
              configuration's two optimisers) and search.runner.training_step over uint8 (train, val)
              batches (search.augmentation included), as `tfnas search` runs it.
    infer     the same search network (no optimisers) in train.steps.inference_function, as the
              evaluation's test pass runs it.
    eval      the DARTS_V2 evaluation network from architectures.resolve and evaluation.build_trainer
              (compiler.EVAL_OPTIONS: auxiliary tower, drop path 0.1; crop/flip/cutout augmentation, SGD)
              in train.steps.training_step, as `tfnas eval` runs it.
    export    the same evaluation network with random weights and random BatchNorm statistics (initial
              ones of zeros would let grappler drop ops from a graph whose weights are constants), written
              as an evaluation directory, exported with `tfnas.export.export`, loaded back with
              tf.saved_model.load, and its `serving_default` signature called at batch 1 and 64.

All inputs are fixed random uint8 batches (numpy, seeded). Measured per case:

    build      seconds to build the descriptor, the Keras model (and the optimisers where there are some)
    first      trace (get_concrete_function) + first run (graph optimisation happens there); JSON keeps
               trace_s and first_run_s apart. Export rows: the loaded signature's first call at that batch
               size (the tracing happened in the export: export_s; loading: load_s, both in the JSON)
    s/step     median seconds per step over N timed steps, after one untimed warm-up step (3 warm-up
               calls for export), with min and max. Export rows: the latency in ms
    img/s      batch / median. Search steps count the training batch only (each step also processes a
               validation batch of the same size), as the reference figures count it
    peak GiB   the child's peak resident memory (getrusage ru_maxrss); the two export rows share one child
    GFLOP/s    nominal FLOPs per step / median step time, and its fraction of the CPU's peak at the row's
               precision (below)

FLOP convention (nominal, the same count for tfnas and the PyTorch original, so the fraction of peak
compares the two like for like): MACs = compiler.multiply_adds(net), the multiply-adds of one image
(convolutions and dense layers, each edge at its own resolution; the figure `tfnas describe` prints);
forward = 2 x MACs, backward = 2 x forward, so one forward+backward pass = 6 x MACs per image.
Search, first order: 2 passes per step (alpha step on the val batch, weight step on the train batch).
Search, second order: 5 passes (virtual step on train, val at w', two finite-difference alpha passes on
train, weight step) - the alpha-only passes are counted as full passes, although tfnas asks the tape for
alpha gradients only and the weight-gradient half of their backward is pruned from the graph.
Inference and export: 2 x MACs per image (forward only, no auxiliary tower). Evaluation training: 6 x MACs
per image with the auxiliary tower INCLUDED (it runs forward and backward in every training step; it adds
0.1% on DARTS_V2); the MMAC/img column shows the network without it, as `tfnas describe` does.
Peak = cores x GHz ('cpu MHz' of /proc/cpuinfo) x FLOP/cycle/core of the CPU kind at the row's precision,
from /proc/cpuinfo's vendor_id and flags (cpu_kind, which says the convention in the output and the JSON).
The project runs on two kinds of CPU, and one figure for both would make one kind's fraction of peak wrong:
AMD 32 fp32 (2 FMA pipes x 8 lanes x 2; Zen 4 reports avx512f but runs 512-bit ops as two 256-bit halves),
bf16 64 with avx512_bf16; Intel with AVX-512 64 fp32 (2 AVX-512 FMA units assumed, as Xeon Gold/Platinum
have), bf16 1024 with AMX (amx_bf16), else 128 with avx512_bf16; other CPUs 32 with AVX2 + FMA, else 16.
Without a bf16 instruction bf16 is converted to fp32, so its peak is the fp32 one; mixed_float16 always
uses the fp32 peak (these CPUs have no fast float16 path).

The reference columns are the original code's figures on the same kind of CPU (REFERENCE, by vendor: the
two kinds' figures differ); a CPU of another vendor gets none.

--precision float32|mixed_bfloat16|mixed_float16 is `--set runtime.precision=...`: the search and
evaluation networks are built from the configuration, so every case computes in it, and the export case
exports its serving graph in it (export.export(precision=...)). Each row records the precision its
network was compiled with (`precision`) beside the configured one.

--xla wraps every timed tf.function in jit_compile=True (search, infer, eval-train). The export rows time
the SavedModel's signature as it was loaded, without XLA; each row records its own `xla`.

--pair A B compares two commits or two settings in one invocation, so that a before/after is one command
and both sides see the same hour of a shared machine. A side is `rev:<commit-ish>` or
`set:KEY=VALUE[;KEY=VALUE...]` (applied after --set and --precision; `set:` alone is the current checkout
as it is). Each case runs --rounds rounds in the order A B, B A, A B, ... (A B B A A B B A), every run a
fresh child, so a drift of the machine's speed within the run weighs on both sides alike. A rev side runs
the child code of THIS file with the tfnas library of a temporary `git worktree add --detach` of that
commit (first on PYTHONPATH; a row whose child imported tfnas from elsewhere is an error): what is
measured is the commit's library, through one harness for both sides, and an old commit runs with this
file's options although its own bench.py lacks them. The commit's library must still have the functions
the child calls (build_search, runner.training_step, ...); a commit without them gives error rows. Per
case it prints each side's median s/step over its runs (each run's median; min-max of those) and peak
GiB, and B/A of the two medians with the min and max of the per-round ratios (each round: one A run and
one B run, adjacent in time).
"""
from __future__ import annotations

import argparse
import contextlib
import collections
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import tfnas  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS=1 unless the user chose otherwise; no TF import)

# Search networks: channels, cells, batch.
NETWORKS = {
    "small": dict(channels=8, cells=5, batch=32),
    "cifar": dict(channels=16, cells=8, batch=64),
}
EVAL_NETWORK = dict(arch="DARTS_V2", channels=36, cells=20, batch=96)
EXPORT_BATCHES = (1, 64)
EXPORT_WARMUP_CALLS = 3
# name: kind, network, order, default timed steps (export: latency repeats per batch size)
CASES = {
    "small-o1": dict(kind="search", net="small", order=1, steps=10),
    "small-o2": dict(kind="search", net="small", order=2, steps=10),
    "cifar-o1": dict(kind="search", net="cifar", order=1, steps=5),
    "cifar-o2": dict(kind="search", net="cifar", order=2, steps=5),
    "pc-cifar-o1": dict(kind="search", net="cifar", order=1, steps=5,
                        settings=("search.darts.partial_channels=4", "search.darts.edge_normalization=true")),
    "small-infer": dict(kind="infer", net="small", steps=20),
    "cifar-infer": dict(kind="infer", net="cifar", steps=10),
    "eval-train": dict(kind="eval", net="eval", steps=3),
    "export": dict(kind="export", net="eval", steps=20),
}
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
NODES = 4
STEM_MULTIPLIER = 3
# CIFAR-10 search split: half of the 50,000 training images train the weights (DARTS); sets the
# steps per epoch of the (epoch-wise) learning-rate schedules, which does not affect timing.
SEARCH_TRAIN_IMAGES = 25_000
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The original PyTorch DARTS (quark0/darts) on each kind of this project's machines, by /proc/cpuinfo
# vendor (shared/reference/peer-figures.md): seconds/step and peak GiB; images/s = the case's batch / s.
REFERENCE_MACHINES = {
    "AMD": "AMD EPYC, 2 cores, AVX2 (2026-11-22)",
    "Intel": "Intel Xeon, 2 cores, AVX-512 + AMX (2026-12-01)",
}
_REFERENCE_S_GIB = {
    "AMD": {
        "small-o1": (6.64, 1.93), "small-o2": (13.4, 2.51), "small-infer": (0.63, 0.30),
        "cifar-o1": (36.9, 10.4), "cifar-o2": (77.4, 13.4), "cifar-infer": (3.42, 0.43),
        # Measured here on 2026-12-02 (peer-bench's evaluation step, as the Intel figure): two runs gave
        # medians of 8.51 and 8.08 s/step at 7.96 and 7.93 GiB; their mean.
        "eval-train": (8.3, 7.95),
    },
    "Intel": {
        "small-o1": (6.3, 1.89),  # two runs gave 7.01 and 5.58 s/step: their median (mean), 6.3
        "small-o2": (13.8, 2.45), "small-infer": (0.82, 0.35),
        "cifar-o1": (36.6, 10.5), "cifar-o2": (74.9, 13.6),
        "eval-train": (7.95, 8.0),  # NetworkCIFAR(36, 10, 20, auxiliary=True), batch 96, drop path 0.1
    },
}


def case_batch(case: str) -> int:
    net = CASES[case]["net"]
    return EVAL_NETWORK["batch"] if net == "eval" else NETWORKS[net]["batch"]


REFERENCE = {kind: {case: dict(s_per_step=s, images_per_s=case_batch(case) / s, peak_gib=g)
                    for case, (s, g) in figures.items()}
             for kind, figures in _REFERENCE_S_GIB.items()}
VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}  # /proc/cpuinfo vendor_id -> CPU kind
PRECISIONS = ("FLOAT32", "MIXED_BFLOAT16", "MIXED_FLOAT16")  # runtime.precision's values
PRECISION_SHORT = {"FLOAT32": "fp32", "MIXED_BFLOAT16": "bf16", "MIXED_FLOAT16": "fp16"}
SEARCH_PASSES = {1: 2, 2: 5}  # forward+backward passes per search step (see the module docstring)
FLOPS_PER_MAC = {"train": 6, "infer": 2}  # forward 2 FLOPs per MAC, backward 2 x forward
CONVENTION = ("nominal FLOPs = 2 per multiply-add forward (compiler.multiply_adds: conv + dense only), backward "
              "= 2 x forward; search step = passes x 6 x MACs/image x batch, passes: first order 2 (alpha step "
              "on val, weight step on train), second order 5 (+ virtual step on train, + 2 finite-difference "
              "alpha-only passes on train, counted as full passes); inference and export = 2 x MACs/image x "
              "batch; evaluation training = 6 x MACs/image (auxiliary tower included) x batch; peak = cores x "
              "GHz x FLOP/cycle/core of the CPU kind at the row's precision (machine.peak_conventions)")
RATIO_SPREAD = ("min and max of the per-round ratios B/A (each round: one A run and one B run, adjacent in "
                "time; run = the median of its timed steps)")


def gib(kib: float) -> float:
    return kib / 1024.0**2


def peak_rss_gib() -> float:
    return gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # Linux: KiB


def onednn_state() -> str:
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return f"{'off' if value == '0' else 'on' if value == '1' else 'TF default'} (TF_ENABLE_ONEDNN_OPTS={value})"


# ------------------------------------------------------------------------------------------------------
# Machine


def cpu_kind(vendor: str, flags) -> dict:
    """The CPU kind of a /proc/cpuinfo `vendor_id` and `flags`, and its FLOP/cycle/core at each
    runtime.precision with the convention behind each figure. A function of (vendor, flags) alone, so that
    the rules for both kinds of this project's machines can be checked on either (tests/test_bench.py)."""
    flags = set(flags)
    kind = VENDORS.get(vendor, "other")
    avx2_fma = {"avx2", "fma"} <= flags
    bf16 = bf16_how = None
    if kind == "AMD" and avx2_fma:
        fp32, fp32_how = 32, "AMD: 2 FMA pipes x 8 fp32 lanes x 2"
        if "avx512f" in flags:  # Zen 4 reports it but splits each 512-bit op into two 256-bit halves
            fp32_how += "; avx512f, but 512-bit ops run as two 256-bit halves, as on Zen 4: no more than AVX2"
        if "avx512_bf16" in flags:
            bf16, bf16_how = 64, "avx512_bf16 VDPBF16PS: 2 bf16 products per fp32 lane, 2 x the fp32 rate"
    elif kind == "Intel" and "avx512f" in flags:
        fp32, fp32_how = 64, ("Intel AVX-512: 2 FMA units x 16 fp32 lanes x 2; 2 AVX-512 FMA units assumed, as "
                              "Xeon Scalable Gold/Platinum have")
        if "amx_bf16" in flags:
            bf16, bf16_how = 1024, "amx_bf16 AMX TMUL: 512 bf16 multiply-adds per cycle"
        elif "avx512_bf16" in flags:
            bf16, bf16_how = 128, "avx512_bf16 VDPBF16PS: 2 bf16 products per fp32 lane, 2 x the fp32 rate"
    elif avx2_fma:
        fp32, fp32_how = 32, "AVX2 + FMA: 2 FMA units x 8 fp32 lanes x 2, assumed"
    else:
        fp32, fp32_how = 16, "unknown vector unit, no AVX2 + FMA: 16 assumed"
    bf16_native = bf16
    if bf16 is None:
        bf16, bf16_how = fp32, f"no bf16 peak, no bf16 instruction: bf16 is converted to fp32, the fp32 " \
                               f"peak; {fp32_how}"
    return dict(
        kind=kind, vendor_id=vendor, reference=kind if kind in REFERENCE else None,
        fp32_flop_per_cycle=fp32, bf16_flop_per_cycle=bf16_native,  # None: no bf16 instruction
        flop_per_cycle={"FLOAT32": fp32, "MIXED_BFLOAT16": bf16, "MIXED_FLOAT16": fp32},
        flop_per_cycle_convention={
            "FLOAT32": fp32_how, "MIXED_BFLOAT16": bf16_how,
            "MIXED_FLOAT16": f"float16 at the fp32 peak, these CPUs having no fast float16 path; {fp32_how}"})


def cpu_info() -> dict:
    model, vendor, mhz, flags = "unknown", "unknown", [], []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "vendor_id" and vendor == "unknown":
                    vendor = value.strip()
                elif key == "cpu MHz":
                    mhz.append(float(value))
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    ghz = max(mhz) / 1000.0 if mhz else float("nan")
    cores = os.cpu_count() or 1
    kind = cpu_kind(vendor, flags)
    peaks = {p: cores * ghz * f for p, f in kind["flop_per_cycle"].items()}
    conventions = {p: f"{cores} cores x {ghz:.3f} GHz x {f} FLOP/cycle ({kind['flop_per_cycle_convention'][p]})"
                   for p, f in kind["flop_per_cycle"].items()}
    return dict(cpu_count=cores, cpu_model=model, vendor_id=vendor, cpu_kind=kind["kind"], cpu_ghz=ghz,
                avx2="avx2" in flags, fma="fma" in flags, avx512f="avx512f" in flags,
                avx512_bf16="avx512_bf16" in flags, amx_bf16="amx_bf16" in flags,
                fp32_flop_per_cycle=kind["fp32_flop_per_cycle"], bf16_flop_per_cycle=kind["bf16_flop_per_cycle"],
                flop_per_cycle=kind["flop_per_cycle"],
                peak_gflops=peaks["FLOAT32"], peak_convention=conventions["FLOAT32"],  # fp32, as before
                peak_gflops_by_precision=peaks, peak_conventions=conventions,
                reference_cpu=kind["reference"],
                reference_machine=REFERENCE_MACHINES.get(kind["reference"]))


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_state() -> str | None:
    """Commit of the checkout the children import tfnas from, and whether tfnas/ has uncommitted edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfnas.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tfnas"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}{' + uncommitted changes in tfnas/' if dirty else ''}" if commit else None


def machine_info(xla: bool) -> dict:
    info = cpu_info()
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
            mem_total = round(gib(kib), 2)
    except (OSError, AttributeError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    auto_jit = "xla_auto_jit" in os.environ.get("TF_XLA_FLAGS", "")
    info.update(
        memory_gib=mem_total,
        python=platform.python_version(),
        platform=platform.platform(),
        tensorflow_package=package_version("tensorflow-cpu", "tensorflow", "tf-nightly"),
        keras_package=package_version("keras"),
        tfnas=tfnas.__version__,
        TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        onednn=onednn_state(),
        xla_jit_compile=xla,
        xla=("on (jit_compile=True on each timed tf.function; export rows excepted)" if xla else
             "off (no jit_compile)") + (f"; TF_XLA_FLAGS={os.environ['TF_XLA_FLAGS']}" if auto_jit else
                                        ", no TF_XLA_FLAGS auto-jit"),
        load_average_at_start=[round(x, 2) for x in load] if load else None,
        tfnas_git=git_state(),
    )
    return info


# ------------------------------------------------------------------------------------------------------
# Child: one case


class Child:
    """The result of one case, saved to `path` at every phase change, so a dying child leaves its phase."""

    def __init__(self, case: str, steps: int, xla: bool, path: str, settings: list[str], profile: int = 0):
        spec = CASES[case]
        self.case, self.path, self.settings, self.profile = case, path, list(settings), profile
        self.peak_frozen = False
        self.result: dict = dict(case=case, kind=spec["kind"], network=spec["net"], steps=steps, xla=xla,
                                 settings=self.settings, phase="start",
                                 tfnas_path=os.path.dirname(os.path.abspath(tfnas.__file__)))
        if "order" in spec:
            self.result["order"] = spec["order"]
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.result["load_average_at_start"] = [round(x, 2) for x in load] if load else None

    def save(self) -> None:
        if not self.peak_frozen:  # the profiler's own buffers are not the case's memory
            self.result["peak_gib"] = peak_rss_gib()
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.result, f)
        os.replace(tmp, self.path)

    def enter(self, phase: str) -> None:
        self.result["phase"] = phase
        self.save()

    def log(self, msg: str) -> None:
        print(f"[{self.case}] {msg}", flush=True)

    def warn(self, msg: str) -> None:
        self.result["warning"] = "; ".join(filter(None, (self.result.get("warning"), msg)))


def enum_name(message, field: str, missing: str = "FLOAT32") -> str:
    """The name of an enum field's value; `missing` where the message has no such field (a commit of
    tfnas from before runtime.precision, run by --pair)."""
    desc = message.DESCRIPTOR.fields_by_name.get(field)
    return missing if desc is None else desc.enum_type.values_by_number[getattr(message, field)].name


def record_precision(c: Child, cfg, options) -> None:
    """The configured runtime.precision and the one the timed network was compiled with (its options):
    a case whose network did not take the configuration's precision is flagged, not silently timed."""
    c.result["configured_precision"] = enum_name(cfg.runtime, "precision")
    c.result["precision"] = enum_name(options, "precision")
    # The 1x1 conv kernel the network was compiled with (runtime.pointwise: AUTO chooses per CPU).
    c.result["pointwise"] = "MatMul" if getattr(options, "pointwise_matmul", False) else "Conv2D"
    if c.result["precision"] != c.result["configured_precision"] and c.result["kind"] != "export":
        c.warn(f"network compiled in {c.result['precision']}, configured {c.result['configured_precision']}")


def child_config(c: Child, defaults: tuple[str, ...] = ()):
    """The configuration the case runs with: configs/default.yaml <- `defaults` <- the --set items."""
    from tfnas import config as config_lib
    return config_lib.load_config(None, list(defaults) + c.settings)


def child_imports(c: Child, cfg):
    """Imports TensorFlow and sets the thread pools as the tfnas commands do; records the versions."""
    t = time.perf_counter()
    import keras
    import tensorflow as tf

    from tfnas import runtime
    runtime.configure_threads(cfg.runtime)
    c.result["import_s"] = time.perf_counter() - t
    c.result.update(tf_version=tf.__version__, keras_version=keras.__version__,
                    TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                    inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                    intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads())
    c.log(f"imported TensorFlow {tf.__version__} / Keras {keras.__version__} in {c.result['import_s']:.1f} s "
          f"(oneDNN {onednn_state()}, XLA {'on' if c.result['xla'] else 'off'})")
    return tf, keras


def uint8_batches(seed: int, batch: int, count: int):
    """`count` fixed (images uint8, labels int64) pairs."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8),
             rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int64)) for _ in range(count)]


def trace_and_first_run(c: Child, fn, run) -> None:
    """Traces `fn` (a tf.function with an input signature), then runs it once through `run(0)`."""
    c.enter("trace")
    t = time.perf_counter()
    concrete = fn.get_concrete_function()
    c.result["trace_s"] = time.perf_counter() - t
    c.result["graph_ops"] = len(concrete.graph.get_operations())
    c.log(f"traced in {c.result['trace_s']:.1f} s ({c.result['graph_ops']:,} ops in the traced graph)")
    c.enter("first step")
    t = time.perf_counter()
    out = run(0)
    c.result["first_run_s"] = time.perf_counter() - t
    c.result["first_step_s"] = c.result["trace_s"] + c.result["first_run_s"]
    c.result["peak_gib_after_first_step"] = peak_rss_gib()
    c.log(f"first step ran in {c.result['first_run_s']:.1f} s (trace + first step "
          f"{c.result['first_step_s']:.1f} s){out}")


def timed_steps(c: Child, run, steps: int, batch: int, flops_per_step: float) -> None:
    """One untimed warm-up step, then `steps` timed ones; records the median and the FLOP rate."""
    c.enter("warm-up")
    t = time.perf_counter()
    run(1)
    c.result["warmup_s"] = time.perf_counter() - t
    c.log(f"warm-up step {c.result['warmup_s']:.2f} s")
    c.enter("steps")
    times = []
    for i in range(steps):
        t = time.perf_counter()
        out = run(i)
        times.append(time.perf_counter() - t)
        c.log(f"step {i + 1}/{steps}: {times[-1]:.3f} s{out}")
        c.result["step_times_s"] = times
        c.save()
    med = statistics.median(times)
    c.result.update(median_s=med, min_s=min(times), max_s=max(times), images_per_s=batch / med,
                    nominal_flops_per_step=flops_per_step, gflops=flops_per_step / med / 1e9)
    c.log(f"median {med:.3f} s/step (min {min(times):.3f}, max {max(times):.3f}), "
          f"{c.result['images_per_s']:.2f} img/s, peak {peak_rss_gib():.2f} GiB")
    if c.profile:
        profile_steps(c, run, c.profile)


def profile_steps(c: Child, run, count: int, into: dict | None = None) -> None:
    """`count` more steps, after the timed ones, under TensorFlow's profiler: the kernel time of each op
    type per step, summed over the threads that run ops (so with 2 threads it may add up to twice the
    step), and how busy those threads were, as `into["profile"]` (default: the case's result; the export
    case profiles each batch size's calls into that batch's latency). The timed figures and the peak memory
    stay those measured before the first profile."""
    import tensorflow as tf
    if not c.peak_frozen:
        c.result["peak_gib"] = peak_rss_gib()
        c.peak_frozen = True
    into = c.result if into is None else into
    c.enter("profile")
    logdir = tempfile.mkdtemp(prefix="tfnas_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        try:
            for i in range(count):
                run(i)
        finally:
            wall = time.perf_counter() - t
            tf.profiler.experimental.stop()
        into["profile"] = dict(steps=count, wall_s_per_step=wall / count, **kernel_times(logdir, count))
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    prof = into["profile"]
    c.log(f"profiled {count} step(s): {prof['kernel_s_per_step']:.3f} s of kernels per step on "
          f"{prof['threads']} thread(s), {wall / count:.3f} s wall per step")


OP_EVENT = re.compile(r"^[^:]+:([A-Za-z_][A-Za-z0-9_]*)$")  # "<node name>:<op type>", as TF names its op events


def kernel_times(logdir: str, steps: int) -> dict:
    """Op type -> kernel seconds per step (`ops`) and calls per step (`calls`), from the XPlane files TF's
    profiler wrote under `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TF's own profile format, in the TF wheel
    by_type: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    threads = set()
    for path in pathlib.Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:"):
                continue
            names = {k: OP_EVENT.match(m.name) for k, m in plane.event_metadata.items()}
            for line in plane.lines:
                for e in line.events:
                    op = names.get(e.metadata_id)
                    if op:
                        by_type[op.group(1)] += e.duration_ps * 1e-12 / steps
                        calls[op.group(1)] += 1 / steps
                        threads.add(line.id)
    ops = dict(sorted(by_type.items(), key=lambda kv: -kv[1]))
    return dict(threads=len(threads), kernel_s_per_step=sum(ops.values()), ops=ops,
                calls={k: round(calls[k], 2) for k in ops})


def record_network(c: Child, net, include_aux: bool) -> None:
    from tfnas import compiler
    c.result["params"] = compiler.count_params(net, include_aux=include_aux)
    c.result["macs_per_image"] = compiler.multiply_adds(net)
    c.result["weight_tensors"] = len(net.weights_only)
    c.result["peak_gib_after_build"] = peak_rss_gib()
    c.log(f"built in {c.result['build_s']:.1f} s: {c.result['params']:,} params, "
          f"{c.result['macs_per_image'] / 1e6:.1f} M multiply-adds/image, {c.result['weight_tensors']} weight tensors")


def child_search(c: Child) -> None:
    """The DARTS search step (search-step cases) or the search network's inference (infer cases)."""
    import numpy as np

    search = c.result["kind"] == "search"
    spec = NETWORKS[c.result["network"]]
    batch = spec["batch"]
    c.result.update(batch=batch, nodes=NODES, channels=spec["channels"], cells=spec["cells"])
    # Search cases time the full step (alpha and weight step): no warm-up, whatever the configuration's.
    cfg = child_config(c, ("search.darts.warmup_epochs=0",) + CASES[c.case].get("settings", ()))
    macro = cfg.search.macro
    macro.channels, macro.cells, macro.nodes, macro.stem_multiplier = spec["channels"], spec["cells"], NODES, \
        STEM_MULTIPLIER
    cfg.search.trainer.batch_size = batch
    if search:
        cfg.search.darts.order = c.result["order"]
    assert len(cfg.search.darts.primitives) == 8, list(cfg.search.darts.primitives)
    tf, _ = child_imports(c, cfg)
    from tfnas import macro as macro_lib, runtime
    from tfnas.search import runner
    from tfnas.search.darts.algorithm import build_search
    from tfnas.train import steps as steps_lib

    runtime.seed_everything(cfg)
    aug = cfg.search.augmentation
    c.result.update(lead_edges_apart=cfg.search.darts.lead_edges_apart,
                    recompute_depthwise=cfg.search.darts.recompute_depthwise,
                    partial_channels=cfg.search.darts.partial_channels,
                    edge_normalization=cfg.search.darts.edge_normalization,
                    search_augmentation=dict(crop_padding=aug.crop_padding, horizontal_flip=aug.horizontal_flip,
                                             cutout=aug.cutout))
    # Fixed random uint8 batches (search: two (train, val) pairs, alternated), numpy-seeded.
    pairs = uint8_batches(int(cfg.seed), batch, 4)
    batches = ([(*pairs[0], *pairs[1]), (*pairs[2], *pairs[3])] if search else [(x,) for x, _ in pairs[:2]])
    mean, std = np.asarray(CIFAR_MEAN, np.float32), np.asarray(CIFAR_STD, np.float32)

    c.enter("build")
    t = time.perf_counter()
    macro_desc = macro_lib.build_macro(cfg.search.macro, IMAGE_SHAPE, NUM_CLASSES)
    _, net, searcher = build_search(cfg, macro_desc, SEARCH_TRAIN_IMAGES // batch)
    c.result["build_s"] = time.perf_counter() - t
    record_network(c, net, include_aux=True)  # a search network has no auxiliary tower
    record_precision(c, cfg, net.options)
    c.save()

    if search:
        step = runner.training_step(cfg, searcher, IMAGE_SHAPE, mean, std, streams=2, jit_compile=c.result["xla"])

        def run(i):
            loss = float(step(*batches[i % len(batches)])["loss"].numpy())  # forces the step to finish
            if not np.isfinite(loss) and "non-finite loss" not in c.result.get("warning", ""):
                c.warn(f"non-finite loss {loss}")
            return f" (loss {loss:.3f})"
        flops = SEARCH_PASSES[c.result["order"]] * FLOPS_PER_MAC["train"] * c.result["macs_per_image"] * batch
    else:
        step = steps_lib.inference_function(net, IMAGE_SHAPE, mean, std, batch_size=batch,
                                            jit_compile=c.result["xla"])

        def run(i):
            step(*batches[i % len(batches)]).numpy()  # forces the step to finish
            return ""
        flops = FLOPS_PER_MAC["infer"] * c.result["macs_per_image"] * batch

    # The search step runs under the graph options `tfnas search` uses (runtime.graph_optimizer).
    with runtime.training_graph_options(cfg.runtime.graph_optimizer) if search else contextlib.nullcontext():
        c.result["grappler"] = not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
        trace_and_first_run(c, step, run)
        timed_steps(c, run, c.result["steps"], batch, flops)


# The DARTS recipe's CIFAR-10 augmentation for the evaluation step (a --set item overrides it).
EVAL_AUGMENTATION = ("eval.augmentation.crop_padding=4", "eval.augmentation.cutout=16",
                     "eval.augmentation.horizontal_flip=true")


def build_eval_network(c: Child, cfg):
    """The DARTS_V2 evaluation network (auxiliary tower, drop path), resolved as `tfnas eval` does."""
    from tfnas import architectures  # its EVAL_MACRO: the DARTS evaluation layout, auxiliary tower 0.4
    c.result.update(arch=EVAL_NETWORK["arch"], channels=EVAL_NETWORK["channels"], cells=EVAL_NETWORK["cells"])
    return architectures.resolve(EVAL_NETWORK["arch"], None, IMAGE_SHAPE, NUM_CLASSES, channels=EVAL_NETWORK["channels"],
                                 cells=EVAL_NETWORK["cells"], require_final=True)


def child_eval_train(c: Child) -> None:
    import numpy as np

    batch = EVAL_NETWORK["batch"]
    cfg = child_config(c, EVAL_AUGMENTATION + (f"eval.trainer.batch_size={batch}",))
    tf, _ = child_imports(c, cfg)
    from tfnas import compiler, evaluation, runtime

    c.result["batch"] = batch
    c.enter("build")
    t = time.perf_counter()
    trainer = evaluation.build_trainer(cfg, build_eval_network(c, cfg), 100)
    net = trainer.net
    net.drop_rate.assign(0.1)
    c.result["build_s"] = time.perf_counter() - t
    record_network(c, net, include_aux=False)
    c.result["params_with_aux"] = compiler.count_params(net, include_aux=True)
    c.result["macs_per_image_with_aux"] = compiler.multiply_adds(net, include_aux=True)
    record_precision(c, cfg, net.options)
    c.save()

    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    step = evaluation.training_step(cfg, trainer, IMAGE_SHAPE, mean, std, jit_compile=c.result["xla"])
    x, y = uint8_batches(0, batch, 1)[0]

    def run(i):
        loss = float(step(x, y)["loss"])  # forces the step to finish
        return f" (loss {loss:.3f})"

    with runtime.training_graph_options(cfg.runtime.graph_optimizer):  # as `tfnas eval` runs its step
        c.result["grappler"] = not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
        trace_and_first_run(c, step, run)
        timed_steps(c, run, c.result["steps"], batch,
                    FLOPS_PER_MAC["train"] * c.result["macs_per_image_with_aux"] * batch)


def write_evaluation_weights(net, out: pathlib.Path) -> None:
    """The trained weights of an evaluation directory as `tfnas eval` leaves them, for export.find_eval_dir:
    the weights, then the evaluation loop's done marker (checkpoints.commit). A tfnas from before the keyed
    loops (c54010c; --pair rev:) wrote them with evaluation.write_weights and its own marker instead."""
    from tfnas import checkpoints, evaluation, rundir
    if hasattr(evaluation, "write_weights"):
        evaluation.write_weights(net, out)
        return
    checkpoints.save_weights(net, out / rundir.WEIGHTS)
    checkpoints.commit(out, checkpoints.EVAL)


def trained_like_statistics(net) -> None:
    """BatchNorm parameters and moving statistics as a trained network has them, not their initial ones:
    the export's graph is otherwise not the one a user serves (with the weights as constants, grappler
    removes a folded BatchNorm's bias of zeros, and the conv fusion with it)."""
    import numpy as np
    rng = np.random.default_rng(0)
    draw = {"_mean": lambda n: rng.normal(0.0, 0.2, n), "_var": lambda n: rng.uniform(0.5, 2.0, n),
            "_gamma": lambda n: rng.uniform(0.5, 1.5, n), "_beta": lambda n: rng.normal(0.0, 0.2, n)}
    for v in net.variables:
        for suffix, values in draw.items():
            if v.path.endswith(suffix):
                v.assign(values(v.shape).astype(np.float32))


def child_export(c: Child) -> None:
    import numpy as np

    cfg = child_config(c, EVAL_AUGMENTATION)
    tf, _ = child_imports(c, cfg)
    from tfnas import compiler, descriptors, export, rundir

    c.result["xla"] = False  # the loaded signature is timed as it is; see the module docstring
    c.enter("build")
    t = time.perf_counter()
    desc = build_eval_network(c, cfg)
    net = compiler.compile_model(desc, compiler.EVAL_OPTIONS)
    trained_like_statistics(net)
    c.result["build_s"] = time.perf_counter() - t
    record_network(c, net, include_aux=False)
    # What is timed is the SavedModel, exported in runtime.precision (export.export(precision=...)); a tfnas
    # from before export.precision serves float32 (SERVING_OPTIONS), and the row says so.
    half_exports = hasattr(export, "serving_options")
    served = export.serving_options(cfg.runtime.precision) if half_exports else export.SERVING_OPTIONS
    record_precision(c, cfg, served)
    c.save()
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    repeats = c.result["steps"]
    with tempfile.TemporaryDirectory(prefix="tfnas_bench_export_") as tmp:
        c.enter("export")
        t = time.perf_counter()
        evaluation_dir = os.path.join(tmp, "eval")
        os.makedirs(evaluation_dir)
        descriptors.save(desc, os.path.join(evaluation_dir, rundir.MODEL_DESC))
        with open(os.path.join(evaluation_dir, rundir.DATASET_INFO), "w") as f:
            json.dump({"dataset": "random", "image_shape": list(IMAGE_SHAPE),
                       "class_names": [str(i) for i in range(NUM_CLASSES)],
                       "mean": mean.tolist(), "std": std.tolist()}, f)
        write_evaluation_weights(net, pathlib.Path(evaluation_dir))
        path = export.export(evaluation_dir, os.path.join(tmp, "exports"),
                             **(dict(precision=cfg.runtime.precision) if half_exports else {}))
        c.result["export_s"] = time.perf_counter() - t
        c.log(f"exported in {c.result['export_s']:.1f} s (weights, descriptor, tracing the serving function)")
        c.enter("load")
        t = time.perf_counter()
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        c.result["load_s"] = time.perf_counter() - t
        c.log(f"loaded in {c.result['load_s']:.1f} s")
        rng = np.random.default_rng(0)
        c.result["latency"] = {}
        batches = {n: tf.constant(rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)) for n in EXPORT_BATCHES}
        for n, images in batches.items():
            c.enter(f"batch {n}: first call")
            t = time.perf_counter()
            serve(images=images)["class_id"].numpy()
            first = time.perf_counter() - t
            c.enter(f"batch {n}: warm-up")
            for _ in range(EXPORT_WARMUP_CALLS):
                serve(images=images)["class_id"].numpy()
            c.enter(f"batch {n}: latency")
            lat = []
            for _ in range(repeats):
                t = time.perf_counter()
                serve(images=images)["class_id"].numpy()
                lat.append(time.perf_counter() - t)
            med = statistics.median(lat)
            flops = FLOPS_PER_MAC["infer"] * c.result["macs_per_image"] * n
            c.result["latency"][str(n)] = dict(
                batch=n, first_run_s=first, step_times_s=lat, median_s=med, min_s=min(lat), max_s=max(lat),
                images_per_s=n / med, nominal_flops_per_step=flops, gflops=flops / med / 1e9)
            c.log(f"batch {n}: first call {first:.2f} s; latency {med * 1e3:.1f} ms (min {min(lat) * 1e3:.1f}, "
                  f"max {max(lat) * 1e3:.1f}) over {repeats} calls = {n / med:.1f} img/s")
            c.save()
        if c.profile:  # after every batch size's timed calls, so that no latency runs beside the profiler
            for n, images in batches.items():
                profile_steps(c, lambda _: serve(images=images)["class_id"].numpy(), c.profile,
                              into=c.result["latency"][str(n)])
                c.save()


CHILDREN = {"search": child_search, "infer": child_search, "eval": child_eval_train, "export": child_export}


def run_child(case: str, steps: int, xla: bool, result_path: str, settings: list[str], profile: int = 0) -> int:
    c = Child(case, steps, xla, result_path, settings, profile)
    try:
        CHILDREN[CASES[case]["kind"]](c)
        c.enter("done")
        return 0
    except BaseException as err:  # noqa: BLE001 - recorded in the row; the parent goes on
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
        # TF puts the cause first ("XLA does not support ...") or last ("OOM when allocating ..."): keep both.
        what = lines[0][:200] + (f" ... {lines[-1][:200]}" if len(lines) > 1 else "")
        c.result["error"] = f"{type(err).__name__} during {c.result.get('phase')}: {what}"
        c.result["error_detail"] = str(err)[-3000:]
        c.save()
        raise


# ------------------------------------------------------------------------------------------------------
# Parent


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def run_case(case: str, steps: int, timeout: float, xla: bool, tmpdir: str, settings: list[str],
             env: dict | None = None, tag: str = "", profile: int = 0) -> list[dict]:
    """Runs one case in a child process (this file; `env`: its environment, default this one's); returns
    its rows (two for export: batch 1 and 64). `tag` names the run in the log and its result file."""
    result_path = os.path.join(tmpdir, f"{case}{tag and '-' + tag}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--steps", str(steps),
           "--result", result_path] + (["--xla"] if xla else []) + [a for kv in settings for a in ("--set", kv)] \
        + (["--profile", str(profile)] if profile else [])
    print(f"\n=== {case}{tag and ' [' + tag + ']'}: {' '.join(cmd[1:])}", flush=True)
    tail: collections.deque = collections.deque(maxlen=30)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill) if timeout > 0 else None
    if timer:
        timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip())
        proc.wait()
    finally:
        if timer:
            timer.cancel()
    wall = time.perf_counter() - start
    row = dict(case=case, kind=CASES[case]["kind"], xla=xla)
    if os.path.exists(result_path):
        with open(result_path) as f:
            row = json.load(f)
    row["child_wall_s"] = wall
    row["returncode"] = proc.returncode
    if timed_out.is_set():
        row["error"] = f"killed after the {timeout:.0f} s timeout (phase: {row.get('phase', '?')})"
    elif proc.returncode != 0 and "error" not in row:
        why = (f"killed by {signal_name(-proc.returncode)}" + (" (out of memory?)" if proc.returncode == -9 else "")
               if proc.returncode < 0 else f"exit status {proc.returncode}")
        row["error"] = f"{why} during {row.get('phase', 'start')}"
    if "error" in row:
        row["output_tail"] = list(tail)[-10:]

    if row["kind"] == "export":  # one row per batch size, sharing the child's fields
        latency = row.pop("latency", {})
        rows = []
        for n in EXPORT_BATCHES:
            r = {**row, "case": f"{case}-b{n}", "batch": n, **latency.get(str(n), {})}
            if "median_s" in r:
                r["latency_ms"] = dict(median=r["median_s"] * 1e3, min=r["min_s"] * 1e3, max=r["max_s"] * 1e3)
            elif "error" not in r:
                r["error"] = "no result"
            rows.append(r)
        return rows
    if "median_s" not in row and "error" not in row:
        row["error"] = "no result"
    return [row]


def annotate(rows: list[dict], machine: dict) -> None:
    """Adds to each row the peak of its precision on this CPU, its fraction of it, and the reference of this
    CPU's kind with the speed-up and memory ratio."""
    kind = machine["reference_cpu"]
    for row in rows:
        precision = row.get("precision")
        if precision in machine["peak_gflops_by_precision"]:
            peak = machine["peak_gflops_by_precision"][precision]
            row.update(peak_gflops_of_precision=peak, peak_convention=machine["peak_conventions"][precision])
            if "gflops" in row:
                row["percent_of_peak"] = 100 * row["gflops"] / peak
        row["reference_cpu"] = kind
        ref = REFERENCE.get(kind, {}).get(row["case"])
        if ref:
            row["reference"] = ref
            if "images_per_s" in row:
                row["speedup"] = row["images_per_s"] / ref["images_per_s"]
            if "peak_gib" in row:
                row["memory_ratio"] = row["peak_gib"] / ref["peak_gib"]


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict], machine: dict) -> str:
    paired = any("side" in r for r in rows)
    head = (["run"] if paired else []) + [
        "case", "batch", "params", "MMAC/img", "ops", "build s", "first s", "s/step", "(min-max)", "img/s",
        "peak GiB", "GFLOP/s", "%peak", "prec", "|", "ref s/step", "ref img/s", "ref GiB", "|", "speed-up",
        "mem ratio"]
    lines = []
    for r in rows:
        ref = r.get("reference", {})
        ok = "median_s" in r
        if r["kind"] == "export":  # latency in ms; "first s" = the loaded signature's first call
            step = f"{r['median_s'] * 1e3:.1f} ms" if ok else "-"
            spread = f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f} ms" if ok else "-"
            first = r.get("first_run_s")
        else:
            step = fmt(r.get("median_s"), ".3f")
            spread = f"{r['min_s']:.2f}-{r['max_s']:.2f}" if ok else "-"
            first = r.get("first_step_s")
        lines.append(([f"{r['side']}{r['round']}"] if paired else []) + [
            r["case"], fmt(r.get("batch"), "d"), fmt(r.get("params"), ","),
            fmt(r.get("macs_per_image") and r["macs_per_image"] / 1e6, ".1f"),
            fmt(r.get("graph_ops"), ","), fmt(r.get("build_s"), ".1f"), fmt(first, ".1f"),
            step, spread, fmt(r.get("images_per_s"), ".2f"), fmt(r.get("peak_gib"), ".2f"),
            fmt(r.get("gflops"), ".2f"), fmt(r.get("percent_of_peak") if ok else None, ".2f"),
            PRECISION_SHORT.get(r.get("precision"), r.get("precision") or "-"),
            "|", fmt(ref.get("s_per_step"), ".2f"), fmt(ref.get("images_per_s"), ".2f"),
            fmt(ref.get("peak_gib"), ".2f"),
            "|", f"{r['speedup']:.2f}x" if "speedup" in r and ok else "-",
            f"{r['memory_ratio']:.2f}" if "memory_ratio" in r and ok else "-",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    for r in rows:
        name = f"{r['case']}" + (f" [{r['side']}{r['round']}]" if paired else "")
        if "error" in r:
            out.append(f"  {name}: ERROR {r['error']}")
        if "warning" in r:
            out.append(f"  {name}: WARNING {r['warning']}")
    if machine["reference_cpu"]:
        out.append(f"  ref: the original PyTorch DARTS on this CPU's kind, {machine['reference_machine']} "
                   "(shared/reference/peer-figures.md)")
    else:
        out.append(f"  ref: none: no reference figures for a CPU of vendor {machine['vendor_id']!r} "
                   f"(they exist for {' and '.join(REFERENCE_MACHINES.values())})")
    for precision in dict.fromkeys(r["precision"] for r in rows if r.get("precision") in machine["peak_conventions"]):
        out.append(f"  %peak of {PRECISION_SHORT[precision]} rows: of "
                   f"{machine['peak_gflops_by_precision'][precision]:.1f} GFLOP/s = "
                   f"{machine['peak_conventions'][precision]}")
    exports = [r for r in rows if r["kind"] == "export" and "export_s" in r]
    if exports:
        r = exports[0]
        out.append(f"  export: SavedModel written in {r['export_s']:.1f} s (tracing the serving function), "
                   f"loaded in {fmt(r.get('load_s'), '.1f')} s; first s = the loaded signature's first call")
        if any(x.get("precision") != x.get("configured_precision") for x in exports):
            out.append(f"  export: served in {exports[0].get('precision')} (a tfnas without export.precision), "
                       f"although runtime.precision is {exports[0].get('configured_precision')}")
    evals = [r for r in rows if r["kind"] == "eval" and "macs_per_image_with_aux" in r]
    if evals:
        out.append(f"  eval-train: GFLOP/s counts the auxiliary tower too "
                   f"({evals[0]['macs_per_image_with_aux'] / 1e6:.1f} MMAC/img with it)")
    xla_rows = [r["case"] for r in rows if r.get("xla")]
    if xla_rows:
        out.append(f"  XLA (jit_compile=True) on: {', '.join(dict.fromkeys(xla_rows))}")
    return "\n".join(out)


def write_json(path: str, machine: dict, rows: list[dict], started: str, total_s: float,
               pair: dict | None = None) -> None:
    ref = machine["reference_machine"]
    payload = dict(benchmark="tfnas benchmark (bench.py)", started=started, total_s=total_s, machine=machine,
                   flop_convention=CONVENTION,
                   reference_source=(f"original PyTorch DARTS on {ref} (shared/reference/peer-figures.md)" if ref
                                     else f"none for vendor {machine['vendor_id']!r}"),
                   **({"pair": pair} if pair else {}), results=rows)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------
# --pair


def repo_root() -> str:
    """The git checkout this file is in: where `rev:` sides are resolved."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["git", "-C", here, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"--pair rev: needs bench.py in a git checkout ({out.stderr.strip()})")
    return out.stdout.strip()


def parse_side(label: str, text: str, common: list[str], error) -> dict:
    """A --pair side: `rev:<commit-ish>` (resolved to its commit now) or `set:KEY=VALUE[;KEY=VALUE...]`."""
    kind, sep, value = text.partition(":")
    if not sep or kind not in ("rev", "set"):
        error(f"--pair {label}: {text!r} is neither rev:<commit-ish> nor set:KEY=VALUE[;KEY=VALUE...]")
    if kind == "rev":
        root = repo_root()
        out = subprocess.run(["git", "-C", root, "rev-parse", "--verify", "--quiet", f"{value}^{{commit}}"],
                             capture_output=True, text=True)
        if not value or out.returncode != 0:
            error(f"--pair {label}: no commit {value!r} in {root}")
        commit = out.stdout.strip()
        subject = subprocess.run(["git", "-C", root, "log", "-1", "--format=%s", commit], capture_output=True,
                                 text=True).stdout.strip()
        subject = subject if len(subject) <= 60 else subject[:57] + "..."
        return dict(label=label, spec=text, kind="rev", rev=value, commit=commit, subject=subject,
                    repository=root, settings=[], precision=None)
    from tfnas import config as config_lib
    from tfnas.errors import UserError
    settings = [kv.strip() for kv in value.split(";") if kv.strip()]
    try:
        cfg = config_lib.load_config(None, common + settings)
    except UserError as err:
        error(f"--pair {label}: {err}")
    return dict(label=label, spec=text, kind="set", settings=settings, tfnas=git_state(),
                precision=enum_name(cfg.runtime, "precision"))


def describe_side(side: dict) -> str:
    precision = f"; precision {side['precision']}" if side.get("precision") else ""
    if side["kind"] == "rev":
        return (f"{side['spec']} = {side['commit'][:10]} \"{side['subject']}\" (its tfnas, from a temporary worktree; "
                f"this file's child code{precision})")
    return (f"{side['spec']} (this checkout's tfnas, {side['tfnas']}; settings "
            f"{'; '.join(side['settings']) or 'none beyond --set'}{precision})")


@contextlib.contextmanager
def side_environment(side: dict, tmpdir: str):
    """The children's environment of a side: for a rev side, PYTHONPATH starting at a temporary detached
    worktree of its commit, removed afterwards."""
    env = dict(os.environ)
    if side["kind"] != "rev":
        yield env
        return
    path = os.path.join(tmpdir, f"rev-{side['label']}")
    subprocess.run(["git", "-C", side["repository"], "worktree", "add", "--detach", "--quiet", path,
                    side["commit"]], check=True)
    side["worktree"] = path
    try:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (path, os.environ.get("PYTHONPATH"))))
        yield env
    finally:
        subprocess.run(["git", "-C", side["repository"], "worktree", "remove", "--force", path], check=False)


def pair_summary(rows: list[dict], name: str) -> dict:
    """Side A and B of one row name (a case; export-b1 / -b64): each side's median of its runs' medians with
    their min-max and its highest peak GiB, and B/A with the min and max of the per-round ratios."""
    runs = [r for r in rows if r["case"] == name]
    ok = {(r["side"], r["round"]): r for r in runs if "median_s" in r and "error" not in r}
    out = dict(case=name, kind=runs[0]["kind"], batch=runs[0].get("batch"))
    for s in "AB":
        mine = [r for r in runs if r["side"] == s]
        meds = [r["median_s"] for (side, _), r in sorted(ok.items()) if side == s]
        out[s] = dict(runs=len(mine), ok=len(meds), run_medians_s=meds, precision=mine[0].get("precision"),
                      median_s=statistics.median(meds) if meds else None, min_s=min(meds, default=None),
                      max_s=max(meds, default=None),
                      peak_gib=max((r["peak_gib"] for r in mine if "peak_gib" in r), default=None),
                      errors=[r["error"] for r in mine if "error" in r])
    rounds = sorted({rnd for _, rnd in ok})
    ratios = [ok[("B", rnd)]["median_s"] / ok[("A", rnd)]["median_s"] for rnd in rounds
              if ("A", rnd) in ok and ("B", rnd) in ok]
    a, b = out["A"]["median_s"], out["B"]["median_s"]
    out.update(ratio=b / a if a and b else None, ratio_min=min(ratios, default=None),
               ratio_max=max(ratios, default=None), per_round_ratios=ratios, ratio_spread=RATIO_SPREAD)
    return out


def pair_table(summaries: list[dict]) -> str:
    head = ["case", "A s/step", "(min-max)", "B s/step", "(min-max)", "B/A", "(min-max)", "A GiB", "B GiB",
            "A prec", "B prec", "runs ok A/B"]
    lines = []
    for p in summaries:
        ms = p["kind"] == "export"
        scale, unit, spec = (1e3, " ms", ".1f") if ms else (1.0, "", ".3f")

        def step(side, p=p, scale=scale, unit=unit, spec=spec):
            m = p[side]["median_s"]
            return "-" if m is None else f"{m * scale:{spec}}{unit}"

        def spread(side, p=p, scale=scale, spec=spec):
            x = p[side]
            return "-" if x["min_s"] is None else f"{x['min_s'] * scale:{spec}}-{x['max_s'] * scale:{spec}}"
        lines.append([
            p["case"], step("A"), spread("A"), step("B"), spread("B"), fmt(p["ratio"], ".3f"),
            "-" if p["ratio_min"] is None else f"{p['ratio_min']:.3f}-{p['ratio_max']:.3f}",
            fmt(p["A"]["peak_gib"], ".2f"), fmt(p["B"]["peak_gib"], ".2f"),
            PRECISION_SHORT.get(p["A"]["precision"], "-"), PRECISION_SHORT.get(p["B"]["precision"], "-"),
            f"{p['A']['ok']}/{p['A']['runs']}, {p['B']['ok']}/{p['B']['runs']}"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


PROFILE_TOP = 16  # op types per case in the printed profile; the JSON has all of them


def profile_tables(rows: list[dict]) -> str:
    """Per case, the kernel ms per step of its heaviest op types, one column per profiled run (A1, B1, ...
    with --pair), and each column's total over all op types."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        runs = [r for r in rows if r["case"] == case and "profile" in r]
        if not runs:
            continue
        labels = [f"{r['side']}{r['round']}" if "side" in r else "ms" for r in runs]
        ops = collections.Counter()
        for r in runs:
            ops.update({k: v / len(runs) for k, v in r["profile"]["ops"].items()})
        top = [k for k, _ in ops.most_common(PROFILE_TOP)]
        width = max(len("op type (kernel ms/step)"), *(len(k) for k in top))
        out.append(f"\nprofile {case}: kernel time per step by op type ({runs[0]['profile']['steps']} profiled "
                   f"step(s) per run, summed over {runs[0]['profile']['threads']} op thread(s))")
        out.append("op type (kernel ms/step)".ljust(width) + "".join(f"{x:>9}" for x in labels))
        for k in top:
            out.append(k.ljust(width) + "".join(f"{r['profile']['ops'].get(k, 0) * 1e3:9.1f}" for r in runs))
        out.append("all op types".ljust(width) + "".join(f"{r['profile']['kernel_s_per_step'] * 1e3:9.1f}"
                                                          for r in runs))
        out.append("wall per step".ljust(width) + "".join(f"{r['profile']['wall_s_per_step'] * 1e3:9.1f}"
                                                           for r in runs))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------


def print_machine(machine: dict, settings: list[str]) -> None:
    print(f"machine: {machine['cpu_count']} x {machine['cpu_model']} @ {machine['cpu_ghz']:.2f} GHz "
          f"({machine['vendor_id']}: kind {machine['cpu_kind']}; avx2={machine['avx2']}, avx512f={machine['avx512f']}, "
          f"avx512_bf16={machine['avx512_bf16']}, amx_bf16={machine['amx_bf16']}), {machine['memory_gib']} GiB; "
          f"load average {machine['load_average_at_start']}")
    print(f"peak fp32: {machine['peak_gflops']:.1f} GFLOP/s = {machine['peak_convention']}")
    print(f"peak bf16: {machine['peak_gflops_by_precision']['MIXED_BFLOAT16']:.1f} GFLOP/s = "
          f"{machine['peak_conventions']['MIXED_BFLOAT16']}")
    print(f"precision: {machine['precision']} (runtime.precision; %peak uses the peak of each row's precision)")
    print("reference: " + (f"the original PyTorch DARTS on {machine['reference_machine']}" if machine["reference_cpu"]
                           else f"none for vendor {machine['vendor_id']!r}"))
    print(f"{machine['tensorflow_package']}, {machine['keras_package']}, oneDNN {machine['onednn']}, "
          f"XLA {machine['xla']}; tfnas {machine['tfnas_git']}; settings {settings or 'defaults'}", flush=True)
    for side in machine.get("pair", {}).values():
        print(f"pair {side['label']}: {describe_side(side)}", flush=True)


def collect_child_versions(machine: dict, rows: list[dict]) -> None:
    for r in rows:  # what the children saw (the same for all of them)
        for key in ("tf_version", "keras_version", "inter_op_threads", "intra_op_threads"):
            if key in r:
                machine.setdefault(key, r[key])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(CASES), help="comma list, from: " + ", ".join(CASES) + " (default: all)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per case, latency calls per batch size for export (default: "
                        + ", ".join(f"{k} {v['steps']}" for k, v in CASES.items()) + ")")
    p.add_argument("--json", default=None, help="write machine + results here, rewritten after each case")
    p.add_argument("--timeout", type=float, default=0, help="kill a child after this many seconds (0: no limit)")
    p.add_argument("--xla", action="store_true", help="jit_compile=True on each timed tf.function")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a configuration setting, as for the tfnas commands (repeatable)")
    p.add_argument("--precision", type=str.lower, choices=[x.lower() for x in PRECISIONS], default=None,
                   help="the networks' compute precision: --set runtime.precision=... (default: the "
                        "configuration's, float32); the export case exports its serving graph in it")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                   help="compare two sides, each rev:<commit-ish> or set:KEY=VALUE[;KEY=VALUE...], "
                        "interleaved per case (A B B A ...); prints B/A")
    p.add_argument("--rounds", type=int, default=None,
                   help="with --pair: rounds per case, each one A run and one B run (default 2)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the timed steps, N more under TensorFlow's profiler: kernel time per op type "
                        "and step (export: call), printed per case (with --pair, A beside B)")
    p.add_argument("--child", metavar="CASE", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")

    if args.child:
        return run_child(args.child, args.steps or CASES[args.child]["steps"], args.xla, args.result, args.settings,
                         args.profile)
    if args.profile < 0:
        p.error("--profile must be at least 0")

    if args.rounds is not None and not args.pair:
        p.error("--rounds needs --pair")
    rounds = 2 if args.rounds is None else args.rounds
    if rounds < 1:
        p.error("--rounds must be at least 1")
    from tfnas import config as config_lib
    from tfnas.errors import UserError
    settings = list(args.settings)
    if args.precision:  # after the --set items, as a further --set would be; a contradiction is refused
        given = {kv.partition("=")[2].strip().upper() for kv in settings
                 if kv.partition("=")[0].strip() == "runtime.precision"}
        if given - {args.precision.upper()}:
            p.error(f"--precision {args.precision} contradicts --set runtime.precision={', '.join(sorted(given))}")
        settings.append(f"runtime.precision={args.precision.upper()}")
    try:  # a bad setting fails here, in one line, not in every child
        cfg = config_lib.load_config(None, settings)
    except UserError as err:
        p.error(str(err))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        p.error(f"unknown case(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(CASES)})")
    sides = ({label: parse_side(label, text, settings, p.error) for label, text in zip("AB", args.pair)}
             if args.pair else None)

    machine = machine_info(args.xla)
    machine["settings"] = settings
    machine["precision"] = enum_name(cfg.runtime, "precision")
    if sides:
        machine["pair"] = sides
        machine["pair_rounds"] = rounds
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print_machine(machine, settings)

    rows: list[dict] = []
    summaries: list[dict] = []
    pair = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfnas_bench_") as tmpdir:
        if not sides:
            for case in cases:
                got = run_case(case, args.steps or CASES[case]["steps"], args.timeout, args.xla, tmpdir, settings,
                               profile=args.profile)
                annotate(got, machine)
                rows += got
                collect_child_versions(machine, rows)
                if args.json:  # partial results survive an interrupted run
                    write_json(args.json, machine, rows, started, time.perf_counter() - t0)
        else:
            pair = dict(A=sides["A"], B=sides["B"], rounds=rounds, order="per case: A B, B A, A B, ... "
                        "(A B B A A B B A)", ratio="B/A of the sides' median s/step (B/A < 1: B is faster)",
                        ratio_spread=RATIO_SPREAD, summaries=summaries)
            with side_environment(sides["A"], tmpdir) as env_a, side_environment(sides["B"], tmpdir) as env_b:
                envs = dict(A=env_a, B=env_b)
                for side in sides.values():
                    if side["kind"] == "rev":
                        print(f"pair {side['label']}: worktree {side['worktree']} at {side['commit'][:10]}",
                              flush=True)
                for case in cases:
                    case_rows = []
                    for rnd in range(1, rounds + 1):
                        for s in ("AB" if rnd % 2 else "BA"):
                            side = sides[s]
                            got = run_case(case, args.steps or CASES[case]["steps"], args.timeout, args.xla, tmpdir,
                                           settings + side["settings"], env=envs[s], tag=f"{s}{rnd}",
                                           profile=args.profile)
                            for r in got:
                                r.update(side=s, round=rnd, side_spec=side["spec"])
                                if side["kind"] == "rev":
                                    r["commit"] = side["commit"]
                                    where = os.path.realpath(r.get("tfnas_path", ""))
                                    if not where.startswith(os.path.realpath(side["worktree"]) + os.sep):
                                        r["error"] = (f"the child imported tfnas from {r.get('tfnas_path')}, "
                                                      f"not from the worktree of {side['commit'][:10]}")
                                if side["precision"] is None and r.get("configured_precision"):
                                    side["precision"] = r["configured_precision"]
                            annotate(got, machine)
                            case_rows += got
                            rows += got
                            collect_child_versions(machine, rows)
                            if args.json:
                                write_json(args.json, machine, rows, started, time.perf_counter() - t0, pair)
                    summaries += [pair_summary(case_rows, name) for name in dict.fromkeys(r["case"] for r in case_rows)]
                    if args.json:
                        write_json(args.json, machine, rows, started, time.perf_counter() - t0, pair)
    total = time.perf_counter() - t0

    print("\n" + "=" * 100)
    print(f"tfnas benchmark, {started}, total {total / 60:.1f} min; ref = the original PyTorch DARTS"
          + (f" on {machine['reference_machine']}" if machine["reference_cpu"] else " (none for this CPU's vendor)"))
    print(f"machine: {machine['cpu_count']} x {machine['cpu_model']} @ {machine['cpu_ghz']:.2f} GHz "
          f"({machine['cpu_kind']}), {machine['memory_gib']} GiB, peak {machine['peak_gflops']:.1f} GFLOP/s fp32, "
          f"{machine['peak_gflops_by_precision']['MIXED_BFLOAT16']:.1f} bf16; precision {machine['precision']}; "
          f"TensorFlow {machine.get('tf_version', '?')}, Keras {machine.get('keras_version', '?')}, oneDNN "
          f"{machine['onednn']}, XLA {machine['xla']}; threads inter/intra {machine.get('inter_op_threads', '?')}/"
          f"{machine.get('intra_op_threads', '?')} (0 = TF default); tfnas {machine['tfnas_git']}")
    print("networks: small = C8, 5 cells; cifar = C16, 8 cells (search networks: 4 nodes, 8 primitives); "
          "eval-train, export = DARTS_V2, C36, 20 cells; all 32x32x3, 10 classes")
    print(table(rows, machine))
    print("s/step: median over the timed steps after 1 warm-up step (export: latency over the timed calls after "
          f"{EXPORT_WARMUP_CALLS} warm-up calls);\nfirst s: trace + first step; img/s: batch / median (search: train "
          "batch only); peak GiB: child's max RSS;\nspeed-up: img/s over ref img/s; mem ratio: peak GiB over ref GiB "
          "(< 1: less memory); prec: the precision the timed network computes in.")
    print(f"FLOPs: {CONVENTION}.")
    if sides:
        print(f"\npair, {rounds} round(s) per case, order A B, B A, ...:")
        for side in sides.values():
            print(f"  {side['label']} = {describe_side(side)}")
        print(pair_table(summaries))
        print("A/B s/step: the median of that side's runs (each run: the median of its timed steps; export: "
              "latency), (min-max) of those runs;\nB/A: of the two medians (< 1: B is faster), (min-max): "
              "of the per-round ratios, each round one A run and one B run adjacent in time;\nGiB: the highest "
              "peak of that side's runs.")
    if args.profile:
        print(profile_tables(rows))
    if args.json:
        write_json(args.json, machine, rows, started, total, pair)
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
