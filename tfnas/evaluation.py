"""`tfnas eval`: train the found architecture from scratch and report its test accuracy.

"Once we find the right architecture, we train the network using this architecture" (seed 004). The
finalised cells are expanded to the evaluation depth and width (DARTS: 20 cells, 36 channels) and compiled
with the evaluation options (seed 000): auxiliary tower with its loss weight, drop path ramped linearly
over the epochs (DARTS: drop_prob * epoch / epochs), affine BatchNorm. Training uses the DARTS recipe:
SGD with momentum and cosine schedule, coupled weight decay, gradient clipping, random crop after padding,
horizontal flip where it makes sense, cutout.

The run directory is laid out in `tfnas.rundir`. Running again on the same directory resumes; a finished
evaluation is not rerun.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from tfnas import architectures, checkpoints, compiler, data as data_lib, descriptors, distribute, rundir, runtime
from tfnas.errors import UserError
from tfnas.files import AnyPath, write_atomic
from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.train import optim, steps as steps_lib
from tfnas.train.loop import EpochCallback, run_loop
from tfnas.train.metrics import correct, cross_entropy
from tfnas.train.supervised import SupervisedTrainer


def has_weights(out: str | os.PathLike) -> bool:
    """Whether an evaluation directory holds finished, trained weights: its training loop is done, and it
    writes them before its done marker."""
    return checkpoints.is_done(out, checkpoints.EVAL)


def test_accuracy(logits_of, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean loss) on a whole split, in inference mode."""
    hits, loss = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        logits = logits_of(x[i:i + batch_size])
        labels = y[i:i + batch_size]
        hits += float(correct(logits, labels))
        loss += float(cross_entropy(logits, labels)) * len(labels)
    return hits / max(len(x), 1), loss / max(len(x), 1)


class EvalMonitor(EpochCallback):
    def __init__(self, run_dir: AnyPath, net, test_split, mean, std, batch_size):
        self.run_dir, self.net, self.test, self.batch = run_dir, net, test_split, batch_size
        self.logits_of = steps_lib.inference_function(net, test_split[0].shape[1:], mean, std)
        self.writer = distribute.summary_writer(run_dir / rundir.TENSORBOARD)
        self.history = []
        path = run_dir / rundir.METRICS
        if path.exists():
            self.history = json.loads(path.read_text()).get("history", [])

    def on_epoch_end(self, epoch, logs):
        acc, loss = test_accuracy(self.logits_of, *self.test, self.batch)
        logs["test_accuracy"], logs["test_loss"] = acc, loss
        with self.writer.as_default(step=epoch + 1):
            for k, v in logs.items():
                tf.summary.scalar(f"epoch/{k}", v)
            if self.net.drop_rate is not None:
                tf.summary.scalar("epoch/drop_path_rate", float(self.net.drop_rate.numpy()))
        self.writer.flush()
        self.history = [h for h in self.history if h["epoch"] <= epoch] + [{"epoch": epoch + 1, **logs}]
        write_atomic(self.run_dir / rundir.METRICS, json.dumps({"history": self.history}, indent=1))
        print(f"epoch {epoch + 1}: test_accuracy {acc:.4f}")


def build_trainer(config: config_pb2.ExperimentConfig, desc: pb.ModelDesc, steps_per_epoch: int
                  ) -> SupervisedTrainer:
    """The evaluation network of `desc`, compiled, with its optimiser (the benchmark builds it here too)."""
    e = config.eval
    net = compiler.compile_model(desc, compiler.run_options(compiler.EVAL_OPTIONS, config.runtime))
    opt = optim.make_optimizer(e.trainer.optimizer, e.trainer.epochs, steps_per_epoch, "optimizer")
    return SupervisedTrainer(net, opt, e.trainer.optimizer)


def training_step(config: config_pb2.ExperimentConfig, trainer: SupervisedTrainer, image_shape, mean, std,
                  jit_compile: bool | None = None):
    """The evaluation's traced step: augmented as `eval.augmentation` says, seeded by the step count; under
    the strategy whose scope this is called in, with XLA as runtime.jit_compile says unless given."""
    e = config.eval
    jit = config.runtime.jit_compile if jit_compile is None else jit_compile
    return steps_lib.training_step(trainer.train_step, e.trainer.batch_size, image_shape, mean, std,
                                   augmentation=e.augmentation, seed=int(config.seed), counter=trainer.step_counter,
                                   jit_compile=jit)


