"""quantd.Client against a real quantd (CPU backend, 1 MiB message limit): every format family
round trip, numpy / bfloat16 / torch in and out, zero-points, metrics, streaming above the
message limit, typed errors carrying the server's message, calibrate, gemm, several targets."""

from __future__ import annotations

import contextlib

import grpc
import ml_dtypes
import numpy as np
import pytest

import e2e_util
import oracle
import quantd
from client_util import MAX_MESSAGE_BYTES

F32 = np.float32
BF16 = np.dtype(ml_dtypes.bfloat16)

# (descriptor, spec keywords, codes dtype, scales dtype, lowest acceptable SQNR in dB on
# N(0, 1) data); one row per format family, plus the variants with extra outputs.
FORMATS = [
    ("int8", dict(granularity="token"), np.int8, F32, 38),
    ("int8-asym", dict(granularity="channel"), np.int8, F32, 38),
    ("int4-g128", dict(asymmetric=True), np.uint8, F32, 17),
    ("uint8", dict(granularity="tensor"), np.uint8, F32, 30),
    ("uint4", dict(granularity="group", group_size=32), np.uint8, F32, 17),
    ("fp8-e4m3", dict(granularity="channel"), np.uint8, F32, 28),
    ("fp8-e5m2", dict(granularity="tensor"), np.uint8, F32, 22),
    ("fp8-e4m3-b128x128", {}, np.uint8, F32, 28),
    ("fp8-e4m3", dict(granularity="none"), np.uint8, F32, 28),
    ("mxfp8", {}, np.uint8, np.uint8, 28),
    ("mxfp8e5m2", {}, np.uint8, np.uint8, 22),
    ("mxfp6e3m2", {}, np.uint8, np.uint8, 16),
    ("mxfp6e2m3", {}, np.uint8, np.uint8, 20),
    ("mxfp4", {}, np.uint8, np.uint8, 14),
    ("mxint8", {}, np.uint8, np.uint8, 30),
    ("nvfp4", {}, np.uint8, np.uint8, 17),
    ("hif8", {}, np.uint8, F32, 25),
    ("nf4", {}, np.uint8, F32, 18),
    ("nf4", dict(double_quant=True), np.uint8, np.uint8, 18),
    ("flatquant-int4", {}, np.uint8, F32, 14),
]


