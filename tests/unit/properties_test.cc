// Properties every format must have, whatever its codes: the round-trip error bound of
// Tolerance(), codes in range, Dequantize ∘ Quantize = QuantDequant, independence from the
// thread count, static scales reproducing dynamic ones, F16/BF16 inputs equal to their F32
// values, and stochastic rounding that is reproducible, seed-dependent and unbiased.
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/backend.h"
#include "quantd/executor.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

// |x - x̂| <= abs + rel·|x| for a finite x inside the format's range.
struct ErrorBound {
  double abs;
  double rel;
};

// The one statement of how close x̂ is to x, per format (FORMATS.md: RNE to the nearest code).
// Integers: half a step, s/2; asymmetric integers a whole step s, because the zero-point is
// itself rounded, so the top (or bottom) of the range can land half a step past qmax and be
// clamped. Minifloats: half a quantum, 2^-(M+1)·|x| in the normal range, half the scaled min
// subnormal below it. Stochastic rounding may go to either neighbour: twice the bound. A
// relative 2^-22 covers the fp32 roundings of x / s and s · decode(q).
ErrorBound Tolerance(Format format, const QuantSpec& spec, float scale) {
  const FormatTraits& t = Traits(format);
  const double fp32_slack = std::ldexp(1.0, -22);
  const double widen = spec.rounding == Rounding::kStochastic ? 2.0 : 1.0;
  if (t.kind == ElementKind::kInt) {
    const double step = spec.asymmetric ? scale : scale / 2.0;
    return {
        std::max(step, spec.rounding == Rounding::kStochastic ? scale : 0.0) * (1.0 + fp32_slack),
        fp32_slack};
  }
  const double min_subnormal = std::ldexp(1.0, 1 - t.minifloat.bias - t.minifloat.man_bits);
  return {widen * scale * min_subnormal / 2.0,
          widen * std::ldexp(1.0, -(t.minifloat.man_bits + 1)) + fp32_slack};
}

struct GranularityChoice {
  Granularity granularity;
  int64_t group_size;
  int64_t block_rows;
  int64_t block_cols;
  int axis;
};
constexpr GranularityChoice kGranularities[] = {
    {Granularity::kTensor, 0, 0, 0, 0},   {Granularity::kChannel, 0, 0, 0, 0},
    {Granularity::kChannel, 0, 0, 0, -1}, {Granularity::kToken, 0, 0, 0, 0},
    {Granularity::kGroup, 32, 0, 0, 0},   {Granularity::kBlock, 0, 4, 8, 0},
    {Granularity::kGroup, 16, 0, 0, 0},
};

QuantSpec MakeSpec(Format format, const GranularityChoice& g, bool asymmetric,
                   Rounding rounding = Rounding::kNearestEven) {
  QuantSpec spec;
  spec.format = format;
  spec.granularity = g.granularity;
  spec.group_size = g.group_size;
  spec.block_rows = g.block_rows;
  spec.block_cols = g.block_cols;
  spec.axis = g.axis;
  spec.asymmetric = asymmetric;
  spec.rounding = RoundingFor(format, rounding);
  spec.seed = 99;
  return spec;
}

// Whether `format` takes granularity `g`: block formats only their blocks (a group of 32 for
// MX, of 16 for NVFP4).
bool Takes(Format format, const GranularityChoice& g) {
  const FormatTraits& t = Traits(format);
  return FormatAllows(format, g.granularity) && (t.block.size == 0 || g.group_size == t.block.size);
}

// What the elements of scale group `k` were divided by: the reported scale, except for NVFP4,
// whose scales are the E4M3 block scales under the global scale.
float ElementScale(Format format, const BackendRun& run, size_t k) {
  return Traits(format).scale_kind == ScaleKind::kE4M3
             ? Nvfp4ElementScale(run.scales[k], run.global_scale)
             : run.scales[k];
}

