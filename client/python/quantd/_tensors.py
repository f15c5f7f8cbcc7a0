"""numpy / torch arrays to and from the wire's Tensor (dtype, int64 shape, little-endian
row-major bytes). torch is never imported here: a torch tensor can only exist when the caller
imported torch already, so `sys.modules` tells whether an argument can be one."""

from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

import numpy as np

from .errors import Internal, InvalidArgument
from .v1 import quantd_pb2 as pb

# Wire dtype -> (name as quantctl writes it, bytes per element, numpy dtype or None for BF16).
_DTYPES = {
    pb.DTYPE_F32: ("F32", 4, np.dtype("<f4")),
    pb.DTYPE_F16: ("F16", 2, np.dtype("<f2")),
    pb.DTYPE_BF16: ("BF16", 2, None),
    pb.DTYPE_U8: ("U8", 1, np.dtype("u1")),
    pb.DTYPE_I8: ("I8", 1, np.dtype("i1")),
    pb.DTYPE_I32: ("I32", 4, np.dtype("<i4")),
}

_DTYPE_NAMES = {
    "f32": pb.DTYPE_F32, "float32": pb.DTYPE_F32, "float": pb.DTYPE_F32,
    "f16": pb.DTYPE_F16, "float16": pb.DTYPE_F16, "half": pb.DTYPE_F16,
    "bf16": pb.DTYPE_BF16, "bfloat16": pb.DTYPE_BF16,
}


def dtype_size(dtype: int) -> int:
    return _DTYPES[dtype][1] if dtype in _DTYPES else 0


def dtype_name(dtype: int) -> str:
    return _DTYPES[dtype][0] if dtype in _DTYPES else "UNSPECIFIED"


def declared_bytes(tensor: "pb.Tensor") -> int:
    n = dtype_size(tensor.dtype)
    for dim in tensor.shape:
        n *= max(int(dim), 0)
    return n


def _torch():
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("bfloat16 numpy arrays need ml_dtypes: pip install 'quantd[bf16]' "
                          "(or ask for dtype='f32')") from e
    return np.dtype(ml_dtypes.bfloat16)


def float_dtype(dtype: Any) -> int:
    """The wire float dtype (F32, F16, BF16) that `dtype` names: "f32" / "float16" / "bf16",
    a numpy or ml_dtypes dtype, a torch dtype, or a DType number. None -> DTYPE_UNSPECIFIED."""
    if dtype is None:
        return pb.DTYPE_UNSPECIFIED
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype in (pb.DTYPE_F32, pb.DTYPE_F16, pb.DTYPE_BF16):
            return dtype
    elif isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "").replace("dtype_", "")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    else:
        torch = _torch()
        if torch is not None and isinstance(dtype, torch.dtype):
            found = {torch.float32: pb.DTYPE_F32, torch.float16: pb.DTYPE_F16,
                     torch.bfloat16: pb.DTYPE_BF16}.get(dtype)
            if found is not None:
                return found
        else:
            try:
                name = np.dtype(dtype).name
            except TypeError:
                name = ""
            if name in _DTYPE_NAMES:
                return _DTYPE_NAMES[name]
    raise InvalidArgument(f"unknown output dtype {dtype!r}; accepted: f32, f16, bf16 (or the "
                          "numpy / ml_dtypes / torch dtypes of those)")


class Origin:
    """Where an input came from, so that results go back as the same kind of array: numpy, or
    torch on the input's device."""

    __slots__ = ("torch_device",)

    def __init__(self, torch_device=None):
        self.torch_device = torch_device

    @property
    def is_torch(self) -> bool:
        return self.torch_device is not None

    @staticmethod
    def of(x: Any) -> "Origin":
        return Origin(x.device) if is_torch(x) else Origin()

    def array(self, dtype: int, shape, data) -> Any:
        """An array of the wire tensor `dtype` / `shape` over `data` (bytes or bytearray; a
        bytearray is used in place)."""
        shape = tuple(int(d) for d in shape)
        if dtype not in _DTYPES:
            raise Internal(f"a tensor of unknown dtype {dtype} arrived")
        want = dtype_size(dtype) * int(np.prod(shape, dtype=np.int64))
        if len(data) != want:  # the server's answer contradicts its own header
            raise Internal(f"tensor data holds {len(data)} bytes; {dtype_name(dtype)} "
                           f"{list(shape)} needs {want}")
        raw_dtype = np.dtype("<i2") if dtype == pb.DTYPE_BF16 else _DTYPES[dtype][2]
        flat = np.frombuffer(data, dtype=raw_dtype)
        if isinstance(data, bytes):  # bytes are read-only; callers get arrays they may write
            flat = flat.copy()
        flat = flat.reshape(shape)
        if not self.is_torch:
            return flat.view(_bfloat16()) if dtype == pb.DTYPE_BF16 else flat
        torch = _torch()
        t = torch.from_numpy(flat)
        if dtype == pb.DTYPE_BF16:
            t = t.view(torch.bfloat16)
        if self.torch_device is not None and str(self.torch_device) != "cpu":
            t = t.to(self.torch_device)
        return t


