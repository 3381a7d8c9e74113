"""Keyed checkpoints of the nested search loops (seed 000, "Checkpointing search").

The loops of a run form a tree; a loop's key is its parent's key and its own name and index. Every loop
keeps `<run>/checkpoints/<key>/`: a training loop saves just after each of its iterations (epochs, and if
asked every N steps inside one) a TF checkpoint and a LoopState beside it (protos/.../search.proto); when
it starts and finds its key, it restores both and continues where it was. A loop ends by committing: its
outputs (what the loops after it read: a trial's result, a finalised model) go to `outputs/`, then the
`done` marker, so `is_done` is the one test of completion and a done loop's outputs are always whole.
Keys are built only here, so they can be listed in one place:

    search                                DARTS: the search (arch-training) loop
    search/random/trial-<i>               random search: trial i (outputs: result.json)
    search/petridish                      PetriDish: the loop of search iterations
    search/petridish/iter-<i>/pretrain    its iteration i: pre-training of the parent (outputs: weights)
    search/petridish/iter-<i>/archtrain   its iteration i: arch-training and finalisation (outputs: the
                                          finalised descriptor and weights)
    eval                                  evaluation training from scratch (outputs in the run directory)

Each loop passes the fault-injection points of tfnas.faults (`<key>:before`, `:during`, `:after`).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import tensorflow as tf
from google.protobuf import text_format

from tfnas import distribute, faults, files
from tfnas.errors import UserError
from tfnas.files import AnyPath, write_atomic
from tfnas.proto import search_pb2

SEARCH = "search"
EVAL = "eval"
DONE = "done"


def loop_dir(run_dir: str | os.PathLike, key: str) -> AnyPath:
    """Where the loop `key` of a run keeps its checkpoints, its state and its done marker."""
    return files.path(run_dir) / "checkpoints" / key


def random_trial_key(trial: int) -> str:
    return f"{SEARCH}/random/trial-{trial}"


PETRIDISH_PHASES = ("pretrain", "archtrain")


PETRIDISH = f"{SEARCH}/petridish"


def petridish_key(iteration: int, phase: str) -> str:
    if phase not in PETRIDISH_PHASES:
        raise ValueError(f"unknown PetriDish phase {phase!r}")
    return f"{PETRIDISH}/iter-{iteration}/{phase}"


def named_variables(model) -> tf.Module:
    """Every variable of a Keras model, keyed by its path ("c3/c3.n0.e1.sep_conv_3x3/dw1", ...).

    Keras 3 keeps sub-layers in lists that TensorFlow's object-graph checkpoints do not follow, so a
    plain tf.train.Checkpoint(model=...) silently leaves most weights and every BatchNorm statistic
    out. Keying by path saves all of them, and the names come from descriptor ids, so weights can be
    restored into a model compiled from another descriptor that shares those ops (PetriDish).
    """
    by_path = {}
    for v in model.variables:
        if by_path.setdefault(v.path, v) is not v:
            raise ValueError(f"two variables share the path {v.path!r}, so a checkpoint would drop one")
    holder = tf.Module(name="variables")
    holder.by_path = by_path
    return holder


def metric_variables(trackers: dict) -> tf.Module:
    """The running totals of a step's metric trackers, so that epoch averages survive a resume."""
    holder = tf.Module(name="metrics")
    holder.by_name = {f"{name}/{i}": v for name, m in trackers.items() for i, v in enumerate(m.variables)}
    return holder


def save_weights(model, prefix: str | os.PathLike) -> str:
    """Writes all of the model's variables (name-keyed checkpoint); returns the checkpoint path (on the
    process that writes the run's files)."""
    if not files.writes():
        return str(prefix)
    return tf.train.Checkpoint(model=named_variables(model)).write(str(prefix))


def load_weights(model, prefix: str | os.PathLike) -> None:
    """Restores every variable of `model` by path from `save_weights` output: all of them must be found
    (with their shapes); values in the checkpoint that `model` does not have are left out (a serving
    network restored from the evaluation network's weights has no auxiliary tower). The one way tfnas
    moves weights from one model to another."""
    status = tf.train.Checkpoint(model=named_variables(model)).read(str(prefix))
    status.assert_existing_objects_matched()
    status.expect_partial()  # the values `model` does not have are left out on purpose: no warning each


class CheckpointError(UserError):
    """A loop's checkpoints exist but none of them can be read."""


def is_done(run_dir: str | os.PathLike, key: str) -> bool:
    """Whether the loop `key` of a run finished: its outputs are written (they come before the marker)."""
    return (loop_dir(run_dir, key) / DONE).exists()


def outputs_dir(run_dir: str | os.PathLike, key: str) -> AnyPath:
    """Where the loop `key` keeps what it hands to the loops after it (written before its done marker)."""
    return loop_dir(run_dir, key) / "outputs"


