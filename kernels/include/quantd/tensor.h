// Tensors as the numerics see them: a dtype, an int64 shape and a pointer to little-endian,
// row-major bytes that somebody else owns.
//
//   QUANTD_ASSIGN_OR_RETURN(int64_t n, NumElements(shape));       // overflow-checked
//   QUANTD_RETURN_IF_ERROR(CheckByteLength(DType::kF32, shape, bytes.size()));
//   TensorView x{DType::kF32, shape, bytes.data(), bytes.size()};
//   float v = LoadAsFloat(x.dtype, x.data, i);                       // F32, F16 or BF16
#ifndef QUANTD_TENSOR_H_
#define QUANTD_TENSOR_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quantd/hd.h"

namespace quantd {

// Mirrors quantd.v1.DType value for value.
enum class DType : int32_t {
  kUnspecified = 0,
  kF32 = 1,
  kF16 = 2,
  kBF16 = 3,
  kU8 = 4,
  kI8 = 5,
  kI32 = 6,
};
inline constexpr int kNumDTypes = 7;

// Size in bytes of one element; 0 for kUnspecified.
int DTypeSize(DType dtype);
// "F32", "F16", ... as in safetensors and the error messages.
const char* DTypeName(DType dtype);
// True for the float input types the quantizers accept (F32, F16, BF16).
bool IsFloatInput(DType dtype);

using Shape = std::vector<int64_t>;

// Largest rank accepted anywhere; deeper shapes are refused before any work.
inline constexpr int kMaxRank = 16;

std::string ShapeToString(const Shape& shape);

// Product of the dims, refusing negative dims, ranks above kMaxRank and int64 overflow.
// A rank-0 shape has one element.
[[nodiscard]] absl::StatusOr<int64_t> NumElements(const Shape& shape);

// Checks that `byte_length` equals numel(shape) × sizeof(dtype), with a message that says
// what to fix when it does not.
[[nodiscard]] absl::Status CheckByteLength(DType dtype, const Shape& shape, int64_t byte_length);

// Read-only view of a tensor in host memory.
class TensorUpload;  // backend.h

struct TensorView {
  DType dtype = DType::kUnspecified;
  Shape shape;
  const void* data = nullptr;
  int64_t bytes = 0;
  // The bytes as the backend received them while they arrived (Backend::BeginUpload), or
  // null. With an upload, `data` may be null: the backend computes from its own copy.
  const TensorUpload* upload = nullptr;
};

// Writable view of a tensor in host memory.
struct MutableTensorView {
  DType dtype = DType::kUnspecified;
  Shape shape;
  void* data = nullptr;
  int64_t bytes = 0;
};

// ---- Scalar conversions shared by both backends (exact IEEE, round-half-to-even). ----

QUANTD_HD float BitsToFloat(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

QUANTD_HD uint32_t FloatToBits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  return bits;
}

QUANTD_HD float BF16ToFloat(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

// Round-half-to-even to bfloat16; NaN stays a (quiet) NaN.
QUANTD_HD uint16_t FloatToBF16(float f) {
  uint32_t bits = FloatToBits(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

QUANTD_HD float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return BitsToFloat(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    // Subnormal (or zero): mantissa · 2^-24, exact in fp32.
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Round-half-to-even to IEEE binary16; overflow gives ±Inf, NaN stays NaN.
QUANTD_HD uint16_t FloatToHalf(float f) {
  uint32_t bits = FloatToBits(f);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;   // NaN
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // ≥ 65520 rounds to Inf
  if (magnitude < 0x38800000u) {
    // Result is subnormal in fp16 (|f| < 2^-14): quantum 2^-24. f · 2^24 is exact in fp32
    // and its round-half-to-even integer is the code.
    float scaled = BitsToFloat(magnitude) * 16777216.0f;
    float floor_value = static_cast<float>(static_cast<uint32_t>(scaled));
    float fraction = scaled - floor_value;
    uint32_t code = static_cast<uint32_t>(floor_value);
    if (fraction > 0.5f || (fraction == 0.5f && (code & 1u))) ++code;
    return sign | static_cast<uint16_t>(code);
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits half-to-even.
  uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

// Element i of a float tensor (F32, F16 or BF16) as fp32. Exact for all three.
QUANTD_HD float LoadAsFloat(DType dtype, const void* data, int64_t i) {
  switch (dtype) {
    case DType::kF16:
      return HalfToFloat(static_cast<const uint16_t*>(data)[i]);
    case DType::kBF16:
      return BF16ToFloat(static_cast<const uint16_t*>(data)[i]);
    default:
      return static_cast<const float*>(data)[i];
  }
}

// Stores fp32 `v` as element i of an F32, F16 or BF16 tensor (round-half-to-even).
QUANTD_HD void StoreFromFloat(DType dtype, void* data, int64_t i, float v) {
  switch (dtype) {
    case DType::kF16:
      static_cast<uint16_t*>(data)[i] = FloatToHalf(v);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(data)[i] = FloatToBF16(v);
      break;
    default:
      static_cast<float*>(data)[i] = v;
      break;
  }
}

}  // namespace quantd

#endif  // QUANTD_TENSOR_H_
