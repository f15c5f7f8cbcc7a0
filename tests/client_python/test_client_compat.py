"""quantd.compat: the quantizer classes of the tools quantd replaces (seeds 000 and 001), backed
by the service, give what the direct Client calls give, bit for bit, with the old signatures
and return conventions."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import e2e_util
import quantd
from quantd import compat
from quantd.compat import (FP8Quantizer, INT8Quantizer, quantization_error,
                           signal_to_quantization_noise_ratio)

F32 = np.float32


@pytest.fixture(scope="module", autouse=True)
def default_client(client):
    """compat's module-level default (what code that only changed its import uses)."""
    compat.set_default_client(client)
    yield
    compat._default_client = None


def _x(shape=(1000,), seed=0, scale=100.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)


@pytest.mark.parametrize("fp8_format,descriptor,ml_type,max_finite", [
    ("E4M3", "fp8-e4m3", ml_dtypes.float8_e4m3fn, 448.0),
    ("E5M2", "fp8-e5m2", ml_dtypes.float8_e5m2, 57344.0)])
def test_fp8_quantizer(client, fp8_format, descriptor, ml_type, max_finite):
    x = _x()
    quantizer = FP8Quantizer(fp8_format=fp8_format)
    with pytest.raises(quantd.InvalidArgument, match="calibrate"):
        quantizer.dequantize(np.zeros(4, ml_type))  # no scale before calibrate
    quantizer.calibrate(x)
    assert quantizer.scale.dtype == F32 and quantizer.scale.shape == (1,)
    assert quantizer.scale[0] == np.float32(np.abs(x).max()) / np.float32(max_finite)
    x_quant = quantizer.quantize(x)
    assert x_quant.dtype == np.dtype(ml_type) and x_quant.shape == x.shape
    x_dequant = quantizer.dequantize(x_quant)
    assert x_dequant.dtype == F32 and x_dequant.shape == x.shape

    direct = client.quantize(x, descriptor, granularity="tensor")
    e2e_util.assert_same_bits(x_quant.view(np.uint8), direct.codes, "FP8Quantizer codes")
    e2e_util.assert_same_bits(quantizer.scale, direct.scales, "FP8Quantizer scale")
    e2e_util.assert_same_bits(x_dequant, direct.dequantize(), "FP8Quantizer x̂")
    # The float8 values are x / scale rounded: x̂ = scale · value exactly, in fp32.
    e2e_util.assert_same_bits(x_dequant, (x_quant.astype(F32) * quantizer.scale).astype(F32),
                              "scale · fp8 value")
    # The uint8 codes are accepted too.
    e2e_util.assert_same_bits(quantizer.dequantize(x_quant.view(np.uint8)), x_dequant,
                              "dequantize(uint8 codes)")
    assert signal_to_quantization_noise_ratio(x, x_dequant) == pytest.approx(
        direct.metrics["sqnr_db"], rel=1e-9)
    assert quantization_error(x, x_dequant) == pytest.approx(direct.metrics["mse"], rel=1e-9)


def test_fp8_defaults_and_dynamic_calibration(client):
    quantizer = FP8Quantizer()  # the old default, E5M2
    assert quantizer.fp8_format == "E5M2"
    x = _x(seed=1)
    x_quant = quantizer.quantize(x)  # calibrates on x first
    assert quantizer.scale is not None
    e2e_util.assert_same_bits(x_quant.view(np.uint8),
                              client.quantize(x, "fp8-e5m2", granularity="tensor").codes,
                              "dynamic FP8")
    # Kept for the next tensor (a static scale), as after calibrate().
    y = _x(seed=2, scale=10.0)
    e2e_util.assert_same_bits(
        quantizer.quantize(y).view(np.uint8),
        client.quantize(y, "fp8-e5m2", granularity="tensor", static_scales=quantizer.scale).codes,
        "static FP8")
    with pytest.raises(ValueError, match="E4M3"):
        FP8Quantizer(fp8_format="E3M4")
    with pytest.raises(quantd.InvalidArgument, match="calibrate"):
        FP8Quantizer("E4M3").dequantize(x_quant)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int8_quantizer_per_tensor(client, symmetric):
    x = _x(seed=3, scale=50.0) + (0 if symmetric else 20.0)
    quantizer = INT8Quantizer(symmetric=symmetric)
    quantizer.calibrate(x)
    x_quant = quantizer.quantize(x)
    assert x_quant.dtype == np.int8 and x_quant.shape == x.shape
    x_dequant = quantizer.dequantize(x_quant)
    direct = client.quantize(x, "int8", granularity="tensor", asymmetric=not symmetric)
    e2e_util.assert_same_bits(x_quant, direct.codes, "INT8Quantizer codes")
    e2e_util.assert_same_bits(quantizer.scale, direct.scales, "INT8Quantizer scale")
    if symmetric:
        assert quantizer.zero_point.tolist() == [0]  # "zero_point = 0"
        assert quantizer.scale[0] == np.float32(np.abs(x).max()) / np.float32(127)
    else:
        e2e_util.assert_same_bits(quantizer.zero_point, direct.zero_points, "zero_point")
        assert quantizer.zero_point[0] != 0
    e2e_util.assert_same_bits(x_dequant, direct.dequantize(), "INT8Quantizer x̂")
    assert INT8Quantizer().symmetric is False  # the old default


