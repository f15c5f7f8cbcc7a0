"""Drop-in quantizers for code written against the tools quantd replaces (the Triton
FP8Quantizer / INT8Quantizer of quantization_ops, and int8_ops' per-token / per-channel
INT8Quantizer), computed by the quantd service, so switching is a changed import:

    from quantd.compat import FP8Quantizer, INT8Quantizer     # was: from quantization_ops ...

    quantizer = FP8Quantizer(fp8_format="E4M3")   # per-tensor scale = amax / 448
    quantizer.calibrate(x)                        # sets quantizer.scale
    x_quant = quantizer.quantize(x)               # float8 values x / scale (torch.float8_e4m3fn,
                                                  # or ml_dtypes' float8 for numpy)
    x_dequant = quantizer.dequantize(x_quant)     # float32

    q = INT8Quantizer(symmetric=False)            # sets q.scale, q.zero_point at calibrate
    x_int8, scale = INT8Quantizer.quantize_per_token(x)      # scale: x.shape[:-1] + (1,)
    w_int8, scale = INT8Quantizer.quantize_per_channel(w)    # scale: (out, 1)
    x_restored = INT8Quantizer.dequantize(x_int8, scale)

The numbers are FORMATS.md's, not the originals' approximations: E4M3's max is 448 and E5M2's
57344 (the old module had them swapped), FP8 values are real float8 codes (the old kernels
rounded to float16), and INT8 rounds half to even. quantize() without an earlier calibrate()
calibrates on its input first (and keeps that scale). torch in -> torch out on the input's
device, numpy in -> numpy out.

The service: set_default_client(quantd.Client(...)) or a "HOST:PORT" string, else
$QUANTD_SERVER, else localhost:50051; every class and function also takes client=.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any, Optional, Tuple

import numpy as np

from . import _tensors
from .client import Client, QuantizedTensor
from .errors import InvalidArgument
from .v1 import quantd_pb2 as pb

__all__ = ["FP8Quantizer", "INT8Quantizer", "quantization_error",
           "signal_to_quantization_noise_ratio", "set_default_client", "default_client"]

_default_lock = threading.Lock()
_default_client: Optional[Client] = None


def set_default_client(client: Any) -> Client:
    """The client compat objects use when given none: a Client, or a target string."""
    global _default_client
    with _default_lock:
        _default_client = client if isinstance(client, Client) else Client(client)
        return _default_client


def default_client() -> Client:
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client()  # $QUANTD_SERVER, else localhost:50051
        return _default_client


def _client(client: Optional[Client]) -> Client:
    return client if client is not None else default_client()


def _float8_view(codes: Any, fp8_format: str) -> Any:
    """uint8 FP8 codes as the float8 dtype they are (torch.float8_*, ml_dtypes.float8_*) when
    the library has it; else the uint8 codes."""
    name = {"E4M3": "float8_e4m3fn", "E5M2": "float8_e5m2"}[fp8_format]
    if _tensors.is_torch(codes):
        torch = _tensors._torch()
        return codes.view(getattr(torch, name)) if hasattr(torch, name) else codes
    try:
        import ml_dtypes
    except ImportError:
        return codes
    return codes.view(getattr(ml_dtypes, name))


def _shape(x: Any) -> Tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


class FP8Quantizer:
    """Per-tensor FP8 (E4M3 or E5M2, OCP): scale = amax / max finite (448, 57344);
    quantize(x) = fp8(x / scale), dequantize(q) = scale · q in float32."""

    _DESCRIPTORS = {"E4M3": "fp8-e4m3", "E5M2": "fp8-e5m2"}

    def __init__(self, fp8_format: str = "E5M2", *, client: Optional[Client] = None):
        key = str(fp8_format).upper().replace("FP8", "").replace("-", "").replace("_", "")
        key = {"E4M3FN": "E4M3"}.get(key, key)
        if key not in self._DESCRIPTORS:
            raise InvalidArgument(f"fp8_format={fp8_format!r}; accepted: 'E4M3', 'E5M2'")
        self.fp8_format = key
        self.scale: Any = None
        self.client = client

    @property
    def descriptor(self) -> str:
        return self._DESCRIPTORS[self.fp8_format]

    def calibrate(self, x: Any) -> None:
        """scale = amax(|x|) / max finite, through the Calibrate RPC."""
        cal = _client(self.client).calibrate(x, self.descriptor, granularity="tensor")
        self.scale = cal.scales

    def quantize(self, x: Any) -> Any:
        """fp8(x / scale), same shape as x: torch.float8_e4m3fn / float8_e5m2 for torch,
        ml_dtypes' float8 for numpy (uint8 codes where neither has the type)."""
        if self.scale is None:
            self.calibrate(x)
        q = _client(self.client).quantize(x, self.descriptor, granularity="tensor",
                                          static_scales=self.scale, skip_metrics=True)
        return _float8_view(q.codes, self.fp8_format)

    def dequantize(self, x_quant: Any) -> Any:
        """scale · x_quant in float32 (x_quant: what quantize returned, or its uint8 codes)."""
        if self.scale is None:
            raise InvalidArgument("dequantize needs a scale: calibrate() or quantize() first")
        q = QuantizedTensor(
            x_quant, self.scale, shape=_shape(x_quant),
            spec=pb.QuantSpec(descriptor_string=self.descriptor,
                              granularity=pb.GRANULARITY_TENSOR))
        return _client(self.client).dequantize(q)

    def __repr__(self) -> str:
        return f"FP8Quantizer(fp8_format={self.fp8_format!r})"


