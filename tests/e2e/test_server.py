"""The real quantd binary: health, capabilities, /metrics (checked with promtool), draining on
SIGTERM with a large request in flight, several servers behind one quantctl, the README demo."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import e2e_util
import oracle
from e2e_util import QuantdServer, metric_samples, run_quantctl

F32 = np.float32
PROMTOOL = "/usr/bin/promtool"
# Small message limits so that modest tensors already take the streamed path.
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def server(quantd, tmp_path_factory):
    srv = QuantdServer(tmp_path_factory.mktemp("quantd"),
                       [f"--max-message-bytes={MAX_MESSAGE_BYTES}",
                        "--stream-chunk-bytes=262144"]).start()
    yield srv
    e2e_util.stop_and_check(srv)


def test_health_serving(server, pb):
    proc = run_quantctl(["health"], server=server.address)
    assert proc.stdout.startswith("SERVING"), proc.stdout
    import grpc

    with e2e_util.grpc_channel(server.address) as channel:
        assert e2e_util.health_check(channel) == 1  # SERVING
        assert e2e_util.health_check(channel, "quantd.v1.Quantizer") == 1
        with pytest.raises(grpc.RpcError) as err:
            e2e_util.health_check(channel, "no.such.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_capabilities(server):
    proc = run_quantctl(["capabilities"], server=server.address)
    caps = json.loads(proc.stdout)
    names = {f["name"]: f for f in caps["formats"]}
    assert set(names) == set(oracle.FORMATS), names.keys()
    for name, info in oracle.FORMATS.items():
        f = names[name]
        assert f["bits"] == info.bits
        assert f["supports_asymmetric"] == info.asymmetric_ok
        want_max = info.qmax if info.kind == "int" else info.max_finite
        assert f["max_finite"] == want_max, (name, f["max_finite"])
        if info.block:
            assert f["granularities"] == ["GRANULARITY_GROUP"], (name, f["granularities"])
        else:
            assert ("GRANULARITY_NONE" in f["granularities"]) == (info.kind == "float")
        assert name in f["descriptors"]
    assert names["fp8-e5m2"]["has_inf"] and not names["fp8-e4m3"]["has_inf"]
    assert "int4-g128" in caps["descriptors"] and "int8-asym" in caps["descriptors"]
    assert caps["active_backend"] == "cpu"
    assert "cpu" in caps["backends"]
    assert int(caps["limits"]["max_message_bytes"]) == MAX_MESSAGE_BYTES
    assert int(caps["limits"]["max_rank"]) >= 4
    assert caps["version"]


def _request_mix(server, tmp_path):
    """Unary and streamed calls on every RPC, one refusal, and their expected counts."""
    rng = np.random.default_rng(8)
    small = e2e_util.save_npy(tmp_path / "small.npy", rng.standard_normal((16, 64)).astype(F32))
    # 2 MiB > the 1 MiB message limit: QuantizeStream / DequantizeStream.
    big_x = rng.standard_normal((512, 1024)).astype(F32)
    big = e2e_util.save_npy(tmp_path / "big.npy", big_x)
    a = server.address
    for _ in range(3):
        run_quantctl(["quantize", "--format=int8", "--granularity=token", small,
                      tmp_path / "q8.npz"], server=a)
    run_quantctl(["quantize", "--format=int4", "--granularity=group", "--group_size=16", small,
                  tmp_path / "q4.npz"], server=a)
    run_quantctl(["dequantize", tmp_path / "q8.npz", tmp_path / "d.npy"], server=a)
    run_quantctl(["quantdequant", "--format=fp8-e4m3", small, tmp_path / "qdq.npy"], server=a)
    run_quantctl(["calibrate", "--format=uint8", "--asymmetric", "--method=mse", small],
                 server=a)
    chunk = "--chunk_bytes=262144"  # see test_stream_frames_respect_the_server_message_limit
    proc = run_quantctl([chunk, "quantize", "--format=int8", "--granularity=token", big,
                         tmp_path / "big.npz"], server=a)
    want = oracle.quantize(big_x, oracle.Spec("int8", "token"))
    e2e_util.check_quantized_npz(tmp_path / "big.npz", want, "streamed")
    e2e_util.assert_metrics_close(e2e_util.last_json_line(proc.stdout),
                                  oracle.metrics(big_x, oracle.dequantize(want)))
    run_quantctl([chunk, "dequantize", tmp_path / "big.npz", tmp_path / "big_hat.npy"], server=a)
    e2e_util.assert_same_floats(np.load(str(tmp_path / "big_hat.npy")), oracle.dequantize(want),
                                "streamed dequantize")
    bad = run_quantctl(["quantize", "--format=int8", "--granularity=group", small,
                        tmp_path / "bad.npz"], server=a, check=False)
    assert bad.returncode != 0


def test_metrics_page_passes_promtool_and_has_the_families(server, tmp_path):
    before = metric_samples(server.scrape())
    _request_mix(server, tmp_path)
    text = server.scrape()
    (tmp_path / "metrics.txt").write_text(text)
    if os.path.exists(PROMTOOL):
        proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"promtool check metrics:\n{proc.stdout}\n{proc.stderr}"
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    want_types = {
        "quantd_request_duration_seconds": "histogram",
        "quantd_queue_wait_seconds": "histogram",
        "quantd_compute_duration_seconds": "histogram",
        "quantd_requests_total": "counter",
        "quantd_bytes_received_total": "counter",
        "quantd_bytes_sent_total": "counter",
        "quantd_requests_in_flight": "gauge",
        "quantd_queue_depth": "gauge",
        "quantd_inflight_bytes": "gauge",
        "quantd_sqnr_db": "histogram",
        "quantd_build_info": "gauge",
    }
    for name, kind in want_types.items():
        assert types.get(name) == kind, f"{name}: TYPE {types.get(name)}, want {kind}"
    after = metric_samples(text)

    def total(samples, name, **labels):
        return sum(v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in
                                                             labels.items()))

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("quantd_requests_total", method="Quantize", code="OK") >= 4
    assert delta("quantd_requests_total", method="Quantize", code="INVALID_ARGUMENT") >= 1
    assert delta("quantd_requests_total", method="QuantizeStream", code="OK") >= 1
    assert delta("quantd_requests_total", method="DequantizeStream", code="OK") >= 1
    for method in ["Dequantize", "QuantDequant", "Calibrate", "GetCapabilities"]:
        assert delta("quantd_requests_total", method=method, code="OK") >= 1, method
    assert delta("quantd_request_duration_seconds_count", method="Quantize", format="int8") >= 3
    assert delta("quantd_queue_wait_seconds_count", method="Quantize", format="int8") >= 3
    assert delta("quantd_compute_duration_seconds_count", method="QuantizeStream",
                 format="int8") >= 1
    assert delta("quantd_bytes_received_total", method="QuantizeStream") >= 512 * 1024 * 4
    assert delta("quantd_bytes_sent_total", method="DequantizeStream") >= 512 * 1024 * 4
    assert delta("quantd_sqnr_db_count", format="int8") >= 4
    assert delta("quantd_sqnr_db_count", format="int4") >= 1
    assert delta("quantd_sqnr_db_count", format="fp8-e4m3") >= 1
    # 8-bit SQNR of a Gaussian lands in the 30-50 dB range.
    assert total(after, "quantd_sqnr_db_bucket", format="int8", le="25") < total(
        after, "quantd_sqnr_db_bucket", format="int8", le="+Inf")
    assert total(after, "quantd_requests_in_flight") == 0
    assert total(after, "quantd_inflight_bytes") == 0
    assert total(after, "quantd_queue_depth") == 0
    build = after["quantd_build_info"]
    assert build[0][1] == 1 and build[0][0]["backend"] == "cpu"
    # Histograms are cumulative and end with +Inf == _count.
    for labels, count in after["quantd_request_duration_seconds_count"]:
        buckets = [(float(l["le"]), v) for l, v in after["quantd_request_duration_seconds_bucket"]
                   if {k: v2 for k, v2 in l.items() if k != "le"} == labels]
        buckets.sort()
        values = [v for _, v in buckets]
        assert values == sorted(values) and values[-1] == count, labels


def test_stream_frames_respect_the_server_message_limit(server, tmp_path):
    """quantctl learns the server's max_message_bytes (GetCapabilities) to decide when to stream;
    its stream frames must then fit that limit too, whatever --chunk_bytes defaults to (4 MiB)."""
    x = np.random.default_rng(9).standard_normal((512, 1024)).astype(F32)  # 2 MiB
    path = e2e_util.save_npy(tmp_path / "x.npy", x)
    proc = run_quantctl(["quantize", "--format=int8", "--granularity=token", path,
                         tmp_path / "q.npz"], server=server.address, check=False)
    assert proc.returncode == 0, (
        f"a 2 MiB tensor through a server with --max-message-bytes={MAX_MESSAGE_BYTES} failed "
        f"with quantctl's default --chunk_bytes: {proc.stderr}")
    e2e_util.check_quantized_npz(tmp_path / "q.npz", oracle.quantize(x, oracle.Spec(
        "int8", "token")), "streamed with default chunks")


def _wait_for(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def test_sigterm_drains_an_in_flight_stream(quantd, tmp_path):
    srv = QuantdServer(tmp_path / "srv").start()
    try:
        rows, cols = 4096, 8192  # 128 MiB: a streamed request
        x = np.random.default_rng(21).standard_normal((rows, cols), dtype=F32)
        x[7] *= 1000
        path = e2e_util.save_npy(tmp_path / "x.npy", x)
        out = tmp_path / "q.npz"
        client = subprocess.Popen(
            [e2e_util.quantctl_bin(), f"--server={srv.address}", "quantize", "--format=int8",
             "--granularity=token", "--chunk_bytes=1048576", path, str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def stream_in_flight():
            if client.poll() is not None:
                return "client-finished"
            samples = metric_samples(srv.scrape())
            # The stream's reservation (input + codes, 160 MiB) is in the budget gauge.
            return sum(v for _, v in samples.get("quantd_inflight_bytes", [])) > 100 << 20

        seen = _wait_for(stream_in_flight, timeout=60, interval=0.005)
        assert seen is True, f"never saw the stream in flight ({seen}); client: " \
                             f"{client.communicate()}"
        srv.proc.send_signal(signal.SIGTERM)
        stdout, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, f"the in-flight call failed during the drain: {stderr}"
        code = srv.stop()
        assert code == 0, f"quantd exited {code}:\n{srv.log()}"
        assert "draining" in srv.log()
        # The answer is complete and right: per-token rows are independent, so check every
        # scale and a sample of rows.
        with np.load(str(out)) as z:
            codes, scales = z["codes"], z["scales"]
        want_scales, _ = oracle.compute_scales(x, oracle.Spec("int8", "token"), x.shape)
        e2e_util.assert_same_bits(scales, want_scales, "scales after drain")
        sample = np.r_[0:4, 7, rows - 3:rows]
        want = oracle.quantize(x[sample], oracle.Spec("int8", "token"))
        e2e_util.assert_same_bits(codes[sample], want.codes, "codes after drain")
        del x, codes
    finally:
        srv.kill()


def test_quantctl_round_robins_over_several_servers(quantd, tmp_path):
    a = QuantdServer(tmp_path / "a", name="a").start()
    b = QuantdServer(tmp_path / "b", name="b").start()
    try:
        both = f"{a.address},{b.address}"
        rng = np.random.default_rng(2)
        for i in range(6):
            x = rng.standard_normal((8, 40)).astype(F32)
            path = e2e_util.save_npy(tmp_path / f"x{i}.npy", x)
            run_quantctl(["quantize", "--format=int4", "--granularity=group", "--group_size=8",
                          "--asymmetric", path, tmp_path / "q.npz"], server=both)
            want = oracle.quantize(x, oracle.Spec("int4", "group", group_size=8, asymmetric=True))
            e2e_util.check_quantized_npz(tmp_path / "q.npz", want, f"round robin {i}")
            run_quantctl(["quantdequant", "--format=fp8-e5m2", path, tmp_path / "o.npy"],
                         server=both)

        def served(srv):
            samples = metric_samples(srv.scrape())
            return sum(v for _, v in samples.get("quantd_requests_total", []))

        assert served(a) > 0 and served(b) > 0, (served(a), served(b))
        # One replica gone: the calls go to the other.
        assert b.stop() == 0
        for i in range(3):
            run_quantctl(["quantize", "--format=int8", tmp_path / f"x{i}.npy", tmp_path / "q.npz"],
                         server=both, timeout=60)
        assert run_quantctl(["health"], server=a.address).returncode == 0
        assert a.stop() == 0
    finally:
        a.kill()
        b.kill()


def test_bad_server_flags_exit_2(quantd):
    for flags in [["--backend=tpu"], ["--no-such-flag=1"], ["--max-queue=-1"],
                  ["--max-message-bytes=10"]]:
        proc = subprocess.run([quantd, "--listen=127.0.0.1:0", "--metrics-listen=", *flags],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (flags, proc.returncode, proc.stderr)
        assert proc.stderr.strip()


def test_readme_first_command_demo(quantd, quantctl, tmp_path):
    """README.md's first command is `scripts/setup.sh && scripts/demo.sh`. setup.sh needs root
    and the network, so this runs demo.sh, on the binaries under test: a build directory of
    links to them, and a `cmake` first on PATH whose `--build` does nothing (the binaries are
    built; a second build in the real directory while CTest runs could race with it)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is missing")
    build = tmp_path / "build"
    (build / "server").mkdir(parents=True)
    (build / "client").mkdir()
    (build / "build.ninja").write_text("# built elsewhere\n")
    (build / "server/quantd").symlink_to(pathlib.Path(quantd).resolve())
    (build / "client/quantctl").symlink_to(pathlib.Path(quantctl).resolve())
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "cmake").write_text('#!/bin/sh\n[ "$1" = --build ] && exit 0\nexec /usr/bin/cmake "$@"\n')
    (shim / "cmake").chmod(0o755)
    env = dict(os.environ, QUANTD_BUILD_DIR=str(build), QUANTD_DEMO_EXIT="1",
               QUANTD_PORT=str(e2e_util.free_port()),
               QUANTD_METRICS_PORT=str(e2e_util.free_port()),
               PATH=f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    proc = subprocess.run([str(e2e_util.REPO / "scripts/demo.sh")], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"demo.sh exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.count('"sqnr_db"') >= 3, proc.stdout
    assert "quantd_requests_total" in proc.stdout, proc.stdout


@pytest.mark.parametrize("rule,scale_code,first_byte", [("floor", 127, 0x27), ("rceil", 128, 0x16),
                                                        ("even", 128, 0x16)])
def test_mx_through_the_server(server, tmp_path, rule, scale_code, first_byte):
    """An MX format end to end: E8M0 scale codes (uint8) and packed FP4 codes in the .npz, the
    scale rule from the command line, and dequantization of those codes through the server.
    Row 0 starts 7, 1: FLOOR keeps X = 0 (7 saturates to 6, code 0x7; 1 is 0x2); RCEIL and EVEN
    take X = 1 (3.5 rounds to the even 4, code 0x6; 0.5 is 0x1). FP4 packs element 0 low."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 70)).astype(np.float32)
    x[0, :32] = 0.0
    x[0, 0], x[0, 1] = 7.0, 1.0
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    q_path = tmp_path / "q.npz"
    run_quantctl(["quantize", "--format=mxfp4", f"--scale-rule={rule}", x_path, q_path],
                 server=server.address)
    with np.load(str(q_path)) as q:
        codes, scales = q["codes"], q["scales"]
    assert scales.dtype == np.uint8 and scales.shape == (5, 3), (scales.dtype, scales.shape)
    assert codes.dtype == np.uint8 and codes.shape == (5, 35), (codes.dtype, codes.shape)
    assert scales[0, 0] == scale_code and codes[0, 0] == first_byte, (scales[0, 0], codes[0, 0])
    assert np.all(scales < 0xFF)
    # x̂ = decode(code) · 2^(scale code - 127), from the codes and scales the server sent.
    run_quantctl(["dequantize", q_path, tmp_path / "d.npy"], server=server.address)
    x_hat = np.load(str(tmp_path / "d.npy"))
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
    nibbles = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(5, 70)
    values = np.where(nibbles & 8, -1.0, 1.0).astype(np.float32) * e2m1[nibbles & 7]
    block_scales = np.repeat(np.exp2(scales.astype(np.float64) - 127), 32, axis=1)[:, :70]
    e2e_util.assert_same_floats(x_hat, (values * block_scales).astype(np.float32), "mxfp4 x̂")
    # The same request in-process (no --server) gives the same bytes.
    run_quantctl(["quantize", "--format=mxfp4", f"--scale-rule={rule}", x_path,
                  tmp_path / "local.npz"])
    with np.load(str(tmp_path / "local.npz")) as local:
        assert np.array_equal(local["codes"], codes) and np.array_equal(local["scales"], scales)


def test_nvfp4_through_the_server(server, tmp_path):
    """NVFP4 end to end against oracle.nvfp4 (numpy + ml_dtypes): packed E2M1 codes, uint8
    E4M3 block scale codes and the float32 global_scale in the .npz, and dequantization of them
    through the server. Row 1 holds a block of zeros and a block too
    small for E4M3 (scale code 0, codes 0); the last block of each row is ragged (70 = 4·16 + 6)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 70)).astype(np.float32) * np.float32(3.0)
    x[1, :16] = 0.0
    x[1, 16:32] = np.float32(1e-7) * rng.normal(size=16).astype(np.float32)
    x[2, 5] = -17.0  # the tensor's amax
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    q_path = tmp_path / "q.npz"
    run_quantctl(["quantize", "--format=nvfp4", x_path, q_path], server=server.address)
    want_codes, want_scales, want_global, want_x_hat = oracle.nvfp4(x)
    with np.load(str(q_path)) as q:
        codes, scales, global_scale = q["codes"], q["scales"], q["global_scale"]
    assert scales.dtype == np.uint8 and scales.shape == (5, 5), (scales.dtype, scales.shape)
    assert codes.dtype == np.uint8 and codes.shape == (5, 35), (codes.dtype, codes.shape)
    assert global_scale.dtype == np.float32 and global_scale.shape == (1,)
    assert global_scale[0] == want_global, (global_scale[0], want_global)
    assert np.array_equal(scales, want_scales), (scales, want_scales)
    assert scales[1, 0] == 0 and scales[1, 1] == 0
    assert np.array_equal(codes, want_codes), np.argwhere(codes != want_codes)[:5]
    run_quantctl(["dequantize", q_path, tmp_path / "d.npy"], server=server.address)
    e2e_util.assert_same_floats(np.load(str(tmp_path / "d.npy")), want_x_hat, "nvfp4 x̂")
    # In-process gives the same bytes.
    run_quantctl(["quantize", "--format=nvfp4", x_path, tmp_path / "local.npz"])
    with np.load(str(tmp_path / "local.npz")) as local:
        assert np.array_equal(local["codes"], codes) and np.array_equal(local["scales"], scales)
        assert local["global_scale"][0] == global_scale[0]