def test_int8_per_token_and_per_channel(client):
    x = _x((2, 64, 256), seed=4, scale=1.0)  # (batch, seq, hidden)
    x_int8, scale = INT8Quantizer.quantize_per_token(x)
    assert x_int8.dtype == np.int8 and x_int8.shape == x.shape
    assert scale.dtype == F32 and scale.shape == (2, 64, 1)
    direct = client.quantize(x, "int8", granularity="token")
    e2e_util.assert_same_bits(x_int8, direct.codes, "per-token codes")
    e2e_util.assert_same_bits(scale.reshape(-1, 1), direct.scales, "per-token scale")
    x_restored = INT8Quantizer.dequantize(x_int8, scale)
    assert x_restored.dtype == F32 and x_restored.shape == x.shape
    e2e_util.assert_same_bits(x_restored, direct.dequantize(), "per-token dequantize")

    w = _x((96, 256), seed=5, scale=0.02)  # (out_features, in_features)
    w_int8, w_scale = INT8Quantizer.quantize_per_channel(w)
    assert w_int8.shape == w.shape and w_scale.shape == (96, 1)
    direct = client.quantize(w, "int8", granularity="channel")
    e2e_util.assert_same_bits(w_int8, direct.codes, "per-channel codes")
    e2e_util.assert_same_bits(w_scale, direct.scales, "per-channel scale")
    e2e_util.assert_same_bits(INT8Quantizer.dequantize(w_int8, w_scale), direct.dequantize(),
                              "per-channel dequantize")
    # On an instance the two-argument form is the same.
    e2e_util.assert_same_bits(INT8Quantizer(symmetric=True).dequantize(w_int8, w_scale),
                              direct.dequantize(), "instance dequantize(x, scale)")
    # N-D weights: one scale per output channel, (out, 1, 1, 1).
    conv = _x((8, 4, 3, 3), seed=6, scale=0.1)
    c_int8, c_scale = INT8Quantizer.quantize_per_channel(conv)
    assert c_scale.shape == (8, 1, 1, 1)
    e2e_util.assert_same_bits(INT8Quantizer.dequantize(c_int8, c_scale),
                              client.quantize(conv, "int8", granularity="channel").dequantize(),
                              "conv per-channel")


def test_int8_dequantize_other_scale_shapes_here():
    """A scale layout no granularity has (per column) is applied by broadcasting, with the
    FORMATS.md arithmetic."""
    codes = np.arange(-128, 128, dtype=np.int8).reshape(8, 32)
    scale = np.linspace(0.01, 0.1, 32, dtype=F32).reshape(1, 32)
    out = INT8Quantizer.dequantize(codes, scale)
    e2e_util.assert_same_bits(out, (codes.astype(F32) * scale).astype(F32), "broadcast")
    with pytest.raises(quantd.InvalidArgument, match="broadcast"):
        INT8Quantizer.dequantize(codes, np.ones((3, 5), F32))
    with pytest.raises(quantd.InvalidArgument, match="needs the scale"):
        INT8Quantizer.dequantize(codes)


def test_compat_torch(client):
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 16, 64)
    x_int8, scale = INT8Quantizer.quantize_per_token(x)
    assert x_int8.dtype == torch.int8 and scale.shape == (2, 16, 1)
    assert isinstance(INT8Quantizer.dequantize(x_int8, scale), torch.Tensor)
    quantizer = FP8Quantizer("E4M3")
    x_quant = quantizer.quantize(x)
    if hasattr(torch, "float8_e4m3fn"):
        assert x_quant.dtype == torch.float8_e4m3fn
    x_dequant = quantizer.dequantize(x_quant)
    assert isinstance(x_dequant, torch.Tensor) and x_dequant.dtype == torch.float32
    direct = client.quantize(x.numpy(), "fp8-e4m3", granularity="tensor")
    e2e_util.assert_same_bits(x_dequant.numpy(), direct.dequantize(), "torch FP8 x̂")
    q = INT8Quantizer(symmetric=False)
    assert q.quantize(x.to(torch.bfloat16)).dtype == torch.int8


def test_metric_helpers():
    x = np.array([1.0, -2.0, 3.0], F32)
    assert quantization_error(x, x) == 0.0
    assert signal_to_quantization_noise_ratio(x, x) == math.inf
    y = x + np.float32(0.5)
    assert quantization_error(x, y) == pytest.approx(0.25)
    assert signal_to_quantization_noise_ratio(x, y) == pytest.approx(10 * math.log10(14 / 0.75))


def test_default_client_from_environment(server, monkeypatch):
    compat._default_client = None
    monkeypatch.setenv("QUANTD_SERVER", server.address)
    try:
        assert compat.default_client().target == server.address
        codes, scale = INT8Quantizer.quantize_per_token(_x((4, 32)))
        assert codes.shape == (4, 32) and scale.shape == (4, 1)
    finally:
        compat._default_client.close()
        compat._default_client = None
    # A quantizer can also name its own client.
    with quantd.Client(server.address) as c:
        assert FP8Quantizer("E4M3", client=c).quantize(_x()).shape == (1000,)
