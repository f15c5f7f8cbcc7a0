"""quantctl (embedded and through a real server) against the independent oracle (oracle.py).

Codes, scales and zero-points must equal the oracle bit for bit; metrics agree to 1e-3
relative; `quantctl dequantize` must equal the oracle's x̂ bit for bit. The case matrix covers
every format × granularity × symmetry × input dtype, ragged / 1-D / 3-D / 4-D shapes, and
fills with zeros, ±Inf, NaN, subnormals, wide dynamic range and exact rounding ties.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import ml_dtypes
import numpy as np
import pytest

import e2e_util
import oracle
from e2e_util import run_quantctl

F32 = np.float32


# ---------------------------------------------------------------------------------------------
# The oracle on its own: known answers, and its two minifloat encoders against each other.

@pytest.mark.parametrize("counter,key,want", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, want):
    got = oracle.philox4x32_10([np.array([c], dtype=np.uint32) for c in counter], key)
    assert tuple(int(w[0]) for w in got) == want


def test_philox_vectorized_matches_scalar():
    idx = np.array([0, 1, 2, 3, 4, 5, 1 << 34, (1 << 34) + 3], dtype=np.uint64)
    seed = (7 << 32) | 11
    u = oracle.stochastic_uniform(seed, idx)
    for i, value in zip(idx, u):
        block = int(i) >> 2
        words = oracle.philox4x32_10(
            [np.array([block & 0xFFFFFFFF], np.uint32), np.array([block >> 32], np.uint32),
             np.zeros(1, np.uint32), np.zeros(1, np.uint32)], (11, 7))
        assert value == (int(words[int(i) & 3][0]) >> 8) * 2.0 ** -24
    assert np.all((u >= 0) & (u < 1))


def _fp8_probe_values(info):
    """Every code's value, every midpoint between neighbours (ties), values just off the
    midpoints, fp32 subnormals, overflow candidates, ±0, ±Inf, NaN."""
    codes = np.arange(256, dtype=np.uint8)
    values = oracle.minifloat_decode(codes, info)
    finite = np.unique(values[np.isfinite(values) & (values >= 0)])
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(F32)  # exact in fp32
    above = np.nextafter(mids, F32(np.inf))
    below = np.nextafter(mids, F32(0))
    top = F32(info.max_finite)
    over = np.array([top * F32(1.03), top * F32(1.0625), top * F32(1.07), top * 2, 3e38],
                    dtype=F32)
    rng = np.random.default_rng(5)
    rand = (rng.standard_normal(4000) * np.exp2(rng.integers(-30, 20, 4000))).astype(F32)
    sub = np.array([1e-45, 1e-40, 1e-39, 2.0 ** -130], dtype=F32)
    v = np.concatenate([finite, mids, above, below, over, rand, sub,
                        np.array([0.0, np.inf], dtype=F32)])
    v = np.concatenate([v, -v, np.array([np.nan, -np.nan], dtype=F32)])
    return v.astype(F32)


@pytest.mark.parametrize("fmt", ["fp8-e4m3", "fp8-e5m2"])
@pytest.mark.parametrize("overflow", ["saturate", "nonfinite"])
def test_oracle_minifloat_engine_matches_ml_dtypes(fmt, overflow):
    info = oracle.FORMATS[fmt]
    v = _fp8_probe_values(info)
    a = oracle.minifloat_encode(v, info, "rne", overflow)
    b = oracle.minifloat_encode_rne_ml_dtypes(v, info, overflow)
    bad = np.flatnonzero(a != b)
    assert bad.size == 0, [(float(v[i]), hex(a[i]), hex(b[i])) for i in bad[:10]]
    # Spot checks straight from FORMATS.md's table.
    assert oracle.minifloat_encode(np.array([info.max_finite], F32), info, "rne", overflow)[0] == \
        info.max_code
    assert oracle.minifloat_encode(np.array([-0.0], F32), info, "rne", overflow)[0] == 0x80


def test_oracle_packing_round_trip():
    rng = np.random.default_rng(1)
    for fmt, packing in [("int4", "bitstream"), ("int4", "int32_offset"), ("uint4", "bitstream")]:
        spec = oracle.Spec(fmt, asymmetric=fmt == "uint4", packing=packing)
        info = spec.info
        for shape in [(3, 1), (2, 7), (4, 8), (1, 9), (2, 3, 17)]:
            rows, cols = oracle.view_2d(shape)
            raw = rng.integers(info.qmin, info.qmax + 1, size=(rows, cols))
            packed = oracle.pack(raw, spec, shape)
            assert np.array_equal(oracle.unpack(packed, spec, shape), raw)
    # FORMATS.md: element 0 in the low nibble; int32_offset stores q + 8, element 0 in bits 0-3.
    spec = oracle.Spec("int4")
    assert oracle.pack(np.array([[1, -2, 3]]), spec, (1, 3)).tolist() == [[0xE1, 0x03]]
    spec = oracle.Spec("int4", packing="int32_offset")
    word = oracle.pack(np.array([[-8, 7, 0]]), spec, (1, 3)).view(np.uint32)
    assert word.tolist() == [[0x0 | (0xF << 4) | (0x8 << 8)]]


def test_oracle_documented_choices():
    # All-zero int8 asymmetric group: scale 1, zp -128, codes -128.
    r = oracle.quantize(np.zeros((2, 4), F32), oracle.Spec("int8", asymmetric=True))
    assert r.scales.tolist() == [1.0] and r.zero_points.tolist() == [-128]
    assert r.codes.tolist() == [[-128] * 4] * 2
    # All-zero symmetric group: scale 1, codes 0; a quotient that underflows: scale 1.
    r = oracle.quantize(np.array([[0, 0], [1e-45, 0]], F32), oracle.Spec("int8", "token"))
    assert r.scales.ravel().tolist() == [1.0, 1.0]
    # Inf is left out of amax and saturates.
    r = oracle.quantize(np.array([np.inf, 1.0, -np.inf], F32), oracle.Spec("int8"))
    assert r.scales.tolist() == [F32(1) / F32(127)] and r.codes.tolist() == [127, 127, -128]
    # fp8 NaN keeps its sign; SATURATE maps Inf to max.
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0], F32)
    r = oracle.quantize(x, oracle.Spec("fp8-e4m3", "none"))
    assert r.codes.tolist() == [0x7F, 0xFF, 0x7E, 0xFE, 0x80]
    r = oracle.quantize(x, oracle.Spec("fp8-e5m2", "none", overflow="nonfinite"))
    assert r.codes.tolist() == [0x7E, 0xFE, 0x7C, 0xFC, 0x80]
    with pytest.raises(oracle.OracleError):
        oracle.quantize(np.array([np.nan], F32), oracle.Spec("int8"))


# ---------------------------------------------------------------------------------------------
# Inputs

SHAPES = [(1, 16), (5, 160), (3, 5, 7), (37,), (2, 3, 4, 11), (64, 33), (7, 1), (1, 1),
          (217, 256)]
DTYPES = ["f32", "f16", "bf16"]
FILLS = ["normal", "zeros", "zero_groups", "inf", "nan", "subnormal", "wide", "ties"]


def cast_input(x32: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f32":
        return x32.astype(F32)
    with np.errstate(over="ignore"):
        if dtype == "f16":
            return x32.astype(np.float16)
    return x32.astype(ml_dtypes.bfloat16)


def tie_values(fmt: str, asymmetric: bool, n: int, rng) -> tuple:
    """(values whose x / s is exactly half-way between two codes, the pin value that makes
    every group's scale come out as intended)."""
    info = oracle.FORMATS[fmt]
    if info.kind == "int":
        if asymmetric:
            half = (info.qmax - info.qmin) / 2  # pins ±half: range qmax - qmin, s = 1
            k = rng.integers(-int(half), int(half), n) + 0.5
            return k, half
        k = rng.integers(-info.qmax + 1, info.qmax, n) + rng.choice([-0.5, 0.5], n)
        return k, float(info.qmax)
    codes = np.arange(256, dtype=np.uint8)
    values = oracle.minifloat_decode(codes, info)
    finite = np.unique(values[np.isfinite(values) & (values >= 0)]).astype(np.float64)
    mids = (finite[:-1] + finite[1:]) / 2
    return rng.choice(mids, n) * rng.choice([-1, 1], n), info.max_finite


def make_input(shape, dtype: str, fill: str, fmt: str, asymmetric: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    x = rng.standard_normal(n) * 3.0
    if fill == "zeros":
        x[:] = 0
    elif fill == "zero_groups":
        x = x.reshape(-1, shape[-1] if len(shape) else 1)
        x[:, : (x.shape[1] + 1) // 2] = 0
        x[: (x.shape[0] + 1) // 2] = 0
        x = x.ravel()
    elif fill == "inf":
        pos = rng.random(n) < 0.08
        x[pos] = np.where(rng.random(pos.sum()) < 0.5, np.inf, -np.inf)
    elif fill == "nan":
        pos = rng.random(n) < 0.08
        x[pos] = np.nan
        # Half of them with the sign bit set.
        x32 = x.astype(F32)
        bits = x32.view(np.uint32)
        neg = pos & (rng.random(n) < 0.5)
        bits[neg] |= np.uint32(0x80000000)
        x = x32
    elif fill == "subnormal":
        tiny = 2.0 ** -136 if dtype != "f16" else 2.0 ** -20
        x = np.round(x * 8) * tiny
    elif fill == "wide":
        x = x * np.exp2(rng.integers(-24, 9, n))
    elif fill == "ties":
        values, pin = tie_values(fmt, asymmetric, n, rng)
        x = values.reshape(-1, shape[-1] if len(shape) else 1)
        cols = x.shape[1]
        # Pins on every 4th column (both signs for asymmetric): each group of >= 4 columns
        # and each row gets the full range, so s is exact and x / s hits the ties.
        x[:, 0::4] = pin
        if cols > 2:
            x[:, 2::4] = -pin
        x = x.ravel()
    x = np.asarray(x, dtype=F32).reshape(shape)
    x = cast_input(x, dtype)
    if fill == "nan_payloads":
        # NaNs of every kind, written as bits of the input dtype: quiet and signalling, with
        # payloads, both signs.
        bits = x.view({"f32": np.uint32, "f16": np.uint16, "bf16": np.uint16}[dtype]).ravel()
        if dtype == "f32":
            pool = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FC12345,
                    0xFFFFFFFF]
        elif dtype == "f16":
            pool = [0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7DFF, 0x7FFF, 0xFFFF]
        else:
            pool = [0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FBF, 0x7FFF, 0xFFFF]
        pos = np.flatnonzero(rng.random(n) < 0.2)
        bits[pos] = np.array(pool, dtype=bits.dtype)[rng.integers(len(pool), size=pos.size)]
    return x


# ---------------------------------------------------------------------------------------------
# The case matrix

@dataclasses.dataclass
class Case:
    name: str
    x: np.ndarray
    spec: oracle.Spec
    output_dtype: str = "f32"

    def __repr__(self):
        return self.name


FORMAT_SYMMETRY = [("int8", False), ("int8", True), ("int4", False), ("int4", True),
                   ("uint8", True), ("uint4", True), ("fp8-e4m3", False), ("fp8-e5m2", False)]

GRANULARITY_VARIANTS = [
    ("none", {}),
    ("tensor", {}),
    ("channel", {"axis": 0}),
    ("channel", {"axis": -1}),
    ("token", {}),
    ("group", {"group_size": 16}),
    ("group", {"group_size": 5}),
    ("block", {"block": (4, 16)}),
    ("block", {"block": (3, 5)}),
]


def _shape_name(shape):
    return "x".join(map(str, shape)) if shape else "scalar"


def matrix_cases() -> list:
    cases = []
    for fs_index, (fmt, asym) in enumerate(FORMAT_SYMMETRY):
        j = 0
        for gran, params in GRANULARITY_VARIANTS:
            if gran == "none" and oracle.FORMATS[fmt].kind != "float":
                continue
            for _ in range(4):
                fill = FILLS[j % len(FILLS)]
                dtype = DTYPES[j % len(DTYPES)]
                shape = SHAPES[(j * 5 + fs_index) % len(SHAPES)]
                j += 1
                spec = oracle.Spec(fmt, gran, asymmetric=asym, **params)
                if fill == "nan" and oracle.FORMATS[fmt].kind == "int":
                    spec.nan_policy = "zero"
                name = (f"{fmt}{'-asym' if asym else ''}-{gran}"
                        f"{''.join(f'-{k}{v}' for k, v in params.items())}"
                        f"-{dtype}-{_shape_name(shape)}-{fill}").replace(" ", "").replace(",", "x")
                seed = len(cases) * 7919 + 17
                cases.append(Case(name, make_input(shape, dtype, fill, fmt, asym, seed), spec))
    return cases


def special_cases() -> list:
    """Rounding modes, overflow, clip ratios, NaN policies, packing, edge shapes."""
    cases = []
    rng_seed = [1000]

    def add(name, shape, dtype, fill, spec, output_dtype="f32"):
        rng_seed[0] += 1
        x = make_input(shape, dtype, fill, spec.format, spec.asymmetric, rng_seed[0])
        cases.append(Case(name, x, spec, output_dtype))

    for fmt, asym in FORMAT_SYMMETRY:
        tag = f"{fmt}{'-asym' if asym else ''}"
        for rounding in ["away", "stochastic"]:
            for fill in ["ties", "normal"]:
                add(f"{tag}-{rounding}-tensor-{fill}", (9, 40), "f32", fill,
                    oracle.Spec(fmt, "tensor", asymmetric=asym, rounding=rounding, seed=12345))
            add(f"{tag}-{rounding}-group7-wide", (6, 30), "bf16", "wide",
                oracle.Spec(fmt, "group", group_size=7, asymmetric=asym, rounding=rounding,
                            seed=(1 << 40) + 99))
        add(f"{tag}-stochastic-seed0-token", (5, 33), "f16", "normal",
            oracle.Spec(fmt, "token", asymmetric=asym, rounding="stochastic", seed=0))
        for clip in [0.5, 0.9]:
            add(f"{tag}-clip{clip}-channel", (8, 24), "f32", "normal",
                oracle.Spec(fmt, "channel", asymmetric=asym, clip_ratio=clip))
        add(f"{tag}-clip0.7-inf-block", (9, 20), "f32", "inf",
            oracle.Spec(fmt, "block", block=(4, 8), asymmetric=asym, clip_ratio=0.7))
    for fmt in ["fp8-e4m3", "fp8-e5m2"]:
        for overflow in ["saturate", "nonfinite"]:
            add(f"{fmt}-{overflow}-none-inf", (4, 50), "f32", "inf",
                oracle.Spec(fmt, "none", overflow=overflow))
            add(f"{fmt}-{overflow}-clip0.5-tensor", (4, 50), "f32", "normal",
                oracle.Spec(fmt, "tensor", overflow=overflow, clip_ratio=0.5))
            add(f"{fmt}-{overflow}-none-wide", (4, 64), "f32", "wide",
                oracle.Spec(fmt, "none", overflow=overflow))
            add(f"{fmt}-{overflow}-away-clip0.6-token", (4, 50), "bf16", "inf",
                oracle.Spec(fmt, "token", overflow=overflow, clip_ratio=0.6, rounding="away"))
        add(f"{fmt}-nanzero-group", (3, 40), "f32", "nan",
            oracle.Spec(fmt, "group", group_size=8, nan_policy="zero"))
        add(f"{fmt}-nanpropagate-none", (3, 40), "f16", "nan",
            oracle.Spec(fmt, "none", nan_policy="propagate"))
        add(f"{fmt}-ties-none", (10, 64), "f32", "ties", oracle.Spec(fmt, "none"))
        for dtype in DTYPES:
            add(f"{fmt}-nan-payloads-{dtype}", (6, 33), dtype, "nan_payloads",
                oracle.Spec(fmt, "channel"))
        add(f"{fmt}-nan-payloads-nanzero", (6, 33), "f32", "nan_payloads",
            oracle.Spec(fmt, "token", nan_policy="zero"))
        add(f"{fmt}-stochastic-none", (10, 64), "f32", "ties",
            oracle.Spec(fmt, "none", rounding="stochastic", seed=3))
    for cols in [1, 7, 8, 9, 17, 64]:
        add(f"int4-int32_offset-{cols}", (5, cols), "f32", "normal",
            oracle.Spec("int4", "token", packing="int32_offset"))
    add("int8-nan-payloads-nanzero", (6, 33), "bf16", "nan_payloads",
        oracle.Spec("int8", "group", group_size=8, nan_policy="zero"))
    add("uint4-nan-payloads-nanzero", (6, 33), "f16", "nan_payloads",
        oracle.Spec("uint4", "block", block=(4, 4), asymmetric=True, nan_policy="zero"))
    add("int4-asym-int32_offset-group", (3, 2, 21), "bf16", "normal",
        oracle.Spec("int4", "group", group_size=8, asymmetric=True, packing="int32_offset"))
    # Edge shapes.
    add("int8-scalar-tensor", (), "f32", "normal", oracle.Spec("int8", "tensor"))
    add("int4-scalar-token", (), "f32", "normal", oracle.Spec("int4", "token"))
    add("int8-empty-token", (0, 8), "f32", "normal", oracle.Spec("int8", "token"))
    add("uint4-empty-tensor", (3, 0), "f32", "normal", oracle.Spec("uint4", asymmetric=True))
    add("int8-channel-axis1-3d", (4, 6, 5), "f16", "normal",
        oracle.Spec("int8", "channel", axis=1))
    add("int4-channel-axis-2-4d", (3, 4, 2, 6), "f32", "normal",
        oracle.Spec("int4", "channel", axis=-2))
    add("fp8-e4m3-channel-axis2-3d", (2, 3, 9), "bf16", "wide",
        oracle.Spec("fp8-e4m3", "channel", axis=2))
    add("int8-block-default-128", (130, 260), "f32", "normal", oracle.Spec("int8", "block"))
    add("int8-group-larger-than-row", (6, 10), "f32", "normal",
        oracle.Spec("int8", "group", group_size=128))
    add("uint8-block-larger-than-tensor", (6, 10), "f16", "normal",
        oracle.Spec("uint8", "block", block=(64, 64), asymmetric=True))
    add("int8-tiny-underflowing-scale", (2, 8), "f32", "subnormal", oracle.Spec("int8", "token"))
    # Dequantize to f16 / bf16.
    for fmt, asym in [("int8", False), ("uint4", True), ("fp8-e4m3", False), ("fp8-e5m2", False)]:
        for out in ["f16", "bf16"]:
            add(f"{fmt}-dequant-{out}", (6, 40), "f32", "wide",
                oracle.Spec(fmt, "token", asymmetric=asym), output_dtype=out)
    return cases


MATRIX = matrix_cases()
SPECIAL = special_cases()
ALL_CASES = MATRIX + SPECIAL
# A representative subset through a real server: every 6th matrix case and every 4th special one
# (every format and granularity still appears).
SERVER_CASES = MATRIX[::6] + SPECIAL[::4]


def _subtests_ids(cases):
    return [c.name for c in cases]


def run_case(case: Case, tmp_path: pathlib.Path, server=None):
    x_path = e2e_util.save_npy(tmp_path / "x.npy", case.x)
    q_path = tmp_path / "q.npz"
    flags = e2e_util.spec_flags(case.spec)
    want = oracle.quantize(case.x, case.spec)
    proc = run_quantctl(["quantize", *flags, x_path, q_path], server=server)
    e2e_util.check_quantized_npz(q_path, want, case.name)
    want_hat = oracle.dequantize(want)
    got_metrics = e2e_util.last_json_line(proc.stdout)
    e2e_util.assert_metrics_close(got_metrics, oracle.metrics(case.x, want_hat), what=case.name)

    out_path = tmp_path / "x_hat.npy"
    args = ["dequantize"]
    if case.output_dtype != "f32":
        args.append(f"--output_dtype={case.output_dtype}")
    run_quantctl([*args, q_path, out_path], server=server)
    got_hat = np.load(str(out_path), allow_pickle=False)
    if case.output_dtype == "bf16":
        assert got_hat.dtype == np.dtype("V2"), got_hat.dtype
        got_hat = got_hat.view(ml_dtypes.bfloat16)
    e2e_util.assert_same_floats(got_hat, oracle.cast_output(want_hat, case.output_dtype),
                                f"{case.name} dequantized")


@pytest.mark.parametrize("case", ALL_CASES, ids=_subtests_ids(ALL_CASES))
def test_embedded_matches_oracle(quantctl, case, tmp_path):
    run_case(case, tmp_path)


@pytest.mark.parametrize("case", SERVER_CASES, ids=_subtests_ids(SERVER_CASES))
def test_server_matches_oracle(server, case, tmp_path):
    run_case(case, tmp_path, server=server.address)


# ---------------------------------------------------------------------------------------------
# The other subcommands

QDQ_SPECS = [
    ("f32", oracle.Spec("int8", "token")),
    ("f16", oracle.Spec("int4", "group", group_size=16, asymmetric=True)),
    ("bf16", oracle.Spec("fp8-e4m3", "block", block=(4, 8))),
    ("f32", oracle.Spec("uint4", "channel", axis=-1, asymmetric=True, rounding="stochastic",
                        seed=77)),
    ("f16", oracle.Spec("fp8-e5m2", "none", overflow="nonfinite")),
]


@pytest.mark.parametrize("use_server", [False, True], ids=["embedded", "server"])
@pytest.mark.parametrize("dtype,spec", QDQ_SPECS, ids=[f"{d}-{s.format}-{s.granularity}"
                                                        for d, s in QDQ_SPECS])
def test_quantdequant_equals_dequantize_of_quantize(request, use_server, dtype, spec, tmp_path):
    address = request.getfixturevalue("server").address if use_server else None
    request.getfixturevalue("quantctl")
    x = make_input((9, 48), dtype, "wide", spec.format, spec.asymmetric, 4242)
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    flags = e2e_util.spec_flags(spec)
    proc = run_quantctl(["quantdequant", *flags, x_path, tmp_path / "qdq.npy"], server=address)
    qdq_metrics = e2e_util.last_json_line(proc.stdout)
    proc = run_quantctl(["quantize", *flags, x_path, tmp_path / "q.npz"], server=address)
    q_metrics = e2e_util.last_json_line(proc.stdout)
    run_quantctl(["dequantize", f"--output_dtype={dtype}", tmp_path / "q.npz",
                  tmp_path / "dq.npy"], server=address)
    qdq = np.load(str(tmp_path / "qdq.npy"))
    dq = np.load(str(tmp_path / "dq.npy"))
    # quantdequant's output dtype defaults to the input's (bf16 .npy files read back as '<V2').
    want_dtype = np.dtype("V2") if dtype == "bf16" else x.dtype
    assert qdq.dtype == want_dtype and dq.dtype == want_dtype, (qdq.dtype, dq.dtype, x.dtype)
    e2e_util.assert_same_bits(qdq, dq, "quantdequant vs dequantize(quantize)")
    want = oracle.cast_output(oracle.dequantize(oracle.quantize(x, spec)), dtype)
    got = qdq.view(ml_dtypes.bfloat16) if dtype == "bf16" else qdq
    e2e_util.assert_same_floats(got, want, "quantdequant vs oracle")
    e2e_util.assert_metrics_close(qdq_metrics, q_metrics, rel=1e-9, what="qdq vs quantize")


CALIBRATE_SPECS = [
    oracle.Spec("int8", "channel"),
    oracle.Spec("int8", "token", asymmetric=True),
    oracle.Spec("int4", "group", group_size=16),
    oracle.Spec("uint8", "block", block=(4, 16), asymmetric=True),
    oracle.Spec("fp8-e4m3", "tensor"),
    oracle.Spec("fp8-e5m2", "channel", axis=-1),
]


@pytest.mark.parametrize("spec", CALIBRATE_SPECS,
                         ids=[f"{s.format}-{s.granularity}{'-asym' if s.asymmetric else ''}"
                              for s in CALIBRATE_SPECS])
def test_calibrate_amax_equals_quantize_scales(quantctl, spec, tmp_path):
    x = make_input((12, 40), "f32", "wide", spec.format, spec.asymmetric, 99)
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    flags = e2e_util.spec_flags(spec)
    proc = run_quantctl(["calibrate", *flags, "--method=amax", f"--save={tmp_path / 'cal.npz'}",
                         x_path])
    report = e2e_util.last_json_line(proc.stdout)
    run_quantctl(["quantize", *flags, x_path, tmp_path / "q.npz"])
    q = np.load(str(tmp_path / "q.npz"))
    cal = np.load(str(tmp_path / "cal.npz"))
    want = oracle.quantize(x, spec)
    e2e_util.assert_same_bits(cal["scales"], q["scales"], "calibrate vs quantize scales")
    e2e_util.assert_same_bits(cal["scales"], want.scales, "calibrate vs oracle scales")
    # The printed JSON (%.9g) round-trips float32.
    assert np.array_equal(np.array(report["scales"], dtype=F32), want.scales.ravel())
    if spec.asymmetric:
        e2e_util.assert_same_bits(cal["zero_points"], q["zero_points"], "zero points")
    assert np.all(cal["clip_ratios"] == 1)


CALIBRATE_SEARCH = [
    (oracle.Spec("int4", "token"), "mse", ["--search_steps=21", "--search_min_ratio=0.5"]),
    (oracle.Spec("int4", "group", group_size=16, asymmetric=True), "mse",
     ["--search_steps=9", "--search_min_ratio=0.3"]),
    (oracle.Spec("uint4", "channel", axis=-1), "mse", ["--search_steps=5"]),
    (oracle.Spec("fp8-e4m3", "block", block=(3, 16)), "mse", ["--search_steps=13"]),
    (oracle.Spec("int8", "tensor"), "mse", ["--search_steps=1"]),
    (oracle.Spec("int8", "channel"), "percentile", ["--percentile=99.5"]),
    (oracle.Spec("int8", "token", asymmetric=True), "percentile", ["--percentile=90"]),
    (oracle.Spec("int4", "group", group_size=7), "percentile", ["--percentile=50"]),
    (oracle.Spec("uint8", "token"), "percentile", ["--percentile=0.5"]),
    (oracle.Spec("fp8-e5m2", "tensor"), "percentile", ["--percentile=100"]),
    (oracle.Spec("int8", "block", block=(4, 8)), "percentile", []),  # default 99.99
]


@pytest.mark.parametrize("spec,method,flags", CALIBRATE_SEARCH,
                         ids=[f"{m}-{s.format}-{s.granularity}{'-asym' if s.asymmetric else ''}"
                              f"{''.join(f)}" for s, m, f in CALIBRATE_SEARCH])
def test_calibrate_percentile_and_mse_match_the_oracle(quantctl, spec, method, flags, tmp_path):
    rng = np.random.default_rng(hash(method + spec.format) % 1000)
    x = (rng.standard_t(3, (12, 48)) * 2).astype(F32)  # heavy tails: clipping pays
    x[5, 7] = np.inf  # never enters a percentile or a search
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    proc = run_quantctl(["calibrate", *e2e_util.spec_flags(spec), f"--method={method}", *flags,
                         f"--save={tmp_path / 'cal.npz'}", x_path])
    report = e2e_util.last_json_line(proc.stdout)
    options = {}
    for flag in flags:
        name, value = flag[2:].split("=")
        options[name] = float(value) if "." in value or name == "percentile" else int(value)
    want = oracle.calibrate(x, spec, method, **options)
    cal = np.load(str(tmp_path / "cal.npz"))
    for name in ["scales", "amax", "clip_ratios"] + (
            ["zero_points"] if want["zero_points"] is not None else []):
        e2e_util.assert_same_bits(cal[name], want[name], f"calibrate {method} {name}")
    # The metrics are those of quantizing x with the calibrated scales.
    static = want["spec"]
    x_hat = oracle.dequantize(oracle.quantize(x, static))
    e2e_util.assert_metrics_close(report["metrics"], oracle.metrics(x, x_hat))
    if method == "mse" and spec.format == "int4" and spec.granularity == "token":
        assert np.any(cal["clip_ratios"] < 1), "the search never clipped: a weak test input"


@pytest.mark.parametrize("spec", [
    oracle.Spec("int8", "channel"),
    oracle.Spec("int4", "group", group_size=8, asymmetric=True),
    oracle.Spec("uint8", "token", asymmetric=True),
    oracle.Spec("fp8-e4m3", "block", block=(2, 8)),
], ids=["int8-channel", "int4-asym-group", "uint8-token", "fp8-e4m3-block"])
def test_static_scales_round_trip(quantctl, spec, tmp_path):
    x = make_input((6, 24), "f32", "normal", spec.format, spec.asymmetric, 31)
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    flags = e2e_util.spec_flags(spec)
    run_quantctl(["quantize", *flags, x_path, tmp_path / "q1.npz"])
    q1 = np.load(str(tmp_path / "q1.npz"))
    static = [f"--static_scales={e2e_util.save_npy(tmp_path / 's.npy', q1['scales'])}"]
    if spec.asymmetric:
        static.append(
            f"--static_zero_points={e2e_util.save_npy(tmp_path / 'z.npy', q1['zero_points'])}")
    # Static scales on a different tensor of the same shape: codes follow the given scales.
    y = (make_input((6, 24), "f32", "normal", spec.format, spec.asymmetric, 32) * 2).astype(F32)
    y_path = e2e_util.save_npy(tmp_path / "y.npy", y)
    for path, data in [(x_path, x), (y_path, y)]:
        run_quantctl(["quantize", *flags, *static, path, tmp_path / "q2.npz"])
        q2 = np.load(str(tmp_path / "q2.npz"))
        st = dataclasses.replace(spec, static_scales=q1["scales"],
                                 static_zero_points=q1["zero_points"] if spec.asymmetric else None)
        want = oracle.quantize(data, st)
        e2e_util.check_quantized_npz(tmp_path / "q2.npz", want, "static")
        if data is x:
            e2e_util.assert_same_bits(q2["codes"], q1["codes"], "static round trip codes")


# ---------------------------------------------------------------------------------------------
# Refusals: non-zero exit, a message on stderr

def _expect_failure(args, must_contain=(), server=None):
    proc = run_quantctl(args, server=server, check=False)
    assert proc.returncode != 0, f"quantctl {' '.join(map(str, args))} succeeded: {proc.stdout}"
    assert proc.stderr.strip(), "no message on stderr"
    for text in must_contain:
        assert text.lower() in proc.stderr.lower(), f"{text!r} not in: {proc.stderr}"
    return proc


@pytest.fixture()
def normal_npy(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(F32)
    return e2e_util.save_npy(tmp_path / "x.npy", x)


def test_unknown_format_lists_accepted_names(quantctl, normal_npy, tmp_path):
    proc = _expect_failure(["quantize", "--format=int3", normal_npy, tmp_path / "q.npz"],
                           ["int3"])
    for name in oracle.FORMATS:
        assert name in proc.stderr, f"{name} not listed in: {proc.stderr}"
    assert proc.returncode == 2


def test_int8_with_nan_input_is_refused(quantctl, tmp_path):
    x = np.ones((3, 8), F32)
    x[1, 5] = np.nan
    x_path = e2e_util.save_npy(tmp_path / "x.npy", x)
    proc = _expect_failure(["quantize", "--format=int8", x_path, tmp_path / "q.npz"], ["nan"])
    assert "13" in proc.stderr, f"the message should name element 13: {proc.stderr}"
    assert not (tmp_path / "q.npz").exists()


@pytest.mark.parametrize("flags,words", [
    (["--format=uint8-sym"], ["asym"]),
    (["--format=fp8-e4m3", "--asymmetric"], ["symmetric"]),
    (["--format=int8", "--granularity=none"], ["none"]),
    (["--format=int8", "--granularity=channel", "--axis=2"], ["axis"]),
    (["--format=int8", "--granularity=channel", "--axis=-3"], ["axis"]),
    (["--format=int8", "--granularity=group"], ["group_size"]),
    (["--format=int8", "--granularity=group", "--group_size=-4"], ["group_size"]),
    (["--format=int8", "--granularity=block", "--block=3y4"], ["block"]),
    (["--format=int8", "--granularity=block", "--block=0x4"], ["block"]),
    (["--format=int8", "--granularity=sideways"], ["granularity"]),
    (["--format=int8", "--clip_ratio=1.5"], ["clip_ratio"]),
    (["--format=int8", "--clip_ratio=-0.5"], ["clip_ratio"]),
    (["--format=int8", "--nan_policy=propagate"], ["nan"]),
    (["--format=int8", "--nan_policy=maybe"], ["maybe"]),
    (["--format=int8", "--packing=int32_offset"], ["int32_offset"]),
    (["--format=int8", "--overflow=nonfinite"], ["nonfinite"]),
    (["--format=int8", "--rounding=up"], ["rounding"]),
    (["--format=int8-asym", "--granularity=token", "--group_size=4"], ["group_size"]),
    ([], ["--format"]),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_bad_specs_are_refused(quantctl, normal_npy, tmp_path, flags, words):
    _expect_failure(["quantize", *flags, normal_npy, tmp_path / "q.npz"], words)


def test_uint_formats_imply_asymmetric(quantctl, normal_npy, tmp_path):
    for fmt in ["uint8", "uint4"]:
        run_quantctl(["quantize", f"--format={fmt}", "--granularity=token", normal_npy,
                      tmp_path / "q.npz"])
        want = oracle.quantize(np.load(normal_npy), oracle.Spec(fmt, "token", asymmetric=True))
        got = e2e_util.check_quantized_npz(tmp_path / "q.npz", want, fmt)
        assert json.loads(got["spec"].tobytes())["asymmetric"] is True


def test_bad_static_scales_are_refused(quantctl, normal_npy, tmp_path):
    base = ["quantize", "--format=int8", "--granularity=token"]
    out = tmp_path / "q.npz"
    for scales, words in [(np.ones(3, F32), ["static_scales", "4"]),
                          (np.array([1, 0, 1, 1], F32), ["static_scales"]),
                          (np.array([1, -1, 1, 1], F32), ["static_scales"]),
                          (np.array([1, np.nan, 1, 1], F32), ["static_scales"]),
                          (np.array([1, np.inf, 1, 1], F32), ["static_scales"]),
                          (np.ones(4, np.float64), ["float32"])]:
        path = e2e_util.save_npy(tmp_path / "s.npy", scales)
        _expect_failure([*base, f"--static_scales={path}", normal_npy, out], words)
    good = e2e_util.save_npy(tmp_path / "good.npy", np.ones((4, 1), F32))
    # Asymmetric static scales need zero-points in range.
    _expect_failure(["quantize", "--format=int8-asym", "--granularity=token",
                     f"--static_scales={good}", normal_npy, out], ["zero"])
    zp = e2e_util.save_npy(tmp_path / "zp.npy", np.array([0, 0, 200, 0], np.int32))
    _expect_failure(["quantize", "--format=int8-asym", "--granularity=token",
                     f"--static_scales={good}", f"--static_zero_points={zp}", normal_npy, out],
                    ["200"])


def test_bad_files_are_refused(quantctl, tmp_path, normal_npy):
    out = tmp_path / "q.npz"
    _expect_failure(["quantize", "--format=int8", tmp_path / "missing.npy", out], ["missing.npy"])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY\x01\x00garbage that is not a header" + bytes(range(256)))
    _expect_failure(["quantize", "--format=int8", garbage, out])
    text = tmp_path / "text.npy"
    text.write_text("hello")
    _expect_failure(["quantize", "--format=int8", text, out])
    ints = e2e_util.save_npy(tmp_path / "ints.npy", np.arange(12, dtype=np.int32))
    _expect_failure(["quantize", "--format=int8", ints, out])
    ints = e2e_util.save_npy(tmp_path / "u8.npy", np.arange(12, dtype=np.uint8))
    _expect_failure(["quantize", "--format=int8", ints, out])
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(pathlib.Path(normal_npy).read_bytes()[:-7])
    _expect_failure(["quantize", "--format=int8", truncated, out])
    # Dequantize: not an npz, a npz without the members, inconsistent members.
    _expect_failure(["dequantize", normal_npy, tmp_path / "o.npy"])
    np.savez(tmp_path / "empty.npz", nothing=np.zeros(1))
    _expect_failure(["dequantize", tmp_path / "empty.npz", tmp_path / "o.npy"], ["spec"])
    run_quantctl(["quantize", "--format=int4", "--granularity=group", "--group_size=4",
                  normal_npy, out])
    with np.load(str(out)) as z:
        members = {k: z[k] for k in z.files}
    members["codes"] = members["codes"][:, :-1]  # one byte short per row
    np.savez(tmp_path / "short.npz", **members)
    _expect_failure(["dequantize", tmp_path / "short.npz", tmp_path / "o.npy"], ["codes"])
    with np.load(str(out)) as z:
        members = {k: z[k] for k in z.files}
    members["scales"] = np.zeros_like(members["scales"])
    np.savez(tmp_path / "zeros.npz", **members)
    _expect_failure(["dequantize", tmp_path / "zeros.npz", tmp_path / "o.npy"], ["scales"])
    # Usage errors.
    _expect_failure(["quantize", "--format=int8", normal_npy])
    _expect_failure(["transmogrify"], ["unknown command"])
    _expect_failure(["dequantize", "--output_dtype=f64", out, tmp_path / "o.npy"], ["f64"])


def test_float64_input_is_read_as_float32(quantctl, tmp_path):
    # npy.h: ToFloatInput converts f64 to F32 (round to nearest even).
    x = np.random.default_rng(3).standard_normal((5, 12)) * 1e3
    x[0, 0] = 1 + 2.0 ** -24  # a tie in the f64 -> f32 conversion
    path = e2e_util.save_npy(tmp_path / "x64.npy", x)
    run_quantctl(["quantize", "--format=int8", "--granularity=token", path, tmp_path / "q.npz"])
    want = oracle.quantize(x.astype(F32), oracle.Spec("int8", "token"))
    e2e_util.check_quantized_npz(tmp_path / "q.npz", want, "f64 input")


def test_errors_through_the_server_keep_it_serving(server, normal_npy, tmp_path):
    _expect_failure(["quantize", "--format=int3", normal_npy, tmp_path / "q.npz"], ["int3"],
                    server=server.address)
    x = np.ones((3, 8), F32)
    x[2, 0] = np.nan
    path = e2e_util.save_npy(tmp_path / "nan.npy", x)
    _expect_failure(["quantize", "--format=int8", path, tmp_path / "q.npz"], ["nan"],
                    server=server.address)
    proc = run_quantctl(["health"], server=server.address)
    assert "SERVING" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The CLI as documented (its usage text, README.md and scripts/demo.sh spell multi-word flags
# with dashes, e.g. `--group-size=128`).

@pytest.mark.parametrize("flags", [
    ["--format=int4", "--granularity=group", "--group-size=8"],
    ["--format=int8", "--clip-ratio=0.5"],
    ["--format=int8", "--nan-policy=zero"],
], ids=["group-size", "clip-ratio", "nan-policy"])
def test_documented_dashed_flag_spellings_work(quantctl, normal_npy, tmp_path, flags):
    proc = run_quantctl(["quantize", *flags, normal_npy, tmp_path / "q.npz"], check=False)
    assert proc.returncode == 0, (
        f"quantctl rejects the dashed spelling its usage text documents: {proc.stderr}")