# bitsandbytes' NF4 table and its decision-tree thresholds as the fp32 values its C++ literals
# compile to (four of them differ by one ulp from the fp32 of the double midpoint).
NF4_VALUES = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                       0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                       0.7229568362236023, 1.0], np.float32)
NF4_THRESHOLDS = np.array([0xBF591CD9, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC,
                           0xBD3A7871, 0x3D22FAFF, 0x3DF64863, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9,
                           0x3F006D03, 0x3F248DAF, 0x3F5C89D9], np.uint32).view(np.float32)


def test_nf4_through_the_server(server, tmp_path):
    """NF4 end to end against numpy: blocks of 64 over the flattened tensor, F32 absmax (0 for an
    all-zero block, whose codes are 7), n = x · fp32(1 / absmax), code = the number of thresholds
    n exceeds, element 0 in the high nibble; dequantization x̂ = value · absmax."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 45)).astype(np.float32)  # 135 elements: blocks of 64, 64, 7
    x.reshape(-1)[64:128] = 0.0
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    q_path = tmp_path / "q.npz"
    run_quantctl(["quantize", "--format=nf4", x_path, q_path], server=server.address)
    flat = x.reshape(-1)
    blocks = [flat[i:i + 64] for i in range(0, flat.size, 64)]
    absmax = np.array([np.abs(b).max() for b in blocks], np.float32)
    with np.errstate(divide="ignore"):
        reciprocal = (np.float32(1.0) / absmax).astype(np.float32)
    n = (flat * np.repeat(reciprocal, 64)[:flat.size]).astype(np.float32)
    codes = (n[:, None] > NF4_THRESHOLDS[None, :]).sum(axis=1).astype(np.uint8)
    codes[np.repeat(absmax == 0, 64)[:flat.size]] = 7
    padded = np.concatenate([codes, np.zeros(flat.size % 2, np.uint8)])
    want_codes = ((padded[0::2] << 4) | padded[1::2]).astype(np.uint8)
    with np.load(str(q_path)) as q:
        assert q["scales"].dtype == np.float32 and q["scales"].shape == (3,)
        assert np.array_equal(q["scales"], absmax), (q["scales"], absmax)
        assert q["codes"].dtype == np.uint8 and q["codes"].shape == (68,)
        assert np.array_equal(q["codes"], want_codes), np.argwhere(q["codes"] != want_codes)[:5]
    run_quantctl(["dequantize", q_path, tmp_path / "d.npy"], server=server.address)
    want_x_hat = (NF4_VALUES[codes] * np.repeat(absmax, 64)[:flat.size]).astype(np.float32)
    e2e_util.assert_same_floats(np.load(str(tmp_path / "d.npy")).reshape(-1), want_x_hat, "nf4 x̂")


def flatquant_transform(x: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Y = P1ᵀ · (X · P2) of every row, X the row as [n1, n2], in docs/FORMATS.md's fp32
    order: each entry a float32 sum from +0, one rounded product at a time, ascending index."""
    rows, n1, n2 = x.shape[0], left.shape[0], right.shape[0]
    xs = x.reshape(rows, n1, n2)
    t = np.zeros((rows, n1, n2), np.float32)
    for l in range(n2):  # T[i][j] += X[i][l] · P2[l][j]
        t = t + (xs[:, :, l:l + 1] * right[l][None, None, :])
    y = np.zeros((rows, n1, n2), np.float32)
    for k in range(n1):  # Y[i][j] += P1[k][i] · T[k][j]
        y = y + (left[k][None, :, None] * t[:, k:k + 1, :])
    assert y.dtype == np.float32
    return y.reshape(rows, n1 * n2)


