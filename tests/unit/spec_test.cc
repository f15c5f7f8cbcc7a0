// Spec resolution, descriptor strings and shape arithmetic: every refusal asserts its specific
// code (kInvalidArgument) and, where the message is the user's guide, what it says.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/backend.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// kUnspecified: the format's default (tensor; MX formats: their blocks of 32).
QuantSpec Spec(Format format, Granularity granularity = Granularity::kUnspecified) {
  QuantSpec spec;
  spec.format = format;
  spec.granularity = granularity;
  return spec;
}

const Shape kMatrix = {4, 8};

// ---- Defaults. ----

TEST(ResolveSpecTest, FillsTheDocumentedDefaults) {
  QuantSpec requested;
  requested.format = Format::kInt8;
  absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, kMatrix);
  ASSERT_THAT(spec, IsOk());
  EXPECT_EQ(spec->granularity, Granularity::kTensor);
  EXPECT_EQ(spec->rounding, Rounding::kNearestEven);
  EXPECT_EQ(spec->overflow, Overflow::kSaturate);
  EXPECT_EQ(spec->nan_policy, NanPolicy::kReject);  // int8 has no NaN
  EXPECT_EQ(spec->packing, Packing::kBitstream);
  EXPECT_EQ(spec->clip_ratio, 1.0f);  // 0 means 1
  EXPECT_FALSE(spec->asymmetric);
  absl::StatusOr<QuantSpec> fp8 = ResolveSpec(Spec(Format::kFp8E4M3), kMatrix);
  ASSERT_THAT(fp8, IsOk());
  EXPECT_EQ(fp8->nan_policy, NanPolicy::kPropagate);  // E4M3 has a NaN
  // Negative axes are normalized.
  QuantSpec channel = Spec(Format::kInt8, Granularity::kChannel);
  channel.axis = -1;
  absl::StatusOr<QuantSpec> c = ResolveSpec(channel, {2, 3, 4});
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->axis, 2);
  // kernels/ choice: block without a size is the 128×128 weight tile.
  absl::StatusOr<QuantSpec> b = ResolveSpec(Spec(Format::kInt8, Granularity::kBlock), kMatrix);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->block_rows, 128);
  EXPECT_EQ(b->block_cols, 128);
}

TEST(ResolveSpecTest, ResolvedSpecsResolveToThemselves) {
  for (Format format : AllFormats()) {
    // Groups where the format takes them (FlatQuant takes tokens only).
    QuantSpec requested =
        Spec(format, FormatAllows(format, Granularity::kGroup) ? Granularity::kGroup
                                                               : DefaultGranularity(format));
    if (requested.granularity == Granularity::kGroup) {
      requested.group_size = Traits(format).block.size > 0 ? Traits(format).block.size : 3;
    }
    requested.asymmetric = !Traits(format).symmetric_ok;
    absl::StatusOr<QuantSpec> once = ResolveSpec(requested, kMatrix);
    ASSERT_THAT(once, IsOk()) << FormatName(format);
    absl::StatusOr<QuantSpec> twice = ResolveSpec(*once, kMatrix);
    ASSERT_THAT(twice, IsOk());
    EXPECT_EQ(SpecToString(*once), SpecToString(*twice));
  }
}

// ---- Refusals. ----

TEST(ResolveSpecTest, RefusesMissingOrBogusFormat) {
  EXPECT_THAT(ResolveSpec(QuantSpec{}, kMatrix),
              StatusIs(kInvalid, HasSubstr("spec names no format")));
  EXPECT_THAT(ResolveSpec(Spec(static_cast<Format>(99)), kMatrix), StatusIs(kInvalid));
  EXPECT_THAT(ResolveSpec(Spec(Format::kInt8, static_cast<Granularity>(42)), kMatrix),
              StatusIs(kInvalid));
  QuantSpec bad_rounding = Spec(Format::kInt8);
  bad_rounding.rounding = static_cast<Rounding>(7);
  EXPECT_THAT(ResolveSpec(bad_rounding, kMatrix), StatusIs(kInvalid));
}

TEST(ResolveSpecTest, GranularityNoneIsForMinifloatsOnly) {
  for (Format format : AllFormats()) {
    const bool minifloat = Traits(format).kind != ElementKind::kInt;  // HiF8 included
    QuantSpec spec = Spec(format, Granularity::kNone);
    spec.asymmetric = !Traits(format).symmetric_ok;
    if (Traits(format).block.size > 0) {
      // A block format's element is meaningless without its block's scale.
      EXPECT_THAT(
          ResolveSpec(spec, kMatrix),
          StatusIs(kInvalid, HasSubstr(absl::StrCat("blocks of ", Traits(format).block.size))))
          << FormatName(format);
    } else if (minifloat) {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk()) << FormatName(format);
    } else {
      EXPECT_THAT(ResolveSpec(spec, kMatrix),
                  StatusIs(kInvalid, HasSubstr("granularity none is a plain cast")))
          << FormatName(format);
    }
  }
}

