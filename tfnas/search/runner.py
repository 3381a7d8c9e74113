"""`tfnas search`: configuration -> final descriptor, the DARTS way (seed 000):

    macro_desc = build_macro(conf_macro); model_desc = build_desc(macro_desc, micro_builder)
    model = build_model(model_desc); train(model); final_desc = finalize(model)

The run directory holds config.yaml (what was run), supernet.pbtxt (the search network with its current
alphas), final_desc.pbtxt, alpha_history.jsonl, tensorboard/ and checkpoints/search/. Running the same
command again on the same directory resumes where it stopped; a finished search is not rerun.
"""
from __future__ import annotations

import pathlib

import keras
import numpy as np
import tensorflow as tf

from tfnas import checkpoints, compiler, config as config_lib, data as data_lib, descriptors, macro, runtime
from tfnas.errors import UserError
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import darts
from tfnas.search.bilevel import BilevelSearch
from tfnas.summaries import SearchMonitor
from tfnas.train import optim
from tfnas.train.loop import run_loop

CONFIG_FILE = "config.yaml"
FINAL_DESC = "final_desc.pbtxt"
SUPERNET_DESC = "supernet.pbtxt"


def seed_everything(config: config_pb2.ExperimentConfig) -> None:
    keras.utils.set_random_seed(int(config.seed))
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def prepare_run_dir(out_dir: str | pathlib.Path, config: config_pb2.ExperimentConfig) -> pathlib.Path:
    """Creates the run directory, or checks that an existing one holds a run of the same configuration
    (so a resumed run never mixes two experiments, and nothing already written is overwritten)."""
    out = pathlib.Path(out_dir)
    saved = out / CONFIG_FILE
    if saved.exists():
        previous = config_lib.load_config(saved)
        if previous != config:
            raise UserError(f"{out} holds a run with another configuration ({saved}); "
                            "use a new --out directory, or the same configuration to resume it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        config_lib.save_config(config, saved)
    return out


def compiler_options(darts_cfg: config_pb2.DartsConfig) -> pb.CompilerOptions:
    """The search network's compiler options: compiler.SEARCH_OPTIONS with the configuration's choices of
    speed against start-up (lead_edges_apart) and memory (recompute_depthwise)."""
    options = pb.CompilerOptions()
    options.CopyFrom(compiler.SEARCH_OPTIONS)
    options.lead_edges_apart = darts_cfg.lead_edges_apart
    options.recompute_depthwise = darts_cfg.recompute_depthwise
    return options


def search(config: config_pb2.ExperimentConfig, out_dir: str | pathlib.Path, verbose: int = 1,
           stop_after_steps: int | None = None, dataset: data_lib.Dataset | None = None) -> pb.ModelDesc | None:
    """Runs (or resumes) a search; returns the final descriptor (None if stopped early on purpose).

    `dataset` replaces the configured one (tests and notebooks that hold their data in memory).
    """
    if config.search.algorithm != config_pb2.SearchConfig.DARTS:
        name = config_pb2.SearchConfig.Algorithm.Name(config.search.algorithm)
        raise UserError(f"search.algorithm: {name} is not implemented yet (available: DARTS)")
    # The data first: a run that cannot start (no dataset offline, say) leaves no directory behind.
    dataset = dataset or data_lib.load_dataset(config.data)
    out = prepare_run_dir(out_dir, config)
    final_path = out / FINAL_DESC
    if final_path.exists() and (out / "checkpoints" / checkpoints.SEARCH / "done").exists():
        return descriptors.load_model_desc(final_path)
    seed_everything(config)
    s = config.search
    mean, std = data_lib.normalization(dataset, config.data)
    (xt, yt), (xv, yv) = data_lib.search_split(dataset, config.data.search_train_fraction)
    batch = s.trainer.batch_size
    train_stream = data_lib.BatchStream(xt, yt, batch, seed=int(config.seed))
    val_stream = data_lib.BatchStream(xv, yv, batch, seed=int(config.seed) + 1)
    steps = min(train_stream.steps_per_epoch, val_stream.steps_per_epoch)
    if s.trainer.max_steps_per_epoch:
        steps = min(steps, s.trainer.max_steps_per_epoch)

    macro_desc = macro.build_macro(s.macro, dataset.image_shape, dataset.num_classes)
    supernet = darts.build_supernet(macro_desc, list(s.darts.primitives), s.darts.alpha_init_scale,
                                    seed=int(config.seed))
    supernet.source = f"darts search ({config.name or 'unnamed'})"
    net = compiler.compile_model(supernet, compiler_options(s.darts))
    weight_opt = optim.make_optimizer(s.trainer.optimizer, s.trainer.epochs, steps, "weight_optimizer")
    alpha_opt = optim.make_optimizer(s.darts.alpha_optimizer, s.trainer.epochs, steps, "alpha_optimizer")
    searcher = BilevelSearch(net, weight_opt, alpha_opt, s.trainer.optimizer, s.darts.alpha_optimizer,
                             order=s.darts.order)

    image_spec = tf.TensorSpec([batch, *dataset.image_shape], tf.uint8)
    label_spec = tf.TensorSpec([batch], tf.int64)

    @tf.function(input_signature=[image_spec, label_spec, image_spec, label_spec], autograph=False)
    def step(x_train, y_train, x_val, y_val):
        prep = lambda x: data_lib.preprocess(x, mean, std)  # noqa: E731
        return searcher.train_step(((prep(x_train), y_train), (prep(x_val), y_val)))

    loop_ckpt = checkpoints.LoopCheckpoint(out, checkpoints.SEARCH, net=checkpoints.named_variables(net),
                                           weight_opt=weight_opt, alpha_opt=alpha_opt,
                                           metrics=checkpoints.metric_variables(searcher.trackers))
    monitor = SearchMonitor(out, net, supernet, s.darts.edges_per_node)
    with runtime.training_graph_options(s.trainer.graph_optimizer):
        logs = run_loop(lambda *b: step(*b), [train_stream, val_stream], s.trainer.epochs, steps, loop_ckpt,
                        searcher.reset_trackers, callbacks=[monitor],
                        checkpoint_every_steps=s.trainer.checkpoint_every_steps, verbose=verbose,
                        stop_after_steps=stop_after_steps)
    alphas = {g: v.numpy() for g, v in net.alpha_vars.items()}
    trained = pb.ModelDesc()
    trained.CopyFrom(supernet)
    for g, a in alphas.items():
        del trained.alpha_groups[g].values[:]
        trained.alpha_groups[g].values.extend(a.astype(np.float32).ravel().tolist())
    descriptors.save(trained, out / SUPERNET_DESC)
    if not loop_ckpt.done:
        return None
    final = darts.finalize(supernet, alphas, s.darts.edges_per_node)
    final.source = supernet.source
    descriptors.save(final, final_path)
    if verbose:
        print(f"final val_accuracy {logs.get('val_accuracy', float('nan')):.4f}")
    return final
