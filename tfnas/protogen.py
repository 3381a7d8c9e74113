"""Generates the Python code of the descriptor schema: `python -m tfnas.protogen [--check]`.

The generated modules (tfnas/proto/*_pb2.py) are committed so that users need no protoc. They are
produced by grpcio-tools 1.71.x on purpose: its gencode (5.29.0) imports on every protobuf runtime that
TensorFlow 2.20 and 2.21 accept from 5.29 on, while a newer protoc emits code that refuses older
runtimes. Install it beside tfnas with `pip install --no-deps "grpcio-tools==1.71.2"` (its declared
protobuf<6 pin is about its own runtime use, which this does not need).
"""
from __future__ import annotations

import argparse
import difflib
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
REQUIRED_GRPCIO_TOOLS = "1.71."


def proto_sources() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc on every source under protos/ into out_dir; returns the generated files."""
    try:
        import grpc_tools
    except ImportError as err:  # pragma: no cover - exercised by users without the tool
        raise SystemExit(
            'protogen needs grpcio-tools 1.71: pip install --no-deps "grpcio-tools==1.71.2"') from err
    from importlib.metadata import version

    tools_version = version("grpcio-tools")
    if not tools_version.startswith(REQUIRED_GRPCIO_TOOLS):
        raise SystemExit(f"protogen needs grpcio-tools {REQUIRED_GRPCIO_TOOLS}x (found {tools_version}): "
                         "newer ones emit code that older protobuf runtimes refuse")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_sources()]
    # In a child process: protoc's extension crashes a process that has already loaded TensorFlow.
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
            f"--python_out={out_dir}", *sources]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed: {done.stderr.strip()}")
    return [out_dir / s.replace(".proto", "_pb2.py") for s in sources]


def stale_files() -> list[str]:
    """Generated files that differ from what the .proto sources give now (with a short diff)."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(pathlib.Path(tmp)):
            rel = fresh.relative_to(tmp)
            committed = ROOT / rel
            if not committed.exists():
                problems.append(f"{rel}: missing")
                continue
            new, old = fresh.read_text(), committed.read_text()
            if new != old:
                diff = "".join(list(difflib.unified_diff(old.splitlines(True), new.splitlines(True)))[:20])
                problems.append(f"{rel}: stale\n{diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale generated files")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files()
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
