"""What the Client puts on the wire besides tensors, checked with a recording stand-in server:
token and metadata on every call (unary and streamed), TLS with given root certificates, and
the limit it asks for once."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import numpy as np
import pytest

import quantd
from fake_server import FakeServer


def test_token_and_metadata_reach_the_server():
    fake = FakeServer()
    try:
        with quantd.Client(fake.address, token="s3cret", metadata=[("x-team", "quant")],
                           unary_limit_bytes=1 << 20) as c:
            c.capabilities()
            with pytest.raises(quantd.Unimplemented, match="recorded Quantize"):
                c.quantize(np.ones((4, 8), np.float32), "int8")
            with pytest.raises(quantd.Unimplemented, match="recorded QuantizeStream"):
                c.quantize(np.ones((1024, 1024), np.float32), "int8")  # 4 MiB: streamed
        calls = fake.recorder.calls
        assert [name for name, _, _ in calls] == ["GetCapabilities", "Quantize", "QuantizeStream"]
        for _, _, metadata in calls:
            assert metadata.get("authorization") == "Bearer s3cret"
            assert metadata.get("x-team") == "quant"
    finally:
        fake.stop()


def test_capabilities_asked_once():
    fake = FakeServer()
    try:
        with quantd.Client(fake.address) as c:
            for _ in range(3):
                with pytest.raises(quantd.Unimplemented):
                    c.quantize(np.ones((4, 8), np.float32), "int8")
            assert c.unary_limit() == (64 << 20) - (64 << 10)
        names = [name for name, _, _ in fake.recorder.calls]
        assert names.count("GetCapabilities") == 1 and names.count("Quantize") == 3
        # unary_limit_bytes given: no GetCapabilities at all.
        fake.recorder.calls.clear()
        with quantd.Client(fake.address, unary_limit_bytes=1 << 20) as c:
            with pytest.raises(quantd.Unimplemented):
                c.quantize(np.ones((4, 8), np.float32), "int8")
        assert [name for name, _, _ in fake.recorder.calls] == ["Quantize"]
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls(certificate):
    cert, key = certificate
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    fake = FakeServer(credentials)
    try:
        with quantd.Client(fake.address, root_certificates=str(cert), token="t") as c:
            assert c.capabilities().version == "fake"
        with quantd.Client(fake.address,
                           credentials=grpc.ssl_channel_credentials(cert.read_bytes())) as c:
            assert c.capabilities().version == "fake"
        assert fake.recorder.calls[0][2].get("authorization") == "Bearer t"
        # Plaintext to a TLS port, and TLS without trusting the certificate, both fail.
        with quantd.Client(fake.address, timeout=10) as c, pytest.raises(quantd.Unavailable):
            c.capabilities()
        with quantd.Client(fake.address, tls=True, timeout=10) as c, \
                pytest.raises(quantd.Unavailable):
            c.capabilities()
    finally:
        fake.stop()
