// Quantization formats and their traits table: one constexpr row per format.
//
// Everything that differs between formats is a column here; code that needs a property reads
// the row instead of switching on the enum. Adding a format is adding a row (plus its
// encode/decode in codec.h when it brings a new element kind).
//
//   const FormatTraits& t = Traits(Format::kInt4);   // t.bits == 4, t.qmax == 7
//   for (Format f : AllFormats()) { ... }             // what tests iterate over
//   absl::StatusOr<Format> f = FormatFromName("fp8-e4m3");
#ifndef QUANTD_FORMAT_H_
#define QUANTD_FORMAT_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace quantd {

// Mirrors quantd.v1.Format value for value (static_asserts in server/convert.cc).
enum class Format : int32_t {
  kUnspecified = 0,
  kInt8 = 1,
  kInt4 = 2,
  kUint8 = 3,
  kUint4 = 4,
  kFp8E4M3 = 5,
  kFp8E5M2 = 6,
  kMxfp8E4M3 = 7,
  kMxfp8E5M2 = 8,
  kMxfp6E3M2 = 9,
  kMxfp6E2M3 = 10,
  kMxfp4 = 11,
  kMxint8 = 12,
  kNvfp4 = 13,
  kHif8 = 14,
  kNf4 = 15,
  kFlatquantInt4 = 16,
};
inline constexpr int kNumFormats = 17;  // rows of the traits table, kUnspecified included

enum class ElementKind : uint8_t {
  kNone,       // the kUnspecified row
  kInt,        // two's complement (signed) or plain binary (unsigned) integers
  kMinifloat,  // sign, exponent, mantissa: the one minifloat engine in codec.h
  kHif8,       // Ascend HiFloat8: tapered precision, a prefix field sizes the exponent (codec.h)
  kNf4,        // bitsandbytes NF4: the index of one of 16 normal quantiles (codec.h)
};

// How a minifloat spends its all-ones exponent.
enum class NanEncoding : uint8_t {
  kNone,     // finite-only (E3M2, E2M3, E2M1, eXmY with X < 5)
  kAllOnes,  // only S.1111.111 is NaN, no Inf (OCP E4M3 "fn")
  kIeee,     // exponent all ones: mantissa 0 = Inf, else NaN (E5M2, eXmY with X >= 5)
};

// A minifloat's parameters, a plain struct so kernels can take it by value.
struct MinifloatParams {
  int exp_bits = 0;
  int man_bits = 0;
  int bias = 0;
  uint32_t max_code = 0;  // magnitude code of the largest finite value
  NanEncoding nan_encoding = NanEncoding::kNone;
};

// Granularities as a bitmask of (1 << Granularity) for the `granularities` column.
enum class Granularity : int32_t {
  kUnspecified = 0,
  kNone = 1,
  kTensor = 2,
  kChannel = 3,
  kToken = 4,
  kGroup = 5,
  kBlock = 6,
};
inline constexpr int kNumGranularities = 7;
constexpr uint32_t GranularityBit(Granularity g) { return 1u << static_cast<int>(g); }
inline constexpr uint32_t kFreeScaleGranularities =
    GranularityBit(Granularity::kTensor) | GranularityBit(Granularity::kChannel) |
    GranularityBit(Granularity::kToken) | GranularityBit(Granularity::kGroup) |
    GranularityBit(Granularity::kBlock);

enum class ScaleKind : uint8_t {
  kNone,
  kF32,   // free fp32 scale per group
  kE8M0,  // a power of two per block, sent as its E8M0 code (MX)
  kE4M3,  // an E4M3 value per block under one fp32 global scale per tensor (NVFP4)
};

// Block formats (MX, NVFP4, NF4): blocks are the format's only granularity, groups of `size`
// elements by default and of min_size..max_size on request; along the last axis, or over the
// flattened tensor (NF4, as bitsandbytes). All zero for formats with free scales.
struct BlockParams {
  int size = 0;
  int min_size = 0;
  int max_size = 0;
  bool flattened = false;
};

// OCP MX v1.0 parameters (FORMATS.md "Block formats"); all zero for other formats. The shared
// exponent X comes from the block's amax and the element's largest power of two (emax); `mbits`
// (mantissa bits) serves the EVEN scale rule. Element codes hold v / 2^X, except that MXINT8's
// integers carry an implicit 2^-6: the fp32 scale kept internally is then 2^(X -
// implicit_exponent), and the E8M0 code sent is still X + 127.
struct MxParams {
  int emax = 0;
  int mbits = 0;
  int implicit_exponent = 0;
};

