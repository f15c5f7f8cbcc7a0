// QuantSpec: what to quantize how; ResolveSpec fills in defaults and checks a spec against
// its format and the input's shape; ComputeLayout says how big and how shaped every output is.
//
//   QuantSpec requested;
//   QUANTD_RETURN_IF_ERROR(ApplyDescriptor("int4-g128", &requested));
//   QUANTD_ASSIGN_OR_RETURN(QuantSpec spec, ResolveSpec(requested, shape));
//   QUANTD_ASSIGN_OR_RETURN(QuantLayout layout, ComputeLayout(spec, shape));
//   std::vector<uint8_t> codes(layout.code_bytes);
//   std::vector<float> scales(layout.geometry.num_scales);
//
// Every error says what to change.
#ifndef QUANTD_SPEC_H_
#define QUANTD_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "quantd/codec.h"
#include "quantd/format.h"
#include "quantd/hd.h"
#include "quantd/tensor.h"

namespace quantd {

// Zero values mean "the format's default"; ResolveSpec replaces every one of them.
struct QuantSpec {
  Format format = Format::kUnspecified;
  Granularity granularity = Granularity::kUnspecified;
  int axis = 0;            // kChannel; negative counts from the end
  int64_t group_size = 0;  // kGroup
  int64_t block_rows = 0;  // kBlock
  int64_t block_cols = 0;  // kBlock
  bool asymmetric = false;
  Rounding rounding = Rounding::kUnspecified;
  uint64_t seed = 0;
  Overflow overflow = Overflow::kUnspecified;
  float clip_ratio = 0.0f;  // (0, 1]; 0 means 1
  NanPolicy nan_policy = NanPolicy::kUnspecified;
  Packing packing = Packing::kUnspecified;
  ScaleRounding scale_rounding = ScaleRounding::kUnspecified;  // MX formats only; FLOOR
  bool double_quant = false;  // NF4 only: quantize the absmax values too (double_quant.h)
  // NVFP4 only: the per-tensor encode scale S_enc given by the caller (finite, > 0), e.g. an
  // earlier response's global_scale or 448 · 6 / an amax the caller tracks (TransformerEngine's
  // amax history). Quantization then skips the tensor's own amax and reads the input once;
  // blocks beyond the given range saturate (block scale 448, elements ±6). 0: S_enc from the
  // tensor's amax.
  float static_global_scale = 0.0f;
  // FlatQuant only: P1 (n1 × n1) and P2 (n2 × n2), row-major, n1 · n2 = the last dim. Both
  // empty: identities of DecomposeDim(last dim), which ResolveSpec fills in.
  std::vector<float> transform_left;
  std::vector<float> transform_right;
  // Caller-given scales (one per scale group, row-major over the scale shape) and, when
  // asymmetric, zero-points. Empty: scales come from the data.
  std::vector<float> static_scales;
  std::vector<int32_t> static_zero_points;

  bool has_static_scales() const { return !static_scales.empty(); }
};

// Sets the format (and, for names that imply them, granularity, group size and asymmetry) that
// `descriptor` names. Fails with the list of accepted names when it names nothing, and when it
// contradicts a field already set in `spec`.
[[nodiscard]] absl::Status ApplyDescriptor(absl::string_view descriptor, QuantSpec* spec);

// The descriptor grammar, for error messages and GetCapabilities.
std::vector<std::string> DescriptorExamples();
std::string DescriptorHelp();

// The canonical descriptor of a resolved spec's format and granularity where one exists
// ("int4-g128", "int8-asym"), else the format name.
std::string DescriptorOf(const QuantSpec& spec);

// Fills every default and checks `requested` against its format's rules and `shape`:
// granularity allowed, axis in range, group / block sizes positive, clip ratio in (0, 1],
// symmetric or asymmetric allowed, overflow and packing supported, static scales finite,
// positive and as many as the granularity needs. The result has no kUnspecified field.
[[nodiscard]] absl::StatusOr<QuantSpec> ResolveSpec(const QuantSpec& requested, const Shape& shape);

// Which scale an element uses: a plain struct kernels take by value. Elements are addressed
// on the 2-D view [rows, cols] of the input, cols = the last dim (1 for rank 0), rows = the
// product of the others.
struct ScaleGeometry {
  Granularity granularity = Granularity::kTensor;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group_rows = 1;        // kBlock: block_rows
  int64_t group_cols = 1;        // kGroup: group_size; kBlock: block_cols
  int64_t groups_per_row = 1;    // kGroup, kBlock: ceil(cols / group_cols)
  int64_t channels = 1;          // kChannel: size of the axis
  int64_t rows_per_channel = 1;  // kChannel on a leading axis: rows sharing one channel index
  bool channel_is_last = false;  // kChannel on the last axis: the channel is the column
  int64_t num_scales = 1;

  QUANTD_HD int64_t Index(int64_t row, int64_t col) const {
    switch (granularity) {
      case Granularity::kToken:
        return row;
      case Granularity::kGroup:
        return row * groups_per_row + col / group_cols;
      case Granularity::kBlock:
        return (row / group_rows) * groups_per_row + col / group_cols;
      case Granularity::kChannel:
        return channel_is_last ? col : (row / rows_per_channel) % channels;
      default:  // kNone, kTensor
        return 0;
    }
  }
};

// Sizes and shapes of everything a quantization produces.
struct QuantLayout {
  Shape shape;  // the input's
  int64_t numel = 0;
  ScaleGeometry geometry;
  Shape scale_shape;  // FORMATS.md: tensor [1], channel [1,..,C,..,1], token [T,1], ...
  DType code_dtype = DType::kU8;
  Shape code_shape;
  int64_t code_row_bytes = 0;  // bytes per row of the 2-D view (rows start on byte boundaries)
  int64_t code_bytes = 0;
  int64_t code_row_words() const { return code_row_bytes / 4; }
};

// `spec` must be resolved (ResolveSpec) for `shape`.
[[nodiscard]] absl::StatusOr<QuantLayout> ComputeLayout(const QuantSpec& spec, const Shape& shape);

// One-line human summary ("int4 group(128) symmetric rne saturate").
std::string SpecToString(const QuantSpec& spec);

absl::string_view RoundingName(Rounding rounding);
absl::string_view OverflowName(Overflow overflow);
[[nodiscard]] absl::StatusOr<Rounding> RoundingFromName(absl::string_view name);
[[nodiscard]] absl::StatusOr<Overflow> OverflowFromName(absl::string_view name);

}  // namespace quantd

#endif  // QUANTD_SPEC_H_