def evaluate(config: config_pb2.ExperimentConfig, arch: str | pb.ModelDesc, out_dir: str | os.PathLike,
             verbose: int = 1, stop_after_steps: int | None = None,
             dataset: data_lib.Dataset | None = None) -> dict | None:
    """Trains `arch` from scratch (or resumes); returns the final metrics (None if stopped on purpose)."""
    runtime.configure_threads(config.runtime)
    strategy = distribute.get_strategy(config.runtime)  # before any op: a multi-worker run must start first
    with strategy.scope():
        return _evaluate(config, arch, out_dir, verbose, stop_after_steps, dataset)


def _evaluate(config, arch, out_dir, verbose, stop_after_steps, dataset) -> dict | None:
    e = config.eval
    dataset = dataset or data_lib.load_dataset(config.data)
    desc = architectures.resolve(arch, e.macro, dataset.image_shape, dataset.num_classes, require_final=True)
    out = rundir.prepare(out_dir, config)
    if (out / rundir.MODEL_DESC).exists() and descriptors.load_model_desc(out / rundir.MODEL_DESC) != desc:
        raise UserError(f"{out} holds the evaluation of another architecture ({out / rundir.MODEL_DESC}); "
                        "use a new --out directory")
    metrics_path = out / rundir.METRICS
    if checkpoints.is_done(out, checkpoints.EVAL):  # its outputs (metrics, weights) come before the marker
        return json.loads(metrics_path.read_text())["final"]
    runtime.seed_everything(config)
    mean, std = data_lib.normalization(dataset, config.data)
    descriptors.save(desc, out / rundir.MODEL_DESC)
    write_atomic(out / rundir.DATASET_INFO, json.dumps({
        "dataset": dataset.name, "image_shape": list(dataset.image_shape), "class_names": dataset.class_names,
        "mean": [float(m) for m in mean], "std": [float(s) for s in std]}, indent=1))

    stream = data_lib.BatchStream(*dataset.train, e.trainer.batch_size, seed=int(config.seed))
    steps = stream.steps_per_epoch
    if e.trainer.max_steps_per_epoch:
        steps = min(steps, e.trainer.max_steps_per_epoch)
    trainer = build_trainer(config, desc, steps)
    net = trainer.net
    step = training_step(config, trainer, dataset.image_shape, mean, std)

    def on_epoch_begin(epoch):
        if net.drop_rate is not None:
            net.drop_rate.assign(e.drop_path_prob * epoch / max(e.trainer.epochs, 1))

    # The drop-path seed generator's state is one of the net's variables, so it is saved with it.
    loop_ckpt = checkpoints.LoopCheckpoint.of_trainer(out, checkpoints.EVAL, trainer)
    monitor = EvalMonitor(out, net, dataset.test, mean, std, e.trainer.batch_size)

    def finish(_outputs, logs):
        """The loop's outputs, in the run directory: the final metrics, then the weights."""
        acc, loss = test_accuracy(monitor.logits_of, *dataset.test, e.trainer.batch_size)
        final = {"test_accuracy": acc, "test_loss": loss, "params": compiler.count_params(net, include_aux=False),
                 "params_with_aux": compiler.count_params(net), "epochs": e.trainer.epochs,
                 "train_accuracy": logs.get("accuracy")}
        write_atomic(metrics_path, json.dumps({"final": final, "history": monitor.history}, indent=1))
        checkpoints.save_weights(net, out / rundir.WEIGHTS)

    with runtime.training_graph_options(config.runtime.graph_optimizer):
        run_loop(step, [stream], e.trainer.epochs, steps, loop_ckpt, trainer.reset_trackers,
                 callbacks=[monitor], on_epoch_begin=on_epoch_begin,
                 checkpoint_every_steps=e.trainer.checkpoint_every_steps, verbose=verbose,
                 stop_after_steps=stop_after_steps, outputs=finish)
    if not loop_ckpt.done:
        return None
    return json.loads(metrics_path.read_text())["final"]