def test_flatquant_through_the_server(server, tmp_path):
    """FlatQuant int4 end to end against numpy: caller-given P1 (7 × 7) and P2 (10 × 10) on rows
    of 70 (2 mod 4: get_decompose_dim has no split, so the matrices are required), per-token
    symmetric INT4 of Y with clip ratio 0.9, element 0 in the low nibble; x̂ is ŷ. Without
    matrices a row of 40 takes identities of get_decompose_dim(40) = (4, 10): the codes of
    plain int4-token."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 70)).astype(np.float32)
    left = (rng.normal(size=(7, 7)) * 0.4).astype(np.float32)
    right = (rng.normal(size=(10, 10)) * 0.3).astype(np.float32)
    paths = {name: e2e_util.save_npy(tmp_path / f"{name}.npy", value)
             for name, value in (("x", x), ("left", left), ("right", right))}
    q_path = tmp_path / "q.npz"
    run_quantctl(["quantize", "--format=flatquant-int4", "--clip-ratio=0.9",
                  f"--flatquant-left={paths['left']}", f"--flatquant-right={paths['right']}",
                  paths["x"], q_path], server=server.address)
    y = flatquant_transform(x, left, right)
    want = oracle.quantize(y, oracle.Spec("int4", "token", clip_ratio=0.9))
    with np.load(str(q_path)) as q:
        assert np.array_equal(q["scales"], want.scales), (q["scales"], want.scales)
        assert np.array_equal(q["codes"], want.codes), np.argwhere(q["codes"] != want.codes)[:5]
    run_quantctl(["dequantize", q_path, tmp_path / "d.npy"], server=server.address)
    e2e_util.assert_same_floats(np.load(str(tmp_path / "d.npy")), oracle.dequantize(want), "ŷ")
    # Refused without the matrices, with a message that says what to give.
    proc = run_quantctl(["quantize", "--format=flatquant-int4", paths["x"], tmp_path / "r.npz"],
                        server=server.address, check=False)
    assert proc.returncode != 0 and "flatquant_left" in proc.stderr, proc.stderr
    # Identities by default.
    x40 = rng.normal(size=(6, 40)).astype(np.float32)
    x40_path = e2e_util.save_npy(tmp_path / "x40.npy", x40)
    run_quantctl(["quantize", "--format=flatquant-int4", x40_path, tmp_path / "i.npz"],
                 server=server.address)
    want40 = oracle.quantize(x40, oracle.Spec("int4", "token"))
    with np.load(str(tmp_path / "i.npz")) as q:
        assert np.array_equal(q["codes"], want40.codes)
        assert np.array_equal(q["scales"], want40.scales)


def test_nf4_double_quant_through_the_server(server, tmp_path):
    """NF4 with --double-quant: the same codes as without it; the absmax values travel as uint8
    codes beside double_quant_scales (one per 256) and double_quant_offset; dequantization
    through the server multiplies by the reconstructed absmax, within the 8-bit map's error of
    the exact one; the server and the in-process run write the same bytes."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(40, 1000)).astype(np.float32) * np.float32(0.5)  # 625 blocks of 64
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    run_quantctl(["quantize", "--format=nf4", x_path, tmp_path / "plain.npz"],
                 server=server.address)
    run_quantctl(["quantize", "--format=nf4", "--double-quant", x_path, tmp_path / "dq.npz"],
                 server=server.address)
    run_quantctl(["quantize", "--format=nf4", "--double-quant", x_path, tmp_path / "local.npz"])
    with np.load(str(tmp_path / "plain.npz")) as plain, np.load(str(tmp_path / "dq.npz")) as dq, \
            np.load(str(tmp_path / "local.npz")) as local:
        assert np.array_equal(plain["codes"], dq["codes"])
        assert dq["scales"].dtype == np.uint8 and dq["scales"].shape == (625,)
        assert dq["double_quant_scales"].dtype == np.float32
        assert dq["double_quant_scales"].shape == (3,)
        assert dq["double_quant_offset"].shape == (1,)
        offset = float(dq["double_quant_offset"][0])
        assert abs(offset - float(plain["scales"].astype(np.float64).mean())) < 1e-6 * offset
        for name in ("codes", "scales", "double_quant_scales", "double_quant_offset"):
            assert np.array_equal(dq[name], local[name]), name
        exact_absmax = plain["scales"]
    run_quantctl(["dequantize", tmp_path / "plain.npz", tmp_path / "plain.npy"],
                 server=server.address)
    run_quantctl(["dequantize", tmp_path / "dq.npz", tmp_path / "dq.npy"], server=server.address)
    exact = np.load(str(tmp_path / "plain.npy")).reshape(-1, 64)
    nested = np.load(str(tmp_path / "dq.npy")).reshape(-1, 64)
    # Per block, x̂ scales by reconstructed / exact absmax: one common factor close to 1.
    big = np.abs(exact) > 0
    ratio = np.where(big, nested / np.where(big, exact, 1), 1)
    assert np.all(np.abs(ratio - 1) < 0.05), np.abs(ratio - 1).max()
    assert not np.array_equal(exact, nested)
    # One factor per block (up to fp32 rounding of each product).
    spread = np.where(big, ratio, np.nan)
    assert np.nanmax(np.nanmax(spread, axis=1) - np.nanmin(spread, axis=1)) < 1e-6
    assert exact_absmax.shape == (625,)
