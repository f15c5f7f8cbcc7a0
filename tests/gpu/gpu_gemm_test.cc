// The CUDA backend's GEMM against the CPU backend's: every path (FP8 and INT8 tensor cores,
// fp32 on x̂) × operand formats and granularities × ragged, decode-sized and batched shapes ×
// output dtypes × bias / α / β·C. Both backends quantize the operands to the same bits
// (gpu_backend_test checks that); the products then agree within the accumulation error of
// the GPU's path, which each element's tolerance is computed from. The path each product
// took is read from the device telemetry, so a silent fallback to fp32 fails too.
#include <sys/stat.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "quantd/gemm.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/status.h"

namespace quantd {
namespace {

constexpr int kFp8 = 0, kInt8 = 1, kFp32 = 2;  // kGemmPathNames

struct FormatCase {
  const char* a;  // descriptor; "" leaves the operand unquantized
  const char* b;
  int path;  // on aligned shapes (K and N multiples of 16)
};

const FormatCase kFormatCases[] = {
    {"fp8-e4m3", "fp8-e4m3", kFp8},  // per token × per output channel: OUTER_VEC_32F
    {"fp8-e4m3-tensor", "fp8-e4m3-tensor", kFp8},
    {"fp8-e4m3", "fp8-e4m3-tensor", kFp8},
    {"fp8-e5m2", "fp8-e4m3", kFp8},
    {"fp8-e4m3", "fp8-e5m2", kFp8},
    {"fp8-e4m3-g128", "fp8-e4m3-b128x128", kFp8},  // DeepSeek's blocks
    {"fp8-e5m2", "fp8-e5m2", kFp32},               // no E5M2 × E5M2 tensor cores
    {"int8", "int8", kInt8},
    {"int8-tensor", "int8", kInt8},
    {"int8-asym", "int8", kFp32},
    {"mxfp4", "mxfp4", kFp32},
    {"mxfp8", "nvfp4", kFp32},
    {"nf4", "hif8", kFp32},
    {"int4-g32", "int4", kFp32},
    {"", "int8", kFp32},
};

struct ShapeCase {
  int64_t batch;  // 0: A is [M, K]
  int64_t m, n, k;
  bool b_batched;
};

const ShapeCase kShapes[] = {
    {0, 1, 16, 128, false},     // a decode step
    {0, 37, 48, 256, false},    // ragged M
    {0, 130, 256, 384, false},  // N over two 128-blocks, K of three (block path refused: fp32)
    {0, 16, 128, 512, false},   // the fewest rows (and K-blocks) block scales run on
    {3, 5, 32, 128, false},     // batched activations, one weight
    {2, 7, 32, 256, true},      // baddbmm: a weight per batch
    {0, 9, 20, 40, false},      // K and N the tensor cores refuse: fp32 for every format
};

// Output dtype and epilogue operands. A bias of the output's 16-bit type is cuBLASLt's to add
// on the FP8 path; any other goes through the epilogue.
struct EpilogueCase {
  DType out;
  DType bias;  // kUnspecified: none
  bool c;
  float alpha, beta;
};

const EpilogueCase kEpilogues[] = {
    {DType::kF32, DType::kUnspecified, false, 1.0f, 0.0f},
    {DType::kBF16, DType::kBF16, false, 1.0f, 0.0f},
    {DType::kF16, DType::kUnspecified, true, 0.5f, -1.5f},
    {DType::kF32, DType::kF16, true, 2.0f, 0.25f},
    {DType::kBF16, DType::kF32, false, 1.0f, 0.0f},
    {DType::kBF16, DType::kUnspecified, false, 0.75f, 0.0f},  // α applied by cuBLASLt
};

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = scale * normal(rng);
  return v;
}

std::vector<uint8_t> Encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) StoreFromFloat(dtype, bytes.data(), i, values[i]);
  return bytes;
}

TensorView View(const std::vector<uint8_t>& bytes, DType dtype, Shape shape) {
  return {dtype, std::move(shape), bytes.data(), static_cast<int64_t>(bytes.size())};
}

QuantSpec OperandSpec(const char* descriptor) {
  QuantSpec spec;
  if (*descriptor != '\0') {
    const absl::Status applied = ApplyDescriptor(descriptor, &spec);
    EXPECT_TRUE(applied.ok()) << applied;
  }
  return spec;
}

