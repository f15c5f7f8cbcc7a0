// Latency of one call through a Backend, host memory to host memory, on one thread: what a
// small request costs below the transport. For the CUDA backend the per-call device phases
// (copies in, kernels, copies out; from its telemetry) are printed next to the wall time, so
// the host-side overhead is the difference.
//
//   quantd_backend_latency_bench [--calls=2000] [--backend=cuda|cpu]
//
// Speed is never a test assertion; docs/PERF_NOTES.md records what this measured.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "quantd/spec.h"

namespace quantd {
namespace {

using Clock = std::chrono::steady_clock;

struct Case {
  const char* name;
  Format format;
  Granularity granularity;
  int64_t group_size;
  bool metrics;
};

const Case kCases[] = {
    {"int8 token", Format::kInt8, Granularity::kToken, 0, false},
    {"int8 token + metrics", Format::kInt8, Granularity::kToken, 0, true},
    {"int4 group128 + metrics", Format::kInt4, Granularity::kGroup, 128, true},
    {"fp8e4m3 tensor + metrics", Format::kFp8E4M3, Granularity::kTensor, 0, true},
};

double Percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(p * (values.size() - 1))];
}

int Main(int argc, char** argv) {
  int calls = 2000;
  std::string backend_name = "cuda";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--calls=", 8) == 0) calls = std::max(10, std::atoi(argv[i] + 8));
    if (std::strncmp(argv[i], "--backend=", 10) == 0) backend_name = argv[i] + 10;
  }
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(0);
  std::unique_ptr<Backend> backend;
  if (backend_name == "cuda") {
    absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(CudaBackendOptions{});
    if (!cuda.ok()) {
      std::fprintf(stderr, "%s\n", std::string(cuda.status().message()).c_str());
      return 1;
    }
    backend = *std::move(cuda);
  } else {
    backend = CreateReferenceBackend(pool.get());
  }
  std::printf(
      "| op | elements | wall p50 us | wall p90 us | device h2d us | device kernels us | "
      "device d2h us |\n|---|--:|--:|--:|--:|--:|--:|\n");
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (const int64_t elements : {int64_t{1024}, int64_t{16384}, int64_t{65536}, int64_t{262144}}) {
    const Shape shape = {elements / 1024, 1024};
    std::vector<float> x(elements);
    for (float& v : x) v = normal(rng);
    const TensorView input{DType::kF32, shape, x.data(), elements * 4};
    for (const Case& c : kCases) {
      QuantSpec requested;
      requested.format = c.format;
      requested.granularity = c.granularity;
      requested.group_size = c.group_size;
      const QuantSpec spec = *ResolveSpec(requested, shape);
      const QuantLayout layout = *ComputeLayout(spec, shape);
      std::vector<uint8_t> codes(layout.code_bytes);
      std::vector<float> scales(layout.geometry.num_scales);
      const QuantizedBuffers out{codes.data(),  layout.code_bytes,
                                 scales.data(), layout.geometry.num_scales,
                                 nullptr,       nullptr};
      ErrorMetrics metrics;
      auto call = [&] {
        const absl::Status status =
            backend->Quantize(input, spec, out, c.metrics ? &metrics : nullptr);
        if (!status.ok()) {
          std::fprintf(stderr, "%s: %s\n", c.name, std::string(status.message()).c_str());
          std::exit(1);
        }
      };
      for (int i = 0; i < 20; ++i) call();  // warm-up: module loading, pool growth
      const std::vector<DeviceTelemetry> before = backend->Telemetry();
      std::vector<double> wall_us;
      for (int i = 0; i < calls; ++i) {
        const auto start = Clock::now();
        call();
        wall_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      }
      const std::vector<DeviceTelemetry> after = backend->Telemetry();
      double h2d = 0, kernels = 0, d2h = 0;
      if (!after.empty()) {
        const double n = static_cast<double>(after[0].calls - before[0].calls);
        h2d = (after[0].host_to_device_seconds - before[0].host_to_device_seconds) / n * 1e6;
        kernels = (after[0].kernel_seconds_sum - before[0].kernel_seconds_sum) / n * 1e6;
        d2h = (after[0].device_to_host_seconds - before[0].device_to_host_seconds) / n * 1e6;
      }
      std::printf("| %s | %lld | %.1f | %.1f | %.1f | %.1f | %.1f |\n", c.name,
                  static_cast<long long>(elements), Percentile(wall_us, 0.5),
                  Percentile(wall_us, 0.9), h2d, kernels, d2h);
    }
  }
  return 0;
}

}  // namespace
}  // namespace quantd

int main(int argc, char** argv) { return quantd::Main(argc, argv); }
