"""Tests of tfnas.config: layering, includes, overrides, error messages, validation, saving."""
from __future__ import annotations

import math
import pathlib
import textwrap

import pytest
import yaml

from tfnas import config as cfg
from tfnas.search import darts
from tfnas.proto import config_pb2, descriptors_pb2

CONFIGS = cfg.DEFAULT_CONFIG_PATH.parent
Opt = config_pb2.OptimizerConfig
Search = config_pb2.SearchConfig


def write(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error(path=None, overrides=()) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_path_is_the_repository_file():
    assert cfg.DEFAULT_CONFIG_PATH == pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def test_default_values():
    c = cfg.load_config()
    assert (c.name, c.seed, c.deterministic) == ("default", 0, False)
    assert c.data.dataset == "digits" and c.data.train_split == "train" and c.data.test_split == "test"
    assert not c.data.download and c.data.data_dir == "" and c.data.image_size == 0
    assert c.data.search_train_fraction == 0.5 and list(c.data.mean) == [] and list(c.data.std) == []
    s = c.search
    assert s.algorithm == Search.DARTS
    assert (s.macro.channels, s.macro.cells, s.macro.nodes, s.macro.stem_multiplier) == (8, 5, 4, 3)
    assert list(s.macro.reduction_cells) == [] and not s.macro.aux_tower
    assert (s.trainer.epochs, s.trainer.batch_size, s.trainer.max_steps_per_epoch) == (16, 32, 0)
    o = s.trainer.optimizer
    assert (o.kind, o.schedule) == (Opt.SGD, config_pb2.COSINE)
    assert o.learning_rate == pytest.approx(0.025) and o.min_learning_rate == pytest.approx(0.001)
    assert o.momentum == pytest.approx(0.9) and o.weight_decay == pytest.approx(3e-4)
    assert o.gradient_clip_norm == 5.0
    d = s.darts
    assert d.order == 1 and d.edges_per_node == 2 and d.alpha_init_scale == pytest.approx(1e-3)
    assert list(d.primitives) == list(darts.PRIMITIVES)
    assert (d.warmup_epochs, d.max_skip_connect, d.partial_channels, d.edge_normalization) == (4, 2, 0, False)
    a = d.alpha_optimizer  # the default's own schedule (README: why it is not the paper's)
    assert (a.kind, a.schedule) == (Opt.ADAM, config_pb2.COSINE)
    assert a.learning_rate == pytest.approx(0.2) and a.min_learning_rate == 0 and a.weight_decay == 0
    assert (a.beta_1, a.beta_2) == pytest.approx((0.5, 0.999))
    e = c.eval
    assert (e.macro.channels, e.macro.cells, e.macro.aux_tower) == (16, 8, True)
    assert e.macro.aux_weight == pytest.approx(0.4) and e.drop_path_prob == pytest.approx(0.2)
    assert (e.trainer.epochs, e.trainer.batch_size) == (10, 64)
    assert e.trainer.optimizer.min_learning_rate == 0.0 and e.trainer.optimizer.kind == Opt.SGD
    assert (e.augmentation.crop_padding, e.augmentation.horizontal_flip, e.augmentation.cutout) == (1, False, 2)
    assert (c.export.model_name, c.export.version) == ("tfnas", 1)


def test_default_file_names_every_field():
    def missing(data, desc, prefix=""):
        for field in desc.fields:
            if field.name == "include":
                continue
            assert field.name in data, f"default.yaml lacks {prefix}{field.name}"
            if field.message_type is not None:
                missing(data[field.name], field.message_type, f"{prefix}{field.name}.")
    missing(yaml.safe_load(cfg.DEFAULT_CONFIG_PATH.read_text()), config_pb2.ExperimentConfig.DESCRIPTOR)


def test_user_file_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path, "my.yaml", """
        name: mine
        search:
          macro:
            cells: 2
          trainer:
            optimizer:
              learning_rate: 3e-4   # PyYAML reads this as a string: float fields accept it
          darts:
            primitives: [skip_connect, sep_conv_3x3]
        eval:
          macro:
            aux_tower: false
    """)
    c, default = cfg.load_config(path), cfg.load_config()
    assert c.name == "mine" and c.search.macro.cells == 2 and not c.eval.macro.aux_tower
    assert c.search.trainer.optimizer.learning_rate == pytest.approx(3e-4)
    assert list(c.search.darts.primitives) == ["skip_connect", "sep_conv_3x3"]  # lists replace
    c.name, c.search.macro.cells, c.eval.macro.aux_tower = "default", 5, True
    c.search.trainer.optimizer.learning_rate = default.search.trainer.optimizer.learning_rate
    c.search.darts.ClearField("primitives")
    c.search.darts.primitives.extend(default.search.darts.primitives)
    assert c == default