std::vector<bool> Symmetries(Format format) {
  std::vector<bool> out;
  if (Traits(format).symmetric_ok) out.push_back(false);
  if (Traits(format).asymmetric_ok) out.push_back(true);
  return out;
}

class PropertyTest : public ::testing::TestWithParam<Format> {};

TEST_P(PropertyTest, RoundTripErrorWithinTolerance) {
  const Format format = GetParam();
  const Shape shape = {24, 70};
  for (const GranularityChoice& g : kGranularities) {
    if (!Takes(format, g)) continue;
    for (bool asymmetric : Symmetries(format)) {
      for (Rounding rounding :
           {Rounding::kNearestEven, Rounding::kNearestAway, Rounding::kStochastic}) {
        if (RoundingFor(format, rounding) != rounding) continue;  // the format's one rounding
        for (FillKind fill : {FillKind::kNormal, FillKind::kNormalLarge, FillKind::kWideRange,
                              FillKind::kTies, FillKind::kSubnormal}) {
          SCOPED_TRACE(absl::StrCat(GranularityName(g.granularity), " asym=", asymmetric, " ",
                                    RoundingName(rounding), " ", FillName(fill)));
          const QuantSpec spec = MakeSpec(format, g, asymmetric, rounding);
          const std::vector<float> x = MakeFill(fill, 24 * 70, format, asymmetric, 5);
          const Quantized q = QuantizeFloats(x, shape, spec);
          ASSERT_THAT(q.status, IsOk());
          oracle::Resolved resolved;
          ASSERT_THAT(oracle::Resolve(spec, shape, &resolved), IsOk());
          const oracle::Grouping grouping = oracle::GroupElements(resolved, shape);
          int bad = 0;
          for (size_t i = 0; i < x.size() && bad < 3; ++i) {
            const float s = ElementScale(format, q.run, static_cast<size_t>(grouping.group_of[i]));
            const ErrorBound bound = Tolerance(format, q.spec, s);
            // Block formats: the OCP shared exponent (FLOOR, and EVEN) and NVFP4's rounded E4M3
            // block scale can leave a block's largest values above the largest element, where
            // they saturate, and an NVFP4 block too small for E4M3 has scale 0 and codes 0:
            // that excess is part of the format.
            const FormatTraits& t = Traits(format);
            const double largest =
                (t.kind == ElementKind::kInt ? t.qmax : t.scale_divisor) * static_cast<double>(s);
            const double saturated =
                t.block.size > 0 ? std::max(0.0, std::fabs(static_cast<double>(x[i])) - largest)
                                 : 0.0;
            const double err = std::fabs(static_cast<double>(x[i]) - q.x_hat[i]);
            if (!(err <= saturated + bound.abs + bound.rel * std::fabs(x[i]))) {
              ++bad;
              ADD_FAILURE() << "x[" << i << "] = " << x[i] << ", x̂ = " << q.x_hat[i] << ", scale "
                            << s << ": error " << err << " above "
                            << bound.abs + bound.rel * std::fabs(x[i]);
            }
          }
        }
      }
    }
  }
}

