#!/usr/bin/env python
"""tfnas search quality: do the cells DARTS finds beat random cells of the same space?

    python benchmarks/search_quality.py [--search-seeds N] [--random N] [--planted-seeds N]
                                        [--train-examples N] [--eval-epochs N] [--eval-seed S]
                                        [--set KEY=VALUE ...] [--out DIR] [--json PATH] [--quick]

Li & Talwalkar (UAI 2019) found that random cells of the DARTS space, trained the same way, come close to
the cells DARTS finds: a search is only worth its cost if it beats that baseline. This script measures it
for whatever the configuration's search is when it runs (configs/default.yaml with the --set items), so a
change of the search can be judged by what it finds rather than by its losses:

    found     one DARTS search per seed (0 .. N-1), run as `tfnas search` runs it: configs/default.yaml
              <- the --set items <- seed=s, on the built-in digits, through search.runner.search.
    random    cells drawn with tfnas.search.random's sampler from the same space (the search's primitives
              without `none`, its edges per node, its nodes per cell), kept only if their evaluation
              network has within 10 % of the found group's mean parameter count, so that size does not
              decide the comparison. Draw k is the sampler's trial k of --random-seed; after --max-draws
              draws the closest of the rejected ones fill the group and the report says so.
    eval      every cell of both groups trained from scratch the same way: tfnas.evaluation with the
              configuration's eval section and one eval seed, on the first --train-examples training
              digits, tested on the whole test split. With the whole training split nearly every cell of
              the space makes only a handful of mistakes on the test split, too few to tell cells apart;
              fewer training images leave more to tell, and --eval-epochs must then be long enough for
              the slowest cells to converge, or the comparison measures training speed instead.
    planted   DARTS searches on tasks.far_correlation_task(seed), whose answer is known: only dil_conv_5x5
              reaches far enough, so the edge from s0 into the first node must keep it. The task fixes the
              network and the candidates of tests/test_search.py (2 cells, 1 node, 4 channels, stem
              multiplier 2, batch 32, none/skip_connect/sep_conv_3x3/dil_conv_5x5); the alpha optimiser,
              the epochs and the rest of the schedule are the configuration's (the test pins its own, as
              it checks that the mechanism works; here the question is whether the configured search
              finds the answer). Success rate over the seeds.

The --set items reach every search and every evaluation (e.g. --set search.darts.max_skip_connect=2 to
measure that variant), except where the planted task fixes a value; the keys this script sets itself
(seed, data.max_train_examples, eval.trainer.epochs) have their own options and are refused in --set.

Everything runs in this process, one run after the other, each phase's library output going to a log
file under --out (default: a temporary directory, removed at the end; name one to keep the run
directories). A run directory that already holds a finished search or evaluation is reused, as the tfnas
commands reuse one, so an interrupted benchmark continues where it stopped when given the same --out
(its wall times then count only what ran again). --json writes the machine, the settings, the effective
configurations and every figure, rewritten after each phase.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):  # runs from a checkout without installing tfnas
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import tfnas  # noqa: E402  (sets TF_ENABLE_ONEDNN_OPTS=1 unless the user chose otherwise; no TF import)
from bench import cpu_info, git_state, package_version  # noqa: E402

DEFAULTS = dict(search_seeds=3, random=3, planted_seeds=4, train_examples=150, eval_epochs=160)
# --quick: one run of each kind, a few steps each; the configuration's epoch counts stay (a warm-up
# schedule is checked against them), their epochs are cut to a few steps instead.
QUICK = dict(search_seeds=1, random=1, planted_seeds=1, train_examples=150, eval_epochs=2)
QUICK_SETTINGS = ["search.trainer.max_steps_per_epoch=3"]
# Keys whose value is this script's to choose: the option that sets each.
OWNED_KEYS = {"seed": "--search-seeds, --eval-seed and --planted-seeds", "data.max_train_examples": "--train-examples",
              "eval.trainer.epochs": "--eval-epochs"}
PARAM_TOLERANCE = 0.10
PLANTED_OP = "dil_conv_5x5"
PLANTED_PRIMITIVES = ["none", "skip_connect", "sep_conv_3x3", PLANTED_OP]
# The network of tests/test_search.py::test_search_ranks_the_only_useful_operation_first: two cells of one
# node, so that only PLANTED_OP on the s0 edge reaches the columns the classes differ in.
PLANTED_TASK = ["search.macro.cells=2", "search.macro.nodes=1", "search.macro.channels=4",
                "search.macro.stem_multiplier=2", "search.macro.reduction_cells=[]", "search.trainer.batch_size=32",
                f"search.darts.primitives=[{','.join(PLANTED_PRIMITIVES)}]"]


# ------------------------------------------------------------------------------------------------------
# Runs


class Bench:
    """The benchmark's state: its options, its output directory, what it has measured so far."""

    def __init__(self, args: argparse.Namespace, out: pathlib.Path):
        self.args, self.out = args, out
        self.settings = (QUICK_SETTINGS if args.quick else []) + list(args.settings)
        self.result: dict = {}
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def config(self, *extra: str):
        """configs/default.yaml <- --quick's settings <- the --set items <- `extra`."""
        from tfnas import config as config_lib
        return config_lib.load_config(None, self.settings + list(extra))

    @contextlib.contextmanager
    def quiet(self, name: str):
        """The library's own output (per-epoch lines of an evaluation) into logs/<name>.log, and a fresh Keras
        state, so each run starts as a command in a new process would."""
        import keras
        keras.utils.clear_session(free_memory=True)
        with open(self.out / "logs" / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
            yield

    def save(self) -> None:
        if self.args.json:
            path = pathlib.Path(self.args.json)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(self.result, indent=1))
            os.replace(tmp, path)