struct FormatTraits {
  Format format;
  absl::string_view name;  // canonical descriptor, as in FORMATS.md
  int bits;                // bits per element code
  ElementKind kind;
  bool is_signed;
  // Integer formats: the code range.
  int qmin;
  int qmax;
  // Minifloat formats: the engine's parameters.
  MinifloatParams minifloat;
  // The divisor of a symmetric scale, s = amax / scale_divisor: qmax for integers, the max
  // finite value for minifloats.
  float scale_divisor;
  bool symmetric_ok;
  bool asymmetric_ok;
  uint32_t granularities;  // GranularityBit mask of what this format accepts
  ScaleKind scale_kind;
  bool has_nan;
  bool has_inf;
  BlockParams block;
  MxParams mx;
  // FlatQuant: each row is transformed (P1ᵀ·X·P2 on its [n1, n2] view, quantd/flatquant.h)
  // before it is quantized.
  bool kronecker_transform;
};

namespace format_internal {
inline constexpr uint32_t kIntGranularities = kFreeScaleGranularities;
inline constexpr uint32_t kMinifloatGranularities =
    kFreeScaleGranularities | GranularityBit(Granularity::kNone);
// Block formats: blocks along the last axis, i.e. groups of the block size.
inline constexpr uint32_t kBlockGranularities = GranularityBit(Granularity::kGroup);
}  // namespace format_internal

// clang-format off
inline constexpr std::array<FormatTraits, kNumFormats> kFormatTraits = {{
//  format                name          bits kind                  signed qmin  qmax minifloat {E, M, bias, max_code, nan}      divisor   sym    asym   granularities                              scale            nan    inf    block {size, min, max, flat}   mx {emax, mbits, implicit}  kronecker
  {Format::kUnspecified, "unspecified", 0,  ElementKind::kNone,      false,   0,   0, {},                                       0.0f,     false, false, 0,                                          ScaleKind::kNone, false, false, {},               {}, false},
  {Format::kInt8,        "int8",        8,  ElementKind::kInt,       true, -128, 127, {},                                       127.0f,   true,  true,  format_internal::kIntGranularities,       ScaleKind::kF32, false, false, {},               {}, false},
  {Format::kInt4,        "int4",        4,  ElementKind::kInt,       true,   -8,   7, {},                                       7.0f,     true,  true,  format_internal::kIntGranularities,       ScaleKind::kF32, false, false, {},               {}, false},
  {Format::kUint8,       "uint8",       8,  ElementKind::kInt,       false,   0, 255, {},                                       255.0f,   false, true,  format_internal::kIntGranularities,       ScaleKind::kF32, false, false, {},               {}, false},
  {Format::kUint4,       "uint4",       4,  ElementKind::kInt,       false,   0,  15, {},                                       15.0f,    false, true,  format_internal::kIntGranularities,       ScaleKind::kF32, false, false, {},               {}, false},
  {Format::kFp8E4M3,     "fp8-e4m3",    8,  ElementKind::kMinifloat, true,    0,   0, {4, 3,  7, 0x7E, NanEncoding::kAllOnes}, 448.0f,   true,  false, format_internal::kMinifloatGranularities, ScaleKind::kF32, true,  false, {},               {}, false},
  {Format::kFp8E5M2,     "fp8-e5m2",    8,  ElementKind::kMinifloat, true,    0,   0, {5, 2, 15, 0x7B, NanEncoding::kIeee},    57344.0f, true,  false, format_internal::kMinifloatGranularities, ScaleKind::kF32, true,  true,  {},               {}, false},
  // MX (OCP MX v1.0): the divisor is the element's largest value (the RCEIL rule). Blocks of 32;
  // other sizes serve the fake_quant_ops grammar (e2m1k8b16).
  {Format::kMxfp8E4M3,   "mxfp8",       8,  ElementKind::kMinifloat, true,    0,   0, {4, 3,  7, 0x7E, NanEncoding::kAllOnes}, 448.0f,   true,  false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, true,  false, {32, 1, 1 << 20}, { 8, 3, 0}, false},
  {Format::kMxfp8E5M2,   "mxfp8e5m2",   8,  ElementKind::kMinifloat, true,    0,   0, {5, 2, 15, 0x7B, NanEncoding::kIeee},    57344.0f, true,  false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, true,  true,  {32, 1, 1 << 20}, {15, 2, 0}, false},
  {Format::kMxfp6E3M2,   "mxfp6e3m2",   6,  ElementKind::kMinifloat, true,    0,   0, {3, 2,  3, 0x1F, NanEncoding::kNone},    28.0f,    true,  false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, false, false, {32, 1, 1 << 20}, { 4, 2, 0}, false},
  {Format::kMxfp6E2M3,   "mxfp6e2m3",   6,  ElementKind::kMinifloat, true,    0,   0, {2, 3,  1, 0x1F, NanEncoding::kNone},    7.5f,     true,  false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, false, false, {32, 1, 1 << 20}, { 2, 3, 0}, false},
  {Format::kMxfp4,       "mxfp4",       4,  ElementKind::kMinifloat, true,    0,   0, {2, 1,  1, 0x07, NanEncoding::kNone},    6.0f,     true,  false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, false, false, {32, 1, 1 << 20}, { 2, 1, 0}, false},
  {Format::kMxint8,      "mxint8",      8,  ElementKind::kInt,       true, -127, 127, {},                                       1.984375f, true, false, format_internal::kBlockGranularities,      ScaleKind::kE8M0, false, false, {32, 1, 1 << 20}, { 0, 6, 6}, false},
  // NVFP4: E2M1 in blocks of 16; the block scales are E4M3 values under a per-tensor global scale.
  {Format::kNvfp4,       "nvfp4",       4,  ElementKind::kMinifloat, true,    0,   0, {2, 1,  1, 0x07, NanEncoding::kNone},    6.0f,     true,  false, format_internal::kBlockGranularities,      ScaleKind::kE4M3, false, false, {16, 16, 16},      {}, false},
  // HiF8: scales put the amax at 8, the end of the 3-mantissa-bit region (fake_quant_ops).
  {Format::kHif8,        "hif8",        8,  ElementKind::kHif8,      true,    0,   0, {},                                       8.0f,     true,  false, format_internal::kMinifloatGranularities, ScaleKind::kF32,  true,  true,  {},               {}, false},
  // NF4 (bitsandbytes): s = absmax per block of 64 (32..4096) over the flattened tensor.
  {Format::kNf4,         "nf4",         4,  ElementKind::kNf4,       false,   0,  15, {},                                       1.0f,     true,  false, format_internal::kBlockGranularities,      ScaleKind::kF32,  false, false, {64, 32, 4096, true}, {}, false},
  // FlatQuant: per-token INT4 of each row's Kronecker transform P1ᵀ·X·P2 (quantd/flatquant.h).
  {Format::kFlatquantInt4, "flatquant-int4", 4, ElementKind::kInt,   true,   -8,   7, {},                                       7.0f,     true,  false, GranularityBit(Granularity::kToken),         ScaleKind::kF32,  false, false, {},               {}, true},
}};
// clang-format on

