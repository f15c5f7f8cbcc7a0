"""pytest fixtures of the end-to-end tests. The binaries come from QUANTCTL_BIN / QUANTD_BIN
(CTest sets them to the targets it built) or, when unset, from build/ or build-e2e/."""

import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import e2e_util  # noqa: E402


def _binary(path, env):
    if path and pathlib.Path(path).exists():
        return path
    if os.environ.get(env):  # CTest names the binary: its absence is a failure, not a skip
        pytest.fail(f"{env}={os.environ[env]} does not exist")
    pytest.skip(f"not built (set {env})")


@pytest.fixture(scope="session")
def quantctl():
    return _binary(e2e_util.quantctl_bin(), "QUANTCTL_BIN")


@pytest.fixture(scope="session")
def quantd(quantctl):
    return _binary(e2e_util.quantd_bin(), "QUANTD_BIN")


@pytest.fixture(scope="module")
def server(quantd, tmp_path_factory):
    """One CPU-backend quantd for the module; it must exit 0 on SIGTERM at the end."""
    srv = e2e_util.QuantdServer(tmp_path_factory.mktemp("quantd")).start()
    yield srv
    alive = srv.alive()
    code = srv.stop()
    assert alive, f"quantd died during the module:\n{srv.log()}"
    assert code == 0, f"quantd exited {code} on SIGTERM:\n{srv.log()}"


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """quantd_pb2, generated from proto/quantd/v1/quantd.proto at test time (the tests call
    the RPCs with raw bytes through grpcio, so the _grpc stubs are generated but unused)."""
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    return e2e_util.generate_stubs(tmp_path_factory.mktemp("stubs"))[0]
