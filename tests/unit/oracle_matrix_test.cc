// The acceptance check: for every format of the traits table × granularity × input dtype ×
// shape, the CPU backend's codes, scales, zero-points, dequantized values and metrics equal the
// independent oracle (oracle.h) bit for bit (metrics: to 1e-9 relative).
//
// Each test instance is one (format, granularity, shape). Inside, fills × symmetric /
// asymmetric × input dtype run, each with one "knob" (rounding, seed, overflow, clip ratio, NaN
// policy, packing) that rotates with the case, so that across the instances every knob meets
// every fill and dtype. The 217x256 shape runs a hash-chosen subset. (The dtype is a loop, not
// a parameter, to keep the instance count, and CTest's one process per instance, down.)
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "oracle.h"
#include "quantd/backend.h"
#include "quantd/executor.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

struct GranularityCase {
  const char* name;
  Granularity granularity;
  int axis;
  int64_t group_size;
  int64_t block_rows;
  int64_t block_cols;
};
constexpr GranularityCase kGranularities[] = {
    {"None", Granularity::kNone, 0, 0, 0, 0},
    {"Tensor", Granularity::kTensor, 0, 0, 0, 0},
    {"Channel0", Granularity::kChannel, 0, 0, 0, 0},
    {"Channel1", Granularity::kChannel, 1, 0, 0, 0},
    {"ChannelM1", Granularity::kChannel, -1, 0, 0, 0},
    {"Token", Granularity::kToken, 0, 0, 0, 0},
    {"Group4", Granularity::kGroup, 0, 4, 0, 0},
    {"Group16", Granularity::kGroup, 0, 16, 0, 0},
    {"Group32", Granularity::kGroup, 0, 32, 0, 0},
    {"Group128", Granularity::kGroup, 0, 128, 0, 0},
    {"Block2x3", Granularity::kBlock, 0, 0, 2, 3},
    {"Block16x32", Granularity::kBlock, 0, 0, 16, 32},
    {"Block128x128", Granularity::kBlock, 0, 0, 128, 128},
};

const Shape kShapes[] = {{1, 16}, {5, 160}, {217, 256}, {3, 5, 7},  {1},
                         {0, 4},  {2, 0},   {},         {4, 1, 33}, {2, 3, 4, 5}};
constexpr DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

struct Knob {
  const char* name;
  Rounding rounding;
  uint64_t seed;
  Overflow overflow;
  float clip_ratio;
  NanPolicy nan_policy;
  Packing packing;
};
constexpr Knob kKnobs[] = {
    {"defaults", Rounding::kUnspecified, 0, Overflow::kUnspecified, 0.0f, NanPolicy::kUnspecified,
     Packing::kUnspecified},
    {"away_clip0.9", Rounding::kNearestAway, 0, Overflow::kSaturate, 0.9f, NanPolicy::kUnspecified,
     Packing::kBitstream},
    {"stochastic_seed1", Rounding::kStochastic, 1, Overflow::kSaturate, 1.0f,
     NanPolicy::kUnspecified, Packing::kUnspecified},
    {"stochastic_bigseed_nonfinite_clip0.75", Rounding::kStochastic, 0xDEADBEEFCAFEF00Dull,
     Overflow::kNonfinite, 0.75f, NanPolicy::kZero, Packing::kUnspecified},
    {"rne_nonfinite_clip0.5", Rounding::kNearestEven, 0, Overflow::kNonfinite, 0.5f,
     NanPolicy::kUnspecified, Packing::kInt32Offset},
    {"away_nonfinite_nanzero", Rounding::kNearestAway, 0, Overflow::kNonfinite, 1.0f,
     NanPolicy::kZero, Packing::kUnspecified},
    {"rne_nanzero_int32offset", Rounding::kNearestEven, 0, Overflow::kSaturate, 1.0f,
     NanPolicy::kZero, Packing::kInt32Offset},
    {"stochastic_seed2_nanreject", Rounding::kStochastic, 2, Overflow::kUnspecified, 0.3f,
     NanPolicy::kReject, Packing::kUnspecified},
};
constexpr int kNumKnobs = sizeof(kKnobs) / sizeof(kKnobs[0]);

struct MatrixCase {
  Format format;
  GranularityCase granularity;
  Shape shape;
  int index;  // position in the matrix, for the rotation of knobs
};

std::vector<MatrixCase> AllCases() {
  std::vector<MatrixCase> cases;
  for (Format format : AllFormats()) {
    for (const GranularityCase& g : kGranularities) {
      for (const Shape& shape : kShapes) {
        cases.push_back({format, g, shape, static_cast<int>(cases.size())});
      }
    }
  }
  return cases;
}

