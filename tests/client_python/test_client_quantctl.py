"""quantd.Client and quantctl agree: the same arguments send the same request (both recorded by
a stand-in server), and against a real quantd they produce the same codes, scales,
zero-points and metrics, bit for bit. The .npz files move between the two."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

import e2e_util
import quantd
from fake_server import FakeServer
from quantd.v1 import quantd_pb2 as pb

F32 = np.float32

# Spec keywords as the Python client takes them; _flags() spells them as quantctl flags.
CASES = {
    "int8-token": dict(format="int8", granularity="token"),
    "int4-asym-group": dict(format="int4", granularity="group", group_size=128, asymmetric=True),
    "fp8-e4m3-channel": dict(format="fp8-e4m3", granularity="channel"),
    "mxfp4": dict(format="mxfp4"),
    "nvfp4": dict(format="nvfp4"),
    "nf4": dict(format="nf4"),
    "nf4-double-quant": dict(format="nf4", double_quant=True, group_size=128),
    "int4-g128-descriptor": dict(format="int4-g128"),
    "int8-asym-descriptor-channel-axis1": dict(format="int8-asym", granularity="channel", axis=1),
    "fp8-e4m3-b128x128": dict(format="fp8-e4m3", granularity="block", block="128x128"),
    "fp8-e5m2-nonfinite": dict(format="fp8-e5m2", granularity="token", overflow="nonfinite"),
    "int8-stochastic": dict(format="int8", granularity="token", rounding="stochastic", seed=1234),
    "int4-away-clip": dict(format="int4", granularity="token", rounding="away", clip_ratio=0.9),
    "int4-int32-offset": dict(format="int4", granularity="group", group_size=64,
                              packing="int32_offset"),
    "uint4-group": dict(format="uint4", granularity="group", group_size=32),
    "mxfp8-rceil": dict(format="mxfp8", scale_rule="rceil"),
    "mxfp6e2m3-even": dict(format="mxfp6e2m3", scale_rule="even"),
    "mxint8": dict(format="mxint8"),
    "e2m1k8b32c": dict(format="e2m1k8b32c"),
    "nvfp4-global-scale": dict(format="nvfp4", global_scale=448.0),
    "hif8-nan-zero": dict(format="hif8", nan_policy="zero"),
    "flatquant-int4": dict(format="flatquant-int4", flatquant_left="eye16",
                           flatquant_right="eye16"),
    "int8-static-scales": dict(format="int8", granularity="token", static_scales="scales64"),
    "int8-asym-static": dict(format="int8", granularity="tensor", asymmetric=True,
                             static_scales="scale1", static_zero_points="zp1"),
}
# The six the issue names, compared in every input dtype; the rest in float32.
REQUIRED = ("int8-token", "int4-asym-group", "fp8-e4m3-channel", "mxfp4", "nvfp4", "nf4")


def _arrays(name):
    """Named side inputs of CASES (static scales, FlatQuant matrices)."""
    rng = np.random.default_rng(99)
    return {
        "eye16": np.eye(16, dtype=F32) + np.float32(0.01) * rng.standard_normal((16, 16)).astype(F32),
        "scales64": (np.abs(rng.standard_normal((64, 1))) / 30 + 0.01).astype(F32),
        "scale1": np.array([0.03], F32),
        "zp1": np.array([-5], np.int32),
    }[name]


def _resolve(kw):
    """CASES keywords with the named arrays filled in."""
    out = dict(kw)
    for key in ("flatquant_left", "flatquant_right", "static_scales", "static_zero_points"):
        if key in out:
            out[key] = _arrays(out[key])
    return out


def _flags(kw, tmp_path):
    """quantctl flags for CASES keywords (arrays written as .npy files)."""
    flags = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if key in ("flatquant_left", "flatquant_right", "static_scales", "static_zero_points"):
            path = tmp_path / f"{key}.npy"
            np.save(path, _arrays(value))
            flags.append(f"{flag}={path}")
        elif value is True:
            flags.append(flag)
        else:
            flags.append(f"{flag}={value}")
    return flags


def _input(dtype=F32, seed=0):
    x = np.random.default_rng(seed).standard_normal((64, 256)).astype(F32)
    x[3, 7] = 40.0  # one outlier: scales differ between groups
    return x.astype(dtype)


def _npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _spec_dict(spec_bytes_or_msg):
    if isinstance(spec_bytes_or_msg, pb.QuantSpec):
        return json.loads(quantd.client._spec_json(spec_bytes_or_msg))
    return json.loads(spec_bytes_or_msg.tobytes().decode())


@pytest.fixture(scope="module")
def fake():
    srv = FakeServer()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# The same request

@pytest.mark.parametrize("case", list(CASES))
def test_same_quantize_request(fake, quantctl, tmp_path, case):
    kw = CASES[case]
    x = _input()
    np.save(tmp_path / "x.npy", x)
    proc = e2e_util.run_quantctl(["quantize", *_flags(kw, tmp_path), tmp_path / "x.npy",
                                  tmp_path / "q.npz"], server=fake.address, check=False)
    assert "recorded Quantize" in proc.stderr, proc.stderr
    (_, from_quantctl, _), = fake.recorder.take("Quantize")
    with quantd.Client(fake.address) as c, pytest.raises(quantd.Unimplemented):
        c.quantize(x, **_resolve(kw))
    (_, from_python, _), = fake.recorder.take("Quantize")
    assert from_python == from_quantctl, (
        f"python:\n{from_python.spec}\nquantctl:\n{from_quantctl.spec}")
    assert from_python.SerializeToString(deterministic=True) == \
        from_quantctl.SerializeToString(deterministic=True)


def test_same_requests_other_rpcs(fake, quantctl, tmp_path):
    x = _input()
    w = _input(seed=1)[:48]
    bias = np.random.default_rng(2).standard_normal(48).astype(F32)
    for name, array in (("x", x), ("w", w), ("bias", bias)):
        np.save(tmp_path / f"{name}.npy", array)
    with quantd.Client(fake.address) as c:
        # calibrate --method=mse with its knobs
        e2e_util.run_quantctl(["calibrate", "--format=int8", "--granularity=channel",
                               "--method=mse", "--search-steps=11", "--search-min-ratio=0.7",
                               tmp_path / "x.npy"], server=fake.address, check=False)
        with pytest.raises(quantd.Unimplemented):
            c.calibrate(x, "int8", granularity="channel", method="mse", search_steps=11,
                        search_min_ratio=0.7)
        ctl, py = (r for _, r, _ in fake.recorder.take("Calibrate"))
        assert py == ctl, f"{py}\n{ctl}"
        # calibrate --method=percentile
        e2e_util.run_quantctl(["calibrate", "--format=int8-asym", "--method=percentile",
                               "--percentile=99.5", tmp_path / "x.npy"], server=fake.address,
                              check=False)
        with pytest.raises(quantd.Unimplemented):
            c.calibrate(x, "int8-asym", method="percentile", percentile=99.5)
        ctl, py = (r for _, r, _ in fake.recorder.take("Calibrate"))
        assert py.SerializeToString() == ctl.SerializeToString(), f"{py}\n{ctl}"
        # gemm with a weight format, bias and alpha
        e2e_util.run_quantctl(["gemm", "--format=fp8-e4m3", "--weight-format=int4-g128",
                               f"--bias={tmp_path / 'bias.npy'}", "--alpha=0.5",
                               "--output-dtype=bf16", tmp_path / "x.npy", tmp_path / "w.npy",
                               tmp_path / "out.npy"], server=fake.address, check=False)
        with pytest.raises(quantd.Unimplemented):
            c.gemm(x, w, "fp8-e4m3", weight_format="int4-g128", bias=bias, alpha=0.5,
                   dtype="bf16")
        ctl, py = (r for _, r, _ in fake.recorder.take("Gemm"))
        assert py.SerializeToString() == ctl.SerializeToString(), f"{py.a_spec}{py.b_spec}"
        # quantdequant with an output dtype
        e2e_util.run_quantctl(["quantdequant", "--format=mxfp4", "--output-dtype=f16",
                               tmp_path / "x.npy", tmp_path / "xh.npy"], server=fake.address,
                              check=False)
        with pytest.raises(quantd.Unimplemented):
            c.quant_dequant(x, "mxfp4", dtype="f16")
        ctl, py = (r for _, r, _ in fake.recorder.take("QuantDequant"))
        assert py.SerializeToString() == ctl.SerializeToString()


def test_same_dequantize_request_from_a_quantctl_npz(server, fake, quantctl, tmp_path):
    """quantctl's .npz read by QuantizedTensor.load sends what `quantctl dequantize` sends."""
    x = _input()
    np.save(tmp_path / "x.npy", x)
    for case in ("int8-asym-descriptor-channel-axis1", "nvfp4", "nf4-double-quant"):
        out = tmp_path / f"{case}.npz"
        e2e_util.run_quantctl(["quantize", *_flags(CASES[case], tmp_path), tmp_path / "x.npy",
                               out], server=server.address)
        e2e_util.run_quantctl(["dequantize", "--output-dtype=bf16", out, tmp_path / "o.npy"],
                              server=fake.address, check=False)
        with quantd.Client(fake.address) as c, pytest.raises(quantd.Unimplemented):
            c.dequantize(quantd.QuantizedTensor.load(out), dtype="bf16")
        ctl, py = (r for _, r, _ in fake.recorder.take("Dequantize"))
        assert py == ctl, case


