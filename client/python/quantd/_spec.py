"""QuantSpec messages from keyword arguments, built exactly as `quantctl` builds them from its
flags (client/quantctl.cc SpecFromFlags), so the same arguments send the same request:

    quantctl quantize --format=int4-g128 --asymmetric --rounding=stochastic --seed=7 ...
    c.quantize(x, format="int4-g128", asymmetric=True, rounding="stochastic", seed=7)

`format` goes into `descriptor_string` (the server resolves and validates it, and its error
lists what is accepted); choice arguments take quantctl's names, case-insensitive."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _tensors
from .errors import InvalidArgument
from .v1 import quantd_pb2 as pb

GRANULARITIES = {"none": pb.GRANULARITY_NONE, "tensor": pb.GRANULARITY_TENSOR,
                 "channel": pb.GRANULARITY_CHANNEL, "token": pb.GRANULARITY_TOKEN,
                 "group": pb.GRANULARITY_GROUP, "block": pb.GRANULARITY_BLOCK}
ROUNDINGS = {"rne": pb.ROUNDING_NEAREST_EVEN, "nearest_even": pb.ROUNDING_NEAREST_EVEN,
             "stochastic": pb.ROUNDING_STOCHASTIC,
             "away": pb.ROUNDING_NEAREST_AWAY, "nearest_away": pb.ROUNDING_NEAREST_AWAY}
OVERFLOWS = {"saturate": pb.OVERFLOW_SATURATE, "nonfinite": pb.OVERFLOW_NONFINITE}
NAN_POLICIES = {"reject": pb.NAN_POLICY_REJECT, "zero": pb.NAN_POLICY_ZERO,
                "propagate": pb.NAN_POLICY_PROPAGATE}
PACKINGS = {"bitstream": pb.PACKING_BITSTREAM, "int32_offset": pb.PACKING_INT32_OFFSET,
            "high_nibble_first": pb.PACKING_HIGH_NIBBLE_FIRST}
SCALE_RULES = {"floor": pb.SCALE_RULE_FLOOR, "rceil": pb.SCALE_RULE_RCEIL,
               "even": pb.SCALE_RULE_EVEN, "nearest": pb.SCALE_RULE_NEAREST}
METHODS = {"amax": pb.CALIBRATION_METHOD_AMAX, "percentile": pb.CALIBRATION_METHOD_PERCENTILE,
           "mse": pb.CALIBRATION_METHOD_MSE}


def choice(what: str, value: Any, choices: dict, enum_prefix: str) -> int:
    """The enum number `value` names: one of `choices` (case-insensitive, '-' as '_'), the
    proto's own name (e.g. "ROUNDING_STOCHASTIC"), or the number itself."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in choices.values():
            return value
    elif isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key.startswith(enum_prefix.lower()):
            key = key[len(enum_prefix):]
        if key in choices:
            return choices[key]
    raise InvalidArgument(f"unknown {what}={value!r}; accepted: {', '.join(choices)}")


def _float32_tensor(x: Any, what: str) -> "pb.Tensor":
    a = _tensors.to_numpy(x)
    if a.dtype.kind not in "fiu" or a.dtype.name == "bfloat16":
        raise InvalidArgument(f"{what} must be float32 values, not {a.dtype}")
    return _tensors.wire_tensor(np.ascontiguousarray(a, dtype=np.float32), pb.DTYPE_F32)


def _int32_tensor(x: Any, what: str) -> "pb.Tensor":
    a = _tensors.to_numpy(x)
    if a.dtype.kind not in "iu" or (a.size and (a.min() < -2**31 or a.max() >= 2**31)):
        raise InvalidArgument(f"{what} must be int32 values, not {a.dtype}")
    return _tensors.wire_tensor(np.ascontiguousarray(a, dtype=np.int32), pb.DTYPE_I32)


def _block(block: Any):
    if isinstance(block, str):
        parts = block.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    elif isinstance(block, (tuple, list)) and len(block) == 2:
        return int(block[0]), int(block[1])
    raise InvalidArgument(f"block={block!r} needs the form 'RxC' or (R, C), e.g. '128x128'")