void PrintTo(const MatrixCase& c, std::ostream* os) {
  *os << FormatName(c.format) << " " << c.granularity.name << " " << ShapeToString(c.shape);
}

std::string CaseName(const ::testing::TestParamInfo<MatrixCase>& info) {
  const MatrixCase& c = info.param;
  return absl::StrCat(CamelName(FormatName(c.format)), "_", c.granularity.name, "_",
                      ShapeName(c.shape));
}

// A knob as the format can take it: NONFINITE only where the format has Inf or NaN, and
// INT32_OFFSET only for int4. (The refusals themselves are pinned in spec_test.cc.)
QuantSpec MakeSpec(const MatrixCase& c, bool asymmetric, const Knob& knob) {
  const FormatTraits& traits = Traits(c.format);
  QuantSpec spec;
  spec.format = c.format;
  spec.granularity = c.granularity.granularity;
  spec.axis = c.granularity.axis;
  spec.group_size = c.granularity.group_size;
  spec.block_rows = c.granularity.block_rows;
  spec.block_cols = c.granularity.block_cols;
  spec.asymmetric = asymmetric;
  spec.rounding = knob.rounding;
  spec.seed = knob.seed;
  spec.overflow = knob.overflow;
  if (knob.overflow == Overflow::kNonfinite && !traits.has_nan && !traits.has_inf) {
    spec.overflow = Overflow::kSaturate;
  }
  spec.clip_ratio = knob.clip_ratio;
  spec.nan_policy = knob.nan_policy;
  spec.packing = knob.packing;
  if (knob.packing == Packing::kInt32Offset && c.format != Format::kInt4) {
    spec.packing = Packing::kBitstream;
  }
  if (traits.block.size > 0) {
    // Block scales come from each block: no clip ratio, saturating elements.
    spec.clip_ratio = 0.0f;
    if (spec.overflow == Overflow::kNonfinite) spec.overflow = Overflow::kSaturate;
  }
  if (traits.scale_kind == ScaleKind::kE8M0) {
    // MX: the scale rule rotates with the case (unspecified = FLOOR, FLOOR, RCEIL, EVEN).
    spec.scale_rounding = static_cast<ScaleRounding>((c.index + (knob.seed & 3)) % 4);
  }
  return spec;
}

std::string Describe(const std::vector<float>& x, size_t i) {
  return absl::StrFormat("x[%d] = %.9g (0x%08x)", i, x[i], Bits(x[i]));
}