def test_empty_file_and_empty_section_give_the_default(tmp_path):
    assert cfg.load_config(write(tmp_path, "empty.yaml", "")) == cfg.load_config()
    assert cfg.load_config(write(tmp_path, "s.yaml", "search:\n  # nothing yet\n")) == cfg.load_config()


def test_nested_includes_relative_to_the_including_file(tmp_path):
    write(tmp_path, "base/common.yaml", """
        name: common
        seed: 7
        search: {macro: {cells: 3, channels: 4}}
    """)
    write(tmp_path, "base/mid.yaml", """
        include: common.yaml
        name: mid
        search: {macro: {cells: 4}}
    """)
    write(tmp_path, "other.yaml", "eval: {trainer: {epochs: 2}}\nseed: 8\n")
    top = write(tmp_path, "exp/top.yaml", """
        include: [../base/mid.yaml, ../other.yaml]
        name: top
    """)
    c = cfg.load_config(top)
    assert (c.name, c.seed, c.search.macro.cells, c.search.macro.channels) == ("top", 8, 4, 4)
    assert c.eval.trainer.epochs == 2 and list(c.include) == []


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "name: a\ninclude: b.yaml\n")
    write(tmp_path, "b.yaml", "include: [c.yaml]\n")
    write(tmp_path, "c.yaml", "include: a.yaml\n")
    message = error(tmp_path / "a.yaml")
    assert "c.yaml:1:" in message and "include cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml" in message


def test_missing_include_is_an_error(tmp_path):
    message = error(write(tmp_path, "a.yaml", "seed: 1\ninclude: gone.yaml\n"))
    assert "a.yaml:2:" in message and "gone.yaml" in message and "not found" in message