def last_history(run_dir: pathlib.Path) -> dict:
    """The last epoch of a search's alpha_history.jsonl (losses and accuracies), without its alphas."""
    from tfnas import rundir
    lines = (run_dir / rundir.ALPHA_HISTORY).read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    return {k: v for k, v in last.items() if not isinstance(v, (dict, list))}


def found_searches(b: Bench, configs: dict) -> list[dict]:
    """The configured search once per {seed: configuration}, as `tfnas search --set seed=s` runs it."""
    from tfnas import genotypes
    from tfnas.search import runner

    found = []
    for i, (seed, cfg) in enumerate(configs.items()):
        run_dir = b.out / "found" / f"search-seed{seed}"
        start = time.perf_counter()
        with b.quiet(f"search-seed{seed}"):
            final = runner.search(cfg, run_dir, verbose=0)
        seconds = time.perf_counter() - start
        genotype = genotypes.format_genotype(genotypes.from_desc(final))
        found.append(dict(group="found", name=f"found-seed{seed}", seed=seed, genotype=genotype, desc=final,
                          search_s=seconds, search_last_epoch=last_history(run_dir)))
        print(f"[found {i + 1}/{len(configs)}] search seed {seed}: {seconds:.0f} s, {genotype}", flush=True)
    return found


def eval_params(desc, ecfg, dataset) -> int:
    """Parameters of `desc`'s evaluation network (auxiliary tower excluded, as DARTS counts them), built
    as tfnas.evaluation builds it: expanded to eval.macro, compiled with the evaluation options."""
    from tfnas import architectures, compiler
    net = compiler.compile_model(architectures.resolve(desc, ecfg.eval.macro, dataset.image_shape,
                                                       dataset.num_classes, require_final=True),
                                 compiler.EVAL_OPTIONS)
    return compiler.count_params(net, include_aux=False)


def random_cells(b: Bench, cfg, ecfg, dataset, target: float, count: int) -> tuple[list[dict], list[dict], bool]:
    """`count` sampled cell pairs whose evaluation network is within PARAM_TOLERANCE of `target`
    parameters; returns (cells, every draw, whether the cap was hit)."""
    from tfnas import genotypes, macro as macro_lib
    from tfnas.search import random as random_lib

    macro_desc = macro_lib.build_macro(cfg.search.macro, dataset.image_shape, dataset.num_classes)
    primitives, edges = list(cfg.search.darts.primitives), cfg.search.darts.edges_per_node
    seed, draws, kept = b.args.random_seed, [], []
    low, high = (1 - PARAM_TOLERANCE) * target, (1 + PARAM_TOLERANCE) * target
    for k in range(b.args.max_draws if count else 0):
        desc = random_lib.sample(macro_desc, primitives, edges, seed, k)
        params = eval_params(desc, ecfg, dataset)
        draw = dict(draw=k, params=params, within=bool(low <= params <= high), desc=desc)
        draws.append(draw)
        if draw["within"]:
            kept.append(draw)
            if len(kept) == count:
                break
    capped = len(kept) < count
    if capped:  # the closest of the others, marked as outside the tolerance
        rest = sorted((d for d in draws if not d["within"]), key=lambda d: abs(d["params"] - target))
        kept += rest[:count - len(kept)]
    cells = [dict(group="random", name=f"random-draw{d['draw']}", draw=d["draw"], sampler=[seed, d["draw"]],
                  params=d["params"], within_tolerance=d["within"], desc=d["desc"],
                  genotype=genotypes.format_genotype(genotypes.from_desc(d["desc"]))) for d in kept]
    return cells, [{k: v for k, v in d.items() if k != "desc"} for d in draws], capped