// Runs one spec × fill through the backend and the oracle and compares everything.
void CompareWithOracle(Backend& backend, const MatrixCase& c, DType dtype, FillKind fill,
                       bool asymmetric, const Knob& knob) {
  SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " fill=", FillName(fill), " asymmetric=", asymmetric,
                            " knob=", knob.name));
  const QuantSpec requested = MakeSpec(c, asymmetric, knob);
  int64_t numel = 1;
  for (int64_t d : c.shape) numel *= d;
  const std::vector<float> raw =
      MakeFill(fill, numel, c.format, asymmetric, static_cast<uint64_t>(c.index) + 1);
  const std::vector<uint8_t> bytes = oracle::ToBytes(raw, dtype);
  const std::vector<float> x = oracle::FromBytes(bytes, dtype);

  oracle::Resolved oracle_spec;
  const absl::Status oracle_verdict = oracle::Resolve(requested, c.shape, &oracle_spec);
  absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, c.shape);
  if (!oracle_verdict.ok()) {
    EXPECT_THAT(spec, StatusIs(absl::StatusCode::kInvalidArgument))
        << "the oracle refuses this spec: " << oracle_verdict;
    return;
  }
  ASSERT_THAT(spec, IsOk()) << SpecToString(requested);

  const oracle::Result want = oracle::Quantize(x, c.shape, requested);
  const BackendRun got = RunQuantize(backend, bytes, dtype, c.shape, requested);
  if (!want.status.ok()) {
    // A refused NaN ("InvalidArgument naming the element"), or an asymmetric range that
    // overflows fp32.
    std::string fragment = "overflows float32";
    const bool flatquant = Traits(c.format).kronecker_transform;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i]) && !(flatquant && oracle_spec.nan_policy == NanPolicy::kZero)) {
        fragment = absl::StrCat("element ", i, " is NaN");
        break;
      }
      if (flatquant && std::isinf(x[i])) {  // FlatQuant refuses ±Inf too
        fragment = absl::StrCat("element ", i, " is infinite");
        break;
      }
    }
    EXPECT_THAT(got.status, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(fragment)))
        << want.status;
    return;
  }
  ASSERT_THAT(got.status, IsOk());

  EXPECT_EQ(got.layout.scale_shape, want.grouping.scale_shape);
  EXPECT_EQ(got.layout.geometry.num_scales, want.grouping.num_scales);
  ASSERT_EQ(got.codes.size(), want.packed_codes.size()) << "code bytes";
  ASSERT_EQ(got.scales.size(), want.scales.size());

  // Scales and zero-points, bit for bit.
  int bad = 0;
  for (size_t k = 0; k < want.scales.size() && bad < 5; ++k) {
    if (Bits(got.scales[k]) != Bits(want.scales[k])) {
      ++bad;
      ADD_FAILURE() << absl::StrFormat("scale[%d]: backend %.9g (0x%08x), oracle %.9g (0x%08x)", k,
                                       got.scales[k], Bits(got.scales[k]), want.scales[k],
                                       Bits(want.scales[k]));
    }
  }
  EXPECT_EQ(got.zero_points, want.zero_points);
  EXPECT_EQ(Bits(got.global_scale), Bits(want.global_scale)) << "NVFP4 global scale";

  // Codes, element by element (then the raw bytes, which pins padding bits too).
  const oracle::FormatInfo& info = *want.spec.info;
  const std::vector<uint32_t> got_codes = oracle::Unpack(
      got.codes, want.grouping.rows, want.grouping.cols, info.bits, want.spec.packing);
  bad = 0;
  for (size_t i = 0; i < x.size() && bad < 5; ++i) {
    if (got_codes[i] != want.codes[i]) {
      ++bad;
      const size_t k = static_cast<size_t>(want.grouping.group_of[i]);
      ADD_FAILURE() << absl::StrFormat(
          "%s, scale %.9g, zp %d: backend code 0x%02x, oracle code 0x%02x", Describe(x, i),
          want.scales[k], want.zero_points.empty() ? 0 : want.zero_points[k], got_codes[i],
          want.codes[i]);
    }
  }
  if (bad == 0) {
    EXPECT_EQ(got.codes, want.packed_codes) << "padding bits differ";
  }

  const oracle::Metrics& m = want.metrics;
  ExpectMetricsNear(got.metrics, m.mse, m.rmse, m.max_abs_err, m.sqnr_db, m.cosine, m.rel_fro_err,
                    m.count, m.nonfinite_count, 1e-9);

  // Dequantize of the backend's own codes.
  absl::StatusOr<std::vector<uint8_t>> deq =
      RunDequantize(backend, *spec, c.shape, got, DType::kF32);
  ASSERT_THAT(deq, IsOk());
  const std::vector<float> x_hat = AsFloats(*deq);
  bad = 0;
  for (size_t i = 0; i < x.size() && bad < 5; ++i) {
    if (!SameFloat(x_hat[i], want.x_hat[i])) {
      ++bad;
      ADD_FAILURE() << absl::StrFormat("dequantize %s: backend %.9g, oracle %.9g", Describe(x, i),
                                       x_hat[i], want.x_hat[i]);
    }
  }

  // Fake quantization in one pass, into F32 and into the input's dtype.
  ErrorMetrics qdq_metrics;
  absl::StatusOr<std::vector<uint8_t>> qdq =
      RunQuantDequant(backend, bytes, dtype, c.shape, *spec, DType::kF32, &qdq_metrics);
  ASSERT_THAT(qdq, IsOk());
  const std::vector<float> fake = AsFloats(*qdq);
  bad = 0;
  for (size_t i = 0; i < x.size() && bad < 5; ++i) {
    if (!SameFloat(fake[i], want.x_hat[i])) {
      ++bad;
      ADD_FAILURE() << absl::StrFormat("quant-dequant %s: backend %.9g, oracle %.9g",
                                       Describe(x, i), fake[i], want.x_hat[i]);
    }
  }
  ExpectMetricsNear(qdq_metrics, m.mse, m.rmse, m.max_abs_err, m.sqnr_db, m.cosine, m.rel_fro_err,
                    m.count, m.nonfinite_count, 1e-9);
  if (dtype != DType::kF32) {
    absl::StatusOr<std::vector<uint8_t>> narrow =
        RunQuantDequant(backend, bytes, dtype, c.shape, *spec, dtype, nullptr);
    ASSERT_THAT(narrow, IsOk());
    const std::vector<float> got_narrow = oracle::FromBytes(*narrow, dtype);
    const std::vector<float> want_narrow =
        oracle::FromBytes(oracle::ToBytes(want.x_hat, dtype), dtype);
    bad = 0;
    for (size_t i = 0; i < x.size() && bad < 5; ++i) {
      if (!SameFloat(got_narrow[i], want_narrow[i])) {
        ++bad;
        ADD_FAILURE() << absl::StrFormat("quant-dequant into %s %s: backend %.9g, oracle %.9g",
                                         DTypeName(dtype), Describe(x, i), got_narrow[i],
                                         want_narrow[i]);
      }
    }
  }
}

