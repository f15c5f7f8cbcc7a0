// The CUDA backend against the CPU backend (the oracle): codes, scales and zero-points bit for
// bit over the traits table × granularities × F32/F16/BF16 × ragged shapes × nasty fills,
// fresh random data each run (the seed is printed on failure), outputs poisoned before every
// launch. Metrics within fp64-reordering tolerance. Skips itself without a GPU.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "quantd/spec.h"
#include "test_support.h"

namespace quantd {
namespace {

using ::quantd::testing::FillKind;
using ::quantd::testing::FillName;
using ::quantd::testing::MakeFill;
using ::quantd::testing::NearRel;
using ::quantd::testing::SameFloat;

// A fresh seed per process, printed with every failure.
uint64_t RunSeed() {
  static const uint64_t seed =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return seed;
}

class GpuBackendTest : public ::testing::Test {
 public:
  static Backend* cpu() { return cpu_; }
  static Backend* gpu() { return gpu_; }

 protected:
  static void SetUpTestSuite() {
    if (!CudaBackendBuilt() || CudaDeviceCount() == 0) return;
    pool_ = CreateThreadPoolExecutor(0).release();
    cpu_ = CreateReferenceBackend(pool_).release();
    CudaBackendOptions options;
    options.mse_search_min_pairs = 0;  // every MSE clip search on the GPU, however small
    absl::StatusOr<std::unique_ptr<Backend>> gpu = CreateCudaBackend(options);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = gpu->release();
  }

  void SetUp() override {
    if (gpu_ == nullptr) GTEST_SKIP() << "no CUDA device visible (or a build without CUDA)";
  }

  static Executor* pool_;
  static Backend* cpu_;
  static Backend* gpu_;
};
Executor* GpuBackendTest::pool_ = nullptr;
Backend* GpuBackendTest::cpu_ = nullptr;
Backend* GpuBackendTest::gpu_ = nullptr;

struct Outputs {
  absl::Status status;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  float global_scale = -1.0f;    // NVFP4: written by Quantize
  DoubleQuantized double_quant;  // NF4 with double quantization
  ErrorMetrics metrics;
};

// Quantize with outputs poisoned first, so that an element the kernel skipped shows.
// With `upload`, `bytes` may be empty: the input is then the upload's `upload_bytes`.
Outputs Quantize(Backend& backend, const std::vector<uint8_t>& bytes, DType dtype,
                 const Shape& shape, const QuantSpec& spec, const QuantLayout& layout,
                 const TensorUpload* upload = nullptr, int64_t upload_bytes = 0) {
  Outputs o;
  o.codes.assign(layout.code_bytes, 0xA5);
  o.scales.assign(layout.geometry.num_scales, std::numeric_limits<float>::quiet_NaN());
  o.zero_points.assign(spec.asymmetric ? layout.geometry.num_scales : 0, 0x5A5A5A5A);
  o.metrics.mse = -1.0;
  const TensorView input{dtype, shape, bytes.empty() ? nullptr : bytes.data(),
                         bytes.empty() ? upload_bytes : static_cast<int64_t>(bytes.size()), upload};
  o.status = backend.Quantize(
      input, spec,
      {o.codes.data(), layout.code_bytes, o.scales.data(), layout.geometry.num_scales,
       spec.asymmetric ? o.zero_points.data() : nullptr, &o.global_scale,
       spec.double_quant ? &o.double_quant : nullptr},
      &o.metrics);
  return o;
}

void ExpectMetricsClose(const ErrorMetrics& gpu, const ErrorMetrics& cpu) {
  // Both sum in fp64; only the order differs.
  EXPECT_TRUE(NearRel(gpu.mse, cpu.mse, 1e-9, 1e-300)) << gpu.mse << " vs " << cpu.mse;
  EXPECT_TRUE(NearRel(gpu.max_abs_err, cpu.max_abs_err, 0.0)) << gpu.max_abs_err;
  EXPECT_TRUE(NearRel(gpu.sqnr_db, cpu.sqnr_db, 1e-9, 1e-9))
      << gpu.sqnr_db << " vs " << cpu.sqnr_db;
  EXPECT_TRUE(NearRel(gpu.cosine, cpu.cosine, 1e-9, 1e-12)) << gpu.cosine << " vs " << cpu.cosine;
  EXPECT_TRUE(NearRel(gpu.rel_fro_err, cpu.rel_fro_err, 1e-9, 1e-300));
  EXPECT_EQ(gpu.count, cpu.count);
  EXPECT_EQ(gpu.nonfinite_count, cpu.nonfinite_count);
}

std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) StoreFromFloat(dtype, bytes.data(), i, values[i]);
  return bytes;
}

struct GranularityCase {
  const char* name;
  Granularity granularity;
  int axis;
  int64_t group_size;
  int64_t block_rows, block_cols;
};

constexpr GranularityCase kGranularities[] = {
    {"none", Granularity::kNone, 0, 0, 0, 0},
    {"tensor", Granularity::kTensor, 0, 0, 0, 0},
    {"channel0", Granularity::kChannel, 0, 0, 0, 0},
    {"channel_last", Granularity::kChannel, -1, 0, 0, 0},
    {"token", Granularity::kToken, 0, 0, 0, 0},
    {"group7", Granularity::kGroup, 0, 7, 0, 0},
    {"group16", Granularity::kGroup, 0, 16, 0, 0},
    {"group32", Granularity::kGroup, 0, 32, 0, 0},
    {"group128", Granularity::kGroup, 0, 128, 0, 0},
    {"block16x32", Granularity::kBlock, 0, 0, 16, 32},
    {"block128x128", Granularity::kBlock, 0, 0, 128, 128},
    // (Last: tests index the rows above.) One 8-element vector per group: the lane-group kernel's
    // two vectors per thread are two groups, and an odd count of them leaves a lone last vector
    // ({3, 5, 8} has 15).
    {"group8", Granularity::kGroup, 0, 8, 0, 0},
};

// The spec a test asks for: `format` at granularity case `gc`, everything else default.
QuantSpec RequestedSpec(Format format, const GranularityCase& gc) {
  QuantSpec requested;
  requested.format = format;
  requested.granularity = gc.granularity;
  requested.axis = gc.axis;
  requested.group_size = gc.group_size;
  requested.block_rows = gc.block_rows;
  requested.block_cols = gc.block_cols;
  return requested;
}

