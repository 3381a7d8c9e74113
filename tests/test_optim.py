"""Schedules and gradient preparation follow the DARTS code (PyTorch 0.3.1 semantics)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfnas.proto import config_pb2
from tfnas.train import optim


def test_cosine_changes_at_epoch_starts_from_the_full_rate():
    sched = optim.EpochSchedule(0.025, 0.001, epochs=4, steps_per_epoch=10, cosine=True)
    rates = [float(sched(step)) for step in (0, 9, 10, 39, 40, 1000)]
    expect = lambda e: 0.001 + 0.024 * 0.5 * (1 + math.cos(math.pi * e / 4))  # noqa: E731
    assert rates == pytest.approx([0.025, 0.025, expect(1), expect(3), 0.001, 0.001], rel=1e-6)
    assert float(optim.EpochSchedule(0.1, 0.0, 3, 5, cosine=False)(12)) == pytest.approx(0.1)


def test_gradients_are_clipped_before_the_coupled_weight_decay():
    cfg = config_pb2.OptimizerConfig(gradient_clip_norm=1.0, weight_decay=0.5)
    w = [tf.constant([2.0, 0.0]), tf.constant([0.0])]
    g = [tf.constant([3.0, 0.0]), tf.constant([4.0])]  # global norm 5 -> scaled by 1/5
    out = optim.prepare_gradients(g, w, cfg)
    np.testing.assert_allclose(out[0], [0.6 + 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.8], rtol=1e-6)


def test_fused_sgd_takes_kerass_sgd_steps():
    """One fused op per variable, the same momentum update as keras.optimizers.SGD (slots included)."""
    import keras
    start = [np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), np.array([0.25, -1.0], np.float32)]
    runs = []
    for cls in (keras.optimizers.SGD, optim.FusedSGD):
        opt = cls(learning_rate=0.1, momentum=0.9)
        variables = [keras.Variable(v) for v in start]
        for step in range(3):
            grads = [tf.constant(v * (step + 1) - 0.5) for v in start]
            opt.apply_gradients(zip(grads, variables))
        runs.append([v.numpy() for v in variables] + [m.numpy() for m in opt.momentums])
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-6)
