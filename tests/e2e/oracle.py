"""An independent NumPy implementation of shared/FORMATS.md (docs/FORMATS.md in a release).

It shares no code with kernels/: the end-to-end tests compare what `quantctl` and the server
answer against it bit for bit. Everything is computed the way FORMATS.md "Arithmetic" says:
IEEE float32 with round-to-nearest, `x / s` as a true float32 division (never a reciprocal
multiply), one rounding per operation (NumPy float32 scalar and array operations round once
each; there is no fused multiply-add in NumPy).

Where FORMATS.md leaves room, the choices below are the ones the implementation documents:
  * amax / min / max are taken over the FINITE elements of a scale group only (Inf and NaN
    never enter a scale); a group without a finite element counts as all-zero;
  * a scale that comes out 0 (all-zero group, or a quotient that underflows) becomes 1;
  * asymmetric: mx = max(max, 0)·c, mn = min(min, 0)·c, s = f32(f32(mx - mn) / (qmax - qmin)),
    zp = clamp(rne(f32(qmin - f32(mn / s)))), q = clamp(round(x / s) + zp); a range that
    overflows float32 is refused;
  * integer rounding acts on |x / s| (|v| clamped to 2^20 first) and puts the sign back;
  * uint formats are asymmetric only (a spec naming one implies it), fp8 formats symmetric
    only;
  * integer formats refuse NaN inputs unless nan_policy is "zero" (NaN quantizes as 0);
  * fp8: NaN becomes the NaN code with the input's sign (E4M3 0x7F|s, E5M2 0x7E|s), -0.0 keeps
    its sign bit, SATURATE maps +-Inf and every overflow to +-max finite; NONFINITE gives
    +-Inf (E5M2) or NaN (E4M3, which has no Inf).

Element rounding of the minifloats under round-half-to-even uses ml_dtypes (its astype is RNE
with overflow to Inf/NaN); `minifloat_encode` is a second, arithmetic implementation used for
ties-away and stochastic rounding and cross-checked against ml_dtypes in test_oracle.py.

Stochastic rounding: u = (Philox4x32-10 word (i mod 4) of counter (i // 4 as a 128-bit
little-endian integer: [lo32, hi32, 0, 0]) under key (lo32(seed), hi32(seed))) >> 8) · 2^-24 for
the flat element index i; the magnitude is rounded up iff u < frac(magnitude).

Usage:
    spec = Spec("int4", granularity="group", group_size=128)
    result = quantize(x, spec)           # codes (packed as quantctl writes them), scales, ...
    x_hat = dequantize(result)           # float32, shaped like x
    m = metrics(x, x_hat)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import ml_dtypes
import numpy as np

F32 = np.float32
U32_MASK = np.uint64(0xFFFFFFFF)


class OracleError(ValueError):
    """The spec or input is refused (what the service answers with INVALID_ARGUMENT)."""


@dataclasses.dataclass(frozen=True)
class FormatInfo:
    name: str
    kind: str  # "int" or "float"
    bits: int
    qmin: int = 0
    qmax: int = 0
    symmetric_ok: bool = True
    asymmetric_ok: bool = False
    # minifloats
    exp_bits: int = 0
    man_bits: int = 0
    bias: int = 0
    max_code: int = 0
    max_finite: float = 0.0
    nan_code: int = 0  # magnitude bits of the NaN it produces
    inf_code: Optional[int] = None  # magnitude bits of Inf, None when it has none
    ml_dtype: object = None
    block: int = 0  # block formats (MX, NVFP4): listed here; nvfp4() computes NVFP4

    @property
    def divisor(self) -> np.float32:
        return F32(self.qmax) if self.kind == "int" else F32(self.max_finite)


FORMATS = {
    "int8": FormatInfo("int8", "int", 8, -128, 127, True, True),
    "int4": FormatInfo("int4", "int", 4, -8, 7, True, True),
    "uint8": FormatInfo("uint8", "int", 8, 0, 255, False, True),
    "uint4": FormatInfo("uint4", "int", 4, 0, 15, False, True),
    "fp8-e4m3": FormatInfo("fp8-e4m3", "float", 8, symmetric_ok=True, asymmetric_ok=False,
                           exp_bits=4, man_bits=3, bias=7, max_code=0x7E, max_finite=448.0,
                           nan_code=0x7F, inf_code=None, ml_dtype=ml_dtypes.float8_e4m3fn),
    "fp8-e5m2": FormatInfo("fp8-e5m2", "float", 8, symmetric_ok=True, asymmetric_ok=False,
                           exp_bits=5, man_bits=2, bias=15, max_code=0x7B, max_finite=57344.0,
                           nan_code=0x7E, inf_code=0x7C, ml_dtype=ml_dtypes.float8_e5m2),
    # OCP MX v1.0 (FORMATS.md "Block formats"). Their numerics are checked against the C++
    # oracle (tests/unit/oracle.cc) and ml_dtypes (tests/python); here they are only listed.
    "mxfp8": FormatInfo("mxfp8", "float", 8, max_finite=448.0, block=32),
    "mxfp8e5m2": FormatInfo("mxfp8e5m2", "float", 8, max_finite=57344.0, block=32),
    "mxfp6e3m2": FormatInfo("mxfp6e3m2", "float", 6, max_finite=28.0, block=32),
    "mxfp6e2m3": FormatInfo("mxfp6e2m3", "float", 6, max_finite=7.5, block=32),
    "mxfp4": FormatInfo("mxfp4", "float", 4, max_finite=6.0, block=32),
    "mxint8": FormatInfo("mxint8", "int", 8, -127, 127, True, False, block=32),
    "nvfp4": FormatInfo("nvfp4", "float", 4, max_finite=6.0, block=16),
    # HiF8: tapered, not an IEEE-like minifloat; listed only (the C++ oracle computes it).
    "hif8": FormatInfo("hif8", "float", 8, max_finite=32768.0),
    # NF4 (bitsandbytes): blocks of 64 over the flattened tensor; test_server computes it.
    "nf4": FormatInfo("nf4", "nf4", 4, 0, 15, True, False, max_finite=1.0, block=64),
    # FlatQuant: INT4 per token of each row's Kronecker transform; test_server computes it.
    "flatquant-int4": FormatInfo("flatquant-int4", "int", 4, -8, 7, True, False),
}

GRANULARITIES = ("none", "tensor", "channel", "token", "group", "block")


@dataclasses.dataclass
class Spec:
    format: str
    granularity: str = "tensor"
    axis: int = 0
    group_size: int = 0
    block: tuple = (128, 128)  # (rows, cols) for granularity "block"
    asymmetric: bool = False
    rounding: str = "rne"  # rne | away | stochastic
    seed: int = 0
    overflow: str = "saturate"  # saturate | nonfinite
    clip_ratio: float = 1.0
    nan_policy: Optional[str] = None  # None (format default) | reject | zero | propagate
    packing: str = "bitstream"  # bitstream | int32_offset
    static_scales: Optional[np.ndarray] = None
    static_zero_points: Optional[np.ndarray] = None

    @property
    def info(self) -> FormatInfo:
        return FORMATS[self.format]


@dataclasses.dataclass
class Result:
    spec: Spec
    shape: tuple
    codes: np.ndarray        # as quantctl writes them: int8 / uint8 / packed uint8 / int32
    raw_codes: np.ndarray    # one code per element, [rows, cols] view, int64 (signed for int)
    scales: np.ndarray       # float32, FORMATS.md shape
    zero_points: Optional[np.ndarray]  # int32, same shape, asymmetric only
    scale_per_element: np.ndarray  # float32 [rows, cols]
    zp_per_element: np.ndarray     # int64 [rows, cols]


# ---------------------------------------------------------------------------------------------
# Philox4x32-10 (Salmon et al., SC'11), vectorized over counters.

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)


def philox4x32_10(counter, key):
    """counter: 4 arrays (or ints) of uint32 words; key: 2 uint32 words. Returns 4 uint32
    arrays. The 32x32->64 products are exact in uint64."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & U32_MASK for c in counter)
    k0 = np.uint64(key[0]) & U32_MASK
    k1 = np.uint64(key[1]) & U32_MASK
    for round_index in range(10):
        if round_index > 0:  # Random123 bumps the key between rounds
            k0 = (k0 + PHILOX_W0) & U32_MASK
            k1 = (k1 + PHILOX_W1) & U32_MASK
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & U32_MASK
        hi1, lo1 = p1 >> np.uint64(32), p1 & U32_MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def stochastic_uniform(seed: int, indices: np.ndarray) -> np.ndarray:
    """The uniform draw in [0, 1) (float64, exactly k·2^-24) for flat element `indices`."""
    indices = np.asarray(indices, dtype=np.uint64)
    block = indices >> np.uint64(2)
    words = philox4x32_10(
        (block & U32_MASK, block >> np.uint64(32), np.zeros_like(block), np.zeros_like(block)),
        (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF))
    stacked = np.stack(words, axis=-1)  # [..., 4]
    lane = (indices & np.uint64(3)).astype(np.int64)
    bits = np.take_along_axis(stacked, lane[..., None], axis=-1)[..., 0]
    return (bits >> np.uint32(8)).astype(np.float64) * 2.0 ** -24