// Relative accumulation error of a path, against Σ|â·b̂|: FP8 tensor cores add within
// groups of products at reduced precision before fp32 (~14 bits, DeepSeek-V3 §3.3.2), INT8
// sums exactly and rounds four times in the epilogue, fp32 rounds once per addition.
double PathTolerance(int path, int64_t k) {
  switch (path) {
    case kFp8:
      return std::ldexp(1.0, -11);
    case kInt8:
      return std::ldexp(1.0, -20);
    default:
      return static_cast<double>(k) * std::ldexp(1.0, -23);
  }
}

// Half a unit in the last place of the output dtype at |v|, twice (both sides round).
double OutputRounding(DType dtype, double v) {
  const int bits = dtype == DType::kBF16 ? 8 : dtype == DType::kF16 ? 11 : 24;
  const double magnitude = std::max(std::fabs(v), dtype == DType::kF16 ? 6.1e-5 : 1e-30);
  return std::ldexp(magnitude, -bits + 1);
}

class GpuGemmTest : public ::testing::TestWithParam<FormatCase> {
 protected:
  static void SetUpTestSuite() {
    if (!CudaBackendBuilt() || CudaDeviceCount() == 0) return;
    pool_ = CreateThreadPoolExecutor(0).release();
    cpu_ = CreateReferenceBackend(pool_).release();
    absl::StatusOr<std::unique_ptr<Backend>> gpu = CreateCudaBackend(CudaBackendOptions());
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = gpu->release();
  }

  void SetUp() override {
    if (gpu_ == nullptr) GTEST_SKIP() << "no CUDA device visible (or a build without CUDA)";
  }

  static int64_t Products(int path) {
    int64_t total = 0;
    for (const DeviceTelemetry& device : gpu_->Telemetry()) total += device.gemm_products[path];
    return total;
  }

  static Executor* pool_;
  static Backend* cpu_;
  static Backend* gpu_;
};
Executor* GpuGemmTest::pool_ = nullptr;
Backend* GpuGemmTest::cpu_ = nullptr;
Backend* GpuGemmTest::gpu_ = nullptr;

