"""The generated protobuf code is in step with protos/ and imports on every runtime we allow."""
import pathlib
import re

import pytest

from tfnas import protogen

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_is_not_stale():
    pytest.importorskip("grpc_tools", reason="needs grpcio-tools 1.71 (README's test command installs it)")
    assert protogen.stale_files() == []


def test_every_proto_has_generated_code():
    for src in protogen.proto_sources():
        rel = src.relative_to(protogen.PROTO_ROOT).with_suffix("")
        assert (ROOT / f"{rel}_pb2.py").is_file(), rel


def test_gencode_is_not_newer_than_the_oldest_runtime_setup_allows():
    setup = (ROOT / "setup.py").read_text()
    minimum = tuple(int(x) for x in re.search(r'"protobuf>=([\d.]+)', setup).group(1).split("."))
    for gen in (ROOT / "tfnas" / "proto").glob("*_pb2.py"):
        version = re.search(r"Protobuf Python Version: ([\d.]+)", gen.read_text()).group(1)
        assert tuple(int(x) for x in version.split(".")) <= minimum, (gen.name, version, minimum)
