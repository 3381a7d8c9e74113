"""Tests of the resumable training loop (tfnas.train.loop.run_loop) and of the keyed loop checkpoint
(tfnas.checkpoints.LoopCheckpoint) on their own: tiny float64 variables, two Keras Mean trackers and two
small numpy batch streams, all eager, so that every resume point can be checked exactly."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnas import checkpoints
from tfnas.checkpoints import LoopCheckpoint
from tfnas.data import BatchStream
from tfnas.proto import search_pb2
from tfnas.train.loop import EpochCallback, TrainingDiverged, run_loop

EPOCHS, STEPS = 2, 3
TOTAL_STEPS = EPOCHS * STEPS
# Powers of two, so that every batch has a distinct sum and float32 totals stay exact.
XA, YA = 2.0 ** np.arange(10), np.arange(10)            # batch 2, 5 batches per stream epoch: the loop's
XB, YB = 2.0 ** (np.arange(5) + 10), np.arange(5)       # epoch ends mid-stream; batch 2, no drop: 2, 2, 1


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)


class Recorder(EpochCallback):
    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step_end(self, step, logs):
        self.steps.append((step, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.epochs.append((epoch, dict(logs)))


class Rig:
    """What one process builds to run the loop: fresh variables, trackers, streams and checkpoint."""

    def __init__(self, run_dir, key=checkpoints.SEARCH, crash_at=None):
        self.state = tf.Module(name="state")
        self.state.total = tf.Variable(0.0, dtype=tf.float64)   # running sum of every batch value
        self.state.trace = tf.Variable(0.0, dtype=tf.float64)   # depends on the order of the batches
        self.state.count = tf.Variable(0, dtype=tf.int64)       # steps applied
        self.trackers = {"loss": keras.metrics.Mean(name="loss"), "val_loss": keras.metrics.Mean(name="val_loss")}
        self.streams = [BatchStream(XA, YA, 2, seed=1), BatchStream(XB, YB, 2, seed=2, drop_remainder=False)]
        self.ckpt = LoopCheckpoint(run_dir, key, state=self.state,
                                   metrics=checkpoints.metric_variables(self.trackers))
        self.seen, self.resets, self.begins, self.saves = [], [], [], []
        self.cb = Recorder()
        self.crash_at = crash_at
        save = self.ckpt.save
        self.ckpt.save = lambda state: (self.saves.append((state.epoch, state.step)), save(state))[1]

    def step(self, xa, ya, xb, yb):
        if self.crash_at is not None and len(self.seen) + 1 == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        assert np.array_equal(xa, 2.0 ** ya) and np.array_equal(xb, 2.0 ** (yb + 10))  # pairs stay together
        self.seen.append((tuple(ya.tolist()), tuple(yb.tolist())))
        a, b = tf.reduce_sum(tf.constant(xa, tf.float64)), tf.reduce_sum(tf.constant(xb, tf.float64))
        self.state.total.assign_add(a + b)
        self.state.trace.assign(self.state.trace * 0.5 + a - b)
        self.state.count.assign_add(1)
        self.trackers["loss"].update_state(a)
        self.trackers["val_loss"].update_state(b)
        return {"loss": self.trackers["loss"].result(), "val_loss": self.trackers["val_loss"].result(),
                "total": self.state.total}

    def reset(self):
        self.resets.append(int(self.state.count.numpy()))
        for m in self.trackers.values():
            m.reset_state()

    def run(self, **kw):
        kw.setdefault("verbose", 0)
        return run_loop(self.step, self.streams, EPOCHS, kw.pop("steps", STEPS), self.ckpt, self.reset,
                        callbacks=[self.cb], on_epoch_begin=self.begins.append, **kw)

    def values(self):
        return {"total": float(self.state.total.numpy()), "trace": float(self.state.trace.numpy()),
                "count": int(self.state.count.numpy()),
                **{n: float(m.result().numpy()) for n, m in self.trackers.items()},
                **{f"{n}/{i}": float(v.numpy()) for n, m in self.trackers.items() for i, v in enumerate(m.variables)}}

    def positions(self):
        return [s.get_state() for s in self.streams]


def _timeless(logs):
    return {k: v for k, v in logs.items() if k != "epoch_seconds"}


def _as_dict(state):
    return {"epoch": state.epoch, "step": state.step,
            "streams": [{"epoch": s.epoch, "position": s.position} for s in state.streams], "logs": dict(state.logs)}


def _state_json(run_dir, key=checkpoints.SEARCH):
    """The newest LoopState on disk, as a dict (with the checkpoint it names)."""
    from google.protobuf import text_format
    files = sorted((run_dir / "checkpoints" / key).glob("ckpt-*.state.pbtxt"),
                   key=lambda p: int(p.name.split(".")[0].split("-")[1]))
    state = text_format.Parse(files[-1].read_text(), search_pb2.LoopState())
    assert state.key == key
    return {"checkpoint": state.checkpoint, **_as_dict(state)}


def _loop_state(**fields):
    streams = [search_pb2.StreamState(**s) for s in fields.pop("streams", [])]
    return search_pb2.LoopState(streams=streams, **fields)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of 2 epochs x 3 steps."""
    rig = Rig(tmp_path_factory.mktemp("reference"))
    rig.logs = rig.run()
    return rig