def to_numpy(x: Any) -> np.ndarray:
    """A C-contiguous little-endian numpy array of x's values. torch tensors are detached and
    copied to the host; a torch bfloat16 tensor becomes ml_dtypes.bfloat16, or without ml_dtypes
    its raw bits under a one-field structured dtype named "bf16" that wire_dtype_of knows."""
    if is_torch(x):
        torch = _torch()
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy()
            try:
                return raw.view(_bfloat16())
            except ImportError:
                return raw.view(np.dtype([("bf16", "<i2")]))
        return t.numpy()
    a = np.asarray(x)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a)


def wire_dtype_of(a: np.ndarray) -> int:
    """The wire dtype of a numpy array (float or code types); DTYPE_UNSPECIFIED for others."""
    if a.dtype.name == "bfloat16" or a.dtype.names == ("bf16",):
        return pb.DTYPE_BF16
    kind = {("f", 4): pb.DTYPE_F32, ("f", 2): pb.DTYPE_F16, ("u", 1): pb.DTYPE_U8,
            ("i", 1): pb.DTYPE_I8, ("i", 4): pb.DTYPE_I32}
    return kind.get((a.dtype.kind, a.dtype.itemsize), pb.DTYPE_UNSPECIFIED)


def float_input(x: Any, what: str = "input") -> Tuple[np.ndarray, int]:
    """(contiguous array, wire dtype) of a quantizer input: F32, F16 and BF16 as they are,
    float64 converted to float32 (round to nearest even, as quantctl does with '<f8' files);
    anything else is refused: integer tensors are codes, not weights."""
    a = to_numpy(x)
    if a.dtype.kind == "f" and a.dtype.itemsize == 8:
        a = a.astype(np.float32)
    dtype = wire_dtype_of(a)
    if dtype not in (pb.DTYPE_F32, pb.DTYPE_F16, pb.DTYPE_BF16):
        shown = x.dtype if hasattr(x, "dtype") else type(x).__name__
        raise TypeError(f"{what} must hold float32, float16, bfloat16 (or float64, converted to "
                        f"float32), not {shown}")
    return a, dtype


def wire_tensor(a: np.ndarray, dtype: Optional[int] = None, with_data: bool = True) -> "pb.Tensor":
    """A Tensor message of a contiguous array (its bytes copied in when with_data)."""
    t = pb.Tensor(dtype=wire_dtype_of(a) if dtype is None else dtype, shape=list(a.shape))
    if with_data:
        t.data = a.tobytes()
    return t


def payload(a: np.ndarray) -> memoryview:
    """The array's bytes without a copy."""
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def code_array(x: Any, allowed, what: str) -> Tuple[np.ndarray, int]:
    """A codes / scales / zero-points array for a Dequantize request, checked against the wire
    dtypes allowed for it."""
    if is_torch(x) and x.dtype.is_floating_point and x.element_size() == 1:
        x = x.view(_torch().uint8)  # torch float8 tensors: their bits are the codes
    a = to_numpy(x)
    if a.dtype.kind == "V" or a.dtype.name.startswith(("float8", "float6", "float4")):
        if a.dtype.itemsize == 1:
            a = a.view(np.uint8)  # ml_dtypes minifloats: their bits are the codes
    dtype = wire_dtype_of(a)
    if dtype not in allowed:
        names = ", ".join(dtype_name(d) for d in allowed)
        raise InvalidArgument(f"{what} must be one of {names}, not {a.dtype}")
    return a, dtype
