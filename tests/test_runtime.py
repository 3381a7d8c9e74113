"""Process-wide TensorFlow settings of the tfnas commands."""
import tensorflow as tf

from tfnas import runtime


def _grappler_on() -> bool:
    return not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)


def test_training_graph_options_follow_the_config_then_restore(monkeypatch):
    monkeypatch.delenv("TFNAS_GRAPPLER", raising=False)
    before = _grappler_on()
    with runtime.training_graph_options(False):
        assert not _grappler_on()
    assert _grappler_on() == before
    with runtime.training_graph_options(True):
        assert _grappler_on()
    assert _grappler_on() == before


def test_environment_overrides_the_config(monkeypatch):
    monkeypatch.setenv("TFNAS_GRAPPLER", "1")
    with runtime.training_graph_options(False):
        assert _grappler_on()
    monkeypatch.setenv("TFNAS_GRAPPLER", "0")
    with runtime.training_graph_options(True):
        assert not _grappler_on()