def _x(shape=(64, 256), seed=0, dtype=F32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# Two calls' metrics of the same x̂: counts equal, sums to 1e-9 (FORMATS.md lets summed metrics
# differ in the last bits; the CPU backend's threads may add in another order each call).
SAME_METRICS_REL = 1e-9


# ---------------------------------------------------------------------------------------------

def test_capabilities_and_health(client):
    caps = client.capabilities()
    assert caps.active_backend == "cpu" and "cpu" in caps.backends
    assert caps.limits["max_message_bytes"] == MAX_MESSAGE_BYTES
    assert client.unary_limit() == MAX_MESSAGE_BYTES - quantd.client.MESSAGE_MARGIN_BYTES
    for name in ("int8", "int4", "fp8-e4m3", "mxfp4", "nvfp4", "nf4", "hif8", "flatquant-int4"):
        assert name in caps.formats, caps.formats.keys()
    assert caps.formats["fp8-e4m3"].max_finite == 448
    assert "token" in caps.formats["int8"].granularities
    assert "int4-g128" in caps.descriptors
    assert client.health() == "SERVING"
    assert client.health("quantd.v1.Quantizer") == "SERVING"


@pytest.mark.parametrize("fmt,kw,codes_dtype,scales_dtype,min_sqnr", FORMATS,
                         ids=[f"{f}{'-' + '-'.join(f'{k}={v}' for k, v in kw.items()) if kw else ''}"
                              for f, kw, *_ in FORMATS])
def test_round_trip(client, fmt, kw, codes_dtype, scales_dtype, min_sqnr):
    x = _x()
    q = client.quantize(x, fmt, **kw)
    assert q.shape == x.shape and q.source_dtype == "F32" and q.backend == "cpu"
    assert q.format and not q.format.startswith("FORMAT") and q.format in repr(q)
    assert isinstance(q.codes, np.ndarray) and q.codes.dtype == codes_dtype
    assert isinstance(q.scales, np.ndarray) and q.scales.dtype == scales_dtype
    assert q.codes.flags.writeable and q.scales.flags.writeable
    assert (q.zero_points is not None) == bool(q.spec.asymmetric)
    assert (q.global_scale != 0.0) == (fmt == "nvfp4")
    assert (q.double_quant_scales is not None) == bool(kw.get("double_quant"))
    assert q.metrics["count"] == x.size and q.metrics["nonfinite_count"] == 0
    assert q.metrics["sqnr_db"] >= min_sqnr, q.metrics

    x_hat = q.dequantize()
    assert isinstance(x_hat, np.ndarray) and x_hat.dtype == F32 and x_hat.shape == x.shape
    # The metrics are those of this x̂ (oracle.metrics: FORMATS.md's definitions in float64).
    want = oracle.metrics(x, x_hat)
    assert set(q.metrics) == set(want)
    e2e_util.assert_metrics_close(q.metrics, want, rel=1e-6, what=fmt)
    # The same x̂ as Dequantize through the client, and as the one-call QuantDequant.
    e2e_util.assert_same_bits(client.dequantize(q), x_hat, f"{fmt} client.dequantize")
    fake, metrics = client.quant_dequant(x, fmt, with_metrics=True, **kw)
    e2e_util.assert_same_bits(fake, x_hat, f"{fmt} quant_dequant")
    e2e_util.assert_metrics_close(metrics, q.metrics, rel=SAME_METRICS_REL)
    # Through the message form and back.
    again = quantd.QuantizedTensor.from_proto(q.to_proto(), client=client)
    e2e_util.assert_same_bits(again.dequantize(), x_hat, f"{fmt} to_proto/from_proto")


def test_asymmetric_zero_points(client):
    x = _x(seed=1) + 0.5  # off-centre, so the zero-points are not all equal
    q = client.quantize(x, "int8", granularity="token", asymmetric=True)
    assert q.format == "int8"
    assert q.zero_points.dtype == np.int32 and q.zero_points.shape == q.scales.shape == (64, 1)
    assert q.zero_points.min() >= -128 and q.zero_points.max() <= 127
    assert len(np.unique(q.zero_points)) > 1
    # FORMATS.md: x̂ = fp32(s · (q - zp)) with (q - zp) exact.
    want = (q.scales * (q.codes.astype(np.int32) - q.zero_points).astype(F32)).astype(F32)
    e2e_util.assert_same_bits(q.dequantize(), want, "int8 asym x̂")
    # symmetric=False is asymmetric=True; the symmetric twin has no zero-points.
    q2 = client.quantize(x, "int8", granularity="token", symmetric=False)
    e2e_util.assert_same_bits(q2.zero_points, q.zero_points, "symmetric=False")
    assert client.quantize(x, "int8", granularity="token", symmetric=True).zero_points is None
    for fmt, kw in (("uint4", dict(granularity="group", group_size=64)), ("int4-asym", {})):
        qa = client.quantize(x, fmt, **kw)
        assert qa.zero_points is not None and qa.zero_points.shape == qa.scales.shape


def test_skip_metrics(client):
    q = client.quantize(_x(), "int8", skip_metrics=True)
    assert q.metrics is None
    out, metrics = client.quant_dequant(_x(), "int8", skip_metrics=True, with_metrics=True)
    assert metrics is None and out.shape == (64, 256)


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float64], ids=["f16", "bf16", "f64"])
def test_input_dtypes(client, dtype):
    x = _x(dtype=dtype)
    q = client.quantize(x, "int8", granularity="token")
    want_source = {np.dtype(np.float16): "F16", BF16: "BF16", np.dtype(np.float64): "F32"}
    assert q.source_dtype == want_source[np.dtype(dtype)]
    # float64 goes as float32 (rounded to nearest even), like quantctl's '<f8' inputs.
    if dtype == np.float64:
        want = client.quantize(x.astype(F32), "int8", granularity="token")
        e2e_util.assert_same_bits(q.codes, want.codes, "f64 codes")
    assert q.dequantize().dtype == F32
    assert q.dequantize(dtype="f16").dtype == np.float16
    assert q.dequantize(dtype="bf16").dtype == BF16
    assert q.dequantize(dtype=BF16).dtype == BF16
    # QuantDequant answers in the input's dtype by default.
    out = client.quant_dequant(x, "fp8-e4m3")
    assert out.dtype == (F32 if dtype == np.float64 else np.dtype(dtype))
    assert client.quant_dequant(x, "fp8-e4m3", dtype=np.float32).dtype == F32


