"""Run directories: what each phase writes where, and the check that a resumed run is the same run.

    <search run>/  config.yaml, final_desc.pbtxt, final_cells.png, final_weights.* (DARTS: the supernet's,
                   PetriDish: the picked model's), tensorboard/, checkpoints/; DARTS also
                   supernet.pbtxt (the search network with its current alphas) and alpha_history.jsonl,
                   random search trials.tsv (one line per trial), PetriDish gallery.tsv, gallery.png,
                   gallery.pbtxt (the same rows as a tfnas.Gallery message) and gallery/<i>.pbtxt
    <eval run>/    config.yaml, model_desc.pbtxt (the network trained), dataset.json (normalisation and
                   class names, which the export needs), metrics.json, final_weights.*, tensorboard/,
                   checkpoints/

`tfnas run` puts one of each under <out>/search and <out>/eval, and the SavedModel under <out>/export.
A run directory may be a URL (gs://bucket/run): every file of it is read and written through tfnas.files.
"""
from __future__ import annotations

import os

from tfnas import config as config_lib, files
from tfnas.errors import UserError
from tfnas.proto import config_pb2

CONFIG_FILE = "config.yaml"
SUPERNET_DESC = "supernet.pbtxt"
FINAL_DESC = "final_desc.pbtxt"
FINAL_CELLS = "final_cells.png"
ALPHA_HISTORY = "alpha_history.jsonl"
TRIALS = "trials.tsv"
GALLERY_TSV = "gallery.tsv"
GALLERY_PNG = "gallery.png"
GALLERY_STATE = "gallery.pbtxt"
GALLERY_DIR = "gallery"
MODEL_DESC = "model_desc.pbtxt"
DATASET_INFO = "dataset.json"
METRICS = "metrics.json"
WEIGHTS = "final_weights"  # a name-keyed TF checkpoint: final_weights.index + .data-*
TENSORBOARD = "tensorboard"


def _experiment(config: config_pb2.ExperimentConfig) -> config_pb2.ExperimentConfig:
    """The configuration without its runtime section (the machine's settings, not the experiment's)."""
    out = config_pb2.ExperimentConfig()
    out.CopyFrom(config)
    out.ClearField("runtime")
    return out


def differences(a: config_pb2.ExperimentConfig, b: config_pb2.ExperimentConfig) -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf field that differs, in schema order."""
    from google.protobuf import json_format

    def flat(message) -> dict:
        data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True)
        out: dict = {}

        def walk(value, prefix):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{prefix}.{k}" if prefix else k)
            else:
                out[prefix] = value
        walk(data, "")
        return out

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]


def prepare(out_dir: str | os.PathLike, config: config_pb2.ExperimentConfig) -> files.AnyPath:
    """Creates the run directory, or checks that an existing one holds a run of the same configuration
    (so a resumed run never mixes two experiments, and nothing already written is overwritten). The
    runtime section may differ: a run can resume on another machine, with other thread counts."""
    out = files.path(out_dir)
    saved = out / CONFIG_FILE
    if saved.exists():
        previous = config_lib.load_config(saved)
        if _experiment(previous) != _experiment(config):
            changes = differences(_experiment(previous), _experiment(config))
            shown = "; ".join(f"{key}: {old!r} there, {new!r} here" for key, old, new in changes[:4])
            more = f" (and {len(changes) - 4} more)" if len(changes) > 4 else ""
            raise UserError(f"{out} holds a run with another configuration ({saved}): {shown}{more}; use the same "
                            "configuration to resume it, --restart to start it over, or a new --out directory")
    else:
        config_lib.save_config(config, saved)  # (creates `out`)
    return out
