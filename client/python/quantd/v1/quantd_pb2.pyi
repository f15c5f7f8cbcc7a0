from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_F32: _ClassVar[DType]
    DTYPE_F16: _ClassVar[DType]
    DTYPE_BF16: _ClassVar[DType]
    DTYPE_U8: _ClassVar[DType]
    DTYPE_I8: _ClassVar[DType]
    DTYPE_I32: _ClassVar[DType]

class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORMAT_UNSPECIFIED: _ClassVar[Format]
    FORMAT_INT8: _ClassVar[Format]
    FORMAT_INT4: _ClassVar[Format]
    FORMAT_UINT8: _ClassVar[Format]
    FORMAT_UINT4: _ClassVar[Format]
    FORMAT_FP8_E4M3: _ClassVar[Format]
    FORMAT_FP8_E5M2: _ClassVar[Format]
    FORMAT_MXFP8_E4M3: _ClassVar[Format]
    FORMAT_MXFP8_E5M2: _ClassVar[Format]
    FORMAT_MXFP6_E3M2: _ClassVar[Format]
    FORMAT_MXFP6_E2M3: _ClassVar[Format]
    FORMAT_MXFP4: _ClassVar[Format]
    FORMAT_MXINT8: _ClassVar[Format]
    FORMAT_NVFP4: _ClassVar[Format]
    FORMAT_HIF8: _ClassVar[Format]
    FORMAT_NF4: _ClassVar[Format]
    FORMAT_FLATQUANT_INT4: _ClassVar[Format]

class ScaleRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALE_RULE_UNSPECIFIED: _ClassVar[ScaleRule]
    SCALE_RULE_FLOOR: _ClassVar[ScaleRule]
    SCALE_RULE_RCEIL: _ClassVar[ScaleRule]
    SCALE_RULE_EVEN: _ClassVar[ScaleRule]
    SCALE_RULE_NEAREST: _ClassVar[ScaleRule]

class Granularity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANULARITY_UNSPECIFIED: _ClassVar[Granularity]
    GRANULARITY_NONE: _ClassVar[Granularity]
    GRANULARITY_TENSOR: _ClassVar[Granularity]
    GRANULARITY_CHANNEL: _ClassVar[Granularity]
    GRANULARITY_TOKEN: _ClassVar[Granularity]
    GRANULARITY_GROUP: _ClassVar[Granularity]
    GRANULARITY_BLOCK: _ClassVar[Granularity]

class Rounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUNDING_UNSPECIFIED: _ClassVar[Rounding]
    ROUNDING_NEAREST_EVEN: _ClassVar[Rounding]
    ROUNDING_STOCHASTIC: _ClassVar[Rounding]
    ROUNDING_NEAREST_AWAY: _ClassVar[Rounding]

