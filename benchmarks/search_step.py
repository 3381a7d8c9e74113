#!/usr/bin/env python
"""Benchmark of the DARTS search step (bi-level, first and second order) on this machine.

    python benchmarks/search_step.py [--cases small,cifar] [--orders 1,2] [--steps N] [--json out.json]

Each (case, order) runs in a fresh child process (this script with the hidden `--child CASE ORDER`), so
tracing caches and memory never leak from one measurement into the next, and a child that dies (out of
memory, say) leaves an error in its row instead of ending the run. The child assembles the search
exactly as `tfnas.search.runner.search` does (macro.build_macro -> darts.build_supernet ->
compiler.compile_model -> BilevelSearch with the default configuration's two optimisers -> one
tf.function step over uint8 batches with preprocessing), on fixed random uint8 batches, and measures:

    build      seconds to build descriptor, Keras model and both optimisers
    first      seconds to trace the step (get_concrete_function) + run it once (graph optimisation)
    s/step     median seconds per step over N steps, after one more warm-up step (min and max too)
    img/s      batch / median step time (training batch only; each step also processes a
               validation batch of the same size, as the reference figures count it)
    peak GiB   the child's peak resident memory (getrusage ru_maxrss)
    GFLOP/s    nominal FLOPs per step / median step time, and its fraction of the CPU's fp32 peak

FLOP convention (nominal, the same count for tfnas and the PyTorch original, so the fraction of peak
compares the two like for like): forward = 2 x multiply-adds (convolutions and dense layers only,
from the layers' macs formulas at each state's resolution; compiler.multiply_adds is recorded beside it
and a warning printed where the two differ), backward = 2 x forward, so one forward+backward pass = 6 x MACs per image.
First order: 2 passes per step (alpha step on the val batch, weight step on the train batch).
Second order: 5 passes (virtual step on train, val at w', two finite-difference alpha passes on train,
weight step) - the alpha-only passes are counted as full passes, although tfnas asks the tape for alpha
gradients only and the weight-gradient half of their backward is pruned from the graph.
Peak = cores x GHz ('cpu MHz' of /proc/cpuinfo) x 32 FLOP/cycle (AVX2: 2 FMA units x 8 fp32 lanes x 2).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import tfnas  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS=1 unless the user chose otherwise; no TF import)

CASES = {
    # name: channels, cells, batch, default steps
    "small": dict(channels=8, cells=5, batch=32, steps=10),
    "cifar": dict(channels=16, cells=8, batch=64, steps=5),
}
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
NODES = 4
STEM_MULTIPLIER = 3
# CIFAR-10 search split: half of the 50,000 training images train the weights (DARTS); sets the
# steps per epoch of the (epoch-wise) learning-rate schedules, which does not affect timing.
SEARCH_TRAIN_IMAGES = 25_000
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

# The original PyTorch DARTS (quark0/darts) on a machine of this kind: seconds/step, images/s, peak GiB.
REFERENCE = {
    ("small", 1): dict(s_per_step=6.6, images_per_s=4.8, peak_gib=1.93),
    ("small", 2): dict(s_per_step=13.4, images_per_s=2.4, peak_gib=2.51),
    ("cifar", 1): dict(s_per_step=36.9, images_per_s=1.7, peak_gib=10.4),
    ("cifar", 2): dict(s_per_step=77.4, images_per_s=0.83, peak_gib=13.4),
}
PASSES = {1: 2, 2: 5}  # forward+backward passes per step (see the module docstring)
FLOPS_PER_MAC_PER_PASS = 6  # forward 2 FLOPs per MAC, backward 2x forward
FLOP_PER_CYCLE = 32  # AVX2 FMA fp32 per core
CONVENTION = ("nominal FLOPs/step = passes x 6 x MACs/image x batch; forward = 2 FLOPs per multiply-add "
              "(conv + dense only), backward = 2 x forward; passes: first order 2 (alpha step on val, weight "
              "step on train), second order 5 (+ virtual step on train, + 2 finite-difference alpha-only "
              "passes on train, counted as full passes); peak = cores x GHz x 32 FLOP/cycle (AVX2 FMA fp32)")


def walk_multiply_adds(net) -> int:
    """Multiply-adds of one example, walking each state's own resolution (the layers' macs formulas).

    A cross-check of compiler.multiply_adds: every edge is counted at the resolution of the state it
    reads, and a cell's output takes the resolution of the states it concatenates. Agrees with TF's
    profiler (float_ops / 2 of the forward graph, which also counts element-wise ops) to within 5%.
    """
    h, w = net.desc.input_shape[0], net.desc.input_shape[1]
    total = net.stem.macs(h, w)
    hw = net.stem.out_size(h, w)
    prev = [hw, hw]  # resolutions of s0 and s1
    for cell in net.cells:
        (h0, w0), (h1, w1) = prev
        total += cell.pre0.macs(h0, w0) + cell.pre1.macs(h1, w1)
        res = [cell.pre0.out_size(h0, w0), cell.pre1.out_size(h1, w1)]
        for node_edges in cell.edges:
            out = None
            for inputs, layer, _ in node_edges:
                total += layer.macs(*res[inputs[0]])
                out = layer.out_size(*res[inputs[0]])
            res.append(out)
        prev = [prev[1], res[cell.concat[0]]]
    return total + net.classifier.macs(1, 1)


def gib(kib: float) -> float:
    return kib / 1024.0**2


def peak_rss_gib() -> float:
    return gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # Linux: KiB


# ------------------------------------------------------------------------------------------------------
# Machine


def cpu_info() -> dict:
    model, mhz = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "cpu MHz":
                    mhz.append(float(value))
    except OSError:
        pass
    ghz = max(mhz) / 1000.0 if mhz else float("nan")
    cores = os.cpu_count() or 1
    flags = ""
    try:
        flags = re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split()
    except (OSError, AttributeError):
        flags = []
    return dict(cpu_count=cores, cpu_model=model, cpu_ghz=ghz, avx2="avx2" in flags, fma="fma" in flags,
                avx512f="avx512f" in flags, peak_gflops=cores * ghz * FLOP_PER_CYCLE,
                peak_convention=f"{cores} cores x {ghz:.3f} GHz x {FLOP_PER_CYCLE} FLOP/cycle (AVX2 FMA fp32)")


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


def machine_info() -> dict:
    info = cpu_info()
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
            mem_total = round(gib(kib), 2)
    except (OSError, AttributeError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info.update(
        memory_gib=mem_total,
        python=platform.python_version(),
        platform=platform.platform(),
        tensorflow_package=package_version("tensorflow-cpu", "tensorflow", "tf-nightly"),
        keras_package=package_version("keras"),
        tfnas=tfnas.__version__,
        TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        xla="off (no jit_compile, no TF_XLA_FLAGS auto-jit)" if "xla_auto_jit" not in os.environ.get(
            "TF_XLA_FLAGS", "") else f"TF_XLA_FLAGS={os.environ['TF_XLA_FLAGS']}",
        load_average_at_start=[round(x, 2) for x in load] if load else None,
        tfnas_git=git_state(),
    )
    return info


# ------------------------------------------------------------------------------------------------------
# Child: one case, one order


def run_child(case: str, order: int, steps: int, result_path: str) -> int:
    spec = CASES[case]
    result: dict = dict(case=case, order=order, batch=spec["batch"], channels=spec["channels"],
                        cells=spec["cells"], nodes=NODES, steps=steps, phase="start")

    def save():
        result["peak_gib"] = peak_rss_gib()
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, result_path)

    def enter(phase):  # the result file names the phase in progress, should the child die in it
        result["phase"] = phase
        save()

    def log(msg):
        print(f"[{case}/o{order}] {msg}", flush=True)

    try:
        t = time.perf_counter()
        import keras
        import numpy as np
        import tensorflow as tf

        from tfnas import compiler, config as config_lib, data as data_lib, macro, runtime
        from tfnas.proto import config_pb2
        runtime.configure_threads()  # what the tfnas commands use
        from tfnas.search import darts
        from tfnas.search.bilevel import BilevelSearch
        from tfnas.train import optim
        result["import_s"] = time.perf_counter() - t
        result.update(tf_version=tf.__version__, keras_version=keras.__version__,
                      TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                      inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
                      intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                      jit_compile=False)
        log(f"imported TensorFlow {tf.__version__} / Keras {keras.__version__} in {result['import_s']:.1f} s "
            f"(TF_ENABLE_ONEDNN_OPTS={result['TF_ENABLE_ONEDNN_OPTS']})")

        cfg = config_lib.load_config()
        s = cfg.search
        s.darts.order = order
        primitives = list(s.darts.primitives)
        assert len(primitives) == 8, primitives
        seed = int(cfg.seed)
        keras.utils.set_random_seed(seed)  # runner.seed_everything (deterministic is off by default)
        batch = spec["batch"]
        steps_per_epoch = SEARCH_TRAIN_IMAGES // batch

        # Fixed random uint8 batches (two pairs, alternated), numpy-seeded.
        rng = np.random.default_rng(seed)
        batches = [tuple(x for _ in range(2) for x in (
            rng.integers(0, 256, (batch, *IMAGE_SHAPE), dtype=np.uint8),
            rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int64))) for _ in range(2)]
        mean, std = np.asarray(CIFAR_MEAN, np.float32), np.asarray(CIFAR_STD, np.float32)

        # Build: as runner.search does.
        enter("build")
        t = time.perf_counter()
        macro_cfg = config_pb2.MacroConfig(channels=spec["channels"], cells=spec["cells"], nodes=NODES,
                                           stem_multiplier=STEM_MULTIPLIER)
        macro_desc = macro.build_macro(macro_cfg, IMAGE_SHAPE, NUM_CLASSES)
        supernet = darts.build_supernet(macro_desc, primitives, s.darts.alpha_init_scale, seed=seed)
        net = compiler.compile_model(supernet, compiler.SEARCH_OPTIONS)
        weight_opt = optim.make_optimizer(s.trainer.optimizer, s.trainer.epochs, steps_per_epoch,
                                          "weight_optimizer")
        alpha_opt = optim.make_optimizer(s.darts.alpha_optimizer, s.trainer.epochs, steps_per_epoch,
                                         "alpha_optimizer")
        searcher = BilevelSearch(net, weight_opt, alpha_opt, s.trainer.optimizer, s.darts.alpha_optimizer,
                                 order=s.darts.order)
        result["build_s"] = time.perf_counter() - t
        result["params"] = compiler.count_params(net)
        result["macs_per_image_compiler"] = compiler.multiply_adds(net)
        result["macs_per_image_walk"] = walk_multiply_adds(net)
        result["macs_per_image"] = result["macs_per_image_walk"]  # used for the FLOP rate
        if abs(result["macs_per_image_compiler"] / result["macs_per_image_walk"] - 1) > 0.01:
            result["macs_warning"] = (
                f"compiler.multiply_adds gives {result['macs_per_image_compiler']:,} multiply-adds/image, "
                f"{result['macs_per_image_compiler'] / result['macs_per_image_walk']:.2f}x the per-state count "
                f"{result['macs_per_image_walk']:,} (used here): it counts reduction cells' edges at the cell's "
                f"input resolution and never halves the resolution after them")
            log("WARNING: " + result["macs_warning"])
        result["weight_tensors"] = len(net.weights_only)
        result["peak_gib_after_build"] = peak_rss_gib()
        log(f"built in {result['build_s']:.1f} s: {result['params']:,} params, "
            f"{result['macs_per_image'] / 1e6:.1f} M multiply-adds/image, {result['weight_tensors']} weight tensors")
        save()

        image_spec = tf.TensorSpec([batch, *IMAGE_SHAPE], tf.uint8)
        label_spec = tf.TensorSpec([batch], tf.int64)

        # The step exactly as tfnas.search.runner.search defines it.
        @tf.function(input_signature=[image_spec, label_spec, image_spec, label_spec], autograph=False)
        def step(x_train, y_train, x_val, y_val):
            prep = lambda x: data_lib.preprocess(x, mean, std)  # noqa: E731
            return searcher.train_step(((prep(x_train), y_train), (prep(x_val), y_val)))

        def run(i):
            logs = step(*batches[i % len(batches)])
            return float(logs["loss"].numpy())  # forces the step to finish

        # Trace, then the first run (graph optimisation happens on the first call).
        enter("trace")
        t = time.perf_counter()
        concrete = step.get_concrete_function()
        result["trace_s"] = time.perf_counter() - t
        result["graph_ops"] = len(concrete.graph.get_operations())
        log(f"traced in {result['trace_s']:.1f} s ({result['graph_ops']:,} ops in the traced graph)")
        enter("first step")
        t = time.perf_counter()
        loss = run(0)
        result["first_run_s"] = time.perf_counter() - t
        result["first_step_s"] = result["trace_s"] + result["first_run_s"]
        result["peak_gib_after_first_step"] = peak_rss_gib()
        log(f"first step ran in {result['first_run_s']:.1f} s (trace + first step {result['first_step_s']:.1f} s), "
            f"loss {loss:.3f}")

        enter("warm-up")
        t = time.perf_counter()
        run(1)
        result["warmup_s"] = time.perf_counter() - t
        log(f"warm-up step {result['warmup_s']:.2f} s")
        enter("steps")
        times = []
        for i in range(steps):
            t = time.perf_counter()
            loss = run(i)
            times.append(time.perf_counter() - t)
            log(f"step {i + 1}/{steps}: {times[-1]:.2f} s (loss {loss:.3f})")
            result["step_times_s"] = times
            save()
        if not np.isfinite(loss):
            result["warning"] = f"non-finite loss {loss}"
        med = statistics.median(times)
        result.update(median_s=med, min_s=min(times), max_s=max(times), images_per_s=batch / med)
        result["nominal_flops_per_step"] = PASSES[order] * FLOPS_PER_MAC_PER_PASS * result["macs_per_image"] * batch
        result["gflops"] = result["nominal_flops_per_step"] / med / 1e9
        enter("done")
        log(f"median {med:.3f} s/step (min {min(times):.3f}, max {max(times):.3f}), "
            f"{result['images_per_s']:.2f} img/s, peak {result['peak_gib']:.2f} GiB")
        return 0
    except BaseException as err:  # noqa: BLE001 - recorded in the row; the parent goes on
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        result["error"] = f"{type(err).__name__} during {result.get('phase')}: {(lines or [''])[-1][:300]}"
        result["error_detail"] = str(err)[-3000:]
        save()
        raise


# ------------------------------------------------------------------------------------------------------
# Parent


def signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def run_case(case: str, order: int, steps: int, timeout: float, tmpdir: str) -> dict:
    result_path = os.path.join(tmpdir, f"{case}_o{order}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(order), "--steps", str(steps),
           "--result", result_path]
    print(f"\n=== {case} order {order}: {' '.join(cmd[1:])}", flush=True)
    tail: collections.deque = collections.deque(maxlen=30)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
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
    row = dict(case=case, order=order)
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
    if "median_s" not in row and "error" not in row:
        row["error"] = "no result"
    ref = REFERENCE.get((case, order))
    if ref:
        row["reference"] = ref
        if "images_per_s" in row:
            row["speedup"] = row["images_per_s"] / ref["images_per_s"]
        if "peak_gib" in row:
            row["memory_ratio"] = row["peak_gib"] / ref["peak_gib"]
    return row


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict], machine: dict) -> str:
    head = ["case", "ord", "params", "MMAC/img", "ops", "build s", "first s", "s/step", "(min-max)", "img/s",
            "peak GiB", "GFLOP/s", "%peak", "|", "ref s/step", "ref img/s", "ref GiB", "|", "speed-up", "mem ratio"]
    lines = []
    for r in rows:
        ref = r.get("reference", {})
        ok = "median_s" in r
        lines.append([
            r["case"], str(r["order"]), fmt(r.get("params"), ","), fmt(r.get("macs_per_image") and
                                                                     r["macs_per_image"] / 1e6, ".1f"),
            fmt(r.get("graph_ops"), ","), fmt(r.get("build_s"), ".1f"), fmt(r.get("first_step_s"), ".1f"),
            fmt(r.get("median_s"), ".3f"),
            f"{r['min_s']:.2f}-{r['max_s']:.2f}" if ok else "-",
            fmt(r.get("images_per_s"), ".2f"), fmt(r.get("peak_gib"), ".2f"), fmt(r.get("gflops"), ".2f"),
            fmt(ok and 100 * r["gflops"] / machine["peak_gflops"] or None, ".2f"),
            "|", fmt(ref.get("s_per_step"), ".1f"), fmt(ref.get("images_per_s"), ".2f"),
            fmt(ref.get("peak_gib"), ".2f"),
            "|", f"{r['speedup']:.2f}x" if "speedup" in r else "-",
            f"{r['memory_ratio']:.2f}" if "memory_ratio" in r and ok else "-",
        ])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    for r in rows:
        if "error" in r:
            out.append(f"  {r['case']} order {r['order']}: ERROR {r['error']}")
        if "macs_warning" in r:
            out.append(f"  {r['case']} order {r['order']}: MMAC/img is the per-state count; {r['macs_warning']}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="small,cifar", help="comma-separated, from: " + ", ".join(CASES))
    p.add_argument("--orders", default="1,2", help="comma-separated DARTS orders (1, 2)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per case (default: " + ", ".join(f"{k} {v['steps']}" for k, v in CASES.items()) + ")")
    p.add_argument("--json", default=None, help="write machine + results here (default: print only)")
    p.add_argument("--timeout", type=float, default=0,
                   help="kill a child after this many seconds (0: no limit)")
    p.add_argument("--child", nargs=2, metavar=("CASE", "ORDER"), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        case, order = args.child[0], int(args.child[1])
        return run_child(case, order, args.steps or CASES[case]["steps"], args.result)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    orders = [int(o) for o in args.orders.split(",") if o.strip()]
    for c in cases:
        if c not in CASES:
            p.error(f"unknown case {c!r} (known: {', '.join(CASES)})")
    for o in orders:
        if o not in (1, 2):
            p.error(f"order must be 1 or 2, got {o}")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")

    machine = machine_info()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"machine: {machine['cpu_count']} x {machine['cpu_model']} @ {machine['cpu_ghz']:.2f} GHz "
          f"(avx2={machine['avx2']}, avx512f={machine['avx512f']}), {machine['memory_gib']} GiB; "
          f"load average {machine['load_average_at_start']}")
    print(f"peak fp32: {machine['peak_gflops']:.1f} GFLOP/s = {machine['peak_convention']}")
    print(f"{machine['tensorflow_package']}, {machine['keras_package']}, "
          f"TF_ENABLE_ONEDNN_OPTS={machine['TF_ENABLE_ONEDNN_OPTS']}, XLA {machine['xla']}; "
          f"tfnas {machine['tfnas_git']}", flush=True)

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfnas_bench_") as tmpdir:
        for case in cases:
            for order in orders:
                steps = args.steps or CASES[case]["steps"]
                rows.append(run_case(case, order, steps, args.timeout, tmpdir))
                if args.json:  # partial results survive an interrupted run
                    write_json(args.json, machine, rows, started, time.perf_counter() - t0)
    for r in rows:  # what the children saw (same for all of them)
        for key in ("tf_version", "keras_version", "inter_op_threads", "intra_op_threads"):
            if key in r:
                machine.setdefault(key, r[key])
    total = time.perf_counter() - t0

    print("\n" + "=" * 100)
    print(f"DARTS search step, tfnas vs the original PyTorch DARTS (ref), {started}, total {total / 60:.1f} min")
    print(f"machine: {machine['cpu_count']} x {machine['cpu_model']} @ {machine['cpu_ghz']:.2f} GHz, "
          f"peak {machine['peak_gflops']:.1f} GFLOP/s fp32; TensorFlow {machine.get('tf_version', '?')}, "
          f"Keras {machine.get('keras_version', '?')}, TF_ENABLE_ONEDNN_OPTS={machine['TF_ENABLE_ONEDNN_OPTS']}, "
          f"XLA off; threads inter/intra {machine.get('inter_op_threads', '?')}/"
          f"{machine.get('intra_op_threads', '?')} (0 = TF default); tfnas {machine['tfnas_git']}")
    print(f"cases: small = C8, 5 cells, batch 32; cifar = C16, 8 cells, batch 64; 4 nodes, 8 primitives, "
          f"32x32x3, 10 classes")
    print(table(rows, machine))
    print("s/step: median over the timed steps, after 1 warm-up step; first s: trace + first step; "
          "img/s: train batch / median s/step;\npeak GiB: child's max RSS; speed-up: img/s over ref img/s; "
          "mem ratio: peak GiB over ref GiB (< 1: less memory).")
    print(f"FLOPs: {CONVENTION}.")
    if args.json:
        write_json(args.json, machine, rows, started, total)
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in rows) else 1


def write_json(path: str, machine: dict, rows: list[dict], started: str, total_s: float) -> None:
    payload = dict(benchmark="tfnas DARTS search step", started=started, total_s=total_s, machine=machine,
                   flop_convention=CONVENTION, reference_source="original PyTorch DARTS on a machine of this kind",
                   results=rows)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