# ---------------------------------------------------------------------------------------------
# Element rounding.

def round_magnitude(m: np.ndarray, rounding: str, uniform: Optional[np.ndarray]) -> np.ndarray:
    """Rounds non-negative finite magnitudes (float64 holding float32 values) to integers."""
    m = np.asarray(m, dtype=np.float64)
    if rounding == "rne":
        return np.rint(m)  # round half to even
    floor = np.floor(m)
    frac = m - floor  # exact
    if rounding == "away":
        return floor + (frac >= 0.5)
    if rounding == "stochastic":
        return floor + (uniform < frac)
    raise OracleError(f"unknown rounding {rounding!r}")


def minifloat_encode(v: np.ndarray, info: FormatInfo, rounding: str, overflow: str,
                     uniform: Optional[np.ndarray] = None) -> np.ndarray:
    """Arithmetic minifloat encoder: float32 v -> codes (uint8), any rounding mode."""
    v = np.asarray(v, dtype=F32)
    bits = v.view(np.uint32)
    sign = ((bits >> np.uint32(31)).astype(np.int64)) << (info.exp_bits + info.man_bits)
    mag = np.abs(v.astype(np.float64))
    nan = np.isnan(v)
    inf = np.isinf(v)
    emin = 1 - info.bias
    emax = (info.max_code >> info.man_bits) - info.bias
    safe = np.where(nan | inf | (mag == 0), 1.0, mag)
    _, ex = np.frexp(safe)  # safe = m·2^ex, m in [0.5, 1)
    e = np.where(mag == 0, emin, np.maximum(ex.astype(np.int64) - 1, emin))
    over_binade = e > emax
    e_clamped = np.minimum(e, emax)
    n = np.ldexp(np.where(nan | inf | over_binade, 0.0, mag),
                 (info.man_bits - e_clamped).astype(np.int32))
    if uniform is None:
        uniform = np.zeros(v.shape)
    r = round_magnitude(n, rounding, uniform).astype(np.int64)
    magnitude = ((e_clamped + info.bias - 1) << info.man_bits) + r
    overflowed = inf | over_binade | (magnitude > info.max_code)
    if overflow == "nonfinite":
        over_code = info.inf_code if info.inf_code is not None else info.nan_code
    else:
        over_code = info.max_code
    magnitude = np.where(overflowed, over_code, magnitude)
    magnitude = np.where(nan, info.nan_code, magnitude)
    return (sign | magnitude).astype(np.uint8)