def test_set_overrides(tmp_path):
    path = write(tmp_path, "my.yaml", "search: {trainer: {epochs: 9}}\ndata: {dataset: mnist}\n")
    c = cfg.load_config(path, [
        "search.trainer.epochs=3", "data.dataset=cifar10", "search.darts.primitives=[sep_conv_3x3,skip_connect]",
        "search.algorithm=RANDOM", "search.trainer.optimizer.kind=ADAM", "eval.trainer.optimizer.schedule=CONSTANT",
        "search.darts.alpha_optimizer.learning_rate=1e-3", "data.data_dir=", "deterministic=true",
        "search.macro={cells: 6}", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]"])
    assert c.search.trainer.epochs == 3 and c.data.dataset == "cifar10" and c.data.data_dir == ""
    assert list(c.search.darts.primitives) == ["sep_conv_3x3", "skip_connect"]
    assert c.search.algorithm == Search.RANDOM and c.search.trainer.optimizer.kind == Opt.ADAM
    assert c.eval.trainer.optimizer.schedule == config_pb2.CONSTANT and c.deterministic
    assert c.search.darts.alpha_optimizer.learning_rate == pytest.approx(1e-3)
    assert c.search.macro.cells == 6 and c.search.macro.channels == 8  # a mapping value merges
    assert list(c.data.mean) == [0.5] * 3
    assert cfg.load_config(None, ["seed=1", "seed=2"]).seed == 2  # later overrides win


def test_set_errors():
    assert error(None, ["search.macro.cells=x"]) == "--set search.macro.cells=x: expected an integer, got 'x'"
    message = error(None, ["search.macro.cels=3"])
    assert message.startswith("--set search.macro.cels=3: unknown key 'cels' in search.macro")
    assert "did you mean 'cells'?" in message
    assert "expected key=value" in error(None, ["seed"])
    assert "expected a list" in error(None, ["search.darts.primitives=sep_conv_3x3"])


def test_unknown_key_reports_file_line_key_and_suggestion(tmp_path):
    path = write(tmp_path, "my.yaml", """
        name: x
        search:
          trainer:
            epochs: 2
            optimizer:
              lerning_rate: 0.1
    """)
    assert error(path) == (f"{path}:6: unknown key 'lerning_rate' in search.trainer.optimizer "
                           "(did you mean 'learning_rate'?)")
    top = write(tmp_path, "top.yaml", "seeed: 1\n")
    assert error(top) == f"{top}:1: unknown key 'seeed' at the top level (did you mean 'seed'?)"
    assert "(did you mean" not in error(write(tmp_path, "z.yaml", "zzzz: 1\n"))


def test_error_in_an_included_file_names_that_file(tmp_path):
    write(tmp_path, "sub/base.yaml", "seed: 1\ndata:\n  datset: x\n")
    message = error(write(tmp_path, "top.yaml", "include: sub/base.yaml\n"))
    assert message.startswith(str(tmp_path / "sub" / "base.yaml") + ":3: unknown key 'datset' in data")


@pytest.mark.parametrize("text, line, expected", [
    ("search:\n  trainer:\n    epochs: ten\n", 3, "search.trainer.epochs: expected an integer, got 'ten'"),
    ("seed: 1.5\n", 1, "seed: expected an integer, got '1.5'"),
    ("seed: true\n", 1, "seed: expected an integer, got 'true'"),
    ("deterministic: 1\n", 1, "deterministic: expected true or false, got '1'"),
    ("data:\n  search_train_fraction: half\n", 2, "data.search_train_fraction: expected a number"),
    ("data:\n  mean: 0.5\n", 2, "data.mean: expected a list, got '0.5'"),
    ("data:\n  mean: [0.5, x]\n", 2, "data.mean[1]: expected a number, got 'x'"),
    ("search: 3\n", 1, "search: expected a mapping, got '3'"),
    ("name: [a]\n", 1, "name: expected a single value, got a list"),
    ("search:\n  macro:\n    cells: 3000000000\n", 3, "search.macro.cells: expected an integer in"),
    ("seed: 1\nseed: 2\n", 2, "duplicate key 'seed'"),
])
def test_type_errors_with_line_numbers(tmp_path, text, line, expected):
    path = write(tmp_path, "bad.yaml", text)
    assert error(path).startswith(f"{path}:{line}: {expected}")


def test_accepted_scalar_forms(tmp_path):
    c = cfg.load_config(write(tmp_path, "ok.yaml", "seed: 2.0\nname: 1.10\nsearch: {macro: {aux_weight: 1}}\n"))
    assert c.seed == 2 and c.name == "1.10" and c.search.macro.aux_weight == 1.0


def test_bad_enum_names_the_allowed_values(tmp_path):
    path = write(tmp_path, "e.yaml", "search:\n  trainer:\n    optimizer:\n      kind: SGDD\n")
    assert error(path) == f"{path}:4: search.trainer.optimizer.kind: expected one of SGD, ADAM, got 'SGDD'"
    assert "one of DARTS, RANDOM, PETRIDISH" in error(None, ["search.algorithm=dartz"])


def test_every_precision_reads_and_a_wrong_one_is_one_line():
    for name in ("float32", "mixed_bfloat16", "mixed_float16"):
        loaded = cfg.load_config(None, [f"runtime.precision={name}"])
        assert descriptors_pb2.CompilerOptions.Precision.Name(loaded.runtime.precision) == name.upper()
    assert "--set runtime.precision=float8: expected one of FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16, got 'float8'" == \
        error(None, ["runtime.precision=float8"])


def test_enum_values_read_in_any_case():
    loaded = cfg.load_config(None, ["search.algorithm=random", "runtime.precision=mixed_bfloat16"])
    assert loaded.search.algorithm == config_pb2.SearchConfig.RANDOM
    assert loaded.runtime.precision == descriptors_pb2.CompilerOptions.MIXED_BFLOAT16


def test_invalid_yaml_reports_the_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "name: x\nsearch: [1\n")
    assert error(path).startswith(f"{path}:3: invalid YAML")


