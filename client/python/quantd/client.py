"""quantd.Client: the Python client of the quantd service (proto/quantd/v1/quantd.proto).

    import quantd
    c = quantd.Client("localhost:50051")
    q = c.quantize(x, format="int8", granularity="token")    # x: numpy array or torch tensor
    q.codes, q.scales, q.zero_points, q.metrics["sqnr_db"]
    x_hat = q.dequantize()                                    # numpy in -> numpy out, torch -> torch

It mirrors the C++ client (client/client.cc): one GetCapabilities call tells it the server's
message limit, and a request or response that would not fit one message (less a 64 KiB margin)
goes through QuantizeStream / DequantizeStream / RegisterWeightStream in frames instead,
transparently. Spec keyword
arguments are quantctl's flags (see _spec.build_spec), so the same arguments send the same
request. Failed calls raise quantd.QuantdError subclasses (quantd.InvalidArgument, ...) with the
server's message. A Client is thread-safe; close() it (or use `with`) to release the channel.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import grpc
import numpy as np
from google.protobuf import json_format

from . import _spec, _tensors
from .errors import (FailedPrecondition, Internal, InvalidArgument, QuantdError, Unavailable,
                     from_rpc_error)
from .v1 import quantd_pb2 as pb
from .v1 import quantd_pb2_grpc as pb_grpc

__all__ = ["Client", "QuantizedTensor", "Calibration", "Capabilities", "FormatInfo",
           "DEFAULT_TARGET"]

DEFAULT_TARGET = "localhost:50051"
# What gRPC accepts when a server does not say (client.cc kDefaultMessageLimit).
_DEFAULT_MESSAGE_LIMIT = 4 << 20
# A request or response within this many bytes of the server's limit is streamed: room for the
# fields around the payload (client.h kMessageMarginBytes).
MESSAGE_MARGIN_BYTES = 64 << 10
# Bytes a message adds around a bulk field (tags, lengths of the nested messages), generously.
_FRAMING_BYTES = 64

_PARTS = (pb.PART_CODES, pb.PART_SCALES, pb.PART_ZERO_POINTS)
_METRIC_FIELDS = ("mse", "rmse", "max_abs_err", "sqnr_db", "cosine", "rel_fro_err", "count",
                  "nonfinite_count")


def _metrics(response: Any) -> Optional[Dict[str, float]]:
    """The response's ErrorMetrics as a dict (quantctl's JSON keys), None when absent."""
    if not response.HasField("metrics"):
        return None
    m = response.metrics
    return {name: (int(getattr(m, name)) if name.endswith("count") else float(getattr(m, name)))
            for name in _METRIC_FIELDS}


def _part_fields(q: "pb.QuantizedTensor") -> Dict[int, Any]:
    """The Tensor field of a QuantizedTensor message that each PART (DataChunk.part) fills."""
    return {pb.PART_CODES: q.codes, pb.PART_SCALES: q.scales, pb.PART_ZERO_POINTS: q.zero_points}


def _read_file_or_bytes(value: Any) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(os.fspath(value), "rb") as f:
        return f.read()


def channel_target(target: str) -> str:
    """The gRPC target for `target`, as client.cc ChannelTarget: URIs and single addresses pass
    through; "host:port,host:port" becomes an ipv4:/ipv6: address list (resolved here) that
    the round_robin policy spreads calls over."""
    if "://" in target or target.startswith(("ipv4:", "ipv6:", "unix:")):
        return target
    addresses = [a.strip() for a in target.split(",") if a.strip()]
    if len(addresses) == 1:
        return addresses[0]
    v4, v6 = set(), set()
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not port:
            raise InvalidArgument(f'server address "{address}" needs the form HOST:PORT')
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise Unavailable(f'cannot resolve server "{address}": {e}') from e
        for family, _, _, _, sockaddr in found:
            if family == socket.AF_INET:
                v4.add(f"{sockaddr[0]}:{port}")
            elif family == socket.AF_INET6:
                v6.add(f"[{sockaddr[0]}]:{port}")
    # One channel speaks one address family; IPv4 wins when a list has both.
    if v4:
        return "ipv4:" + ",".join(sorted(v4))
    if v6:
        return "ipv6:" + ",".join(sorted(v6))
    raise Unavailable(f"no address found for servers {target}")


class QuantizedTensor:
    """A quantized tensor: everything Dequantize needs, as arrays of the input's kind (numpy, or
    torch on the input's device).

    codes        int8 (INT8), uint8 (packed sub-byte and minifloat codes), int32 (INT32_OFFSET)
    scales       float32 shaped per FORMATS.md, or uint8 codes (E8M0 for MX, E4M3 for NVFP4)
    zero_points  int32, same shape as scales; asymmetric only, else None
    global_scale NVFP4's per-tensor S_enc, else 0.0
    double_quant_scales, double_quant_offset  NF4 with double_quant, else None / 0.0
    shape        the original tensor's shape; source_dtype "F32" | "F16" | "BF16"
    spec         the QuantSpec as the server applied it (defaults filled in)
    metrics      dict of mse, rmse, max_abs_err, sqnr_db, cosine, rel_fro_err, count,
                 nonfinite_count; None when skipped
    backend      "cpu" or "cuda" (the server's)

    save(path) writes the .npz `quantctl quantize` writes, and QuantizedTensor.load reads
    either's, so files move between the CLI and Python.
    """

    def __init__(self, codes: Any, scales: Any, zero_points: Any = None, *,
                 shape: Sequence[int], spec: "pb.QuantSpec", source_dtype: str = "F32",
                 global_scale: float = 0.0, double_quant_scales: Any = None,
                 double_quant_offset: float = 0.0, metrics: Optional[dict] = None,
                 backend: Optional[str] = None, client: Optional["Client"] = None):
        self.codes = codes
        self.scales = scales
        self.zero_points = zero_points
        self.shape = tuple(int(d) for d in shape)
        self.spec = spec
        self.source_dtype = source_dtype
        self.global_scale = float(global_scale)
        self.double_quant_scales = double_quant_scales
        self.double_quant_offset = float(double_quant_offset)
        self.metrics = metrics
        self.backend = backend
        self._client = client

    @property
    def format(self) -> str:
        """The format's name: "int8", "fp8-e4m3", "mxfp4", "nvfp4", ... (the spec's
        descriptor when it still carries one)."""
        return _format_name(self.spec)

    def dequantize(self, dtype: Any = None, *, client: Optional["Client"] = None) -> Any:
        """x̂ through the server that quantized this tensor (or `client`); dtype: "f32"
        (default), "f16", "bf16" or the numpy / torch dtype."""
        client = client or self._client
        if client is None:
            raise FailedPrecondition("this QuantizedTensor has no client (it was loaded or built "
                                     "by hand); call client.dequantize(q) or "
                                     "q.dequantize(client=...)")
        return client.dequantize(self, dtype=dtype)

    # -- the wire form ----------------------------------------------------------------------
    def _origin(self) -> _tensors.Origin:
        return _tensors.Origin.of(self.codes)

    def _bulk(self) -> Tuple["pb.QuantizedTensor", Dict[int, bytes]]:
        """The message without its bulk bytes, and the bytes of codes / scales / zero-points."""
        msg = pb.QuantizedTensor(spec=self.spec, shape=list(self.shape),
                                 source_dtype=_tensors.float_dtype(self.source_dtype),
                                 global_scale=self.global_scale,
                                 double_quant_offset=self.double_quant_offset)
        parts = {}
        arrays = ((pb.PART_CODES, self.codes, "codes", (pb.DTYPE_I8, pb.DTYPE_U8, pb.DTYPE_I32)),
                  (pb.PART_SCALES, self.scales, "scales", (pb.DTYPE_F32, pb.DTYPE_U8)),
                  (pb.PART_ZERO_POINTS, self.zero_points, "zero_points", (pb.DTYPE_I32,)))
        fields = _part_fields(msg)
        for part, value, what, allowed in arrays:
            if value is None:
                continue
            a, dtype = _tensors.code_array(value, allowed, what)
            fields[part].CopyFrom(_tensors.wire_tensor(a, dtype, with_data=False))
            parts[part] = a.tobytes()
        if self.double_quant_scales is not None:
            a, dtype = _tensors.code_array(self.double_quant_scales, (pb.DTYPE_F32,),
                                           "double_quant_scales")
            msg.double_quant_scales.CopyFrom(_tensors.wire_tensor(a, dtype))
        return msg, parts

    def to_proto(self) -> "pb.QuantizedTensor":
        """The quantd.v1.QuantizedTensor message (bulk bytes included)."""
        msg, parts = self._bulk()
        for part, field in _part_fields(msg).items():
            if part in parts:
                field.data = parts[part]
        return msg

    @classmethod
    def from_proto(cls, msg: "pb.QuantizedTensor", *, client: Optional["Client"] = None,
                   like: Any = None, parts: Optional[Dict[int, Any]] = None,
                   metrics: Optional[dict] = None, backend: Optional[str] = None
                   ) -> "QuantizedTensor":
        """From a QuantizedTensor message; arrays are numpy, or torch on `like`'s device when
        `like` is a torch tensor. `parts` overrides the message's bulk bytes (streamed)."""
        origin = _tensors.Origin.of(like)
        parts = parts or {}

        def array(part, tensor):
            data = parts.get(part, tensor.data)
            return origin.array(tensor.dtype, tensor.shape, data)

        zero_points = None
        if msg.spec.asymmetric and msg.zero_points.dtype != pb.DTYPE_UNSPECIFIED:
            zero_points = array(pb.PART_ZERO_POINTS, msg.zero_points)
        dq_scales = None
        if msg.spec.double_quant and msg.double_quant_scales.dtype != pb.DTYPE_UNSPECIFIED:
            dq_scales = array(None, msg.double_quant_scales)
        spec = pb.QuantSpec()
        spec.CopyFrom(msg.spec)
        return cls(array(pb.PART_CODES, msg.codes), array(pb.PART_SCALES, msg.scales),
                   zero_points, shape=list(msg.shape), spec=spec,
                   source_dtype=_tensors.dtype_name(msg.source_dtype),
                   global_scale=msg.global_scale, double_quant_scales=dq_scales,
                   double_quant_offset=msg.double_quant_offset, metrics=metrics,
                   backend=backend, client=client)

    # -- quantctl's .npz --------------------------------------------------------------------
    def save(self, path: Any) -> None:
        """Writes the .npz `quantctl quantize` writes (codes, scales, zero_points when
        asymmetric, double_quant_scales / double_quant_offset, global_scale, shape, spec as
        JSON text, source_dtype); `quantctl dequantize` reads it."""
        arrays = {"codes": _tensors.to_numpy(_codes_view(self.codes)),
                  "scales": _tensors.to_numpy(self.scales)}
        if self.spec.asymmetric:
            arrays["zero_points"] = _tensors.to_numpy(self.zero_points)
        if self.spec.double_quant:
            arrays["double_quant_scales"] = _tensors.to_numpy(self.double_quant_scales)
            arrays["double_quant_offset"] = np.array([self.double_quant_offset], np.float32)
        if self.global_scale != 0.0:
            arrays["global_scale"] = np.array([self.global_scale], np.float32)
        arrays["shape"] = np.array(self.shape, dtype="<i8")
        arrays["spec"] = np.frombuffer(_spec_json(self.spec).encode(), np.uint8)
        arrays["source_dtype"] = np.frombuffer(self.source_dtype.encode(), np.uint8)
        with open(os.fspath(path), "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Any, *, client: Optional["Client"] = None) -> "QuantizedTensor":
        """Reads a `quantctl quantize` .npz (or one save() wrote); arrays are numpy."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            members = {name: z[name] for name in z.files}
        for name in ("codes", "scales", "shape", "spec"):
            if name not in members:
                raise InvalidArgument(f'{path} has no "{name}" array; is it a `quantctl quantize` '
                                      "output?")
        spec = json_format.Parse(members["spec"].tobytes().decode(), pb.QuantSpec(),
                                 ignore_unknown_fields=True)
        source = members.get("source_dtype")
        source_dtype = source.tobytes().decode().upper() if source is not None else "F32"
        return cls(members["codes"], members["scales"], members.get("zero_points"),
                   shape=[int(d) for d in members["shape"]], spec=spec, source_dtype=source_dtype,
                   global_scale=float(members["global_scale"][0]) if "global_scale" in members
                   else 0.0,
                   double_quant_scales=members.get("double_quant_scales"),
                   double_quant_offset=float(members["double_quant_offset"][0])
                   if "double_quant_offset" in members else 0.0,
                   client=client)

    def __repr__(self) -> str:
        codes = getattr(self.codes, "dtype", "?")
        sqnr = f", sqnr_db={self.metrics['sqnr_db']:.2f}" if self.metrics else ""
        return (f"QuantizedTensor({self.format}, shape={list(self.shape)}, codes={codes}"
                f"{list(getattr(self.codes, 'shape', []))}, "
                f"scales={list(getattr(self.scales, 'shape', []))}{sqnr})")


def _format_name(spec: "pb.QuantSpec") -> str:
    if spec.descriptor_string:
        return spec.descriptor_string
    name = pb.Format.Name(spec.format)
    return name[len("FORMAT_"):].lower().replace("_", "-") if spec.format else name


def _codes_view(codes: Any) -> Any:
    """Codes as their integer storage (a torch float8 tensor as uint8)."""
    if _tensors.is_torch(codes) and codes.dtype.is_floating_point and codes.element_size() == 1:
        return codes.view(_tensors._torch().uint8)
    return codes


def _spec_json(spec: "pb.QuantSpec") -> str:
    """The spec as quantctl writes it: proto field names, every field printed."""
    try:
        text = json_format.MessageToJson(spec, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True, indent=None)
    except TypeError:  # protobuf < 5.26 spells the option differently
        text = json_format.MessageToJson(spec, preserving_proto_field_name=True,
                                         including_default_value_fields=True, indent=None)
    return json.dumps(json.loads(text), separators=(",", ":"))


class Calibration:
    """A Calibrate answer. `spec` is the request's spec resolved with static_scales (and
    static_zero_points) filled in: pass the Calibration as `spec=` to quantize() for a static
    quantization with these scales."""

    def __init__(self, response: "pb.CalibrateResponse", like: Any = None):
        origin = _tensors.Origin.of(like)

        def array(t):
            if t.dtype == pb.DTYPE_UNSPECIFIED:
                return None
            return origin.array(t.dtype, t.shape, t.data)

        self.spec = pb.QuantSpec()
        self.spec.CopyFrom(response.spec)
        self.scales = array(response.scales)
        self.zero_points = array(response.zero_points) if response.spec.asymmetric else None
        self.amax = array(response.amax)
        self.clip_ratios = array(response.clip_ratios)
        self.metrics = _metrics(response)
        self.backend = response.backend

    def __repr__(self) -> str:
        return (f"Calibration({_format_name(self.spec)}, "
                f"scales={list(getattr(self.scales, 'shape', []))}, metrics={self.metrics})")


class FormatInfo:
    """One format of GetCapabilities: name, format (enum number), bits, element_kind,
    max_finite, granularities (names), supports_asymmetric, has_nan, has_inf, descriptors."""

    def __init__(self, info: "pb.FormatInfo"):
        self.name = info.name
        self.format = info.format
        self.bits = info.bits
        self.element_kind = info.element_kind
        self.max_finite = info.max_finite
        self.granularities = [pb.Granularity.Name(g).replace("GRANULARITY_", "").lower()
                              for g in info.granularities]
        self.supports_asymmetric = info.supports_asymmetric
        self.has_nan = info.has_nan
        self.has_inf = info.has_inf
        self.descriptors = list(info.descriptors)

    def __repr__(self) -> str:
        return f"FormatInfo({self.name}, {self.bits} bits, {self.granularities})"


class Capabilities:
    """GetCapabilities: version, formats ({name: FormatInfo}), descriptors, backends,
    active_backend, limits (dict: max_message_bytes, max_tensor_bytes, max_queue, workers,
    stream_chunk_bytes, max_rank); the message itself in `proto`."""

    def __init__(self, response: "pb.GetCapabilitiesResponse"):
        self.proto = response
        self.version = response.version
        self.formats = {f.name: FormatInfo(f) for f in response.formats}
        self.descriptors = list(response.descriptors)
        self.backends = list(response.backends)
        self.active_backend = response.active_backend
        self.limits = {field.name: int(getattr(response.limits, field.name))
                       for field in pb.Limits.DESCRIPTOR.fields}

    def __repr__(self) -> str:
        return (f"Capabilities(version={self.version!r}, backend={self.active_backend!r}, "
                f"formats={list(self.formats)})")


class Weight:
    """A weight registered on one server (Client.register_weight): handle (what gemm's `b`
    and drop_weight take), name, shape, dtype (as registered), format ("" when kept
    unquantized), spec (the resolved QuantSpec), bytes (memory it holds on the server: GPU
    memory under the CUDA backend), keep_original, backend, metrics (the weight's quantization
    error, when asked for)."""

    def __init__(self, info: "pb.WeightInfo", metrics: Optional[Dict[str, float]] = None):
        self.proto = info
        self.handle = info.handle
        self.name = info.name
        self.shape = tuple(int(d) for d in info.shape)
        self.dtype = pb.DType.Name(info.dtype).replace("DTYPE_", "").lower()
        self.format = _format_name(info.spec) if info.HasField("spec") else ""
        self.spec = info.spec
        self.bytes = int(info.bytes)
        self.keep_original = info.keep_original
        self.backend = info.backend
        self.metrics = metrics

    def __repr__(self) -> str:
        return (f"Weight({self.handle}, {self.name!r}, {list(self.shape)}, "
                f"{self.format or 'unquantized'}, {self.bytes} bytes)")


class Client:
    """A connection to quantd.

    target: "HOST:PORT", "HOST:PORT,HOST:PORT,..." (round-robin over all, as quantctl
        --server), or any gRPC target URI ("dns:///quantd.svc:50051"); default: $QUANTD_SERVER,
        else localhost:50051.
    timeout: deadline of each call in seconds (None: none; a 2 GB tensor takes a while).
    Transport security. quantd itself serves plaintext gRPC (server/main.cc has no TLS or auth
    flags); these are for a TLS-terminating / authenticating proxy in front of it (Envoy, an
    ingress, a service mesh):
        credentials: a grpc.ChannelCredentials, used as given (grpc.secure_channel);
        tls=True (or any of root_certificates / private_key / certificate_chain, bytes or a
        file path): grpc.ssl_channel_credentials from them;
        token: sent as "authorization: Bearer <token>" metadata on every call;
        metadata: more (key, value) pairs sent on every call.
    options: extra gRPC channel arguments [(name, value)]; compression: a grpc.Compression.
    channel: an existing grpc.Channel to use instead of making one (target then only names it).
    chunk_bytes: payload bytes per stream frame (default 4 MiB, as quantctl --chunk-bytes).
    unary_limit_bytes: requests / responses above this many bytes are streamed; 0 (default)
        asks the server once (its max_message_bytes less a 64 KiB margin).
    dedicated_connection: a TCP connection of this client's own (gRPC otherwise shares one
        between channels to the same target).
    """

    def __init__(self, target: Optional[str] = None, *, timeout: Optional[float] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None, tls: bool = False,
                 root_certificates: Any = None, private_key: Any = None,
                 certificate_chain: Any = None, token: Optional[str] = None,
                 metadata: Optional[Sequence[Tuple[str, str]]] = None,
                 options: Optional[Sequence[Tuple[str, Any]]] = None,
                 compression: Optional[grpc.Compression] = None,
                 channel: Optional[grpc.Channel] = None, chunk_bytes: int = 4 << 20,
                 unary_limit_bytes: int = 0, dedicated_connection: bool = False):
        self.target = target or os.environ.get("QUANTD_SERVER") or DEFAULT_TARGET
        self.timeout = timeout
        self.chunk_bytes = min(max(int(chunk_bytes), 1 << 10), 1 << 26)
        self._unary_limit_option = int(unary_limit_bytes)
        self._metadata = list(metadata or [])
        if token:
            self._metadata.append(("authorization", f"Bearer {token}"))
        self._lock = threading.Lock()
        self._unary_limit: Optional[int] = None
        self._owns_channel = channel is None
        if channel is None:
            channel_options = [
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.service_config",
                 json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
            ]
            if dedicated_connection:
                channel_options.append(("grpc.use_local_subchannel_pool", 1))
            channel_options += list(options or [])
            grpc_target = channel_target(self.target)
            if credentials is None and (tls or root_certificates or private_key or
                                        certificate_chain):
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=_read_file_or_bytes(root_certificates),
                    private_key=_read_file_or_bytes(private_key),
                    certificate_chain=_read_file_or_bytes(certificate_chain))
            if credentials is not None:
                channel = grpc.secure_channel(grpc_target, credentials, channel_options,
                                              compression)
            else:
                channel = grpc.insecure_channel(grpc_target, channel_options, compression)
        self.channel = channel
        self._stub = pb_grpc.QuantizerStub(channel)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_channel and self.channel is not None:
            self.channel.close()
        self.channel = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"quantd.Client({self.target!r})"

    # -- the RPCs ---------------------------------------------------------------------------
    def quantize(self, x: Any, format: Any = None, *, skip_metrics: bool = False,
                 **spec: Any) -> QuantizedTensor:
        """Quantizes x (numpy array or torch tensor of float32 / float16 / bfloat16; float64 is
        converted to float32). Spec keywords (quantctl's flags): granularity, axis, group_size,
        block, asymmetric (or symmetric), rounding, seed, overflow, clip_ratio, nan_policy,
        packing, scale_rule, double_quant, global_scale, flatquant_left, flatquant_right,
        static_scales, static_zero_points, and spec= (a QuantSpec or Calibration as the
        base)."""
        a, dtype = _tensors.float_input(x)
        request = pb.QuantizeRequest(input=_tensors.wire_tensor(a, dtype, with_data=False),
                                     spec=_spec.build_spec(format, **spec),
                                     skip_metrics=bool(skip_metrics))
        response, parts = self._quantize(request, _tensors.payload(a))
        return QuantizedTensor.from_proto(response.quantized, client=self, like=x, parts=parts,
                                          metrics=_metrics(response), backend=response.backend)

    def dequantize(self, q: Any, dtype: Any = None) -> Any:
        """x̂ of a QuantizedTensor (or a quantd.v1.QuantizedTensor message); dtype: "f32"
        (default), "f16", "bf16" or the numpy / torch dtype. numpy or torch as q's codes are
        (torch on their device)."""
        if isinstance(q, pb.QuantizedTensor):
            q = QuantizedTensor.from_proto(q)
        if not isinstance(q, QuantizedTensor):
            raise TypeError(f"dequantize takes a QuantizedTensor, not {type(q).__name__}")
        header, parts = q._bulk()
        request = pb.DequantizeRequest(quantized=header, output_dtype=_tensors.float_dtype(dtype))
        response, data = self._dequantize(request, parts)
        return q._origin().array(response.output.dtype, response.output.shape, data)

    def quant_dequant(self, x: Any, format: Any = None, *, dtype: Any = None,
                      skip_metrics: bool = False, with_metrics: bool = False,
                      **spec: Any) -> Any:
        """x̂ = dequantize(quantize(x)) in one call (fake quantization), in x's dtype unless
        dtype says otherwise; with_metrics=True returns (x̂, metrics dict)."""
        a, in_dtype = _tensors.float_input(x)
        request = pb.QuantDequantRequest(input=_tensors.wire_tensor(a, in_dtype, with_data=False),
                                         spec=_spec.build_spec(format, **spec),
                                         output_dtype=_tensors.float_dtype(dtype),
                                         skip_metrics=bool(skip_metrics))
        data = _tensors.payload(a)
        if not self._needs_stream(request.ByteSize() + len(data) + _FRAMING_BYTES, 2 * len(data)):
            request.input.data = data.tobytes()
            response = self._unary("QuantDequant", request)
            output, metrics = response.output, _metrics(response)
            out_data = output.data
        else:
            # Too large for one message: the same result through the two streamed calls.
            output_dtype = request.output_dtype or in_dtype
            quantize = pb.QuantizeRequest(input=request.input, spec=request.spec,
                                          skip_metrics=request.skip_metrics)
            quantized, parts = self._quantize(quantize, data, force_stream=True)
            metrics = _metrics(quantized)
            dequantize = pb.DequantizeRequest(quantized=quantized.quantized,
                                              output_dtype=output_dtype)
            dequantized, out_data = self._dequantize(dequantize, parts, force_stream=True)
            output = dequantized.output
        result = _tensors.Origin.of(x).array(output.dtype, output.shape, out_data)
        return (result, metrics) if with_metrics else result

    def calibrate(self, x: Any, format: Any = None, *, method: Any = "amax",
                  percentile: float = 0.0, search_steps: int = 0, search_min_ratio: float = 0.0,
                  **spec: Any) -> Calibration:
        """Scales (and zero-points) for x by method "amax", "percentile" (percentile in
        (0, 100], 0: 99.99) or "mse" (search_steps clip ratios down to search_min_ratio, 0:
        21 and 0.8). The result's .spec quantizes statically: c.quantize(y, spec=cal)."""
        a, dtype = _tensors.float_input(x)
        request = pb.CalibrateRequest(
            input=_tensors.wire_tensor(a, dtype), spec=_spec.build_spec(format, **spec),
            method=_spec.choice("method", method, _spec.METHODS, "CALIBRATION_METHOD_"),
            percentile=float(percentile), search_steps=int(search_steps),
            search_min_ratio=float(search_min_ratio))
        self._check_unary("Calibrate", request, "calibrate a representative slice")
        return Calibration(self._unary("Calibrate", request), like=x)

    def gemm(self, a: Any, b: Any, format: Any = None, *, weight_format: Any = None,
             bias: Any = None, c: Any = None, alpha: float = 1.0, beta: float = 0.0,
             dtype: Any = None, a_spec: Any = None, b_spec: Any = None,
             skip_metrics: bool = False, with_metrics: bool = False, **spec: Any) -> Any:
        """OUT = alpha · Â · B̂ᵀ + beta · C + bias (the Gemm RPC, as `quantctl gemm`): A [M, K]
        or [batch, M, K] activations, B [N, K] (nn.Linear's layout) or [batch, N, K]. A is
        quantized as `format` + the spec keywords, B the same with `weight_format` as its
        descriptor when given; no format and no weight_format multiply A and B as given.
        a_spec / b_spec (QuantSpec) replace either spec. with_metrics=True returns (OUT,
        metrics: OUT's error against the unquantized product)."""
        a_arr, a_dtype = _tensors.float_input(a, "a")
        registered = isinstance(b, (Weight, str))
        request = pb.GemmRequest(a=_tensors.wire_tensor(a_arr, a_dtype),
                                 output_dtype=_tensors.float_dtype(dtype),
                                 skip_metrics=bool(skip_metrics))
        if registered:  # a registered weight (register_weight), quantized as registered
            if weight_format is not None or b_spec is not None:
                raise InvalidArgument("a registered weight keeps the spec it was registered "
                                      "with: drop weight_format / b_spec")
            request.b_handle = b.handle if isinstance(b, Weight) else b
        else:
            b_arr, b_dtype = _tensors.float_input(b, "b")
            request.b.CopyFrom(_tensors.wire_tensor(b_arr, b_dtype))
        if format is not None:  # as quantctl: B's spec is A's with --weight-format's name
            request.a_spec.CopyFrom(_spec.build_spec(format, **spec))
            if not registered:
                request.b_spec.CopyFrom(request.a_spec)
            if weight_format is not None:
                request.b_spec.descriptor_string = weight_format
        elif weight_format is not None:
            request.b_spec.CopyFrom(_spec.build_spec(weight_format, **spec))
        elif spec:
            raise InvalidArgument(f"spec keywords {sorted(spec)} need a format or weight_format")
        if a_spec is not None:
            request.a_spec.CopyFrom(_spec.build_spec(spec=a_spec))
        if b_spec is not None:
            request.b_spec.CopyFrom(_spec.build_spec(spec=b_spec))
        if bias is not None:
            bias_arr, bias_dtype = _tensors.float_input(bias, "bias")
            request.bias.CopyFrom(_tensors.wire_tensor(bias_arr, bias_dtype))
        if c is not None:
            c_arr, c_dtype = _tensors.float_input(c, "c")
            request.c.CopyFrom(_tensors.wire_tensor(c_arr, c_dtype))
        request.alpha = float(alpha)
        request.alpha_is_zero = float(alpha) == 0.0
        request.beta = float(beta)
        self._check_unary("Gemm", request, "split M into slices")
        response = self._unary("Gemm", request)
        out = _tensors.Origin.of(a).array(response.output.dtype, response.output.shape,
                                          response.output.data)
        return (out, _metrics(response)) if with_metrics else out

    def register_weight(self, w: Any, format: Any = None, *, name: str = "",
                        keep_original: bool = False, skip_metrics: bool = False,
                        spec: Any = None, **spec_keywords: Any) -> Weight:
        """Quantizes weight `w` ([N, K], nn.Linear's layout, or [batch, N, K]) once on the
        server and keeps it there (on the GPU under the CUDA backend) for gemm(a, weight):
        `format` + spec keywords as quantize's (no granularity: one scale per output row where
        the format allows it), None keeps it unquantized. keep_original also keeps its values,
        so gemm's metrics measure the whole quantization error (else the activations' only).
        ResourceExhausted above the server's --max-weight-bytes. The weight lives on the server
        that registered it: with several replicas, use a client of one address."""
        arr, arr_dtype = _tensors.float_input(w, "weight")
        request = pb.RegisterWeightRequest(
            weight=_tensors.wire_tensor(arr, arr_dtype, with_data=False), name=name,
            keep_original=bool(keep_original), skip_metrics=bool(skip_metrics))
        if format is not None or spec is not None:
            request.spec.CopyFrom(_spec.build_spec(format, spec=spec, **spec_keywords))
        elif spec_keywords:
            raise InvalidArgument(f"spec keywords {sorted(spec_keywords)} need a format")
        data = _tensors.payload(arr)
        if not self._needs_stream(request.ByteSize() + len(data) + _FRAMING_BYTES, 0):
            request.weight.data = data.tobytes()
            response = self._unary("RegisterWeight", request)
        else:  # above one message: the header, then the weight in frames
            frame_bytes = self._frame_bytes()

            def frames():
                yield pb.RegisterWeightStreamRequest(header=request)
                for offset in range(0, len(data), frame_bytes):
                    yield pb.RegisterWeightStreamRequest(
                        data=data[offset:offset + frame_bytes].tobytes())

            method = "RegisterWeightStream"
            try:
                replies = list(getattr(self._stub, method)(frames(), **self._call_kwargs()))
            except grpc.RpcError as e:
                raise from_rpc_error(e, method) from None
            if len(replies) != 1:
                raise Internal(f"the server answered with {len(replies)} messages, not one",
                               method=method)
            response = replies[0]
        return Weight(response.weight, _metrics(response))

    def list_weights(self) -> List[Weight]:
        """The weights registered on the server, in registration order."""
        response = self._unary("ListWeights", pb.ListWeightsRequest())
        return [Weight(info) for info in response.weights]

    def drop_weight(self, weight: Any) -> int:
        """Unregisters a weight (a Weight or its handle); the bytes it held, freed once the
        GEMMs already using it finish. NotFound for an unknown handle."""
        handle = weight.handle if isinstance(weight, Weight) else str(weight)
        return int(self._unary("DropWeight", pb.DropWeightRequest(handle=handle)).freed_bytes)

    def capabilities(self) -> Capabilities:
        """Formats, descriptors, backends and limits of the server."""
        response = self._unary("GetCapabilities", pb.GetCapabilitiesRequest())
        with self._lock:
            if self._unary_limit is None:
                self._unary_limit = self._limit_from(response)
        return Capabilities(response)

    def health(self, service: str = "") -> str:
        """The grpc.health.v1 status of the server ("SERVING", "NOT_SERVING", ...): "" asks
        about the server as a whole, "quantd.v1.Quantizer" about the service."""
        encoded = service.encode()
        request = (b"\x0a" + _varint(len(encoded)) + encoded) if encoded else b""
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = check(request, timeout=self.timeout, metadata=self._metadata or None)
        except grpc.RpcError as e:
            raise from_rpc_error(e, "Health/Check") from None
        status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(
            status, str(status))

    # -- transport --------------------------------------------------------------------------
    def _call_kwargs(self) -> dict:
        return {"timeout": self.timeout, "metadata": self._metadata or None}

    def _unary(self, method: str, request: Any) -> Any:
        if self.channel is None:
            raise FailedPrecondition("the client is closed", method=method)
        try:
            return getattr(self._stub, method)(request, **self._call_kwargs())
        except grpc.RpcError as e:
            raise from_rpc_error(e, method) from None

    @staticmethod
    def _limit_from(response: "pb.GetCapabilitiesResponse") -> int:
        server_limit = response.limits.max_message_bytes or _DEFAULT_MESSAGE_LIMIT
        return max(server_limit - MESSAGE_MARGIN_BYTES, 1 << 10)

    def unary_limit(self) -> int:
        """The largest request or response sent as one message: unary_limit_bytes when given,
        else the server's max_message_bytes (asked once) less 64 KiB. When the server cannot be
        asked, gRPC's default 4 MiB limit is assumed for this call and asked again next time."""
        if self._unary_limit_option > 0:
            return self._unary_limit_option
        with self._lock:
            if self._unary_limit is not None:
                return self._unary_limit
        try:
            response = self._unary("GetCapabilities", pb.GetCapabilitiesRequest())
        except QuantdError:
            return max(_DEFAULT_MESSAGE_LIMIT - MESSAGE_MARGIN_BYTES, 1 << 10)
        with self._lock:
            self._unary_limit = self._limit_from(response)
            return self._unary_limit

    def _frame_bytes(self) -> int:
        """Payload bytes per stream frame: chunk_bytes, never more than one message carries."""
        return min(self.chunk_bytes, self.unary_limit())

    def _needs_stream(self, request_bytes: int, response_payload_bytes: int) -> bool:
        limit = self.unary_limit()
        return request_bytes > limit or response_payload_bytes > limit

    def _check_unary(self, method: str, request: Any, advice: str) -> None:
        size = request.ByteSize()
        limit = self.unary_limit()
        if size > limit:
            raise FailedPrecondition(
                f"{method} has no streamed form and this request is {size} bytes, above the "
                f"server's message limit of {limit + MESSAGE_MARGIN_BYTES}; {advice}, or start "
                "quantd with a larger --max-message-bytes", method=method)

    def _quantize(self, request: "pb.QuantizeRequest", data: memoryview,
                  force_stream: bool = False):
        """(QuantizeResponse, {part: bytes}) for a request whose input carries no data yet."""
        if not force_stream and not self._needs_stream(
                request.ByteSize() + len(data) + _FRAMING_BYTES, len(data)):
            request.input.data = data.tobytes()
            response = self._unary("Quantize", request)
            return response, {part: t.data for part, t in _part_fields(response.quantized).items()}
        frame_bytes = self._frame_bytes()

        def frames():
            yield pb.QuantizeStreamRequest(header=request)
            for offset in range(0, len(data), frame_bytes):
                yield pb.QuantizeStreamRequest(data=data[offset:offset + frame_bytes].tobytes())

        method = "QuantizeStream"
        buffers: Dict[int, _Buffer] = {}

        def on_header(header):
            buffers.update((part, _Buffer(_tensors.declared_bytes(t)))
                           for part, t in _part_fields(header.quantized).items())

        def on_data(chunk):
            if chunk.part not in buffers:
                raise Internal(f"the server stream sent data for no part ({chunk.part})",
                               method=method)
            buffers[chunk.part].append(chunk.data, method)

        response = self._stream(method, frames(), on_header, on_data)
        if response is None:
            raise Internal("the server stream ended without a header", method=method)
        required = [pb.PART_CODES, pb.PART_SCALES]
        if response.quantized.spec.asymmetric:
            required.append(pb.PART_ZERO_POINTS)
        if any(not buffers[part].complete() for part in required):
            raise Internal("the server stream ended before every part was complete",
                           method=method)
        return response, {part: buffer.data for part, buffer in buffers.items()}

    def _dequantize(self, request: "pb.DequantizeRequest", parts: Dict[int, Any],
                    force_stream: bool = False):
        """(DequantizeResponse, output bytes) for a request whose quantized tensors carry no
        data yet; `parts` holds their bytes."""
        # The response is the float tensor: up to 4 bytes per element whatever the codes are.
        output_bytes = 4
        for dim in request.quantized.shape:
            output_bytes *= max(int(dim), 0)
        payload_bytes = sum(len(p) for p in parts.values())
        fields = _part_fields(request.quantized)
        if not force_stream and not self._needs_stream(
                request.ByteSize() + payload_bytes + 3 * _FRAMING_BYTES, output_bytes):
            for part, data in parts.items():
                if len(data):
                    fields[part].data = bytes(data)
            response = self._unary("Dequantize", request)
            return response, response.output.data
        frame_bytes = self._frame_bytes()

        def frames():
            yield pb.DequantizeStreamRequest(header=request)
            for part in _PARTS:
                view = memoryview(parts.get(part, b""))
                for offset in range(0, len(view), frame_bytes):
                    yield pb.DequantizeStreamRequest(data=pb.DataChunk(
                        part=part, data=view[offset:offset + frame_bytes].tobytes()))

        method = "DequantizeStream"
        output: List[_Buffer] = []

        def on_header(header):
            output.append(_Buffer(_tensors.declared_bytes(header.output)))

        response = self._stream(method, frames(), on_header,
                                lambda data: output[0].append(data, method))
        if response is None or not output[0].complete():
            raise Internal("the server stream ended before the output was complete",
                           method=method)
        return response, output[0].data

    def _stream(self, method: str, requests: Any, on_header: Any, on_data: Any) -> Any:
        """Runs a streamed RPC: on_header(header) for the reply's one header frame, then
        on_data(data) for each data frame. Returns the header (None when the stream ended
        without one). A QuantdError raised here or by a callback cancels the call."""
        call = None
        header = None
        try:
            call = getattr(self._stub, method)(requests, **self._call_kwargs())
            for reply in call:
                if reply.WhichOneof("frame") == "header":
                    if header is not None:
                        raise Internal("the server stream sent a second header", method=method)
                    header = reply.header
                    on_header(header)
                elif header is None:
                    raise Internal("the server stream sent data before its header", method=method)
                else:
                    on_data(reply.data)
        except grpc.RpcError as e:
            raise from_rpc_error(e, method) from None
        except QuantdError:
            if call is not None:
                call.cancel()
            raise
        return header


class _Buffer:
    """One streamed tensor's bytes, filled in order up to the size its header declared."""

    __slots__ = ("data", "filled")

    def __init__(self, size: int):
        self.data = bytearray(size)
        self.filled = 0

    def append(self, piece: bytes, method: str) -> None:
        end = self.filled + len(piece)
        if end > len(self.data):
            raise Internal(f"the server stream sent more than the {len(self.data)} bytes its "
                           "header declared", method=method)
        self.data[self.filled:end] = piece
        self.filled = end

    def complete(self) -> bool:
        return self.filled == len(self.data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
