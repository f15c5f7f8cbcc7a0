// FlatQuant's Kronecker transform on the GPU (quantd/flatquant.h): two batched GEMMs in the
// contract's fp32 order,
//   T = X · P2    over every [n1, n2] row view at once: [rows · n1, n2] × [n2, n2]
//   Y_r = P1ᵀ · T_r  one [n1, n1] × [n1, n2] product per row r
// Each output entry belongs to one thread, which adds its products one at a time in ascending
// k order, tile after tile, from +0: the sum the CPU backend computes (the file is built
// without FMA contraction), so the two agree bit for bit.
#include <cuda_runtime.h>

#include <algorithm>

#include "device_common.cuh"

namespace quantd::cuda {
namespace {

// A 64 × 64 output tile per block of 256 threads, each thread 4 × 4 entries, k in steps of 16.
inline constexpr int kTile = 64;
inline constexpr int kTileK = 16;
inline constexpr int kPerThread = kTile / 16;

// X(m, l) = element m · n2 + l of the input; non-finite inputs are offered as the first bad
// index (FlatquantInputError), and NaN reads as 0 under nan_policy ZERO.
template <DType kDType>
struct InputRows {
  const void* input;
  int64_t n2;
  bool nan_to_zero;
  DeviceFlags* flags;
  __device__ float operator()(int64_t /*batch*/, int64_t m, int64_t l) const {
    const int64_t index = m * n2 + l;
    const float v = Load<kDType>(input, index);
    if (IsFinite(v)) return v;
    if (v != v && nan_to_zero) return 0.0f;
    atomicMin(&flags->first_bad_input, static_cast<unsigned long long>(index));
    return v;
  }
};

// A matrix shared by every batch, row-major `side` × `side`, read as is or transposed.
template <bool kTransposed>
struct SquareMatrix {
  const float* values;
  int64_t side;
  __device__ float operator()(int64_t /*batch*/, int64_t r, int64_t c) const {
    return kTransposed ? values[c * side + r] : values[r * side + c];
  }
};

// T_b(k, j): the batch's [n1, n2] block of T.
struct RowBlocks {
  const float* values;
  int64_t n2;
  int64_t batch_stride;
  __device__ float operator()(int64_t batch, int64_t k, int64_t j) const {
    return values[batch * batch_stride + k * n2 + j];
  }
};

// C_b[m][n] = Σ_k A(b, m, k) · B(b, k, n), k ascending, into c + b · c_batch_stride (row-major
// [m, n]). Tiles are visited grid-stride, batch-major.
template <class A, class B>
__global__ void __launch_bounds__(256)
    OrderedGemmKernel(A a, B b, float* c, int64_t c_batch_stride, int64_t batches, int64_t m,
                      int64_t n, int64_t k_dim) {
  __shared__ float a_tile[kTileK][kTile];
  __shared__ float b_tile[kTileK][kTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m_tiles = (m + kTile - 1) / kTile, n_tiles = (n + kTile - 1) / kTile;
  const int64_t tiles = batches * m_tiles * n_tiles;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t batch = tile / (m_tiles * n_tiles);
    const int64_t m0 = (tile / n_tiles) % m_tiles * kTile, n0 = tile % n_tiles * kTile;
    float sum[kPerThread][kPerThread] = {};
    for (int64_t k0 = 0; k0 < k_dim; k0 += kTileK) {
      // 1024 entries of each operand's tile, 4 per thread; outside the matrix reads 0 (and
      // those products are never added: the k loop below stops at k_dim).
      for (int e = threadIdx.x; e < kTileK * kTile; e += blockDim.x) {
        const int kk = e / kTile, mm = e % kTile;
        const int64_t k = k0 + kk;
        a_tile[kk][mm] = (m0 + mm < m && k < k_dim) ? a(batch, m0 + mm, k) : 0.0f;
        b_tile[kk][mm] = (n0 + mm < n && k < k_dim) ? b(batch, k, n0 + mm) : 0.0f;
      }
      __syncthreads();
      const int k_count = k_dim - k0 < kTileK ? static_cast<int>(k_dim - k0) : kTileK;
      for (int kk = 0; kk < k_count; ++kk) {
        for (int i = 0; i < kPerThread; ++i) {
          const float av = a_tile[kk][ty + 16 * i];
          for (int j = 0; j < kPerThread; ++j) {
            const float product = av * b_tile[kk][tx + 16 * j];
            sum[i][j] = sum[i][j] + product;
          }
        }
      }
      __syncthreads();
    }
    float* out = c + batch * c_batch_stride;
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t row = m0 + ty + 16 * i;
      if (row >= m) continue;
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t col = n0 + tx + 16 * j;
        if (col < n) out[row * n + col] = sum[i][j];
      }
    }
  }
}

template <class A, class B>
cudaError_t LaunchOrderedGemm(const A& a, const B& b, float* c, int64_t c_batch_stride,
                              int64_t batches, int64_t m, int64_t n, int64_t k_dim, int max_blocks,
                              cudaStream_t stream) {
  const int64_t tiles = batches * ((m + kTile - 1) / kTile) * ((n + kTile - 1) / kTile);
  const int grid = static_cast<int>(std::min<int64_t>(std::max<int64_t>(tiles, 1), max_blocks));
  OrderedGemmKernel<<<grid, kThreads, 0, stream>>>(a, b, c, c_batch_stride, batches, m, n, k_dim);
  return cudaGetLastError();
}

template <DType kDType>
cudaError_t LaunchTransform(const FlatquantTransform& t, cudaStream_t stream) {
  const int64_t hidden = t.n1 * t.n2;
  const InputRows<kDType> x{t.input, t.n2, t.nan_to_zero, t.flags};
  cudaError_t error =
      LaunchOrderedGemm(x, SquareMatrix<false>{t.right, t.n2}, t.scratch, /*c_batch_stride=*/0,
                        /*batches=*/1, t.rows * t.n1, t.n2, t.n2, t.max_blocks, stream);
  if (error != cudaSuccess) return error;
  return LaunchOrderedGemm(SquareMatrix<true>{t.left, t.n1}, RowBlocks{t.scratch, t.n2, hidden},
                           t.output, hidden, t.rows, t.n1, t.n2, t.n1, t.max_blocks, stream);
}

}  // namespace

cudaError_t LaunchFlatquantTransform(const FlatquantTransform& t, cudaStream_t stream) {
  if (t.rows == 0 || t.n1 == 0 || t.n2 == 0) return cudaSuccess;
  switch (t.input_dtype) {
    case DType::kF16:
      return LaunchTransform<DType::kF16>(t, stream);
    case DType::kBF16:
      return LaunchTransform<DType::kBF16>(t, stream);
    default:
      return LaunchTransform<DType::kF32>(t, stream);
  }
}

}  // namespace quantd::cuda
