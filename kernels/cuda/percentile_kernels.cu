// Percentile calibration on the GPU, bit for bit the CPU backend's (reference/calibrate.cc):
// numpy's default ("linear") percentile of each scale group's finite values, |x| for symmetric
// specs, x at p and 100 - p for asymmetric ones.
//
// numpy's percentile is two order statistics, a[f] and a[f + 1] of the sorted values, mixed in
// fp64. An order statistic is exact whatever the summation order, so the GPU finds the same two
// values the CPU's nth_element does, by radix selection on order-preserving 32-bit keys: four
// passes of 8 bits, most significant first. Each pass histograms, per group and per wanted rank,
// the keys that match the bits chosen so far; a short step then picks the bucket holding the
// rank. Up to four ranks ride along in the same passes (f and f + 1 for p and for 100 - p), so
// the data is read four times whatever is asked.
//
// Blocks take (group, slice) pairs, so one huge group (a per-tensor scale) spreads over the whole
// device and many small ones (per-token) share it. Slice histograms are merged with 64-bit global
// atomics; groups are processed a chunk at a time, which bounds the workspace.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "device_common.cuh"
#include "kernels.h"
#include "quantd/codec.h"

namespace quantd::cuda {
namespace {

constexpr int kRanks = 4;  // f(p), f(p) + 1, f(q), f(q) + 1 with q = 100 - p
constexpr int kBins = 256;
constexpr int kSliceElements = 16 * 1024;
constexpr int64_t kWorkspaceTarget = int64_t{64} << 20;

// Everything one chunk of groups keeps between passes.
struct SelectState {
  unsigned long long* histograms;  // [groups][kRanks][kBins]
  uint32_t* prefixes;              // [groups][kRanks]: the key bits chosen so far
  unsigned long long* remaining;   // [groups][kRanks]: the rank within the chosen bucket
  unsigned long long* counts;      // [groups]: finite elements
};

int64_t StateBytesPerGroup() { return kRanks * kBins * 8 + kRanks * 4 + kRanks * 8 + 8; }

SelectState CarveState(void* workspace, int64_t groups) {
  auto* bytes = static_cast<unsigned char*>(workspace);
  SelectState state;
  state.histograms = reinterpret_cast<unsigned long long*>(bytes);
  bytes += groups * kRanks * kBins * 8;
  state.remaining = reinterpret_cast<unsigned long long*>(bytes);
  bytes += groups * kRanks * 8;
  state.counts = reinterpret_cast<unsigned long long*>(bytes);
  bytes += groups * 8;
  state.prefixes = reinterpret_cast<uint32_t*>(bytes);
  return state;
}

// Keys in which unsigned order is the order of the values. |x|: its bits. x: sign-flipped
// bits, -0 first made +0 (nth_element treats them as equal; either one gives the same scale).
__device__ __forceinline__ uint32_t SelectKey(float v, bool absolute) {
  const uint32_t bits = FloatToBits(v + 0.0f);
  if (absolute) return bits & 0x7FFFFFFFu;
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ float KeyValue(uint32_t key, bool absolute) {
  if (absolute) return BitsToFloat(key);
  return BitsToFloat((key & 0x80000000u) ? key & 0x7FFFFFFFu : ~key);
}

__host__ __device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// How many elements scale group g has, and the flat index of its i-th one (any order would do:
// selection does not depend on it; this one keeps a warp's loads contiguous where it can).
// Group 0 is the largest of every geometry (only the last group of a row or band is ragged):
// slices per group are sized by it on the host.
__host__ __device__ int64_t GroupSize(const ScaleGeometry& geo, int64_t g) {
  switch (geo.granularity) {
    case Granularity::kToken:
      return geo.cols;
    case Granularity::kGroup:
    case Granularity::kBlock: {
      const int64_t c0 = (g % geo.groups_per_row) * geo.group_cols;
      const int64_t width = Min64(geo.group_cols, geo.cols - c0);
      if (geo.granularity == Granularity::kGroup) return width;
      const int64_t r0 = (g / geo.groups_per_row) * geo.group_rows;
      return (Min64(geo.rows, r0 + geo.group_rows) - r0) * width;
    }
    case Granularity::kChannel:
      return geo.channel_is_last ? geo.rows : geo.rows / geo.channels * geo.cols;
    default:  // kTensor
      return geo.rows * geo.cols;
  }
}

__device__ int64_t GroupElement(const ScaleGeometry& geo, int64_t g, int64_t i) {
  switch (geo.granularity) {
    case Granularity::kToken:
      return g * geo.cols + i;
    case Granularity::kGroup:
    case Granularity::kBlock: {
      const int64_t band = g / geo.groups_per_row;
      const int64_t c0 = (g % geo.groups_per_row) * geo.group_cols;
      if (geo.granularity == Granularity::kGroup) return band * geo.cols + c0 + i;
      const int64_t width = Min64(geo.group_cols, geo.cols - c0);
      return (band * geo.group_rows + i / width) * geo.cols + c0 + i % width;
    }
    case Granularity::kChannel: {
      if (geo.channel_is_last) return i * geo.cols + g;
      // Channel g owns every `channels`-th run of rows_per_channel rows.
      const int64_t run_elements = geo.rows_per_channel * geo.cols;
      return ((i / run_elements) * geo.channels + g) * run_elements + i % run_elements;
    }
    default:  // kTensor
      return i;
  }
}

// One pass: block (k, slice) histograms byte `shift / 8` of the keys of group first_group + k
// that match each rank's prefix (on the first pass, shift 24, every finite key), then adds its
// counts to the chunk's histograms.
__global__ void HistogramKernel(ElementParams p, bool absolute, int64_t first_group, int64_t slices,
                                int shift, SelectState state) {
  __shared__ unsigned int bins[kRanks][kBins];
  for (int b = threadIdx.x; b < kRanks * kBins; b += blockDim.x) (&bins[0][0])[b] = 0;
  const int64_t k = blockIdx.x / slices;
  const int64_t g = first_group + k;
  const int64_t size = GroupSize(p.geometry, g);
  const int64_t begin = (blockIdx.x % slices) * kSliceElements;
  const int64_t end = Min64(size, begin + kSliceElements);
  const bool first_pass = shift == 24;
  uint32_t prefix[kRanks];
  const uint32_t mask = first_pass ? 0u : ~0u << (shift + 8);
  for (int r = 0; r < kRanks; ++r) prefix[r] = first_pass ? 0u : state.prefixes[k * kRanks + r];
  // Ranks that share a prefix (f and f + 1, mostly) share the count: the first one holds it.
  bool owner[kRanks];
  for (int r = 0; r < kRanks; ++r) {
    owner[r] = true;
    for (int q = 0; q < r; ++q) owner[r] &= prefix[q] != prefix[r];
  }
  __syncthreads();
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = LoadAsFloat(p.input_dtype, p.input, GroupElement(p.geometry, g, i));
    if (!IsFinite(v)) continue;
    const uint32_t key = SelectKey(v, absolute);
    const unsigned bin = (key >> shift) & (kBins - 1);
    if (first_pass) {
      // All ranks share the first histogram. (Aggregating a warp's equal bins with
      // __match_any_sync first made the pass slower on the H200: 13.2 -> 16.3 ms at 1 Gi.)
      atomicAdd(&bins[0][bin], 1u);
      continue;
    }
    for (int r = 0; r < kRanks; ++r) {
      if (owner[r] && (key & mask) == prefix[r]) atomicAdd(&bins[r][bin], 1u);
    }
  }
  __syncthreads();
  unsigned long long* out = state.histograms + k * kRanks * kBins;
  for (int b = threadIdx.x; b < kRanks * kBins; b += blockDim.x) {
    const unsigned int c = (&bins[0][0])[b];
    if (c != 0) atomicAdd(&out[b], static_cast<unsigned long long>(c));
  }
}

// numpy's k = p/100 · (n - 1) and its floor (fmad is off for this file: no contraction).
__device__ __forceinline__ void PercentilePosition(double percentile, unsigned long long n,
                                                   int64_t* f, double* t) {
  const double k = percentile / 100.0 * static_cast<double>(n - 1);
  *f = static_cast<int64_t>(floor(k));
  *t = k - static_cast<double>(*f);
}

// One warp per group, after a pass: for each rank, the bucket that holds it, which fixes
// 8 more bits of its key; then the warp clears the group's histograms for the next pass. After
// the first pass it also counts the group's finite elements and turns the percentiles into
// ranks. The ranks are visited in turn with every prefix read up front, so no rank's update
// is seen by another's lookup in the same step.
__global__ void SelectStepKernel(int64_t groups, int shift, double upper_percentile,
                                 double lower_percentile, SelectState state) {
  const int lane = threadIdx.x & 31;
  const int64_t k = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  if (k >= groups) return;
  const bool first_pass = shift == 24;
  unsigned long long* histograms = state.histograms + k * kRanks * kBins;
  uint32_t* prefixes = state.prefixes + k * kRanks;
  unsigned long long* remaining = state.remaining + k * kRanks;
  uint32_t old_prefix[kRanks];
  unsigned long long rank[kRanks];
  for (int r = 0; r < kRanks; ++r) {
    old_prefix[r] = first_pass ? 0u : prefixes[r];
    rank[r] = first_pass ? 0u : remaining[r];
  }
  constexpr int kLaneBins = kBins / 32;
  for (int r = 0; r < kRanks; ++r) {
    // The first pass counted every key in histogram 0; later, ranks that share a prefix with
    // an earlier rank were counted in the earliest one's histogram (HistogramKernel).
    int source = 0;
    while (old_prefix[source] != old_prefix[r]) ++source;
    const unsigned long long* hist = histograms + source * kBins;
    unsigned long long mine[kLaneBins];
    unsigned long long lane_total = 0;
    for (int j = 0; j < kLaneBins; ++j) {
      mine[j] = hist[lane * kLaneBins + j];
      lane_total += mine[j];
    }
    unsigned long long inclusive = lane_total;  // scan of the lanes' totals
    for (int offset = 1; offset < 32; offset <<= 1) {
      const unsigned long long other = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    if (first_pass) {
      const unsigned long long n = __shfl_sync(0xFFFFFFFFu, inclusive, 31);
      int64_t f = 0;
      double t = 0.0;
      if (n > 0) PercentilePosition(r < 2 ? upper_percentile : lower_percentile, n, &f, &t);
      // a[f + 1] past the end is never used (the percentile is a[f] then): select a[f].
      rank[r] = (r & 1) && f + 1 < static_cast<int64_t>(n) ? f + 1 : f;
      if (lane == 0) {
        if (r == 0) state.counts[k] = n;
        prefixes[r] = 0;  // what an empty group keeps
        remaining[r] = 0;
      }
      __syncwarp();
    }
    const unsigned long long before = inclusive - lane_total;
    if (rank[r] >= before && rank[r] < inclusive) {
      unsigned long long seen = before;
      int j = 0;
      while (seen + mine[j] <= rank[r]) seen += mine[j++];
      remaining[r] = rank[r] - seen;
      prefixes[r] = old_prefix[r] | static_cast<uint32_t>(lane * kLaneBins + j) << shift;
    }
  }
  __syncwarp();
  for (int w = lane; w < kRanks * kBins; w += 32) histograms[w] = 0;
}

// Zeroes histograms (once per launch: each step clears what it read).
__global__ void ClearKernel(unsigned long long* histograms, int64_t words) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words;
       i += stride) {
    histograms[i] = 0;
  }
}

// numpy's interpolation between the order statistics a[f] and a[f + 1], rounded to fp32; 0 for
// an empty group.
__device__ float Interpolate(double percentile, unsigned long long n, uint32_t key_f,
                             uint32_t key_f1, bool absolute) {
  if (n == 0) return 0.0f;
  int64_t f = 0;
  double t = 0.0;
  PercentilePosition(percentile, n, &f, &t);
  const double lo = KeyValue(key_f, absolute);
  if (t == 0.0 || f + 1 >= static_cast<int64_t>(n)) return static_cast<float>(lo);
  const double hi = KeyValue(key_f1, absolute);
  return static_cast<float>(lo + (hi - lo) * t);
}

// Per group: the range the percentiles give, then its scale and zero-point as on the CPU.
__global__ void PercentileScalesKernel(ScaleRule rule, float clip, bool asymmetric,
                                       double upper_percentile, double lower_percentile,
                                       int64_t first_group, int64_t groups, SelectState state,
                                       float* scales, int32_t* zero_points, DeviceFlags* flags) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < groups;
       k += stride) {
    const uint32_t* keys = state.prefixes + k * kRanks;
    const unsigned long long n = state.counts[k];
    const bool absolute = !asymmetric;
    const float upper = Interpolate(upper_percentile, n, keys[0], keys[1], absolute);
    const float lower =
        asymmetric ? Interpolate(lower_percentile, n, keys[2], keys[3], absolute) : -upper;
    // std::min / std::max exactly as the CPU writes them (which operand wins a tie of ±0).
    const float lo = upper < lower ? upper : lower;
    const float hi = lower < upper ? upper : lower;
    const int64_t g = first_group + k;
    float s = 1.0f;
    int32_t zp = 0;
    if (!ScaleFromRange(rule, lo, hi, clip, &s, &zp)) {
      atomicMax(&flags->bad_scale_group, static_cast<long long>(g));
      continue;
    }
    scales[g] = s;
    if (zero_points != nullptr) zero_points[g] = rule.asymmetric ? zp : 0;
  }
}