class OracleMatrixTest : public ::testing::TestWithParam<MatrixCase> {
 protected:
  static void SetUpTestSuite() { pool_ = CreateThreadPoolExecutor(2).release(); }
  static void TearDownTestSuite() {
    delete pool_;
    pool_ = nullptr;
  }
  static Executor* pool_;
};
Executor* OracleMatrixTest::pool_ = nullptr;

TEST_P(OracleMatrixTest, CodesScalesAndMetricsMatchOracle) {
  const MatrixCase& c = GetParam();
  std::unique_ptr<Backend> backend = CreateReferenceBackend(pool_);
  int64_t numel = 1;
  for (int64_t d : c.shape) numel *= d;
  const bool big = numel > 4096;
  int run = 0;
  for (FillKind fill : kAllFills) {
    for (bool asymmetric : {false, true}) {
      for (DType dtype : kDTypes) {
        // 3 is coprime to the 8 knobs and 7 · index walks all of them across the cases: the
        // matrix as a whole crosses every knob with every (fill, symmetry, dtype).
        const int knob = (c.index * 7 + run * 3) % kNumKnobs;
        ++run;
        if (big && (c.index + run) % 15 != 0) continue;
        CompareWithOracle(*backend, c, dtype, fill, asymmetric, kKnobs[knob]);
        if (HasFatalFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, OracleMatrixTest, ::testing::ValuesIn(AllCases()), CaseName);

// ---- Caller-given scales and codes, per format. ----

class OracleStaticTest : public ::testing::TestWithParam<Format> {};

// Static scales spanning the fp32 range (subnormal to huge) and random in-range zero-points:
// "used as given (same formulas, no amax pass)".
TEST_P(OracleStaticTest, StaticScalesMatchOracle) {
  const Format format = GetParam();
  const FormatTraits& t = Traits(format);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  const Shape shape = {6, 21};
  std::mt19937 rng(static_cast<uint32_t>(format) * 31u + 1u);
  std::uniform_real_distribution<float> exponent(-140.0f, 120.0f);
  for (const GranularityCase& g : kGranularities) {
    if (g.granularity == Granularity::kNone) continue;
    for (bool asymmetric : {false, true}) {
      if (asymmetric ? !t.asymmetric_ok : !t.symmetric_ok) continue;
      for (FillKind fill : {FillKind::kNormal, FillKind::kWideRange, FillKind::kSpecials,
                            FillKind::kHuge, FillKind::kSubnormal}) {
        for (Rounding rounding : {Rounding::kNearestEven, Rounding::kStochastic}) {
          SCOPED_TRACE(absl::StrCat(g.name, " asym=", asymmetric, " ", FillName(fill), " ",
                                    RoundingName(rounding)));
          QuantSpec spec;
          spec.format = format;
          spec.granularity = g.granularity;
          spec.axis = g.axis;
          spec.group_size = g.group_size;
          spec.block_rows = g.block_rows;
          spec.block_cols = g.block_cols;
          spec.asymmetric = asymmetric;
          spec.rounding = rounding;
          spec.seed = 77;
          spec.nan_policy = t.has_nan ? NanPolicy::kPropagate : NanPolicy::kZero;
          spec.overflow = t.has_inf || t.has_nan ? Overflow::kNonfinite : Overflow::kSaturate;
          absl::StatusOr<QuantSpec> dynamic = ResolveSpec(spec, shape);
          if (!dynamic.ok()) continue;  // e.g. channel axis 1 of 2 is fine; nothing else refuses
          const QuantLayout layout = *ComputeLayout(*dynamic, shape);
          for (int64_t k = 0; k < layout.geometry.num_scales; ++k) {
            // Every tenth scale is 1, the rest log-uniform over 2^-140 .. 2^120.
            spec.static_scales.push_back(k % 10 == 0 ? 1.0f : std::exp2(exponent(rng)));
            if (asymmetric) {
              spec.static_zero_points.push_back(
                  t.qmin +
                  static_cast<int32_t>(rng() % static_cast<uint32_t>(t.qmax - t.qmin + 1)));
            }
          }
          const std::vector<float> x = MakeFill(fill, 6 * 21, format, asymmetric, 13);
          const oracle::Result want = oracle::Quantize(x, shape, spec);
          const BackendRun got =
              RunQuantize(*backend, oracle::ToBytes(x, DType::kF32), DType::kF32, shape, spec);
          if (t.kronecker_transform && !want.status.ok()) {
            // FlatQuant refuses ±Inf input, which its transform would spread over the row.
            EXPECT_THAT(got.status, StatusIs(absl::StatusCode::kInvalidArgument));
            continue;
          }
          ASSERT_THAT(want.status, IsOk());
          ASSERT_THAT(got.status, IsOk());
          EXPECT_EQ(got.codes, want.packed_codes);
          EXPECT_EQ(got.scales, spec.static_scales);
          EXPECT_EQ(got.zero_points, want.zero_points);
          const QuantSpec resolved = *ResolveSpec(spec, shape);
          absl::StatusOr<std::vector<uint8_t>> deq =
              RunDequantize(*backend, resolved, shape, got, DType::kF32);
          ASSERT_THAT(deq, IsOk());
          const std::vector<float> x_hat = AsFloats(*deq);
          for (size_t i = 0; i < x.size(); ++i) {
            ASSERT_TRUE(SameFloat(x_hat[i], want.x_hat[i]))
                << Describe(x, i) << ": backend " << x_hat[i] << ", oracle " << want.x_hat[i];
          }
          const oracle::Metrics& m = want.metrics;
          ExpectMetricsNear(got.metrics, m.mse, m.rmse, m.max_abs_err, m.sqnr_db, m.cosine,
                            m.rel_fro_err, m.count, m.nonfinite_count, 1e-9);
        }
      }
    }
  }
}

// Dequantize of arbitrary bytes (every NaN / Inf code, padding nibbles set) into every dtype.
TEST_P(OracleStaticTest, DequantizeOfArbitraryCodesMatchesOracle) {
  const Format format = GetParam();
  const FormatTraits& t = Traits(format);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(nullptr);
  std::mt19937 rng(static_cast<uint32_t>(format) + 5u);
  for (const Shape& shape : {Shape{5, 9}, Shape{3, 16}, Shape{7}, Shape{2, 2, 3}}) {
    for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
      if (packing == Packing::kInt32Offset && format != Format::kInt4) continue;
      for (bool asymmetric : {false, true}) {
        if (asymmetric ? !t.asymmetric_ok : !t.symmetric_ok) continue;
        QuantSpec requested;
        requested.format = format;
        requested.granularity = Granularity::kToken;
        requested.asymmetric = asymmetric;
        requested.packing = packing;
        const QuantSpec spec = *ResolveSpec(requested, shape);
        const QuantLayout layout = *ComputeLayout(spec, shape);
        BackendRun run;
        for (int64_t b = 0; b < layout.code_bytes; ++b) {
          run.codes.push_back(static_cast<uint8_t>(rng()));
        }
        for (int64_t k = 0; k < layout.geometry.num_scales; ++k) {
          run.scales.push_back(std::ldexp(1.0f + static_cast<float>(rng() % 100) / 64.0f,
                                          static_cast<int>(rng() % 40) - 20));
          if (asymmetric) {
            run.zero_points.push_back(
                t.qmin + static_cast<int32_t>(rng() % static_cast<uint32_t>(t.qmax - t.qmin + 1)));
          }
        }
        oracle::Resolved resolved;
        ASSERT_THAT(oracle::Resolve(requested, shape, &resolved), IsOk());
        const std::vector<float> want =
            oracle::Dequantize(run.codes, run.scales, run.zero_points, shape, resolved);
        for (DType out : kDTypes) {
          absl::StatusOr<std::vector<uint8_t>> got = RunDequantize(*backend, spec, shape, run, out);
          ASSERT_THAT(got, IsOk());
          const std::vector<float> got_values = oracle::FromBytes(*got, out);
          const std::vector<float> want_values = oracle::FromBytes(oracle::ToBytes(want, out), out);
          for (size_t i = 0; i < want.size(); ++i) {
            ASSERT_TRUE(SameFloat(got_values[i], want_values[i]))
                << ShapeName(shape) << " " << DTypeName(out) << " element " << i << ": backend "
                << got_values[i] << ", oracle " << want_values[i];
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, OracleStaticTest, ::testing::ValuesIn(FormatsWithFreeScales()),
                         FormatParamName);

}  // namespace
}  // namespace quantd::testing