def minifloat_encode_rne_ml_dtypes(v: np.ndarray, info: FormatInfo, overflow: str) -> np.ndarray:
    """Round-half-to-even encoding through ml_dtypes (what FORMATS.md names as the model)."""
    v = np.asarray(v, dtype=F32)
    nan = np.isnan(v)
    sign = (v.view(np.uint32) >> np.uint32(31)).astype(np.uint8) << np.uint8(7)
    if overflow == "saturate":
        w = np.clip(v, -F32(info.max_finite), F32(info.max_finite))  # NaN stays NaN, -0 stays -0
    else:
        w = v
    codes = w.astype(info.ml_dtype).view(np.uint8)
    # NaN: the format's NaN with the input's sign (ml_dtypes' NaN sign is not part of its API).
    return np.where(nan, sign | np.uint8(info.nan_code), codes).astype(np.uint8)


def minifloat_decode(codes: np.ndarray, info: FormatInfo) -> np.ndarray:
    return np.asarray(codes, dtype=np.uint8).view(info.ml_dtype).astype(F32)


# ---------------------------------------------------------------------------------------------
# Scale groups.

def view_2d(shape) -> tuple:
    shape = tuple(int(d) for d in shape)
    cols = shape[-1] if len(shape) else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


def scale_shape(spec: Spec, shape) -> tuple:
    rows, cols = view_2d(shape)
    g = spec.granularity
    if g in ("none", "tensor"):
        return (1,)
    if g == "channel":
        axis = spec.axis % len(shape)
        return tuple(shape[i] if i == axis else 1 for i in range(len(shape)))
    if g == "token":
        return (rows, 1)
    if g == "group":
        return (rows, -(-cols // spec.group_size))
    if g == "block":
        r, c = spec.block
        return (-(-rows // r), -(-cols // c))
    raise OracleError(f"unknown granularity {g!r}")


def _group_reduce(x2d: np.ndarray, spec: Spec, shape, fill: float, op) -> np.ndarray:
    """op (np.min / np.max) over every scale group of the [rows, cols] view, where `x2d` has
    its non-participating elements already replaced by `fill`. Returns the scale-shaped array."""
    rows, cols = x2d.shape
    g = spec.granularity
    if g in ("none", "tensor"):
        return np.array([op(x2d) if x2d.size else fill], dtype=F32)
    if x2d.size == 0:
        return np.full(scale_shape(spec, shape), fill, dtype=F32)
    if g == "token":
        if cols == 0:
            return np.full((rows, 1), fill, dtype=F32)
        return op(x2d, axis=1).reshape(rows, 1).astype(F32)
    if g == "channel":
        full = x2d.reshape(shape)
        axis = spec.axis % len(shape)
        moved = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
        out = (op(moved, axis=1) if moved.shape[1] else np.full(shape[axis], fill)).astype(F32)
        return out.reshape(scale_shape(spec, shape))
    if g == "group":
        gs = spec.group_size
        ngroups = -(-cols // gs)
        padded = np.full((rows, ngroups * gs), fill, dtype=F32)
        padded[:, :cols] = x2d
        return op(padded.reshape(rows, ngroups, gs), axis=2).astype(F32)
    if g == "block":
        br, bc = spec.block
        nr, nc = -(-rows // br), -(-cols // bc)
        padded = np.full((nr * br, nc * bc), fill, dtype=F32)
        padded[:rows, :cols] = x2d
        return op(padded.reshape(nr, br, nc, bc), axis=(1, 3)).astype(F32)
    raise OracleError(f"unknown granularity {g!r}")


def expand(scales: np.ndarray, spec: Spec, shape) -> np.ndarray:
    """Per-element [rows, cols] array of the scale-shaped `scales`."""
    rows, cols = view_2d(shape)
    g = spec.granularity
    if g in ("none", "tensor"):
        return np.broadcast_to(scales.reshape(()), (rows, cols))
    if rows * cols == 0:
        return np.zeros((rows, cols), dtype=scales.dtype)
    if g == "token":
        return np.broadcast_to(scales.reshape(rows, 1), (rows, cols))
    if g == "channel":
        return np.broadcast_to(scales.reshape(scale_shape(spec, shape)), shape).reshape(rows, cols)
    if g == "group":
        gs = spec.group_size
        return np.repeat(scales.reshape(rows, -1), gs, axis=1)[:, :cols]
    if g == "block":
        br, bc = spec.block
        s2 = scales.reshape(-(-rows // br), -(-cols // bc))
        return np.repeat(np.repeat(s2, br, axis=0)[:rows], bc, axis=1)[:, :cols]
    raise OracleError(f"unknown granularity {g!r}")


# ---------------------------------------------------------------------------------------------
# Spec checks (the subset of refusals the tests exercise through the oracle).

def check_spec(spec: Spec, shape) -> None:
    info = spec.info
    g = spec.granularity
    if g not in GRANULARITIES:
        raise OracleError(f"unknown granularity {g}")
    if g == "none" and info.kind != "float":
        raise OracleError("granularity none is for minifloat formats")
    if g == "channel":
        if len(shape) == 0 or not -len(shape) <= spec.axis < len(shape):
            raise OracleError("axis out of range")
    if g == "group" and spec.group_size <= 0:
        raise OracleError("group_size must be > 0")
    if g == "block" and (spec.block[0] <= 0 or spec.block[1] <= 0):
        raise OracleError("block must be > 0")
    if spec.asymmetric and not info.asymmetric_ok:
        raise OracleError(f"{info.name} is symmetric only")
    if spec.overflow == "nonfinite" and info.kind != "float":
        raise OracleError(f"{info.name} has no Inf or NaN")
    if spec.nan_policy == "propagate" and info.kind != "float":
        raise OracleError(f"{info.name} has no NaN")
    if spec.packing == "int32_offset" and info.name != "int4":
        raise OracleError("int32_offset packing is for int4")
    c = F32(spec.clip_ratio)
    if not (c > 0 and c <= 1):
        raise OracleError("clip_ratio must be in (0, 1]")


def nan_policy(spec: Spec) -> str:
    if spec.nan_policy:
        return spec.nan_policy
    return "propagate" if spec.info.kind == "float" else "reject"


# ---------------------------------------------------------------------------------------------
# Quantize / dequantize.

def to_f32(x: np.ndarray) -> np.ndarray:
    """The float32 value of every input element (exact for f32, f16 and bf16)."""
    x = np.asarray(x)
    if x.dtype == np.dtype("V2"):
        x = x.view(ml_dtypes.bfloat16)
    return x.astype(F32)


def scales_from_range(lo: np.ndarray, hi: np.ndarray, spec: Spec, clip) -> tuple:
    """FORMATS.md scales (and zero-points) of groups whose finite elements span [lo, hi]
    (lo > hi: no finite element, an all-zero group), after multiplying the range by `clip`."""
    info = spec.info
    lo = np.asarray(lo, dtype=F32)
    hi = np.asarray(hi, dtype=F32)
    empty = ~(lo <= hi)
    lo = np.where(empty, F32(0), lo).astype(F32)
    hi = np.where(empty, F32(0), hi).astype(F32)
    c = F32(clip)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if not spec.asymmetric:
            amax = (np.maximum(hi, -lo) * c).astype(F32)
            s = (amax / info.divisor).astype(F32)
            s = np.where(s == 0, F32(1), s).astype(F32)
            return s, None
        mx = (np.maximum(hi, F32(0)) * c).astype(F32)
        mn = (np.minimum(lo, F32(0)) * c).astype(F32)
        rng = (mx - mn).astype(F32)
        if not np.all(np.isfinite(rng)):
            raise OracleError("asymmetric range overflows float32")
        s = (rng / F32(info.qmax - info.qmin)).astype(F32)
        s = np.where(s == 0, F32(1), s).astype(F32)
        shifted = (F32(info.qmin) - (mn / s).astype(F32)).astype(F32)
        zp = np.clip(np.rint(shifted.astype(np.float64)), info.qmin, info.qmax).astype(np.int32)
        return s, zp


def group_min_max(x2d: np.ndarray, spec: Spec, shape) -> tuple:
    """Per scale group: min and max over the finite elements (+inf / -inf when none)."""
    finite = np.isfinite(x2d)
    lo = _group_reduce(np.where(finite, x2d, F32(np.inf)), spec, shape, np.inf, np.min)
    hi = _group_reduce(np.where(finite, x2d, F32(-np.inf)), spec, shape, -np.inf, np.max)
    return lo, hi


def compute_scales(x2d: np.ndarray, spec: Spec, shape):
    """FORMATS.md scales (and zero-points) from the data: (scales, zero_points or None)."""
    lo, hi = group_min_max(x2d, spec, shape)
    return scales_from_range(lo, hi, spec, spec.clip_ratio)


def pack(raw: np.ndarray, spec: Spec, shape) -> np.ndarray:
    """Codes as quantctl writes them, from per-element codes on the [rows, cols] view."""
    info = spec.info
    rows, cols = raw.shape
    if info.bits == 8:
        if info.name == "int8":
            return raw.astype(np.int8).reshape(shape)
        return (raw & 0xFF).astype(np.uint8).reshape(shape)
    nibbles = (raw & 0xF).astype(np.uint8)
    lead = tuple(shape[:-1]) if len(shape) else ()
    if spec.packing == "int32_offset":
        words = -(-cols // 8)
        padded = np.zeros((rows, words * 8), dtype=np.uint32)
        padded[:, :cols] = nibbles ^ 0x8  # q + 8 for q in [-8, 7]; padding stays 0
        shifts = (np.arange(8, dtype=np.uint32) * 4)
        packed = np.bitwise_or.reduce(padded.reshape(rows, words, 8) << shifts, axis=2)
        return packed.astype(np.uint32).view(np.int32).reshape(lead + (words,))
    nbytes = -(-cols // 2)
    padded = np.zeros((rows, nbytes * 2), dtype=np.uint8)
    padded[:, :cols] = nibbles
    packed = padded[:, 0::2] | (padded[:, 1::2] << 4)  # element 0 in the low nibble
    return packed.astype(np.uint8).reshape(lead + (nbytes,))


def unpack(codes: np.ndarray, spec: Spec, shape) -> np.ndarray:
    """Inverse of pack: per-element codes (int64, sign-extended for signed ints), [rows, cols]."""
    info = spec.info
    rows, cols = view_2d(shape)
    if info.bits == 8:
        flat = np.asarray(codes).reshape(rows, cols)
        if info.name == "int8":
            return flat.astype(np.int8).astype(np.int64)
        return flat.astype(np.uint8).astype(np.int64)
    if spec.packing == "int32_offset":
        words = np.asarray(codes).astype(np.int32).view(np.uint32).reshape(rows, -1)
        shifts = np.arange(8, dtype=np.uint32) * 4
        nib = ((words[:, :, None] >> shifts) & 0xF).reshape(rows, -1)[:, :cols].astype(np.int64)
        nib ^= 0x8
    else:
        b = np.asarray(codes).astype(np.uint8).reshape(rows, -1)
        nib = np.stack([b & 0xF, b >> 4], axis=-1).reshape(rows, -1)[:, :cols].astype(np.int64)
    if info.qmin < 0:
        nib = np.where(nib >= 8, nib - 16, nib)
    return nib


def quantize(x: np.ndarray, spec: Spec) -> Result:
    if not spec.info.symmetric_ok and not spec.asymmetric:
        # uint8 / uint4 are asymmetric only: the spec implies it (proto3 cannot tell an unset
        # bool from false).
        spec = dataclasses.replace(spec, asymmetric=True)
    x = np.asarray(x)
    shape = tuple(int(d) for d in x.shape)
    check_spec(spec, shape)
    info = spec.info
    rows, cols = view_2d(shape)
    x2d = to_f32(x).reshape(rows, cols)
    policy = nan_policy(spec)
    nan = np.isnan(x2d)
    if policy == "reject" and nan.any():
        raise OracleError(f"input element {int(np.flatnonzero(nan.ravel())[0])} is NaN")

    sshape = scale_shape(spec, shape)
    if spec.granularity == "none":
        scales, zps = np.ones(1, dtype=F32), None
    elif spec.static_scales is not None:
        scales = np.asarray(spec.static_scales, dtype=F32).reshape(sshape)
        if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise OracleError("static scales must be finite and > 0")
        zps = None
        if spec.asymmetric:
            if spec.static_zero_points is None:
                raise OracleError("asymmetric static quantization needs zero-points")
            zps = np.asarray(spec.static_zero_points, dtype=np.int32).reshape(sshape)
    else:
        scales, zps = compute_scales(x2d, spec, shape)
    s_el = expand(scales, spec, shape).astype(F32)
    zp_el = (expand(zps, spec, shape).astype(np.int64) if zps is not None
             else np.zeros((rows, cols), dtype=np.int64))

    xq = x2d
    if nan.any() and (policy == "zero" or info.kind == "int"):
        xq = np.where(nan, F32(0), x2d)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        v = (xq / s_el).astype(F32)  # true float32 division
    uniform = None
    if spec.rounding == "stochastic":
        uniform = stochastic_uniform(spec.seed, np.arange(rows * cols, dtype=np.uint64)).reshape(
            rows, cols)

    if info.kind == "int":
        mag = np.minimum(np.abs(v.astype(np.float64)), 2.0 ** 20)
        r = round_magnitude(mag, spec.rounding, uniform).astype(np.int64)
        q = np.where(v < 0, -r, r) + zp_el
        raw = np.clip(q, info.qmin, info.qmax).astype(np.int64)
    else:
        if spec.rounding == "rne":
            raw = minifloat_encode_rne_ml_dtypes(v, info, spec.overflow).astype(np.int64)
        else:
            raw = minifloat_encode(v, info, spec.rounding, spec.overflow, uniform).astype(np.int64)
        # A NaN input keeps the sign of x itself (v = x / s with s > 0 in any case).
        if nan.any() and policy != "zero":
            sign = (x2d.view(np.uint32) >> np.uint32(31)).astype(np.int64) << 7
            raw = np.where(nan, sign | info.nan_code, raw)
    codes = pack(raw, spec, shape)
    return Result(spec=spec, shape=shape, codes=codes, raw_codes=raw,
                  scales=np.asarray(scales, dtype=F32).reshape(sshape),
                  zero_points=None if zps is None else zps.reshape(sshape),
                  scale_per_element=s_el, zp_per_element=zp_el)


def dequantize_codes(raw: np.ndarray, s_el: np.ndarray, zp_el: np.ndarray, spec: Spec,
                     shape) -> np.ndarray:
    info = spec.info
    if info.kind == "int":
        value = (raw - zp_el).astype(F32)  # exact integer
    else:
        value = minifloat_decode((raw & 0xFF).astype(np.uint8), info)
    with np.errstate(over="ignore", invalid="ignore"):
        return (s_el.astype(F32) * value).astype(F32).reshape(shape)


def dequantize(result: Result) -> np.ndarray:
    return dequantize_codes(result.raw_codes, result.scale_per_element, result.zp_per_element,
                            result.spec, result.shape)


def dequantize_stored(codes, scales, zero_points, spec: Spec, shape) -> np.ndarray:
    """x̂ from stored (packed) codes, scales and zero-points: the Dequantize RPC's job."""
    shape = tuple(int(d) for d in shape)
    rows, cols = view_2d(shape)
    raw = unpack(codes, spec, shape)
    s_el = expand(np.asarray(scales, dtype=F32), spec, shape).astype(F32)
    zp_el = (expand(np.asarray(zero_points), spec, shape).astype(np.int64)
             if spec.asymmetric else np.zeros((rows, cols), dtype=np.int64))
    return dequantize_codes(raw, s_el, zp_el, spec, shape)


def cast_output(x_hat: np.ndarray, dtype: str) -> np.ndarray:
    """x̂ as the requested output dtype (round-half-to-even from float32)."""
    if dtype == "f32":
        return x_hat.astype(F32)
    if dtype == "f16":
        with np.errstate(over="ignore"):
            return x_hat.astype(np.float16)
    if dtype == "bf16":
        return x_hat.astype(ml_dtypes.bfloat16)
    raise OracleError(dtype)


# ---------------------------------------------------------------------------------------------
# FP4 blocks: E2M1 elements packed two to a byte (NVFP4 here; MXFP4 in compress_util).

def e2m1(v: np.ndarray) -> tuple:
    """Round-half-to-even, saturating E2M1 of float32 v: (4-bit codes, their values). ml_dtypes
    rounds; the clip comes first because its cast overflows to NaN."""
    clipped = np.clip(np.asarray(v, dtype=F32), F32(-6), F32(6)).astype(F32)
    fp4 = clipped.astype(ml_dtypes.float4_e2m1fn)
    return (fp4.view(np.uint8) & 0xF).astype(np.uint8), fp4.astype(F32)


def pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """[rows, cols] 4-bit codes -> [rows, ceil(cols / 2)] bytes, element 0 in the low nibble
    (FORMATS.md's bit stream, compressed-tensors' pack_fp4_to_uint8); an odd row pads with 0."""
    rows, cols = nibbles.shape
    padded = np.zeros((rows, cols + cols % 2), np.uint8)
    padded[:, :cols] = nibbles
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def nvfp4_global_scale(amax) -> np.float32:
    """S_enc = fp32(2688 / amax): 1 for amax 0, FLT_MAX when the quotient overflows."""
    amax = F32(amax)
    if amax == 0:
        return F32(1)
    with np.errstate(over="ignore"):
        s_enc = F32(F32(2688) / amax)
    return F32(np.finfo(F32).max) if np.isinf(s_enc) else s_enc


def nvfp4(x: np.ndarray, s_enc=None) -> tuple:
    """FORMATS.md NVFP4 of a finite [rows, cols] array (a ragged last block is fine):
    S_enc = nvfp4_global_scale(amax) unless a static `s_enc` is given,
    s_b = e4m3(fp32(amax_b · fp32(S_enc / 6))) (RNE, saturating), d_b = fp32(decode(s_b) / S_enc),
    element = e2m1(x / d_b) (0 when d_b is 0). Returns (packed codes, E4M3 scale codes as
    uint8, S_enc, x̂)."""
    x = to_f32(x)
    rows, cols = x.shape
    blocks = -(-cols // 16)
    padded = np.zeros((rows, blocks * 16), F32)
    padded[:, :cols] = x
    finite = np.where(np.isfinite(padded), np.abs(padded), F32(0))
    s_enc = nvfp4_global_scale(finite.max()) if s_enc is None else F32(s_enc)
    block_amax = finite.reshape(rows, blocks, 16).max(axis=2).astype(F32)
    with np.errstate(over="ignore"):
        product = (block_amax * F32(s_enc / F32(6))).astype(F32)
    s_b = np.minimum(product, F32(448)).astype(ml_dtypes.float8_e4m3fn)
    d_b = (s_b.astype(F32) / s_enc).astype(F32)
    d = np.repeat(d_b, 16, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes, values = e2m1(np.where(d == 0, F32(0), padded / np.where(d == 0, F32(1), d)))
    codes = np.where(d == 0, 0, codes).astype(np.uint8)[:, :cols]
    x_hat = (np.where(d == 0, F32(0), values) * d).astype(F32)[:, :cols]
    return pack_nibbles(codes), s_b.view(np.uint8), s_enc, x_hat


# ---------------------------------------------------------------------------------------------
# Error metrics (FORMATS.md "Error metrics"), over the finite elements of x, in float64.

def metrics(x: np.ndarray, x_hat: np.ndarray) -> dict:
    x = to_f32(x).ravel()
    y = np.asarray(x_hat, dtype=F32).ravel()
    finite = np.isfinite(x)
    xd = x[finite].astype(np.float64)
    yd = y[finite].astype(np.float64)
    n = int(xd.size)
    out = {"count": n, "nonfinite_count": int(x.size - n)}
    if n == 0:
        out.update(mse=0.0, rmse=0.0, max_abs_err=0.0, sqnr_db=math.inf, cosine=1.0,
                   rel_fro_err=0.0)
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        d = xd - yd
        sum_x2 = float(np.sum(xd * xd))
        sum_y2 = float(np.sum(yd * yd))
        sum_xy = float(np.sum(xd * yd))
        sum_e2 = float(np.sum(d * d))
        abs_d = np.abs(d)
    out["mse"] = sum_e2 / n
    out["rmse"] = float(np.sqrt(np.float64(out["mse"])))
    out["max_abs_err"] = math.nan if np.isnan(abs_d).any() else float(abs_d.max())
    if sum_e2 == 0:
        out["sqnr_db"], out["rel_fro_err"] = math.inf, 0.0
    elif sum_x2 == 0:
        out["sqnr_db"], out["rel_fro_err"] = -math.inf, math.inf
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # C's log10(0) = -inf
            out["sqnr_db"] = float(10 * np.log10(np.float64(sum_x2) / np.float64(sum_e2)))
            out["rel_fro_err"] = float(np.sqrt(np.float64(sum_e2) / np.float64(sum_x2)))
    if sum_x2 == 0 and sum_y2 == 0:
        out["cosine"] = 1.0
    elif sum_x2 == 0 or sum_y2 == 0:
        out["cosine"] = 0.0
    else:
        out["cosine"] = sum_xy / (math.sqrt(sum_x2) * math.sqrt(sum_y2))
    return out


# ---------------------------------------------------------------------------------------------
# Calibration (docs/FORMATS.md "Readings quantd chose": percentile and MSE).

def group_values(x: np.ndarray, spec: Spec) -> list:
    """The finite elements of every scale group, in flat order within the group."""
    shape = tuple(int(d) for d in np.asarray(x).shape)
    rows, cols = view_2d(shape)
    x2d = to_f32(x).reshape(rows, cols)
    sshape = scale_shape(spec, shape)
    ids = expand(np.arange(int(np.prod(sshape)), dtype=np.int64).reshape(sshape), spec, shape)
    finite = np.isfinite(x2d)
    flat_ids = ids[finite]
    flat_values = x2d[finite]
    return [flat_values[flat_ids == g] for g in range(int(np.prod(sshape)))]


def _quantize_values(values: np.ndarray, s, zp, spec: Spec) -> np.ndarray:
    """x̂ of finite `values` under one scale (and zero-point), round-half-to-even."""
    info = spec.info
    v = (values.astype(F32) / F32(s)).astype(F32)
    if info.kind == "int":
        r = np.rint(np.minimum(np.abs(v.astype(np.float64)), 2.0 ** 20)).astype(np.int64)
        q = np.clip(np.where(v < 0, -r, r) + int(zp), info.qmin, info.qmax)
        return (F32(s) * (q - int(zp)).astype(F32)).astype(F32)
    codes = minifloat_encode_rne_ml_dtypes(v, info, spec.overflow)
    with np.errstate(over="ignore", invalid="ignore"):
        return (F32(s) * minifloat_decode(codes, info)).astype(F32)


def calibrate(x: np.ndarray, spec: Spec, method: str = "amax", percentile: float = 99.99,
              search_steps: int = 100, search_min_ratio: float = 0.8) -> dict:
    """scales, zero_points (asymmetric), amax and clip_ratios as quantd's Calibrate returns
    them. percentile: numpy's default (linear) percentile of |x| (of x at p and 100 - p when
    asymmetric), fp64, rounded to fp32. mse: clip ratios fp32(1 - i·(1 - min)/(steps - 1)),
    each scored by the sequential fp64 sum of (x - x̂)² under round-half-to-even; the first
    minimum wins."""
    if not spec.info.symmetric_ok and not spec.asymmetric:
        spec = dataclasses.replace(spec, asymmetric=True)
    shape = tuple(int(d) for d in np.asarray(x).shape)
    rows, cols = view_2d(shape)
    x2d = to_f32(x).reshape(rows, cols)
    sshape = scale_shape(spec, shape)
    lo, hi = group_min_max(x2d, spec, shape)
    lo, hi = lo.ravel(), hi.ravel()
    n = lo.size
    amax = np.where(lo <= hi, np.maximum(hi, -lo), F32(0)).astype(F32)
    clip_ratios = np.full(n, F32(spec.clip_ratio), dtype=F32)
    if method == "amax":
        s, zp = scales_from_range(lo, hi, spec, spec.clip_ratio)
    elif method == "percentile":
        groups = group_values(x, spec)
        plo = np.zeros(n, F32)
        phi = np.zeros(n, F32)
        for g, values in enumerate(groups):
            if values.size == 0:
                continue
            if spec.asymmetric:
                a = F32(np.percentile(values.astype(np.float64), percentile))
                b = F32(np.percentile(values.astype(np.float64), 100.0 - percentile))
            else:
                a = F32(np.percentile(np.abs(values).astype(np.float64), percentile))
                b = -a
            plo[g], phi[g] = min(a, b), max(a, b)
        s, zp = scales_from_range(plo, phi, spec, spec.clip_ratio)
    elif method == "mse":
        m = float(F32(search_min_ratio))
        grid = [F32(1.0)] + [F32(1.0 - i * (1.0 - m) / (search_steps - 1))
                             for i in range(1, search_steps)]
        groups = group_values(x, spec)
        s = np.ones(n, F32)
        zp = np.zeros(n, np.int32) if spec.asymmetric else None
        for g, values in enumerate(groups):
            best = math.inf
            for ratio in grid:
                sg, zg = scales_from_range(lo[g:g + 1], hi[g:g + 1], spec, ratio)
                x_hat = _quantize_values(values, sg[0], 0 if zg is None else zg[0], spec)
                d = values.astype(np.float64) - x_hat.astype(np.float64)
                error = float(np.cumsum(d * d)[-1]) if d.size else 0.0  # sequential sum
                if error < best:
                    best = error
                    s[g] = sg[0]
                    if zp is not None:
                        zp[g] = zg[0]
                    clip_ratios[g] = ratio
    else:
        raise OracleError(f"unknown calibration method {method!r}")
    return {"scales": np.asarray(s, F32).reshape(sshape),
            "zero_points": None if zp is None else np.asarray(zp, np.int32).reshape(sshape),
            "amax": amax.reshape(sshape), "clip_ratios": clip_ratios.reshape(sshape),
            "spec": dataclasses.replace(spec, static_scales=np.asarray(s, F32).reshape(sshape),
                                        static_zero_points=None if zp is None else
                                        np.asarray(zp, np.int32).reshape(sshape))}
