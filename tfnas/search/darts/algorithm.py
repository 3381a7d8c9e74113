"""DARTS as a search algorithm: the supernet (micro builder), bi-level training, finalisation by the ops.

    supernet = build_supernet(macro_desc)      every node reads every earlier state through a mixed edge
    train: BilevelSearch on (weight half, architecture half), one keyed loop "search"
    final = finalize(supernet, alphas)         each node keeps its best-ranked edges

Besides the runner's files (final_weights.* are the trained supernet's) it writes supernet.pbtxt (the search network with its current alphas, also
after an interrupted run) and alpha_history.jsonl, and shows the alphas in TensorBoard (monitor.py).
"""
from __future__ import annotations

from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import algorithm as algorithm_lib
from tfnas.search.algorithm import Algorithm, check

class Darts(Algorithm):
    name = "DARTS"

    def validate(self, config: config_pb2.ExperimentConfig) -> None:
        d = config.search.darts
        check(d.order in (1, 2), "search.darts.order", "1 or 2", d.order)
        check(1 <= d.edges_per_node <= 2, "search.darts.edges_per_node",
              "1 or 2 (the first node of a cell reads only its two inputs)", d.edges_per_node)
        from tfnas.config import check_optimizer
        check_optimizer("search.darts.alpha_optimizer", d.alpha_optimizer)
        algorithm_lib.check_primitives("search.darts.primitives", d.primitives)
        check(d.max_skip_connect >= 0, "search.darts.max_skip_connect", ">= 0 (0: no cap)", d.max_skip_connect)
        check(0 <= d.warmup_epochs < max(config.search.trainer.epochs, 1), "search.darts.warmup_epochs",
              f">= 0 and below search.trainer.epochs ({config.search.trainer.epochs})", d.warmup_epochs)
        check(d.partial_channels >= 0, "search.darts.partial_channels", ">= 0 (0 or 1: off; PC-DARTS: 4)",
              d.partial_channels)
        if d.partial_channels > 1:
            check(config.search.macro.channels % d.partial_channels == 0, "search.macro.channels",
                  f"a multiple of search.darts.partial_channels ({d.partial_channels})",
                  config.search.macro.channels)
        check(d.beta_regularization >= 0, "search.darts.beta_regularization", ">= 0 (0: off)", d.beta_regularization)

    def run(self, run) -> pb.ModelDesc | None:
        from tfnas import checkpoints, rundir
        from tfnas.search import darts
        from tfnas.search.darts.monitor import SearchMonitor

        s = run.config.search
        train_stream = run.stream(run.weight_split, run.seed)
        val_stream = run.stream(run.arch_split, run.seed + 1)
        steps = run.steps_per_epoch([train_stream, val_stream])
        supernet, net, searcher = build_search(run.config, run.macro_desc, steps)
        monitor = SearchMonitor(run.out, run.writer, net, supernet, s.darts.edges_per_node, s.darts.max_skip_connect)
        logs, done = run.train(checkpoints.SEARCH, searcher, [train_stream, val_stream], s.trainer.epochs, steps,
                               callbacks=[monitor])
        alphas = {g: v.numpy() for g, v in net.alpha_vars.items()}
        run.save(rundir.SUPERNET_DESC, darts.with_alphas(supernet, alphas))
        if not done:
            return None
        run.save_final_weights(net)
        final = darts.finalize(supernet, alphas, s.darts.edges_per_node, s.darts.max_skip_connect)
        final.source = supernet.source
        if run.verbose:
            print(f"final val_accuracy {logs.get('val_accuracy', float('nan')):.4f}")
        return final


def build_search(config: config_pb2.ExperimentConfig, macro_desc: pb.ModelDesc, steps_per_epoch: int):
    """(supernet descriptor, its compiled network, the BilevelSearch with both optimisers) of the
    configuration: what the search trains, and what the benchmark times."""
    from tfnas import compiler
    from tfnas.search import darts
    from tfnas.search.darts.bilevel import BilevelSearch
    from tfnas.search.runner import search_options
    from tfnas.train import optim

    s = config.search
    supernet = darts.build_supernet(macro_desc, list(s.darts.primitives), s.darts.alpha_init_scale,
                                    seed=int(config.seed), partial_channels=s.darts.partial_channels,
                                    edge_normalization=s.darts.edge_normalization)
    supernet.source = f"darts search ({config.name or 'unnamed'})"
    net = compiler.compile_model(supernet, search_options(config))
    weight_opt = optim.make_optimizer(s.trainer.optimizer, s.trainer.epochs, steps_per_epoch, "weight_optimizer")
    # The alpha schedule spans the epochs that take alpha steps (those after the warm-up).
    alpha_epochs = s.trainer.epochs - s.darts.warmup_epochs
    alpha_opt = optim.make_optimizer(s.darts.alpha_optimizer, alpha_epochs, steps_per_epoch, "alpha_optimizer")
    searcher = BilevelSearch(net, weight_opt, alpha_opt, s.trainer.optimizer, s.darts.alpha_optimizer,
                             order=s.darts.order, beta_regularization=s.darts.beta_regularization,
                             epochs=alpha_epochs, steps_per_epoch=steps_per_epoch,
                             warmup_epochs=s.darts.warmup_epochs)
    return supernet, net, searcher


ALGORITHM = Darts()