TEST_P(PropertyTest, CodesStayInRange) {
  const Format format = GetParam();
  const FormatTraits& t = Traits(format);
  const Shape shape = {16, 48};
  for (const GranularityChoice& g : kGranularities) {
    if (!Takes(format, g)) continue;
    for (bool asymmetric : Symmetries(format)) {
      for (Overflow overflow : {Overflow::kSaturate, Overflow::kNonfinite}) {
        if (overflow == Overflow::kNonfinite && ((!t.has_inf && !t.has_nan) || t.block.size > 0)) {
          continue;  // nothing to overflow into, or (block formats) elements that saturate
        }
        QuantSpec spec = MakeSpec(format, g, asymmetric);
        spec.overflow = overflow;
        const std::vector<float> x =
            MakeFill(FillKind::kNormalLarge, 16 * 48, format, asymmetric, 8);
        const Quantized q = QuantizeFloats(x, shape, spec);
        ASSERT_THAT(q.status, IsOk());
        for (size_t k = 0; k < q.run.zero_points.size(); ++k) {
          EXPECT_GE(q.run.zero_points[k], t.qmin);
          EXPECT_LE(q.run.zero_points[k], t.qmax);
        }
        for (size_t k = 0; k < q.run.scales.size(); ++k) {
          // NVFP4's E4M3 block scale of a block too small for it is 0.
          const bool zero_ok = t.scale_kind == ScaleKind::kE4M3;
          EXPECT_TRUE(std::isfinite(q.run.scales[k]) &&
                      (q.run.scales[k] > 0 || (zero_ok && q.run.scales[k] == 0)))
              << q.run.scales[k];
        }
        const std::vector<uint32_t> codes =
            oracle::Unpack(q.run.codes, 16, 48, t.bits, q.spec.packing);
        for (uint32_t code : codes) {
          if (t.kind == ElementKind::kInt) {
            int32_t v = static_cast<int32_t>(code);
            if (t.is_signed && (code >> (t.bits - 1))) v -= 1 << t.bits;
            if (!asymmetric) {
              // Symmetric, clip 1: |x / s| <= 127 (+ an fp32 ulp), so qmin = -qmax - 1 never
              // appears for finite data.
              EXPECT_GE(v, -t.qmax);
            }
            EXPECT_GE(v, t.qmin);
            EXPECT_LE(v, t.qmax);
          } else {
            // A dynamic scale maps amax to the max finite value: finite data never overflows.
            EXPECT_FALSE(std::isnan(MinifloatDecode(t.minifloat, code))) << code;
            EXPECT_FALSE(std::isinf(MinifloatDecode(t.minifloat, code))) << code;
          }
        }
      }
    }
  }
}

TEST_P(PropertyTest, DequantizeOfQuantizeEqualsQuantDequant) {
  const Format format = GetParam();
  const Shape shape = {9, 37};
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  for (const GranularityChoice& g : kGranularities) {
    if (!Takes(format, g)) continue;
    for (bool asymmetric : Symmetries(format)) {
      for (FillKind fill : {FillKind::kNormal, FillKind::kSpecials, FillKind::kTies}) {
        QuantSpec spec = MakeSpec(format, g, asymmetric, Rounding::kStochastic);
        spec.nan_policy = Traits(format).has_nan ? NanPolicy::kPropagate : NanPolicy::kZero;
        const std::vector<float> x = MakeFill(fill, 9 * 37, format, asymmetric, 3);
        const Quantized q = QuantizeFloats(x, shape, spec);
        ASSERT_THAT(q.status, IsOk());
        for (DType out : {DType::kF32, DType::kF16, DType::kBF16}) {
          absl::StatusOr<std::vector<uint8_t>> deq =
              RunDequantize(*backend, q.spec, shape, q.run, out);
          absl::StatusOr<std::vector<uint8_t>> qdq =
              RunQuantDequant(*backend, FloatBytes(x), DType::kF32, shape, q.spec, out, nullptr);
          ASSERT_THAT(deq, IsOk());
          ASSERT_THAT(qdq, IsOk());
          EXPECT_EQ(*deq, *qdq) << DTypeName(out);
        }
      }
    }
  }
}