# ---------------------------------------------------------------------------------------------
# The same results from a real server

RESULT_CASES = [(case, F32) for case in CASES] + [
    (case, dtype) for dtype in (np.float16, ml_dtypes.bfloat16) for case in REQUIRED]


@pytest.mark.parametrize("case,dtype", RESULT_CASES,
                         ids=[f"{case}-{np.dtype(dtype).name}" for case, dtype in RESULT_CASES])
def test_same_results_as_quantctl(server, client, quantctl, tmp_path, case, dtype):
    kw = CASES[case]
    x = _input(dtype)
    np.save(tmp_path / "x.npy", x)
    proc = e2e_util.run_quantctl(["quantize", *_flags(kw, tmp_path), tmp_path / "x.npy",
                                  tmp_path / "q.npz"], server=server.address)
    want = _npz(tmp_path / "q.npz")
    want_metrics = e2e_util.last_json_line(proc.stdout)
    q = client.quantize(x, **_resolve(kw))

    e2e_util.assert_same_bits(q.codes, want["codes"], f"{case} codes")
    e2e_util.assert_same_bits(q.scales, want["scales"], f"{case} scales")
    if "zero_points" in want:
        e2e_util.assert_same_bits(q.zero_points, want["zero_points"], f"{case} zero_points")
    else:
        assert q.zero_points is None
    if "global_scale" in want:
        assert np.float32(q.global_scale).tobytes() == want["global_scale"].tobytes()
    else:
        assert q.global_scale == 0.0
    if "double_quant_scales" in want:
        e2e_util.assert_same_bits(q.double_quant_scales, want["double_quant_scales"], "dq")
        assert np.float32(q.double_quant_offset).tobytes() == \
            want["double_quant_offset"].tobytes()
    assert list(want["shape"]) == list(q.shape)
    assert want["source_dtype"].tobytes().decode() == q.source_dtype
    assert _spec_dict(want["spec"]) == _spec_dict(q.spec)
    assert set(q.metrics) == set(want_metrics)
    e2e_util.assert_metrics_close(q.metrics, want_metrics, rel=1e-10, what=case)  # %.12g

    # x̂ agrees too: quantctl dequantizing Python's save(), Python dequantizing quantctl's npz.
    q.save(tmp_path / "py.npz")
    e2e_util.run_quantctl(["dequantize", tmp_path / "py.npz", tmp_path / "xh_ctl.npy"],
                          server=server.address)
    x_hat = q.dequantize()
    e2e_util.assert_same_bits(x_hat, np.load(tmp_path / "xh_ctl.npy"), f"{case} x̂ (py.npz)")
    loaded = quantd.QuantizedTensor.load(tmp_path / "q.npz", client=client)
    e2e_util.assert_same_bits(loaded.dequantize(), x_hat, f"{case} x̂ (quantctl npz)")
    saved = _npz(tmp_path / "py.npz")
    assert set(saved) == set(want)
    for name in set(want) - {"spec"}:
        e2e_util.assert_same_bits(saved[name], want[name], f"{case} npz member {name}")


