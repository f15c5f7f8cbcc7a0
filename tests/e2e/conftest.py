"""pytest fixtures of the end-to-end tests. The binaries come from QUANTCTL_BIN / QUANTD_BIN
(CTest sets them to the targets it built) or, when unset, from build/ or build-e2e/."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import e2e_util  # noqa: E402


@pytest.fixture(scope="session")
def quantctl():
    return e2e_util.built_binary(e2e_util.quantctl_bin(), "QUANTCTL_BIN")


@pytest.fixture(scope="session")
def quantd(quantctl):
    return e2e_util.built_binary(e2e_util.quantd_bin(), "QUANTD_BIN")


@pytest.fixture(scope="module")
def server(quantd, tmp_path_factory):
    """One CPU-backend quantd for the module; it must exit 0 on SIGTERM at the end."""
    srv = e2e_util.QuantdServer(tmp_path_factory.mktemp("quantd")).start()
    yield srv
    e2e_util.stop_and_check(srv)


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """quantd_pb2, generated from proto/quantd/v1/quantd.proto at test time (the tests call
    the RPCs with raw bytes through grpcio, so the _grpc stubs are generated but unused)."""
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    return e2e_util.generate_stubs(tmp_path_factory.mktemp("stubs"))[0]