TEST(ResolveSpecTest, GroupAndBlockNeedPositiveSizes) {
  EXPECT_THAT(ResolveSpec(Spec(Format::kInt4, Granularity::kGroup), kMatrix),
              StatusIs(kInvalid, HasSubstr("group_size > 0")));
  QuantSpec negative = Spec(Format::kInt4, Granularity::kGroup);
  negative.group_size = -128;
  EXPECT_THAT(ResolveSpec(negative, kMatrix), StatusIs(kInvalid));
  QuantSpec half_block = Spec(Format::kInt8, Granularity::kBlock);
  half_block.block_rows = 16;
  EXPECT_THAT(ResolveSpec(half_block, kMatrix), StatusIs(kInvalid, HasSubstr("block_rows")));
  half_block.block_cols = -1;
  EXPECT_THAT(ResolveSpec(half_block, kMatrix), StatusIs(kInvalid));
}

TEST(ResolveSpecTest, RefusesParametersOfAnotherGranularity) {
  // kernels/ choice: a field the granularity does not use is a mistake, not something to ignore.
  QuantSpec axis = Spec(Format::kInt8, Granularity::kTensor);
  axis.axis = 1;
  EXPECT_THAT(ResolveSpec(axis, kMatrix), StatusIs(kInvalid, HasSubstr("axis is set")));
  QuantSpec group = Spec(Format::kInt8, Granularity::kToken);
  group.group_size = 32;
  EXPECT_THAT(ResolveSpec(group, kMatrix), StatusIs(kInvalid, HasSubstr("group_size is set")));
  QuantSpec block = Spec(Format::kInt8, Granularity::kGroup);
  block.group_size = 4;
  block.block_cols = 32;
  EXPECT_THAT(ResolveSpec(block, kMatrix), StatusIs(kInvalid, HasSubstr("block size is set")));
}

TEST(ResolveSpecTest, AxisOutOfRange) {
  QuantSpec spec = Spec(Format::kInt8, Granularity::kChannel);
  for (int axis : {2, 3, -3, -100, 100}) {
    spec.axis = axis;
    EXPECT_THAT(ResolveSpec(spec, kMatrix),
                StatusIs(kInvalid, AllOf(HasSubstr(absl::StrCat("axis ", axis)),
                                         HasSubstr("out of range for shape [4, 8]"))))
        << axis;
  }
  for (int axis : {0, 1, -1, -2}) {
    spec.axis = axis;
    EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk()) << axis;
  }
  spec.axis = 0;
  EXPECT_THAT(ResolveSpec(spec, {}), StatusIs(kInvalid, HasSubstr("rank >= 1")));
}

TEST(ResolveSpecTest, ClipRatio) {
  QuantSpec spec = Spec(Format::kInt8);
  for (float ok : {0.0f, -0.0f, 1.0f, 0.5f, 1e-30f, std::nextafter(1.0f, 0.0f)}) {
    spec.clip_ratio = ok;
    absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, kMatrix);
    ASSERT_THAT(resolved, IsOk()) << ok;
    EXPECT_EQ(resolved->clip_ratio, ok == 0.0f ? 1.0f : ok);
  }
  for (float bad : {1.5f, -0.1f, kNaN, kInf, -kInf, std::nextafter(1.0f, 2.0f)}) {
    spec.clip_ratio = bad;
    EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid, HasSubstr("clip_ratio"))) << bad;
  }
  // kernels/ choice: a clip ratio needs a dynamic scale to shape.
  QuantSpec cast = Spec(Format::kFp8E4M3, Granularity::kNone);
  cast.clip_ratio = 0.5f;
  EXPECT_THAT(ResolveSpec(cast, kMatrix), StatusIs(kInvalid, HasSubstr("plain cast")));
  QuantSpec fixed = Spec(Format::kInt8);
  fixed.static_scales = {1.0f};
  fixed.clip_ratio = 0.5f;
  EXPECT_THAT(ResolveSpec(fixed, kMatrix), StatusIs(kInvalid, HasSubstr("static scales")));
}

TEST(ResolveSpecTest, SymmetryPerFormat) {
  for (Format format : AllFormats()) {
    const oracle::FormatInfo* info = oracle::FindFormat(format);
    ASSERT_NE(info, nullptr);
    for (bool asymmetric : {false, true}) {
      QuantSpec spec = Spec(format);
      spec.asymmetric = asymmetric;
      // Symmetric is the proto3 default, so an asymmetric-only format takes it as "unset".
      const bool allowed = asymmetric ? info->asymmetric_ok : true;
      if (allowed) {
        absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, kMatrix);
        ASSERT_THAT(resolved, IsOk());
        EXPECT_EQ(resolved->asymmetric, asymmetric || !info->symmetric_ok) << FormatName(format);
      } else {
        EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid))
            << FormatName(format) << (asymmetric ? " asymmetric" : " symmetric");
      }
    }
  }
  QuantSpec u8 = Spec(Format::kUint8);
  absl::StatusOr<QuantSpec> u8_resolved = ResolveSpec(u8, kMatrix);
  ASSERT_THAT(u8_resolved, IsOk());
  EXPECT_TRUE(u8_resolved->asymmetric);
  QuantSpec u8_sym;
  EXPECT_THAT(ApplyDescriptor("uint8-sym", &u8_sym),
              StatusIs(kInvalid, HasSubstr("asymmetric only")));
  QuantSpec fp8 = Spec(Format::kFp8E5M2);
  fp8.asymmetric = true;
  EXPECT_THAT(ResolveSpec(fp8, kMatrix), StatusIs(kInvalid, HasSubstr("symmetric only")));
}