def evaluate_cells(b: Bench, cells: list[dict], ecfg, dataset) -> None:
    """Each cell trained from scratch with the same recipe; its figures added to the cell's dict."""
    from tfnas import evaluation

    for i, cell in enumerate(cells):
        start = time.perf_counter()
        with b.quiet(f"eval-{cell['name']}"):
            metrics = evaluation.evaluate(ecfg, cell["desc"], b.out / "eval" / cell["name"], verbose=0,
                                          dataset=dataset)
        cell.update(eval_s=time.perf_counter() - start, test_accuracy=metrics["test_accuracy"],
                    test_loss=metrics["test_loss"], train_accuracy=metrics.get("train_accuracy"),
                    eval_params=metrics["params"], params_with_aux=metrics["params_with_aux"])
        print(f"[eval {i + 1}/{len(cells)}] {cell['name']}: test accuracy {cell['test_accuracy']:.4f}, "
              f"{cell['eval_params']:,} params, {cell['eval_s']:.0f} s", flush=True)


def planted_searches(b: Bench, configs: dict) -> list[dict]:
    """DARTS on the far-correlation task, per {seed: configuration}: does the s0 edge of the first node
    keep the planted op?"""
    from tfnas import alphas, descriptors, rundir, tasks
    from tfnas.search import runner

    runs = []
    for i, (seed, cfg) in enumerate(configs.items()):
        run_dir = b.out / "planted" / f"search-seed{seed}"
        start = time.perf_counter()
        with b.quiet(f"planted-seed{seed}"):
            final = runner.search(cfg, run_dir, verbose=0, dataset=tasks.far_correlation_task(seed))
        seconds = time.perf_counter() - start
        s0_ops = [e.op.name for e in final.cells[0].nodes[0].edges if list(e.inputs) == [0]]
        supernet = descriptors.load_model_desc(run_dir / rundir.SUPERNET_DESC)
        # Row 0 of the normal cells' candidate weights, as finalisation reads them: the edge from s0 into node 0.
        weights = alphas.group_weights(supernet.alpha_groups["normal"], alphas.alpha_arrays(supernet)["normal"])[0]
        runs.append(dict(seed=seed, s0_op=s0_ops[0] if s0_ops else None, success=s0_ops[:1] == [PLANTED_OP],
                         s0_weights=dict(zip(PLANTED_PRIMITIVES, (float(w) for w in weights))),
                         epochs=cfg.search.trainer.epochs, search_s=seconds, last_epoch=last_history(run_dir)))
        r = runs[-1]
        print(f"[planted {i + 1}/{len(configs)}] seed {seed}: s0 edge {r['s0_op']} "
              f"({'found' if r['success'] else 'missed'}; {PLANTED_OP} weight {r['s0_weights'][PLANTED_OP]:.4f}), "
              f"{seconds:.0f} s", flush=True)
    return runs


# ------------------------------------------------------------------------------------------------------
# Report