TEST_P(GpuGemmTest, MatchesTheCpuWithinTheAccumulationErrorOfItsPath) {
  const FormatCase& fc = GetParam();
  std::mt19937 rng(20261121);
  for (const ShapeCase& sc : kShapes) {
    for (const EpilogueCase& ec : kEpilogues) {
      const Shape a_shape = sc.batch > 0 ? Shape{sc.batch, sc.m, sc.k} : Shape{sc.m, sc.k};
      const Shape b_shape = sc.b_batched ? Shape{sc.batch, sc.n, sc.k} : Shape{sc.n, sc.k};
      const int64_t rows = std::max<int64_t>(sc.batch, 1) * sc.m;
      const Shape out_shape = sc.batch > 0 ? Shape{sc.batch, sc.m, sc.n} : Shape{sc.m, sc.n};
      // BF16 inputs for the BF16 output, F32 otherwise: both input paths run.
      const DType in_dtype = ec.out == DType::kBF16 ? DType::kBF16 : DType::kF32;
      const std::vector<uint8_t> a = Encode(Random(rows * sc.k, rng), in_dtype);
      const int64_t b_elements = (sc.b_batched ? sc.batch : 1) * sc.n * sc.k;
      const std::vector<uint8_t> b = Encode(Random(b_elements, rng, 0.05f), in_dtype);
      const bool has_bias = ec.bias != DType::kUnspecified;
      const std::vector<uint8_t> bias = Encode(Random(sc.n, rng), has_bias ? ec.bias : DType::kF32);
      const std::vector<uint8_t> c = Encode(Random(rows * sc.n, rng), DType::kBF16);
      GemmOperands operands;
      operands.a = View(a, in_dtype, a_shape);
      operands.b = View(b, in_dtype, b_shape);
      if (has_bias) operands.bias = View(bias, ec.bias, {sc.n});
      if (ec.c) operands.c = View(c, DType::kBF16, out_shape);
      GemmSpec requested;
      requested.a = OperandSpec(fc.a);
      requested.b = OperandSpec(fc.b);
      requested.alpha = ec.alpha;
      requested.beta = ec.beta;
      const std::string where = absl::StrCat(
          fc.a, " x ", fc.b, " A ", ShapeToString(a_shape), " B ", ShapeToString(b_shape), " out ",
          DTypeName(ec.out), has_bias ? absl::StrCat(" bias ", DTypeName(ec.bias)) : "",
          ec.c ? " C" : "");
      SCOPED_TRACE(where);
      absl::StatusOr<GemmSpec> spec = ResolveGemmSpec(requested, a_shape, b_shape);
      ASSERT_TRUE(spec.ok()) << spec.status();

      const int64_t out_elements = rows * sc.n;
      const int64_t out_bytes = out_elements * DTypeSize(ec.out);
      std::vector<uint8_t> cpu_out(out_bytes), gpu_out(out_bytes, 0xA5);
      ErrorMetrics cpu_metrics, gpu_metrics;
      ASSERT_TRUE(
          cpu_->Gemm(operands, *spec, {ec.out, out_shape, cpu_out.data(), out_bytes}, &cpu_metrics)
              .ok());
      // Block scales need N a multiple of 128, K of 512, 16 rows or more (PlanGemmPath) and a
      // product cuBLASLt writes into the 16-bit output itself, with no bias (RouteGemm).
      const bool aligned = sc.k % 16 == 0 && sc.n % 16 == 0;
      const bool direct_16_bit = ec.out != DType::kF32 && !ec.c && !has_bias;
      const bool blocks_refused =
          spec->b.granularity == Granularity::kBlock &&
          (rows < 16 || sc.n % 128 != 0 || sc.k % 512 != 0 || sc.b_batched || !direct_16_bit);
      const int path = aligned && !blocks_refused ? fc.path : kFp32;
      const int64_t before = Products(path);
      const absl::Status status =
          gpu_->Gemm(operands, *spec, {ec.out, out_shape, gpu_out.data(), out_bytes}, &gpu_metrics);
      ASSERT_TRUE(status.ok()) << status;
      EXPECT_EQ(Products(path), before + 1) << "expected the " << kGemmPathNames[path] << " path";

      // The same weight stored on the GPU first (a registered weight): the same path, the
      // same bits, the same metrics.
      {
        absl::StatusOr<std::unique_ptr<StoredWeight>> stored =
            gpu_->StoreWeight(operands.b, spec->b, /*keep_original=*/true, nullptr);
        ASSERT_TRUE(stored.ok()) << stored.status();
        GemmOperands on_stored = operands;
        on_stored.b = {in_dtype, b_shape, nullptr, 0};
        on_stored.b_stored = stored->get();
        std::vector<uint8_t> stored_out(out_bytes, 0x5A);
        ErrorMetrics stored_metrics;
        const absl::Status stored_status = gpu_->Gemm(
            on_stored, *spec, {ec.out, out_shape, stored_out.data(), out_bytes}, &stored_metrics);
        ASSERT_TRUE(stored_status.ok()) << stored_status;
        EXPECT_EQ(Products(path), before + 2) << "the stored weight took another path";
        EXPECT_EQ(stored_out, gpu_out) << "a stored weight's product differs from the inline one";
        EXPECT_EQ(stored_metrics.sqnr_db, gpu_metrics.sqnr_db);
        EXPECT_EQ(stored_metrics.max_abs_err, gpu_metrics.max_abs_err);
      }

      // Each element's tolerance from the operands' x̂ (the CPU's, the same bits); the metrics
      // from the GPU's own output against the exact product of the unquantized operands (fp64
      // here, fp32 on the GPU: the difference is far below the quantization error).
      std::vector<float> a_hat(rows * sc.k), b_hat(b_elements), a_plain(rows * sc.k),
          b_plain(b_elements);
      for (auto [operand, hat, plain, op_spec] :
           {std::make_tuple(&operands.a, &a_hat, &a_plain, &spec->a),
            std::make_tuple(&operands.b, &b_hat, &b_plain, &spec->b)}) {
        for (size_t i = 0; i < plain->size(); ++i) {
          (*plain)[i] = LoadAsFloat(in_dtype, operand->data, static_cast<int64_t>(i));
        }
        if (op_spec->format == Format::kUnspecified) {
          *hat = *plain;
        } else {
          ASSERT_TRUE(cpu_->QuantDequant(*operand, *op_spec,
                                         {DType::kF32, operand->shape, hat->data(),
                                          static_cast<int64_t>(hat->size() * 4)},
                                         nullptr)
                          .ok());
        }
      }
      int64_t bad = 0;
      MetricSums sums;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t batch = r / sc.m;
        for (int64_t n = 0; n < sc.n; ++n) {
          const int64_t a_row = r * sc.k;
          const int64_t b_row = ((sc.b_batched ? batch * sc.n : 0) + n) * sc.k;
          double magnitude = 0.0, exact = 0.0;
          for (int64_t k = 0; k < sc.k; ++k) {
            magnitude += std::fabs(double{a_hat[a_row + k]} * b_hat[b_row + k]);
            exact += double{a_plain[a_row + k]} * b_plain[b_row + k];
          }
          const int64_t i = r * sc.n + n;
          double extra = 0.0;
          if (ec.c) extra += double{ec.beta} * LoadAsFloat(DType::kBF16, c.data(), i);
          if (has_bias) extra += LoadAsFloat(ec.bias, bias.data(), n);
          const double want = LoadAsFloat(ec.out, cpu_out.data(), i);
          const double got = LoadAsFloat(ec.out, gpu_out.data(), i);
          sums.Add(static_cast<float>(ec.alpha * exact + extra), static_cast<float>(got));
          const double tol = std::fabs(ec.alpha) * magnitude * PathTolerance(path, sc.k) +
                             std::ldexp(std::fabs(want), -21) + OutputRounding(ec.out, want);
          if (!(std::fabs(got - want) <= tol) && ++bad <= 5) {
            ADD_FAILURE() << "out[" << r << ", " << n << "] = " << got << ", the CPU's " << want
                          << " (tolerance " << tol << ")";
          }
        }
      }
      EXPECT_EQ(bad, 0);
      const ErrorMetrics expected = FinalizeMetrics(sums);
      EXPECT_EQ(gpu_metrics.count, cpu_metrics.count);
      EXPECT_EQ(gpu_metrics.count, expected.count);
      EXPECT_NEAR(gpu_metrics.sqnr_db, expected.sqnr_db, 0.01);
      EXPECT_NEAR(gpu_metrics.cosine, expected.cosine, 1e-6);
      EXPECT_NEAR(gpu_metrics.max_abs_err, expected.max_abs_err,
                  1e-3 * expected.max_abs_err + 1e-6);
      // And the CPU's metrics describe nearly the same output.
      EXPECT_NEAR(gpu_metrics.sqnr_db, cpu_metrics.sqnr_db, 0.5);
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, GpuGemmTest, ::testing::ValuesIn(kFormatCases),
                         [](const ::testing::TestParamInfo<FormatCase>& param) {
                           std::string name = absl::StrCat(*param.param.a ? param.param.a : "f32",
                                                           "_x_", param.param.b);
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST_F(GpuGemmTest, RefusesWhatTheCpuRefusesInItsWords) {
  std::vector<uint8_t> a = Encode(std::vector<float>(4 * 32, 1.0f), DType::kF32);
  std::vector<uint8_t> b = Encode(std::vector<float>(16 * 48, 1.0f), DType::kF32);
  GemmOperands operands;
  operands.a = View(a, DType::kF32, {4, 32});
  operands.b = View(b, DType::kF32, {16, 48});  // K disagrees
  GemmSpec spec;
  spec.a = spec.b = OperandSpec("int8");
  std::vector<float> out(4 * 16);
  const MutableTensorView view{DType::kF32, {4, 16}, out.data(), 4 * 16 * 4};
  const absl::Status cpu = cpu_->Gemm(operands, spec, view, nullptr);
  const absl::Status gpu = gpu_->Gemm(operands, spec, view, nullptr);
  EXPECT_EQ(gpu.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gpu, cpu);
  // And the backend keeps serving.
  operands.b = View(b, DType::kF32, {24, 32});
  std::vector<float> ok_out(4 * 24);
  absl::StatusOr<GemmSpec> resolved = ResolveGemmSpec(spec, {4, 32}, {24, 32});
  ASSERT_TRUE(resolved.ok());
  EXPECT_TRUE(
      gpu_->Gemm(operands, *resolved, {DType::kF32, {4, 24}, ok_out.data(), 4 * 24 * 4}, nullptr)
          .ok());
}

// A stored weight holds what its products read (codes and decode scales, the original when
// kept) in device memory reserved against the device's cap until it is destroyed; without its
// original the metrics compare against the quantized weight's product; a weight above the
// cap is ResourceExhausted and the backend keeps serving.
TEST_F(GpuGemmTest, StoredWeightsHoldDeviceMemoryUntilDestroyed) {
  const auto in_use = [] {
    int64_t total = 0;
    for (const DeviceTelemetry& device : gpu_->Telemetry()) total += device.memory_in_use_bytes;
    return total;
  };
  std::mt19937 rng(3);
  const int64_t m = 32, n = 256, k = 1024;
  const std::vector<uint8_t> a = Encode(Random(m * k, rng), DType::kBF16);
  const std::vector<uint8_t> b = Encode(Random(n * k, rng, 0.05f), DType::kBF16);
  for (const char* descriptor : {"nvfp4", "int8", "int4-asym-g128", "nf4-dq", ""}) {
    SCOPED_TRACE(*descriptor ? descriptor : "unquantized");
    GemmSpec requested;
    requested.a = OperandSpec("fp8-e4m3");
    if (std::string(descriptor) == "nf4-dq") {
      requested.b = OperandSpec("nf4");
      requested.b.double_quant = true;
    } else {
      requested.b = OperandSpec(descriptor);
    }
    absl::StatusOr<GemmSpec> spec = ResolveGemmSpec(requested, {m, k}, {n, k});
    ASSERT_TRUE(spec.ok()) << spec.status();
    GemmOperands operands;
    operands.a = View(a, DType::kBF16, {m, k});
    operands.b = View(b, DType::kBF16, {n, k});
    std::vector<float> inline_out(m * n), stored_out(m * n), kept_out(m * n);
    ErrorMetrics inline_metrics, stored_metrics, weight_metrics, cpu_weight_metrics;
    ASSERT_TRUE(gpu_->Gemm(operands, *spec, {DType::kF32, {m, n}, inline_out.data(), m * n * 4},
                           &inline_metrics)
                    .ok());
    const int64_t before = in_use();
    for (const bool keep : {false, true}) {
      absl::StatusOr<std::unique_ptr<StoredWeight>> stored =
          gpu_->StoreWeight(operands.b, spec->b, keep, &weight_metrics);
      ASSERT_TRUE(stored.ok()) << stored.status();
      QuantLayout layout;
      layout.shape = {n, k};
      layout.numel = n * k;
      if (spec->b.format != Format::kUnspecified) layout = *ComputeLayout(spec->b, {n, k});
      EXPECT_EQ((*stored)->bytes(), gpu_->StoredWeightBytes(spec->b, layout, keep));
      EXPECT_EQ(in_use(), before + (*stored)->bytes());
      if (spec->b.format != Format::kUnspecified) {
        // The weight's own error, as the CPU measures it (same x̂ bits).
        const absl::StatusOr<std::unique_ptr<StoredWeight>> cpu_stored =
            cpu_->StoreWeight(operands.b, spec->b, false, &cpu_weight_metrics);
        ASSERT_TRUE(cpu_stored.ok()) << cpu_stored.status();
        EXPECT_EQ(weight_metrics.count, n * k);
        EXPECT_NEAR(weight_metrics.sqnr_db, cpu_weight_metrics.sqnr_db, 1e-3);
      }
      GemmOperands on_stored = operands;
      on_stored.b = {DType::kBF16, {n, k}, nullptr, 0};
      on_stored.b_stored = stored->get();
      std::vector<float>& out = keep ? kept_out : stored_out;
      ASSERT_TRUE(gpu_->Gemm(on_stored, *spec, {DType::kF32, {m, n}, out.data(), m * n * 4},
                             &stored_metrics)
                      .ok());
      EXPECT_EQ(out, inline_out);
      if (keep || spec->b.format == Format::kUnspecified) {
        EXPECT_EQ(stored_metrics.sqnr_db, inline_metrics.sqnr_db);
      } else {
        EXPECT_GE(stored_metrics.sqnr_db, inline_metrics.sqnr_db);  // A's error only
      }
      // The CPU backend cannot read a GPU-stored weight: refused, not misread.
      const absl::Status foreign =
          cpu_->Gemm(on_stored, *spec, {DType::kF32, {m, n}, out.data(), m * n * 4}, nullptr);
      EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument) << foreign;
      stored->reset();
      EXPECT_EQ(in_use(), before);
    }
  }
  // Above the device's memory cap.
  CudaBackendOptions small;
  small.device_memory_cap = int64_t{5} << 18;  // the int8 weight fits, with its original not
  absl::StatusOr<std::unique_ptr<Backend>> capped = CreateCudaBackend(small);
  ASSERT_TRUE(capped.ok()) << capped.status();
  GemmSpec requested;
  requested.b = OperandSpec("int8");
  absl::StatusOr<GemmSpec> spec = ResolveGemmSpec(requested, {m, k}, {n, k});
  ASSERT_TRUE(spec.ok());
  const absl::StatusOr<std::unique_ptr<StoredWeight>> too_big = (*capped)->StoreWeight(
      View(b, DType::kBF16, {n, k}), spec->b, /*keep_original=*/true, nullptr);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  const absl::StatusOr<std::unique_ptr<StoredWeight>> fits =
      (*capped)->StoreWeight(View(b, DType::kBF16, {n, k}), spec->b, false, nullptr);
  EXPECT_TRUE(fits.ok()) << fits.status();
}

// The algorithm cache: the first backend times the shape's candidates and writes its choice;
// a second backend reading the file takes it without timing again (so it does not rewrite the
// file, whose inode stays: a rewrite renames a new file over it) and gives the same bits.
TEST_F(GpuGemmTest, ChosenAlgorithmsPersistAcrossBackends) {
  const std::string path = ::testing::TempDir() + "/quantd_gemm_algorithms";
  // One file per device, named by its PCI bus.
  auto device_file = [&]() -> std::string {
    for (int bus = 0; bus < 256; ++bus) {
      const std::string name = absl::StrCat(path, ".", bus);
      struct stat info;
      if (stat(name.c_str(), &info) == 0) return name;
    }
    return "";
  };
  for (std::string stale = device_file(); !stale.empty(); stale = device_file()) {
    std::remove(stale.c_str());
  }
  std::mt19937 rng(7);
  const int64_t m = 64, n = 256, k = 512;
  const std::vector<uint8_t> a = Encode(Random(m * k, rng), DType::kF32);
  const std::vector<uint8_t> b = Encode(Random(n * k, rng), DType::kF32);
  GemmOperands operands;
  operands.a = View(a, DType::kF32, {m, k});
  operands.b = View(b, DType::kF32, {n, k});
  GemmSpec requested;
  requested.a = requested.b = OperandSpec("fp8-e4m3");
  absl::StatusOr<GemmSpec> spec = ResolveGemmSpec(requested, {m, k}, {n, k});
  ASSERT_TRUE(spec.ok());
  std::vector<std::vector<uint16_t>> outs;
  std::vector<ino_t> inodes;
  for (int round = 0; round < 2; ++round) {
    CudaBackendOptions options;
    options.gemm_algorithm_cache = path;
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    outs.emplace_back(m * n);
    ASSERT_TRUE(
        (*backend)
            ->Gemm(operands, *spec, {DType::kBF16, {m, n}, outs.back().data(), m * n * 2}, nullptr)
            .ok());
    const std::string file = device_file();
    ASSERT_FALSE(file.empty()) << "no algorithm cache file next to " << path;
    struct stat info;
    ASSERT_EQ(stat(file.c_str(), &info), 0);
    inodes.push_back(info.st_ino);
  }
  EXPECT_EQ(outs[0], outs[1]);
  EXPECT_EQ(inodes[0], inodes[1]) << "the second backend tuned again instead of reading the file";
  const std::string file = device_file();
  std::ifstream in(file);
  std::string header, entry;
  ASSERT_TRUE(std::getline(in, header) && std::getline(in, entry));
  EXPECT_THAT(header, ::testing::StartsWith("quantd-gemm-algorithms v1 "));
  EXPECT_THAT(entry, ::testing::HasSubstr("k=512"));
  std::remove(file.c_str());
}

}  // namespace
}  // namespace quantd