def test_same_calibration_and_gemm_as_quantctl(server, client, quantctl, tmp_path):
    x = _input()
    w = _input(seed=1)[:48]
    bias = np.random.default_rng(2).standard_normal(48).astype(F32)
    for name, array in (("x", x), ("w", w), ("bias", bias)):
        np.save(tmp_path / f"{name}.npy", array)
    proc = e2e_util.run_quantctl(["calibrate", "--format=int8", "--granularity=channel",
                                  "--method=mse", f"--save={tmp_path / 'cal.npz'}",
                                  tmp_path / "x.npy"], server=server.address)
    want = _npz(tmp_path / "cal.npz")
    cal = client.calibrate(x, "int8", granularity="channel", method="mse")
    for name in ("scales", "amax", "clip_ratios"):
        e2e_util.assert_same_bits(getattr(cal, name), want[name], f"calibrate {name}")
    assert e2e_util.last_json_line(proc.stdout)["metrics"]["count"] == cal.metrics["count"]

    e2e_util.run_quantctl(["gemm", "--format=int8", "--weight-format=fp8-e4m3",
                           f"--bias={tmp_path / 'bias.npy'}", tmp_path / "x.npy",
                           tmp_path / "w.npy", tmp_path / "out.npy"], server=server.address)
    out = client.gemm(x, w, "int8", weight_format="fp8-e4m3", bias=bias)
    e2e_util.assert_same_bits(out, np.load(tmp_path / "out.npy"), "gemm output")