def summary(values: list[float]) -> dict:
    """Mean, sample standard deviation (n - 1; None for one value), min and max."""
    return dict(n=len(values), mean=statistics.fmean(values) if values else None,
                sd=statistics.stdev(values) if len(values) > 1 else None,
                min=min(values, default=None), max=max(values, default=None))


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def report(result: dict) -> str:
    m, s, d = result["machine"], result["settings"], result["default_config"]
    lines = [
        "=" * 100,
        f"tfnas search quality, {result['started']}: DARTS's cells against random cells of its space",
        f"machine: {m['cpu_count']} x {m['cpu_model']}; load average at start {m['load_average_at_start']}; "
        f"{m['tensorflow_package']}, {m['keras_package']}; tfnas {m['tfnas_git']}",
        f"configs/default.yaml: sha256 {d['sha256'][:12]}"
        + (", with uncommitted changes" if d["uncommitted_changes"] else ""),
        f"settings: --set {s['set'] or '(none)'}{' --quick' if s['quick'] else ''}",
        f"search: {s['search']}",
        f"evaluation: {s['eval']}",
    ]
    if s["planted"]:
        lines.append(f"planted-op searches: {s['planted']}")
    lines += ["", f"{'group':<7} {'run':>4} {'eval params':>12} {'test acc %':>10}  genotype   "
                  "(run: s = search seed, d = random draw)"]
    for c in result["cells"]:
        flag = "" if c.get("within_tolerance", True) else "  (outside the parameter tolerance)"
        label = f"s{c['seed']}" if c["group"] == "found" else f"d{c['draw']}"
        lines.append(f"{c['group']:<7} {label:>4} {c['eval_params']:>12,} {pct(c.get('test_accuracy')):>10}  "
                     f"{c['genotype']}{flag}")
    lines.append("")
    lines.append(f"{'group':<7} {'n':>2} {'mean %':>7} {'sd %':>6} {'min-max %':>13} {'mean params':>12}"
                 "   (test accuracy; sd: sample standard deviation, n - 1)")
    for name, g in result["groups"].items():
        a = g["test_accuracy"]
        lines.append(f"{name:<7} {a['n']:>2} {pct(a['mean']):>7} {pct(a['sd']):>6} "
                     f"{pct(a['min']) + '-' + pct(a['max']):>13} {g['params_mean']:>12,.0f}")
    diff = result.get("found_minus_random")
    if diff is not None:
        lines.append(f"found - random: {100 * diff:+.2f} points of test accuracy (mean against mean)")
    r = result["random"]
    lines.append(f"random cells: {r['kept']} of {r['draws']} draws within {100 * PARAM_TOLERANCE:.0f} % of "
                 f"{r['target_params']:,.0f} params"
                 + (f"; CAP HIT: the {r['max_draws']}-draw cap was reached, the closest others fill the group"
                    if r["cap_hit"] else ""))
    p = result.get("planted")
    if p:
        per_seed = ", ".join(f"seed {x['seed']} {x['s0_op']}" for x in p["runs"])
        lines.append(f"planted op ({PLANTED_OP} on the s0 edge of cell 0, node 0; {p['epochs']} epochs): "
                     f"{p['successes']}/{len(p['runs'])} seeds = {100 * p['success_rate']:.0f} % ({per_seed})")
    t = result["wall_s"]
    lines.append("wall time: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in t.items() if k != "total")
                 + f"; total {t['total'] / 60:.1f} min")
    return "\n".join(lines)


def enum_name(message, field: str) -> str:
    return message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[getattr(message, field)].name


def search_text(cfg, data: str | None = None) -> str:
    """A search configuration in one line: what a reader needs to tell two runs' searches apart."""
    s, d = cfg.search, cfg.search.darts
    opt = d.alpha_optimizer
    steps = f" of at most {s.trainer.max_steps_per_epoch} steps" if s.trainer.max_steps_per_epoch else ""
    schedule = "".join(f", {name} {getattr(d, name)}" for name in ("warmup_epochs", "max_skip_connect",
                                                                   "beta_regularization"))
    return (f"{enum_name(s, 'algorithm')} order {d.order}, {s.trainer.epochs} epochs{steps}, batch "
            f"{s.trainer.batch_size}, {s.macro.channels} channels, {s.macro.cells} cells, {s.macro.nodes} nodes, "
            f"{len(d.primitives)} primitives, alphas {enum_name(opt, 'kind')} lr {opt.learning_rate:g} "
            f"{enum_name(opt, 'schedule')} weight decay {opt.weight_decay:g}{schedule}; "
            f"data {data or cfg.data.dataset}")


def machine() -> dict:
    info = cpu_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(cpu_count=info["cpu_count"], cpu_model=info["cpu_model"], cpu_ghz=info["cpu_ghz"],
                load_average_at_start=[round(x, 2) for x in load] if load else None,
                tensorflow_package=package_version("tensorflow-cpu", "tensorflow", "tf-nightly"),
                keras_package=package_version("keras"), tfnas=tfnas.__version__, tfnas_git=git_state())