TEST(ResolveSpecTest, OverflowNonfiniteNeedsInfOrNan) {
  for (Format format : AllFormats()) {
    QuantSpec spec = Spec(format);
    spec.asymmetric = !Traits(format).symmetric_ok;
    spec.overflow = Overflow::kNonfinite;
    if (Traits(format).block.size > 0) {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid, HasSubstr("elements saturate")))
          << FormatName(format);
    } else if (Traits(format).has_inf || Traits(format).has_nan) {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk()) << FormatName(format);
    } else {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid, HasSubstr("nonfinite")))
          << FormatName(format);
    }
  }
}

TEST(ResolveSpecTest, NanPolicyAndPacking) {
  QuantSpec propagate = Spec(Format::kInt8);
  propagate.nan_policy = NanPolicy::kPropagate;
  EXPECT_THAT(ResolveSpec(propagate, kMatrix), StatusIs(kInvalid, HasSubstr("no NaN")));
  propagate.format = Format::kFp8E4M3;
  EXPECT_THAT(ResolveSpec(propagate, kMatrix), IsOk());
  for (Format format : AllFormats()) {
    QuantSpec spec = Spec(format);
    spec.asymmetric = !Traits(format).symmetric_ok;
    spec.packing = Packing::kInt32Offset;
    if (format == Format::kInt4 || format == Format::kFlatquantInt4) {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk());
    } else {
      EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid, HasSubstr("int32_offset")))
          << FormatName(format);
    }
  }
}

TEST(ResolveSpecTest, StaticScales) {
  QuantSpec spec = Spec(Format::kInt8, Granularity::kToken);  // [4, 1]: four scales
  spec.static_scales = {1.0f, 2.0f, 3.0f};
  EXPECT_THAT(ResolveSpec(spec, kMatrix),
              StatusIs(kInvalid, AllOf(HasSubstr("static_scales has 3 values"),
                                       HasSubstr("needs 4"), HasSubstr("[4, 1]"))));
  for (float bad : {-1.0f, 0.0f, -0.0f, kNaN, kInf, -kInf}) {
    spec.static_scales = {1.0f, 2.0f, bad, 3.0f};
    EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid, HasSubstr("static_scales[2]")))
        << bad;
  }
  spec.static_scales = {1.0f, 2.0f, 1e-40f, 3e38f};  // subnormal and huge scales are fine
  EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk());
  QuantSpec cast = Spec(Format::kFp8E4M3, Granularity::kNone);
  cast.static_scales = {2.0f};
  EXPECT_THAT(ResolveSpec(cast, kMatrix), StatusIs(kInvalid));
}

TEST(ResolveSpecTest, StaticZeroPoints) {
  QuantSpec spec = Spec(Format::kInt8);
  spec.asymmetric = true;
  spec.static_scales = {0.5f};
  EXPECT_THAT(ResolveSpec(spec, kMatrix),
              StatusIs(kInvalid, HasSubstr("needs static_zero_points")));
  spec.static_zero_points = {128};
  EXPECT_THAT(ResolveSpec(spec, kMatrix),
              StatusIs(kInvalid, HasSubstr("static_zero_points[0] = 128 is outside int8's range "
                                           "[-128, 127]")));
  spec.static_zero_points = {-129};
  EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid));
  spec.static_zero_points = {-128};
  EXPECT_THAT(ResolveSpec(spec, kMatrix), IsOk());
  spec.static_zero_points = {1, 2};
  EXPECT_THAT(ResolveSpec(spec, kMatrix), StatusIs(kInvalid));
  QuantSpec u4 = Spec(Format::kUint4);
  u4.asymmetric = true;
  u4.static_scales = {1.0f};
  u4.static_zero_points = {16};
  EXPECT_THAT(ResolveSpec(u4, kMatrix), StatusIs(kInvalid));
  u4.static_zero_points = {-1};
  EXPECT_THAT(ResolveSpec(u4, kMatrix), StatusIs(kInvalid));
  u4.static_zero_points = {15};
  EXPECT_THAT(ResolveSpec(u4, kMatrix), IsOk());
  QuantSpec symmetric = Spec(Format::kInt8);
  symmetric.static_scales = {1.0f};
  symmetric.static_zero_points = {0};
  EXPECT_THAT(ResolveSpec(symmetric, kMatrix), StatusIs(kInvalid));
  QuantSpec without_scales = Spec(Format::kInt8);
  without_scales.asymmetric = true;
  without_scales.static_zero_points = {0};
  EXPECT_THAT(ResolveSpec(without_scales, kMatrix), StatusIs(kInvalid));
}

