"""Thousands of malformed and adversarial requests on every RPC of a real quantd, sent with
grpcio: random and mutated bytes as bodies, structurally valid protos with hostile fields, and
streaming abuse. Each must get a clean refusal (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...);
never UNAVAILABLE, INTERNAL, UNKNOWN, a hang or a dead server. Valid requests are interleaved
and must keep returning the oracle's answer; at the end the server is healthy, holds no stream
buffers, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import os
import random
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import e2e_util
import oracle

grpc = pytest.importorskip("grpc")

F32 = np.float32
SERVICE = "/quantd.v1.Quantizer/"
UNARY = ["Quantize", "Dequantize", "QuantDequant", "Calibrate", "GetCapabilities", "Echo"]
STREAMS = ["QuantizeStream", "DequantizeStream"]
TIMEOUT = 60  # seconds per call: a hang is a failure, not a wait
SC = grpc.StatusCode
# A hostile request that parsed must get one of these.
REFUSALS = {SC.INVALID_ARGUMENT, SC.RESOURCE_EXHAUSTED, SC.FAILED_PRECONDITION, SC.OUT_OF_RANGE}
# Bytes that may not parse: gRPC C++ answers an unparsable unary request with UNIMPLEMENTED
# (empty details) itself, before quantd sees it; bytes that happen to parse may even be valid.
BYTE_FUZZ_OK = REFUSALS | {SC.OK, SC.UNIMPLEMENTED}


class Tally:
    """Counts every request by (category, method, code) and collects the violations."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.violations = []

    def record(self, category, method, code, allowed, detail=""):
        with self.lock:
            self.counts[(category, method, code)] += 1
            if code not in allowed:
                self.violations.append(f"{category} {method}: {code} {detail[:300]}")

    def total(self):
        return sum(self.counts.values())

    def assert_clean(self):
        assert not self.violations, (
            f"{len(self.violations)} of {self.total()} requests got a wrong answer:\n" +
            "\n".join(self.violations[:40]))


TALLY = Tally()


@pytest.fixture(scope="module")
def fuzz_server(quantd, tmp_path_factory):
    srv = e2e_util.QuantdServer(tmp_path_factory.mktemp("quantd-fuzz"), ["--workers=2"]).start()
    yield srv
    srv.kill()  # only when a test failed before test_zz_server_survived stopped it


@pytest.fixture(scope="module")
def channel(fuzz_server):
    ch = e2e_util.grpc_channel(fuzz_server.address)
    yield ch
    ch.close()


def unary_raw(channel, method, body: bytes):
    """(code, details, reply bytes)."""
    call = channel.unary_unary(SERVICE + method)
    try:
        return SC.OK, "", call(body, timeout=TIMEOUT)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None


def stream_raw(channel, method, frames):
    """frames: bytes. Returns (code, details, list of reply frames)."""
    call = channel.stream_stream(SERVICE + method)
    try:
        replies = list(call(iter(frames), timeout=TIMEOUT))
        return SC.OK, "", replies
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None


# ---------------------------------------------------------------------------------------------
# Valid bases: (oracle spec, shape, input dtype)

BASES = [
    (oracle.Spec("int8", "token"), (4, 16), "f32"),
    (oracle.Spec("int4", "group", group_size=8, asymmetric=True), (3, 20), "f16"),
    (oracle.Spec("uint8", "channel", axis=1, asymmetric=True), (2, 3, 5), "bf16"),
    (oracle.Spec("fp8-e4m3", "none"), (33,), "f32"),
    (oracle.Spec("fp8-e5m2", "block", block=(2, 4)), (5, 6), "f32"),
    (oracle.Spec("uint4", "tensor", asymmetric=True), (7, 3), "f32"),
]
FORMAT_ENUM = {"int8": 1, "int4": 2, "uint8": 3, "uint4": 4, "fp8-e4m3": 5, "fp8-e5m2": 6}
GRAN_ENUM = {"none": 1, "tensor": 2, "channel": 3, "token": 4, "group": 5, "block": 6}
DTYPE_ENUM = {"f32": 1, "f16": 2, "bf16": 3}


def make_x(shape, dtype, rng):
    x = (rng.standard_normal(shape) * 2).astype(F32)
    if dtype == "f16":
        return x.astype(np.float16)
    if dtype == "bf16":
        return x.astype(ml_dtypes.bfloat16)
    return x


def tensor(pb, x):
    return pb.Tensor(dtype=DTYPE_ENUM[{"float32": "f32", "float16": "f16",
                                       "bfloat16": "bf16"}[str(x.dtype)]],
                     shape=list(x.shape), data=np.ascontiguousarray(x).tobytes())


def spec_proto(pb, spec: oracle.Spec):
    p = pb.QuantSpec(format=FORMAT_ENUM[spec.format], granularity=GRAN_ENUM[spec.granularity],
                     asymmetric=spec.asymmetric)
    if spec.granularity == "channel":
        p.axis = spec.axis
    if spec.granularity == "group":
        p.group_size = spec.group_size
    if spec.granularity == "block":
        p.block_rows, p.block_cols = spec.block
    return p


class Base:
    def __init__(self, pb, index, rng):
        self.spec, self.shape, self.dtype = BASES[index]
        self.x = make_x(self.shape, self.dtype, rng)
        self.result = oracle.quantize(self.x, self.spec)
        self.num_scales = int(np.prod(self.result.scales.shape))
        self.input = tensor(pb, self.x)
        self.spec_pb = spec_proto(pb, self.spec)
        info = self.spec.info
        r = self.result
        code_dtype = 5 if self.spec.format == "int8" else 4  # I8 / U8
        q = pb.QuantizedTensor(spec=self.spec_pb, shape=list(self.shape),
                               source_dtype=DTYPE_ENUM[self.dtype],
                               codes=pb.Tensor(dtype=code_dtype, shape=list(r.codes.shape),
                                               data=r.codes.tobytes()),
                               scales=pb.Tensor(dtype=1, shape=list(r.scales.shape),
                                                data=r.scales.tobytes()))
        if self.spec.asymmetric:
            q.zero_points.CopyFrom(pb.Tensor(dtype=6, shape=list(r.scales.shape),
                                             data=r.zero_points.astype("<i4").tobytes()))
        self.quantized = q
        self.is_int = info.kind == "int"


