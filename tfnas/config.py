"""Loads experiment configurations (YAML or protobuf text format) into `config_pb2.ExperimentConfig`.

Layers, each deep-merged on the previous one (mappings merge, lists and scalars replace):
configs/default.yaml (every default) <- the user's file (after its `include`s) <- `--set key=value`.
Every layer is checked against the message descriptor while its YAML node tree is still at hand, so a
mistake is reported with the file and line it came from rather than as a bare protobuf error at the end;
the loader also remembers where each key was last written, so a value the semantic checks refuse (a range,
an operation the registry does not know, the selected algorithm's own checks) is reported there too.
Importing this module does not import TensorFlow; checking operation names against the op registry does.
"""
from __future__ import annotations

import difflib
import os
import pathlib
from typing import Any, Sequence

import yaml
from google.protobuf import descriptor, json_format, text_format

from tfnas import files
from tfnas.errors import UserError
from tfnas.proto import config_pb2

DEFAULT_CONFIG_PATH = pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
TEXT_FORMAT_SUFFIXES = (".pbtxt", ".textproto")

_FD = descriptor.FieldDescriptor
_INTS = {_FD.CPPTYPE_INT32: (-2**31, 2**31 - 1), _FD.CPPTYPE_INT64: (-2**63, 2**63 - 1),
         _FD.CPPTYPE_UINT32: (0, 2**32 - 1), _FD.CPPTYPE_UINT64: (0, 2**64 - 1)}
_FLOATS = (_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE)
_ROOT = config_pb2.ExperimentConfig.DESCRIPTOR


class ConfigError(UserError):
    """A configuration mistake; str() is one line naming where (file:line or --set item) and what.
    `field`: the dotted key a semantic check refused, so the loader can say where its value came from."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _repeated(field: _FD) -> bool:
    # `is_repeated` replaced `label` in newer protobuf runtimes; setup.py accepts both generations.
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == _FD.LABEL_REPEATED


def _where(src: str, node: yaml.Node | None) -> str:
    return src if node is None or src.startswith("--set") else f"{src}:{node.start_mark.line + 1}"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value) if node.value else "nothing"


def _expected(src: str, node: yaml.Node, path: str, expected: str) -> ConfigError:
    named = "" if src.startswith(f"--set {path}=") else f" {path or 'configuration'}:"  # else said twice
    return ConfigError(f"{_where(src, node)}:{named} expected {expected}, got {_kind(node)}")


def suggest(word: str, choices: Sequence[str]) -> str:
    """A " (did you mean 'x'?)" hint naming the closest of `choices`, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --- YAML node tree -> plain dict, checked against the descriptor -------------------------------------

def _message(node: yaml.Node, desc: descriptor.Descriptor, path: str, src: str) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return {}  # `section:` with every key commented out
    if not isinstance(node, yaml.MappingNode):
        raise _expected(src, node, path, "a mapping")
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else _kind(key_node)
        field = desc.fields_by_name.get(key)
        if field is None:
            where = f"in {path}" if path else "at the top level"
            raise ConfigError(f"{_where(src, key_node)}: unknown key '{key}' {where}"
                              + suggest(key, list(desc.fields_by_name)))
        if key in out:
            raise ConfigError(f"{_where(src, key_node)}: duplicate key '{key}' in {path or 'the file'}")
        out[key] = _field(value_node, field, f"{path}.{key}" if path else key, src)
    return out


def _field(node: yaml.Node, field: _FD, path: str, src: str) -> Any:
    if not _repeated(field):
        return _value(node, field, path, src)
    if path == "include" and isinstance(node, yaml.ScalarNode):
        node = yaml.SequenceNode("tag:yaml.org,2002:seq", [node])  # `include: base.yaml`
    if not isinstance(node, yaml.SequenceNode):
        raise _expected(src, node, path, "a list")
    return [_value(item, field, f"{path}[{i}]", src) for i, item in enumerate(node.value)]