class Overflow(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERFLOW_UNSPECIFIED: _ClassVar[Overflow]
    OVERFLOW_SATURATE: _ClassVar[Overflow]
    OVERFLOW_NONFINITE: _ClassVar[Overflow]

class NanPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NAN_POLICY_UNSPECIFIED: _ClassVar[NanPolicy]
    NAN_POLICY_REJECT: _ClassVar[NanPolicy]
    NAN_POLICY_ZERO: _ClassVar[NanPolicy]
    NAN_POLICY_PROPAGATE: _ClassVar[NanPolicy]

class Packing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACKING_UNSPECIFIED: _ClassVar[Packing]
    PACKING_BITSTREAM: _ClassVar[Packing]
    PACKING_INT32_OFFSET: _ClassVar[Packing]
    PACKING_HIGH_NIBBLE_FIRST: _ClassVar[Packing]

class CalibrationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_METHOD_UNSPECIFIED: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_AMAX: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_PERCENTILE: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_MSE: _ClassVar[CalibrationMethod]

class Part(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PART_UNSPECIFIED: _ClassVar[Part]
    PART_CODES: _ClassVar[Part]
    PART_SCALES: _ClassVar[Part]
    PART_ZERO_POINTS: _ClassVar[Part]
DTYPE_UNSPECIFIED: DType
DTYPE_F32: DType
DTYPE_F16: DType
DTYPE_BF16: DType
DTYPE_U8: DType
DTYPE_I8: DType
DTYPE_I32: DType
FORMAT_UNSPECIFIED: Format
FORMAT_INT8: Format
FORMAT_INT4: Format
FORMAT_UINT8: Format
FORMAT_UINT4: Format
FORMAT_FP8_E4M3: Format
FORMAT_FP8_E5M2: Format
FORMAT_MXFP8_E4M3: Format
FORMAT_MXFP8_E5M2: Format
FORMAT_MXFP6_E3M2: Format
FORMAT_MXFP6_E2M3: Format
FORMAT_MXFP4: Format
FORMAT_MXINT8: Format
FORMAT_NVFP4: Format
FORMAT_HIF8: Format
FORMAT_NF4: Format
FORMAT_FLATQUANT_INT4: Format
SCALE_RULE_UNSPECIFIED: ScaleRule
SCALE_RULE_FLOOR: ScaleRule
SCALE_RULE_RCEIL: ScaleRule
SCALE_RULE_EVEN: ScaleRule
SCALE_RULE_NEAREST: ScaleRule
GRANULARITY_UNSPECIFIED: Granularity
GRANULARITY_NONE: Granularity
GRANULARITY_TENSOR: Granularity
GRANULARITY_CHANNEL: Granularity
GRANULARITY_TOKEN: Granularity
GRANULARITY_GROUP: Granularity
GRANULARITY_BLOCK: Granularity
ROUNDING_UNSPECIFIED: Rounding
ROUNDING_NEAREST_EVEN: Rounding
ROUNDING_STOCHASTIC: Rounding
ROUNDING_NEAREST_AWAY: Rounding
OVERFLOW_UNSPECIFIED: Overflow
OVERFLOW_SATURATE: Overflow
OVERFLOW_NONFINITE: Overflow
NAN_POLICY_UNSPECIFIED: NanPolicy
NAN_POLICY_REJECT: NanPolicy
NAN_POLICY_ZERO: NanPolicy
NAN_POLICY_PROPAGATE: NanPolicy
PACKING_UNSPECIFIED: Packing
PACKING_BITSTREAM: Packing
PACKING_INT32_OFFSET: Packing
PACKING_HIGH_NIBBLE_FIRST: Packing
CALIBRATION_METHOD_UNSPECIFIED: CalibrationMethod
CALIBRATION_METHOD_AMAX: CalibrationMethod
CALIBRATION_METHOD_PERCENTILE: CalibrationMethod
CALIBRATION_METHOD_MSE: CalibrationMethod
PART_UNSPECIFIED: Part
PART_CODES: Part
PART_SCALES: Part
PART_ZERO_POINTS: Part

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class QuantSpec(_message.Message):
    __slots__ = ("descriptor_string", "format", "granularity", "axis", "group_size", "block_rows", "block_cols", "asymmetric", "rounding", "seed", "overflow", "clip_ratio", "nan_policy", "packing", "static_scales", "static_zero_points", "scale_rule", "double_quant", "flatquant_left", "flatquant_right", "static_global_scale")
    DESCRIPTOR_STRING_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ROWS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COLS_FIELD_NUMBER: _ClassVar[int]
    ASYMMETRIC_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    CLIP_RATIO_FIELD_NUMBER: _ClassVar[int]
    NAN_POLICY_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    STATIC_SCALES_FIELD_NUMBER: _ClassVar[int]
    STATIC_ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    SCALE_RULE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_FIELD_NUMBER: _ClassVar[int]
    FLATQUANT_LEFT_FIELD_NUMBER: _ClassVar[int]
    FLATQUANT_RIGHT_FIELD_NUMBER: _ClassVar[int]
    STATIC_GLOBAL_SCALE_FIELD_NUMBER: _ClassVar[int]
    descriptor_string: str
    format: Format
    granularity: Granularity
    axis: int
    group_size: int
    block_rows: int
    block_cols: int
    asymmetric: bool
    rounding: Rounding
    seed: int
    overflow: Overflow
    clip_ratio: float
    nan_policy: NanPolicy
    packing: Packing
    static_scales: Tensor
    static_zero_points: Tensor
    scale_rule: ScaleRule
    double_quant: bool
    flatquant_left: Tensor
    flatquant_right: Tensor
    static_global_scale: float
    def __init__(self, descriptor_string: _Optional[str] = ..., format: _Optional[_Union[Format, str]] = ..., granularity: _Optional[_Union[Granularity, str]] = ..., axis: _Optional[int] = ..., group_size: _Optional[int] = ..., block_rows: _Optional[int] = ..., block_cols: _Optional[int] = ..., asymmetric: _Optional[bool] = ..., rounding: _Optional[_Union[Rounding, str]] = ..., seed: _Optional[int] = ..., overflow: _Optional[_Union[Overflow, str]] = ..., clip_ratio: _Optional[float] = ..., nan_policy: _Optional[_Union[NanPolicy, str]] = ..., packing: _Optional[_Union[Packing, str]] = ..., static_scales: _Optional[_Union[Tensor, _Mapping]] = ..., static_zero_points: _Optional[_Union[Tensor, _Mapping]] = ..., scale_rule: _Optional[_Union[ScaleRule, str]] = ..., double_quant: _Optional[bool] = ..., flatquant_left: _Optional[_Union[Tensor, _Mapping]] = ..., flatquant_right: _Optional[_Union[Tensor, _Mapping]] = ..., static_global_scale: _Optional[float] = ...) -> None: ...

class QuantizedTensor(_message.Message):
    __slots__ = ("spec", "shape", "source_dtype", "codes", "scales", "zero_points", "global_scale", "double_quant_scales", "double_quant_offset")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCALE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_SCALES_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    spec: QuantSpec
    shape: _containers.RepeatedScalarFieldContainer[int]
    source_dtype: DType
    codes: Tensor
    scales: Tensor
    zero_points: Tensor
    global_scale: float
    double_quant_scales: Tensor
    double_quant_offset: float
    def __init__(self, spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., shape: _Optional[_Iterable[int]] = ..., source_dtype: _Optional[_Union[DType, str]] = ..., codes: _Optional[_Union[Tensor, _Mapping]] = ..., scales: _Optional[_Union[Tensor, _Mapping]] = ..., zero_points: _Optional[_Union[Tensor, _Mapping]] = ..., global_scale: _Optional[float] = ..., double_quant_scales: _Optional[_Union[Tensor, _Mapping]] = ..., double_quant_offset: _Optional[float] = ...) -> None: ...

class ErrorMetrics(_message.Message):
    __slots__ = ("mse", "rmse", "max_abs_err", "sqnr_db", "cosine", "rel_fro_err", "count", "nonfinite_count")
    MSE_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERR_FIELD_NUMBER: _ClassVar[int]
    SQNR_DB_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    REL_FRO_ERR_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    mse: float
    rmse: float
    max_abs_err: float
    sqnr_db: float
    cosine: float
    rel_fro_err: float
    count: int
    nonfinite_count: int
    def __init__(self, mse: _Optional[float] = ..., rmse: _Optional[float] = ..., max_abs_err: _Optional[float] = ..., sqnr_db: _Optional[float] = ..., cosine: _Optional[float] = ..., rel_fro_err: _Optional[float] = ..., count: _Optional[int] = ..., nonfinite_count: _Optional[int] = ...) -> None: ...

class QuantizeRequest(_message.Message):
    __slots__ = ("input", "spec", "skip_metrics")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SKIP_METRICS_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    spec: QuantSpec
    skip_metrics: bool
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., skip_metrics: _Optional[bool] = ...) -> None: ...

class QuantizeResponse(_message.Message):
    __slots__ = ("quantized", "metrics", "backend")
    QUANTIZED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    quantized: QuantizedTensor
    metrics: ErrorMetrics
    backend: str
    def __init__(self, quantized: _Optional[_Union[QuantizedTensor, _Mapping]] = ..., metrics: _Optional[_Union[ErrorMetrics, _Mapping]] = ..., backend: _Optional[str] = ...) -> None: ...

class DequantizeRequest(_message.Message):
    __slots__ = ("quantized", "output_dtype")
    QUANTIZED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    quantized: QuantizedTensor
    output_dtype: DType
    def __init__(self, quantized: _Optional[_Union[QuantizedTensor, _Mapping]] = ..., output_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class DequantizeResponse(_message.Message):
    __slots__ = ("output", "backend")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    backend: str
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., backend: _Optional[str] = ...) -> None: ...

class QuantDequantRequest(_message.Message):
    __slots__ = ("input", "spec", "output_dtype", "skip_metrics")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SKIP_METRICS_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    spec: QuantSpec
    output_dtype: DType
    skip_metrics: bool
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., output_dtype: _Optional[_Union[DType, str]] = ..., skip_metrics: _Optional[bool] = ...) -> None: ...