const Shape kShapes[] = {{1, 16},    {5, 160},   {217, 256},  {3, 5, 7},  {1},
                         {0, 4},     {2, 0},     {},          {4, 1, 33}, {3, 5, 8},
                         {64, 4096}, {3, 70000}, {1, 1000003}};

struct Knob {
  const char* name;
  Rounding rounding;
  Overflow overflow;
  NanPolicy nan_policy;
  float clip;
};
constexpr Knob kKnobs[] = {
    {"rne", Rounding::kNearestEven, Overflow::kUnspecified, NanPolicy::kUnspecified, 0.0f},
    {"away_nonfinite", Rounding::kNearestAway, Overflow::kNonfinite, NanPolicy::kUnspecified, 0.0f},
    {"stochastic_clip", Rounding::kStochastic, Overflow::kUnspecified, NanPolicy::kZero, 0.7f},
};

class GpuMatrixTest : public GpuBackendTest,
                      public ::testing::WithParamInterface<std::tuple<Format, int>> {};

TEST_P(GpuMatrixTest, CodesScalesAndOutputsMatchTheCpuBitForBit) {
  const Format format = std::get<0>(GetParam());
  const GranularityCase& gc = kGranularities[std::get<1>(GetParam())];
  const FillKind fills[] = {FillKind::kNormal,    FillKind::kZeros,    FillKind::kSubnormal,
                            FillKind::kMaxNormal, FillKind::kTies,     FillKind::kSpecials,
                            FillKind::kHuge,      FillKind::kWideRange};
  int compared = 0;
  for (const Shape& shape : kShapes) {
    const int64_t numel = *NumElements(shape);
    for (bool asymmetric : {false, true}) {
      for (const Knob& knob : kKnobs) {
        QuantSpec requested = RequestedSpec(format, gc);
        requested.asymmetric = asymmetric;
        requested.rounding = knob.rounding;
        requested.overflow = knob.overflow;
        requested.nan_policy = knob.nan_policy;
        requested.clip_ratio = knob.clip;
        requested.seed = RunSeed();
        if (Traits(format).block.size > 0) {
          // Block formats: no clip ratio and saturating elements; MX rotates the scale rule.
          requested.clip_ratio = 0.0f;
          requested.overflow = Overflow::kSaturate;
        }
        if (Traits(format).scale_kind == ScaleKind::kE8M0) {
          requested.scale_rounding = static_cast<ScaleRounding>(1 + (&knob - kKnobs + numel) % 3);
        }
        // NF4: double quantization on every other shape.
        requested.double_quant = format == Format::kNf4 && numel % 2 == 1;
        absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
        if (!spec.ok()) continue;  // a combination the format refuses: the CPU tests cover it
        const QuantLayout layout = *ComputeLayout(*spec, shape);
        for (FillKind fill : fills) {
          // Big shapes with a few fills only: the small ones carry the corner cases.
          if (numel > 100000 && fill != FillKind::kNormal && fill != FillKind::kSpecials) continue;
          const uint64_t seed = RunSeed() ^ (static_cast<uint64_t>(fill) << 40) ^ numel;
          const std::vector<float> values = MakeFill(fill, numel, format, asymmetric, seed);
          for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
            SCOPED_TRACE(absl::StrCat(FormatName(format), " ", gc.name, " ", ShapeToString(shape),
                                      asymmetric ? " asym " : " sym ", knob.name, " ",
                                      FillName(fill), " ", DTypeName(dtype), " seed=", RunSeed()));
            const std::vector<uint8_t> bytes = Encode(values, dtype);
            const Outputs cpu = Quantize(*cpu_, bytes, dtype, shape, *spec, layout);
            const Outputs gpu = Quantize(*gpu_, bytes, dtype, shape, *spec, layout);
            ASSERT_EQ(gpu.status.code(), cpu.status.code()) << gpu.status << " vs " << cpu.status;
            if (!cpu.status.ok()) continue;
            ++compared;
            ASSERT_EQ(gpu.codes, cpu.codes);
            ASSERT_EQ(testing::Bits(gpu.global_scale), testing::Bits(cpu.global_scale));
            ASSERT_EQ(gpu.double_quant.codes, cpu.double_quant.codes);
            ASSERT_EQ(gpu.double_quant.scales, cpu.double_quant.scales);
            ASSERT_EQ(testing::Bits(gpu.double_quant.offset),
                      testing::Bits(cpu.double_quant.offset));
            for (size_t i = 0; i < cpu.scales.size(); ++i) {
              ASSERT_EQ(testing::Bits(gpu.scales[i]), testing::Bits(cpu.scales[i]))
                  << "scale " << i;
            }
            ASSERT_EQ(gpu.zero_points, cpu.zero_points);
            ExpectMetricsClose(gpu.metrics, cpu.metrics);

            // Dequantize and fake-quantize, each into a dtype of its own.
            const DType out_dtype = dtype == DType::kF32 ? DType::kBF16 : DType::kF32;
            std::vector<uint8_t> cpu_out(numel * DTypeSize(out_dtype), 0x7F);
            std::vector<uint8_t> gpu_out(cpu_out.size(), 0xC3);
            // NF4 with double quantization dequantizes with the absmax it reconstructs.
            const std::vector<float> dequant_scales =
                spec->double_quant ? DoubleDequantize(cpu.double_quant) : cpu.scales;
            const ConstQuantizedBuffers in{cpu.codes.data(),
                                           layout.code_bytes,
                                           dequant_scales.data(),
                                           layout.geometry.num_scales,
                                           spec->asymmetric ? cpu.zero_points.data() : nullptr,
                                           cpu.global_scale};
            const MutableTensorView cpu_view{out_dtype, shape, cpu_out.data(),
                                             static_cast<int64_t>(cpu_out.size())};
            const MutableTensorView gpu_view{out_dtype, shape, gpu_out.data(),
                                             static_cast<int64_t>(gpu_out.size())};
            ASSERT_TRUE(cpu_->Dequantize(in, *spec, cpu_view).ok());
            ASSERT_TRUE(gpu_->Dequantize(in, *spec, gpu_view).ok());
            ASSERT_EQ(gpu_out, cpu_out) << "dequantize";

            std::fill(cpu_out.begin(), cpu_out.end(), 0x11);
            std::fill(gpu_out.begin(), gpu_out.end(), 0xEE);
            const TensorView input{dtype, shape, bytes.data(), static_cast<int64_t>(bytes.size())};
            ErrorMetrics cpu_metrics, gpu_metrics;
            ASSERT_TRUE(cpu_->QuantDequant(input, *spec, cpu_view, &cpu_metrics).ok());
            ASSERT_TRUE(gpu_->QuantDequant(input, *spec, gpu_view, &gpu_metrics).ok());
            ASSERT_EQ(gpu_out, cpu_out) << "quant-dequant";
            ExpectMetricsClose(gpu_metrics, cpu_metrics);
          }
        }
      }
    }
  }
  // Every granularity the format takes ran at least once (block formats take their block only).
  const int block = Traits(format).block.size;
  if (FormatAllows(format, gc.granularity) && (block == 0 || gc.group_size == block)) {
    EXPECT_GT(compared, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllFormats, GpuMatrixTest,
    ::testing::Combine(::testing::ValuesIn(AllFormats()),
                       ::testing::Range(0, static_cast<int>(std::size(kGranularities)))),
    [](const ::testing::TestParamInfo<std::tuple<Format, int>>& param_info) {
      return testing::CamelName(FormatName(std::get<0>(param_info.param))) + "_" +
             kGranularities[std::get<1>(param_info.param)].name;
    });

// Caller-given scales reach what dynamic ones never do: quotients far beyond the code range
// (the clamp before the division), scales at and beyond every bound of the GPU's fast division
// (2^-60, 2^90, subnormal, FLT_MAX), both packings, and every output dtype. Static scales are
// per format, so the same matrix runs over every format the traits table has.
class GpuStaticScalesTest : public GpuBackendTest, public ::testing::WithParamInterface<Format> {};

TEST_P(GpuStaticScalesTest, CodesAndOutputsMatchTheCpuBitForBit) {
  const Format format = GetParam();
  const float kEdgeScales[] = {0x1p-149f,
                               0x1p-127f,
                               0x1.8p-61f,
                               0x1p-60f,
                               0x1.fffffep-61f,
                               0x1p-20f,
                               1.0f,
                               3.0f,
                               0x1p89f,
                               0x1p90f,
                               0x1.000002p90f,
                               0x1p100f,
                               std::numeric_limits<float>::max()};
  const Shape shapes[] = {{5, 160}, {3, 5, 8}, {64, 4096}, {4, 1, 33}};
  const GranularityCase* cases[] = {&kGranularities[1], &kGranularities[2], &kGranularities[4],
                                    &kGranularities[7], &kGranularities[8], &kGranularities[9]};
  std::mt19937 rng(static_cast<uint32_t>(RunSeed()));
  std::uniform_real_distribution<float> log2_scale(-40.0f, 40.0f);
  int compared = 0;
  for (const Shape& shape : shapes) {
    const int64_t numel = *NumElements(shape);
    for (const GranularityCase* gc : cases) {
      for (bool asymmetric : {false, true}) {
        for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
          QuantSpec requested;
          requested.format = format;
          requested.granularity = gc->granularity;
          requested.axis = gc->axis;
          requested.group_size = gc->group_size;
          requested.block_rows = gc->block_rows;
          requested.block_cols = gc->block_cols;
          requested.asymmetric = asymmetric;
          requested.packing = packing;
          absl::StatusOr<QuantSpec> dynamic = ResolveSpec(requested, shape);
          if (!dynamic.ok() || dynamic->granularity == Granularity::kNone) continue;
          const int64_t num_scales = ComputeLayout(*dynamic, shape)->geometry.num_scales;
          const bool asym = dynamic->asymmetric;  // uint formats imply it
          const FormatTraits& traits = Traits(format);
          for (int trial = 0; trial < 3; ++trial) {
            // Edge scales spread over the groups (trial 0), then log-uniform ones.
            requested.static_scales.resize(num_scales);
            requested.static_zero_points.assign(asym ? num_scales : 0, 0);
            for (int64_t g = 0; g < num_scales; ++g) {
              requested.static_scales[g] =
                  trial == 0 ? kEdgeScales[(g + trial) % std::size(kEdgeScales)]
                             : std::exp2(log2_scale(rng)) * (trial == 2 ? 1e-3f : 1.0f);
              if (asym) {
                requested.static_zero_points[g] =
                    std::uniform_int_distribution<int32_t>(traits.qmin, traits.qmax)(rng);
              }
            }
            absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
            ASSERT_TRUE(spec.ok()) << spec.status();
            const QuantLayout layout = *ComputeLayout(*spec, shape);
            for (FillKind fill : testing::kAllFills) {
              if (numel > 100000 && fill != FillKind::kWideRange && fill != FillKind::kSpecials) {
                continue;
              }
              const std::vector<float> values =
                  MakeFill(fill, numel, format, asymmetric, RunSeed() ^ numel ^ trial);
              for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
                SCOPED_TRACE(absl::StrCat(FormatName(format), " ", gc->name, " ",
                                          ShapeToString(shape), asymmetric ? " asym" : " sym",
                                          " packing=", static_cast<int>(packing), " trial=", trial,
                                          " ", FillName(fill), " ", DTypeName(dtype),
                                          " seed=", RunSeed()));
                const std::vector<uint8_t> bytes = Encode(values, dtype);
                const Outputs cpu = Quantize(*cpu_, bytes, dtype, shape, *spec, layout);
                const Outputs gpu = Quantize(*gpu_, bytes, dtype, shape, *spec, layout);
                ASSERT_EQ(gpu.status.code(), cpu.status.code())
                    << gpu.status << " vs " << cpu.status;
                if (!cpu.status.ok()) continue;
                ++compared;
                ASSERT_EQ(gpu.codes, cpu.codes);
                ExpectMetricsClose(gpu.metrics, cpu.metrics);
                for (DType out_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
                  std::vector<uint8_t> cpu_out(numel * DTypeSize(out_dtype), 0x7F);
                  std::vector<uint8_t> gpu_out(cpu_out.size(), 0xC3);
                  const MutableTensorView cpu_view{out_dtype, shape, cpu_out.data(),
                                                   static_cast<int64_t>(cpu_out.size())};
                  const MutableTensorView gpu_view{out_dtype, shape, gpu_out.data(),
                                                   static_cast<int64_t>(gpu_out.size())};
                  const ConstQuantizedBuffers in{cpu.codes.data(),
                                                 layout.code_bytes,
                                                 cpu.scales.data(),
                                                 num_scales,
                                                 asym ? cpu.zero_points.data() : nullptr,
                                                 cpu.global_scale};
                  ASSERT_TRUE(cpu_->Dequantize(in, *spec, cpu_view).ok());
                  ASSERT_TRUE(gpu_->Dequantize(in, *spec, gpu_view).ok());
                  ASSERT_EQ(gpu_out, cpu_out) << "dequantize to " << DTypeName(out_dtype);

                  std::fill(cpu_out.begin(), cpu_out.end(), 0x11);
                  std::fill(gpu_out.begin(), gpu_out.end(), 0xEE);
                  const TensorView input{dtype, shape, bytes.data(),
                                         static_cast<int64_t>(bytes.size())};
                  // With metrics, then without: the element passes differ.
                  ErrorMetrics cpu_metrics, gpu_metrics;
                  ASSERT_TRUE(cpu_->QuantDequant(input, *spec, cpu_view, &cpu_metrics).ok());
                  ASSERT_TRUE(gpu_->QuantDequant(input, *spec, gpu_view, &gpu_metrics).ok());
                  ASSERT_EQ(gpu_out, cpu_out) << "quant-dequant to " << DTypeName(out_dtype);
                  ExpectMetricsClose(gpu_metrics, cpu_metrics);
                  std::fill(gpu_out.begin(), gpu_out.end(), 0xEE);
                  ASSERT_TRUE(gpu_->QuantDequant(input, *spec, gpu_view, nullptr).ok());
                  ASSERT_EQ(gpu_out, cpu_out) << "quant-dequant without metrics";
                }
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 0);
}

INSTANTIATE_TEST_SUITE_P(AllFormats, GpuStaticScalesTest,
                         ::testing::ValuesIn(testing::FormatsWithFreeScales()),
                         [](const ::testing::TestParamInfo<Format>& param_info) {
                           return testing::CamelName(FormatName(param_info.param));
                         });

// Amax, and the MSE clip search on two grids (the GPU sums each candidate's error in the CPU's
// order, so the chosen ratios, scales and zero-points must be the same bits).
// Calibrates `input` on both backends: the same status, and on success the same scales, amax,
// zero-points and clip ratios bit for bit, metrics within summation-order tolerance.
void ExpectCalibrationsMatch(const TensorView& input, const QuantSpec& spec,
                             const CalibrationOptions& options) {
  CalibrationResult cpu, gpu;
  const absl::Status cpu_status = GpuBackendTest::cpu()->Calibrate(input, spec, options, &cpu);
  const absl::Status gpu_status = GpuBackendTest::gpu()->Calibrate(input, spec, options, &gpu);
  ASSERT_EQ(gpu_status.code(), cpu_status.code()) << gpu_status << " vs " << cpu_status;
  if (!cpu_status.ok()) return;
  ASSERT_EQ(gpu.scales.size(), cpu.scales.size());
  for (size_t i = 0; i < cpu.scales.size(); ++i) {
    ASSERT_EQ(testing::Bits(gpu.scales[i]), testing::Bits(cpu.scales[i])) << i;
    ASSERT_EQ(testing::Bits(gpu.amax[i]), testing::Bits(cpu.amax[i])) << i;
  }
  EXPECT_EQ(gpu.zero_points, cpu.zero_points);
  EXPECT_EQ(gpu.clip_ratios, cpu.clip_ratios);
  ExpectMetricsClose(gpu.metrics, cpu.metrics);
}

TEST_F(GpuBackendTest, CalibrateMatchesTheCpu) {
  std::vector<CalibrationOptions> methods(6);
  methods[0].method = CalibrationMethod::kAmax;
  methods[1].method = CalibrationMethod::kMse;
  methods[2].method = CalibrationMethod::kMse;
  methods[2].search_steps = 7;
  methods[2].search_min_ratio = 0.5f;
  // Percentiles that interpolate (99.9, 37.5), land on an element (100) and, asymmetric, put
  // the "lower" percentile above the upper one (3).
  const double percentiles[] = {99.9, 37.5, 100.0, 3.0};
  for (size_t i = 0; i < 3; ++i) {
    methods[3 + i].method = CalibrationMethod::kPercentile;
    methods[3 + i].percentile = percentiles[i];
  }
  methods.push_back(methods[3]);
  methods.back().percentile = percentiles[3];
  for (const CalibrationOptions& options : methods) {
    for (Format format : AllFormats()) {
      for (const GranularityCase& gc : kGranularities) {
        QuantSpec requested = RequestedSpec(format, gc);
        const Shape shape = {37, 300};
        absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
        if (!spec.ok() || spec->granularity == Granularity::kNone) continue;
        SCOPED_TRACE(absl::StrCat(FormatName(format), " ", gc.name, " method ",
                                  static_cast<int>(options.method), " steps ", options.search_steps,
                                  " percentile ", options.percentile, " seed=", RunSeed()));
        const std::vector<float> values =
            MakeFill(FillKind::kSpecials, 37 * 300, format, spec->asymmetric, RunSeed());
        ExpectCalibrationsMatch(
            {DType::kF32, shape, values.data(), static_cast<int64_t>(values.size() * 4)}, *spec,
            options);
      }
    }
  }
}

// Percentile selection over groups from empty to a million elements (one group spread over
// many blocks), with ties, zeros of both signs and non-finite values, in every input dtype.
TEST_F(GpuBackendTest, PercentileMatchesTheCpuOnLargeAndRaggedGroups) {
  const Shape shapes[] = {{3, 5, 7}, {0, 4}, {217, 256}, {3, 70000}, {1, 1000003}};
  const FillKind fills[] = {FillKind::kNormal, FillKind::kZeros, FillKind::kTies,
                            FillKind::kSpecials, FillKind::kWideRange};
  const Format formats[] = {Format::kInt8, Format::kUint4, Format::kFp8E4M3};
  const char* const granularities[] = {"tensor", "channel0", "channel_last", "token",
                                       "block128x128"};
  CalibrationOptions options;
  options.method = CalibrationMethod::kPercentile;
  options.percentile = 99.99;
  uint64_t seed = RunSeed();
  for (const Shape& shape : shapes) {
    const int64_t numel = *NumElements(shape);
    for (const Format format : formats) {
      for (const GranularityCase& gc : kGranularities) {
        if (std::find_if(std::begin(granularities), std::end(granularities), [&](const char* g) {
              return absl::string_view(g) == gc.name;
            }) == std::end(granularities)) {
          continue;
        }
        absl::StatusOr<QuantSpec> spec = ResolveSpec(RequestedSpec(format, gc), shape);
        if (!spec.ok()) continue;
        for (const FillKind fill : fills) {
          for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
            SCOPED_TRACE(absl::StrCat(FormatName(format), " ", gc.name, " ",
                                      absl::StrJoin(shape, "x"), " ", FillName(fill), " ",
                                      DTypeName(dtype), " seed=", seed));
            const std::vector<uint8_t> bytes =
                Encode(MakeFill(fill, numel, format, spec->asymmetric, seed++), dtype);
            ExpectCalibrationsMatch(
                {dtype, shape, bytes.data(), static_cast<int64_t>(bytes.size())}, *spec, options);
          }
        }
      }
    }
  }
}

std::vector<uint32_t> BitsOf(const std::vector<float>& values) {
  std::vector<uint32_t> bits;
  for (const float v : values) bits.push_back(testing::Bits(v));
  return bits;
}

// Hands `bytes` to `upload` in ragged pieces (1 byte up to a few staging buffers' worth).
void AppendInPieces(TensorUpload& upload, const std::vector<uint8_t>& bytes, size_t end,
                    std::mt19937_64& rng) {
  const size_t sizes[] = {1, (4u << 20) - 3, 777777, (8u << 20) + 5, 4096, 65537};
  for (size_t offset = upload.received(); offset < end;) {
    const size_t n = std::min(end - offset, sizes[rng() % std::size(sizes)]);
    ASSERT_TRUE(
        upload.Append(std::string(bytes.begin() + offset, bytes.begin() + offset + n)).ok());
    offset += n;
  }
}

int64_t DeviceMemoryInUse(const Backend& backend) {
  int64_t in_use = 0;
  for (const DeviceTelemetry& device : backend.Telemetry()) in_use += device.memory_in_use_bytes;
  return in_use;
}

// A streamed tensor moves to the device while it arrives (Backend::BeginUpload), and the call
// computes from that copy alone (no host bytes, as the server calls it), whatever the pieces
// were; the CPU backend's share (a small MSE search) reads it back.
TEST_F(GpuBackendTest, UploadedInputGivesTheCpuAnswer) {
  std::mt19937_64 rng(RunSeed());
  struct Case {
    Format format;
    const char* granularity;
    DType dtype;
    Shape shape;  // at least 16 MiB of input: smaller tensors get no upload
  };
  const Case cases[] = {{Format::kInt8, "token", DType::kF32, {2049, 2304}},
                        {Format::kUint4, "group128", DType::kBF16, {4099, 2304}},
                        {Format::kFp8E4M3, "tensor", DType::kF32, {1, 4500001}}};
  for (const Case& c : cases) {
    const GranularityCase& gc = *std::find_if(
        std::begin(kGranularities), std::end(kGranularities),
        [&](const GranularityCase& g) { return absl::string_view(g.name) == c.granularity; });
    const QuantSpec spec = *ResolveSpec(RequestedSpec(c.format, gc), c.shape);
    const QuantLayout layout = *ComputeLayout(spec, c.shape);
    SCOPED_TRACE(absl::StrCat(FormatName(c.format), " ", c.granularity, " seed=", RunSeed()));
    const std::vector<uint8_t> bytes = Encode(
        MakeFill(FillKind::kWideRange, layout.numel, c.format, spec.asymmetric, rng()), c.dtype);
    const auto size = static_cast<int64_t>(bytes.size());
    absl::StatusOr<std::unique_ptr<TensorUpload>> upload =
        gpu_->BeginUpload(c.dtype, c.shape, size);
    ASSERT_TRUE(upload.ok()) << upload.status();
    ASSERT_NE(*upload, nullptr);
    AppendInPieces(**upload, bytes, bytes.size(), rng);
    EXPECT_EQ((*upload)->received(), size);

    const Outputs cpu = Quantize(*cpu_, bytes, c.dtype, c.shape, spec, layout);
    const Outputs gpu = Quantize(*gpu_, {}, c.dtype, c.shape, spec, layout, upload->get(), size);
    ASSERT_TRUE(cpu.status.ok()) << cpu.status;
    ASSERT_TRUE(gpu.status.ok()) << gpu.status;
    EXPECT_TRUE(gpu.codes == cpu.codes);
    EXPECT_EQ(BitsOf(gpu.scales), BitsOf(cpu.scales));
    EXPECT_EQ(gpu.zero_points, cpu.zero_points);
    ExpectMetricsClose(gpu.metrics, cpu.metrics);

    // Calibration from the same device copy: percentile and MSE on the GPU.
    for (const CalibrationMethod method :
         {CalibrationMethod::kPercentile, CalibrationMethod::kMse}) {
      CalibrationOptions options;
      options.method = method;
      CalibrationResult cpu_calibration, gpu_calibration;
      ASSERT_TRUE(
          cpu_->Calibrate({c.dtype, c.shape, bytes.data(), size}, spec, options, &cpu_calibration)
              .ok());
      const absl::Status status = gpu_->Calibrate({c.dtype, c.shape, nullptr, size, upload->get()},
                                                  spec, options, &gpu_calibration);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_EQ(BitsOf(gpu_calibration.scales), BitsOf(cpu_calibration.scales));
      EXPECT_EQ(gpu_calibration.clip_ratios, cpu_calibration.clip_ratios);
    }
    // The CPU backend computes from host memory only.
    CalibrationResult refused;
    EXPECT_EQ(cpu_->Calibrate({c.dtype, c.shape, nullptr, size, upload->get()}, spec, {}, &refused)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    upload->reset();
  }
  EXPECT_EQ(DeviceMemoryInUse(*gpu_), 0);
}

// An upload abandoned half way (a client that cancelled) returns its device memory; one handed
// to a call before it is complete is ignored when the call has the host bytes, and refused when
// it has none.
TEST_F(GpuBackendTest, IncompleteUploadsAreIgnoredAndReleased) {
  std::mt19937_64 rng(RunSeed());
  const Shape shape = {2049, 2304};
  QuantSpec requested;
  requested.format = Format::kInt8;
  requested.granularity = Granularity::kToken;
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  const std::vector<uint8_t> bytes =
      Encode(MakeFill(FillKind::kNormal, layout.numel, spec.format, false, rng()), DType::kF32);
  const auto size = static_cast<int64_t>(bytes.size());
  EXPECT_EQ(*gpu_->BeginUpload(DType::kF32, {16, 1024}, 16 * 1024 * 4), nullptr);  // too small

  absl::StatusOr<std::unique_ptr<TensorUpload>> upload =
      gpu_->BeginUpload(DType::kF32, shape, size);
  ASSERT_TRUE(upload.ok()) << upload.status();
  ASSERT_NE(*upload, nullptr);
  EXPECT_GE(DeviceMemoryInUse(*gpu_), size);
  AppendInPieces(**upload, bytes, bytes.size() / 2, rng);
  const Outputs cpu = Quantize(*cpu_, bytes, DType::kF32, shape, spec, layout);
  const Outputs gpu = Quantize(*gpu_, bytes, DType::kF32, shape, spec, layout, upload->get());
  ASSERT_TRUE(gpu.status.ok()) << gpu.status;
  EXPECT_TRUE(gpu.codes == cpu.codes);
  EXPECT_EQ(BitsOf(gpu.scales), BitsOf(cpu.scales));
  const Outputs refused =
      Quantize(*gpu_, {}, DType::kF32, shape, spec, layout, upload->get(), size);
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << refused.status;
  EXPECT_FALSE((*upload)->Append(std::string(bytes.begin(), bytes.end())).ok());  // too many
  upload->reset();
  EXPECT_EQ(DeviceMemoryInUse(*gpu_), 0);
}

// The CPU backend's share of a CUDA backend's work (here a small MSE search, with the default
// CudaBackendOptions) reads an upload back from the device; an upload is only ever used by the
// backend that made it.
TEST_F(GpuBackendTest, TheCpuShareReadsTheUploadBackAndUploadsStayWithTheirBackend) {
  absl::StatusOr<std::unique_ptr<Backend>> defaults = CreateCudaBackend(CudaBackendOptions());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  std::mt19937_64 rng(RunSeed());
  const Shape shape = {2049, 2304};
  QuantSpec requested;
  requested.format = Format::kInt8;
  const QuantSpec spec = *ResolveSpec(requested, shape);  // one per-tensor scale: 21 MSE pairs
  const std::vector<uint8_t> bytes = Encode(
      MakeFill(FillKind::kNormal, shape[0] * shape[1], spec.format, false, rng()), DType::kF32);
  const auto size = static_cast<int64_t>(bytes.size());
  absl::StatusOr<std::unique_ptr<TensorUpload>> upload =
      (*defaults)->BeginUpload(DType::kF32, shape, size);
  ASSERT_TRUE(upload.ok()) << upload.status();
  ASSERT_NE(*upload, nullptr);
  AppendInPieces(**upload, bytes, bytes.size(), rng);
  CalibrationOptions options;
  options.method = CalibrationMethod::kMse;
  CalibrationResult cpu, gpu;
  ASSERT_TRUE(cpu_->Calibrate({DType::kF32, shape, bytes.data(), size}, spec, options, &cpu).ok());
  const absl::Status status = (*defaults)->Calibrate(
      {DType::kF32, shape, nullptr, size, upload->get()}, spec, options, &gpu);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(BitsOf(gpu.scales), BitsOf(cpu.scales));
  EXPECT_EQ(gpu.clip_ratios, cpu.clip_ratios);

  const QuantLayout layout = *ComputeLayout(spec, shape);
  const Outputs foreign =
      Quantize(*gpu_, {}, DType::kF32, shape, spec, layout, upload->get(), size);
  EXPECT_EQ(foreign.status.code(), absl::StatusCode::kInvalidArgument) << foreign.status;
}

// `values` as `dtype`, quantized by both backends with `requested` resolved for `shape`:
// {cpu, gpu}.
std::pair<Outputs, Outputs> QuantizeOnBoth(const std::vector<float>& values, DType dtype,
                                           const Shape& shape, const QuantSpec& requested) {
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  const std::vector<uint8_t> bytes = Encode(values, dtype);
  return {Quantize(*GpuBackendTest::cpu(), bytes, dtype, shape, spec, layout),
          Quantize(*GpuBackendTest::gpu(), bytes, dtype, shape, spec, layout)};
}

TEST_F(GpuBackendTest, NanRejectionMatchesTheCpu) {
  std::vector<float> values(4096, 1.5f);
  values[1234] = std::numeric_limits<float>::quiet_NaN();
  values[3000] = std::numeric_limits<float>::quiet_NaN();
  QuantSpec requested;
  requested.format = Format::kInt8;
  requested.granularity = Granularity::kToken;
  const auto [cpu, gpu] = QuantizeOnBoth(values, DType::kF32, {4, 1024}, requested);
  EXPECT_EQ(cpu.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu.status, cpu.status);  // same message: the first NaN is element 1234
}

// Quantize, then QuantDequant to F32, of `bytes` on both backends: both succeed with the same
// codes, scales and x̂ bit for bit, and metrics within summation-order tolerance. The two
// Quantize results are left in *cpu and *gpu for the caller's own checks.
void ExpectQuantizeAndFakeQuantMatch(const std::vector<uint8_t>& bytes, DType dtype,
                                     const Shape& shape, const QuantSpec& spec,
                                     const QuantLayout& layout, Outputs* cpu, Outputs* gpu) {
  *cpu = Quantize(*GpuBackendTest::cpu(), bytes, dtype, shape, spec, layout);
  *gpu = Quantize(*GpuBackendTest::gpu(), bytes, dtype, shape, spec, layout);
  ASSERT_TRUE(cpu->status.ok()) << cpu->status;
  ASSERT_TRUE(gpu->status.ok()) << gpu->status;
  ASSERT_EQ(gpu->codes, cpu->codes);
  for (size_t i = 0; i < cpu->scales.size(); ++i) {
    ASSERT_EQ(testing::Bits(gpu->scales[i]), testing::Bits(cpu->scales[i])) << "scale " << i;
  }
  ExpectMetricsClose(gpu->metrics, cpu->metrics);
  const int64_t numel = *NumElements(shape);
  std::vector<uint8_t> cpu_out(numel * 4, 0x11), gpu_out(numel * 4, 0xEE);
  const TensorView input{dtype, shape, bytes.data(), static_cast<int64_t>(bytes.size())};
  ErrorMetrics cpu_metrics, gpu_metrics;
  for (auto [backend, out, metrics] : {std::tuple{GpuBackendTest::cpu(), &cpu_out, &cpu_metrics},
                                       std::tuple{GpuBackendTest::gpu(), &gpu_out, &gpu_metrics}}) {
    ASSERT_TRUE(
        backend
            ->QuantDequant(input, spec,
                           {DType::kF32, shape, out->data(), static_cast<int64_t>(out->size())},
                           metrics)
            .ok())
        << backend->name();
  }
  ASSERT_EQ(gpu_out, cpu_out);
  ExpectMetricsClose(gpu_metrics, cpu_metrics);
}

// NVFP4 with the caller's S_enc (one pass on the GPU): the tensor's own S_enc (the same
// answer as without it), one 64 times larger (blocks saturate at 448, elements at ±6), 2^-14
// of it (block scales of at most 448 · 2^-14: small and subnormal E4M3, some 0), and 2^70
// (s_b saturated at 448, so d_b = 448 / 2^70 lies below the lean range of 2^-60 and codec.h's
// general path runs), on ragged and lean shapes in every input dtype, codes, scales, S_enc
// and x̂ bit for bit.
TEST_F(GpuBackendTest, Nvfp4StaticGlobalScaleMatchesTheCpuBitForBit) {
  std::mt19937 rng(static_cast<uint32_t>(RunSeed()));
  std::normal_distribution<float> normal;
  for (const Shape& shape : {Shape{3, 40}, Shape{64, 4096}, Shape{7, 1, 48}, Shape{1000, 16}}) {
    std::vector<float> values(static_cast<size_t>(*NumElements(shape)));
    for (float& v : values) v = normal(rng) * std::exp2(static_cast<float>(rng() % 9) - 4.0f);
    QuantSpec requested;
    requested.format = Format::kNvfp4;
    const std::vector<uint8_t> f32 = Encode(values, DType::kF32);
    QuantSpec dynamic = *ResolveSpec(requested, shape);
    const QuantLayout layout = *ComputeLayout(dynamic, shape);
    const Outputs reference = Quantize(*cpu_, f32, DType::kF32, shape, dynamic, layout);
    ASSERT_TRUE(reference.status.ok()) << reference.status;
    for (float global : {reference.global_scale, reference.global_scale * 64.0f,
                         reference.global_scale * 0x1p-14f, 0x1p70f}) {
      requested.static_global_scale = global;
      const QuantSpec spec = *ResolveSpec(requested, shape);
      for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(absl::StrCat(ShapeToString(shape), " ", DTypeName(dtype), " S_enc ", global,
                                  " seed=", RunSeed()));
        Outputs cpu, gpu;
        ExpectQuantizeAndFakeQuantMatch(Encode(values, dtype), dtype, shape, spec, layout, &cpu,
                                        &gpu);
        if (HasFatalFailure()) return;
        EXPECT_EQ(testing::Bits(cpu.global_scale), testing::Bits(global));
        EXPECT_EQ(testing::Bits(gpu.global_scale), testing::Bits(global));
        if (dtype == DType::kF32 && global == reference.global_scale) {
          EXPECT_EQ(cpu.codes, reference.codes);  // the tensor's own S_enc: the same answer
        }
      }
    }
  }
}

// A caller's S_enc far above the tensor's saturates every block scale at 448, and |x| / d_b
// then overflows fp32 for huge elements: the lean E2M1 path divides without a clamp and must
// still saturate those (and ±Inf) as codec.h does, beside elements on and next to E2M1's
// midpoints in the same blocks.
TEST_F(GpuBackendTest, Nvfp4OverflowingQuotientsSaturateAsOnTheCpu) {
  std::mt19937 rng(static_cast<uint32_t>(RunSeed()));
  const float global = 0x1p50f;
  const float d = 448.0f / global;  // every block's d_b (a lean scale: above 2^-60)
  const float huge[] = {1e30f, std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::infinity(), 0x1p70f};
  const float multiples[] = {0.0f, 0.25f, 0.5f, 0.75f, 1.25f, 1.75f,  2.5f,
                             3.5f, 5.0f,  6.0f, 7.0f,  1e3f,  0x1p40f};
  const Shape shape{5, 64};
  std::vector<float> values(static_cast<size_t>(*NumElements(shape)));
  for (size_t i = 0; i < values.size(); ++i) {
    float v = i % 16 == 0 ? huge[(i / 16) % 4] : multiples[rng() % 13] * d;
    if (rng() % 3 == 0) v = std::nextafter(v, rng() % 2 ? 0.0f : 2.0f * v);
    values[i] = rng() % 2 ? -v : v;
  }
  QuantSpec requested;
  requested.format = Format::kNvfp4;
  requested.static_global_scale = global;
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " seed=", RunSeed()));
    Outputs cpu, gpu;
    ExpectQuantizeAndFakeQuantMatch(Encode(values, dtype), dtype, shape, spec, layout, &cpu, &gpu);
    if (HasFatalFailure()) return;
    EXPECT_EQ(cpu.codes[0] & 0x7u, 0x7u);  // the first element saturated
  }
}

// FlatQuant with caller-given matrices (the matrix test above runs the default identities):
// the transform's two GEMM kernels must add every product in the CPU's order. Real splits
// (64 · 64, 112 · 128), a ragged one (7 · 10 on rows of 70) and a lopsided one (1 · 33), in
// every input dtype, then the refusals of NaN / Inf (same first index) and nan_policy ZERO.
TEST_F(GpuBackendTest, FlatquantTransformMatchesTheCpuBitForBit) {
  struct Case {
    int64_t rows, n1, n2;
  };
  std::mt19937 rng(static_cast<uint32_t>(RunSeed()));
  std::normal_distribution<float> normal;
  for (const Case& c : {Case{5, 7, 10}, Case{300, 64, 64}, Case{17, 112, 128}, Case{9, 1, 33},
                        Case{2000, 16, 16}}) {
    const Shape shape = {c.rows, c.n1 * c.n2};
    QuantSpec requested;
    requested.format = Format::kFlatquantInt4;
    requested.clip_ratio = 0.9f;
    for (int64_t i = 0; i < c.n1 * c.n1; ++i)
      requested.transform_left.push_back(normal(rng) * 0.2f);
    for (int64_t i = 0; i < c.n2 * c.n2; ++i)
      requested.transform_right.push_back(normal(rng) * 0.2f);
    std::vector<float> values(static_cast<size_t>(c.rows * c.n1 * c.n2));
    for (float& v : values) v = normal(rng) * 4.0f;
    for (Packing packing : {Packing::kBitstream, Packing::kInt32Offset}) {
      requested.packing = packing;
      const QuantSpec spec = *ResolveSpec(requested, shape);
      const QuantLayout layout = *ComputeLayout(spec, shape);
      for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(
            absl::StrCat(ShapeToString(shape), " ", DTypeName(dtype), " seed=", RunSeed()));
        Outputs cpu, gpu;
        ExpectQuantizeAndFakeQuantMatch(Encode(values, dtype), dtype, shape, spec, layout, &cpu,
                                        &gpu);
        if (HasFatalFailure()) return;
      }
    }
    // Non-finite input: the same refusal (the first bad element), or zeros under ZERO.
    std::vector<float> bad = values;
    bad[bad.size() / 2] = -std::numeric_limits<float>::infinity();
    bad[bad.size() / 3] = std::numeric_limits<float>::quiet_NaN();
    for (NanPolicy policy : {NanPolicy::kReject, NanPolicy::kZero}) {
      QuantSpec with_policy = requested;
      with_policy.packing = Packing::kUnspecified;
      with_policy.nan_policy = policy;
      const auto [cpu, gpu] = QuantizeOnBoth(bad, DType::kF32, shape, with_policy);
      EXPECT_EQ(cpu.status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(gpu.status, cpu.status);  // REJECT: the NaN first; ZERO: the Inf
    }
    bad[bad.size() / 2] = 1.0f;  // only the NaN is left, which ZERO reads as 0
    QuantSpec zero = requested;
    zero.packing = Packing::kUnspecified;
    zero.nan_policy = NanPolicy::kZero;
    const auto [cpu, gpu] = QuantizeOnBoth(bad, DType::kBF16, shape, zero);
    ASSERT_TRUE(cpu.status.ok()) << cpu.status;
    ASSERT_TRUE(gpu.status.ok()) << gpu.status;
    EXPECT_EQ(gpu.codes, cpu.codes);
  }
}

TEST_F(GpuBackendTest, OutOfDeviceMemoryIsResourceExhaustedAndTheBackendKeepsWorking) {
  CudaBackendOptions options;
  options.device_memory_cap = int64_t{64} << 20;
  absl::StatusOr<std::unique_ptr<Backend>> small = CreateCudaBackend(options);
  ASSERT_TRUE(small.ok()) << small.status();
  const Shape big = {64, 1 << 20};  // 256 MiB of F32: above the cap
  std::vector<float> values(64 << 20, 0.25f);
  QuantSpec requested;
  requested.format = Format::kInt8;
  const QuantSpec spec = *ResolveSpec(requested, big);
  const QuantLayout layout = *ComputeLayout(spec, big);
  const std::vector<uint8_t> bytes(
      reinterpret_cast<const uint8_t*>(values.data()),
      reinterpret_cast<const uint8_t*>(values.data()) + values.size() * 4);
  const Outputs refused = Quantize(**small, bytes, DType::kF32, big, spec, layout);
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kResourceExhausted) << refused.status;

  const Shape fits = {4, 1024};
  const QuantSpec small_spec = *ResolveSpec(requested, fits);
  const QuantLayout small_layout = *ComputeLayout(small_spec, fits);
  const std::vector<uint8_t> few(bytes.begin(), bytes.begin() + 4 * 4096);
  const Outputs ok = Quantize(**small, few, DType::kF32, fits, small_spec, small_layout);
  EXPECT_TRUE(ok.status.ok()) << ok.status;
}

TEST_F(GpuBackendTest, ConcurrentCallsAgreeWithTheCpu) {
  const Shape shape = {333, 1000};
  const std::vector<float> values =
      MakeFill(FillKind::kNormal, 333 * 1000, Format::kInt8, false, RunSeed());
  const std::vector<uint8_t> bytes = Encode(values, DType::kF32);
  QuantSpec requested;
  requested.format = Format::kInt4;
  requested.granularity = Granularity::kGroup;
  requested.group_size = 64;
  const QuantSpec spec = *ResolveSpec(requested, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  const Outputs expected = Quantize(*cpu_, bytes, DType::kF32, shape, spec, layout);
  ASSERT_TRUE(expected.status.ok());
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 8; ++i) {
        const Outputs got = Quantize(*gpu_, bytes, DType::kF32, shape, spec, layout);
        if (!got.status.ok() || got.codes != expected.codes) ++mismatches;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace quantd
