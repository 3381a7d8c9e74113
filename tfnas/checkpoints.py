"""Keyed checkpoints of the nested search loops (seed 000, "Checkpointing search").

Every loop (a search iteration, pre-training, arch-training, evaluation training) owns one key and keeps
its own `tf.train.CheckpointManager` under `<run>/checkpoints/<key>/`. A loop saves just after each of its
iterations (and, if asked, every N steps inside one); when it starts and finds its key, it restores
its state, its iteration and its data position, and continues. A finished loop writes a `done` marker,
so a resumed outer loop skips it. Keys are built only here, so they can be listed in one place:

    search                 the DARTS search (arch-training) loop
    search/random/trial-<i> random-search trial i (its result.json beside it once scored)
    search/petridish/iter-<i>/pretrain   PetriDish iteration i, pre-training of the parent
    search/petridish/iter-<i>/archtrain  PetriDish iteration i, arch-training of the grown network
    eval                   evaluation training from scratch
"""
from __future__ import annotations

import json
import os
import pathlib

import tensorflow as tf

from tfnas.files import write_atomic

SEARCH = "search"
EVAL = "eval"


def loop_dir(run_dir: str | os.PathLike, key: str) -> pathlib.Path:
    """Where the loop `key` of a run keeps its checkpoints, its state and its done marker."""
    return pathlib.Path(run_dir) / "checkpoints" / key


def random_trial_key(trial: int) -> str:
    return f"{SEARCH}/random/trial-{trial}"


PETRIDISH_PHASES = ("pretrain", "archtrain")


def petridish_key(iteration: int, phase: str) -> str:
    if phase not in PETRIDISH_PHASES:
        raise ValueError(f"unknown PetriDish phase {phase!r}")
    return f"{SEARCH}/petridish/iter-{iteration}/{phase}"


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
    """Writes all of the model's variables (name-keyed checkpoint); returns the checkpoint path."""
    return tf.train.Checkpoint(model=named_variables(model)).write(str(prefix))


def load_weights(model, prefix: str | os.PathLike) -> None:
    """Restores every variable of `model` by path from `save_weights` output: all of them must be found
    (with their shapes); values in the checkpoint that `model` does not have are left out (a serving
    network restored from the evaluation network's weights has no auxiliary tower). The one way tfnas
    moves weights from one model to another."""
    status = tf.train.Checkpoint(model=named_variables(model)).read(str(prefix))
    status.assert_existing_objects_matched()
    status.expect_partial()  # the values `model` does not have are left out on purpose: no warning each


class LoopCheckpoint:
    """The checkpoint of one loop: TF objects plus a small JSON side-car (data positions, epoch)."""

    def __init__(self, run_dir: str | os.PathLike, key: str, max_to_keep: int = 2, **objects):
        self.dir = loop_dir(run_dir, key)
        self.key = key
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.dir), max_to_keep=max_to_keep)

    @property
    def done(self) -> bool:
        return (self.dir / "done").exists()

    def mark_done(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "done").write_text("1\n")

    def save(self, state: dict) -> None:
        """Saves the TF objects, then the state that names the checkpoint it belongs to (atomically)."""
        path = self.manager.save()
        write_atomic(self.dir / "state.json", json.dumps({"checkpoint": os.path.basename(path), **state}))

    def restore(self) -> dict | None:
        """Restores the latest checkpoint whose state was written completely; None if there is none."""
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        path = str(self.dir / state.pop("checkpoint"))
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return state