def test_missing_file():
    assert "cannot read" in error("/nonexistent/tfnas.yaml")


@pytest.mark.parametrize("override, field", [
    ("search.macro.cells=0", "search.macro.cells"),
    ("eval.macro.channels=0", "eval.macro.channels"),
    ("search.macro.nodes=0", "search.macro.nodes"),
    ("search.macro.stem_multiplier=0", "search.macro.stem_multiplier"),
    ("search.trainer.batch_size=0", "search.trainer.batch_size"),
    ("eval.trainer.epochs=-1", "eval.trainer.epochs"),
    ("data.search_train_fraction=1", "data.search_train_fraction"),
    ("data.search_train_fraction=0", "data.search_train_fraction"),
    ("search.darts.order=3", "search.darts.order"),
    ("search.darts.edges_per_node=0", "search.darts.edges_per_node"),
    ("search.trainer.optimizer.learning_rate=0", "search.trainer.optimizer.learning_rate"),
    ("search.darts.alpha_optimizer.learning_rate=-1e-3", "search.darts.alpha_optimizer.learning_rate"),
    ("search.macro.reduction_cells=[1, 5]", "search.macro.reduction_cells"),
    ("search.darts.primitives=[sep_conv_3x3, sep_conv_3x4]", "search.darts.primitives"),
    ("data.std=[1, 1]", "data.std"),
    ("search.algorithm=ALGORITHM_UNSPECIFIED", "search.algorithm"),
])
def test_validate_errors_name_the_field(override, field):
    assert error(None, [override]).startswith(f"--set {override}: {field}:")  # where the value came from


def test_validate_messages_and_operations_of_the_registry():
    assert error(None, ["search.macro.cells=0"]) == "--set search.macro.cells=0: search.macro.cells: must be >= 1, got 0"
    assert "did you mean 'sep_conv_3x3'?" in error(None, ["search.darts.primitives=[sep_conv_3x4]"])
    c = cfg.load_config()
    c.search.darts.primitives[:] = ["none", "sep_conv_7x7"]  # registered, though not a DARTS primitive
    cfg.validate(c)
    for not_a_candidate in ("stem", "linear", "mixed", "my_op"):  # the registry's, but no edge on their own
        c.search.darts.primitives[:] = [not_a_candidate]
        with pytest.raises(cfg.ConfigError, match=f"search.darts.primitives: unknown operation '{not_a_candidate}'"):
            cfg.validate(c)


@pytest.mark.parametrize("override,message", [
    ("search.random.trials=0", "search.random.trials: must be >= 1, got 0"),
    ("search.random.epochs=0", "search.random.epochs: must be >= 1, got 0"),
    ("search.random.edges_per_node=3", "search.random.edges_per_node: must be 1 or 2"),
    ("search.random.primitives=[sep_conv_9x9]", "search.random.primitives: unknown operation 'sep_conv_9x9'"),
    ("search.random.primitives=[none]", "search.random.primitives: must be a list with at least one operation"),
])
def test_the_selected_algorithm_checks_its_own_section(override, message):
    assert error(None, ["search.algorithm=RANDOM", override]).startswith(f"--set {override}: {message}")
    cfg.load_config(None, [override])  # DARTS selected: the random section is not read


@pytest.mark.parametrize("override, message", [
    ("search.darts.max_skip_connect=-1", "search.darts.max_skip_connect: must be >= 0 (0: no cap), got -1"),
    ("search.darts.beta_regularization=-2", "search.darts.beta_regularization: must be >= 0 (0: off), got -2.0"),
])
def test_darts_collapse_options_are_checked(override, message):
    assert error(None, [override]) == f"--set {override}: {message}"


