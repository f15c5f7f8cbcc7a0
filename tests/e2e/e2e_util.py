"""Helpers shared by the end-to-end tests: finding the binaries, running quantctl, starting and
stopping a real quantd, scraping /metrics, comparing results with the oracle."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import urllib.request
from typing import Optional, Sequence

import numpy as np

import oracle

REPO = pathlib.Path(__file__).resolve().parents[2]


def _binary(env: str, relative: str) -> Optional[str]:
    path = os.environ.get(env)
    if path:
        return path
    for build in ("build", "build-e2e"):
        candidate = REPO / build / relative
        if candidate.exists():
            return str(candidate)
    return None


def quantctl_bin() -> Optional[str]:
    return _binary("QUANTCTL_BIN", "client/quantctl")


def quantd_bin() -> Optional[str]:
    return _binary("QUANTD_BIN", "server/quantd")


def built_binary(path: Optional[str], env: str) -> str:
    """`path` when it exists; else the test fails where CTest named the binary in `env` (its
    absence is then an error), and skips where nothing named it (not built)."""
    import pytest  # only the pytest fixtures call this

    if path and pathlib.Path(path).exists():
        return path
    if os.environ.get(env):
        pytest.fail(f"{env}={os.environ[env]} does not exist")
    pytest.skip(f"not built (set {env})")


def stop_and_check(server, timeout: Optional[float] = None) -> None:
    """Stops a QuantdServer a test module ran against: it must have lived through the module
    and exit 0 on SIGTERM."""
    alive = server.alive()
    code = server.stop() if timeout is None else server.stop(timeout=timeout)
    assert alive, f"{server.log_path.name} died during the module:\n{server.log()}"
    assert code == 0, f"quantd exited {code} on SIGTERM:\n{server.log()}"


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# quantctl

def run_quantctl(args: Sequence[str], server: Optional[str] = None, check: bool = True,
                 timeout: float = 120, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    binary = quantctl_bin()
    command = [binary]
    if server:
        command.append(f"--server={server}")
    command += [str(a) for a in args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}")
    return proc


def last_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "quantctl printed nothing on stdout"
    return json.loads(lines[-1])


def spec_flags(spec: oracle.Spec) -> list:
    """quantctl flags for an oracle spec."""
    flags = [f"--format={spec.format}", f"--granularity={spec.granularity}"]
    if spec.granularity == "channel":
        flags.append(f"--axis={spec.axis}")
    if spec.granularity == "group":
        flags.append(f"--group_size={spec.group_size}")
    if spec.granularity == "block":
        flags.append(f"--block={spec.block[0]}x{spec.block[1]}")
    if spec.asymmetric:
        flags.append("--asymmetric")
    if spec.rounding != "rne":
        flags.append(f"--rounding={spec.rounding}")
    if spec.seed:
        flags.append(f"--seed={spec.seed}")
    if spec.overflow != "saturate":
        flags.append(f"--overflow={spec.overflow}")
    if spec.clip_ratio != 1.0:
        flags.append(f"--clip_ratio={spec.clip_ratio!r}")
    if spec.nan_policy:
        flags.append(f"--nan_policy={spec.nan_policy}")
    if spec.packing != "bitstream":
        flags.append(f"--packing={spec.packing}")
    return flags


def save_npy(path, x: np.ndarray) -> str:
    np.save(str(path), x, allow_pickle=False)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Comparisons

def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, oracle {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    itemsize = got.dtype.itemsize
    g = np.ascontiguousarray(got).reshape(-1).view(np.uint8).reshape(-1, itemsize)
    w = np.ascontiguousarray(want).reshape(-1).view(np.uint8).reshape(-1, itemsize)
    if not np.array_equal(g, w):
        diff = np.flatnonzero(np.any(g != w, axis=1))
        i = int(diff[0])
        raise AssertionError(
            f"{what}: {diff.size} of {got.size} elements differ from the oracle; first at flat "
            f"index {i} (multi-index {np.unravel_index(i, got.shape) if got.ndim else ()}): "
            f"got {got.ravel()[i]!r}, oracle {want.ravel()[i]!r}")


def assert_same_floats(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit-equal except that any NaN matches any NaN (FORMATS.md fixes codes, not the NaN
    payload of a dequantized value)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, oracle {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, oracle {want.shape}"
    g32 = got.astype(np.float32)
    w32 = want.astype(np.float32)
    gn, wn = np.isnan(g32), np.isnan(w32)
    if not np.array_equal(gn, wn):
        i = int(np.flatnonzero((gn != wn).ravel())[0])
        raise AssertionError(f"{what}: NaN at flat index {i} differs: got {g32.ravel()[i]!r}, "
                             f"oracle {w32.ravel()[i]!r}")
    ok = gn | (g32.view(np.uint32) == w32.view(np.uint32))
    if not ok.all():
        diff = np.flatnonzero(~ok.ravel())
        i = int(diff[0])
        raise AssertionError(
            f"{what}: {diff.size} of {got.size} values differ from the oracle; first at flat "
            f"index {i}: got {g32.ravel()[i]!r}, oracle {w32.ravel()[i]!r}")


METRIC_KEYS = ("mse", "rmse", "max_abs_err", "sqnr_db", "cosine", "rel_fro_err")


def assert_metrics_close(got: dict, want: dict, rel: float = 1e-3, what: str = "metrics") -> None:
    assert got["count"] == want["count"], f"{what}: count {got['count']} vs {want['count']}"
    assert got["nonfinite_count"] == want["nonfinite_count"], (
        f"{what}: nonfinite_count {got['nonfinite_count']} vs {want['nonfinite_count']}")
    for key in METRIC_KEYS:
        g, w = float(got[key]), float(want[key])
        if math.isnan(w) or math.isnan(g):
            assert math.isnan(w) and math.isnan(g), f"{what}.{key}: got {g}, oracle {w}"
            continue
        if math.isinf(w) or math.isinf(g):
            assert g == w, f"{what}.{key}: got {g}, oracle {w}"
            continue
        assert math.isclose(g, w, rel_tol=rel, abs_tol=1e-300), (
            f"{what}.{key}: got {g!r}, oracle {w!r} (relative tolerance {rel})")


def check_quantized_npz(npz_path, result: oracle.Result, what: str = "") -> dict:
    """Codes, scales, zero-points and shape of a `quantctl quantize` output against the oracle.
    Returns the arrays."""
    with np.load(str(npz_path), allow_pickle=False) as z:
        got = {name: z[name] for name in z.files}
    assert_same_bits(got["codes"], result.codes, f"{what} codes")
    assert_same_bits(got["scales"], result.scales, f"{what} scales")
    if result.spec.asymmetric:
        assert "zero_points" in got, f"{what}: no zero_points in the asymmetric output"
        assert_same_bits(got["zero_points"], result.zero_points.astype(np.int32),
                         f"{what} zero_points")
    else:
        assert "zero_points" not in got, f"{what}: zero_points in a symmetric output"
    assert list(got["shape"]) == list(result.shape), f"{what}: shape {got['shape']}"
    return got


# ---------------------------------------------------------------------------------------------
# The server

class QuantdServer:
    """A real quantd process on free ports (--listen / --metrics-listen with port 0: the server
    reports what it bound on stderr, so no port can be taken between choosing and binding)."""

    def __init__(self, workdir: pathlib.Path, extra_args: Sequence[str] = (), name: str = "quantd"):
        self.workdir = pathlib.Path(workdir)
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / f"{name}.stderr"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.metrics_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60) -> "QuantdServer":
        binary = quantd_bin()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        args = [binary, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0", "--backend=cpu"]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=self._log_file, stderr=self._log_file,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"quantd exited {self.proc.returncode} at start:\n{self.log()}")
            match = re.search(r"\(port (\d+)\), metrics on \S+ \(port (\d+)\)", self.log())
            if match:
                self.port, self.metrics_port = int(match.group(1)), int(match.group(2))
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise AssertionError(f"quantd did not report its ports in {timeout}s:\n{self.log()}")
        while time.monotonic() < deadline:
            if run_quantctl(["health"], server=self.address, check=False,
                            timeout=10).returncode == 0:
                return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"quantd did not become healthy in {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"quantd did not exit within {timeout}s of SIGTERM:\n{self.log()}")
        self._log_file.close()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode()


def metric_samples(text: str) -> dict:
    """{name: [(labels dict, value)]} from a Prometheus text page."""
    samples: dict = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        samples.setdefault(match.group(1), []).append((labels, float(match.group(4))))
    return samples


def requests_served(server, *methods: str) -> float:
    """A QuantdServer's quantd_requests_total summed over the RPCs named (all when none is)."""
    samples = metric_samples(server.scrape()).get("quantd_requests_total", [])
    return sum(v for labels, v in samples if not methods or labels.get("method") in methods)


