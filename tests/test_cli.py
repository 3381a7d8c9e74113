"""The command line: describe, draw, and one-line errors without tracebacks."""
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from tfnas import cli, descriptors, genotypes
from tfnas.proto import config_pb2


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_help_lists_every_command_with_its_summary():
    result = invoke("--help")
    assert result.exit_code == 0
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in
              result.output.split("Commands:")[1].strip().splitlines()}
    assert sorted(listed) == ["describe", "draw", "eval", "export", "run", "search"]
    assert all(listed.values()), listed  # each with its one-line summary
    for command in listed:  # and each command's own help works
        sub = invoke(command, "--help")
        assert sub.exit_code == 0 and sub.output.startswith(f"Usage: main {command}"), sub.output


def test_describe_darts_v2_json():
    result = invoke("describe", "DARTS_V2", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["params"] == 3_349_342 and info["params_with_aux"] == 3_825_768
    assert info["multiply_adds"] == 528_359_040
    assert info["num_cells"] == 20 and info["channels"] == 36
    assert info["genotype"].startswith("Genotype(normal=[('sep_conv_3x3', 0)")


def test_describe_supernet_json():
    result = invoke("describe", "darts-supernet", "--channels", "16", "--cells", "8", "--json")
    info = json.loads(result.output)
    assert info["params"] == 1_930_618 and info["kind"] == "search" and info["alphas"] == 2 * 14 * 8


def test_describe_a_descriptor_file_resized(tmp_path):
    desc = genotypes.to_desc(genotypes.lookup("PC_DARTS"), config_pb2.MacroConfig(channels=8, cells=5,
                             stem_multiplier=3), [8, 8, 1], 10)
    path = tmp_path / "final.json"
    descriptors.save(desc, path)
    small = json.loads(invoke("describe", str(path), "--json").output)
    big = json.loads(invoke("describe", str(path), "--channels", "16", "--cells", "8", "--json").output)
    assert small["num_cells"] == 5 and big["num_cells"] == 8 and big["channels"] == 16
    assert big["params"] > small["params"] and big["genotype"] == small["genotype"]
    text = invoke("describe", str(path)).output
    assert "params:" in text and "multiply-adds:" in text and "reduction cell" in text


def test_draw_writes_a_picture(tmp_path):
    out = tmp_path / "cells.png"
    result = invoke("draw", "DARTS_V1", "-o", str(out))
    assert result.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke("draw", "DARTS_V1", "-o", str(tmp_path / "cells.bmpx"))
    assert result.exit_code == 2 and "error:" in result.output


def test_describe_bad_inputs_give_one_clear_line(tmp_path):
    missing = invoke("describe", "NOT_AN_ARCH")
    assert missing.exit_code == 2
    assert missing.output.strip() == ("error: NOT_AN_ARCH: neither a descriptor file nor a known architecture "
                                      "(DARTS, DARTS_V1, DARTS_V2, PC_DARTS, darts-supernet)")
    bad = tmp_path / "bad.pbtxt"
    bad.write_text('input_shape: [8, 8, 1]\nnum_classes: 10\ncells { id: "c0" channels: 4 nodes { edges { op { name: "sep_conv_9x9" } inputs: 0 } } }\n')
    result = invoke("describe", str(bad))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {bad}: ")


def test_no_traceback_from_the_real_executable(tmp_path):
    bad = tmp_path / "broken.pbtxt"
    bad.write_text("cells { nodes { edges { op { name: 3 } } } ")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "tfnas.cli", "describe", str(bad)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]]
    assert done.stderr.startswith(f"error: {bad}:")
