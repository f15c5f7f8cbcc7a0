// Internal to the CUDA backend: the GEMM's pieces below the backend (quantd/gemm.h is the
// contract). cuda_backend.cu stages the operands (quantized by the same passes as Quantize, so
// the codes and scales are the CPU's bit for bit), gemm_lt.cc runs the product on cuBLASLt,
// gemm_kernels.cu holds the small kernels around it: the epilogue, scale repacking, the
// metrics' comparison.
//
// Three paths, chosen by PlanGemmPath from the resolved spec:
//  - kFp8: E4M3 / E5M2 codes on the FP8 tensor cores (not E5M2 × E5M2, which Hopper lacks),
//    with cuBLASLt's scale modes: one scale per tensor (SCALAR_32F), per row of each operand
//    (OUTER_VEC_32F: A's tokens × B's output channels), or DeepSeek's blocks (A in 1 × 128
//    groups along K: VEC128_32F; B in 128 × 128 blocks: BLK128x128_32F);
//  - kInt8: symmetric INT8 codes on the integer tensor cores, int32 sums, then the epilogue
//    applies the per-tensor / per-row scales (and α, β·C, bias) in fp32;
//  - kFloat: every other case (MX, NVFP4, NF4, HiF8, INT4, asymmetric, unquantized operands,
//    shapes the tensor cores refuse): the operands' x̂ in fp32 and an fp32 product (no TF32),
//    the "simulated-format" GEMM.
#ifndef QUANTD_KERNELS_CUDA_GEMM_PATH_H_
#define QUANTD_KERNELS_CUDA_GEMM_PATH_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels.h"
#include "quantd/gemm.h"