class QuantDequantResponse(_message.Message):
    __slots__ = ("output", "metrics", "spec", "backend")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    metrics: ErrorMetrics
    spec: QuantSpec
    backend: str
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., metrics: _Optional[_Union[ErrorMetrics, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., backend: _Optional[str] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("input", "spec", "method", "percentile", "search_steps", "search_min_ratio")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_MIN_RATIO_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    spec: QuantSpec
    method: CalibrationMethod
    percentile: float
    search_steps: int
    search_min_ratio: float
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., method: _Optional[_Union[CalibrationMethod, str]] = ..., percentile: _Optional[float] = ..., search_steps: _Optional[int] = ..., search_min_ratio: _Optional[float] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ("spec", "scales", "zero_points", "amax", "clip_ratios", "metrics", "backend")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINTS_FIELD_NUMBER: _ClassVar[int]
    AMAX_FIELD_NUMBER: _ClassVar[int]
    CLIP_RATIOS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    spec: QuantSpec
    scales: Tensor
    zero_points: Tensor
    amax: Tensor
    clip_ratios: Tensor
    metrics: ErrorMetrics
    backend: str
    def __init__(self, spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., scales: _Optional[_Union[Tensor, _Mapping]] = ..., zero_points: _Optional[_Union[Tensor, _Mapping]] = ..., amax: _Optional[_Union[Tensor, _Mapping]] = ..., clip_ratios: _Optional[_Union[Tensor, _Mapping]] = ..., metrics: _Optional[_Union[ErrorMetrics, _Mapping]] = ..., backend: _Optional[str] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FormatInfo(_message.Message):
    __slots__ = ("format", "name", "bits", "element_kind", "max_finite", "granularities", "supports_asymmetric", "has_nan", "has_inf", "descriptors")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_FINITE_FIELD_NUMBER: _ClassVar[int]
    GRANULARITIES_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_ASYMMETRIC_FIELD_NUMBER: _ClassVar[int]
    HAS_NAN_FIELD_NUMBER: _ClassVar[int]
    HAS_INF_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    format: Format
    name: str
    bits: int
    element_kind: str
    max_finite: float
    granularities: _containers.RepeatedScalarFieldContainer[Granularity]
    supports_asymmetric: bool
    has_nan: bool
    has_inf: bool
    descriptors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, format: _Optional[_Union[Format, str]] = ..., name: _Optional[str] = ..., bits: _Optional[int] = ..., element_kind: _Optional[str] = ..., max_finite: _Optional[float] = ..., granularities: _Optional[_Iterable[_Union[Granularity, str]]] = ..., supports_asymmetric: _Optional[bool] = ..., has_nan: _Optional[bool] = ..., has_inf: _Optional[bool] = ..., descriptors: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_tensor_bytes", "max_queue", "workers", "stream_chunk_bytes", "max_rank")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STREAM_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RANK_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_tensor_bytes: int
    max_queue: int
    workers: int
    stream_chunk_bytes: int
    max_rank: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_tensor_bytes: _Optional[int] = ..., max_queue: _Optional[int] = ..., workers: _Optional[int] = ..., stream_chunk_bytes: _Optional[int] = ..., max_rank: _Optional[int] = ...) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("version", "formats", "granularities", "backends", "active_backend", "limits", "descriptors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    GRANULARITIES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    version: str
    formats: _containers.RepeatedCompositeFieldContainer[FormatInfo]
    granularities: _containers.RepeatedScalarFieldContainer[Granularity]
    backends: _containers.RepeatedScalarFieldContainer[str]
    active_backend: str
    limits: Limits
    descriptors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., formats: _Optional[_Iterable[_Union[FormatInfo, _Mapping]]] = ..., granularities: _Optional[_Iterable[_Union[Granularity, str]]] = ..., backends: _Optional[_Iterable[str]] = ..., active_backend: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., descriptors: _Optional[_Iterable[str]] = ...) -> None: ...

class DataChunk(_message.Message):
    __slots__ = ("part", "data")
    PART_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    part: Part
    data: bytes
    def __init__(self, part: _Optional[_Union[Part, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class QuantizeStreamRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: QuantizeRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[QuantizeRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class QuantizeStreamResponse(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: QuantizeResponse
    data: DataChunk
    def __init__(self, header: _Optional[_Union[QuantizeResponse, _Mapping]] = ..., data: _Optional[_Union[DataChunk, _Mapping]] = ...) -> None: ...

class DequantizeStreamRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DequantizeRequest
    data: DataChunk
    def __init__(self, header: _Optional[_Union[DequantizeRequest, _Mapping]] = ..., data: _Optional[_Union[DataChunk, _Mapping]] = ...) -> None: ...

class DequantizeStreamResponse(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: DequantizeResponse
    data: bytes
    def __init__(self, header: _Optional[_Union[DequantizeResponse, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload", "response_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    response_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class GemmRequest(_message.Message):
    __slots__ = ("a", "b", "a_spec", "b_spec", "bias", "c", "alpha", "beta", "alpha_is_zero", "output_dtype", "skip_metrics", "b_handle")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    A_SPEC_FIELD_NUMBER: _ClassVar[int]
    B_SPEC_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_IS_ZERO_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SKIP_METRICS_FIELD_NUMBER: _ClassVar[int]
    B_HANDLE_FIELD_NUMBER: _ClassVar[int]
    a: Tensor
    b: Tensor
    a_spec: QuantSpec
    b_spec: QuantSpec
    bias: Tensor
    c: Tensor
    alpha: float
    beta: float
    alpha_is_zero: bool
    output_dtype: DType
    skip_metrics: bool
    b_handle: str
    def __init__(self, a: _Optional[_Union[Tensor, _Mapping]] = ..., b: _Optional[_Union[Tensor, _Mapping]] = ..., a_spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., b_spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., bias: _Optional[_Union[Tensor, _Mapping]] = ..., c: _Optional[_Union[Tensor, _Mapping]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., alpha_is_zero: _Optional[bool] = ..., output_dtype: _Optional[_Union[DType, str]] = ..., skip_metrics: _Optional[bool] = ..., b_handle: _Optional[str] = ...) -> None: ...

class GemmResponse(_message.Message):
    __slots__ = ("output", "metrics", "a_spec", "b_spec", "backend", "metrics_reference")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    A_SPEC_FIELD_NUMBER: _ClassVar[int]
    B_SPEC_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    METRICS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    metrics: ErrorMetrics
    a_spec: QuantSpec
    b_spec: QuantSpec
    backend: str
    metrics_reference: str
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., metrics: _Optional[_Union[ErrorMetrics, _Mapping]] = ..., a_spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., b_spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., backend: _Optional[str] = ..., metrics_reference: _Optional[str] = ...) -> None: ...

class RegisterWeightRequest(_message.Message):
    __slots__ = ("weight", "spec", "name", "keep_original", "skip_metrics")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEEP_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    SKIP_METRICS_FIELD_NUMBER: _ClassVar[int]
    weight: Tensor
    spec: QuantSpec
    name: str
    keep_original: bool
    skip_metrics: bool
    def __init__(self, weight: _Optional[_Union[Tensor, _Mapping]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., name: _Optional[str] = ..., keep_original: _Optional[bool] = ..., skip_metrics: _Optional[bool] = ...) -> None: ...

class WeightInfo(_message.Message):
    __slots__ = ("handle", "name", "dtype", "shape", "spec", "bytes", "keep_original", "backend")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    KEEP_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    handle: str
    name: str
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    spec: QuantSpec
    bytes: int
    keep_original: bool
    backend: str
    def __init__(self, handle: _Optional[str] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., spec: _Optional[_Union[QuantSpec, _Mapping]] = ..., bytes: _Optional[int] = ..., keep_original: _Optional[bool] = ..., backend: _Optional[str] = ...) -> None: ...

class RegisterWeightResponse(_message.Message):
    __slots__ = ("weight", "metrics", "registered_bytes", "cap_bytes")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    weight: WeightInfo
    metrics: ErrorMetrics
    registered_bytes: int
    cap_bytes: int
    def __init__(self, weight: _Optional[_Union[WeightInfo, _Mapping]] = ..., metrics: _Optional[_Union[ErrorMetrics, _Mapping]] = ..., registered_bytes: _Optional[int] = ..., cap_bytes: _Optional[int] = ...) -> None: ...

class RegisterWeightStreamRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: RegisterWeightRequest
    data: bytes
    def __init__(self, header: _Optional[_Union[RegisterWeightRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ListWeightsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWeightsResponse(_message.Message):
    __slots__ = ("weights", "registered_bytes", "cap_bytes")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedCompositeFieldContainer[WeightInfo]
    registered_bytes: int
    cap_bytes: int
    def __init__(self, weights: _Optional[_Iterable[_Union[WeightInfo, _Mapping]]] = ..., registered_bytes: _Optional[int] = ..., cap_bytes: _Optional[int] = ...) -> None: ...

class DropWeightRequest(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    def __init__(self, handle: _Optional[str] = ...) -> None: ...

class DropWeightResponse(_message.Message):
    __slots__ = ("freed_bytes",)
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    freed_bytes: int
    def __init__(self, freed_bytes: _Optional[int] = ...) -> None: ...