def commit(run_dir: str | os.PathLike, key: str, write: Callable[[AnyPath], None] | None = None) -> None:
    """Ends the loop `key`: `write(outputs_dir)` writes its outputs, then the done marker is written, then
    the `after` fault point. A crash in between leaves the loop not done, and it commits again on resume."""
    out = outputs_dir(run_dir, key)
    if write is not None:
        files.makedirs(out)
        write(out)
    write_atomic(loop_dir(run_dir, key) / DONE, "1\n")
    distribute.barrier()  # the other workers of a multi-worker run read what the chief just wrote
    faults.point(key, "after")


_STATE_SUFFIX = ".state.pbtxt"


def _checkpoint_of(state_file: AnyPath) -> str:
    """The TF checkpoint a state file belongs to: `ckpt-3.state.pbtxt` -> `ckpt-3`."""
    return state_file.name[: -len(_STATE_SUFFIX)]


def latest_state(run_dir: str | os.PathLike, key: str) -> search_pb2.LoopState | None:
    """The newest LoopState the loop `key` saved (read only, nothing restored); None if it saved none."""
    states = LoopCheckpoint.state_files(loop_dir(run_dir, key))
    return text_format.Parse(states[0].read_text(), search_pb2.LoopState()) if states else None


class LoopCheckpoint:
    """The checkpoint of one loop of the tree: its TF objects (tf.train.CheckpointManager, the last
    `max_to_keep` kept), a LoopState beside each checkpoint, its outputs and its done marker.

    A state is written after its checkpoint and names it, so a crash between the two leaves the previous
    pair, complete. `restore` takes the newest pair that reads; a truncated or corrupt newest checkpoint
    falls back to the one before it, with a warning naming the file."""

    def __init__(self, run_dir: str | os.PathLike, key: str, max_to_keep: int = 2, **objects):
        self.run_dir = files.path(run_dir)
        self.dir = loop_dir(run_dir, key)
        self.key = key
        self.checkpoint = tf.train.Checkpoint(**objects)
        # Every worker of a multi-worker run saves (reading a replica-summed metric total is a collective),
        # the chief into the run, the others into a scratch directory of their own; all restore the run's.
        directory = str(self.dir) if files.writes() else os.path.join(distribute.scratch_dir(), key)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    @classmethod
    def of_trainer(cls, run_dir: str | os.PathLike, key: str, trainer) -> "LoopCheckpoint":
        """The checkpoint of a loop that trains `trainer` (tfnas.train.trainer): its network's variables by
        path, its metric totals and its optimisers."""
        return cls(run_dir, key, net=named_variables(trainer.net), metrics=metric_variables(trainer.trackers),
                   **trainer.checkpointed())

    @property
    def done(self) -> bool:
        return is_done(self.run_dir, self.key)

    def commit(self, write: Callable[[AnyPath], None] | None = None) -> None:
        commit(self.run_dir, self.key, write)

    def save(self, state: search_pb2.LoopState) -> None:
        """Saves the TF objects, then the state that names their checkpoint (atomically), then forgets the
        states of checkpoints the manager pruned."""
        name = os.path.basename(self.manager.save())
        saved = search_pb2.LoopState()
        saved.CopyFrom(state)
        saved.key, saved.checkpoint = self.key, name
        write_atomic(self.dir / f"{name}{_STATE_SUFFIX}", text_format.MessageToString(saved))
        kept = {os.path.basename(p) for p in self.manager.checkpoints}
        for path in self.dir.glob(f"*{_STATE_SUFFIX}"):
            if _checkpoint_of(path) not in kept:
                files.remove(path)

    @staticmethod
    def state_files(directory: AnyPath) -> list[AnyPath]:
        """A loop directory's state files, newest checkpoint first."""
        def number(path: AnyPath) -> int:
            tail = _checkpoint_of(path).rpartition("-")[2]
            return int(tail) if tail.isdigit() else -1
        return sorted(directory.glob(f"*{_STATE_SUFFIX}"), key=number, reverse=True) if directory.is_dir() else []

    def restore(self) -> search_pb2.LoopState | None:
        """Restores the newest checkpoint that reads, with its state; None if the loop has none. Objects
        that the checkpoint lacks are an AssertionError (another network, a programming error), not a
        fall-back."""
        states = self.state_files(self.dir)
        for n, path in enumerate(states):
            state = search_pb2.LoopState()
            prefix = self.dir / _checkpoint_of(path)
            try:
                text_format.Parse(path.read_text(), state)
                self.checkpoint.restore(str(prefix)).assert_existing_objects_matched()
            except AssertionError:
                raise
            except Exception as err:  # noqa: BLE001 - TF's reader raises IndexError, OpError, ValueError, ...
                detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                after = (f"resuming from {_checkpoint_of(states[n + 1])}" if n + 1 < len(states)
                         else "no older checkpoint to resume from")
                print(f"warning: {prefix}: unreadable checkpoint ({detail}); {after}", file=sys.stderr)
                continue
            return state
        if states:
            raise CheckpointError(f"{self.dir}: none of the loop's checkpoints can be read; remove the directory "
                                  "(or run again with --restart) to start the loop over")
        return None
