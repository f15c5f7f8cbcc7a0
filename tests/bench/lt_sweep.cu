// How far cuBLASLt's own configuration space reaches past the heuristic's choice for an FP8
// product in the sustained power state: the evidence behind PERFORMANCE.md's "no cuBLASLt
// configuration is 10% faster" (issue 5's ≥ 1.1× _scaled_mm target at large M).
//
// For D[M, N] = A[M, K] · B[N, K]ᵀ in E4M3 → BF16 (the TN layout quantd_gemm_bench and
// torch._scaled_mm run), the candidates are the heuristic's first 64 and the heuristic's first
// algorithm with every tile × custom option × cluster shape cuBLASLt accepts for the product.
// After 400 ms of warm-up every candidate is screened by one timing (~2 ms of calls); the best
// 24 are then timed three times each, each right after the heuristic's first, and the best of
// the three time ratios counts (drift between candidates cancels).
//
//   quantd_lt_sweep M N K [--rowwise]   (per tensor scales by default; --rowwise: per token ×
//                                        per channel, OUTER_VEC_32F)
//
// Prints the heuristic's first's time and the 10 best candidates as time / its time.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "cuda_check.h"

#define LT_CHECK(expr)                                                                       \
  do {                                                                                       \
    const cublasStatus_t lt_status_ = (expr);                                                \
    if (lt_status_ != CUBLAS_STATUS_SUCCESS) {                                               \
      std::fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #expr, lt_status_); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (false)

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // as the GEMM engine (gemm_lt.cc)

// E4M3 codes of triangular values on (-224, 224): a spread like quantized activations'.
__global__ void FillCodes(__nv_fp8_e4m3* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float sum =
        quantd::bench::HashedUniform(i, seed) + quantd::bench::HashedUniform(i, seed + 7);
    x[i] = __nv_fp8_e4m3((sum - 1.0f) * 224.0f);
  }
}

template <typename T>
uint32_t Config(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attribute) {
  T value{};
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value, sizeof(value), &written);
  return static_cast<uint32_t>(value);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: quantd_lt_sweep M N K [--rowwise]\n");
    return 2;
  }
  const int64_t m = std::atoll(argv[1]), n = std::atoll(argv[2]), k = std::atoll(argv[3]);
  const bool rowwise = argc > 4 && std::strcmp(argv[4], "--rowwise") == 0;

  __nv_fp8_e4m3 *a = nullptr, *b = nullptr;
  __nv_bfloat16* d = nullptr;
  float *a_scales = nullptr, *b_scales = nullptr;
  void* workspace = nullptr;
  CUDA_CHECK(cudaMalloc(&a, m * k));
  CUDA_CHECK(cudaMalloc(&b, n * k));
  CUDA_CHECK(cudaMalloc(&d, m * n * sizeof(__nv_bfloat16)));
  CUDA_CHECK(cudaMalloc(&a_scales, m * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&b_scales, n * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  FillCodes<<<1024, 256>>>(a, m * k, 1);
  FillCodes<<<1024, 256>>>(b, n * k, 2);
  const std::vector<float> scales(static_cast<size_t>(std::max(m, n)), 1.0f / 448.0f);
  CUDA_CHECK(cudaMemcpy(a_scales, scales.data(), m * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(b_scales, scales.data(), n * sizeof(float), cudaMemcpyHostToDevice));

  // Column-major, as gemm_lt.cc: cuBLAS's A is our B (transposed), its B our A.
  cublasLtHandle_t handle = nullptr;
  LT_CHECK(cublasLtCreate(&handle));
  cublasLtMatmulDesc_t op = nullptr;
  LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                          sizeof(transpose)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof(none)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scales,
                                          sizeof(b_scales)));
  LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scales,
                                          sizeof(a_scales)));
  if (rowwise) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    LT_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    LT_CHECK(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
  }
  cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr, d_layout = nullptr;
  LT_CHECK(cublasLtMatrixLayoutCreate(&a_layout, CUDA_R_8F_E4M3, k, n, k));
  LT_CHECK(cublasLtMatrixLayoutCreate(&b_layout, CUDA_R_8F_E4M3, k, m, k));
  LT_CHECK(cublasLtMatrixLayoutCreate(&d_layout, CUDA_R_16BF, n, m, n));

  cublasLtMatmulPreference_t preference = nullptr;
  LT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const uint64_t workspace_bytes = kWorkspaceBytes;
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference,
                                                CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &workspace_bytes, sizeof(workspace_bytes)));
  std::vector<cublasLtMatmulHeuristicResult_t> results(64);
  int returned = 0;
  LT_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, op, a_layout, b_layout, d_layout, d_layout,
                                          preference, 64, results.data(), &returned));
  if (returned == 0) {
    std::fprintf(stderr, "cuBLASLt has no algorithm for this product\n");
    return 1;
  }
  std::vector<cublasLtMatmulAlgo_t> candidates;
  for (int r = 0; r < returned; ++r) candidates.push_back(results[r].algo);

  auto accepted = [&](const cublasLtMatmulAlgo_t& algo) {
    cublasLtMatmulHeuristicResult_t check{};
    return cublasLtMatmulAlgoCheck(handle, op, a_layout, b_layout, d_layout, d_layout, &algo,
                                   &check) == CUBLAS_STATUS_SUCCESS &&
           check.workspaceSize <= kWorkspaceBytes;
  };
  auto known = [&](const cublasLtMatmulAlgo_t& algo) {
    return std::any_of(candidates.begin(), candidates.end(), [&](const auto& c) {
      return std::memcmp(c.data, algo.data, sizeof(algo.data)) == 0;
    });
  };
  const cublasLtMatmulAlgo_t first = candidates[0];
  size_t bytes = 0;
  LT_CHECK(
      cublasLtMatmulAlgoCapGetAttribute(&first, CUBLASLT_ALGO_CAP_TILE_IDS, nullptr, 0, &bytes));
  std::vector<uint32_t> tiles(bytes / sizeof(uint32_t));
  LT_CHECK(cublasLtMatmulAlgoCapGetAttribute(&first, CUBLASLT_ALGO_CAP_TILE_IDS, tiles.data(),
                                             bytes, &bytes));
  int32_t custom_max = 0;
  LT_CHECK(cublasLtMatmulAlgoCapGetAttribute(&first, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX,
                                             &custom_max, sizeof(custom_max), &bytes));
  const uint16_t clusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                               CUBLASLT_CLUSTER_SHAPE_2x1x1, CUBLASLT_CLUSTER_SHAPE_1x2x1,
                               CUBLASLT_CLUSTER_SHAPE_2x2x1};
  for (uint32_t tile : tiles) {
    cublasLtMatmulAlgo_t with_tile = first;
    cublasLtMatmulAlgoConfigSetAttribute(&with_tile, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                         sizeof(tile));
    if (!accepted(with_tile)) continue;  // a tile the first's own options cannot run
    for (uint32_t custom = 0; custom <= static_cast<uint32_t>(custom_max); ++custom) {
      for (uint16_t cluster : clusters) {
        cublasLtMatmulAlgo_t variant = with_tile;
        cublasLtMatmulAlgoConfigSetAttribute(&variant, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom,
                                             sizeof(custom));
        cublasLtMatmulAlgoConfigSetAttribute(&variant, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                             &cluster, sizeof(cluster));
        if (accepted(variant) && !known(variant)) candidates.push_back(variant);
      }
    }
  }

  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.0f, beta = 0.0f;
  // Mean milliseconds of `repeats` calls, or a negative value if the candidate failed.
  auto time = [&](const cublasLtMatmulAlgo_t& algo, int repeats) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int r = 0; r < repeats; ++r) {
      if (cublasLtMatmul(handle, op, &alpha, b, a_layout, a, b_layout, &beta, d, d_layout, d,
                         d_layout, &algo, workspace, kWorkspaceBytes,
                         stream) != CUBLAS_STATUS_SUCCESS) {
        CUDA_CHECK(cudaStreamSynchronize(stream));
        return -1.0f;
      }
    }
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms / static_cast<float>(repeats);
  };
  float one_ms = time(first, 1);
  const auto warm_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(400);
  while (std::chrono::steady_clock::now() < warm_until) one_ms = time(first, 5);
  const int repeats = std::clamp(static_cast<int>(2.0f / one_ms), 1, 200);

  std::vector<std::pair<float, size_t>> screened;
  for (size_t c = 1; c < candidates.size(); ++c) {
    const float ms = time(candidates[c], repeats);
    if (ms > 0.0f) screened.emplace_back(ms, c);
  }
  std::sort(screened.begin(), screened.end());
  screened.resize(std::min<size_t>(screened.size(), 24));
  std::vector<std::pair<float, size_t>> finals = {{1.0f, 0}};
  for (const auto& [screen_ms, c] : screened) {
    float best = 1e30f;
    for (int round = 0; round < 3; ++round) {
      const float reference = time(first, repeats);
      best = std::min(best, time(candidates[c], repeats) / reference);
    }
    finals.emplace_back(best, c);
  }
  std::sort(finals.begin(), finals.end());
  const float first_ms = time(first, 4 * repeats);
  std::printf(
      "%lld x %lld x %lld %s: %d heuristic + %zu variants; heuristic's first %.4f ms "
      "(%.0f TFLOP/s)\n",
      static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k),
      rowwise ? "rowwise" : "per tensor", returned, candidates.size() - returned, first_ms,
      2.0 * m * n * k / first_ms / 1e9);
  for (size_t f = 0; f < std::min<size_t>(finals.size(), 10); ++f) {
    const cublasLtMatmulAlgo_t& algo = candidates[finals[f].second];
    std::printf("  %.3f  %s id=%u tile=%u custom=%u cluster=%u stages=%u\n", finals[f].first,
                finals[f].second < static_cast<size_t>(returned) ? "heuristic" : "variant  ",
                Config<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID),
                Config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                Config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                Config<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
                Config<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID));
  }
  return 0;
}