TEST(ResolveSpecTest, StaticGlobalScaleIsNvfp4sAndPositive) {
  QuantSpec spec = Spec(Format::kNvfp4);
  spec.static_global_scale = 2688.0f;
  EXPECT_THAT(ResolveSpec(spec, {4, 32}), IsOk());
  for (float bad : {-1.0f, kNaN, kInf, -kInf}) {  // (±0 is unset: S_enc from the data)
    spec.static_global_scale = bad;
    EXPECT_THAT(ResolveSpec(spec, {4, 32}), StatusIs(kInvalid, HasSubstr("static_global_scale is")))
        << bad;
  }
  for (Format format : {Format::kInt8, Format::kMxfp4, Format::kNf4}) {
    QuantSpec other = Spec(format);
    other.static_global_scale = 1.0f;
    EXPECT_THAT(ResolveSpec(other, {4, 64}),
                StatusIs(kInvalid, HasSubstr("has no global scale: leave it unset")))
        << FormatName(format);
  }
}

TEST(ResolveSpecTest, OracleAgreesOnEveryRefusalAbove) {
  // The oracle's own reading of the rules, over a grid of specs, must agree with ResolveSpec
  // on accept / refuse (the matrix test relies on it).
  for (Format format : AllFormats()) {
    for (int g = 1; g < kNumGranularities; ++g) {
      for (bool asymmetric : {false, true}) {
        for (Overflow overflow : {Overflow::kSaturate, Overflow::kNonfinite}) {
          for (NanPolicy nan : {NanPolicy::kUnspecified, NanPolicy::kReject, NanPolicy::kZero,
                                NanPolicy::kPropagate}) {
            for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
              for (float clip : {0.0f, 1.0f, 0.5f, 2.0f}) {
                QuantSpec spec = Spec(format, static_cast<Granularity>(g));
                spec.asymmetric = asymmetric;
                spec.overflow = overflow;
                spec.nan_policy = nan;
                spec.packing = packing;
                spec.clip_ratio = clip;
                if (spec.granularity == Granularity::kGroup) spec.group_size = 3;
                if (spec.granularity == Granularity::kBlock) spec.block_rows = spec.block_cols = 2;
                oracle::Resolved unused;
                const bool oracle_ok = oracle::Resolve(spec, kMatrix, &unused).ok();
                absl::StatusOr<QuantSpec> got = ResolveSpec(spec, kMatrix);
                EXPECT_EQ(got.ok(), oracle_ok) << SpecToString(spec) << ": " << got.status();
                if (!got.ok()) {
                  EXPECT_EQ(got.status().code(), kInvalid);
                }
              }
            }
          }
        }
      }
    }
  }
}

// ---- Shapes and byte lengths. ----

TEST(ShapeTest, NumElements) {
  EXPECT_EQ(*NumElements({}), 1);
  EXPECT_EQ(*NumElements({0, 4}), 0);
  EXPECT_EQ(*NumElements({3, 5, 7}), 105);
  EXPECT_THAT(NumElements({4, -1}), StatusIs(kInvalid, HasSubstr("dim 1 = -1")));
  EXPECT_THAT(NumElements(Shape(17, 1)), StatusIs(kInvalid, HasSubstr("rank 17")));
  EXPECT_THAT(NumElements(Shape(16, 2)), IsOk());
  EXPECT_THAT(NumElements({int64_t{1} << 32, int64_t{1} << 32}),
              StatusIs(kInvalid, HasSubstr("int64")));
  EXPECT_THAT(NumElements({std::numeric_limits<int64_t>::max(), 2}), StatusIs(kInvalid));
  EXPECT_EQ(*NumElements({std::numeric_limits<int64_t>::max(), 1}),
            std::numeric_limits<int64_t>::max());
}

TEST(ShapeTest, ResolveSpecChecksTheShape) {
  EXPECT_THAT(ResolveSpec(Spec(Format::kInt8), {-1, 4}), StatusIs(kInvalid, HasSubstr("dim 0")));
  EXPECT_THAT(ResolveSpec(Spec(Format::kInt8), Shape(17, 1)), StatusIs(kInvalid));
  EXPECT_THAT(ResolveSpec(Spec(Format::kInt8), {int64_t{1} << 40, int64_t{1} << 40}),
              StatusIs(kInvalid));
}