def test_bf16_values(client):
    """bfloat16 in: the server sees the same values as the float32 widening."""
    xb = _x(seed=3).astype(BF16)
    qb = client.quantize(xb, "int8", granularity="token")
    qf = client.quantize(xb.astype(F32), "int8", granularity="token")
    e2e_util.assert_same_bits(qb.codes, qf.codes, "bf16 codes")
    e2e_util.assert_same_bits(qb.scales, qf.scales, "bf16 scales")
    out = client.quant_dequant(xb, "int8", granularity="token")
    assert out.dtype == BF16
    e2e_util.assert_same_bits(out, qf.dequantize().astype(BF16), "bf16 x̂")


def test_non_float_input_refused(client):
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        client.quantize(np.arange(16, dtype=np.int32), "int8")
    with pytest.raises(quantd.InvalidArgument, match="unknown output dtype"):
        client.quant_dequant(_x(), "int8", dtype="int8")


def test_torch_in_torch_out(client):
    torch = pytest.importorskip("torch")
    x = _x(seed=4)
    want = client.quantize(x, "int4-g128", asymmetric=True)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.from_numpy(x).to(dtype)
        q = client.quantize(t, "int4-g128", asymmetric=True)
        assert isinstance(q.codes, torch.Tensor) and q.codes.dtype == torch.uint8
        assert isinstance(q.scales, torch.Tensor) and q.scales.dtype == torch.float32
        assert q.zero_points.dtype == torch.int32
        if dtype == torch.float32:
            e2e_util.assert_same_bits(q.codes.numpy(), want.codes, "torch codes")
            e2e_util.assert_same_bits(q.scales.numpy(), want.scales, "torch scales")
        x_hat = q.dequantize()
        assert isinstance(x_hat, torch.Tensor) and x_hat.dtype == torch.float32
        assert q.dequantize(dtype=torch.bfloat16).dtype == torch.bfloat16
        out = client.quant_dequant(t, "int8")
        assert isinstance(out, torch.Tensor) and out.dtype == dtype
    q8 = client.quantize(torch.from_numpy(x), "int8", granularity="token")
    assert q8.codes.dtype == torch.int8
    # A tensor that requires grad is detached, not refused.
    client.quantize(torch.from_numpy(x).requires_grad_(), "int8")


# ---------------------------------------------------------------------------------------------
# Streaming: tensors above the server's 1 MiB message limit.

@pytest.mark.parametrize("fmt,kw", [("int8", dict(granularity="token")),
                                    ("int8", dict(granularity="token", asymmetric=True)),
                                    ("mxfp4", {}), ("nvfp4", {})])
