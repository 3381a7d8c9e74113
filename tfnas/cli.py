"""The `tfnas` command line: describe, draw, search, eval, export and run.

Every command turns a known failure (bad file, bad key, missing data) into one line on stderr and a
non-zero exit code; set TFNAS_DEBUG=1 to see the Python traceback instead.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import click

EXIT_BAD_INPUT = 2
# Lines TensorFlow's C++ runtime prints at import whatever TF_CPP_MIN_LOG_LEVEL says.
_IMPORT_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on")


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its start-up banner filtered out of stderr (other lines are kept)."""
    if "tensorflow" in sys.modules:
        return
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not any(n in line for n in _IMPORT_NOISE):
                    print(line, file=sys.stderr)


def _friendly(fn):
    """Runs a command, turning exceptions into one clear line (no traceback) and exit code 2 or 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _import_tensorflow_quietly()
            from tfnas import runtime
            runtime.configure_threads()
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted: run the same command again to resume from the last checkpoint", err=True)
            sys.exit(130)
        except Exception as err:  # noqa: BLE001 - this is the one place that reports errors
            if os.environ.get("TFNAS_DEBUG"):
                raise
            from tfnas.errors import UserError
            message = " ".join(str(err).split()) or type(err).__name__
            if isinstance(err, (UserError, FileNotFoundError)):
                click.echo(f"error: {message}", err=True)
                sys.exit(EXIT_BAD_INPUT)
            click.echo(f"error: {type(err).__name__}: {message} (TFNAS_DEBUG=1 shows the traceback)", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfnas")
def main():
    """tfnas: neural architecture search for TensorFlow and Keras.

    Search a cell (DARTS), train the found network from scratch, export it for TF Serving.
    """


def arch_options(fn):
    opts = [
        click.argument("arch"),
        click.option("--channels", type=click.IntRange(min=1), help="Channels of the first cells (C)."),
        click.option("--cells", type=click.IntRange(min=1), help="Number of cells."),
        click.option("--classes", type=click.IntRange(min=1),
                     help="Classes (default: 10 for a named architecture, a file's own)."),
        click.option("--image-size", type=click.IntRange(min=1),
                     help="Input height and width (default: 32 for a named architecture, a file's own)."),
        click.option("--input-channels", type=click.IntRange(min=1),
                     help="Input channels (default: 3 for a named architecture, a file's own)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@main.command()
@arch_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@_friendly
def describe(arch, channels, cells, classes, image_size, input_channels, as_json):
    """Cells, operations, parameters and multiply-adds of ARCH.

    ARCH is a published architecture (DARTS_V1, DARTS_V2, PC_DARTS), `darts-supernet` (the DARTS search
    network) or a descriptor file (.pbtxt, .json, .pb). Published cells default to the DARTS evaluation
    network (36 channels, 20 cells), the supernet to the search network (16 channels, 8 cells).
    """
    from tfnas import describe as describe_lib
    desc = _resolve(arch, channels, cells, classes, image_size, input_channels)
    info = describe_lib.describe(desc, arch)
    click.echo(json.dumps(info, indent=2) if as_json else describe_lib.format_text(info))


@main.command()
@arch_options
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Picture to write (.png, .jpg or .svg).")
@_friendly
def draw(arch, channels, cells, classes, image_size, input_channels, out):
    """Draw the normal and reduction cells of ARCH as a picture."""
    from tfnas import draw as draw_lib
    desc = _resolve(arch, channels, cells, classes, image_size, input_channels)
    draw_lib.save(draw_lib.draw_cells(desc), out)
    click.echo(f"wrote {out}")


def _resolve(arch, channels, cells, classes, image_size, input_channels):
    from tfnas import architectures
    shape = None
    if image_size or input_channels:
        size = image_size or architectures.DEFAULT_INPUT_SHAPE[0]
        shape = [size, size, input_channels or architectures.DEFAULT_INPUT_SHAPE[2]]
    return architectures.resolve(arch, input_shape=shape, num_classes=classes, channels=channels, cells=cells)


STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def config_options(fn):
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="YAML or text-format configuration, layered on configs/default.yaml "
                          "(without it: the built-in default)."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override one setting, e.g. --set search.trainer.epochs=5 (repeatable)."),
        click.option("--strategy", type=click.Choice(STRATEGIES, case_sensitive=False),
                     help="Where the training steps run (runtime.strategy): one device, every local GPU "
                          "(or runtime.cpu_devices logical CPUs), the workers of TF_CONFIG, or a TPU."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_dir_options(default: str, what: str):
    """--out (a resumable run directory), --restart and --quiet, shared by the commands that train."""
    def decorate(fn):
        fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
        fn = click.option("--restart", is_flag=True,
                          help="Start over: remove what the run directory holds (after saying what) first.")(fn)
        return click.option("--out", "out", default=default, show_default=True, type=click.Path(file_okay=False),
                            help=f"Run directory{what}; running again on the same directory resumes.")(fn)
    return decorate


def _restart(out, config) -> None:
    """Empties a run directory for --restart, saying first what goes; only what tfnas writes there.

    In a multi-worker run the workers start their cluster first, so that only the chief removes, and
    wait for it: no worker may read the old run's checkpoints while, or before, the chief removes them."""
    from tfnas import distribute, files, rundir, runtime
    from tfnas.errors import UserError
    if config.runtime.strategy == config.runtime.MULTI_WORKER:
        runtime.configure_threads(config.runtime)
        distribute.get_strategy(config.runtime)  # the one this process's run then uses
    out = files.path(out)
    if files.writes() and out.exists():
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
        if entries and not any((out / sub / rundir.CONFIG_FILE).exists() for sub in ("", "search", "eval")):
            raise UserError(f"--restart: {out} holds no tfnas run (no {rundir.CONFIG_FILE}); not removing it")
        click.echo(f"--restart: removing {out}: {', '.join(entries) or 'nothing'}")
        files.rmtree(out)
    distribute.barrier()