int64_t ChunkGroups(int64_t num_scales) {
  return std::max<int64_t>(1, std::min(num_scales, kWorkspaceTarget / StateBytesPerGroup()));
}

}  // namespace

int64_t PercentileWorkspaceBytes(int64_t num_scales) {
  return ChunkGroups(num_scales) * StateBytesPerGroup();
}

cudaError_t LaunchPercentileScales(const ElementParams& p, const ScaleRule& rule, float clip,
                                   double percentile, void* workspace, float* scales,
                                   int32_t* zero_points, DeviceFlags* flags, cudaStream_t stream) {
  const int64_t n = p.geometry.num_scales;
  if (n == 0) return cudaSuccess;
  const bool absolute = !rule.asymmetric;
  const double upper_percentile = percentile;
  const double lower_percentile = 100.0 - percentile;  // asymmetric only
  const int64_t chunk = ChunkGroups(n);
  const int64_t slices =
      std::max<int64_t>(1, (GroupSize(p.geometry, 0) + kSliceElements - 1) / kSliceElements);
  const SelectState state = CarveState(workspace, chunk);
  ClearKernel<<<GridFor(chunk * kRanks * kBins, p.max_blocks), kThreads, 0, stream>>>(
      state.histograms, chunk * kRanks * kBins);
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t groups = std::min(chunk, n - first);
    for (int shift = 24; shift >= 0; shift -= 8) {
      HistogramKernel<<<static_cast<unsigned>(groups * slices), kThreads, 0, stream>>>(
          p, absolute, first, slices, shift, state);
      SelectStepKernel<<<static_cast<unsigned>((groups * 32 + kThreads - 1) / kThreads), kThreads,
                         0, stream>>>(groups, shift, upper_percentile, lower_percentile, state);
    }
    PercentileScalesKernel<<<GridFor(groups, p.max_blocks), kThreads, 0, stream>>>(
        rule, clip, rule.asymmetric, upper_percentile, lower_percentile, first, groups, state,
        scales, zero_points, flags);
  }
  return cudaGetLastError();
}

}  // namespace quantd::cuda
