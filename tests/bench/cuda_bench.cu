// CUDA kernel benchmark: per op and size, the median time of the backend's launchers on
// device-resident data, GB/s counted as minimum bytes (input read once, outputs written once),
// and that as a share of the device-to-device copy bandwidth measured in the same run.
//
//   quantd_cuda_bench [--min-elements=N] [--max-elements=N] [--only=SUBSTRING] [--csv=FILE]
//
// Speed is never a test assertion; docs/PERFORMANCE.md records this table with the command.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "kernels.h"
#include "quantd/flatquant.h"
#include "quantd/spec.h"

namespace quantd::cuda {
namespace {

__global__ void FillNormalish(float* x, int64_t n, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    // Sum of four uniforms: roughly normal, cheap, never all-zero.
    float s = 0.0f;
    for (int k = 0; k < 4; ++k) s += UniformFromBits(StochasticBits(seed + k, i)) - 0.5f;
    x[i] = s * 1.7f;
  }
}

struct Op {
  const char* name;
  Format format;
  Granularity granularity;
  int64_t group_size;
  int64_t block;
  bool asymmetric;
  bool static_scales;  // scales given (NVFP4: its S_enc): one pass
  enum Timed { kQuantize, kDequantize, kPercentile } timed;  // kPercentile: the calibration
};

const Op kOps[] = {
    {"quantize int8 token", Format::kInt8, Granularity::kToken, 0, 0, false, false, Op::kQuantize},
    {"quantize int8 channel", Format::kInt8, Granularity::kChannel, 0, 0, false, false,
     Op::kQuantize},
    {"quantize int8 tensor static", Format::kInt8, Granularity::kTensor, 0, 0, false, true,
     Op::kQuantize},
    {"quantize int8 tensor dynamic", Format::kInt8, Granularity::kTensor, 0, 0, false, false,
     Op::kQuantize},
    {"quantize int4 group128", Format::kInt4, Granularity::kGroup, 128, 0, false, false,
     Op::kQuantize},
    {"quantize uint4 group128 asym", Format::kUint4, Granularity::kGroup, 128, 0, true, false,
     Op::kQuantize},
    {"quantize fp8e4m3 token", Format::kFp8E4M3, Granularity::kToken, 0, 0, false, false,
     Op::kQuantize},
    {"quantize fp8e4m3 block128", Format::kFp8E4M3, Granularity::kBlock, 0, 128, false, false,
     Op::kQuantize},
    {"quantize fp8e4m3 tensor dynamic", Format::kFp8E4M3, Granularity::kTensor, 0, 0, false, false,
     Op::kQuantize},
    {"dequantize int8 token", Format::kInt8, Granularity::kToken, 0, 0, false, false,
     Op::kDequantize},
    {"dequantize int4 group128", Format::kInt4, Granularity::kGroup, 128, 0, false, false,
     Op::kDequantize},
    {"dequantize fp8e4m3 token", Format::kFp8E4M3, Granularity::kToken, 0, 0, false, false,
     Op::kDequantize},
    // OCP MX: E8M0 scales per block of 32 (FLOOR).
    {"quantize mxfp8 (e4m3)", Format::kMxfp8E4M3, Granularity::kGroup, 32, 0, false, false,
     Op::kQuantize},
    {"quantize mxfp8 (e5m2)", Format::kMxfp8E5M2, Granularity::kGroup, 32, 0, false, false,
     Op::kQuantize},
    {"quantize mxfp6 (e3m2)", Format::kMxfp6E3M2, Granularity::kGroup, 32, 0, false, false,
     Op::kQuantize},
    {"quantize mxfp6 (e2m3)", Format::kMxfp6E2M3, Granularity::kGroup, 32, 0, false, false,
     Op::kQuantize},
    {"quantize mxint8", Format::kMxint8, Granularity::kGroup, 32, 0, false, false, Op::kQuantize},
    {"quantize mxfp4", Format::kMxfp4, Granularity::kGroup, 32, 0, false, false, Op::kQuantize},
    {"dequantize mxfp4", Format::kMxfp4, Granularity::kGroup, 32, 0, false, false, Op::kDequantize},
    // NVFP4: E4M3 scales per block of 16 under a per-tensor global scale.
    {"quantize nvfp4", Format::kNvfp4, Granularity::kGroup, 16, 0, false, false, Op::kQuantize},
    // The caller's S_enc (static_global_scale: TransformerEngine's amax history): one pass.
    {"quantize nvfp4 static global", Format::kNvfp4, Granularity::kGroup, 16, 0, false, true,
     Op::kQuantize},
    {"dequantize nvfp4", Format::kNvfp4, Granularity::kGroup, 16, 0, false, false, Op::kDequantize},
    // HiF8 (generic element kernels: its tapered encode has no vector path yet).
    {"quantize hif8 token", Format::kHif8, Granularity::kToken, 0, 0, false, false, Op::kQuantize},
    // NF4: blocks of 64 over the flattened tensor (generic element kernels).
    {"quantize nf4", Format::kNf4, Granularity::kGroup, 64, 0, false, false, Op::kQuantize},
    {"dequantize nf4", Format::kNf4, Granularity::kGroup, 64, 0, false, false, Op::kDequantize},
    // FlatQuant: rows of 4096 as 64 × 64, random P1 and P2; the transform's two GEMM kernels
    // plus per-token INT4 of their output.
    {"quantize flatquant-int4", Format::kFlatquantInt4, Granularity::kToken, 0, 0, false, false,
     Op::kQuantize},
    // Percentile calibration (Calibrate's scales): four selection passes over the input.
    {"calibrate percentile int8 tensor", Format::kInt8, Granularity::kTensor, 0, 0, false, false,
     Op::kPercentile},
    {"calibrate percentile int8 token", Format::kInt8, Granularity::kToken, 0, 0, false, false,
     Op::kPercentile},
};

int Main(int argc, char** argv) {
  int64_t max_elements = int64_t{1} << 30;
  int64_t min_elements = int64_t{1} << 10;
  std::string csv_path, only;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--max-elements=", 15) == 0) max_elements = std::atoll(argv[i] + 15);
    if (std::strncmp(argv[i], "--min-elements=", 15) == 0) min_elements = std::atoll(argv[i] + 15);
    if (std::strncmp(argv[i], "--csv=", 6) == 0) csv_path = argv[i] + 6;
    if (std::strncmp(argv[i], "--only=", 7) == 0) only = argv[i] + 7;  // ops whose name has it
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int sms = prop.multiProcessorCount;
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));

  // Device copy bandwidth on the largest size: bytes read + bytes written.
  const int64_t copy_bytes = std::min<int64_t>(max_elements * 4, int64_t{4} << 30);
  void *copy_src, *copy_dst;
  CUDA_CHECK(cudaMalloc(&copy_src, copy_bytes));
  CUDA_CHECK(cudaMalloc(&copy_dst, copy_bytes));
  CUDA_CHECK(cudaMemset(copy_src, 1, copy_bytes));
  const float copy_ms = MedianMs(
      [&] {
        CUDA_CHECK(
            cudaMemcpyAsync(copy_dst, copy_src, copy_bytes, cudaMemcpyDeviceToDevice, stream));
      },
      20, stream);
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  CUDA_CHECK(cudaFree(copy_src));
  CUDA_CHECK(cudaFree(copy_dst));
  std::printf("device: %s, %d SMs; device-to-device copy of %lld MiB: %.1f GB/s (read + write)\n",
              prop.name, sms, static_cast<long long>(copy_bytes >> 20), copy_gbs);

  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv != nullptr) std::fprintf(csv, "op,elements,ms,gb_per_s,pct_of_copy\n");
  std::printf("%-34s %12s %11s %10s %9s\n", "op", "elements", "time", "GB/s", "% copy");

  const int64_t cols = 4096;
  for (int64_t elements = min_elements; elements <= max_elements; elements *= 16) {
    const int64_t rows = std::max<int64_t>(1, elements / cols);
    const Shape shape = elements < cols ? Shape{1, elements} : Shape{rows, cols};
    const int64_t numel = elements < cols ? elements : rows * cols;
    float* x;
    CUDA_CHECK(cudaMalloc(&x, numel * 4));
    FillNormalish<<<1024, 256, 0, stream>>>(x, numel, 42);
    CUDA_CHECK(cudaGetLastError());
    for (const Op& op : kOps) {
      if (!only.empty() && std::string(op.name).find(only) == std::string::npos) continue;
      QuantSpec requested;
      requested.format = op.format;
      requested.granularity = op.granularity;
      requested.group_size = op.group_size;
      requested.block_rows = requested.block_cols = op.block;
      requested.asymmetric = op.asymmetric;
      QuantSpec spec = *ResolveSpec(requested, shape);
      const QuantLayout layout = *ComputeLayout(spec, shape);
      const int64_t n = layout.geometry.num_scales;
      void *codes, *scales, *zero_points, *workspace, *output = nullptr;
      CUDA_CHECK(cudaMalloc(&codes, std::max<int64_t>(layout.code_bytes, 1)));
      CUDA_CHECK(cudaMalloc(&scales, 4 * n));
      CUDA_CHECK(cudaMalloc(&zero_points, 4 * n));
      CUDA_CHECK(cudaMalloc(&workspace, WorkspaceBytes(layout)));
      GlobalScaleBuffers nvfp4;
      if (Traits(spec.format).scale_kind == ScaleKind::kE4M3) {
        CUDA_CHECK(cudaMalloc(&nvfp4.element_scales, 4 * n));
        CUDA_CHECK(cudaMalloc(&nvfp4.global_scale, 4));
      }
      if (op.timed == Op::kDequantize) CUDA_CHECK(cudaMalloc(&output, numel * 4));
      void* select_workspace = nullptr;
      if (op.timed == Op::kPercentile) {
        CUDA_CHECK(cudaMalloc(&select_workspace, PercentileWorkspaceBytes(n)));
      }
      StatsBuffers stats;
      MetricPartial* partials;
      SplitWorkspace(workspace, layout, &stats, &partials);
      ElementParams p = MakeElementParams(spec, layout, x, DType::kF32, sms * 8);
      FlatquantTransform transform;
      if (Traits(spec.format).kronecker_transform) {
        // P1 and P2 of random values (what FlatQuant learns is dense too).
        std::vector<float> left(spec.transform_left.size()), right(spec.transform_right.size());
        for (size_t i = 0; i < left.size(); ++i) left[i] = UniformFromBits(StochasticBits(1, i));
        for (size_t i = 0; i < right.size(); ++i) right[i] = UniformFromBits(StochasticBits(2, i));
        float *d_left, *d_right;
        CUDA_CHECK(cudaMalloc(&d_left, 4 * left.size()));
        CUDA_CHECK(cudaMalloc(&d_right, 4 * right.size()));
        CUDA_CHECK(cudaMemcpy(d_left, left.data(), 4 * left.size(), cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(d_right, right.data(), 4 * right.size(), cudaMemcpyHostToDevice));
        transform.input = x;
        transform.rows = numel / cols;
        transform.n1 = MatrixSide(left.size());
        transform.n2 = MatrixSide(right.size());
        transform.left = d_left;
        transform.right = d_right;
        transform.flags = stats.flags;
        transform.max_blocks = sms * 8;
        CUDA_CHECK(cudaMalloc(&transform.scratch, numel * 4));
        CUDA_CHECK(cudaMalloc(&transform.output, numel * 4));
        p.input = transform.output;
      }
      int32_t* zps = op.asymmetric ? static_cast<int32_t*>(zero_points) : nullptr;
      // What Backend::Quantize runs on the device: statistics and scales (fused into the
      // element pass where a kernel for that exists) unless the scales are static.
      auto quantize = [&](bool scales_ready) {
        CUDA_CHECK(LaunchInitStats(stats, n, stream));
        if (transform.output != nullptr) CUDA_CHECK(LaunchFlatquantTransform(transform, stream));
        CUDA_CHECK(LaunchQuantizePass(p, spec, scales_ready, stats, static_cast<float*>(scales),
                                      zps, nvfp4, static_cast<uint8_t*>(codes), nullptr,
                                      DType::kF32, nullptr, stream));
      };
      quantize(/*scales_ready=*/false);  // scales (and codes) to start from
      if (op.static_scales && nvfp4.global_scale != nullptr) {
        // NVFP4's static form is its S_enc: the one just computed.
        CUDA_CHECK(
            cudaMemcpy(&spec.static_global_scale, nvfp4.global_scale, 4, cudaMemcpyDeviceToHost));
      }
      const int reps = numel >= (int64_t{1} << 28) ? 5 : 20;
      float ms;
      int64_t bytes;
      if (op.timed == Op::kPercentile) {
        const ScaleRule rule =
            MakeScaleRule(Traits(spec.format), spec.asymmetric, spec.scale_rounding);
        ms = MedianMs(
            [&] {
              CUDA_CHECK(LaunchPercentileScales(p, rule, 1.0f, 99.99, select_workspace,
                                                static_cast<float*>(scales), zps, stats.flags,
                                                stream));
            },
            reps, stream);
        bytes = numel * 4 + 4 * n;  // the input read once, the scales written
      } else if (op.timed == Op::kDequantize) {
        ms = MedianMs(
            [&] {
              // NVFP4's dequantization divides by the element scales (d_b).
              const float* element_scales = nvfp4.element_scales != nullptr
                                                ? nvfp4.element_scales
                                                : static_cast<float*>(scales);
              CUDA_CHECK(LaunchDequantize(p, static_cast<uint8_t*>(codes), element_scales, zps,
                                          output, DType::kF32, stream));
            },
            reps, stream);
        bytes = layout.code_bytes + 4 * n + numel * 4;
      } else {
        ms = MedianMs([&] { quantize(/*scales_ready=*/op.static_scales); }, reps, stream);
        bytes = numel * 4 + layout.code_bytes + 4 * n;
      }
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      std::printf("%-34s %12lld %9.4f ms %10.1f %8.1f%%\n", op.name, static_cast<long long>(numel),
                  ms, gbs, 100.0 * gbs / copy_gbs);
      if (csv != nullptr) {
        std::fprintf(csv, "%s,%lld,%.6f,%.2f,%.2f\n", op.name, static_cast<long long>(numel), ms,
                     gbs, 100.0 * gbs / copy_gbs);
      }
      CUDA_CHECK(cudaFree(codes));
      CUDA_CHECK(cudaFree(scales));
      CUDA_CHECK(cudaFree(zero_points));
      CUDA_CHECK(cudaFree(workspace));
      if (output != nullptr) CUDA_CHECK(cudaFree(output));
      if (nvfp4.element_scales != nullptr) CUDA_CHECK(cudaFree(nvfp4.element_scales));
      if (nvfp4.global_scale != nullptr) CUDA_CHECK(cudaFree(nvfp4.global_scale));
      if (select_workspace != nullptr) CUDA_CHECK(cudaFree(select_workspace));
      if (transform.output != nullptr) {
        CUDA_CHECK(cudaFree(const_cast<float*>(transform.left)));
        CUDA_CHECK(cudaFree(const_cast<float*>(transform.right)));
        CUDA_CHECK(cudaFree(transform.scratch));
        CUDA_CHECK(cudaFree(transform.output));
      }
    }
    CUDA_CHECK(cudaFree(x));
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}

}  // namespace
}  // namespace quantd::cuda

int main(int argc, char** argv) { return quantd::cuda::Main(argc, argv); }