def default_config_state() -> dict:
    """Which configs/default.yaml the run read: its hash and whether it differs from the commit."""
    import hashlib
    import subprocess

    from tfnas import config as config_lib
    path = config_lib.DEFAULT_CONFIG_PATH
    try:
        changed = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", str(path)],
                                      capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        changed = None
    return dict(path=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest(), uncommitted_changes=changed)


def public(cell: dict) -> dict:
    """A cell's figures without its descriptor (the genotype names it)."""
    return {k: v for k, v in cell.items() if k != "desc"}


def run(b: Bench) -> dict:
    from google.protobuf import json_format

    from tfnas import data as data_lib

    a, t0 = b.args, time.perf_counter()
    wall: dict = {}
    result = b.result
    result.update(benchmark="tfnas search quality (search_quality.py)",
                  started=datetime.datetime.now().isoformat(timespec="seconds"), machine=machine(), wall_s=wall)
    # Every configuration is read now: configs/default.yaml may change while the benchmark runs (another
    # experiment in the same checkout), and one benchmark must measure one configuration.
    found_cfgs = {s: b.config(f"seed={s}") for s in range(a.search_seeds)}
    planted_epochs = [f"search.trainer.epochs={a.planted_epochs}"] if a.planted_epochs else []
    planted_cfgs = {s: b.config(*PLANTED_TASK, *planted_epochs, f"seed={s}") for s in range(a.planted_seeds)}
    ecfg = b.config(f"seed={a.eval_seed}", f"data.max_train_examples={a.train_examples}",
                    f"eval.trainer.epochs={a.eval_epochs}")
    search_cfg = found_cfgs[0]
    result["default_config"] = default_config_state()
    em = ecfg.eval.macro
    result["settings"] = dict(
        set=a.settings, quick=a.quick, search_seeds=a.search_seeds, random=a.random, random_seed=a.random_seed,
        max_draws=a.max_draws, planted_seeds=a.planted_seeds, planted_epochs=a.planted_epochs or None,
        train_examples=a.train_examples, eval_epochs=a.eval_epochs, eval_seed=a.eval_seed,
        param_tolerance=PARAM_TOLERANCE, out=str(b.out),
        search=search_text(search_cfg),
        planted=search_text(planted_cfgs[0], "tasks.far_correlation_task(seed)") if planted_cfgs else None,
        eval=(f"{em.channels} channels, {em.cells} cells, {ecfg.eval.trainer.epochs} epochs, batch "
              f"{ecfg.eval.trainer.batch_size}, seed {a.eval_seed}, on the first {a.train_examples} training "
              f"images of {ecfg.data.dataset}, tested on all of its test split"),
        search_config=json_format.MessageToDict(search_cfg.search, preserving_proto_field_name=True),
        eval_config=json_format.MessageToDict(ecfg.eval, preserving_proto_field_name=True),
        planted_config=(json_format.MessageToDict(planted_cfgs[0].search, preserving_proto_field_name=True)
                        if planted_cfgs else None))
    print(f"machine: {result['machine']['cpu_count']} x {result['machine']['cpu_model']}; tfnas "
          f"{result['machine']['tfnas_git']}; output in {b.out}", flush=True)
    print(f"search: {result['settings']['search']}\nevaluation: {result['settings']['eval']}", flush=True)

    start = time.perf_counter()
    found = found_searches(b, found_cfgs)
    wall["found_searches"] = time.perf_counter() - start
    result["found_searches"] = [public(c) for c in found]
    b.save()

    start = time.perf_counter()
    dataset = data_lib.load_dataset(ecfg.data)
    for cell in found:
        cell["params"] = eval_params(cell["desc"], ecfg, dataset)
    target = statistics.fmean(c["params"] for c in found)
    random, draws, capped = random_cells(b, search_cfg, ecfg, dataset, target, a.random)
    wall["random_sampling"] = time.perf_counter() - start
    result["random"] = dict(target_params=target, kept=sum(c["within_tolerance"] for c in random), draws=len(draws),
                            max_draws=a.max_draws, cap_hit=capped, all_draws=draws)
    if capped:
        print(f"WARNING: only {result['random']['kept']} of {a.max_draws} random draws within "
              f"{100 * PARAM_TOLERANCE:.0f} % of {target:,.0f} params; the closest others fill the group", flush=True)
    print(f"[random] {len(random)} cells from {len(draws)} draws, within {100 * PARAM_TOLERANCE:.0f} % of "
          f"{target:,.0f} params: {', '.join(format(c['params'], ',') for c in random)}", flush=True)

    cells = found + random
    result["cells"] = [public(c) for c in cells]
    for group, members in (("found", found), ("random", random)):
        start = time.perf_counter()
        evaluate_cells(b, members, ecfg, dataset)
        wall[f"eval_{group}"] = time.perf_counter() - start
        result["cells"] = [public(c) for c in cells]
        b.save()
    result["groups"] = {name: dict(test_accuracy=summary([c["test_accuracy"] for c in members]),
                                   params_mean=statistics.fmean(c["eval_params"] for c in members))
                        for name, members in (("found", found), ("random", random)) if members}
    if found and random:
        result["found_minus_random"] = (result["groups"]["found"]["test_accuracy"]["mean"]
                                        - result["groups"]["random"]["test_accuracy"]["mean"])

    start = time.perf_counter()
    runs = planted_searches(b, planted_cfgs)
    wall["planted"] = time.perf_counter() - start
    if runs:
        successes = sum(r["success"] for r in runs)
        result["planted"] = dict(op=PLANTED_OP, task=PLANTED_TASK, epochs=runs[0]["epochs"], successes=successes,
                                 success_rate=successes / len(runs), runs=runs)
    wall["total"] = time.perf_counter() - t0
    b.save()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search-seeds", type=int, default=None,
                   help=f"DARTS searches of the found group, seeds 0 .. N-1 (default {DEFAULTS['search_seeds']})")
    p.add_argument("--random", type=int, default=None,
                   help=f"random cells, matched in parameters (default {DEFAULTS['random']})")
    p.add_argument("--random-seed", type=int, default=0, help="the random sampler's seed; draw k is its trial k "
                                                              "(default 0)")
    p.add_argument("--max-draws", type=int, default=200, help="random draws before giving up on the parameter "
                                                              "tolerance (default 200)")
    p.add_argument("--planted-seeds", type=int, default=None,
                   help=f"searches on the planted-op task, seeds 0 .. N-1 (default {DEFAULTS['planted_seeds']})")
    p.add_argument("--planted-epochs", type=int, default=0,
                   help="search epochs on the planted-op task (default 0: the configuration's)")
    p.add_argument("--train-examples", type=int, default=None,
                   help=f"training images of every evaluation (default {DEFAULTS['train_examples']})")
    p.add_argument("--eval-epochs", type=int, default=None,
                   help=f"epochs of every evaluation (default {DEFAULTS['eval_epochs']})")
    p.add_argument("--eval-seed", type=int, default=0, help="the seed of every evaluation (default 0)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a configuration setting, as for the tfnas commands (repeatable); reaches every search "
                        "and evaluation")
    p.add_argument("--out", default=None, help="the run directories and logs (default: a temporary directory, "
                                               "removed at the end)")
    p.add_argument("--json", default=None, help="write the machine, the settings and every figure here")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: one search, random cell and planted search, 3 steps per search epoch, "
                        f"{QUICK['eval_epochs']} evaluation epochs (explicit options still win)")
    args = p.parse_args(argv)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    for name in ("search_seeds", "train_examples", "eval_epochs", "max_draws"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("random", "planted_seeds", "planted_epochs"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be at least 0")
    for item in args.settings:
        key = item.partition("=")[0].strip()
        if key in OWNED_KEYS:
            p.error(f"--set {item}: {key} is this benchmark's to set; use {OWNED_KEYS[key]}")

    from tfnas import config as config_lib
    from tfnas.errors import UserError
    try:  # a bad setting fails here, in one line, before anything runs
        config_lib.load_config(None, (QUICK_SETTINGS if args.quick else []) + args.settings)
    except UserError as err:
        p.error(str(err))

    with contextlib.ExitStack() as stack:
        if args.out:
            out = pathlib.Path(args.out)
        else:
            out = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tfnas_search_quality_")))
        bench = Bench(args, out)
        try:
            result = run(bench)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(report(result))
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