// Exact ceil(a / b) for a >= 0, b > 0, without the a + b - 1 that overflows.
int64_t CeilDiv(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// Known failure (kernels/ bug): ComputeLayout's size arithmetic is not overflow-checked for
// shapes and sizes that ResolveSpec accepts. CeilDiv(cols, G) = (cols + G - 1) / G overflows
// (signed overflow, UB) for a group_size / block size near INT64_MAX: group_size = INT64_MAX
// on [4, 8] resolves with scale_shape [4, 0] (0 scales for 32 elements, so the element pass
// indexes an empty scale array), group_size = INT64_MAX - 5 with [4, -1] (-4 scales).
// PackedRowBytes(cols, bits) = (cols · bits + 7) / 8 overflows for cols >= 2^60: int8 [2^61]
// gets code_bytes 0, int4 [2^61] code_bytes -1152921504606846975. A server that sizes buffers
// from a declared shape before the payload arrives (chunked streams) gets negative or zero
// sizes. Expected: the exact sizes, or INVALID_ARGUMENT.
TEST(ShapeTest, LayoutArithmeticDoesNotOverflow) {
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  for (int64_t size : {int64_t{1} << 62, kMax - 5, kMax}) {
    for (bool block : {false, true}) {
      QuantSpec spec = Spec(Format::kInt8, block ? Granularity::kBlock : Granularity::kGroup);
      if (block) {
        spec.block_rows = size;
        spec.block_cols = size;
      } else {
        spec.group_size = size;
      }
      SCOPED_TRACE(absl::StrCat(block ? "block " : "group ", size));
      absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {4, 8});
      if (!resolved.ok()) {
        EXPECT_THAT(resolved, StatusIs(kInvalid));
        continue;
      }
      absl::StatusOr<QuantLayout> layout = ComputeLayout(*resolved, {4, 8});
      ASSERT_THAT(layout, IsOk());
      // One group per row (group) or one block for the whole tensor (block).
      EXPECT_EQ(layout->scale_shape, block ? Shape({1, 1}) : Shape({4, 1}));
      EXPECT_EQ(layout->geometry.num_scales, block ? 1 : 4);
    }
  }
  for (int64_t cols : {int64_t{1} << 60, int64_t{1} << 61, int64_t{1} << 62, kMax - 3, kMax}) {
    for (Format format : {Format::kInt8, Format::kInt4}) {
      for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
        if (packing == Packing::kInt32Offset && format != Format::kInt4) continue;
        SCOPED_TRACE(
            absl::StrCat(FormatName(format), " [", cols, "] packing ", static_cast<int>(packing)));
        QuantSpec spec = Spec(format);
        spec.packing = packing;
        absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {cols});
        if (!resolved.ok()) {
          EXPECT_THAT(resolved, StatusIs(kInvalid));
          continue;
        }
        absl::StatusOr<QuantLayout> layout = ComputeLayout(*resolved, {cols});
        if (!layout.ok()) {
          EXPECT_THAT(layout, StatusIs(kInvalid));
          continue;
        }
        const int bits = Traits(format).bits;
        const int64_t want =
            packing == Packing::kInt32Offset ? CeilDiv(cols, 8) * 4 : CeilDiv(cols, 8 / bits);
        EXPECT_EQ(layout->code_bytes, want);
        EXPECT_EQ(layout->code_row_bytes, want);
      }
    }
  }
}

TEST(ShapeTest, CheckByteLengthSaysWhatToFix) {
  EXPECT_EQ(ShapeToString({4096, 11}), "[4096, 11]");
  EXPECT_EQ(ShapeToString({}), "[]");
  EXPECT_THAT(CheckByteLength(DType::kF32, {4096, 11}, 180220),
              StatusIs(kInvalid,
                       "shape [4096, 11] has 45056 elements but data holds 180220 "
                       "bytes; F32 needs 180224"));
  EXPECT_THAT(CheckByteLength(DType::kF32, {4096, 11}, 180224), IsOk());
  EXPECT_THAT(CheckByteLength(DType::kBF16, {3}, 6), IsOk());
  EXPECT_THAT(CheckByteLength(DType::kF16, {3}, 12),
              StatusIs(kInvalid, "shape [3] has 3 elements but data holds 12 bytes; F16 needs 6"));
  EXPECT_THAT(CheckByteLength(DType::kF32, {int64_t{1} << 62}, 0),
              StatusIs(kInvalid, HasSubstr("2^63 bytes")));
  EXPECT_THAT(CheckByteLength(DType::kUnspecified, {1}, 4), StatusIs(kInvalid));
  EXPECT_THAT(CheckByteLength(DType::kF32, {2, -3}, 0), StatusIs(kInvalid));
}

TEST(ShapeTest, BackendRefusesMismatchedInputs) {
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  const QuantSpec spec = *ResolveSpec(Spec(Format::kInt8), {4, 11});
  std::vector<float> x(4 * 11 - 1, 1.0f);
  std::vector<uint8_t> codes(44);
  std::vector<float> scales(1);
  QuantizedBuffers out{codes.data(), 44, scales.data(), 1, nullptr, nullptr};
  TensorView input{DType::kF32, {4, 11}, x.data(), static_cast<int64_t>(x.size() * 4)};
  EXPECT_THAT(backend->Quantize(input, spec, out, nullptr),
              StatusIs(kInvalid,
                       "shape [4, 11] has 44 elements but data holds 172 bytes; F32 "
                       "needs 176"));
  std::vector<float> x_ok(44, 1.0f);
  TensorView codes_as_input{DType::kU8, {4, 11}, codes.data(), 44};
  EXPECT_THAT(backend->Quantize(codes_as_input, spec, out, nullptr), StatusIs(kInvalid));
}

TEST(NanInputTest, IntegerFormatsRefuseNanNamingTheElement) {
  for (Format format : AllFormats()) {
    if (Traits(format).has_nan) continue;
    QuantSpec spec = Spec(format);
    spec.asymmetric = !Traits(format).symmetric_ok;
    const Quantized q = QuantizeFloats({1.0f, 2.0f, 3.0f, kNaN, 5.0f, kNaN}, {2, 3}, spec);
    EXPECT_THAT(q.status, StatusIs(kInvalid, AllOf(HasSubstr("input element 3 is NaN"),
                                                   HasSubstr(FormatName(format)),
                                                   HasSubstr("nan_policy zero"))))
        << FormatName(format);
  }
  QuantSpec reject = Spec(Format::kFp8E4M3);
  reject.nan_policy = NanPolicy::kReject;
  EXPECT_THAT(QuantizeFloats({1.0f, kNaN}, {2}, reject).status,
              StatusIs(kInvalid, HasSubstr("input element 1 is NaN")));
}