namespace quantd::cuda {

// In the order of kGemmPathNames (quantd/backend.h), which counts products by path.
enum class GemmPath { kFp8, kInt8, kFloat };

// How an operand's scales reach the product.
enum class OperandScales {
  kNone,       // kFloat: x̂ already carries them
  kTensor,     // one scale
  kRows,       // one per row: A's tokens, B's output channels
  kBlocks128,  // A: 1 × 128 groups along K; B: 128 × 128 blocks
};

struct GemmPathPlan {
  GemmPath path = GemmPath::kFloat;
  OperandScales a_scales = OperandScales::kNone;
  OperandScales b_scales = OperandScales::kNone;
};

// The path for a resolved spec over `dims` (see above). The tensor-core paths need K and N
// multiples of 16 (cuBLASLt's 16-byte alignment of every leading dimension); the block path
// also N a multiple of 128, K of 512 (whole groups of four 128-blocks), 16 rows or more and an
// unbatched B: cuBLASLt 13.1 on the H200 had no algorithm for 1 row, for N = 48, nor for
// K = 384.
GemmPathPlan PlanGemmPath(const GemmDims& dims, const GemmSpec& spec);

// What an operand of the product holds: fp32 x̂, or codes.
enum class LtElement { kF32, kE4M3, kE5M2, kI8 };

// A product on cuBLASLt, row-major: D[r, n] = Σ_k A[r, k] · B[n, k] for r < rows, with one B
// for every row (the batch folded into the rows) or, when b_batch_stride > 0, `batches`
// products of rows / batches rows each, every one with its own B.
struct LtProduct {
  GemmPath path = GemmPath::kFloat;
  int64_t rows = 0, n = 0, k = 0;
  int64_t batches = 1;
  const void* a = nullptr;  // codes (1 byte) or fp32
  const void* b = nullptr;
  int64_t b_batch_stride = 0;  // elements; 0: one B
  LtElement a_type = LtElement::kF32;
  LtElement b_type = LtElement::kF32;
  // kFp8: the scales in the layout their mode needs (RepackScales), device memory.
  OperandScales a_scales = OperandScales::kNone;
  OperandScales b_scales = OperandScales::kNone;
  const float* a_scale_data = nullptr;
  const float* b_scale_data = nullptr;
  int64_t b_scale_batch_stride = 0;  // floats
  // D: kFp8 writes F32 / F16 / BF16 (α and a bias of D's 16-bit type applied by cuBLASLt);
  // kInt8 writes int32 (kI32); kFloat F32.
  void* d = nullptr;
  DType d_type = DType::kF32;
  float alpha = 1.0f;
  // kFp8 into F16 / BF16 only: cuBLASLt's BIAS epilogue adds `bias` ([n] of d_type). The flag
  // is part of the product's shape (RouteGemm sets it and asks about it); the pointer is the
  // caller's to fill.
  bool has_bias = false;
  const void* bias = nullptr;
};

// The product's dimensions and element types for `plan`: one B folds the batch into the rows;
// a batched B runs a product per batch. Pointers are the caller's to fill.
LtProduct ProductShape(const GemmDims& dims, const GemmSpec& spec, const GemmPathPlan& plan);

class LtEngine;

// How a GEMM runs: its path (PlanGemmPath, or kFloat where cuBLASLt has no algorithm for the
// tensor-core form on this GPU), where its scales apply, and whether cuBLASLt writes the
// output itself.
struct GemmRoute {
  GemmPathPlan plan;
  // The product multiplies the codes alone and the epilogue applies the per-tensor / per-row
  // scales: INT8 always; FP8 with per-row scales into F32 (OUTER_VEC_32F writes 16-bit types
  // only) or at few rows (kFewRows: there OUTER_VEC_32F's kernels took up to 2x the plain
  // product's time, quantd_gemm_bench on the H200, PERFORMANCE.md).
  bool scales_in_epilogue = false;
  // cuBLASLt writes the output, applying α (and an FP8 bias of the output's 16-bit type); else
  // it writes F32 / int32 sums that the epilogue finishes (GemmEpilogue).
  bool direct = false;
  LtProduct product;  // shape, element types, cuBLASLt scale modes and D's type
};
inline constexpr int64_t kFewRows = 64;

// `bias`: the bias's dtype, kUnspecified for none. cuBLASLt adds a bias only of the output's
// 16-bit type; any other bias goes through the epilogue, exactly as given.
GemmRoute RouteGemm(const GemmDims& dims, const GemmSpec& spec, DType out, bool has_c, DType bias,
                    LtEngine& lt);

// cuBLASLt on one device: its handle and the algorithm chosen for each product shape. The
// first product of a shape asks the heuristic for its best candidates, times each on the
// call's own operands and keeps the fastest (with `autotune`; else the heuristic's first);
// later products of that shape reuse it. With a cache file, the choices persist across
// restarts (one line per shape, keyed by device and cuBLASLt version, checked with
// cublasLtMatmulAlgoCheck before use).
class LtEngine {
 public:
  virtual ~LtEngine() = default;
  // Bytes of workspace Run wants (split-K reductions).
  virtual int64_t workspace_bytes() const = 0;
  // Whether cuBLASLt has an algorithm for `product` (kFp8's scale modes are not on every
  // GPU); false sends the call down the kFloat path.
  virtual bool Supports(const LtProduct& product) = 0;
  // Enqueues the product on `stream`.
  [[nodiscard]] virtual absl::Status Run(const LtProduct& product, void* workspace,
                                         cudaStream_t stream) = 0;
};
// `device` must be current.
absl::StatusOr<std::unique_ptr<LtEngine>> CreateLtEngine(int device, bool autotune,
                                                         const std::string& cache_path);

// --- gemm_kernels.cu ---

// out[r, n] = RN_out(α · (acc[r, n] · s_row · s_col) + β · C + bias), in fp32 in that order:
// acc is the product's F32 or int32 sums [rows, n]; s_row = row_scales[r · row_stride] (null:
// 1; stride 0: a tensor's one scale), s_col = col_scales[batch · col_batch_stride + n ·
// col_stride]; C is [rows, n] when c_batched, else [m, n] for every batch (row r reads row
// r mod m); bias is [n]. C and bias in their own dtypes (null: absent).
struct GemmEpilogue {
  const void* acc = nullptr;
  bool acc_int32 = false;
  int64_t rows = 0, n = 0, m = 0;
  const float* row_scales = nullptr;
  int64_t row_stride = 0;
  const float* col_scales = nullptr;
  int64_t col_stride = 0;
  int64_t col_batch_stride = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
  const void* c = nullptr;
  DType c_dtype = DType::kF32;
  bool c_batched = false;
  const void* bias = nullptr;
  DType bias_dtype = DType::kF32;
  void* out = nullptr;
  DType out_dtype = DType::kF32;
  int max_blocks = 1024;
};
cudaError_t LaunchGemmEpilogue(const GemmEpilogue& e, cudaStream_t stream);

// NVFP4's element scales d_b = Nvfp4ElementScale(block_scales[i], *global_scale) (codec.h),
// i < n, from a quantization's s_b and S_enc: the scales dequantization multiplies codes by.
cudaError_t LaunchNvfp4ElementScales(const float* block_scales, int64_t n,
                                     const float* global_scale, float* element_scales,
                                     int max_blocks, cudaStream_t stream);

// n elements of F32 / F16 / BF16 from one dtype to another (RN).
cudaError_t LaunchConvert(const void* src, DType src_dtype, int64_t n, void* dst, DType dst_dtype,
                          int max_blocks, cudaStream_t stream);

// dst[0, n) = *scalar: a tensor's one scale as OUTER_VEC_32F's vector.
cudaError_t LaunchBroadcastScale(const float* scalar, int64_t n, float* dst, cudaStream_t stream);

// A row-major [rows, cols] scale matrix into dst[c · dst_col_stride + r · dst_row_stride]:
// A's 1 × 128 group scales to VEC128_32F's K-block-major layout (row stride 1, column stride
// rows), B's 128 × 128 block scales to BLK128x128_32F's rows padded to a multiple of 4.
cudaError_t LaunchRepackScales(const float* src, int64_t rows, int64_t cols, float* dst,
                               int64_t dst_row_stride, int64_t dst_col_stride, cudaStream_t stream);

// Error metrics of `out` (its dtype) against `exact` (fp32), n elements: per-block partials,
// then their total in partials[kMaxMetricBlocks] (MetricsFromPartial reads it).
cudaError_t LaunchCompareMetrics(const float* exact, const void* out, DType out_dtype, int64_t n,
                                 MetricPartial* partials, int max_blocks, cudaStream_t stream);

}  // namespace quantd::cuda

#endif  // QUANTD_KERNELS_CUDA_GEMM_PATH_H_
