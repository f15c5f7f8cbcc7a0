// Shapes, dtypes and the overflow-checked size arithmetic every request goes through.
#include "quantd/tensor.h"

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quantd {
namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  int size;
};

constexpr DTypeInfo kDTypes[kNumDTypes] = {
    {DType::kUnspecified, "UNSPECIFIED", 0},
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kI32, "I32", 4},
};

constexpr bool DTypeRowsMatch() {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (static_cast<int>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(DTypeRowsMatch(), "kDTypes row i must describe DType i");

const DTypeInfo& Info(DType dtype) {
  const int index = static_cast<int>(dtype);
  return kDTypes[(index >= 0 && index < kNumDTypes) ? index : 0];
}

}  // namespace

int DTypeSize(DType dtype) { return Info(dtype).size; }
const char* DTypeName(DType dtype) { return Info(dtype).name; }

bool IsFloatInput(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

std::string ShapeToString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<int64_t> NumElements(const Shape& shape) {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape has rank ", shape.size(), "; quantd accepts rank up to ", kMaxRank));
  }
  int64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeToString(shape), " has dim ", i,
                                                     " = ", shape[i], "; dims must be >= 0"));
    }
    if (shape[i] != 0 && numel > std::numeric_limits<int64_t>::max() / shape[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeToString(shape), " has more elements than fit in int64"));
    }
    numel *= shape[i];
  }
  return numel;
}

absl::Status CheckByteLength(DType dtype, const Shape& shape, int64_t byte_length) {
  const int element_size = DTypeSize(dtype);
  if (element_size == 0) {
    return absl::InvalidArgumentError("tensor dtype is unspecified; set dtype (F32, F16, BF16)");
  }
  absl::StatusOr<int64_t> numel = NumElements(shape);
  if (!numel.ok()) return numel.status();
  if (*numel > std::numeric_limits<int64_t>::max() / element_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", ShapeToString(shape), " of ", DTypeName(dtype), " needs more than 2^63 bytes"));
  }
  const int64_t expected = *numel * element_size;
  if (expected != byte_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeToString(shape), " has ", *numel, " elements but data holds ",
                     byte_length, " bytes; ", DTypeName(dtype), " needs ", expected));
  }
  return absl::OkStatus();
}

}  // namespace quantd
