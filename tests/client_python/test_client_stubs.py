"""The gRPC stubs shipped in client/python/quantd/v1 are what grpcio-tools makes of
proto/quantd/v1/quantd.proto today (beyond the generator's version stamps), and the package
declares runtime versions those stamps need. After a proto change:
python client/python/generate_stubs.py."""

from __future__ import annotations

import pathlib
import re
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / "client/python"
sys.path.append(str(PACKAGE))  # generate_stubs.py; quantd itself comes from conftest's choice

import generate_stubs  # noqa: E402


def test_shipped_stubs_match_the_proto():
    pytest.importorskip("grpc_tools")
    problems = generate_stubs.stale_stubs()
    assert not problems, ("the stubs in client/python/quantd/v1 are stale; run "
                          "`python client/python/generate_stubs.py`:\n" + "\n".join(problems))


def _floor(requirement: str) -> tuple:
    text = (PACKAGE / "pyproject.toml").read_text()
    found = re.search(rf'"{requirement}>=([0-9.]+)', text)
    assert found, f"pyproject.toml declares no {requirement}>= floor"
    return tuple(int(p) for p in found.group(1).split("."))


def test_declared_dependencies_cover_the_stubs():
    pb2 = (PACKAGE / "quantd/v1/quantd_pb2.py").read_text()
    stamp = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)
    assert stamp, "no protobuf version stamp in quantd_pb2.py"
    assert _floor("protobuf") >= tuple(int(v) for v in stamp.groups())
    grpc_stub = (PACKAGE / "quantd/v1/quantd_pb2_grpc.py").read_text()
    generated = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub).group(1)
    assert _floor("grpcio") >= tuple(int(v) for v in generated.split("."))


def test_the_package_imports_its_stubs_by_the_proto_path():
    import quantd
    from quantd.v1 import quantd_pb2

    assert quantd_pb2.DESCRIPTOR.name == "quantd/v1/quantd.proto"
    assert pathlib.Path(quantd_pb2.__file__).resolve().parent == \
        pathlib.Path(quantd.__file__).resolve().parent / "v1"