PETRIDISH = ["search.algorithm=PETRIDISH", "search.macro.project_output=true"]


@pytest.mark.parametrize("override, message", [
    ("search.petridish.n_search_iter=0", "search.petridish.n_search_iter: must be >= 1, got 0"),
    ("search.petridish.l1=-0.1", "search.petridish.l1: must be >= 0, got -0.1"),
    ("search.petridish.kept_candidates=0", "search.petridish.kept_candidates: must be >= 1, got 0"),
    ("search.petridish.pre_train.epochs=-1", "search.petridish.pre_train.epochs: must be >= 0, got -1"),
    ("search.petridish.primitives=[none, sep_conv_3x3]", "search.petridish.primitives: unknown operation 'none'"),
    ("search.macro.project_output=false", "search.macro.project_output: must be true for PETRIDISH"),
])
def test_petridish_checks_its_section(override, message):
    assert error(None, PETRIDISH + [override]).startswith(f"--set {override}: {message}")
    cfg.load_config(None, PETRIDISH)


def test_petridish_budget_pick_needs_a_budget_named_where_it_is_written():
    message = error(None, PETRIDISH + ["search.petridish.pick=BUDGET"])
    assert message.endswith("search.petridish.max_multiply_adds: must be > 0 with pick: BUDGET, got 0")
    assert "default.yaml:" in message  # the budget's own line, not the --set that chose BUDGET
    cfg.load_config(None, PETRIDISH + ["search.petridish.pick=BUDGET", "search.petridish.max_multiply_adds=1000"])


def test_petridish_needs_a_projecting_cell_output_and_says_where_it_is_off():
    message = error(None, ["search.algorithm=PETRIDISH"])
    assert message.endswith("search.macro.project_output: must be true for PETRIDISH (a growing cell must keep its "
                            "output width), got False")
    assert "default.yaml:" in message  # where the value was written


def test_text_format_config(tmp_path):
    path = write(tmp_path, "exp.pbtxt", """
        name: "textual"
        seed: 0
        search { macro { cells: 2 } darts { primitives: "none" primitives: "skip_connect" } }
        eval { macro { aux_tower: false } }
        export { version: 3 }
    """)
    c, default = cfg.load_config(path), cfg.load_config()
    assert c.name == "textual" and c.search.macro.cells == 2 and c.export.version == 3
    assert not c.eval.macro.aux_tower  # a zero value written in the file still overrides the default
    assert list(c.search.darts.primitives) == ["none", "skip_connect"]
    assert c.search.macro.channels == default.search.macro.channels  # the rest stays default
    assert c.eval.macro.aux_weight == default.eval.macro.aux_weight
    assert c.search.trainer == default.search.trainer


def test_text_format_errors_have_file_and_line(tmp_path):
    path = write(tmp_path, "bad.textproto", 'name: "x"\neval { macro { aux_twer: false } }\n')
    message = error(path)
    assert message.startswith(f"{path}:2:") and "aux_twer" in message


def test_save_and_load_round_trip(tmp_path):
    c = cfg.load_config(None, ["search.macro.reduction_cells=[1, 3]", "seed=12345678901",
                               "search.trainer.optimizer.learning_rate=0.0123", "eval.macro.aux_tower=false",
                               "search.trainer.optimizer.min_learning_rate=0", "data.mean=[0.1, 0.2]",
                               "data.std=[0.3, 0.4]", "name=\"round trip: 'quoted'\""])
    out = tmp_path / "runs" / "saved.yaml"
    cfg.save_config(c, out)
    assert c.name == "round trip: 'quoted'" and cfg.load_config(out) == c
    assert [p.name for p in out.parent.iterdir()] == ["saved.yaml"]  # no temp file left behind
    text = out.read_text()
    assert "seed: 12345678901" in text and "include" not in text and "KIND_UNSPECIFIED" not in text
    assert cfg.config_to_yaml(c) == text
    assert yaml.safe_load(text)["search"]["trainer"]["optimizer"]["kind"] == "SGD"