class _InstanceOrClassMethod:
    """A method that also works on the class: INT8Quantizer.dequantize(x_int8, scale) (int8_ops)
    and quantizer.dequantize(x_quant) (quantization_ops) are both in use."""

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, objtype=None):
        return functools.partial(self.func, obj)


class INT8Quantizer:
    """INT8, both APIs of the tools it replaces.

    quantization_ops: INT8Quantizer(symmetric=False) with calibrate / quantize / dequantize over
    one per-tensor scale and zero_point (symmetric: zero_point 0, scale = amax / 127;
    asymmetric: scale = (max - min) / 255 and a zero-point in [-128, 127]).

    int8_ops (static): quantize_per_token(x) -> (int8, scale of shape x.shape[:-1] + (1,)),
    quantize_per_channel(w) -> (int8, scale of shape (out, 1, ...)), symmetric, scale =
    amax / 127; dequantize(x_int8, scale) -> float32.
    """

    def __init__(self, symmetric: bool = False, *, client: Optional[Client] = None):
        self.symmetric = bool(symmetric)
        self.scale: Any = None
        self.zero_point: Any = None
        self.client = client

    def _spec_kwargs(self) -> dict:
        return {"granularity": "tensor", "asymmetric": not self.symmetric}

    def calibrate(self, x: Any) -> None:
        """scale (and zero_point) of x, through the Calibrate RPC."""
        cal = _client(self.client).calibrate(x, "int8", **self._spec_kwargs())
        self.scale = cal.scales
        if cal.zero_points is not None:
            self.zero_point = cal.zero_points
        else:
            zeros = np.zeros(_shape(cal.scales), np.int32)
            self.zero_point = _tensors.Origin.of(cal.scales).array(
                pb.DTYPE_I32, zeros.shape, zeros.tobytes())

    def quantize(self, x: Any) -> Any:
        """int8 codes of x with the calibrated scale (and zero_point), same shape as x."""
        if self.scale is None:
            self.calibrate(x)
        static = {"static_scales": self.scale}
        if not self.symmetric:
            static["static_zero_points"] = self.zero_point
        q = _client(self.client).quantize(x, "int8", skip_metrics=True, **self._spec_kwargs(),
                                          **static)
        return q.codes

    @_InstanceOrClassMethod
    def dequantize(self, x_quant: Any, scale: Any = None, zero_point: Any = None, *,
                   client: Optional[Client] = None) -> Any:
        """float32 scale · (x_quant - zero_point). On an instance without `scale`: its
        calibrated scale and zero_point. With `scale` (int8_ops' form, also on the class): a
        scale of 1 element, of shape x.shape[:-1] + (1,) (per token) or (x.shape[0], 1, ...)
        (per channel) goes through the service; any other shape that broadcasts against x is
        applied here with the same fp32 arithmetic (one exact multiply per element)."""
        if self is not None:
            client = client if client is not None else self.client
        if scale is None:
            if self is None:
                raise InvalidArgument("INT8Quantizer.dequantize(x_int8, scale) needs the scale")
            if self.scale is None:
                raise InvalidArgument("dequantize needs a scale: calibrate() or quantize() first")
            scale = self.scale
            if not self.symmetric:
                zero_point = self.zero_point
        return _dequantize_int8(x_quant, scale, zero_point, _client(client))

    @staticmethod
    def quantize_per_token(x: Any, *, client: Optional[Client] = None) -> Tuple[Any, Any]:
        """(int8 codes, scale): one symmetric scale per row of the last axis; scale has shape
        x.shape[:-1] + (1,)."""
        q = _client(client).quantize(x, "int8", granularity="token", skip_metrics=True)
        return q.codes, q.scales.reshape(_shape(x)[:-1] + (1,))

    @staticmethod
    def quantize_per_channel(w: Any, *, client: Optional[Client] = None) -> Tuple[Any, Any]:
        """(int8 codes, scale): one symmetric scale per output channel (axis 0); scale has
        shape (w.shape[0], 1, ...)."""
        q = _client(client).quantize(w, "int8", granularity="channel", axis=0,
                                     skip_metrics=True)
        return q.codes, q.scales

    def __repr__(self) -> str:
        return f"INT8Quantizer(symmetric={self.symmetric})"