def build_spec(format: Any = None, *, spec: Any = None, granularity: Any = None,
               axis: Optional[int] = None, group_size: Optional[int] = None, block: Any = None,
               asymmetric: Optional[bool] = None, symmetric: Optional[bool] = None,
               rounding: Any = None, seed: Optional[int] = None, overflow: Any = None,
               clip_ratio: Optional[float] = None, nan_policy: Any = None, packing: Any = None,
               scale_rule: Any = None, double_quant: Optional[bool] = None,
               global_scale: Optional[float] = None, flatquant_left: Any = None,
               flatquant_right: Any = None, static_scales: Any = None,
               static_zero_points: Any = None) -> "pb.QuantSpec":
    """A QuantSpec: `spec` (a QuantSpec, or anything with a `.spec` such as a Calibration or a
    QuantizedTensor) as the base when given, then every argument that is not None, in
    quantctl's order. Without a base, `format` is required."""
    out = pb.QuantSpec()
    if spec is None:
        # quantctl's SpecFromFlags takes mutable_flatquant_left() / _right() for every spec, so
        # its requests carry both as empty (present) tensors; the server reads empty as unset.
        # Doing the same keeps the two clients' requests byte for byte equal.
        out.flatquant_left.SetInParent()
        out.flatquant_right.SetInParent()
    else:
        base = spec if isinstance(spec, pb.QuantSpec) else getattr(spec, "spec", None)
        if not isinstance(base, pb.QuantSpec):
            raise InvalidArgument(f"spec must be a quantd.v1.QuantSpec or carry one in .spec, "
                                  f"not {type(spec).__name__}")
        out.CopyFrom(base)
    if format is not None:
        if isinstance(format, str):
            if not format:
                raise InvalidArgument("format is empty; give a format or descriptor string such "
                                      "as 'int8', 'int4-g128', 'fp8-e4m3', 'mxfp4', 'nvfp4'")
            if spec is not None:
                out.ClearField("format")  # the descriptor chooses it, as a fresh spec would
            out.descriptor_string = format
        elif isinstance(format, int) and not isinstance(format, bool):
            out.ClearField("descriptor_string")
            out.format = format
        else:
            raise InvalidArgument(f"format must be a descriptor string or a quantd.v1.Format "
                                  f"number, not {type(format).__name__}")
    elif spec is None:
        raise InvalidArgument("format is required: a format or descriptor string such as 'int8', "
                              "'int8-asym', 'int4-g128', 'fp8-e4m3', 'mxfp4', 'nvfp4', 'nf4' "
                              "(Client.capabilities().descriptors lists them all)")
    if granularity is not None:
        out.granularity = choice("granularity", granularity, GRANULARITIES, "GRANULARITY_")
    if axis is not None:
        out.axis = int(axis)
    if group_size is not None:
        out.group_size = int(group_size)
    if block is not None:
        out.block_rows, out.block_cols = _block(block)
    if symmetric is not None and asymmetric is not None and bool(symmetric) == bool(asymmetric):
        raise InvalidArgument(f"symmetric={symmetric} contradicts asymmetric={asymmetric}; "
                              "give one of them")
    if asymmetric is not None:
        out.asymmetric = bool(asymmetric)
    elif symmetric is not None:
        out.asymmetric = not symmetric
    if rounding is not None:
        out.rounding = choice("rounding", rounding, ROUNDINGS, "ROUNDING_")
    if seed is not None:
        out.seed = int(seed)
    if overflow is not None:
        out.overflow = choice("overflow", overflow, OVERFLOWS, "OVERFLOW_")
    if clip_ratio is not None:
        out.clip_ratio = float(clip_ratio)
    if nan_policy is not None:
        out.nan_policy = choice("nan_policy", nan_policy, NAN_POLICIES, "NAN_POLICY_")
    if packing is not None:
        out.packing = choice("packing", packing, PACKINGS, "PACKING_")
    if scale_rule is not None:
        out.scale_rule = choice("scale_rule", scale_rule, SCALE_RULES, "SCALE_RULE_")
    if double_quant is not None:
        out.double_quant = bool(double_quant)
    if global_scale is not None:
        out.static_global_scale = float(global_scale)
    if flatquant_left is not None:
        out.flatquant_left.CopyFrom(_float32_tensor(flatquant_left, "flatquant_left"))
    if flatquant_right is not None:
        out.flatquant_right.CopyFrom(_float32_tensor(flatquant_right, "flatquant_right"))
    if static_scales is not None:
        out.static_scales.CopyFrom(_float32_tensor(static_scales, "static_scales"))
    if static_zero_points is not None:
        out.static_zero_points.CopyFrom(_int32_tensor(static_zero_points, "static_zero_points"))
    return out