def test_round_trip_of_every_shipped_config(tmp_path):
    for path in sorted(CONFIGS.glob("*.yaml")):
        c = cfg.load_config(path)
        cfg.save_config(c, tmp_path / path.name)
        assert cfg.load_config(tmp_path / path.name) == c, path.name


def test_every_shipped_config_loads_and_cites_the_paper():
    paths = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.pbtxt"))
    assert {"default.yaml", "darts_cifar10_search.yaml", "darts_cifar10_search_second_order.yaml",
            "darts_cifar10_eval.yaml"} <= {p.name for p in paths}
    for path in paths:
        cfg.load_config(path)
        header = path.read_text().split("\n\n")[0]
        assert header.startswith("#") and "ICLR 2019" in header, path.name


def test_pc_darts_config_has_the_papers_settings_on_the_darts_search():
    pc = cfg.load_config(CONFIGS / "pc_darts_cifar10_search.yaml")
    darts_search = cfg.load_config(CONFIGS / "darts_cifar10_search.yaml")
    d = pc.search.darts
    assert (d.partial_channels, d.edge_normalization, d.warmup_epochs, d.max_skip_connect) == (4, True, 15, 0)
    assert d.alpha_optimizer.learning_rate == pytest.approx(6e-4) and pc.search.trainer.batch_size == 256
    assert (pc.search.trainer.epochs, pc.search.macro) == (50, darts_search.search.macro)
    assert darts_search.search.darts.warmup_epochs == 0 and darts_search.search.darts.max_skip_connect == 0


def test_darts_cifar10_configs_match_the_paper():
    search = cfg.load_config(CONFIGS / "darts_cifar10_search.yaml")
    assert search.data.dataset == "cifar10" and search.data.search_train_fraction == 0.5
    m, t = search.search.macro, search.search.trainer
    assert (m.channels, m.cells, t.epochs, t.batch_size, search.search.darts.order) == (16, 8, 50, 64, 1)
    assert t.optimizer.min_learning_rate == pytest.approx(0.001)
    second = cfg.load_config(CONFIGS / "darts_cifar10_search_second_order.yaml")
    assert second.search.darts.order == 2
    second.search.darts.order, second.name = 1, search.name
    assert second == search
    ev = cfg.load_config(CONFIGS / "darts_cifar10_eval.yaml").eval
    assert (ev.macro.cells, ev.macro.channels, ev.trainer.epochs, ev.trainer.batch_size) == (20, 36, 600, 96)
    assert ev.trainer.optimizer.learning_rate == pytest.approx(0.025) and ev.trainer.optimizer.min_learning_rate == 0
    assert ev.macro.aux_tower and ev.macro.aux_weight == pytest.approx(0.4)
    assert ev.drop_path_prob == pytest.approx(0.2)
    assert (ev.augmentation.cutout, ev.augmentation.crop_padding, ev.augmentation.horizontal_flip) == (16, 4, True)


def test_config_does_not_import_tensorflow():
    import subprocess
    import sys
    code = "import sys, tfnas.config; sys.exit('tensorflow' in sys.modules)"
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_float_fields_keep_float32_values_through_yaml():
    c = cfg.load_config(None, ["search.darts.alpha_init_scale=1e-7"])
    assert math.isclose(c.search.darts.alpha_init_scale, 1e-7, rel_tol=1e-6)


def test_a_value_out_of_range_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("search:\n  macro:\n    cells: 0\n")
    assert error(path, []) == f"{path}:3: search.macro.cells: must be >= 1, got 0"  # file, line, key
    assert error(path, ["search.macro.cells=2", "search.macro.nodes=0"]).startswith("--set search.macro.nodes=0: ")


def test_primitives_and_export_version_are_checked():
    assert "without repetitions" in error(None, ["search.darts.primitives=[sep_conv_3x3,sep_conv_3x3]"])
    assert "other than 'none'" in error(None, ["search.darts.primitives=[none]"])
    assert "other than 'none'" in error(None, ["search.darts.primitives=[]"])
    assert error(None, ["export.version=0"]) == "--set export.version=0: export.version: must be >= 1, got 0"
