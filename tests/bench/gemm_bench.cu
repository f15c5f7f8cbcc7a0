// GEMM benchmark: per (M, N, K), the median time of the backend's device-side GEMM pieces on
// device-resident data (what Backend::Gemm runs once the operands are on the GPU), as ms and
// TFLOP/s (2·M·N·K per product):
//   fp8 tensor / rowwise / block   E4M3 codes × E4M3 codes on cuBLASLt, BF16 out, the
//                                  operands quantized beforehand (per tensor, per token ×
//                                  per channel, 1×128 × 128×128 blocks); every product as the
//                                  backend routes it (RouteGemm: e.g. row-wise at M <= 64 is
//                                  the codes' product, then the epilogue applies the scales)
//   int8 int32                     INT8 × INT8 → int32 on cuBLASLt (what torch._int_mm does)
//   w8a8 int8 / fp8 linear         BF16 activations → per-token quantization (our kernel) →
//                                  product → BF16 out (INT8: the epilogue applies the scales),
//                                  the weight quantized per channel beforehand
// The inputs come from HashedInput, which tests/bench/gemm_peers.py reproduces bit for bit,
// so the PyTorch peers multiply identical values in the same job.
//
//   quantd_gemm_bench [--m=1,16,128,2048,8192] [--nk=N,K,...] [--only=SUBSTRING] [--csv=FILE]
//                     [--autotune=0]   (cuBLASLt's heuristic choice, not the timed best of 8)
//
// Speed is never a test assertion; docs/PERFORMANCE.md records this table with the command.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cuda_check.h"
#include "gemm_path.h"
#include "kernels.h"
#include "quantd/spec.h"

namespace quantd::cuda {
namespace {

// BF16 values (u1 + u2 - 1) · 2 · scale: triangular on (-2, 2) · scale; gemm_peers.py computes
// the same fp32 steps in the same order.
__global__ void HashedInput(__nv_bfloat16* x, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float sum = __fadd_rn(bench::HashedUniform(i, seed), bench::HashedUniform(i, seed + 7));
    x[i] = __float2bfloat16_rn(__fmul_rn(__fmul_rn(__fsub_rn(sum, 1.0f), 2.0f), scale));
  }
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(status.message()).c_str());
    std::exit(1);
  }
}

// A matrix quantized on the device by the backend's own pass: codes and scales.
struct Quantized {
  QuantSpec spec;
  QuantLayout layout;
  uint8_t* codes = nullptr;
  float* scales = nullptr;
  void* workspace = nullptr;
  StatsBuffers stats;
  MetricPartial* partials = nullptr;
  ElementParams params;
};

Quantized Prepare(Format format, Granularity granularity, int64_t group, int64_t block,
                  const void* input, int64_t rows, int64_t cols, int max_blocks) {
  Quantized q;
  QuantSpec requested;
  requested.format = format;
  requested.granularity = granularity;
  requested.group_size = group;
  requested.block_rows = requested.block_cols = block;
  const Shape shape{rows, cols};
  q.spec = *ResolveSpec(requested, shape);
  q.layout = *ComputeLayout(q.spec, shape);
  CUDA_CHECK(cudaMalloc(&q.codes, q.layout.code_bytes));
  CUDA_CHECK(cudaMalloc(&q.scales, 4 * q.layout.geometry.num_scales));
  CUDA_CHECK(cudaMalloc(&q.workspace, WorkspaceBytes(q.layout)));
  SplitWorkspace(q.workspace, q.layout, &q.stats, &q.partials);
  q.params = MakeElementParams(q.spec, q.layout, input, DType::kBF16, max_blocks);
  return q;
}

void Run(const Quantized& q, cudaStream_t stream) {
  CUDA_CHECK(LaunchInitStats(q.stats, q.layout.geometry.num_scales, stream));
  CUDA_CHECK(LaunchQuantizePass(q.params, q.spec, false, q.stats, q.scales, nullptr, {}, q.codes,
                                nullptr, DType::kF32, nullptr, stream));
}

void Free(Quantized& q) {
  CUDA_CHECK(cudaFree(q.codes));
  CUDA_CHECK(cudaFree(q.scales));
  CUDA_CHECK(cudaFree(q.workspace));
}

std::vector<int64_t> ParseList(const char* text) {
  std::vector<int64_t> values;
  for (const char* p = text; *p != '\0';) {
    values.push_back(std::atoll(p));
    const char* comma = std::strchr(p, ',');
    if (comma == nullptr) break;
    p = comma + 1;
  }
  return values;
}

