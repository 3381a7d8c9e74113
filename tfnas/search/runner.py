"""`tfnas search`: configuration -> final descriptor, for every algorithm (search/algorithm.py).

The runner owns what every search shares and hands it to the algorithm as a SearchRun: the configuration,
the data and its split (the weight half and the architecture half), the macro descriptor, the run
directory (tfnas.rundir), keyed resumable training loops with their checkpoints, TensorBoard, and the
files every search writes: config.yaml first, final_cells.png, and final_desc.pbtxt last, so that its
presence marks a finished search. Running the same command again on the same directory resumes where it
stopped; a finished search is not rerun.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from tfnas import checkpoints, compiler, data as data_lib, descriptors, distribute, draw, macro, rundir, runtime
from tfnas.files import AnyPath
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import algorithm as algorithm_lib
from tfnas.train import steps as steps_lib
from tfnas.train.loop import EpochCallback, run_loop


def search_options(config: config_pb2.ExperimentConfig) -> pb.CompilerOptions:
    """The search networks' compiler options: compiler.SEARCH_OPTIONS with the configuration's choices of
    speed against start-up (lead_edges_apart), memory (recompute_depthwise) and precision."""
    options = compiler.run_options(compiler.SEARCH_OPTIONS, config.runtime)
    options.lead_edges_apart = config.search.darts.lead_edges_apart
    options.recompute_depthwise = config.search.darts.recompute_depthwise
    return options


def training_step(config: config_pb2.ExperimentConfig, trainer, image_shape: Sequence[int], mean, std,
                  streams: int, jit_compile: bool | None = None, batch_size: int | None = None):
    """A search's traced step: `streams` uint8 batches (of search.trainer.batch_size unless given), each
    augmented by search.augmentation (seeded by the trainer's step count) and normalised, into
    `trainer.train_step` (what the benchmark times too), under the strategy whose scope this is called in
    (the trainer's), compiled with XLA as runtime.jit_compile says unless `jit_compile` is given."""
    s = config.search
    jit = config.runtime.jit_compile if jit_compile is None else jit_compile
    return steps_lib.training_step(trainer.train_step, batch_size or s.trainer.batch_size, image_shape, mean, std,
                                   streams=streams, augmentation=s.augmentation, seed=int(config.seed),
                                   counter=trainer.step_counter, jit_compile=jit)


class SearchRun:
    """What an algorithm searches with: data, macro descriptor, loops, checkpoints, TensorBoard, files."""

    def __init__(self, config: config_pb2.ExperimentConfig, out: AnyPath, dataset: data_lib.Dataset,
                 verbose: int, stop_after_steps: int | None):
        self.config, self.out, self.dataset, self.verbose = config, out, dataset, verbose
        self.stop_after_steps = stop_after_steps  # tests: end the search early after this many steps
        self.mean, self.std = data_lib.normalization(dataset, config.data)
        self.weight_split, self.arch_split = data_lib.search_split(dataset, config.data.search_train_fraction)
        self.macro_desc = macro.build_macro(config.search.macro, dataset.image_shape, dataset.num_classes)
        self._writer = None

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def writer(self):
        """The search's TensorBoard writer (<run>/tensorboard)."""
        if self._writer is None:
            self._writer = distribute.summary_writer(self.out / rundir.TENSORBOARD)
        return self._writer

    def stream(self, split: tuple[np.ndarray, np.ndarray], seed: int,
               trainer: config_pb2.TrainerConfig | None = None) -> data_lib.BatchStream:
        """Batches of `trainer`'s batch size (default: search.trainer) from `split`, in an order given by
        `seed` alone."""
        trainer = trainer or self.config.search.trainer
        return data_lib.BatchStream(*split, trainer.batch_size, seed=seed)

    def steps_per_epoch(self, streams: Sequence[data_lib.BatchStream],
                        trainer: config_pb2.TrainerConfig | None = None) -> int:
        """One pass over the shortest stream, capped by `trainer`'s max_steps_per_epoch (default:
        search.trainer's)."""
        steps = min(s.steps_per_epoch for s in streams)
        cap = (trainer or self.config.search.trainer).max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def compile(self, desc: pb.ModelDesc, seed: int | None = None) -> compiler.NasModel:
        """`desc` compiled with the search options; with `seed`, its new weights' values depend on it alone
        (what a resumed search needs to rebuild exactly what an uninterrupted one built)."""
        if seed is not None:
            import keras
            keras.utils.set_random_seed(seed)
        return compiler.compile_model(desc, search_options(self.config))

    def train(self, key: str, trainer, streams: Sequence[data_lib.BatchStream],
              epochs: int, steps: int, callbacks: Sequence[EpochCallback] = (),
              trainer_config: config_pb2.TrainerConfig | None = None,
              outputs: Callable[[AnyPath, dict], None] | None = None) -> tuple[dict, bool]:
        """Trains `trainer` (net, train_step, trackers, reset_trackers, step_counter, checkpointed()) for `epochs`
        as the keyed loop `key`: resumed from its checkpoint if it has one (a finished loop only restores
        its final state), saved at every epoch end (and every checkpoint_every_steps of `trainer_config`,
        default search.trainer), committed at the end (`outputs(dir, logs)` writes what the loop hands on, then
        its done marker). Every stream's batches are augmented by search.augmentation. Returns (the last
        logs, whether the loop is done)."""
        cfg = trainer_config or self.config.search.trainer
        step = training_step(self.config, trainer, self.dataset.image_shape, self.mean, self.std, len(streams),
                             batch_size=streams[0].batch_size)
        loop_ckpt = checkpoints.LoopCheckpoint.of_trainer(self.out, key, trainer)
        with runtime.training_graph_options(self.config.runtime.graph_optimizer):
            logs = run_loop(step, streams, epochs, steps, loop_ckpt, trainer.reset_trackers, callbacks=callbacks,
                            checkpoint_every_steps=cfg.checkpoint_every_steps, verbose=self.verbose,
                            stop_after_steps=self.stop_after_steps, outputs=outputs)
        return logs, loop_ckpt.done

    def accuracy(self, net: compiler.NasModel, split: tuple[np.ndarray, np.ndarray]) -> float:
        """Top-1 accuracy of `net` in inference mode on a split (e.g. the architecture half)."""
        from tfnas.evaluation import test_accuracy
        logits_of = steps_lib.inference_function(net, self.dataset.image_shape, self.mean, self.std)
        return test_accuracy(logits_of, *split, self.config.search.trainer.batch_size)[0]

    def save_final_weights(self, net: compiler.NasModel) -> None:
        """The weights of the network the search ends with (final_weights.*), written before the final
        descriptor, whose presence marks a finished search."""
        checkpoints.save_weights(net, self.out / rundir.WEIGHTS)

    def save(self, name: str, data: pb.ModelDesc | bytes | str) -> None:
        """A file of the run directory, written atomically (descriptors by their extension's format)."""
        from tfnas.files import write_atomic
        if isinstance(data, pb.ModelDesc):
            descriptors.save(data, self.out / name)
        else:
            write_atomic(self.out / name, data)


def search(config: config_pb2.ExperimentConfig, out_dir: str | os.PathLike, verbose: int = 1,
           stop_after_steps: int | None = None, dataset: data_lib.Dataset | None = None) -> pb.ModelDesc | None:
    """Runs (or resumes) the configured search; returns the final descriptor (None if stopped early on
    purpose). `dataset` replaces the configured one (tests and notebooks that hold their data in memory)."""
    algorithm = algorithm_lib.get(config.search.algorithm)
    algorithm.validate(config)
    runtime.configure_threads(config.runtime)
    strategy = distribute.get_strategy(config.runtime)  # before any op: a multi-worker run must start first
    # The data first: a run that cannot start (no dataset offline, say) leaves no directory behind.
    dataset = dataset or data_lib.load_dataset(config.data)
    out = rundir.prepare(out_dir, config)
    final_path = out / rundir.FINAL_DESC
    if final_path.exists():
        final = descriptors.load_model_desc(final_path)
        if not (out / rundir.FINAL_CELLS).exists():
            draw.save(draw.draw_cells(final), out / rundir.FINAL_CELLS)
        return final
    runtime.seed_everything(config)
    run = SearchRun(config, out, dataset, verbose, stop_after_steps)
    with strategy.scope():  # the networks, trainers and optimisers the algorithm makes are the strategy's
        final = algorithm.run(run)
    if final is None:
        return None
    final.source = final.source or f"{algorithm.name.lower()} search ({config.name or 'unnamed'})"
    draw.save(draw.draw_cells(final), out / rundir.FINAL_CELLS)
    descriptors.save(final, final_path)  # last: its presence marks a finished search
    distribute.barrier(strategy)  # every worker of a multi-worker run finds it before the next phase reads it
    return final