# ---------------------------------------------------------------------------------------------- LoopCheckpoint


def _holder(values):
    m = tf.Module(name="holder")
    m.v = tf.Variable(np.asarray(values, np.float32))
    return m


def _index_files(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".index"))


def test_checkpoint_directory_and_empty_restore(tmp_path):
    ckpt = LoopCheckpoint(tmp_path, checkpoints.petridish_key(3, "archtrain"), h=_holder([1.0]))
    assert ckpt.dir == tmp_path / "checkpoints" / "search" / "petridish" / "iter-3" / "archtrain"
    assert ckpt.key == "search/petridish/iter-3/archtrain"
    assert ckpt.restore() is None and not ckpt.done
    ckpt.save(_loop_state(epoch=0))
    assert (ckpt.dir / "ckpt-1.state.pbtxt").exists() and (ckpt.dir / "ckpt-1.index").exists()
    assert LoopCheckpoint(tmp_path, checkpoints.EVAL, h=_holder([0.0])).restore() is None  # other keys are apart


def test_save_then_restore_into_fresh_objects(tmp_path):
    mean = keras.metrics.Mean()
    mean.update_state([2.0, 4.0])
    state = {"epoch": 1, "step": 2, "streams": [{"epoch": 0, "position": 4}], "logs": {"loss": 0.5}}
    LoopCheckpoint(tmp_path, "k", h=_holder([1.0, 2.0]),
                   metrics=checkpoints.metric_variables({"m": mean})).save(_loop_state(**state))
    on_disk = _state_json(tmp_path, "k")
    assert (tmp_path / "checkpoints" / "k" / f"{on_disk.pop('checkpoint')}.index").exists()
    assert on_disk == state

    h, fresh = _holder([0.0, 0.0]), keras.metrics.Mean()
    restored = LoopCheckpoint(tmp_path, "k", h=h, metrics=checkpoints.metric_variables({"m": fresh})).restore()
    assert _as_dict(restored) == state and restored.checkpoint == "ckpt-1" and restored.key == "k"
    np.testing.assert_array_equal(h.v.numpy(), [1.0, 2.0])
    assert float(fresh.result()) == 3.0           # the tracker's running totals came back, not just a value
    fresh.update_state(6.0)
    assert float(fresh.result()) == 4.0


def test_restore_fails_loudly_on_objects_the_checkpoint_lacks(tmp_path):
    LoopCheckpoint(tmp_path, "k", h=_holder([1.0])).save(_loop_state(epoch=0))
    with pytest.raises(AssertionError):
        LoopCheckpoint(tmp_path, "k", h=_holder([0.0]), extra=_holder([0.0])).restore()


def _state_files(d):
    return sorted(p.name for p in d.glob("*.state.pbtxt"))