int Main(int argc, char** argv) {
  std::vector<int64_t> ms_list = {1, 16, 128, 2048, 8192};
  // Llama-3-8B and 70B projections as (N, K): q/o, gate/up, down; 70B's q/o, gate/up, down.
  std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336},
                                                     {8192, 8192}, {28672, 8192}, {8192, 28672}};
  std::string csv_path, only;
  bool autotune = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--autotune=0") == 0) autotune = false;  // the heuristic's first
    if (std::strncmp(argv[i], "--m=", 4) == 0) ms_list = ParseList(argv[i] + 4);
    if (std::strncmp(argv[i], "--csv=", 6) == 0) csv_path = argv[i] + 6;
    if (std::strncmp(argv[i], "--only=", 7) == 0) only = argv[i] + 7;
    if (std::strncmp(argv[i], "--nk=", 5) == 0) {  // N,K pairs: --nk=4096,4096,8192,8192
      const std::vector<int64_t> nk = ParseList(argv[i] + 5);
      shapes.clear();
      for (size_t j = 0; j + 1 < nk.size(); j += 2) shapes.emplace_back(nk[j], nk[j + 1]);
    }
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int max_blocks = prop.multiProcessorCount * 8;
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  absl::StatusOr<std::unique_ptr<LtEngine>> engine = CreateLtEngine(0, autotune, "");
  Check(engine.status(), "CreateLtEngine");
  LtEngine& lt = **engine;
  void* workspace;
  CUDA_CHECK(cudaMalloc(&workspace, lt.workspace_bytes()));
  std::printf("device: %s, %d SMs; algorithms: %s\n", prop.name, prop.multiProcessorCount,
              autotune ? "best of cuBLASLt's first 8, timed" : "cuBLASLt's heuristic first");
  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv != nullptr) std::fprintf(csv, "op,m,n,k,ms,tflops\n");
  std::printf("%-22s %6s %6s %6s %10s %9s\n", "op", "M", "N", "K", "time", "TFLOP/s");

  for (const auto& shape : shapes) {
    const int64_t n = shape.first, k = shape.second;
    // The weight: BF16 [N, K], quantized per channel and per 128×128 block once.
    __nv_bfloat16* w;
    CUDA_CHECK(cudaMalloc(&w, 2 * n * k));
    HashedInput<<<1024, 256, 0, stream>>>(w, n * k, 2, 0.05f);
    Quantized w_fp8_row = Prepare(Format::kFp8E4M3, Granularity::kToken, 0, 0, w, n, k, max_blocks);
    Quantized w_fp8_tensor =
        Prepare(Format::kFp8E4M3, Granularity::kTensor, 0, 0, w, n, k, max_blocks);
    Quantized w_fp8_block =
        Prepare(Format::kFp8E4M3, Granularity::kBlock, 0, 128, w, n, k, max_blocks);
    Quantized w_int8 = Prepare(Format::kInt8, Granularity::kToken, 0, 0, w, n, k, max_blocks);
    for (Quantized* q : {&w_fp8_row, &w_fp8_tensor, &w_fp8_block, &w_int8}) Run(*q, stream);
    const int64_t k_blocks = k / 128;
    // BLK128x128_32F reads [N/128, K/128] row-major, the layout quantization writes (the block
    // path needs K % 512 == 0, so no row padding).
    const float* w_block_scales = w_fp8_block.scales;
    for (const int64_t m : ms_list) {
      __nv_bfloat16 *x, *out;
      void* sums;
      CUDA_CHECK(cudaMalloc(&x, 2 * m * k));
      CUDA_CHECK(cudaMalloc(&out, 2 * m * n));
      CUDA_CHECK(cudaMalloc(&sums, 4 * m * n));
      HashedInput<<<1024, 256, 0, stream>>>(x, m * k, 1, 1.0f);
      Quantized x_fp8_row =
          Prepare(Format::kFp8E4M3, Granularity::kToken, 0, 0, x, m, k, max_blocks);
      Quantized x_fp8_tensor =
          Prepare(Format::kFp8E4M3, Granularity::kTensor, 0, 0, x, m, k, max_blocks);
      Quantized x_fp8_group =
          Prepare(Format::kFp8E4M3, Granularity::kGroup, 128, 0, x, m, k, max_blocks);
      Quantized x_int8 = Prepare(Format::kInt8, Granularity::kToken, 0, 0, x, m, k, max_blocks);
      for (Quantized* q : {&x_fp8_row, &x_fp8_tensor, &x_fp8_group, &x_int8}) Run(*q, stream);
      float* x_group_scales;  // VEC128_32F's K-block-major layout
      CUDA_CHECK(cudaMalloc(&x_group_scales, 4 * m * k_blocks));
      CUDA_CHECK(LaunchRepackScales(x_fp8_group.scales, m, k_blocks, x_group_scales, 1, m, stream));

      // What Backend::Gemm runs for these operands (RouteGemm): cuBLASLt's product, then the
      // epilogue where cuBLASLt does not write the BF16 output itself.
      GemmDims dims;
      dims.m = m;
      dims.n = n;
      dims.k = k;
      struct Routed {
        bool tensor_cores = false;  // else the backend would run it in fp32: not timed here
        LtProduct product;
        GemmEpilogue epilogue;
        bool epilogue_needed = false;
      };
      auto routed = [&](const Quantized& xq, const Quantized& wq, const float* x_scales,
                        const float* w_scales) {
        GemmSpec spec;
        spec.a = xq.spec;
        spec.b = wq.spec;
        const GemmRoute route = RouteGemm(dims, spec, DType::kBF16, false, DType::kUnspecified, lt);
        Routed r;
        r.tensor_cores = route.plan.path != GemmPath::kFloat;
        r.product = route.product;
        r.product.a = xq.codes;
        r.product.b = wq.codes;
        r.product.a_scale_data = x_scales;
        r.product.b_scale_data = w_scales;
        r.product.d = route.direct ? static_cast<void*>(out) : sums;
        r.epilogue_needed = !route.direct;
        r.epilogue.acc = sums;
        r.epilogue.acc_int32 = r.product.d_type == DType::kI32;
        r.epilogue.rows = r.epilogue.m = m;
        r.epilogue.n = n;
        r.epilogue.out = out;
        r.epilogue.out_dtype = DType::kBF16;
        r.epilogue.max_blocks = max_blocks;
        if (route.scales_in_epilogue) {
          r.epilogue.row_scales = xq.scales;
          r.epilogue.row_stride = route.plan.a_scales == OperandScales::kRows ? 1 : 0;
          r.epilogue.col_scales = wq.scales;
          r.epilogue.col_stride = route.plan.b_scales == OperandScales::kRows ? 1 : 0;
        }
        return r;
      };
      const Routed tensor =
          routed(x_fp8_tensor, w_fp8_tensor, x_fp8_tensor.scales, w_fp8_tensor.scales);
      const Routed rowwise = routed(x_fp8_row, w_fp8_row, x_fp8_row.scales, w_fp8_row.scales);
      const Routed block = routed(x_fp8_group, w_fp8_block, x_group_scales, w_block_scales);
      const Routed int8 = routed(x_int8, w_int8, x_int8.scales, w_int8.scales);

      struct Timed {
        const char* name;
        const Routed& routed;
        const Quantized* quantize_x;  // w8a8: the activations' quantization is part of the time
        bool epilogue;                // "int8 int32 gemm" stops at the sums, as torch._int_mm
      };
      const Timed timed[] = {
          {"fp8 tensor gemm", tensor, nullptr, true},
          {"fp8 rowwise gemm", rowwise, nullptr, true},
          {"fp8 block gemm", block, nullptr, true},
          {"int8 int32 gemm", int8, nullptr, false},
          {"w8a8 fp8 linear", rowwise, &x_fp8_row, true},
          {"w8a8 int8 linear", int8, &x_int8, true},
      };
      for (const Timed& t : timed) {
        if (!only.empty() && std::string(t.name).find(only) == std::string::npos) continue;
        if (!t.routed.tensor_cores) {
          std::printf("%-22s %6lld %6lld %6lld %10s %9s\n", t.name, static_cast<long long>(m),
                      static_cast<long long>(n), static_cast<long long>(k), "n/a", "");
          continue;
        }
        const bool epilogue = t.epilogue && t.routed.epilogue_needed;
        const int reps = m * n * k >= (int64_t{1} << 38) ? 10 : 30;
        const float ms = MedianMs(
            [&] {
              if (t.quantize_x != nullptr) Run(*t.quantize_x, stream);
              Check(lt.Run(t.routed.product, workspace, stream), t.name);
              if (epilogue) CUDA_CHECK(LaunchGemmEpilogue(t.routed.epilogue, stream));
            },
            reps, stream);
        const double tflops = 2.0 * m * n * k / (ms * 1e-3) / 1e12;
        std::printf("%-22s %6lld %6lld %6lld %7.4f ms %9.1f\n", t.name, static_cast<long long>(m),
                    static_cast<long long>(n), static_cast<long long>(k), ms, tflops);
        if (csv != nullptr) {
          std::fprintf(csv, "%s,%lld,%lld,%lld,%.6f,%.2f\n", t.name, static_cast<long long>(m),
                       static_cast<long long>(n), static_cast<long long>(k), ms, tflops);
        }
      }
      for (Quantized* q : {&x_fp8_row, &x_fp8_tensor, &x_fp8_group, &x_int8}) Free(*q);
      CUDA_CHECK(cudaFree(x_group_scales));
      CUDA_CHECK(cudaFree(x));
      CUDA_CHECK(cudaFree(out));
      CUDA_CHECK(cudaFree(sums));
    }
    for (Quantized* q : {&w_fp8_row, &w_fp8_tensor, &w_fp8_block, &w_int8}) Free(*q);
    CUDA_CHECK(cudaFree(w));
  }
  if (csv != nullptr) std::fclose(csv);
  CUDA_CHECK(cudaFree(workspace));
  return 0;
}

}  // namespace
}  // namespace quantd::cuda

int main(int argc, char** argv) { return quantd::cuda::Main(argc, argv); }