def _value(node: yaml.Node, field: _FD, path: str, src: str) -> Any:
    if field.message_type is not None:
        return _message(node, field.message_type, path, src)

    def fail(expected: str) -> ConfigError:
        return _expected(src, node, path, expected)

    if not isinstance(node, yaml.ScalarNode):
        raise fail("a single value")
    if field.cpp_type == _FD.CPPTYPE_STRING:
        return node.value  # the scalar's text: `version: 1.10` stays "1.10"
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError:  # an explicit tag such as !!python/object
        raise fail("a plain value") from None
    if field.cpp_type == _FD.CPPTYPE_ENUM:
        names = [v.name for v in field.enum_type.values]
        if isinstance(value, str) and value.upper() in names:  # `precision: mixed_bfloat16` reads too
            value = value.upper()
        if value not in names:
            allowed = ", ".join(n for n in names if not n.endswith("_UNSPECIFIED"))
            raise fail(f"one of {allowed}")
        return value
    if field.cpp_type == _FD.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail("an integer" if field.cpp_type in _INTS else "a number")
    if field.cpp_type in _FLOATS:
        try:
            return float(value)  # PyYAML reads `3e-4` (no dot) as a string
        except ValueError:
            raise fail("a number") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    low, high = _INTS[field.cpp_type]
    if not isinstance(value, int) or not low <= value <= high:
        raise fail("an integer" if not isinstance(value, int) else f"an integer in [{low}, {high}]")
    return value


# --- files, includes, overrides ---------------------------------------------------------------------

def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def _text_format_dict(text: str, src: str) -> dict[str, Any]:
    """The fields a text-format file writes. MessageToDict alone would drop the ones written with a zero
    value (proto3 has no presence), so `aux_tower: false` could not override a default of true: the
    text is also merged over a message whose every scalar is non-zero, and fields that agree in both
    parses are the ones the file wrote."""
    plain, marked = config_pb2.ExperimentConfig(), _marked(config_pb2.ExperimentConfig())
    try:
        text_format.Parse(text, plain)
        text_format.Merge(text, marked)
    except text_format.ParseError as err:
        line = err.GetLine()
        raise ConfigError(f"{src}:{line}: {str(err).split(':', 2)[-1].strip()}" if line
                          else f"{src}: {err}") from None
    return _written(plain, marked)


def _marked(message: Any) -> Any:
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and not _repeated(field):
            _marked(getattr(message, field.name))
        elif not _repeated(field):
            marker = {_FD.CPPTYPE_STRING: "\0", _FD.CPPTYPE_BOOL: True}.get(field.cpp_type, 1)
            setattr(message, field.name, marker)
    return message