# ---------------------------------------------------------------------------------------------
# Hostile mutations. Each takes (pb, request, base, rng), makes the request invalid for that
# base and returns True, or returns False when it does not apply to the base.

def _set_shape(req, shape):
    del req.input.shape[:]
    req.input.shape.extend(shape)
    return True


def _static(pb, req, base, values):
    req.spec.static_scales.CopyFrom(pb.Tensor(dtype=1, shape=[len(values)],
                                              data=np.asarray(values, "<f4").tobytes()))
    if base.spec.asymmetric:
        req.spec.static_zero_points.CopyFrom(
            pb.Tensor(dtype=6, shape=[len(values)], data=np.zeros(len(values), "<i4").tobytes()))
    return True


def _nan_input(pb, req, base, rng):
    x = base.x.astype(F32).copy()
    x.ravel()[rng.integers(x.size)] = np.nan
    req.input.CopyFrom(tensor(pb, x))
    if not base.is_int:
        req.spec.nan_policy = 1  # REJECT
    return True


def _range_overflow(pb, req, base, rng):
    if not base.spec.asymmetric or base.spec.granularity not in ("tensor",):
        return False
    x = base.x.astype(F32).copy()
    x.ravel()[0], x.ravel()[-1] = 3e38, -3e38
    req.input.CopyFrom(tensor(pb, x))
    return True


def _other_format_descriptor(pb, req, base, rng):
    others = [n for n in oracle.FORMATS if n != base.spec.format]
    req.spec.descriptor_string = others[rng.integers(len(others))]
    return True


def _sym_violation(pb, req, base, rng):
    if base.is_int:
        return False  # uint8 / uint4 without the flag imply asymmetric; "uint8-sym" is refused
    req.spec.asymmetric = True
    return True