TEST_P(PropertyTest, ResultsDoNotDependOnTheThreadCount) {
  const Format format = GetParam();
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(4);
  std::unique_ptr<Backend> serial = CreateReferenceBackend(InlineExecutor());
  std::unique_ptr<Backend> parallel = CreateReferenceBackend(pool.get());
  for (const Shape& shape : {Shape{217, 256}, Shape{1000, 33}, Shape{3, 70, 40}}) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    for (const GranularityChoice& g : kGranularities) {
      if (!Takes(format, g)) continue;
      for (bool asymmetric : Symmetries(format)) {
        SCOPED_TRACE(absl::StrCat(ShapeName(shape), " ", GranularityName(g.granularity),
                                  " asym=", asymmetric));
        QuantSpec spec = MakeSpec(format, g, asymmetric, Rounding::kStochastic);
        spec.nan_policy = NanPolicy::kZero;
        const std::vector<uint8_t> bytes = oracle::ToBytes(
            MakeFill(FillKind::kSpecials, numel, format, asymmetric, 11), DType::kBF16);
        const BackendRun a = RunQuantize(*serial, bytes, DType::kBF16, shape, spec);
        const BackendRun b = RunQuantize(*parallel, bytes, DType::kBF16, shape, spec);
        ASSERT_THAT(a.status, IsOk());
        ASSERT_THAT(b.status, IsOk());
        EXPECT_EQ(a.codes, b.codes);
        EXPECT_EQ(oracle::ToBytes(a.scales, DType::kF32), oracle::ToBytes(b.scales, DType::kF32));
        EXPECT_EQ(a.zero_points, b.zero_points);
        ExpectMetricsNear(b.metrics, a.metrics.mse, a.metrics.rmse, a.metrics.max_abs_err,
                          a.metrics.sqnr_db, a.metrics.cosine, a.metrics.rel_fro_err,
                          a.metrics.count, a.metrics.nonfinite_count, 1e-12);
        const QuantSpec resolved = *ResolveSpec(spec, shape);
        EXPECT_EQ(
            *RunQuantDequant(*serial, bytes, DType::kBF16, shape, resolved, DType::kF32, nullptr),
            *RunQuantDequant(*parallel, bytes, DType::kBF16, shape, resolved, DType::kF32,
                             nullptr));
      }
    }
  }
}

TEST_P(PropertyTest, StaticScalesEqualToDynamicOnesReproduceTheCodes) {
  const Format format = GetParam();
  if (Traits(format).scale_kind != ScaleKind::kF32)
    GTEST_SKIP() << "block formats take no static scales";
  const Shape shape = {13, 50};
  for (const GranularityChoice& g : kGranularities) {
    if (!Takes(format, g)) continue;
    for (bool asymmetric : Symmetries(format)) {
      for (FillKind fill : {FillKind::kNormal, FillKind::kTies, FillKind::kWideRange}) {
        QuantSpec spec = MakeSpec(format, g, asymmetric);
        const std::vector<float> x = MakeFill(fill, 13 * 50, format, asymmetric, 21);
        const Quantized dynamic = QuantizeFloats(x, shape, spec);
        ASSERT_THAT(dynamic.status, IsOk());
        spec.static_scales = dynamic.run.scales;
        spec.static_zero_points = dynamic.run.zero_points;
        const Quantized fixed = QuantizeFloats(x, shape, spec);
        ASSERT_THAT(fixed.status, IsOk());
        EXPECT_EQ(fixed.run.codes, dynamic.run.codes);
        EXPECT_EQ(fixed.run.scales, dynamic.run.scales);
        EXPECT_EQ(fixed.run.zero_points, dynamic.run.zero_points);
        EXPECT_EQ(FloatBytes(fixed.x_hat), FloatBytes(dynamic.x_hat));
      }
    }
  }
}

TEST_P(PropertyTest, HalfInputsEqualTheirFloatValues) {
  const Format format = GetParam();
  const Shape shape = {7, 45};
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (const GranularityChoice& g : kGranularities) {
      if (!Takes(format, g)) continue;
      for (bool asymmetric : Symmetries(format)) {
        QuantSpec spec = MakeSpec(format, g, asymmetric, Rounding::kStochastic);
        spec.nan_policy = NanPolicy::kZero;
        const std::vector<uint8_t> narrow =
            oracle::ToBytes(MakeFill(FillKind::kSpecials, 7 * 45, format, asymmetric, 4), dtype);
        std::vector<float> widened;
        for (size_t i = 0; i < narrow.size(); i += 2) {
          const uint16_t h = static_cast<uint16_t>(narrow[i] | (narrow[i + 1] << 8));
          widened.push_back(dtype == DType::kF16 ? HalfToFloat(h) : BF16ToFloat(h));
        }
        const BackendRun a = RunQuantize(*backend, narrow, dtype, shape, spec);
        const BackendRun b = RunQuantize(*backend, FloatBytes(widened), DType::kF32, shape, spec);
        ASSERT_THAT(a.status, IsOk());
        ASSERT_THAT(b.status, IsOk());
        EXPECT_EQ(a.codes, b.codes);
        EXPECT_EQ(FloatBytes(a.scales), FloatBytes(b.scales));
        EXPECT_EQ(a.zero_points, b.zero_points);
        EXPECT_EQ(a.metrics.count, b.metrics.count);
        EXPECT_EQ(a.metrics.mse, b.metrics.mse);
      }
    }
  }
}