# ---------------------------------------------------------------------------------------------
# Python gRPC stubs, generated at test time from the checked-in proto.

def generate_stubs(out_dir: pathlib.Path):
    """Runs grpc_tools.protoc on proto/quantd/v1/quantd.proto into `out_dir` and imports the
    result. Returns (quantd_pb2, quantd_pb2_grpc)."""
    import importlib
    import sys

    from grpc_tools import protoc
    import grpc_tools

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{REPO / 'proto'}", f"-I{well_known}",
                        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                        str(REPO / "proto/quantd/v1/quantd.proto")])
    assert code == 0, f"grpc_tools.protoc failed with {code}"
    if str(out_dir) not in sys.path:
        sys.path.insert(0, str(out_dir))
    pb2 = importlib.import_module("quantd.v1.quantd_pb2")
    pb2_grpc = importlib.import_module("quantd.v1.quantd_pb2_grpc")
    return pb2, pb2_grpc


def grpc_channel(address: str):
    import grpc

    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", -1)])


def health_check(channel, service: str = "", timeout: float = 10) -> int:
    """grpc.health.v1.Health/Check with hand-encoded messages (the vendored health proto's
    package `grpc` would clash with grpcio's). Returns the ServingStatus number (1: SERVING)."""
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    reply = check(request, timeout=timeout)
    if not reply:
        return 0  # UNKNOWN (the default value is not on the wire)
    assert reply[0] == 0x08, reply
    return reply[1]