def test_streaming(server, client, fmt, kw):
    x = _x((1024, 1024), seed=5)  # 4 MiB of float32: four times the limit
    before_q = e2e_util.requests_served(server, "QuantizeStream")
    before_d = e2e_util.requests_served(server, "DequantizeStream")
    q = client.quantize(x, fmt, **kw)
    x_hat = q.dequantize()
    assert e2e_util.requests_served(server, "QuantizeStream") == before_q + 1
    assert e2e_util.requests_served(server, "DequantizeStream") == before_d + 1
    assert x_hat.shape == x.shape and x_hat.flags.writeable
    e2e_util.assert_metrics_close(q.metrics, oracle.metrics(x, x_hat), rel=1e-6, what=fmt)
    # Rows are independent for these specs (NVFP4 given the whole tensor's S_enc): unary calls
    # on row slices give the same codes, scales and x̂.
    extra = dict(global_scale=q.global_scale) if fmt == "nvfp4" else {}
    for rows in (slice(0, 128), slice(512, 640), slice(896, 1024)):
        part = client.quantize(x[rows], fmt, **kw, **extra)
        e2e_util.assert_same_bits(q.codes[rows], part.codes, f"{fmt} streamed codes {rows}")
        e2e_util.assert_same_bits(q.scales[rows], part.scales, f"{fmt} streamed scales {rows}")
        if q.zero_points is not None:
            e2e_util.assert_same_bits(q.zero_points[rows], part.zero_points, "streamed zp")
        e2e_util.assert_same_bits(x_hat[rows], part.dequantize(), f"{fmt} streamed x̂ {rows}")


def test_streaming_quant_dequant_and_small_frames(server, client):
    x = _x((512, 1024), seed=6)  # 2 MiB
    small = quantd.Client(server.address, chunk_bytes=64 << 10)  # many frames each way
    try:
        before = e2e_util.requests_served(server, "QuantizeStream")
        out, metrics = small.quant_dequant(x, "int4-g128", with_metrics=True)
        assert e2e_util.requests_served(server, "QuantizeStream") == before + 1
        q = small.quantize(x, "int4-g128")
        e2e_util.assert_same_bits(out, q.dequantize(), "streamed quant_dequant")
        e2e_util.assert_metrics_close(metrics, q.metrics, rel=SAME_METRICS_REL)
        xb = x.astype(BF16)  # 1 MiB of bf16: its output (bf16) and x̂ in f32 need streams
        assert small.quant_dequant(xb, "nf4").dtype == BF16
    finally:
        small.close()


def test_unary_above_limit_is_resource_exhausted(server):
    """A client told to send everything as one message meets gRPC's own limit on the server."""
    with quantd.Client(server.address, unary_limit_bytes=1 << 30) as c:
        with pytest.raises(quantd.ResourceExhausted) as err:
            c.quantize(_x((1024, 1024)), "int8")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.method == "Quantize"
    assert "larger than max" in err.value.message.lower() or "exceeds" in err.value.message.lower()


# ---------------------------------------------------------------------------------------------
# Errors

def test_bad_format_is_invalid_argument_with_the_servers_message(client):
    with pytest.raises(quantd.InvalidArgument) as err:
        client.quantize(_x(), "int5")
    assert 'unknown descriptor "int5"' in err.value.message
    assert "int4-g128" in err.value.message  # the server lists what is accepted
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(err.value, ValueError) and isinstance(err.value, quantd.QuantdError)
    assert 'unknown descriptor "int5"' in str(err.value)
    # The streamed path reports the same.
    with pytest.raises(quantd.InvalidArgument, match='unknown descriptor "int5"') as err:
        client.quantize(_x((1024, 1024)), "int5")
    assert err.value.method == "QuantizeStream"


def test_bad_shape_is_invalid_argument_with_the_servers_message(client):
    with pytest.raises(quantd.InvalidArgument, match="group_size"):
        client.quantize(_x(), "int8", granularity="group")
    max_rank = client.capabilities().limits["max_rank"]
    with pytest.raises(quantd.InvalidArgument, match="rank|dimensions|dims") as err:
        client.quantize(np.zeros((1,) * (max_rank + 1), F32), "int8")
    assert str(max_rank) in err.value.message
    with pytest.raises(quantd.InvalidArgument, match="axis"):
        client.quantize(_x(), "int8", granularity="channel", axis=5)
    # A QuantizedTensor whose codes do not fit its shape.
    q = client.quantize(_x(), "int8", granularity="token")
    bad = quantd.QuantizedTensor(q.codes[:10], q.scales, shape=q.shape, spec=q.spec)
    with pytest.raises(quantd.InvalidArgument) as err:
        client.dequantize(bad)
    assert err.value.method == "Dequantize" and err.value.message


