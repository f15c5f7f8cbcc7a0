"""quantd's minifloat engine (kernels/include/quantd/codec.h) against ml_dtypes: every code of
E4M3, E5M2 and of the MX elements E3M2, E2M3, E2M1 decoded, every E8M0 scale code decoded, and
about 200k float32 values encoded.

The engine is reached through the quantd_codec_dump tool, whose path CTest passes in
QUANTD_CODEC_DUMP:

    QUANTD_CODEC_DUMP=build/tests/quantd_codec_dump .venv/bin/python -m pytest -q \
        tests/python/test_minifloat_ml_dtypes.py

References: ml_dtypes' float32 -> float8 cast is round-half-to-even with overflow to NaN
(float8_e4m3fn) or Inf (float8_e5m2): FORMATS.md's NONFINITE. SATURATE is the same cast after
clipping to +-max finite (NaN stays NaN), which is what CUDA's satfinite does.
"""

import os
import subprocess

import ml_dtypes
import numpy as np
import pytest

FORMATS = {
    "fp8-e4m3": ml_dtypes.float8_e4m3fn,
    "fp8-e5m2": ml_dtypes.float8_e5m2,
    # MX elements (FORMATS.md "Minifloat elements"): finite-only, so no NaN or Inf to compare.
    "mxfp6e3m2": ml_dtypes.float6_e3m2fn,
    "mxfp6e2m3": ml_dtypes.float6_e2m3fn,
    "mxfp4": ml_dtypes.float4_e2m1fn,
}
BITS = {"fp8-e4m3": 8, "fp8-e5m2": 8, "mxfp6e3m2": 6, "mxfp6e2m3": 6, "mxfp4": 4}
WITH_NONFINITE = sorted(name for name in FORMATS if BITS[name] == 8)


def _dump_tool():
    path = os.environ.get("QUANTD_CODEC_DUMP")
    if not path:
        pytest.skip("QUANTD_CODEC_DUMP is not set (CTest sets it to the quantd_codec_dump binary)")
    assert os.access(path, os.X_OK), f"QUANTD_CODEC_DUMP={path} is not an executable"
    return path


def _run(args, payload):
    result = subprocess.run([_dump_tool(), *args], input=payload, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def quantd_decode(name, codes):
    out = _run([name, "decode"], np.asarray(codes, dtype=np.uint8).tobytes())
    return np.frombuffer(out, dtype="<f4")


def quantd_encode(name, values, overflow):
    values = np.asarray(values, dtype="<f4")
    out = _run([name, "encode", "rne", overflow], values.tobytes())
    return np.frombuffer(out, dtype=np.uint8)


def every_code(dtype):
    """0 .. 2^bits - 1: ml_dtypes keeps a sub-byte value in the low bits of its byte."""
    return np.arange(1 << _bits_of(dtype), dtype=np.uint8)


def _bits_of(dtype):
    for name, candidate in FORMATS.items():
        if candidate == dtype:
            return BITS[name]
    raise KeyError(dtype)


def representable(dtype):
    """Every finite value of the format, ascending, as float64."""
    values = every_code(dtype).view(dtype).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


def max_finite(dtype):
    return float(ml_dtypes.finfo(dtype).max)


def sweep(dtype, seed=0):
    """About 100k float32 inputs: every tie, its neighbours, the whole range, specials."""
    rng = np.random.default_rng(seed)
    grid = representable(dtype)
    top = max_finite(dtype)
    positive = grid[grid >= 0]
    # The value one step past max (480 for E4M3, 65536 for E5M2) has a tie with max too.
    step = positive[-1] - positive[-2]
    extended = np.append(positive, top + step)
    mids = (extended[:-1] + extended[1:]) / 2  # exact in float32
    mids32 = mids.astype(np.float32)
    assert np.all(mids32.astype(np.float64) == mids)
    ties = np.concatenate([mids32, np.nextafter(mids32, np.float32(np.inf)),
                           np.nextafter(mids32, np.float32(0))])
    exact = positive.astype(np.float32)
    tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal)
    log_uniform = np.exp2(rng.uniform(np.log2(tiny) - 8, np.log2(top) + 8, 60000))
    bits = rng.integers(0, 0x7F800000, 20000, dtype=np.uint32).view(np.float32)  # all finite
    specials = [np.inf, 0.0, top, top * 2, 3.4028235e38, tiny / 2, tiny / 4, tiny * 0.75, 1e-45]
    if np.isnan(np.float32(np.nan).astype(dtype).astype(np.float32)):
        specials.append(np.nan)  # a format with NaN: both keep it (FP6 / FP4 have none)
    specials = np.array(specials, dtype=np.float32)
    magnitudes = np.concatenate([ties, exact, log_uniform.astype(np.float32), bits, specials])
    values = np.concatenate([magnitudes, -magnitudes]).astype(np.float32)
    return values


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_decode_every_code(name):
    dtype = FORMATS[name]
    codes = every_code(dtype)
    got = quantd_decode(name, codes)
    want = codes.view(dtype).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want)), codes[np.isnan(got) != np.isnan(want)]
    finite = ~np.isnan(want)
    mismatch = got[finite].view(np.uint32) != want[finite].view(np.uint32)
    assert not mismatch.any(), [(hex(c), g, w) for c, g, w in
                                zip(codes[finite][mismatch], got[finite][mismatch],
                                    want[finite][mismatch])][:10]
    # NaN keeps its sign (ml_dtypes and PyTorch).
    assert np.array_equal(np.signbit(got), np.signbit(want))


def _compare_codes(name, values, got, want):
    bad = np.flatnonzero(got != want)
    details = [(float(values[i]), hex(got[i]), hex(want[i])) for i in bad[:10]]
    assert bad.size == 0, f"{name}: {bad.size} of {values.size} codes differ, e.g. {details}"


@pytest.mark.parametrize("name", WITH_NONFINITE)
def test_encode_rne_nonfinite_matches_ml_dtypes(name):
    dtype = FORMATS[name]
    values = sweep(dtype)
    assert values.size >= 100_000
    got = quantd_encode(name, values, "nonfinite")
    want = values.astype(dtype).view(np.uint8)
    _compare_codes(name, values, got, want)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_encode_rne_saturate_matches_clipped_ml_dtypes(name):
    dtype = FORMATS[name]
    values = sweep(dtype, seed=1)
    top = np.float32(max_finite(dtype))
    clipped = np.where(np.isnan(values), values, np.clip(values, -top, top)).astype(np.float32)
    got = quantd_encode(name, values, "saturate")
    want = clipped.astype(dtype).view(np.uint8)
    _compare_codes(name, values, got, want)


def test_sweep_holds_every_tie():
    # Guards the sweep itself: every midpoint of E4M3 (incl. 464 between 448 and the first
    # value past it) and of E5M2 (incl. 61440) is in it.
    for dtype, past_max_tie in ((ml_dtypes.float8_e4m3fn, 464.0),
                                (ml_dtypes.float8_e5m2, 61440.0)):
        values = sweep(dtype)
        assert past_max_tie in values and -past_max_tie in values


def test_decode_every_e8m0_scale_code():
    # MX block scales: 2^(c - 127) for c in 0..254, 0xFF NaN (ml_dtypes float8_e8m0fnu).
    codes = np.arange(256, dtype=np.uint8)
    got = np.frombuffer(_run(["e8m0", "decode"], codes.tobytes()), dtype="<f4")
    want = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert np.isnan(got[255]) and np.isnan(want[255])
    assert np.array_equal(got[:255].view(np.uint32), want[:255].view(np.uint32))
