#!/usr/bin/env python
"""What bfloat16 does to the search itself, not only to its speed: the same searches in two precisions.

    python benchmarks/precision_search.py [--precisions float32,mixed_bfloat16] [--planted-seeds N]
                                          [--seed S] [--set KEY=VALUE ...] [--out DIR] [--json PATH]

A precision may carry settings of its own after '@' (';' between them), e.g.
`float32@search.darts.lead_edges_apart=true`: float32 with the same sums arranged otherwise, the rounding
noise against which bfloat16's differences are to be judged. (The setting must apply within one process:
thread pools are fixed once TensorFlow has started, so runtime.intra_op_threads would change nothing.)
For each precision (runtime.precision), with everything else equal:

    planted   DARTS on tasks.far_correlation_task(seed) for seeds 0 .. N-1 (search_quality.py's planted
              task: only dil_conv_5x5 on the s0 edge of the first node separates the classes): does the
              search still find it, and with what weight?
    default   the default search (configs/default.yaml <- --set) on the built-in digits with seed S, as
              `tfnas search` runs it: the genotype it finds and its alpha trajectory, one softmax per edge
              per epoch from alpha_history.jsonl.

The report compares each precision with the first (float32): planted successes, whether the genotype is
the same and on how many edges, and per epoch the largest and the mean absolute difference of the
candidates' softmax weights. Lower precision changes every rounding, and DARTS's steps amplify early
differences (benchmarks/README.md: even the thread count moves a search), so the question is whether the
search ends in the same place, not whether its numbers agree. Wall times are printed, but are not a
speed benchmark (bench.py is).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402

import tfnas  # noqa: E402,F401  (oneDNN on unless the user chose otherwise)
from bench import cpu_info, git_state  # noqa: E402
from search_quality import PLANTED_TASK, Bench, found_searches, planted_searches  # noqa: E402


def softmax_rows(alphas: dict) -> dict:
    """{group: softmax of each edge's row} of one alpha_history record."""
    out = {}
    for group, rows in alphas.items():
        a = np.asarray(rows, np.float64)
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        out[group] = e / e.sum(axis=-1, keepdims=True)
    return out


def trajectory(run_dir: pathlib.Path) -> list[dict]:
    from tfnas import rundir
    return [json.loads(line) for line in (run_dir / rundir.ALPHA_HISTORY).read_text().splitlines()]


def compare_trajectories(a: list[dict], b: list[dict]) -> list[dict]:
    rows = []
    for ra, rb in zip(a, b):
        sa, sb = softmax_rows(ra["alphas"]), softmax_rows(rb["alphas"])
        diff = np.concatenate([np.abs(sa[g] - sb[g]).ravel() for g in sa])
        rows.append(dict(epoch=ra["epoch"], max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                         argmax_agree=float(np.mean(np.concatenate(
                             [sa[g].argmax(-1) == sb[g].argmax(-1) for g in sa])))))
    return rows


def edges_of(desc) -> list[list]:
    """The genotype's (op, input) pairs, normal cell then reduction cell, in node order."""
    from tfnas import genotypes
    g = genotypes.from_desc(desc)
    return [list(e) for e in list(g.normal) + list(g.reduce)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precisions", default="float32,mixed_bfloat16")
    p.add_argument("--planted-seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    out = pathlib.Path(a.out or tempfile.mkdtemp(prefix="tfnas-precision-"))
    cpu = cpu_info()
    print(f"machine: {cpu['cpu_count']} x {cpu['cpu_model']}; tfnas {git_state()}; out {out}", flush=True)
    result = dict(cpu=cpu, commit=git_state(), settings=a.settings, precisions={})
    for name in a.precisions.split(","):
        precision, _, extra = name.partition("@")
        args = argparse.Namespace(quick=False, json=None, settings=[
            *a.settings, f"runtime.precision={precision}", *filter(None, extra.split(";"))])
        b = Bench(args, out / name.replace("@", "-").replace(";", "-"))
        start = time.perf_counter()
        planted = planted_searches(b, {s: b.config(*PLANTED_TASK, f"seed={s}") for s in range(a.planted_seeds)})
        planted_s = time.perf_counter() - start
        found = found_searches(b, {a.seed: b.config(f"seed={a.seed}")})[0]
        result["precisions"][name] = dict(
            planted=planted, planted_s=planted_s, genotype=found["genotype"], search_s=found["search_s"],
            last_epoch=found["search_last_epoch"], edges=edges_of(found["desc"]),
            trajectory=trajectory(b.out / "found" / f"search-seed{a.seed}"))
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps(result, indent=1, default=str))
    names = list(result["precisions"])
    base = result["precisions"][names[0]]
    print()
    for name in names:
        r = result["precisions"][name]
        hits = sum(x["success"] for x in r["planted"])
        weights = ", ".join(f"{x['s0_weights']['dil_conv_5x5']:.3f}" for x in r["planted"])
        print(f"{name}: planted op found in {hits}/{len(r['planted'])} (its weights {weights}; {r['planted_s']:.0f} s); "
              f"default search {r['search_s']:.0f} s, last epoch {r['last_epoch']}")
        print(f"  genotype {r['genotype']}")
        if r is not base:
            same = sum(x == y for x, y in zip(r["edges"], base["edges"]))
            r["same_edges"] = [same, len(base["edges"])]
            r["against_first"] = compare_trajectories(base["trajectory"], r["trajectory"])
            print(f"  against {names[0]}: genotype {'the same' if r['genotype'] == base['genotype'] else 'different'}"
                  f" ({same}/{len(base['edges'])} edges equal)")
            for row in r["against_first"]:
                print(f"  epoch {row['epoch']}: softmax weights max |diff| {row['max_abs']:.4f}, mean "
                      f"{row['mean_abs']:.4f}, strongest candidate the same on {100 * row['argmax_agree']:.0f} % of edges")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