def _written(plain: Any, marked: Any) -> dict[str, Any]:
    full = json_format.MessageToDict(plain, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    out: dict[str, Any] = {}
    for field in plain.DESCRIPTOR.fields:
        value = getattr(plain, field.name)
        if _repeated(field):
            if len(value):
                out[field.name] = full[field.name]
        elif field.message_type is not None:
            if plain.HasField(field.name):
                out[field.name] = _written(value, getattr(marked, field.name))
        elif value == getattr(marked, field.name):
            out[field.name] = full[field.name]
    return _tidy(out, plain.DESCRIPTOR)


def _key_positions(node: yaml.Node, prefix: str, src: str, out: dict[str, str]) -> None:
    """Where each key of a YAML mapping was written: {dotted key: "file:line"}."""
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        out[path] = _where(src, key_node)
        _key_positions(value_node, path, src, out)


def _read_file(path: files.AnyPath, src: str, chain: tuple[files.AnyPath, ...],
               positions: dict[str, str]) -> dict[str, Any]:
    """One file with its includes resolved (they come first, in order, then the file's own keys).
    `positions` gets where each key was written, later files over earlier ones, as the values merge."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{src}: cannot read: {err.strerror or err}") from None
    include_node = None
    if path.suffix in TEXT_FORMAT_SUFFIXES:
        data = _text_format_dict(text, src)
        own = {key: src for key in _dotted_keys(data)}
    else:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            raise ConfigError(f"{src}:{mark.line + 1 if mark else '?'}: invalid YAML: "
                              f"{err.problem or err.context}") from None
        data = {} if root is None else _message(root, _ROOT, "", src)
        own = {}
        if isinstance(root, yaml.MappingNode):
            include_node = next((k for k, _ in root.value if k.value == "include"), None)
            _key_positions(root, "", src, own)
    merged: dict[str, Any] = {}
    for name in data.pop("include", []):
        target = (path.parent / name).resolve()
        if not target.is_file():
            raise ConfigError(f"{_where(src, include_node)}: included file '{name}' not found ({target})")
        if target in chain:
            cycle = " -> ".join(p.name for p in chain[chain.index(target):] + (target,))
            raise ConfigError(f"{_where(src, include_node)}: include cycle: {cycle}")
        merged = _merge(merged, _read_file(target, str(files.path(src).parent / name), chain + (target,),
                                           positions))
    positions.update(own)
    return _merge(merged, data)


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        keys.append(path)
        if isinstance(value, dict):
            keys += _dotted_keys(value, path)
    return keys


def _override(item: str) -> dict[str, Any]:
    src = f"--set {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{src}: expected key=value, e.g. search.trainer.epochs=3")
    parts = key.strip().split(".")
    desc, path = _ROOT, ""
    if parts == ["include"]:
        raise ConfigError(f"{src}: includes belong in files, not in --set")
    for part in parts:
        field = desc.fields_by_name.get(part) if desc is not None else None
        if field is None:
            where = f"in {path}" if path else "at the top level"
            raise ConfigError(f"{src}: unknown key '{part}' {where}"
                              + suggest(part, list(desc.fields_by_name) if desc else []))
        path = f"{path}.{part}" if path else part
        desc = field.message_type if not _repeated(field) else None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{src}: invalid value: {getattr(err, 'problem', err)}") from None
    value = _field(node or yaml.ScalarNode("tag:yaml.org,2002:null", ""), field, path, src)
    for part in reversed(parts):
        value = {part: value}
    return value


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Sequence[str] = ()) -> config_pb2.ExperimentConfig:
    """Default config <- `path` (YAML or text format, includes resolved) <- `--set` overrides,
    checked against the schema (file:line errors) and by `validate`."""
    default = DEFAULT_CONFIG_PATH.resolve()
    positions: dict[str, str] = {}  # dotted key -> where its value was last written
    data = _read_file(default, str(DEFAULT_CONFIG_PATH), (default,), positions)
    if path is not None:
        user = files.path(path).resolve()
        data = _merge(data, _read_file(user, str(path), (user,), positions))
    for item in overrides:
        override = _override(item)
        data = _merge(data, override)
        positions.update({key: f"--set {item}" for key in _dotted_keys(override)})
    config = config_pb2.ExperimentConfig()
    try:
        json_format.ParseDict(data, config, ignore_unknown_fields=False)
    except json_format.ParseError as err:  # the checks above should make this unreachable
        raise ConfigError(f"{path or DEFAULT_CONFIG_PATH}: {err}") from None
    try:
        validate(config)
    except ConfigError as err:  # a value out of range: say where it was written (the key is named)
        where = _position(positions, err.field) if err.field else None
        raise ConfigError(f"{where}: {err}" if where else str(err), err.field) from None
    return config


def default_runtime() -> config_pb2.RuntimeConfig:
    """The runtime section of configs/default.yaml alone: what commands without a configuration (describe,
    draw) run with, read without the whole configuration's checks."""
    data = _read_file(DEFAULT_CONFIG_PATH.resolve(), str(DEFAULT_CONFIG_PATH), (DEFAULT_CONFIG_PATH.resolve(),), {})
    return json_format.ParseDict(data.get("runtime", {}), config_pb2.RuntimeConfig())


def _position(positions: dict[str, str], field: str) -> str | None:
    """Where `field` (or the nearest enclosing key, for list items) was last written."""
    field = field.split("[")[0]
    while field:
        if field in positions:
            return positions[field]
        field = field.rpartition(".")[0]
    return None


# --- semantic checks and saving ---------------------------------------------------------------------

def validate(config: config_pb2.ExperimentConfig) -> None:
    """Checks what the schema cannot express (ranges, op names) so runs fail before building a model; the
    selected search algorithm checks its own section (and its operation names against the op registry)."""
    data, search = config.data, config.search
    check(0 < data.search_train_fraction < 1, "data.search_train_fraction", "in (0, 1)",
          data.search_train_fraction)
    for name in ("image_size", "max_train_examples", "max_test_examples"):
        check(getattr(data, name) >= 0, f"data.{name}", ">= 0", getattr(data, name))
    check(not (data.mean or data.std) or len(data.mean) == len(data.std), "data.std",
          f"as long as data.mean ({len(data.mean)})", list(data.std))
    check(all(s > 0 for s in data.std), "data.std", "> 0 everywhere", list(data.std))
    check_enum("search", search, "algorithm")
    for stage in ("search", "eval"):
        macro, trainer = getattr(config, stage).macro, getattr(config, stage).trainer
        for name in ("channels", "cells", "nodes", "stem_multiplier"):
            check(getattr(macro, name) >= 1, f"{stage}.macro.{name}", ">= 1", getattr(macro, name))
        for index in macro.reduction_cells:
            check(0 <= index < macro.cells, f"{stage}.macro.reduction_cells",
                  f"indices in [0, {macro.cells})", index)
        check(trainer.batch_size >= 1, f"{stage}.trainer.batch_size", ">= 1", trainer.batch_size)
        for name in ("epochs", "max_steps_per_epoch", "checkpoint_every_steps"):
            check(getattr(trainer, name) >= 0, f"{stage}.trainer.{name}", ">= 0", getattr(trainer, name))
    for field, opt in {"search.trainer.optimizer": search.trainer.optimizer,
                       "eval.trainer.optimizer": config.eval.trainer.optimizer}.items():
        check_optimizer(field, opt)
    for stage in ("search", "eval"):
        for name in ("crop_padding", "cutout"):
            value = getattr(getattr(config, stage).augmentation, name)
            check(value >= 0, f"{stage}.augmentation.{name}", ">= 0", value)
    check(0 <= config.eval.drop_path_prob < 1, "eval.drop_path_prob", "in [0, 1)",
          config.eval.drop_path_prob)
    check(config.export.version >= 1, "export.version", ">= 1", config.export.version)
    runtime = config.runtime
    for name in ("inter_op_threads", "intra_op_threads", "cpu_devices"):
        check(getattr(runtime, name) >= 0, f"runtime.{name}", ">= 0", getattr(runtime, name))
    from tfnas.search import algorithm  # the selected algorithm checks its own section
    algorithm.get(search.algorithm).validate(config)


def check(ok: bool, field: str, requirement: str, value: Any) -> None:
    """Raises ConfigError "field: must be requirement, got value" unless `ok`."""
    if not ok:
        raise ConfigError(f"{field}: must be {requirement}, got {value!r}", field)


def check_enum(field: str, message: Any, name: str) -> None:
    """An enum field must be set to one of its named values (not the UNSPECIFIED zero)."""
    value = getattr(message, name)
    enum = message.DESCRIPTOR.fields_by_name[name].enum_type
    allowed = ", ".join(v.name for v in enum.values if v.number)
    check(value != 0, f"{field}.{name}", f"one of {allowed}", enum.values_by_number[value].name)


def check_optimizer(field: str, opt: config_pb2.OptimizerConfig) -> None:
    check(opt.learning_rate > 0, f"{field}.learning_rate", "> 0", opt.learning_rate)
    check_enum(field, opt, "kind")
    check_enum(field, opt, "schedule")


def _tidy(data: dict[str, Any], desc: descriptor.Descriptor) -> dict[str, Any]:
    """Orders keys as the schema declares them and turns 64-bit integers, which MessageToDict writes as
    JSON strings, back into numbers (load_config would rightly refuse '0' for an integer)."""
    out: dict[str, Any] = {}
    for field in desc.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        items = value if isinstance(value, list) else [value]
        if field.message_type is not None:
            items = [_tidy(item, field.message_type) for item in items]
        elif field.cpp_type in (_FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT64):
            items = [int(item) for item in items]
        out[field.name] = items if isinstance(value, list) else items[0]
    return out


def config_to_yaml(config: config_pb2.ExperimentConfig) -> str:
    """Every field, zeros included: a saved config must not depend on the defaults of the reader."""
    data = json_format.MessageToDict(config, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)
    data.pop("include", None)  # already resolved; relative paths would not survive a move
    return yaml.safe_dump(_tidy(data, _ROOT), sort_keys=False, default_flow_style=False)


def save_config(config: config_pb2.ExperimentConfig, path: str | os.PathLike[str]) -> None:
    """Writes `config` as YAML that load_config reads back equal; atomic, so a crash leaves no half file."""
    files.write_atomic(path, config_to_yaml(config))
