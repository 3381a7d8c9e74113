"""The resumable training loop that drives a model's `train_step` for search and evaluation alike.

Not `Model.fit`: a checkpoint inside an epoch must record where each data stream is, and Keras 3's fit
fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), while calling `train_step` through
`strategy.run` works. The loop keeps what users expect from fit: a progress bar, per-epoch logs and
callbacks for TensorBoard.
"""
from __future__ import annotations

import math
import pathlib
import time
from typing import Callable, Sequence

import keras

from tfnas import faults
from tfnas.checkpoints import LoopCheckpoint
from tfnas.data import BatchStream
from tfnas.errors import UserError
from tfnas.proto import search_pb2


class EpochCallback:
    """Called after every epoch with the epoch index (0-based) and the epoch's averaged logs."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_step_end(self, step: int, logs: dict) -> None: ...


class TrainingDiverged(UserError):
    """A step produced a loss that is not finite; the loop stops before saving anything of it."""


def _stream_states(streams: Sequence[BatchStream]) -> list[search_pb2.StreamState]:
    return [search_pb2.StreamState(**s.get_state()) for s in streams]


def run_loop(step_fn: Callable[..., dict], streams: Sequence[BatchStream], epochs: int, steps_per_epoch: int,
             checkpoint: LoopCheckpoint, reset_metrics: Callable[[], None],
             callbacks: Sequence[EpochCallback] = (), on_epoch_begin: Callable[[int], None] | None = None,
             checkpoint_every_steps: int = 0, verbose: int = 1, stop_after_steps: int | None = None,
             outputs: Callable[[pathlib.Path, dict], None] | None = None) -> dict:
    """Runs `epochs` epochs of `step_fn(*batches)`; resumes from `checkpoint` if it holds state. At the end
    the loop commits: `outputs(dir, logs)` writes what it hands on (from the trained objects and the last
    logs), then its done marker (LoopCheckpoint.commit).
    A done loop restores its final state and runs nothing.

    A loss (any log named "loss" or "*_loss") that is not finite raises TrainingDiverged naming the step,
    before anything of that step is saved: the last good checkpoint stays the newest. `stop_after_steps`
    ends the loop early after that many steps of this call (without committing it): tests use it to stop
    at an exact point. The fault points `<key>:before`, `:during` and `:after` (tfnas.faults) are passed.
    """
    faults.point(checkpoint.key, "before")
    epoch, step_in_epoch, logs = 0, 0, {}
    state = checkpoint.restore()
    if state is not None:
        epoch, step_in_epoch = state.epoch, state.step
        for stream, s in zip(streams, state.streams):
            stream.set_state({"epoch": s.epoch, "position": s.position})
        logs = dict(state.logs)
    done_before = checkpoint.done
    during = faults.during_step(epochs, steps_per_epoch)

    def save(at_epoch: int, at_step: int) -> None:
        checkpoint.save(search_pb2.LoopState(epoch=at_epoch, step=at_step, streams=_stream_states(streams),
                                             logs=logs))

    steps_run = 0
    while epoch < epochs:
        if step_in_epoch == 0:
            reset_metrics()
        if on_epoch_begin is not None:
            on_epoch_begin(epoch)
        # The step's logs are already epoch averages (metric trackers): the bar must show them as they are.
        bar = keras.utils.Progbar(steps_per_epoch, verbose=verbose, unit_name="step",
                                  stateful_metrics=list(logs) or None) if verbose else None
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}")
        start = time.perf_counter()
        while step_in_epoch < steps_per_epoch:
            if verbose and steps_run == 0:
                print("tracing the training step: the first step builds its graph and takes a while (longer "
                      "for larger networks)", flush=True)
            batches = [x for stream in streams for x in stream.next()]
            logs = {k: float(v) for k, v in step_fn(*batches).items()}
            step_in_epoch += 1
            steps_run += 1
            global_step = epoch * steps_per_epoch + step_in_epoch
            _check_finite(logs, checkpoint, epoch, step_in_epoch, global_step)
            if global_step == during:
                faults.point(checkpoint.key, "during")
            for cb in callbacks:
                cb.on_step_end(global_step, logs)
            if bar is not None:
                bar.stateful_metrics = set(logs)
                bar.update(step_in_epoch, values=[(k, v) for k, v in logs.items() if not k.startswith("lr")],
                           finalize=step_in_epoch == steps_per_epoch)
            interrupted = stop_after_steps is not None and steps_run >= stop_after_steps
            if step_in_epoch < steps_per_epoch and (
                    interrupted or (checkpoint_every_steps and step_in_epoch % checkpoint_every_steps == 0)):
                save(epoch, step_in_epoch)
            if interrupted and step_in_epoch < steps_per_epoch:
                return logs
        logs["epoch_seconds"] = time.perf_counter() - start
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        epoch, step_in_epoch = epoch + 1, 0
        save(epoch, 0)
        if stop_after_steps is not None and steps_run >= stop_after_steps and epoch < epochs:
            return logs
    if not done_before:
        checkpoint.commit(None if outputs is None else (lambda out: outputs(out, logs)))
    return logs


def _check_finite(logs: dict, checkpoint: LoopCheckpoint, epoch: int, step: int, global_step: int) -> None:
    for name, value in logs.items():
        if (name == "loss" or name.endswith("_loss")) and not math.isfinite(value):
            newest = checkpoint.manager.latest_checkpoint
            kept = f"the last good checkpoint, {newest}, is kept" if newest else "no checkpoint was saved yet"
            raise TrainingDiverged(f"{checkpoint.key}: {name} is {value} at epoch {epoch + 1}, step {step} (step "
                                   f"{global_step} of the loop); training stopped, {kept}")