TEST(NanInputTest, QuantDequantAndCalibrateRefuseNanToo) {
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  const QuantSpec spec = *ResolveSpec(Spec(Format::kInt8), {3});
  std::vector<float> x = {1.0f, kNaN, 2.0f};
  std::vector<float> out(3);
  TensorView input{DType::kF32, {3}, x.data(), 12};
  MutableTensorView output{DType::kF32, {3}, out.data(), 12};
  EXPECT_THAT(backend->QuantDequant(input, spec, output, nullptr),
              StatusIs(kInvalid, HasSubstr("element 1 is NaN")));
}

// ---- Descriptor strings. ----

// Known failure (kernels/ bug): "uint8" and "uint4" are examples, but ApplyDescriptor leaves
// asymmetric false and ResolveSpec then refuses them ("uint8 is asymmetric only; set
// asymmetric"). DescriptorOf of a resolved uint8 spec prints "uint8" too, so it does not
// round-trip either.
TEST(DescriptorTest, EveryExampleParsesAndResolves) {
  const std::vector<std::string> examples = DescriptorExamples();
  ASSERT_FALSE(examples.empty());
  for (const std::string& name : examples) {
    QuantSpec spec;
    ASSERT_THAT(ApplyDescriptor(name, &spec), IsOk()) << name;
    absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {256, 256});
    ASSERT_THAT(resolved, IsOk()) << name;
    // The e<E>m<M>k<K>b<B> grammar names MX formats, which print by their names.
    if (name[0] != 'e') {
      EXPECT_EQ(DescriptorOf(*resolved), name);
    }
  }
  // FORMATS.md's own list, as far as the traits table has the formats.
  for (const char* name :
       {"int8", "int8-asym", "int4-g128", "fp8-e4m3", "fp8-e5m2", "mxfp8", "mxfp8e4m3", "mxfp8e5m2",
        "mxfp6e3m2", "mxfp6e2m3", "mxfp4", "mxint8", "nvfp4"}) {
    QuantSpec spec;
    EXPECT_THAT(ApplyDescriptor(name, &spec), IsOk()) << name;
  }
}

TEST(DescriptorTest, NamesSetTheirFields) {
  QuantSpec g;
  ASSERT_THAT(ApplyDescriptor("int4-g128", &g), IsOk());
  EXPECT_EQ(g.format, Format::kInt4);
  EXPECT_EQ(g.granularity, Granularity::kGroup);
  EXPECT_EQ(g.group_size, 128);
  EXPECT_FALSE(g.asymmetric);
  QuantSpec a;
  ASSERT_THAT(ApplyDescriptor("int8-asym", &a), IsOk());
  EXPECT_EQ(a.format, Format::kInt8);
  EXPECT_TRUE(a.asymmetric);
  QuantSpec b;
  ASSERT_THAT(ApplyDescriptor("fp8-e4m3-b128x128", &b), IsOk());
  EXPECT_EQ(b.format, Format::kFp8E4M3);
  EXPECT_EQ(b.granularity, Granularity::kBlock);
  EXPECT_EQ(b.block_rows, 128);
  EXPECT_EQ(b.block_cols, 128);
  QuantSpec t;
  ASSERT_THAT(ApplyDescriptor("int8-token", &t), IsOk());
  EXPECT_EQ(t.granularity, Granularity::kToken);
  QuantSpec e5;
  ASSERT_THAT(ApplyDescriptor("fp8-e5m2", &e5), IsOk());
  EXPECT_EQ(e5.format, Format::kFp8E5M2);
  EXPECT_EQ(e5.granularity, Granularity::kUnspecified);
  QuantSpec combined;
  ASSERT_THAT(ApplyDescriptor("int4-asym-g32", &combined), IsOk());
  EXPECT_TRUE(combined.asymmetric);
  EXPECT_EQ(combined.group_size, 32);
}

// MX names imply their blocks of 32 and E8M0 scales; "mxfp8" is E4M3 (FORMATS.md: mxfp8 =
// mxfp8e4m3). The block size is fixed, the scale rule free.
TEST(DescriptorTest, MxNamesResolveToBlocksOf32) {
  const std::pair<const char*, Format> names[] = {
      {"mxfp8", Format::kMxfp8E4M3},     {"mxfp8e4m3", Format::kMxfp8E4M3},
      {"mxfp8e5m2", Format::kMxfp8E5M2}, {"mxfp6e3m2", Format::kMxfp6E3M2},
      {"mxfp6e2m3", Format::kMxfp6E2M3}, {"mxfp4", Format::kMxfp4},
      {"MXINT8", Format::kMxint8}};
  for (const auto& [name, format] : names) {
    QuantSpec spec;
    ASSERT_THAT(ApplyDescriptor(name, &spec), IsOk()) << name;
    EXPECT_EQ(spec.format, format) << name;
    absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {3, 100});
    ASSERT_THAT(resolved, IsOk()) << name;
    EXPECT_EQ(resolved->granularity, Granularity::kGroup);
    EXPECT_EQ(resolved->group_size, 32);
    EXPECT_EQ(resolved->scale_rounding, ScaleRounding::kFloor);
    EXPECT_FALSE(resolved->asymmetric);
  }
  QuantSpec rceil;
  ASSERT_THAT(ApplyDescriptor("mxfp4", &rceil), IsOk());
  rceil.scale_rounding = ScaleRounding::kRceil;
  EXPECT_EQ(ResolveSpec(rceil, {3, 100})->scale_rounding, ScaleRounding::kRceil);
}

