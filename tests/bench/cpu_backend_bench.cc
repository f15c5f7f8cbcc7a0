// CPU-backend throughput per format and granularity (Google Benchmark).
//
// Bytes are counted as the minimum an implementation must move: the input read once plus the
// codes and scales written once (quantize), or codes + scales read and the output written
// (dequantize). Run:
//   build/tests/quantd_cpu_bench --benchmark_counters_tabular=true
// Speed is never asserted in tests; docs/PERFORMANCE.md records these numbers with the machine.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "quantd/backend.h"
#include "quantd/executor.h"
#include "quantd/spec.h"

namespace quantd {
namespace {

struct Case {
  const char* name;
  Format format;
  Granularity granularity;
  bool asymmetric;
  int64_t group_size;
};

// The combinations users run most: weights per channel / group / block, activations per token.
const Case kCases[] = {
    {"int8_tensor", Format::kInt8, Granularity::kTensor, false, 0},
    {"int8_token", Format::kInt8, Granularity::kToken, false, 0},
    {"int8_channel", Format::kInt8, Granularity::kChannel, false, 0},
    {"int8_token_asym", Format::kInt8, Granularity::kToken, true, 0},
    {"int4_group128", Format::kInt4, Granularity::kGroup, false, 128},
    {"uint4_group128_asym", Format::kUint4, Granularity::kGroup, true, 128},
    {"fp8e4m3_tensor", Format::kFp8E4M3, Granularity::kTensor, false, 0},
    {"fp8e4m3_token", Format::kFp8E4M3, Granularity::kToken, false, 0},
    {"fp8e4m3_block128", Format::kFp8E4M3, Granularity::kBlock, false, 0},
    {"fp8e5m2_none", Format::kFp8E5M2, Granularity::kNone, false, 0},
};

Executor* Pool() {
  static std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(0);
  return pool.get();
}

std::vector<float> RandomInput(int64_t n) {
  std::vector<float> data(n);
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : data) v = normal(rng);
  return data;
}

QuantSpec SpecFor(const Case& c, const Shape& shape) {
  QuantSpec requested;
  requested.format = c.format;
  requested.granularity = c.granularity;
  requested.asymmetric = c.asymmetric;
  requested.group_size = c.group_size;
  absl::StatusOr<QuantSpec> spec = ResolveSpec(requested, shape);
  if (!spec.ok()) abort();
  return *spec;
}

void BM_Quantize(benchmark::State& state, const Case& c) {
  const int64_t cols = 4096, rows = state.range(0) / cols;
  const Shape shape = {rows, cols};
  const std::vector<float> x = RandomInput(rows * cols);
  const QuantSpec spec = SpecFor(c, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  std::vector<uint8_t> codes(layout.code_bytes);
  std::vector<float> scales(layout.geometry.num_scales);
  std::vector<int32_t> zero_points(spec.asymmetric ? layout.geometry.num_scales : 0);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(Pool());
  const TensorView input{DType::kF32, shape, x.data(), static_cast<int64_t>(x.size() * 4)};
  const QuantizedBuffers out{codes.data(),
                             layout.code_bytes,
                             scales.data(),
                             layout.geometry.num_scales,
                             spec.asymmetric ? zero_points.data() : nullptr,
                             nullptr};
  for (auto _ : state) {
    if (!backend->Quantize(input, spec, out, /*metrics=*/nullptr).ok()) abort();
    benchmark::DoNotOptimize(codes.data());
  }
  const int64_t bytes = input.bytes + layout.code_bytes + layout.geometry.num_scales * 4;
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["elements"] = static_cast<double>(rows * cols);
}

void BM_Dequantize(benchmark::State& state, const Case& c) {
  const int64_t cols = 4096, rows = state.range(0) / cols;
  const Shape shape = {rows, cols};
  const std::vector<float> x = RandomInput(rows * cols);
  const QuantSpec spec = SpecFor(c, shape);
  const QuantLayout layout = *ComputeLayout(spec, shape);
  std::vector<uint8_t> codes(layout.code_bytes);
  std::vector<float> scales(layout.geometry.num_scales), output(x.size());
  std::vector<int32_t> zero_points(spec.asymmetric ? layout.geometry.num_scales : 0);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(Pool());
  const TensorView input{DType::kF32, shape, x.data(), static_cast<int64_t>(x.size() * 4)};
  int32_t* zp = spec.asymmetric ? zero_points.data() : nullptr;
  if (!backend
           ->Quantize(
               input, spec,
               {codes.data(), layout.code_bytes, scales.data(), layout.geometry.num_scales, zp},
               nullptr)
           .ok()) {
    abort();
  }
  const ConstQuantizedBuffers in{
      codes.data(), layout.code_bytes, scales.data(), layout.geometry.num_scales, zp, 0.0f};
  const MutableTensorView out{DType::kF32, shape, output.data(),
                              static_cast<int64_t>(output.size() * 4)};
  for (auto _ : state) {
    if (!backend->Dequantize(in, spec, out).ok()) abort();
    benchmark::DoNotOptimize(output.data());
  }
  const int64_t bytes = out.bytes + layout.code_bytes + layout.geometry.num_scales * 4;
  state.SetBytesProcessed(state.iterations() * bytes);
}

void BM_QuantDequantWithMetrics(benchmark::State& state, const Case& c) {
  const int64_t cols = 4096, rows = state.range(0) / cols;
  const Shape shape = {rows, cols};
  const std::vector<float> x = RandomInput(rows * cols);
  std::vector<float> output(x.size());
  const QuantSpec spec = SpecFor(c, shape);
  std::unique_ptr<Backend> backend = CreateReferenceBackend(Pool());
  const TensorView input{DType::kF32, shape, x.data(), static_cast<int64_t>(x.size() * 4)};
  const MutableTensorView out{DType::kF32, shape, output.data(),
                              static_cast<int64_t>(output.size() * 4)};
  ErrorMetrics metrics;
  for (auto _ : state) {
    if (!backend->QuantDequant(input, spec, out, &metrics).ok()) abort();
    benchmark::DoNotOptimize(output.data());
  }
  state.SetBytesProcessed(state.iterations() * (input.bytes + out.bytes));
}

void RegisterAll() {
  for (const Case& c : kCases) {
    benchmark::RegisterBenchmark((std::string("Quantize/") + c.name).c_str(), BM_Quantize, c)
        ->Arg(1 << 16)
        ->Arg(1 << 22)
        ->Arg(1 << 24)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("Dequantize/") + c.name).c_str(), BM_Dequantize, c)
        ->Arg(1 << 22)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("QuantDequantMetrics/") + c.name).c_str(),
                                 BM_QuantDequantWithMetrics, c)
        ->Arg(1 << 22)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace
}  // namespace quantd

int main(int argc, char** argv) {
  quantd::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