def _dequantize_int8(x_int8: Any, scale: Any, zero_point: Any, client: Client) -> Any:
    shape = _shape(x_int8)
    scale_shape = _shape(scale)
    size = math.prod(scale_shape)
    asymmetric = zero_point is not None and bool(np.any(_tensors.to_numpy(zero_point)))
    rows = math.prod(shape[:-1]) if shape else 1
    if size == 1:
        granularity, wire_shape = pb.GRANULARITY_TENSOR, (1,)
    elif len(shape) >= 1 and scale_shape == shape[:-1] + (1,):
        granularity, wire_shape = pb.GRANULARITY_TOKEN, (rows, 1)
    elif len(shape) >= 2 and scale_shape == (shape[0],) + (1,) * (len(shape) - 1):
        granularity, wire_shape = pb.GRANULARITY_CHANNEL, scale_shape
    else:
        return _dequantize_int8_here(x_int8, scale, zero_point if asymmetric else None)
    scales = scale.reshape(wire_shape)
    zero_points = zero_point.reshape(wire_shape) if asymmetric else None
    q = QuantizedTensor(x_int8, scales, zero_points, shape=shape,
                        spec=pb.QuantSpec(descriptor_string="int8", granularity=granularity,
                                          asymmetric=asymmetric))
    return client.dequantize(q)


def _dequantize_int8_here(x_int8: Any, scale: Any, zero_point: Any) -> Any:
    """fp32(scale · (q - zp)) by broadcasting, as FORMATS.md defines it ((q - zp) exact)."""
    q = _tensors.to_numpy(x_int8).astype(np.int32)
    if zero_point is not None:
        q = q - _tensors.to_numpy(zero_point).astype(np.int32)
    s = _tensors.to_numpy(scale).astype(np.float32)
    try:
        out = (q.astype(np.float32) * s).astype(np.float32)
    except ValueError as e:
        raise InvalidArgument(f"scale of shape {list(s.shape)} does not broadcast against codes "
                              f"of shape {list(q.shape)}") from e
    return _tensors.Origin.of(x_int8).array(pb.DTYPE_F32, out.shape, bytearray(out.tobytes()))


def _float64(x: Any) -> np.ndarray:
    a = _tensors.to_numpy(x)
    if a.dtype.names == ("bf16",):  # torch bfloat16 without ml_dtypes: widen the bits
        a = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float64)


def quantization_error(original: Any, quantized: Any) -> float:
    """Mean squared error between a tensor and its reconstruction (computed here, in fp64)."""
    x, y = _float64(original), _float64(quantized)
    return float(np.mean((x - y) ** 2)) if x.size else 0.0


def signal_to_quantization_noise_ratio(original: Any, quantized: Any) -> float:
    """SQNR in dB, 10·log10(Σx² / Σ(x - x̂)²); +inf when the reconstruction is exact."""
    x, y = _float64(original), _float64(quantized)
    noise = float(np.sum((x - y) ** 2))
    signal = float(np.sum(x ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