TEST(ResolveSpecTest, MxRefusesWhatItCannotDo) {
  auto refused = [](QuantSpec spec, absl::string_view why) {
    EXPECT_THAT(ResolveSpec(spec, {4, 64}), StatusIs(kInvalid, HasSubstr(why)));
  };
  QuantSpec mx = Spec(Format::kMxfp4);
  QuantSpec tensor = mx;
  tensor.granularity = Granularity::kTensor;
  refused(tensor, "blocks of 32 (or group_size) elements along the last axis");
  QuantSpec nf4_small = Spec(Format::kNf4, Granularity::kGroup);
  nf4_small.group_size = 16;
  refused(nf4_small, "nf4 scales blocks of 64 (group_size 32..4096) elements over the flattened");
  // Other block sizes serve the fake_quant_ops grammar (e2m1k8b16).
  QuantSpec group16 = mx;
  group16.granularity = Granularity::kGroup;
  group16.group_size = 16;
  ASSERT_THAT(ResolveSpec(group16, {4, 64}), IsOk());
  EXPECT_EQ(DescriptorOf(*ResolveSpec(group16, {4, 64})), "mxfp4-g16");
  QuantSpec clipped = mx;
  clipped.clip_ratio = 0.9f;
  refused(clipped, "clip_ratio does not apply to mxfp4");
  QuantSpec fixed = mx;
  fixed.static_scales.assign(4 * 2, 1.0f);
  refused(fixed, "static scales are not supported");
  QuantSpec asym = mx;
  asym.asymmetric = true;
  refused(asym, "symmetric only");
  QuantSpec bogus_rule = mx;
  bogus_rule.scale_rounding = static_cast<ScaleRounding>(9);
  refused(bogus_rule, "is not a scale rule");
  QuantSpec int8_rule = Spec(Format::kInt8);
  int8_rule.scale_rounding = ScaleRounding::kEven;
  refused(int8_rule, "scale_rule applies to MX formats");
  QuantSpec nonfinite = Spec(Format::kMxfp8E5M2);
  nonfinite.overflow = Overflow::kNonfinite;
  refused(nonfinite, "elements saturate");
  QuantSpec nan_propagate = mx;
  nan_propagate.nan_policy = NanPolicy::kPropagate;
  refused(nan_propagate, "no NaN to propagate");
  // NVFP4: blocks of 16, E4M3 block scales (no scale rule), nothing static.
  QuantSpec nvfp4 = Spec(Format::kNvfp4);
  EXPECT_EQ(ResolveSpec(nvfp4, {4, 64})->group_size, 16);
  QuantSpec nvfp4_group32 = nvfp4;
  nvfp4_group32.granularity = Granularity::kGroup;
  nvfp4_group32.group_size = 32;
  refused(nvfp4_group32, "nvfp4 scales blocks of 16 elements along the last axis");
  QuantSpec nvfp4_rule = nvfp4;
  nvfp4_rule.scale_rounding = ScaleRounding::kRceil;
  refused(nvfp4_rule, "nvfp4 has E4M3 block scales");
  QuantSpec nvfp4_static = nvfp4;
  nvfp4_static.static_scales.assign(4 * 4, 1.0f);
  refused(nvfp4_static, "static scales are not supported");
}