def test_client_side_spec_errors(client):
    with pytest.raises(quantd.InvalidArgument, match="accepted: rne"):
        client.quantize(_x(), "int8", rounding="up")
    with pytest.raises(quantd.InvalidArgument, match="RxC"):
        client.quantize(_x(), "int8", granularity="block", block="128")
    with pytest.raises(quantd.InvalidArgument, match="format is required"):
        client.quantize(_x())
    with pytest.raises(quantd.InvalidArgument, match="contradicts"):
        client.quantize(_x(), "int8", symmetric=True, asymmetric=True)
    with pytest.raises(TypeError):
        client.quantize(_x(), "int8", no_such_option=1)


def test_unavailable_and_deadline(server):
    port = e2e_util.free_port()
    with quantd.Client(f"127.0.0.1:{port}", timeout=5) as c:
        with pytest.raises(quantd.Unavailable) as err:
            c.capabilities()
        assert isinstance(err.value, ConnectionError) and err.value.message
    with quantd.Client(server.address, timeout=1e-4) as c:
        with pytest.raises(quantd.DeadlineExceeded):
            c.quant_dequant(_x((1024, 1024)), "int8")


def test_calibrate_too_large_is_refused_before_sending(client):
    with pytest.raises(quantd.FailedPrecondition, match="no streamed form"):
        client.calibrate(_x((1024, 1024)), "int8")


# ---------------------------------------------------------------------------------------------
# Calibrate, static scales, gemm

@pytest.mark.parametrize("method", ["amax", "percentile", "mse"])
def test_calibrate_then_static_quantize(client, method):
    x = _x(seed=7)
    cal = client.calibrate(x, "int8", granularity="channel", method=method)
    assert cal.scales.shape == (64, 1) and cal.scales.dtype == F32
    assert cal.amax.shape == (64, 1) and cal.clip_ratios.shape == (64, 1)
    assert cal.zero_points is None
    q = client.quantize(x, spec=cal)
    e2e_util.assert_same_bits(q.scales, cal.scales, "static scales")
    # Calibrate's metrics are the error of quantizing x with these scales.
    e2e_util.assert_metrics_close(cal.metrics, q.metrics, rel=SAME_METRICS_REL)
    if method == "amax":  # the dynamic scales are the amax ones
        dynamic = client.quantize(x, "int8", granularity="channel")
        e2e_util.assert_same_bits(q.codes, dynamic.codes, "static == dynamic codes")
    # static_scales= by hand is the same request.
    q2 = client.quantize(x, "int8", granularity="channel", static_scales=cal.scales)
    e2e_util.assert_same_bits(q2.codes, q.codes, "static_scales=")
    cal_asym = client.calibrate(x, "int8", granularity="token", asymmetric=True)
    assert cal_asym.zero_points.dtype == np.int32
    qa = client.quantize(x, spec=cal_asym)
    e2e_util.assert_same_bits(qa.zero_points, cal_asym.zero_points, "static zero-points")


def test_gemm(client):
    a = _x((32, 256), seed=8)
    b = _x((48, 256), seed=9)
    bias = _x((48,), seed=10)
    out, metrics = client.gemm(a, b, "int8", bias=bias, with_metrics=True)
    assert out.shape == (32, 48) and out.dtype == F32
    exact = a.astype(np.float64) @ b.astype(np.float64).T + bias
    assert np.abs(out - exact).max() < 0.05 * np.abs(exact).max()
    assert metrics["sqnr_db"] > 30
    plain = client.gemm(a, b)  # no format: the operands as given
    np.testing.assert_allclose(plain, a @ b.T, rtol=1e-4, atol=1e-3)
    w_only = client.gemm(a, b, weight_format="nf4", dtype="bf16")
    assert w_only.dtype == BF16 and w_only.shape == (32, 48)
    mixed = client.gemm(a, b, "fp8-e4m3", weight_format="int4-g128", alpha=0.5)
    assert mixed.shape == (32, 48)
    with pytest.raises(quantd.InvalidArgument):
        client.gemm(a, _x((48, 100)), "int8")


