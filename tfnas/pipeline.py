"""`tfnas run`: search, evaluation and export in one command, each phase in its own sub-folder.

    <out>/search/  the search run (final_desc.pbtxt, ...)
    <out>/eval/    training the found cells from scratch (final_weights.*, metrics.json, ...)
    <out>/export/  the SavedModel, <model_name>/<version>/

Every phase resumes from its own checkpoints, and finished phases are skipped, so rerunning the same
command after a crash continues where it stopped.
"""
from __future__ import annotations

import os
from typing import Callable

from tfnas import describe, evaluation, export as export_lib, files, rundir
from tfnas.proto import config_pb2
from tfnas.search import runner


def run(config: config_pb2.ExperimentConfig, out_dir: str | os.PathLike, verbose: int = 1,
        echo: Callable[[str], None] = print) -> dict:
    out = files.path(out_dir)
    echo(f"[1/3] search -> {out / 'search'}")
    final = runner.search(config, out / "search", verbose=verbose)
    echo(f"found: {describe.cells_line(final)}")
    echo(f"[2/3] evaluation -> {out / 'eval'}")
    metrics = evaluation.evaluate(config, str(out / "search" / rundir.FINAL_DESC), out / "eval", verbose=verbose)
    echo(f"test accuracy {metrics['test_accuracy']:.4f}")
    target = out / "export" / (config.export.model_name or "tfnas") / str(int(config.export.version) or 1)
    echo(f"[3/3] export -> {target}")
    if not target.exists() and files.writes():
        export_lib.export(out, out / "export", config.export.model_name or "tfnas", int(config.export.version) or 1,
                          precision=config.export.precision, keep_variables=config.export.keep_variables)
    return {**metrics, "export": str(target)}