namespace format_internal {
constexpr bool RowsMatchEnum() {
  for (int i = 0; i < kNumFormats; ++i) {
    if (static_cast<int>(kFormatTraits[i].format) != i) return false;
  }
  return true;
}
}  // namespace format_internal
static_assert(format_internal::RowsMatchEnum(), "kFormatTraits row i must describe Format i");

constexpr const FormatTraits& Traits(Format format) {
  return kFormatTraits[static_cast<int>(format)];
}

// True for every value that names a row (kUnspecified included).
constexpr bool IsValidFormat(int32_t value) { return value >= 0 && value < kNumFormats; }

// Every real format (kUnspecified excluded), in enum order: what tests iterate over.
std::vector<Format> AllFormats();

// Canonical name ("int8", "fp8-e4m3", ...).
absl::string_view FormatName(Format format);
absl::string_view GranularityName(Granularity granularity);

// Parses a canonical format name; the error lists every accepted name.
[[nodiscard]] absl::StatusOr<Format> FormatFromName(absl::string_view name);
[[nodiscard]] absl::StatusOr<Granularity> GranularityFromName(absl::string_view name);

inline bool FormatAllows(Format format, Granularity granularity) {
  return (Traits(format).granularities & GranularityBit(granularity)) != 0;
}

// The granularity a spec that names none gets: block formats their blocks (groups), FlatQuant
// its tokens, the rest one scale for the tensor.
inline Granularity DefaultGranularity(Format format) {
  const FormatTraits& t = Traits(format);
  if (t.block.size > 0) return Granularity::kGroup;
  return t.kronecker_transform ? Granularity::kToken : Granularity::kTensor;
}

}  // namespace quantd

#endif  // QUANTD_FORMAT_H_