INPUT_MUTATIONS = {
    "shape_2^62x4": lambda pb, r, b, g: _set_shape(r, [2 ** 62, 4]),
    "shape_negative": lambda pb, r, b, g: _set_shape(r, [-1, 4]),
    "shape_int64_min": lambda pb, r, b, g: _set_shape(r, [-(2 ** 63)]),
    "shape_product_overflow": lambda pb, r, b, g: _set_shape(r, [2 ** 31, 2 ** 31, 4]),
    "shape_product_overflow2": lambda pb, r, b, g: _set_shape(r, [2 ** 62, 2 ** 62, 0, 7][:3]),
    "rank_100": lambda pb, r, b, g: _set_shape(r, [1] * 100),
    "rank_17": lambda pb, r, b, g: _set_shape(r, [1] * 16 + [len(r.input.data) // 4 or 1]),
    "data_plus_1": lambda pb, r, b, g: setattr(r.input, "data", r.input.data + b"\0") or True,
    "data_minus_1": lambda pb, r, b, g: setattr(r.input, "data", r.input.data[:-1]) or True,
    "data_empty": lambda pb, r, b, g: setattr(r.input, "data", b"") or True,
    "data_doubled": lambda pb, r, b, g: setattr(r.input, "data", r.input.data * 2) or True,
    "dtype_unspecified": lambda pb, r, b, g: setattr(r.input, "dtype", 0) or True,
    "dtype_99": lambda pb, r, b, g: setattr(r.input, "dtype", 99) or True,
    "dtype_negative": lambda pb, r, b, g: setattr(r.input, "dtype", -7) or True,
    "dtype_u8": lambda pb, r, b, g: setattr(r.input, "dtype", 4) or True,
    "dtype_i8": lambda pb, r, b, g: setattr(r.input, "dtype", 5) or True,
    "dtype_i32": lambda pb, r, b, g: setattr(r.input, "dtype", 6) or True,
    "dtype_size_flip": lambda pb, r, b, g: setattr(r.input, "dtype", 2 if r.input.dtype == 1
                                                   else 1) or True,
    "shape_2^40": lambda pb, r, b, g: _set_shape(r, [2 ** 40]),
    "shape_32GiB": lambda pb, r, b, g: _set_shape(r, [2 ** 33]),
    "shape_mismatch": lambda pb, r, b, g: _set_shape(r, [r.input.shape[0] + 1] +
                                                     list(r.input.shape[1:])),
    "shape_scalar": lambda pb, r, b, g: _set_shape(r, []),
    "shape_zero_dim_with_data": lambda pb, r, b, g: _set_shape(r, [0] + list(r.input.shape)),
    "nan_rejected": _nan_input,
    "asym_range_overflow": _range_overflow,
}


def _clip(value):
    def mutate(pb, r, b, g):
        r.spec.clip_ratio = value
        return True
    return mutate


def _field(name, value, when=None):
    def mutate(pb, r, b, g):
        if when is not None and not when(b):
            return False
        setattr(r.spec, name, value)
        return True
    return mutate


def _granularity(gran, **fields):
    def mutate(pb, r, b, g):
        r.spec.granularity = gran
        r.spec.axis = r.spec.group_size = r.spec.block_rows = r.spec.block_cols = 0
        for k, v in fields.items():
            setattr(r.spec, k, v)
        return True
    return mutate


def _descriptor(text):
    def mutate(pb, r, b, g):
        r.spec.format = 0
        r.spec.granularity = 0
        r.spec.axis = r.spec.group_size = r.spec.block_rows = r.spec.block_cols = 0
        r.spec.asymmetric = False
        r.spec.descriptor_string = text
        return True
    return mutate


def _static_values(kind):
    def mutate(pb, r, b, g):
        n = b.num_scales
        values = np.ones(n, F32)
        if kind == "nan":
            values[g.integers(n)] = np.nan
        elif kind == "zero":
            values[g.integers(n)] = 0
        elif kind == "negative":
            values[g.integers(n)] = -1
        elif kind == "inf":
            values[g.integers(n)] = np.inf
        elif kind == "fewer":
            values = values[:-1] if n > 1 else np.ones(2, F32)
        elif kind == "more":
            values = np.ones(n + 1, F32)
        elif kind == "with_clip":
            r.spec.clip_ratio = 0.5
        _static(pb, r, b, values)
        if kind == "with_clip" and b.spec.granularity == "none":
            return True  # static scales with granularity none are refused anyway
        if kind == "dtype_f16":
            r.spec.static_scales.dtype = 2
        elif kind == "dtype_99":
            r.spec.static_scales.dtype = 99
        elif kind == "data_short":
            r.spec.static_scales.data = r.spec.static_scales.data[:-2]
        elif kind == "zp_out_of_range":
            if not b.spec.asymmetric:
                return False
            r.spec.static_zero_points.data = np.full(n, 9999, "<i4").tobytes()
        elif kind == "zp_missing":
            if not b.spec.asymmetric:
                return False
            r.spec.ClearField("static_zero_points")
        elif kind == "zp_on_symmetric":
            if b.spec.asymmetric:
                return False
            r.spec.static_zero_points.CopyFrom(
                pb.Tensor(dtype=6, shape=[n], data=np.zeros(n, "<i4").tobytes()))
        elif kind == "zp_dtype_f32":
            if not b.spec.asymmetric:
                return False
            r.spec.static_zero_points.dtype = 1
        elif kind == "none_granularity":
            if b.spec.granularity != "none":
                return False
        return True
    return mutate


SPEC_MUTATIONS = {
    "format_99": _field("format", 99),
    "format_negative": _field("format", -1),
    "format_int32_max": _field("format", 2 ** 31 - 1),
    "format_missing": lambda pb, r, b, g: (r.spec.ClearField("format") or True),
    "descriptor_10k": _descriptor("x" * 10000),
    "descriptor_10k_int8": _descriptor("int8-" + "g" * 10000),
    "descriptor_int3": _descriptor("int3"),
    "descriptor_g0": _descriptor("int8-g0"),
    "descriptor_b0x4": _descriptor("int8-b0x4"),
    "descriptor_gabc": _descriptor("int8-gabc"),
    "descriptor_asym_twice": _descriptor("int8-asym-asym"),
    "descriptor_fp8_asym": _descriptor("fp8-e4m3-asym"),
    "descriptor_two_granularities": _descriptor("int8-token-g16"),
    "descriptor_huge_group": _descriptor("int8-g99999999999999999999999"),
    "descriptor_unicode": _descriptor("int8-\u221e"),
    "descriptor_nul": _descriptor("int8\x00"),
    "descriptor_uint8_sym": _descriptor("uint8-sym"),
    "descriptor_contradicts_format": _other_format_descriptor,
    "granularity_99": _field("granularity", 99),
    "granularity_negative": _field("granularity", -3),
    "granularity_none_for_int": _field("granularity", 1, when=lambda b: b.is_int),
    "channel_axis_1000": _granularity(3, axis=1000),
    "channel_axis_minus_1000": _granularity(3, axis=-1000),
    "channel_axis_int32_min": _granularity(3, axis=-(2 ** 31)),
    "axis_with_tensor": _granularity(2, axis=1),
    "group_size_0": _granularity(5, group_size=0),
    "group_size_negative": _granularity(5, group_size=-1),
    "group_size_int64_min": _granularity(5, group_size=-(2 ** 63)),
    "group_size_with_token": _granularity(4, group_size=8),
    "block_0x5": _granularity(6, block_rows=0, block_cols=5),
    "block_negative": _granularity(6, block_rows=-1, block_cols=-1),
    "block_4x0": _granularity(6, block_rows=4, block_cols=0),
    "block_with_tensor": _granularity(2, block_rows=4, block_cols=4),
    "symmetry_not_allowed": _sym_violation,
    "rounding_99": _field("rounding", 99),
    "rounding_negative": _field("rounding", -2),
    "overflow_99": _field("overflow", 99),
    "overflow_nonfinite_int": _field("overflow", 2, when=lambda b: b.is_int),
    "nan_policy_99": _field("nan_policy", 99),
    "nan_policy_propagate_int": _field("nan_policy", 3, when=lambda b: b.is_int),
    "packing_99": _field("packing", 99),
    "packing_int32_offset_not_int4": _field("packing", 2, when=lambda b: b.spec.format != "int4"),
    "clip_nan": _clip(float("nan")),
    "clip_inf": _clip(float("inf")),
    "clip_negative": _clip(-1.0),
    "clip_above_1": _clip(float(np.nextafter(F32(1), F32(2)))),
    "clip_2": _clip(2.0),
    "static_nan": _static_values("nan"),
    "static_zero": _static_values("zero"),
    "static_negative": _static_values("negative"),
    "static_inf": _static_values("inf"),
    "static_fewer": _static_values("fewer"),
    "static_more": _static_values("more"),
    "static_with_clip": _static_values("with_clip"),
    "static_dtype_f16": _static_values("dtype_f16"),
    "static_dtype_99": _static_values("dtype_99"),
    "static_data_short": _static_values("data_short"),
    "static_zp_out_of_range": _static_values("zp_out_of_range"),
    "static_zp_missing": _static_values("zp_missing"),
    "static_zp_on_symmetric": _static_values("zp_on_symmetric"),
    "static_zp_dtype_f32": _static_values("zp_dtype_f32"),
    "static_with_none": _static_values("none_granularity"),
}

QDQ_MUTATIONS = {f"output_dtype_{v}": (lambda v: lambda pb, r, b, g: setattr(
    r, "output_dtype", v) or True)(v) for v in (99, -1, 4, 5, 6)}


def _cal(name, value):
    def mutate(pb, r, b, g):
        setattr(r, name, value)
        return True
    return mutate


CALIBRATE_MUTATIONS = {
    "method_99": _cal("method", 99),
    "method_negative": _cal("method", -1),
    "percentile_negative": _cal("percentile", -1.0),
    "percentile_101": _cal("percentile", 101.0),
    "percentile_nan": _cal("percentile", float("nan")),
    "percentile_inf": _cal("percentile", float("inf")),
    "search_steps_negative": _cal("search_steps", -1),
    "search_steps_million": _cal("search_steps", 10 ** 6),
    "search_steps_int32_max": _cal("search_steps", 2 ** 31 - 1),
    "search_min_ratio_negative": _cal("search_min_ratio", -0.5),
    "search_min_ratio_1.5": _cal("search_min_ratio", 1.5),
    "search_min_ratio_nan": _cal("search_min_ratio", float("nan")),
    "static_scales_given": lambda pb, r, b, g: (
        b.spec.granularity != "none" and _static(pb, r, b, np.ones(b.num_scales, F32))),
}


def float_request(pb, method, base):
    if method == "Quantize":
        return pb.QuantizeRequest(input=base.input, spec=base.spec_pb)
    if method == "QuantDequant":
        return pb.QuantDequantRequest(input=base.input, spec=base.spec_pb)
    return pb.CalibrateRequest(input=base.input, spec=base.spec_pb)


RESPONSE_TYPES = {"Quantize": "QuantizeResponse", "Dequantize": "DequantizeResponse",
                  "QuantDequant": "QuantDequantResponse", "Calibrate": "CalibrateResponse",
                  "GetCapabilities": "GetCapabilitiesResponse"}


# Dequantize: mutations of a valid QuantizedTensor.

def _dq(fn):
    def mutate(pb, r, b, g):
        result = fn(r.quantized, b, g)
        return True if result is None else result
    return mutate


def _shape_of(t, shape):
    del t.shape[:]
    t.shape.extend(shape)


def _flip_code_dtype(q, b, g):
    q.codes.dtype = 4 if q.codes.dtype == 5 else 5


def _scale_at(value):
    def f(q, b, g):
        s = np.frombuffer(q.scales.data, "<f4").copy()
        s[g.integers(s.size)] = value
        q.scales.data = s.tobytes()
    return f


def _zp_at(value):
    def f(q, b, g):
        if not b.spec.asymmetric:
            return False
        z = np.frombuffer(q.zero_points.data, "<i4").copy()
        z[g.integers(z.size)] = value
        q.zero_points.data = z.tobytes()
    return f


def _asym_only(fn):
    def f(q, b, g):
        if not b.spec.asymmetric:
            return False
        fn(q)
    return f


def _zp_on_symmetric(q, b, g):
    if b.spec.asymmetric:
        return False
    q.zero_points.CopyFrom(type(q.scales)(dtype=6, shape=list(q.scales.shape),
                                          data=np.zeros(b.num_scales, "<i4").tobytes()))


def _shape_bump(q, b, g):
    shape = list(q.shape)
    shape[0] += 1
    _shape_of(q, shape)


DEQUANTIZE_MUTATIONS = {
    "spec_format_99": _dq(lambda q, b, g: setattr(q.spec, "format", 99)),
    "spec_format_missing": _dq(lambda q, b, g: q.spec.ClearField("format")),
    "spec_granularity_99": _dq(lambda q, b, g: setattr(q.spec, "granularity", 99)),
    "spec_descriptor_10k": _dq(lambda q, b, g: setattr(q.spec, "descriptor_string", "y" * 10000)),
    "spec_clip_nan": _dq(lambda q, b, g: setattr(q.spec, "clip_ratio", float("nan"))),
    "spec_static_nan": _dq(lambda q, b, g: q.spec.static_scales.CopyFrom(type(q.scales)(
        dtype=1, shape=[1], data=np.array([np.nan], "<f4").tobytes()))),
    "shape_2^62x4": _dq(lambda q, b, g: _shape_of(q, [2 ** 62, 4])),
    "shape_negative": _dq(lambda q, b, g: _shape_of(q, [-1] + list(q.shape[1:]))),
    "shape_rank_100": _dq(lambda q, b, g: _shape_of(q, [1] * 100)),
    "shape_overflow": _dq(lambda q, b, g: _shape_of(q, [2 ** 32, 2 ** 32, 2])),
    "shape_bumped": _dq(_shape_bump),
    "shape_empty": _dq(lambda q, b, g: q.ClearField("shape")),
    "codes_dtype_flip": _dq(_flip_code_dtype),
    "codes_dtype_99": _dq(lambda q, b, g: setattr(q.codes, "dtype", 99)),
    "codes_dtype_f32": _dq(lambda q, b, g: setattr(q.codes, "dtype", 1)),
    "codes_plus_1": _dq(lambda q, b, g: setattr(q.codes, "data", q.codes.data + b"\0")),
    "codes_minus_1": _dq(lambda q, b, g: setattr(q.codes, "data", q.codes.data[:-1])),
    "codes_empty": _dq(lambda q, b, g: setattr(q.codes, "data", b"")),
    "codes_shape_huge": _dq(lambda q, b, g: _shape_of(q.codes, [2 ** 40, 2 ** 20])),
    "codes_shape_negative": _dq(lambda q, b, g: _shape_of(q.codes, [-4, 3])),
    "codes_shape_wrong": _dq(lambda q, b, g: _shape_of(q.codes, [len(q.codes.data) + 1])),
    "scales_nan": _dq(_scale_at(np.nan)),
    "scales_zero": _dq(_scale_at(0.0)),
    "scales_negative": _dq(_scale_at(-2.0)),
    "scales_inf": _dq(_scale_at(np.inf)),
    "scales_dtype_f16": _dq(lambda q, b, g: setattr(q.scales, "dtype", 2)),
    "scales_dtype_i32": _dq(lambda q, b, g: setattr(q.scales, "dtype", 6)),
    "scales_short": _dq(lambda q, b, g: setattr(q.scales, "data", q.scales.data[:-1])),
    "scales_missing": _dq(lambda q, b, g: q.ClearField("scales")),
    "scales_shape_wrong": _dq(lambda q, b, g: _shape_of(q.scales, [b.num_scales + 1])),
    "zp_out_of_range": _dq(_zp_at(9999)),
    "zp_negative_out_of_range": _dq(_zp_at(-9999)),
    "zp_dtype_f32": _dq(_asym_only(lambda q: setattr(q.zero_points, "dtype", 1))),
    "zp_missing": _dq(_asym_only(lambda q: q.ClearField("zero_points"))),
    "zp_short": _dq(_asym_only(lambda q: setattr(q.zero_points, "data",
                                                 q.zero_points.data[:-4]))),
    "zp_on_symmetric": _dq(_zp_on_symmetric),
    "source_dtype_u8": _dq(lambda q, b, g: setattr(q, "source_dtype", 4)),
    "source_dtype_99": _dq(lambda q, b, g: setattr(q, "source_dtype", 99)),
    "output_dtype_99": lambda pb, r, b, g: setattr(r, "output_dtype", 99) or True,
    "output_dtype_i32": lambda pb, r, b, g: setattr(r, "output_dtype", 6) or True,
}


# ---------------------------------------------------------------------------------------------
# Valid requests, checked against the oracle.

def check_valid_quantize(pb, channel, base):
    request = pb.QuantizeRequest(input=base.input, spec=base.spec_pb)
    code, details, reply = unary_raw(channel, "Quantize", request.SerializeToString())
    TALLY.record("valid", "Quantize", code, {SC.OK}, details)
    if code != SC.OK:
        return
    response = pb.QuantizeResponse.FromString(reply)
    q = response.quantized
    r = base.result
    problems = []
    if q.codes.data != r.codes.tobytes():
        problems.append("codes")
    if q.scales.data != r.scales.tobytes():
        problems.append("scales")
    if base.spec.asymmetric and q.zero_points.data != r.zero_points.astype("<i4").tobytes():
        problems.append("zero_points")
    if list(q.shape) != list(base.shape):
        problems.append("shape")
    TALLY.record("valid-result", "Quantize", "wrong" if problems else SC.OK, {SC.OK},
                 f"{base.spec} differs from the oracle in {problems}")


def check_valid_dequantize(pb, channel, base):
    request = pb.DequantizeRequest(quantized=base.quantized)
    code, details, reply = unary_raw(channel, "Dequantize", request.SerializeToString())
    TALLY.record("valid", "Dequantize", code, {SC.OK}, details)
    if code == SC.OK:
        out = np.frombuffer(pb.DequantizeResponse.FromString(reply).output.data, "<f4")
        want = oracle.dequantize(base.result).ravel()
        same = np.array_equal(out.view(np.uint32), want.view(np.uint32)) or np.array_equal(
            out, want, equal_nan=True)
        TALLY.record("valid-result", "Dequantize", SC.OK if same else "wrong", {SC.OK},
                     f"{base.spec}")


@pytest.fixture(scope="module")
def bases(pb):
    rng = np.random.default_rng(2024)
    return [Base(pb, i, rng) for i in range(len(BASES))]


def run_batch(channel, pb, bases, jobs, workers=8):
    """jobs: (category, method, body bytes, allowed codes). Runs them on a thread pool and a
    valid request after every 50."""
    def one(job):
        category, method, body, allowed = job
        code, details, _ = unary_raw(channel, method, body)
        TALLY.record(category, method, code, allowed, details)

    for start in range(0, len(jobs), 50):
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, jobs[start:start + 50]))
        base = bases[(start // 50) % len(bases)]
        check_valid_quantize(pb, channel, base)
        if (start // 50) % 3 == 0:
            check_valid_dequantize(pb, channel, base)


# ---------------------------------------------------------------------------------------------
# The tests (they share one server and run in this order).

def test_valid_bases_are_accepted(pb, channel, bases):
    for base in bases:
        check_valid_quantize(pb, channel, base)
        check_valid_dequantize(pb, channel, base)
        for method in ["QuantDequant", "Calibrate"]:
            if method == "Calibrate" and base.spec.granularity == "none":
                continue  # a plain cast has no scale to calibrate
            code, details, _ = unary_raw(channel, method,
                                         float_request(pb, method, base).SerializeToString())
            TALLY.record("valid", method, code, {SC.OK}, details)
    TALLY.assert_clean()


def test_random_and_mutated_bytes_on_every_rpc(pb, channel, bases):
    rng = random.Random(1)
    seeds = [float_request(pb, "Quantize", b).SerializeToString() for b in bases]
    dq_seeds = [pb.DequantizeRequest(quantized=b.quantized).SerializeToString() for b in bases]

    def body(method):
        kind = rng.randrange(5)
        if kind == 0:
            return os.urandom(rng.randrange(0, 300))
        if kind == 1:  # something that looks like a message: a length-delimited field
            payload = os.urandom(rng.randrange(0, 100))
            return bytes([rng.choice([0x0A, 0x12, 0x1A, 0x22])]) + bytes([len(payload)]) + payload
        seed = bytearray(rng.choice(dq_seeds if method.startswith("Dequantize") else seeds))
        if kind == 2:  # bit flips
            for _ in range(rng.randrange(1, 6)):
                seed[rng.randrange(len(seed))] ^= 1 << rng.randrange(8)
            return bytes(seed)
        if kind == 3:  # truncation
            return bytes(seed[: rng.randrange(len(seed))])
        # splice: duplicate or drop a random span
        a, b = sorted(rng.randrange(len(seed)) for _ in range(2))
        return bytes(seed[:a] + seed[a:b] * rng.randrange(0, 3) + seed[b:])

    jobs = []
    for method in UNARY:
        for _ in range(220):
            jobs.append(("bytes", method, body(method), BYTE_FUZZ_OK))
    run_batch(channel, pb, bases, jobs)

    # Streams of random / mutated frames.
    for method in STREAMS:
        for _ in range(60):
            frames = [body(method) for _ in range(rng.randrange(0, 4))]
            code, details, _ = stream_raw(channel, method, frames)
            TALLY.record("bytes-stream", method, code, BYTE_FUZZ_OK, details)
    TALLY.assert_clean()


def test_hostile_fields_on_unary_rpcs(pb, channel, bases):
    rng = np.random.default_rng(7)
    jobs = []
    applied = collections.Counter()
    for method in ["Quantize", "QuantDequant", "Calibrate"]:
        mutations = dict(INPUT_MUTATIONS, **SPEC_MUTATIONS)
        if method == "QuantDequant":
            mutations.update(QDQ_MUTATIONS)
        if method == "Calibrate":
            mutations.update(CALIBRATE_MUTATIONS)
        for name, mutate in mutations.items():
            for base in bases:
                request = float_request(pb, method, base)
                if not mutate(pb, request, base, rng):
                    continue
                if method != "Calibrate":
                    request.skip_metrics = bool(rng.integers(2))
                applied[name] += 1
                jobs.append((f"hostile:{name}", method, request.SerializeToString(), REFUSALS))
    for name, mutate in DEQUANTIZE_MUTATIONS.items():
        for base in bases:
            request = pb.DequantizeRequest(quantized=copy.deepcopy(base.quantized))
            if mutate(pb, request, base, rng):
                applied[name] += 1
                jobs.append((f"hostile:{name}", "Dequantize", request.SerializeToString(),
                             REFUSALS))
    # Each mutation applies to at least one base.
    unused = [n for n in list(INPUT_MUTATIONS) + list(SPEC_MUTATIONS) +
              list(DEQUANTIZE_MUTATIONS) if applied[n] == 0]
    assert not unused, unused
    random.Random(3).shuffle(jobs)
    run_batch(channel, pb, bases, jobs)
    # GetCapabilities takes no fields: unknown ones must be ignored.
    for _ in range(30):
        code, details, _ = unary_raw(channel, "GetCapabilities",
                                     b"\x08\x01\x12\x03abc" + os.urandom(0))
        TALLY.record("caps-unknown-fields", "GetCapabilities", code, {SC.OK}, details)
    # Echo: answers no message could carry (2**31 is above any --max-message-bytes).
    for response_bytes in [-1, -(2**63), 2**63 - 1, 2**31]:
        body = pb.EchoRequest(payload=b"x" * 100, response_bytes=response_bytes)
        code, details, _ = unary_raw(channel, "Echo", body.SerializeToString())
        TALLY.record("echo-response-bytes", "Echo", code, {SC.INVALID_ARGUMENT}, details)
    TALLY.assert_clean()


def _quantize_frames(pb, base, header_data=b"", frames=()):
    header = pb.QuantizeRequest(input=base.input, spec=base.spec_pb)
    header.input.data = header_data
    out = [pb.QuantizeStreamRequest(header=header).SerializeToString()]
    out += [pb.QuantizeStreamRequest(data=f).SerializeToString() for f in frames]
    return out


def _dequantize_frames(pb, base, parts, header_mutation=None):
    q = copy.deepcopy(base.quantized)
    q.codes.data = b""
    q.scales.data = b""
    q.zero_points.data = b""
    request = pb.DequantizeRequest(quantized=q)
    if header_mutation:
        header_mutation(request)
    out = [pb.DequantizeStreamRequest(header=request).SerializeToString()]
    out += [pb.DequantizeStreamRequest(data=pb.DataChunk(part=p, data=d)).SerializeToString()
            for p, d in parts]
    return out


# A frame after the declared bytes were complete: quantd refuses it when it reads the frame
# before it finishes the call, but may already have answered (correctly, from exactly the
# declared bytes); either is a clean outcome.
LATE_FRAME_CASES = {"extra_frame_after_complete", "extra_empty_frame_after_complete",
                    "complete_header_plus_frame"}


def test_streaming_abuse(pb, channel, bases, fuzz_server):
    rng = np.random.default_rng(11)
    for base in bases:
        data = base.input.data
        half = len(data) // 2
        big = pb.QuantizeRequest(input=pb.Tensor(dtype=1, shape=[2 ** 28, 4]),
                                 spec=pb.QuantSpec(format=1))
        huge = pb.QuantizeRequest(input=pb.Tensor(dtype=1, shape=[2 ** 33]),
                                  spec=pb.QuantSpec(format=1))
        overflow = pb.QuantizeRequest(input=pb.Tensor(dtype=1, shape=[2 ** 62, 4]),
                                      spec=pb.QuantSpec(format=1))
        cases = {
            "no_frames": [],
            "data_first": [pb.QuantizeStreamRequest(data=data).SerializeToString()],
            "empty_first_frame": [b""],
            "two_headers": _quantize_frames(pb, base) + _quantize_frames(pb, base),
            "header_then_second_header_after_data":
                _quantize_frames(pb, base, frames=[data[:half]]) + _quantize_frames(pb, base),
            "extra_frame_after_complete": _quantize_frames(pb, base, frames=[data, b"x"]),
            "extra_empty_frame_after_complete": _quantize_frames(pb, base, frames=[data, b""]),
            "frame_exceeds_declared": _quantize_frames(pb, base, frames=[data + b"xyz"]),
            "early_half_close": _quantize_frames(pb, base, frames=[data[:half]]),
            "empty_data_then_close": _quantize_frames(pb, base, frames=[b""]),
            "complete_header_plus_frame": _quantize_frames(pb, base, header_data=data,
                                                           frames=[b"1"]),
            "header_data_exceeds_declared": _quantize_frames(pb, base, header_data=data + b"!"),
            "declares_4GiB_sends_nothing": [
                pb.QuantizeStreamRequest(header=big).SerializeToString()],
            "declares_4GiB_sends_a_little": [
                pb.QuantizeStreamRequest(header=big).SerializeToString(),
                pb.QuantizeStreamRequest(data=os.urandom(4096)).SerializeToString()],
            "declares_32GiB": [pb.QuantizeStreamRequest(header=huge).SerializeToString()],
            "declares_overflow": [pb.QuantizeStreamRequest(header=overflow).SerializeToString()],
            "header_frame_unset_then_data": [
                pb.QuantizeStreamRequest().SerializeToString(),
                pb.QuantizeStreamRequest(data=data).SerializeToString()],
        }
        for name, frames in cases.items():
            code, details, _ = stream_raw(channel, "QuantizeStream", frames)
            TALLY.record(f"stream:{name}", "QuantizeStream", code,
                         REFUSALS | {SC.OK} if name in LATE_FRAME_CASES else REFUSALS, details)
        # Hostile headers: every spec mutation as a stream header.
        for name, mutate in list(SPEC_MUTATIONS.items()) + list(INPUT_MUTATIONS.items()):
            if name == "shape_zero_dim_with_data":
                continue  # an empty tensor is complete at its header: the data is a late frame
            request = pb.QuantizeRequest(input=base.input, spec=base.spec_pb)
            if not mutate(pb, request, base, rng):
                continue
            payload = request.input.data
            request.input.data = b""
            frames = [pb.QuantizeStreamRequest(header=request).SerializeToString()]
            if payload:
                frames.append(pb.QuantizeStreamRequest(data=payload).SerializeToString())
            code, details, _ = stream_raw(channel, "QuantizeStream", frames)
            TALLY.record(f"stream-header:{name}", "QuantizeStream", code, REFUSALS, details)
        # A valid stream still works, in uneven pieces.
        cut = sorted(rng.integers(0, len(data), 3))
        pieces = [data[a:b] for a, b in zip([0] + list(cut), list(cut) + [len(data)]) if b > a]
        code, details, replies = stream_raw(channel, "QuantizeStream",
                                            _quantize_frames(pb, base, frames=pieces))
        TALLY.record("stream-valid", "QuantizeStream", code, {SC.OK}, details)
        if code == SC.OK:
            frames = [pb.QuantizeStreamResponse.FromString(r) for r in replies]
            codes = b"".join(f.data.data for f in frames[1:] if f.data.part == 1)
            scales = b"".join(f.data.data for f in frames[1:] if f.data.part == 2)
            ok = frames[0].HasField("header") and codes == base.result.codes.tobytes() and \
                scales == base.result.scales.tobytes()
            TALLY.record("stream-valid-result", "QuantizeStream", SC.OK if ok else "wrong",
                         {SC.OK}, str(base.spec))

        # DequantizeStream.
        q = base.quantized
        parts = [(1, q.codes.data), (2, q.scales.data)]
        if base.spec.asymmetric:
            parts.append((3, q.zero_points.data))
        nan_scales = np.frombuffer(q.scales.data, "<f4").copy()
        nan_scales[0] = np.nan
        dcases = {
            "no_frames": [],
            "data_first": [pb.DequantizeStreamRequest(data=pb.DataChunk(
                part=1, data=q.codes.data)).SerializeToString()],
            "empty_first_frame": [b""],
            "two_headers": _dequantize_frames(pb, base, []) * 2,
            "part_unspecified": _dequantize_frames(pb, base, [(0, q.codes.data)] + parts[1:]),
            "part_99": _dequantize_frames(pb, base, [(99, b"abc")] + parts),
            "zero_points_for_symmetric": (_dequantize_frames(pb, base, [(3, b"\0" * 4)] + parts)
                                          if not base.spec.asymmetric else
                                          _dequantize_frames(pb, base, [(3, b"\0" * 5)] + parts)),
            "more_codes_than_declared": _dequantize_frames(pb, base, [(1, q.codes.data + b"z")]
                                                           + parts[1:]),
            "early_half_close": _dequantize_frames(pb, base, parts[:1]),
            "extra_frame_after_complete": _dequantize_frames(pb, base, parts + [(1, b"q")]),
            "nan_scale_streamed": _dequantize_frames(pb, base, [parts[0], (2, nan_scales.tobytes())]
                                                     + parts[2:]),
            "parts_reordered_then_short": _dequantize_frames(pb, base, parts[::-1][:-1]),
            "hostile_header_shape": _dequantize_frames(
                pb, base, parts, lambda r: _shape_of(r.quantized, [2 ** 62, 2 ** 2])),
            "hostile_header_format": _dequantize_frames(
                pb, base, parts, lambda r: setattr(r.quantized.spec, "format", 77)),
            "unset_frame_after_header": _dequantize_frames(pb, base, []) + [
                pb.DequantizeStreamRequest().SerializeToString()],
        }
        for name, frames in dcases.items():
            code, details, _ = stream_raw(channel, "DequantizeStream", frames)
            TALLY.record(f"dstream:{name}", "DequantizeStream", code,
                         REFUSALS | {SC.OK} if name in LATE_FRAME_CASES else REFUSALS, details)
        # Parts in any order are fine.
        code, details, replies = stream_raw(channel, "DequantizeStream",
                                            _dequantize_frames(pb, base, parts[::-1]))
        TALLY.record("dstream-valid", "DequantizeStream", code, {SC.OK}, details)
        if code == SC.OK:
            frames = [pb.DequantizeStreamResponse.FromString(r) for r in replies]
            got = np.frombuffer(b"".join(f.data for f in frames[1:]), "<f4")
            want = oracle.dequantize(base.result).ravel()
            TALLY.record("dstream-valid-result", "DequantizeStream",
                         SC.OK if np.array_equal(got, want, equal_nan=True) else "wrong", {SC.OK},
                         str(base.spec))
        check_valid_quantize(pb, channel, base)
    TALLY.assert_clean()


class _Held:
    """A request iterator that sends `frames` and then blocks until released."""

    def __init__(self, frames):
        self.frames = list(frames)
        self.release = threading.Event()

    def __iter__(self):
        yield from self.frames
        self.release.wait(TIMEOUT)


def _buffered_bytes(server):
    samples = e2e_util.metric_samples(server.scrape())
    return sum(v for _, v in samples.get("quantd_inflight_bytes", []))


def test_cancel_mid_stream_and_budget_exhaustion(pb, channel, bases, fuzz_server):
    rng = random.Random(5)
    # Cancel streams at random points: header only, part of the data, or after all of it.
    for i in range(40):
        base = bases[i % len(bases)]
        data = base.input.data
        frames = _quantize_frames(pb, base, frames=[data[: rng.randrange(len(data))]])
        if i % 3 == 0:
            frames = frames[:1]
        held = _Held(frames)
        call = channel.stream_stream(SERVICE + "QuantizeStream")(iter(held), timeout=TIMEOUT)
        time.sleep(rng.random() * 0.01)
        call.cancel()
        held.release.set()
        try:
            list(call)
            code = SC.OK
        except grpc.RpcError as err:
            code = err.code()
        TALLY.record("cancel-mid-stream", "QuantizeStream", code, {SC.CANCELLED})
    for i in range(10):
        base = bases[i % len(bases)]
        q = base.quantized
        held = _Held(_dequantize_frames(pb, base, [(1, q.codes.data[: len(q.codes.data) // 2])]))
        call = channel.stream_stream(SERVICE + "DequantizeStream")(iter(held), timeout=TIMEOUT)
        time.sleep(0.002 * i)
        call.cancel()
        held.release.set()
        try:
            list(call)
            code = SC.OK
        except grpc.RpcError as err:
            code = err.code()
        TALLY.record("cancel-mid-stream", "DequantizeStream", code, {SC.CANCELLED})

    # Streams that declare 3.5 GiB each (+0.875 GiB of int8 codes) and send nothing hold their
    # reservation: with --max-inflight-bytes 20 GiB four fit and the fifth is refused with
    # RESOURCE_EXHAUSTED, without the server allocating what they declared.
    big = pb.QuantizeRequest(input=pb.Tensor(dtype=1, shape=[2 ** 27, 7]),
                             spec=pb.QuantSpec(format=1))
    per_stream = 2 ** 27 * 7 * 5
    frame = pb.QuantizeStreamRequest(header=big).SerializeToString()
    held_calls = []
    try:
        for i in range(4):
            held = _Held([frame])
            call = channel.stream_stream(SERVICE + "QuantizeStream")(iter(held), timeout=TIMEOUT)
            held_calls.append((held, call))
            deadline = time.monotonic() + 20
            while _buffered_bytes(fuzz_server) < (i + 1) * per_stream and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            assert _buffered_bytes(fuzz_server) >= (i + 1) * per_stream, \
                f"stream {i} never reserved its bytes"
        code, details, _ = stream_raw(channel, "QuantizeStream", [frame])
        TALLY.record("budget-exhausted", "QuantizeStream", code, {SC.RESOURCE_EXHAUSTED}, details)
        # Small streams and unary calls still work meanwhile.
        check_valid_quantize(pb, channel, bases[0])
        rss_kib = int([line for line in open(f"/proc/{fuzz_server.proc.pid}/status")
                       if line.startswith("VmRSS")][0].split()[1])
        assert rss_kib < 2 * 2 ** 20, f"quantd holds {rss_kib} KiB for streams that sent nothing"
    finally:
        for held, call in held_calls:
            call.cancel()
            held.release.set()
    deadline = time.monotonic() + 20
    while _buffered_bytes(fuzz_server) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _buffered_bytes(fuzz_server) == 0, "cancelled streams kept their reservations"
    TALLY.assert_clean()


def test_zz_server_survived(pb, channel, bases, fuzz_server):
    """Runs last: health, a valid request, no leaked buffers, ≥ 3000 requests, exit 0."""
    assert fuzz_server.alive(), fuzz_server.log()
    assert e2e_util.health_check(channel) == 1
    assert e2e_util.run_quantctl(["health"], server=fuzz_server.address).returncode == 0
    for base in bases:
        check_valid_quantize(pb, channel, base)
        check_valid_dequantize(pb, channel, base)
    TALLY.assert_clean()
    samples = e2e_util.metric_samples(fuzz_server.scrape())
    assert sum(v for _, v in samples["quantd_requests_in_flight"]) == 0
    assert sum(v for _, v in samples["quantd_inflight_bytes"]) == 0
    assert sum(v for _, v in samples["quantd_queue_depth"]) == 0
    codes = collections.Counter()
    for labels, value in samples["quantd_requests_total"]:
        codes[labels["code"]] += value
    assert codes["INVALID_ARGUMENT"] >= 2000, codes
    for bad in ["INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS"]:
        assert codes[bad] == 0, codes
    by_category = collections.Counter()
    for (category, method, code), n in TALLY.counts.items():
        by_category[category.split(":")[0]] += n
    print(f"\nfuzz: {TALLY.total()} requests: {dict(by_category)}")
    assert TALLY.total() >= 3000, TALLY.total()
    code = fuzz_server.stop()
    assert code == 0, f"quantd exited {code} on SIGTERM:\n{fuzz_server.log()}"


# ---------------------------------------------------------------------------------------------
# Extreme sizes that pass validation: each must be answered (with sane shapes) or refused,
# quickly, and must not keep a worker busy. Its own server, since a request that spins forever
# would also stall every later test and the SIGTERM drain.

def _extreme_requests(pb):
    x = np.random.default_rng(0).standard_normal((4, 16)).astype("<f4").tobytes()
    cases = []
    for gs in [2 ** 31, 2 ** 62, 2 ** 63 - 1]:
        for fmt in [1, 2]:
            cases.append((f"group_size_{gs}_format{fmt}", (4, 16), x,
                          pb.QuantSpec(format=fmt, granularity=5, group_size=gs)))
    for br, bc in [(2 ** 63 - 1, 2 ** 63 - 1), (2 ** 62, 1), (1, 2 ** 63 - 1), (2 ** 40, 2 ** 40)]:
        cases.append((f"block_{br}x{bc}", (4, 16), x,
                      pb.QuantSpec(format=1, granularity=6, block_rows=br, block_cols=bc)))
    cases.append(("clip_1e-45", (4, 16), x, pb.QuantSpec(format=1, clip_ratio=1e-45)))
    cases.append(("block_0x0_default", (4, 16), x, pb.QuantSpec(format=5, granularity=6)))
    # Last: shapes whose row count is astronomically large although they hold no element.
    for shape in [(0,), (0, 5), (5, 0), (0, 2 ** 62), (0, 2 ** 61), (2 ** 62, 0),
                  (2 ** 40, 2 ** 20, 0)]:
        for gran in [2, 3, 4, 5, 6]:
            for fmt in [1, 2]:
                spec = pb.QuantSpec(format=fmt, granularity=gran,
                                    group_size=4 if gran == 5 else 0)
                cases.append((f"empty_{'x'.join(map(str, shape))}_g{gran}_f{fmt}", shape, b"",
                              spec))
    return cases


def test_extreme_but_valid_sizes_are_answered_or_refused(quantd, pb, tmp_path):
    srv = e2e_util.QuantdServer(tmp_path, ["--drain-timeout=5s", "--workers=2"]).start()
    problems = []
    try:
        ch = e2e_util.grpc_channel(srv.address)
        for name, shape, data, spec in _extreme_requests(pb):
            request = pb.QuantizeRequest(input=pb.Tensor(dtype=1, shape=list(shape), data=data),
                                         spec=spec)
            call = ch.unary_unary(SERVICE + "Quantize")
            try:
                reply = pb.QuantizeResponse.FromString(
                    call(request.SerializeToString(), timeout=10))
            except grpc.RpcError as err:
                if err.code() not in REFUSALS:
                    problems.append(f"{name}: {err.code()} {err.details()}")
                if err.code() == SC.DEADLINE_EXCEEDED:
                    problems.append("(stopped here: the workers are stuck; later requests would "
                                    "only queue behind them)")
                    break
                continue
            q = reply.quantized
            for part, size in [(q.codes, 1 if q.codes.dtype in (4, 5) else 4), (q.scales, 4)]:
                dims = list(part.shape)
                if any(d < 0 for d in dims) or len(part.data) != size * int(np.prod(dims)):
                    problems.append(f"{name}: OK with a malformed tensor: shape {dims}, "
                                    f"{len(part.data)} bytes")
        in_flight = None
        for _ in range(100):
            samples = e2e_util.metric_samples(srv.scrape())
            in_flight = sum(v for _, v in samples["quantd_requests_in_flight"])
            if in_flight == 0:
                break
            time.sleep(0.1)
        if in_flight:
            problems.append(f"{in_flight} requests still in flight (computing) after their "
                            f"deadlines")
        ch.close()
        assert srv.alive(), srv.log()
        srv.proc.send_signal(__import__("signal").SIGTERM)
        try:
            code = srv.proc.wait(timeout=30)
            if code != 0:
                problems.append(f"quantd exited {code} on SIGTERM")
        except Exception:
            problems.append("quantd did not exit within 30 s of SIGTERM (--drain-timeout=5s)")
    finally:
        srv.kill()
    assert not problems, "\n".join(problems)
