"""Evaluation-training speed of an evaluation network and latency of its exported SavedModel.

    python benchmarks/eval_export.py                       # DARTS_V2, 36 channels, 20 cells, batch 96
    python benchmarks/eval_export.py --channels 16 --cells 8 --batch 64 --steps 5

Training: the `tfnas eval` step (auxiliary tower, drop path, augmentation, SGD) on fixed random 32x32x3
batches; reported as the median over --steps steps after one warm-up step, with min/max for the noise.
Export: the same network exported with `tfnas.export` (random weights: latency does not depend on them),
loaded back with tf.saved_model.load, and its `serving_default` signature timed at batch 1 and 64
(median of --repeats calls after 3 warm-up calls). Prints a table and, with --json, writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="DARTS_V2")
    parser.add_argument("--channels", type=int, default=36)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import tfnas  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow loads)
    import tensorflow as tf
    from tfnas import compiler, config, evaluation, export, runtime
    runtime.configure_threads()  # what the tfnas commands use
    from tfnas.proto import config_pb2
    from tfnas.train import optim

    cfg = config.load_config(None, ["eval.augmentation.crop_padding=4", "eval.augmentation.cutout=16",
                                    "eval.augmentation.horizontal_flip=true"])
    macro = config_pb2.MacroConfig(channels=args.channels, cells=args.cells, stem_multiplier=3, aux_tower=True,
                                   aux_weight=0.4)
    desc = evaluation.evaluation_desc(args.arch, macro, [32, 32, 3], 10)
    start = time.perf_counter()
    net = compiler.compile_model(desc, compiler.EVAL_OPTIONS)
    build_s = time.perf_counter() - start
    net.drop_rate.assign(0.1)
    opt = optim.make_optimizer(cfg.eval.trainer.optimizer, 1, 100, "optimizer")
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    trainer = evaluation.EvalTrainer(net, opt, cfg.eval.trainer.optimizer, cfg.eval.augmentation, mean, std, 0)
    spec = [tf.TensorSpec([args.batch, 32, 32, 3], tf.uint8), tf.TensorSpec([args.batch], tf.int64)]
    step = tf.function(lambda x, y: trainer.train_step((x, y)), input_signature=spec, autograph=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, args.batch).astype(np.int64)
    start = time.perf_counter()
    step(x, y)
    first_s = time.perf_counter() - start
    step(x, y)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        float(step(x, y)["loss"])
        times.append(time.perf_counter() - start)
    train_s = statistics.median(times)

    with tempfile.TemporaryDirectory() as tmp:
        evaluation_dir = os.path.join(tmp, "eval")
        os.makedirs(evaluation_dir)
        from tfnas import descriptors
        descriptors.save(desc, os.path.join(evaluation_dir, evaluation.MODEL_DESC))
        with open(os.path.join(evaluation_dir, evaluation.DATASET_INFO), "w") as f:
            json.dump({"dataset": "random", "image_shape": [32, 32, 3], "class_names": [str(i) for i in range(10)],
                       "mean": mean.tolist(), "std": std.tolist()}, f)
        evaluation.write_weights(net, pathlib.Path(evaluation_dir))
        path = export.export(evaluation_dir, os.path.join(tmp, "exports"))
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        latency = {}
        for n in (1, 64):
            images = tf.constant(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
            for _ in range(3):
                serve(images=images)
            lat = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                serve(images=images)["class_id"].numpy()
                lat.append(time.perf_counter() - start)
            latency[n] = (statistics.median(lat), min(lat), max(lat))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "tensorflow": tf.__version__, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "xla": False},
        "network": {"arch": args.arch, "channels": args.channels, "cells": args.cells,
                    "params": compiler.count_params(net, include_aux=False),
                    "multiply_adds": compiler.multiply_adds(net)},
        "train": {"batch": args.batch, "build_s": build_s, "first_step_s": first_s, "median_step_s": train_s,
                  "min_step_s": min(times), "max_step_s": max(times), "images_per_s": args.batch / train_s},
        "serving_latency_ms": {str(n): {"median": m * 1e3, "min": lo * 1e3, "max": hi * 1e3}
                               for n, (m, lo, hi) in latency.items()},
        "peak_rss_gib": peak,
    }
    t = result["train"]
    print(f"{args.arch} evaluation network: {args.channels} channels, {args.cells} cells, "
          f"{result['network']['params']:,} params; {os.cpu_count()} cores, TF {tf.__version__}")
    print(f"  build {t['build_s']:.1f} s, first step (trace) {t['first_step_s']:.1f} s")
    print(f"  training, batch {args.batch}: {t['median_step_s']:.2f} s/step (min {t['min_step_s']:.2f}, "
          f"max {t['max_step_s']:.2f}) = {t['images_per_s']:.1f} images/s")
    for n, (m, lo, hi) in latency.items():
        print(f"  SavedModel latency, batch {n}: {m * 1e3:.1f} ms (min {lo * 1e3:.1f}, max {hi * 1e3:.1f})"
              f" = {n / m:.1f} images/s")
    print(f"  peak resident memory {peak:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