def test_restore_takes_the_newest_complete_pair_and_old_ones_are_pruned(tmp_path):
    h = _holder([0.0])
    ckpt = LoopCheckpoint(tmp_path, "k", max_to_keep=2, h=h)
    for i in (1, 2, 3):
        h.v.assign([10.0 * i])
        ckpt.save(_loop_state(epoch=i))
    assert _index_files(ckpt.dir) == ["ckpt-2.index", "ckpt-3.index"]
    assert _state_files(ckpt.dir) == ["ckpt-2.state.pbtxt", "ckpt-3.state.pbtxt"]  # pruned with their checkpoints
    assert _state_json(tmp_path, "k")["checkpoint"] == "ckpt-3"

    fresh = _holder([0.0])
    assert LoopCheckpoint(tmp_path, "k", h=fresh).restore().epoch == 3    # the last save wins
    assert fresh.v.numpy()[0] == 30.0

    # A crash after the TF save but before its state: the previous pair, complete, is what comes back.
    (ckpt.dir / "ckpt-3.state.pbtxt").unlink()
    fresh = _holder([0.0])
    assert LoopCheckpoint(tmp_path, "k", h=fresh).restore().epoch == 2
    assert fresh.v.numpy()[0] == 20.0


@pytest.mark.parametrize("damage", ["truncate-data", "truncate-index", "garbage-state"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before_with_a_warning(tmp_path, capsys, damage):
    h = _holder([0.0])
    ckpt = LoopCheckpoint(tmp_path, "k", max_to_keep=2, h=h)
    for i in (1, 2):
        h.v.assign([float(i)])
        ckpt.save(_loop_state(epoch=i))
    victim = {"truncate-data": ckpt.dir / "ckpt-2.data-00000-of-00001", "truncate-index": ckpt.dir / "ckpt-2.index",
              "garbage-state": ckpt.dir / "ckpt-2.state.pbtxt"}[damage]
    data = victim.read_bytes()
    victim.write_bytes(b"epoch: [" if damage == "garbage-state" else data[: len(data) // 2])
    fresh = _holder([0.0])
    state = LoopCheckpoint(tmp_path, "k", h=fresh).restore()
    assert state.epoch == 1 and fresh.v.numpy()[0] == 1.0
    err = capsys.readouterr().err
    assert f"warning: {ckpt.dir / 'ckpt-2'}: unreadable checkpoint" in err and "resuming from ckpt-1" in err
    # Both damaged: a clear error, not a silent fresh start.
    (ckpt.dir / "ckpt-1.index").write_bytes(b"")
    with pytest.raises(checkpoints.CheckpointError, match="none of the loop's checkpoints can be read"):
        LoopCheckpoint(tmp_path, "k", h=_holder([0.0])).restore()


def test_a_resumed_checkpoint_keeps_numbering_and_pruning(tmp_path):
    h = _holder([0.0])
    ckpt = LoopCheckpoint(tmp_path, "k", max_to_keep=2, h=h)
    for i in (1, 2, 3):
        h.v.assign([float(i)])
        ckpt.save(_loop_state(epoch=i))
    h2 = _holder([0.0])
    again = LoopCheckpoint(tmp_path, "k", max_to_keep=2, h=h2)
    assert again.restore().epoch == 3
    h2.v.assign([4.0])
    again.save(_loop_state(epoch=4))
    assert _index_files(again.dir) == ["ckpt-3.index", "ckpt-4.index"]
    assert _state_json(tmp_path, "k")["checkpoint"] == "ckpt-4"
    fresh = _holder([0.0])
    restored = LoopCheckpoint(tmp_path, "k", h=fresh).restore()
    assert restored.epoch == 4 and fresh.v.numpy()[0] == 4.0


def test_max_to_keep_one_keeps_only_the_last(tmp_path):
    h = _holder([0.0])
    ckpt = LoopCheckpoint(tmp_path, "k", max_to_keep=1, h=h)
    for i in (1, 2, 3):
        h.v.assign([float(i)])
        ckpt.save(_loop_state(epoch=i))
    assert _index_files(ckpt.dir) == ["ckpt-3.index"]


def test_commit_writes_the_outputs_before_the_done_marker(tmp_path):
    key = checkpoints.petridish_key(1, "pretrain")
    ckpt = LoopCheckpoint(tmp_path, key, h=_holder([0.0]))
    assert not ckpt.done and not checkpoints.is_done(tmp_path, key)
    seen = []

    def write(out):
        (out / "result.txt").write_text("42")
        seen.append(checkpoints.is_done(tmp_path, key))   # not yet done while the outputs are written

    ckpt.commit(write)                                   # works before any save created the directory
    assert seen == [False] and ckpt.done and checkpoints.is_done(tmp_path, key)
    assert (checkpoints.outputs_dir(tmp_path, key) / "result.txt").read_text() == "42"
    assert not checkpoints.is_done(tmp_path, checkpoints.petridish_key(1, "archtrain"))
    assert LoopCheckpoint(tmp_path, key, h=_holder([0.0])).restore() is None  # done is not state

    def crash(out):
        raise KeyboardInterrupt("killed while writing outputs")

    other = LoopCheckpoint(tmp_path, "k2", h=_holder([0.0]))
    with pytest.raises(KeyboardInterrupt):
        other.commit(crash)
    assert not other.done                                # half-written outputs never count as done


# ---------------------------------------------------------------------------------------------- run_loop


def test_uninterrupted_run(reference):
    ref = reference
    assert len(ref.seen) == TOTAL_STEPS and ref.values()["count"] == TOTAL_STEPS
    assert [s for s, _ in ref.cb.steps] == [1, 2, 3, 4, 5, 6]         # 1-based global steps
    assert [e for e, _ in ref.cb.epochs] == [0, 1]                    # 0-based epochs, once each
    assert ref.begins == [0, 1]
    assert ref.resets == [0, 3]                                        # before each epoch's first step
    assert ref.ckpt.done
    # With checkpoint_every_steps=0 the loop saves only at epoch ends, with the next epoch's index.
    assert ref.saves == [(1, 0), (2, 0)]
    assert {k: v for k, v in _state_json(ref.ckpt.dir.parent.parent).items() if k != "checkpoint"} == {
        "epoch": 2, "step": 0, "streams": ref.positions(), "logs": ref.logs}
    # The stream positions after 6 steps: A (5 batches per stream epoch) in its second epoch, B (3) wrapped twice.
    assert ref.positions() == [{"epoch": 1, "position": 2}, {"epoch": 2, "position": 0}]
    # The step's logs are epoch averages: the trackers restart each epoch and average that epoch's batches.
    for e, logs in ref.cb.epochs:
        batches = ref.seen[e * STEPS:(e + 1) * STEPS]
        assert logs["loss"] == pytest.approx(np.mean([XA[list(a)].sum() for a, _ in batches]))
        assert logs["val_loss"] == pytest.approx(np.mean([XB[list(b)].sum() for _, b in batches]))
        assert logs["epoch_seconds"] >= 0
        assert _timeless(logs) == ref.cb.steps[(e + 1) * STEPS - 1][1]  # the epoch's logs are its last step's
    assert ref.values()["total"] == sum(XA[list(a)].sum() + XB[list(b)].sum() for a, b in ref.seen)
    assert _timeless(ref.logs) == _timeless(ref.cb.epochs[-1][1])


def test_two_runs_are_identical(tmp_path, reference):
    rig = Rig(tmp_path)
    logs = rig.run()
    assert rig.seen == reference.seen and rig.values() == reference.values()
    assert _timeless(logs) == _timeless(reference.logs)


@pytest.mark.parametrize("stops", [[1], [2], [3], [4], [5], [1, 3], [2, 1, 1]],
                         ids=lambda s: "stop" + "-".join(map(str, s)))
def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path, reference, stops):
    """Stopped inside epoch 1 (after step 1 or 2), at its end (3), inside epoch 2 (4, 5), or several times,
    then resumed each time by a new run_loop call on fresh objects."""
    rigs, done_steps = [], 0
    for stop in stops + [None]:
        rig = Rig(tmp_path)
        assert rig.values()["total"] == 0.0                     # fresh objects, nothing carried in memory
        logs = rig.run(checkpoint_every_steps=1, stop_after_steps=stop)
        rigs.append(rig)
        if stop is not None:
            done_steps += stop
            assert len(rig.seen) == stop and not rig.ckpt.done
            state = _state_json(tmp_path)
            assert (state["epoch"], state["step"]) == divmod(done_steps, STEPS)
            assert state["streams"] == rig.positions()
            assert _timeless(state["logs"]) == _timeless(logs) == rig.cb.steps[-1][1]
    last = rigs[-1]
    assert last.ckpt.done
    assert last.values() == reference.values()                  # variables and metric totals, exactly
    assert last.positions() == reference.positions()
    assert _timeless(logs) == _timeless(reference.logs)
    assert [b for r in rigs for b in r.seen] == reference.seen  # no batch skipped or repeated
    assert [s for r in rigs for s in r.cb.steps] == reference.cb.steps
    assert [(e, _timeless(lg)) for r in rigs for e, lg in r.cb.epochs] == [
        (e, _timeless(lg)) for e, lg in reference.cb.epochs]
    # Metrics are reset at each epoch's start only: never when a run resumes inside an epoch.
    assert [c for r in rigs for c in r.resets] == reference.resets == [0, 3]
    for r in rigs:
        end = r.values()["count"]
        assert r.resets == [c for c in [0, 3] if end - len(r.seen) <= c < end]
    # on_epoch_begin comes once per epoch entered, including the epoch a run resumes in.
    start = 0
    for r in rigs:
        assert r.begins == list(range(start // STEPS, EPOCHS))[:len(r.begins)]
        assert r.begins[0] == start // STEPS
        start += len(r.seen)


def test_mid_epoch_resume_continues_the_epoch_averages(tmp_path, reference):
    first = Rig(tmp_path)
    first.run(stop_after_steps=4)
    second = Rig(tmp_path)
    second.run()
    assert second.resets == [] and second.begins == [1]
    # The epoch-2 average covers the steps before the stop too.
    epoch2 = [XA[list(a)].sum() for a, _ in reference.seen[3:]]
    assert [e for e, _ in second.cb.epochs] == [1]
    assert second.cb.epochs[0][1]["loss"] == pytest.approx(np.mean(epoch2))
    assert second.cb.epochs[0][1]["loss"] != pytest.approx(np.mean(epoch2[1:]))


@pytest.mark.parametrize("every,expected", [
    (0, [(1, 0), (2, 0)]),
    (1, [(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]),
    (2, [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]),
    (5, [(1, 0), (2, 0)]),   # a multiple of the epoch length: the epoch end's save only, not twice
    (3, [(0, 3), (1, 0), (1, 3), (2, 0)]),
])
def test_saves_every_n_steps_and_at_each_epoch_end(tmp_path, every, expected):
    rig = Rig(tmp_path)
    rig.run(steps=5, checkpoint_every_steps=every)
    assert rig.saves == expected


@pytest.mark.parametrize("crash_at,saved", [(4, (0, 2)), (5, (0, 4)), (6, (1, 0)), (7, (1, 0)), (8, (1, 2))])
def test_a_crash_between_saves_resumes_from_the_last_periodic_save(tmp_path, crash_at, saved):
    """A real crash (an exception inside the step, no stop-save) leaves state.json at the last save
    every 2 steps (or the epoch end); resuming replays the lost steps to the uninterrupted result."""
    steps = 5
    ref = Rig(tmp_path / "ref")
    ref.run(steps=steps)
    crashed = Rig(tmp_path / "run", crash_at=crash_at)
    with pytest.raises(KeyboardInterrupt):
        crashed.run(steps=steps, checkpoint_every_steps=2)
    assert not crashed.ckpt.done
    state = _state_json(tmp_path / "run")
    assert (state["epoch"], state["step"]) == saved
    resumed = Rig(tmp_path / "run")
    resumed.run(steps=steps, checkpoint_every_steps=2)
    replayed_from = saved[0] * steps + saved[1]
    assert len(resumed.seen) == 2 * steps - replayed_from
    assert resumed.seen == ref.seen[replayed_from:]
    assert resumed.values() == ref.values() and resumed.positions() == ref.positions()
    assert resumed.ckpt.done


def test_stopping_on_the_very_last_step_finishes_the_loop(tmp_path, reference):
    rig = Rig(tmp_path)
    logs = rig.run(checkpoint_every_steps=1, stop_after_steps=TOTAL_STEPS)
    assert rig.ckpt.done and rig.values() == reference.values()
    assert _timeless(logs) == _timeless(reference.logs)


def test_a_finished_loop_runs_no_step_again(tmp_path, reference):
    Rig(tmp_path).run(checkpoint_every_steps=1)
    again = Rig(tmp_path)
    assert again.ckpt.done
    logs = again.run(checkpoint_every_steps=1)
    assert again.seen == [] and again.cb.steps == [] and again.cb.epochs == []
    assert again.resets == [] and again.begins == [] and again.saves == []
    assert again.ckpt.done
    assert again.values() == reference.values()        # the final state is restored
    assert again.positions() == reference.positions()
    assert _timeless(logs) == _timeless(reference.logs)
    assert "epoch_seconds" in logs                      # the last epoch's logs, as saved


def test_a_stopped_loop_is_not_done(tmp_path):
    rig = Rig(tmp_path)
    rig.run(stop_after_steps=STEPS)                     # at an epoch end, epochs still to go
    assert not rig.ckpt.done and not (rig.ckpt.dir / "done").exists()
    assert _state_json(tmp_path)["epoch"] == 1 and _state_json(tmp_path)["step"] == 0


def test_verbose_progress_bar_on_a_mid_epoch_resume(tmp_path, capsys):
    Rig(tmp_path).run(stop_after_steps=1)
    rig = Rig(tmp_path)
    rig.run(verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "loss" in out
    assert rig.ckpt.done and len(rig.seen) == TOTAL_STEPS - 1


def test_a_non_finite_loss_stops_the_loop_and_keeps_the_last_good_checkpoint(tmp_path, reference):
    rig = Rig(tmp_path)

    def diverging(*batches):
        logs = rig.step(*batches)
        return {**logs, "loss": float("nan")} if len(rig.seen) == 5 else logs

    with pytest.raises(TrainingDiverged) as err:
        run_loop(diverging, rig.streams, EPOCHS, STEPS, rig.ckpt, rig.reset, verbose=0, checkpoint_every_steps=0)
    assert str(err.value) == (f"search: loss is nan at epoch 2, step 2 (step 5 of the loop); training stopped, the "
                              f"last good checkpoint, {rig.ckpt.dir / 'ckpt-1'}, is kept")
    assert rig.saves == [(1, 0)] and not rig.ckpt.done     # nothing of the diverged step was saved
    again = Rig(tmp_path)
    again.run()                                            # the kept checkpoint resumes to the right result
    assert again.values() == reference.values() and again.seen == reference.seen[STEPS:]


def test_the_loop_commits_its_outputs_once_before_done(tmp_path, reference):
    calls = []

    def outputs(out, logs):
        (out / "total.txt").write_text(str(logs["total"]))
        calls.append(checkpoints.is_done(tmp_path, checkpoints.SEARCH))

    rig = Rig(tmp_path)
    rig.run(outputs=outputs)
    assert calls == [False] and rig.ckpt.done
    assert float((checkpoints.outputs_dir(tmp_path, checkpoints.SEARCH) / "total.txt").read_text()) == \
        reference.values()["total"]
    Rig(tmp_path).run(outputs=outputs)                     # done: restored, nothing run or written again
    assert calls == [False]
