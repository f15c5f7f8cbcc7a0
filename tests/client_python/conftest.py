"""Fixtures of the Python client tests: the quantd package from this checkout
(client/python, ahead of any installed copy; QUANTD_TEST_INSTALLED=1 tests the installed one
instead), and real quantd servers started the way the e2e tests start them
(tests/e2e/e2e_util.py: QUANTD_BIN / QUANTCTL_BIN, or build/)."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
if os.environ.get("QUANTD_TEST_INSTALLED") != "1":
    sys.path.insert(0, str(REPO / "client/python"))
sys.path.insert(1, str(REPO / "tests/e2e"))

import e2e_util  # noqa: E402
import quantd  # noqa: E402
from client_util import MAX_MESSAGE_BYTES, STREAM_CHUNK_BYTES  # noqa: E402


@pytest.fixture(scope="session")
def quantctl():
    return e2e_util.built_binary(e2e_util.quantctl_bin(), "QUANTCTL_BIN")


@pytest.fixture(scope="session")
def quantd_binary(quantctl):
    return e2e_util.built_binary(e2e_util.quantd_bin(), "QUANTD_BIN")


@pytest.fixture(scope="module")
def server(quantd_binary, tmp_path_factory):
    """One CPU-backend quantd with a 1 MiB message limit; it must exit 0 on SIGTERM."""
    srv = e2e_util.QuantdServer(tmp_path_factory.mktemp("quantd"),
                                [f"--max-message-bytes={MAX_MESSAGE_BYTES}",
                                 f"--stream-chunk-bytes={STREAM_CHUNK_BYTES}"]).start()
    yield srv
    e2e_util.stop_and_check(srv)


@pytest.fixture(scope="module")
def client(server):
    with quantd.Client(server.address, timeout=120) as c:
        yield c
