"""The resumable training loop that drives a model's `train_step` for search and evaluation alike.

Not `Model.fit`: a checkpoint inside an epoch must record where each data stream is, and Keras 3's fit
fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), while calling `train_step` through
`strategy.run` works. The loop keeps what users expect from fit: a progress bar, per-epoch logs and
callbacks for TensorBoard.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import keras

from tfnas.data import BatchStream
from tfnas.checkpoints import LoopCheckpoint


class EpochCallback:
    """Called after every epoch with the epoch index (0-based) and the epoch's averaged logs."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_step_end(self, step: int, logs: dict) -> None: ...


def run_loop(step_fn: Callable[..., dict], streams: Sequence[BatchStream], epochs: int, steps_per_epoch: int,
             checkpoint: LoopCheckpoint, reset_metrics: Callable[[], None],
             callbacks: Sequence[EpochCallback] = (), on_epoch_begin: Callable[[int], None] | None = None,
             checkpoint_every_steps: int = 0, verbose: int = 1, stop_after_steps: int | None = None) -> dict:
    """Runs `epochs` epochs of `step_fn(*batches)`; resumes from `checkpoint` if it holds state.

    `stop_after_steps` ends the loop early after that many steps of this call (without marking it
    done): tests use it to simulate a crash at an exact point.
    """
    epoch, step_in_epoch, logs = 0, 0, {}
    state = checkpoint.restore()
    if state is not None:
        epoch, step_in_epoch = state["epoch"], state["step"]
        for stream, s in zip(streams, state["streams"]):
            stream.set_state(s)
        logs = state.get("logs", {})
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
            for cb in callbacks:
                cb.on_step_end(global_step, logs)
            if bar is not None:
                bar.stateful_metrics = set(logs)
                bar.update(step_in_epoch, values=[(k, v) for k, v in logs.items() if not k.startswith("lr")],
                           finalize=step_in_epoch == steps_per_epoch)
            interrupted = stop_after_steps is not None and steps_run >= stop_after_steps
            if step_in_epoch < steps_per_epoch and (
                    interrupted or (checkpoint_every_steps and step_in_epoch % checkpoint_every_steps == 0)):
                checkpoint.save({"epoch": epoch, "step": step_in_epoch,
                                 "streams": [s.get_state() for s in streams], "logs": logs})
            if interrupted and step_in_epoch < steps_per_epoch:
                return logs
        logs["epoch_seconds"] = time.perf_counter() - start
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        epoch, step_in_epoch = epoch + 1, 0
        checkpoint.save({"epoch": epoch, "step": 0, "streams": [s.get_state() for s in streams], "logs": logs})
        if stop_after_steps is not None and steps_run >= stop_after_steps and epoch < epochs:
            return logs
    checkpoint.mark_done()
    return logs