def test_registered_weights(client):
    a = _x((16, 256), seed=11)
    w = _x((64, 256), seed=12)
    for fmt, weight_format in (("fp8-e4m3", "fp8-e4m3"), ("int8", "nvfp4")):
        registered = client.register_weight(w, weight_format, name="up_proj", keep_original=True)
        assert isinstance(registered, quantd.Weight)
        assert registered.handle.startswith("w-") and registered.shape == (64, 256)
        assert registered.format == weight_format and registered.bytes > 0
        assert registered.metrics["count"] == 64 * 256
        inline, inline_metrics = client.gemm(a, w, fmt, weight_format=weight_format,
                                             with_metrics=True)
        on_handle, metrics = client.gemm(a, registered, fmt, with_metrics=True)
        e2e_util.assert_same_bits(on_handle, inline, "GEMM on the registered weight")
        assert metrics == inline_metrics
        by_name = client.gemm(a, registered.handle, fmt)  # the handle string works too
        e2e_util.assert_same_bits(by_name, inline, "GEMM on the handle")
        assert [x.handle for x in client.list_weights()] == [registered.handle]
        assert client.drop_weight(registered) == registered.bytes
        assert client.list_weights() == []
        with pytest.raises(quantd.NotFound, match=registered.handle):
            client.gemm(a, registered, fmt)
        with pytest.raises(quantd.NotFound):
            client.drop_weight(registered.handle)
    with pytest.raises(quantd.InvalidArgument, match="nn.Linear"):
        client.register_weight(_x((256,)), "int8")


def test_registered_weight_above_the_message_limit_is_streamed(server, client):
    """A 1.5 MiB weight (the limit is 1 MiB) goes through RegisterWeightStream; it multiplies
    as the same weight sent inline in slices of its rows: bit for bit."""
    a = _x((8, 384), seed=13)
    w = _x((1024, 384), seed=14)
    before = e2e_util.requests_served(server, "RegisterWeightStream")
    registered = client.register_weight(w, "int8", name="big")
    assert e2e_util.requests_served(server, "RegisterWeightStream") == before + 1
    assert registered.shape == (1024, 384) and registered.metrics["count"] == 1024 * 384
    try:
        on_handle = client.gemm(a, registered, "int8")
        # Per-channel weights and per-token activations: output columns are independent.
        for rows in (slice(0, 512), slice(512, 1024)):
            inline = client.gemm(a, w[rows], "int8", weight_format="int8")
            e2e_util.assert_same_bits(on_handle[:, rows], inline, f"streamed weight {rows}")
    finally:
        client.drop_weight(registered)


def test_several_targets_share_the_calls(quantd_binary, tmp_path):
    """A target "a,b" spreads the calls over both replicas (round_robin over the resolved
    list). Metadata and tokens are checked in test_client_transport.py."""
    with contextlib.ExitStack() as stack:
        replicas = []
        for name in "ab":
            replicas.append(e2e_util.QuantdServer(tmp_path / name, name=name).start())
            stack.callback(e2e_util.stop_and_check, replicas[-1])
        with quantd.Client(",".join(r.address for r in replicas)) as c:
            # round_robin only picks replicas it is connected to: call until both have served.
            for _ in range(200):
                assert c.quantize(_x((4, 32)), "int8").metrics["count"] == 4 * 32
                if all(e2e_util.requests_served(r, "Quantize") > 0 for r in replicas):
                    break
            served = [e2e_util.requests_served(r, "Quantize") for r in replicas]
            assert all(n > 0 for n in served), served


def test_closed_client(server):
    c = quantd.Client(server.address)
    c.close()
    with pytest.raises(quantd.FailedPrecondition, match="closed"):
        c.capabilities()