def _load(config_path, overrides, strategy=None):
    from tfnas import config as config_lib
    if strategy:  # after the --set overrides: the flag is the more specific choice
        overrides = (*overrides, f"runtime.strategy={strategy.upper()}")
    return config_lib.load_config(config_path, overrides)


@main.command()
@config_options
@run_dir_options("runs/search", "")
@_friendly
def search(config_path, overrides, strategy, out, restart, quiet):
    """Search a cell architecture (DARTS, random search or PetriDish) and write OUT/final_desc.pbtxt.

    With no --config it runs the built-in default: a first-order DARTS search on the built-in digits data
    (no download), a few minutes on 2 CPU cores.
    """
    from tfnas import describe as describe_lib, files, rundir
    from tfnas.search import runner
    config = _load(config_path, overrides, strategy)
    if restart:  # after the configuration is known to be good: bad input removes nothing
        _restart(out, config)
    final = runner.search(config, out, verbose=0 if quiet else 1)
    out = files.path(out)
    click.echo(describe_lib.format_text(describe_lib.describe(final, str(out / rundir.FINAL_DESC))))
    click.echo(f"found architecture: {out / rundir.FINAL_DESC} (cells drawn in {out / rundir.FINAL_CELLS})")


@main.command("eval")
@click.option("--desc", "arch", required=True,
              help="Final descriptor file (e.g. runs/default/final_desc.pbtxt) or a published name (DARTS_V2).")
@config_options
@run_dir_options("runs/eval", "")
@_friendly
def eval_command(arch, config_path, overrides, strategy, out, restart, quiet):
    """Train a found architecture from scratch and report its test accuracy.

    The cells of --desc are expanded to the depth and width of `eval.macro` (DARTS: 20 cells, 36 channels)
    and trained with the auxiliary tower, drop path and augmentation of the configuration.
    """
    from tfnas import evaluation, rundir
    config = _load(config_path, overrides, strategy)
    if restart:  # after the configuration is known to be good: bad input removes nothing
        _restart(out, config)
    final = evaluation.evaluate(config, arch, out, verbose=0 if quiet else 1)
    click.echo(f"test accuracy {final['test_accuracy']:.4f} ({final['params']:,} params, "
               f"{final['epochs']} epochs); weights in {out}/{rundir.WEIGHTS}.*")


@main.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A `tfnas eval` directory, or a `tfnas run` directory (its eval/ phase is exported).")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Export base directory (default: RUN/export); the model goes to OUT/<model_name>/<version>.")
@click.option("--model-name", help="Model name in the TF Serving layout (default: export.model_name).")
@click.option("--version", "version", type=click.IntRange(min=1), help="Version (default: export.version).")
@click.option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False),
              help="The serving graph's compute precision (default: export.precision); a half-precision graph is "
                   "compared with float32 on probe images (assets/export_check.json).")
@click.option("--keep-variables", is_flag=True,
              help="Keep the weights as variables (variables/) instead of graph constants (export.keep_variables).")
@_friendly
def export_command(run_dir, out, model_name, version, precision, keep_variables):
    """Export the trained network as a SavedModel in the TF Serving layout."""
    from tfnas import config as config_lib, export as export_lib, files, rundir
    from tfnas.proto import descriptors_pb2
    run = files.path(run_dir)
    saved = next((p for p in (run / rundir.CONFIG_FILE, run / "eval" / rundir.CONFIG_FILE) if p.exists()), None)
    config = config_lib.load_config(saved) if saved else config_lib.load_config()
    chosen = descriptors_pb2.CompilerOptions.Precision.Value(precision.upper()) if precision else \
        config.export.precision
    path = export_lib.export(run, out, model_name or config.export.model_name or "tfnas",
                             version or int(config.export.version) or 1, precision=chosen,
                             keep_variables=keep_variables or config.export.keep_variables)
    click.echo(f"exported {path}")
    check = path / "assets" / export_lib.CHECK_FILE
    if check.exists():
        import json
        c = json.loads(check.read_text())
        click.echo(f"{c['precision']} against float32 on {c['images']} probe images: classes agree on "
                   f"{100 * c['class_agreement']:.1f} %, probabilities within {c['max_abs_probability_difference']:.4f}")


@main.command()
@config_options
@run_dir_options("runs/run", " (phases in search/, eval/ and export/)")
@_friendly
def run(config_path, overrides, strategy, out, restart, quiet):
    """Search, evaluate and export in one command (the built-in default without arguments)."""
    from tfnas import pipeline
    config = _load(config_path, overrides, strategy)
    if restart:  # after the configuration is known to be good: bad input removes nothing
        _restart(out, config)
    result = pipeline.run(config, out, verbose=0 if quiet else 1, echo=click.echo)
    click.echo(f"done: test accuracy {result['test_accuracy']:.4f}; SavedModel {result['export']}")


if __name__ == "__main__":
    main()