TEST_P(PropertyTest, ConcurrentCallsOnOneBackendAgreeWithSerialOnes) {
  // "Every method is thread-safe": callers share one backend and one pool.
  const Format format = GetParam();
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(2);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(pool.get());
  const Shape shape = {64, 96};
  constexpr int kCallers = 4;
  std::vector<std::vector<uint8_t>> inputs;
  std::vector<BackendRun> serial;
  QuantSpec spec =
      MakeSpec(format, kGranularities[4], !Traits(format).symmetric_ok, Rounding::kStochastic);
  if (Traits(format).block.size > 0) spec.group_size = Traits(format).block.size;  // its blocks
  for (int t = 0; t < kCallers; ++t) {
    inputs.push_back(
        FloatBytes(MakeFill(FillKind::kNormal, 64 * 96, format, spec.asymmetric, 100 + t)));
    serial.push_back(RunQuantize(*backend, inputs.back(), DType::kF32, shape, spec));
    ASSERT_THAT(serial.back().status, IsOk());
  }
  std::vector<BackendRun> concurrent(kCallers);
  std::vector<std::thread> threads;
  for (int t = 0; t < kCallers; ++t) {
    threads.emplace_back([&, t]() {
      for (int round = 0; round < 5; ++round) {
        concurrent[static_cast<size_t>(t)] =
            RunQuantize(*backend, inputs[static_cast<size_t>(t)], DType::kF32, shape, spec);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < kCallers; ++t) {
    const BackendRun& a = serial[static_cast<size_t>(t)];
    const BackendRun& b = concurrent[static_cast<size_t>(t)];
    ASSERT_THAT(b.status, IsOk());
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(FloatBytes(a.scales), FloatBytes(b.scales));
    EXPECT_EQ(a.zero_points, b.zero_points);
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, PropertyTest,
                         ::testing::ValuesIn(FormatsQuantizingTheirInput()), FormatParamName);

// ---- Stochastic rounding. ----

QuantSpec StochasticSpec(Format format, uint64_t seed) {
  QuantSpec spec;
  spec.format = format;
  spec.granularity =
      Traits(format).kind == ElementKind::kMinifloat ? Granularity::kNone : Granularity::kTensor;
  spec.rounding = RoundingFor(format, Rounding::kStochastic);
  spec.seed = seed;
  if (Traits(format).block.size > 0 || Traits(format).kronecker_transform) {
    spec.granularity = Granularity::kUnspecified;  // block formats, FlatQuant: their own
  } else if (Traits(format).kind == ElementKind::kInt) {
    spec.asymmetric = !Traits(format).symmetric_ok;
    spec.static_scales = {1.0f};
    if (spec.asymmetric) spec.static_zero_points = {Traits(format).qmin};
  }
  return spec;
}

TEST(StochasticRoundingTest, ReproducibleForASeedAndDifferentAcrossSeeds) {
  for (Format format : AllFormats()) {
    QuantSpec spec = StochasticSpec(format, 7);
    spec.static_scales.clear();
    spec.static_zero_points.clear();
    if (spec.granularity == Granularity::kNone) spec.granularity = Granularity::kTensor;
    const std::vector<float> x = MakeFill(FillKind::kNormal, 4096, format, spec.asymmetric, 1);
    const Quantized a = QuantizeFloats(x, {64, 64}, spec);
    const Quantized b = QuantizeFloats(x, {64, 64}, spec);
    spec.seed = 8;
    const Quantized c = QuantizeFloats(x, {64, 64}, spec);
    ASSERT_THAT(a.status, IsOk());
    EXPECT_EQ(a.run.codes, b.run.codes) << FormatName(format);
    if (spec.rounding == Rounding::kStochastic) {
      EXPECT_NE(a.run.codes, c.run.codes) << FormatName(format);
    }
    EXPECT_EQ(a.run.scales, c.run.scales) << "the scale does not depend on the seed";
  }
}

TEST(StochasticRoundingTest, UnbiasedAndSymmetric) {
  // A constant tensor between two codes: each element rounds up with probability equal to the
  // fraction; the mean of x̂ over 2^16 elements is within 5 standard errors of x.
  struct Case {
    Format format;
    float x;
    float lo, hi;  // the neighbouring representable values
  };
  const Case cases[] = {
      {Format::kInt8, 0.3f, 0.0f, 1.0f},
      {Format::kInt8, -2.7f, -3.0f, -2.0f},
      {Format::kInt4, 6.55f, 6.0f, 7.0f},
      {Format::kUint8, 200.25f, 200.0f, 201.0f},
      {Format::kUint4, 0.9f, 0.0f, 1.0f},
      {Format::kFp8E4M3, 1.1f, 1.0f, 1.125f},
      {Format::kFp8E4M3, -300.0f, -320.0f, -288.0f},
      {Format::kFp8E5M2, 0.3f, 0.25f, 0.3125f},
  };
  const int64_t n = 1 << 16;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(FormatName(c.format), " x=", c.x));
    const Quantized q =
        QuantizeFloats(std::vector<float>(n, c.x), {n}, StochasticSpec(c.format, 3));
    ASSERT_THAT(q.status, IsOk());
    const Quantized neg =
        QuantizeFloats(std::vector<float>(n, -c.x), {n}, StochasticSpec(c.format, 3));
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const float v = q.x_hat[static_cast<size_t>(i)];
      ASSERT_TRUE(v == c.lo || v == c.hi) << v;
      sum += v;
      // Rounding acts on |x / s|: -x rounds to exactly -x̂ under the same draw.
      if (Traits(c.format).is_signed) {
        ASSERT_THAT(neg.status, IsOk());
        EXPECT_EQ(neg.x_hat[static_cast<size_t>(i)], -v);
      }
    }
    const double p = (static_cast<double>(c.x) - c.lo) / (c.hi - c.lo);
    const double standard_error = (c.hi - c.lo) * std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(sum / n, c.x, 5 * standard_error);
  }
}

TEST(StochasticRoundingTest, OneElementOverManySeedsIsUnbiased) {
  double sum = 0.0;
  const int seeds = 4000;
  for (int seed = 0; seed < seeds; ++seed) {
    const Quantized q = QuantizeFloats({0.25f}, {1}, StochasticSpec(Format::kInt8, seed));
    ASSERT_THAT(q.status, IsOk());
    sum += q.x_hat[0];
  }
  EXPECT_NEAR(sum / seeds, 0.25, 5 * std::sqrt(0.25 * 0.75 / seeds));
}

TEST(StochasticRoundingTest, RoundsUpIffTheDrawIsBelowTheFraction) {
  // Element i of seed 5 draws u = (bits >> 8) · 2^-24. x = u exactly (an fp32 with <= 24
  // significant bits) has fraction u: not below, so it rounds down; x = u + 2^-24 rounds up.
  const uint64_t seed = 5;
  std::vector<float> down, up;
  for (uint64_t i = 0; i < 64; ++i) {
    const float u = static_cast<float>(oracle::RandomBits(seed, i) >> 8) * std::ldexp(1.0f, -24);
    down.push_back(u);
    up.push_back(u + std::ldexp(1.0f, -24));
  }
  const Quantized d = QuantizeFloats(down, {64}, StochasticSpec(Format::kInt8, seed));
  const Quantized u = QuantizeFloats(up, {64}, StochasticSpec(Format::kInt8, seed));
  ASSERT_THAT(d.status, IsOk());
  ASSERT_THAT(u.status, IsOk());
  for (size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(d.x_hat[i], 0.0f) << "x = " << down[i];
    if (up[i] < 1.0f) {
      EXPECT_EQ(u.x_hat[i], 1.0f) << "x = " << up[i];
    }
  }
}

// ---- Backend edge cases. ----

TEST(BackendEdgeTest, AsymmetricRangeOverflowIsRefused) {
  // FORMATS.md is silent; kernels/ refuses rather than produce an Inf scale (every x̂ NaN).
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = Granularity::kTensor;
  spec.asymmetric = true;
  EXPECT_THAT(QuantizeFloats({3e38f, -3e38f}, {2}, spec).status,
              StatusIs(kInvalid, HasSubstr("overflows float32; use symmetric")));
  spec.clip_ratio = 0.5f;  // the clipped range fits
  EXPECT_THAT(QuantizeFloats({3e38f, -3e38f}, {2}, spec).status, IsOk());
  spec.clip_ratio = 0.0f;
  spec.asymmetric = false;
  EXPECT_THAT(QuantizeFloats({3e38f, -3e38f}, {2}, spec).status, IsOk());
}

// Known failure (kernels/ bug): a zero-element tensor whose granularity has no scale group
// (token / group / block / channel over an empty axis) needs 0 scales. backend.h's own example
// sizes the buffer as std::vector<float>(num_scales), whose data() is null when empty; Quantize
// then fails with INTERNAL "output buffers do not match the layout: 0 code bytes for 0, 0
// scales for 0" (its null check on scales ignores num_scales == 0, unlike the one on codes),
// and Dequantize with INVALID_ARGUMENT.
TEST(BackendEdgeTest, EmptyTensorsAcceptEmptyNullBuffers) {
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  QuantSpec requested;
  requested.format = Format::kInt8;
  requested.granularity = Granularity::kToken;
  const Shape shape = {0, 4};
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  ASSERT_EQ(layout.geometry.num_scales, 0);
  ASSERT_EQ(layout.code_bytes, 0);
  std::string codes(static_cast<size_t>(layout.code_bytes), '\0');
  std::vector<float> scales(static_cast<size_t>(layout.geometry.num_scales));
  QuantizedBuffers out{codes.data(), 0, scales.data(), 0, nullptr, nullptr};
  TensorView input{DType::kF32, shape, nullptr, 0};
  ErrorMetrics metrics;
  EXPECT_THAT(backend->Quantize(input, spec, out, &metrics), IsOk());
  EXPECT_EQ(metrics.count, 0);
  ConstQuantizedBuffers in{codes.data(), 0, scales.data(), 0, nullptr, 0.0f};
  MutableTensorView output{DType::kF32, shape, nullptr, 0};
  EXPECT_THAT(backend->Dequantize(in, spec, output), IsOk());
}

TEST(BackendEdgeTest, MetricsOfNonfiniteOverflowShowAsInfinite) {
  // E5M2 NONFINITE with clip 0.5: the amax element lands at 2 · 57344 and becomes Inf, a
  // finite x with an infinite x̂ ("shows as Inf / NaN").
  QuantSpec spec;
  spec.format = Format::kFp8E5M2;
  spec.granularity = Granularity::kTensor;
  spec.overflow = Overflow::kNonfinite;
  spec.clip_ratio = 0.5f;
  const Quantized q = QuantizeFloats({4.0f, 1.0f}, {2}, spec);
  ASSERT_THAT(q.status, IsOk());
  EXPECT_EQ(q.x_hat[0], std::numeric_limits<float>::infinity());
  const oracle::Metrics want = oracle::ComputeMetrics({4.0f, 1.0f}, q.x_hat);
  ExpectMetricsNear(q.run.metrics, want.mse, want.rmse, want.max_abs_err, want.sqnr_db, want.cosine,
                    want.rel_fro_err, want.count, want.nonfinite_count, 1e-12);
  EXPECT_TRUE(std::isinf(q.run.metrics.mse));
}

TEST(BackendEdgeTest, QuantDequantMetricsDoNotDependOnTheOutputDtype) {
  // kernels/ choice (FORMATS.md does not say): the metrics measure the quantization, i.e. the
  // fp32 x̂, not its F16 / BF16 storage.
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  QuantSpec requested;
  requested.format = Format::kInt8;
  requested.granularity = Granularity::kToken;
  const Shape shape = {4, 50};
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const std::vector<float> x = MakeFill(FillKind::kNormal, 200, Format::kInt8, false, 2);
  ErrorMetrics f32, f16, bf16;
  ASSERT_THAT(RunQuantDequant(*backend, FloatBytes(x), DType::kF32, shape, spec, DType::kF32, &f32),
              IsOk());
  ASSERT_THAT(RunQuantDequant(*backend, FloatBytes(x), DType::kF32, shape, spec, DType::kF16, &f16),
              IsOk());
  ASSERT_THAT(
      RunQuantDequant(*backend, FloatBytes(x), DType::kF32, shape, spec, DType::kBF16, &bf16),
      IsOk());
  EXPECT_EQ(f32.mse, f16.mse);
  EXPECT_EQ(f32.mse, bf16.mse);
  EXPECT_EQ(f32.sqnr_db, bf16.sqnr_db);
}

TEST(BackendEdgeTest, MetricsSpecialCases) {
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = Granularity::kTensor;
  // Exact: sqnr +inf, cosine 1, rel_fro 0.
  const Quantized exact = QuantizeFloats({127.0f, -3.0f}, {2}, spec);
  ASSERT_THAT(exact.status, IsOk());
  EXPECT_EQ(exact.run.metrics.sqnr_db, std::numeric_limits<double>::infinity());
  EXPECT_DOUBLE_EQ(exact.run.metrics.cosine, 1.0);
  EXPECT_EQ(exact.run.metrics.rel_fro_err, 0.0);
  EXPECT_EQ(exact.run.metrics.mse, 0.0);
  // All zero: cosine 1 when both are zero.
  const Quantized zeros = QuantizeFloats({0.0f, 0.0f}, {2}, spec);
  ASSERT_THAT(zeros.status, IsOk());
  EXPECT_EQ(zeros.run.metrics.cosine, 1.0);
  EXPECT_EQ(zeros.run.metrics.sqnr_db, std::numeric_limits<double>::infinity());
  // Nonfinite inputs are counted, not summed.
  const Quantized inf = QuantizeFloats({std::numeric_limits<float>::infinity(), 1.0f}, {2}, spec);
  ASSERT_THAT(inf.status, IsOk());
  EXPECT_EQ(inf.run.metrics.count, 1);
  EXPECT_EQ(inf.run.metrics.nonfinite_count, 1);
  EXPECT_EQ(inf.run.metrics.mse, 0.0);
  // CompareTensors is the same arithmetic on two tensors.
  std::vector<float> a = {1.0f, 2.0f, 3.0f, std::nanf("")}, b = {1.5f, 2.0f, 2.0f, 0.0f};
  absl::StatusOr<ErrorMetrics> m =
      CompareTensors({DType::kF32, {4}, a.data(), 16}, {DType::kF32, {4}, b.data(), 16});
  ASSERT_THAT(m, IsOk());
  const oracle::Metrics want = oracle::ComputeMetrics(a, b);
  ExpectMetricsNear(*m, want.mse, want.rmse, want.max_abs_err, want.sqnr_db, want.cosine,
                    want.rel_fro_err, want.count, want.nonfinite_count, 1e-12);
}

}  // namespace
}  // namespace quantd::testing
