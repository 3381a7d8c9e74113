"""float16 training (runtime.precision: MIXED_FLOAT16) with its dynamic loss scale (tfnas.train.loss_scale).

Tiny networks, run eagerly. A skipped step is forced by a scale whose float16 image is infinite.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from test_bilevel import make_search, supernet_desc, weight_cfg
from test_precision import F16, F32, eval_desc, step_data, with_precision
from tfnas import checkpoints, compiler, evaluation
from tfnas.proto import config_pb2, search_pb2
from tfnas.train import loss_scale, metrics

HUGE = 3e38  # finite in float32, infinite once cast to float16: every gradient overflows


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def float16_search(order=1):
    return make_search(order=order, options=with_precision(compiler.SEARCH_OPTIONS, F16), reduction_cells=(1,))


def values(variables):
    return [v.numpy().copy() for v in variables]


@pytest.mark.parametrize("order", [1, 2])
def test_a_float16_search_step_trains_with_float32_state_and_counts_its_finite_step(order):
    s = float16_search(order)
    assert set(s.checkpointed()) == {"weight_opt", "alpha_opt", "weight_loss_scale", "alpha_loss_scale"}
    alphas, weights = values(s.net.alphas), values(s.net.weights_only)
    logs = s.train_step(step_data())
    assert all(np.isfinite(float(v)) for v in logs.values())
    for scale in (s.weight_scale, s.alpha_scale):
        assert scale.scale.dtype == tf.float32 and float(scale.scale.numpy()) == loss_scale.INITIAL_SCALE
        assert int(scale.finite_steps.numpy()) == 1
    assert int(s.weight_opt.iterations.numpy()) == 1 and int(s.alpha_opt.iterations.numpy()) == 1
    for v in s.net.variables + s.alpha_opt.variables + s.weight_opt.variables:
        assert v.dtype in ("float32", "int64") and np.all(np.isfinite(v.numpy())), v.path
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(alphas, s.net.alphas))
    assert sum(not np.array_equal(w, v.numpy()) for w, v in zip(weights, s.net.weights_only)) > len(weights) // 2


@pytest.mark.parametrize("order", [1, 2])
def test_a_step_whose_gradients_overflow_is_skipped_and_halves_the_scale(order):
    s = float16_search(order)
    s.weight_scale.scale.assign(HUGE)
    s.alpha_scale.scale.assign(HUGE)
    s.weight_scale.finite_steps.assign(5)
    trained = s.net.alphas + s.net.weights_only
    before = values(trained) + values(s.weight_opt.variables) + values(s.alpha_opt.variables)
    logs = s.train_step(step_data())
    assert all(np.isfinite(float(v)) for v in logs.values())  # the forward pass's losses are not scaled
    after = values(trained) + values(s.weight_opt.variables) + values(s.alpha_opt.variables)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)  # no update, no optimiser step, no momentum
    for scale in (s.weight_scale, s.alpha_scale):
        assert float(scale.scale.numpy()) == pytest.approx(HUGE / 2, rel=1e-6)
        assert int(scale.finite_steps.numpy()) == 0
    # The next step at a usable scale trains.
    s.weight_scale.scale.assign(1024.0)
    s.alpha_scale.scale.assign(1024.0)
    s.train_step(step_data())
    assert int(s.weight_opt.iterations.numpy()) == 1 and int(s.alpha_opt.iterations.numpy()) == 1
    assert not np.array_equal(before[0], s.net.alphas[0].numpy())


def test_the_scale_doubles_after_its_growth_steps_and_never_falls_below_one():
    s = float16_search()
    s.weight_scale.growth_steps = 2
    for _ in range(3):
        s.train_step(step_data())
    assert float(s.weight_scale.scale.numpy()) == 2 * loss_scale.INITIAL_SCALE
    assert int(s.weight_scale.finite_steps.numpy()) == 1
    assert float(s.alpha_scale.scale.numpy()) == loss_scale.INITIAL_SCALE  # its own schedule
    scale = loss_scale.LossScale(True, "floor", initial=1.0)
    scale.apply([tf.constant([np.inf])], lambda g: None)
    assert float(scale.scale.numpy()) == 1.0


def test_loss_scaling_keeps_float16_gradients_that_would_flush_to_zero():
    """A loss a million times smaller (its gradients below float16's smallest subnormal, 6e-8, in the
    backward pass): at scale 1 the float16 alpha gradient is lost; at the default scale it is as close to
    the float32 one as the float16 gradient of the loss at its own size. That distance (about 5 %) is
    float16's 11 bits in a gradient that is a small difference of nearly equal terms at initialisation."""
    desc = supernet_desc(reduction_cells=(1,))
    nets = {p: compiler.compile_model(desc, with_precision(compiler.SEARCH_OPTIONS, p)) for p in (F32, F16)}
    nets[F16].set_weights(nets[F32].get_weights())
    (_, _), (xv, yv) = step_data(n=16)

    def alpha_gradient(precision, initial, factor):
        net = nets[precision]
        scale = loss_scale.LossScale(True, "test", initial=initial)
        with tf.GradientTape() as tape:
            loss = factor * metrics.cross_entropy(net(xv, training=True, update_statistics=False), yv)
        return np.concatenate([np.ravel(g) for g in scale.gradients(tape, loss, net.alphas)]).astype(np.float64)

    def error(initial, factor):
        reference = alpha_gradient(F32, 1.0, factor)
        return np.linalg.norm(alpha_gradient(F16, initial, factor) - reference) / np.linalg.norm(reference)

    own_size = error(1.0, 1.0)
    assert own_size < 0.1
    assert error(1.0, 1e-6) > 0.5
    assert error(loss_scale.INITIAL_SCALE, 1e-6) < 1.2 * own_size


def test_a_float16_evaluation_step_and_the_scale_in_its_checkpoint(tmp_path):
    config = config_pb2.ExperimentConfig()
    config.runtime.precision = F16
    config.eval.trainer.optimizer.CopyFrom(weight_cfg())
    config.eval.trainer.epochs = 1
    x, y = tf.constant(step_data(shape=(8, 8, 1), classes=10)[0][0]), tf.constant(np.arange(8) % 10)
    trainer = evaluation.build_trainer(config, eval_desc(), steps_per_epoch=10)
    assert trainer.net.options.precision == F16 and trainer.net.aux
    logs = trainer.train_step((x, y))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert int(trainer.opt.iterations.numpy()) == 1
    trainer.scale.scale.assign(4096.0)
    trainer.scale.finite_steps.assign(7)
    checkpoints.LoopCheckpoint.of_trainer(tmp_path, "eval", trainer).save(search_pb2.LoopState(epoch=1))

    resumed = evaluation.build_trainer(config, eval_desc(), steps_per_epoch=10)
    checkpoints.LoopCheckpoint.of_trainer(tmp_path, "eval", resumed).restore()
    assert float(resumed.scale.scale.numpy()) == 4096.0 and int(resumed.scale.finite_steps.numpy()) == 7


def test_float32_trainers_have_no_loss_scale():
    s = make_search()
    assert set(s.checkpointed()) == {"weight_opt", "alpha_opt"}
    assert not s.weight_scale.enabled and not hasattr(s.weight_scale, "scale")
