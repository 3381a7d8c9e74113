"""`tfnas search`: configuration -> final descriptor, the DARTS way (seed 000):

    macro_desc = build_macro(conf_macro); model_desc = build_desc(macro_desc, micro_builder)
    model = build_model(model_desc); train(model); final_desc = finalize(model)

The run directory is laid out in `tfnas.rundir`. Running the same command again on the same directory
resumes where it stopped; a finished search is not rerun.
"""
from __future__ import annotations

import pathlib
from typing import NamedTuple, Sequence

import numpy as np

from tfnas import checkpoints, compiler, data as data_lib, descriptors, draw, macro, rundir, runtime
from tfnas.errors import UserError
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts
from tfnas.search.bilevel import BilevelSearch
from tfnas.search.monitor import SearchMonitor
from tfnas.train import optim, steps as steps_lib
from tfnas.train.loop import run_loop


def compiler_options(darts_cfg: config_pb2.DartsConfig) -> pb.CompilerOptions:
    """The search network's compiler options: compiler.SEARCH_OPTIONS with the configuration's choices of
    speed against start-up (lead_edges_apart) and memory (recompute_depthwise)."""
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.lead_edges_apart = darts_cfg.lead_edges_apart
    options.recompute_depthwise = darts_cfg.recompute_depthwise
    return options


class Search(NamedTuple):
    """What a DARTS search trains: the search descriptor, its network and the bi-level trainer."""
    supernet: pb.ModelDesc
    net: compiler.NasModel
    searcher: BilevelSearch


def build_search(config: config_pb2.ExperimentConfig, image_shape: Sequence[int], num_classes: int,
                 steps_per_epoch: int) -> Search:
    """The supernet of the configuration, compiled, with its two optimisers (the benchmark builds its
    networks here too)."""
    s = config.search
    macro_desc = macro.build_macro(s.macro, image_shape, num_classes)
    supernet = darts.build_supernet(macro_desc, list(s.darts.primitives), s.darts.alpha_init_scale,
                                    seed=int(config.seed))
    supernet.source = f"darts search ({config.name or 'unnamed'})"
    net = compiler.compile_model(supernet, compiler_options(s.darts))
    weight_opt = optim.make_optimizer(s.trainer.optimizer, s.trainer.epochs, steps_per_epoch, "weight_optimizer")
    alpha_opt = optim.make_optimizer(s.darts.alpha_optimizer, s.trainer.epochs, steps_per_epoch, "alpha_optimizer")
    searcher = BilevelSearch(net, weight_opt, alpha_opt, s.trainer.optimizer, s.darts.alpha_optimizer,
                             order=s.darts.order)
    return Search(supernet, net, searcher)


def with_alphas(supernet: pb.ModelDesc, alphas: dict[str, np.ndarray]) -> pb.ModelDesc:
    """The search descriptor holding the current alphas (what supernet.pbtxt keeps)."""
    trained = pb.ModelDesc()
    trained.CopyFrom(supernet)
    for g, a in alphas.items():
        del trained.alpha_groups[g].values[:]
        trained.alpha_groups[g].values.extend(a.astype(np.float32).ravel().tolist())
    return trained


def search(config: config_pb2.ExperimentConfig, out_dir: str | pathlib.Path, verbose: int = 1,
           stop_after_steps: int | None = None, dataset: data_lib.Dataset | None = None) -> pb.ModelDesc | None:
    """Runs (or resumes) a search; returns the final descriptor (None if stopped early on purpose).

    `dataset` replaces the configured one (tests and notebooks that hold their data in memory).
    """
    if config.search.algorithm != config_pb2.SearchConfig.DARTS:
        name = config_pb2.SearchConfig.Algorithm.Name(config.search.algorithm)
        raise UserError(f"search.algorithm: {name} is not implemented yet (available: DARTS)")
    runtime.configure_threads(config.runtime)
    # The data first: a run that cannot start (no dataset offline, say) leaves no directory behind.
    dataset = dataset or data_lib.load_dataset(config.data)
    out = rundir.prepare(out_dir, config)
    final_path = out / rundir.FINAL_DESC
    if final_path.exists() and (out / "checkpoints" / checkpoints.SEARCH / "done").exists():
        final = descriptors.load_model_desc(final_path)
        if not (out / rundir.FINAL_CELLS).exists():
            draw.save(draw.draw_cells(final), out / rundir.FINAL_CELLS)
        return final
    runtime.seed_everything(config)
    s = config.search
    mean, std = data_lib.normalization(dataset, config.data)
    (xt, yt), (xv, yv) = data_lib.search_split(dataset, config.data.search_train_fraction)
    batch = s.trainer.batch_size
    train_stream = data_lib.BatchStream(xt, yt, batch, seed=int(config.seed))
    val_stream = data_lib.BatchStream(xv, yv, batch, seed=int(config.seed) + 1)
    steps = min(train_stream.steps_per_epoch, val_stream.steps_per_epoch)
    if s.trainer.max_steps_per_epoch:
        steps = min(steps, s.trainer.max_steps_per_epoch)

    supernet, net, searcher = build_search(config, dataset.image_shape, dataset.num_classes, steps)
    step = steps_lib.training_step(searcher.train_step, batch, dataset.image_shape, mean, std, streams=2)
    loop_ckpt = checkpoints.LoopCheckpoint(out, checkpoints.SEARCH, net=checkpoints.named_variables(net),
                                           weight_opt=searcher.weight_opt, alpha_opt=searcher.alpha_opt,
                                           metrics=checkpoints.metric_variables(searcher.trackers))
    monitor = SearchMonitor(out, net, supernet, s.darts.edges_per_node)
    with runtime.training_graph_options(config.runtime.graph_optimizer):
        logs = run_loop(step, [train_stream, val_stream], s.trainer.epochs, steps, loop_ckpt,
                        searcher.reset_trackers, callbacks=[monitor],
                        checkpoint_every_steps=s.trainer.checkpoint_every_steps, verbose=verbose,
                        stop_after_steps=stop_after_steps)
    alphas = {g: v.numpy() for g, v in net.alpha_vars.items()}
    descriptors.save(with_alphas(supernet, alphas), out / rundir.SUPERNET_DESC)
    if not loop_ckpt.done:
        return None
    final = darts.finalize(supernet, alphas, s.darts.edges_per_node)
    final.source = supernet.source
    draw.save(draw.draw_cells(final), out / rundir.FINAL_CELLS)
    descriptors.save(final, final_path)  # last: its presence (with `done`) marks a finished search
    if verbose:
        print(f"final val_accuracy {logs.get('val_accuracy', float('nan')):.4f}")
    return final