// FORMATS.md: "the fake_quant_ops grammar e<E>m<M>k<K>b<B>[c] (e.g. mxfp4 ≡ e2m1k8b32)".
TEST(DescriptorTest, FakeQuantOpsGrammar) {
  struct Case {
    const char* descriptor;
    Format format;
    int64_t block;
    ScaleRounding rule;
  };
  constexpr Case kCases[] = {
      {"e2m1k8b32", Format::kMxfp4, 32, ScaleRounding::kFloor},
      {"E2M1K8B32", Format::kMxfp4, 32, ScaleRounding::kFloor},
      {"e4m3k8b32c", Format::kMxfp8E4M3, 32, ScaleRounding::kNearest},
      {"e5m2k8b16", Format::kMxfp8E5M2, 16, ScaleRounding::kFloor},
      {"e3m2k8b64c", Format::kMxfp6E3M2, 64, ScaleRounding::kNearest},
      {"e2m3k8b8", Format::kMxfp6E2M3, 8, ScaleRounding::kFloor},
  };
  for (const Case& c : kCases) {
    QuantSpec spec;
    ASSERT_THAT(ApplyDescriptor(c.descriptor, &spec), IsOk()) << c.descriptor;
    absl::StatusOr<QuantSpec> resolved = ResolveSpec(spec, {3, 100});
    ASSERT_THAT(resolved, IsOk()) << c.descriptor;
    EXPECT_EQ(resolved->format, c.format) << c.descriptor;
    EXPECT_EQ(resolved->granularity, Granularity::kGroup);
    EXPECT_EQ(resolved->group_size, c.block) << c.descriptor;
    EXPECT_EQ(resolved->scale_rounding, c.rule) << c.descriptor;
  }
  // mxfp4 ≡ e2m1k8b32: the same resolved spec.
  QuantSpec named, grammar;
  ASSERT_THAT(ApplyDescriptor("mxfp4", &named), IsOk());
  ASSERT_THAT(ApplyDescriptor("e2m1k8b32", &grammar), IsOk());
  EXPECT_EQ(SpecToString(*ResolveSpec(named, {2, 64})),
            SpecToString(*ResolveSpec(grammar, {2, 64})));
  // What quantd lacks is refused with what it takes.
  for (const char* bad : {"e3m4k8b32", "e2m1k4b32", "e2m1k8b0", "e1m2k8b32"}) {
    QuantSpec spec;
    EXPECT_THAT(ApplyDescriptor(bad, &spec), StatusIs(kInvalid, HasSubstr(bad))) << bad;
  }
  // Conflicts with fields already set.
  QuantSpec rceil;
  rceil.scale_rounding = ScaleRounding::kRceil;
  EXPECT_THAT(ApplyDescriptor("e2m1k8b32c", &rceil), StatusIs(kInvalid, HasSubstr("scale rule")));
  QuantSpec group64;
  group64.group_size = 64;
  EXPECT_THAT(ApplyDescriptor("e2m1k8b32", &group64), StatusIs(kInvalid, HasSubstr("group")));
}

TEST(DescriptorTest, UnknownNamesListWhatIsAccepted) {
  for (const char* bad :
       {"int3", "", "fp8", "int4-g0", "int4-g-1", "int4-gabc", "int4-b128", "int4-g128-g64",
        "int8-asym-sym", "int8-channel-token", "nf5", "mxfp4e2m1", "mxfp7"}) {
    QuantSpec spec;
    absl::Status status = ApplyDescriptor(bad, &spec);
    EXPECT_THAT(status, StatusIs(kInvalid, HasSubstr("unknown descriptor"))) << bad;
    for (const std::string& name : DescriptorExamples()) {
      EXPECT_THAT(std::string(status.message()), HasSubstr(name)) << bad;
    }
  }
}

TEST(DescriptorTest, ConflictsWithFieldsAlreadySetAreRefused) {
  QuantSpec format_set;
  format_set.format = Format::kInt8;
  EXPECT_THAT(ApplyDescriptor("int4-g128", &format_set),
              StatusIs(kInvalid, HasSubstr("contradicts the spec's format")));
  QuantSpec granularity_set;
  granularity_set.granularity = Granularity::kToken;
  EXPECT_THAT(ApplyDescriptor("int4-g128", &granularity_set),
              StatusIs(kInvalid, HasSubstr("granularity")));
  QuantSpec group_set;
  group_set.group_size = 64;
  EXPECT_THAT(ApplyDescriptor("int4-g128", &group_set), StatusIs(kInvalid));
  QuantSpec block_set;
  block_set.block_rows = 64;
  EXPECT_THAT(ApplyDescriptor("fp8-e4m3-b128x128", &block_set), StatusIs(kInvalid));
  QuantSpec asym_set;
  asym_set.asymmetric = true;
  EXPECT_THAT(ApplyDescriptor("int8-sym", &asym_set), StatusIs(kInvalid));
  // Agreeing fields are fine.
  QuantSpec same;
  same.format = Format::kInt4;
  same.granularity = Granularity::kGroup;
  same.group_size = 128;
  EXPECT_THAT(ApplyDescriptor("int4-g128", &same), IsOk());
  QuantSpec asym_kept;
  asym_kept.asymmetric = true;
  EXPECT_THAT(ApplyDescriptor("int8", &asym_kept), IsOk());
  EXPECT_TRUE(asym_kept.asymmetric);
}

TEST(DescriptorTest, EnumNames) {
  EXPECT_EQ(*RoundingFromName("rne"), Rounding::kNearestEven);
  EXPECT_EQ(*RoundingFromName("stochastic"), Rounding::kStochastic);
  EXPECT_EQ(*RoundingFromName("away"), Rounding::kNearestAway);
  EXPECT_THAT(RoundingFromName("floor"),
              StatusIs(kInvalid, HasSubstr("accepted: rne, stochastic, away")));
  EXPECT_EQ(*OverflowFromName("saturate"), Overflow::kSaturate);
  EXPECT_EQ(*OverflowFromName("nonfinite"), Overflow::kNonfinite);
  EXPECT_THAT(OverflowFromName("wrap"), StatusIs(kInvalid));
  for (Rounding r : {Rounding::kNearestEven, Rounding::kStochastic, Rounding::kNearestAway}) {
    EXPECT_EQ(*RoundingFromName(RoundingName(r)), r);
  }
  for (int g = 1; g < kNumGranularities; ++g) {
    const Granularity granularity = static_cast<Granularity>(g);
    EXPECT_EQ(*GranularityFromName(GranularityName(granularity)), granularity);
  }
  EXPECT_THAT(GranularityFromName("row"), StatusIs(kInvalid));
}

}  // namespace
}  // namespace quantd::testing
