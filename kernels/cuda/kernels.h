// Internal to the CUDA backend: the launchers of its kernels.
//
// Every launcher takes device pointers, sizes, a stream and caller-owned workspace, enqueues
// its kernels and returns the launch status. None allocates and none synchronizes: the
// backend (cuda_backend.cu) owns memory and streams. The per-element arithmetic is codec.h,
// shared with the CPU backend, which is what makes the two agree bit for bit.
//
//   ElementParams p = MakeElementParams(spec, layout, d_input, DType::kF32, max_blocks);
//   LaunchInitStats(stats, layout.geometry.num_scales, stream);
//   LaunchGroupStats(p, stats, stream);
//   LaunchScales(rule, clip, stats, n, d_scales, d_zero_points, stream);
//   LaunchQuantize(p, d_scales, d_zero_points, d_codes, /*output=*/nullptr, DType::kF32,
//                  partials, stats.flags, stream);
#ifndef QUANTD_KERNELS_CUDA_KERNELS_H_
#define QUANTD_KERNELS_CUDA_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "quantd/codec.h"
#include "quantd/metrics.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"

namespace quantd::cuda {

// What an element kernel needs to know, passed by value.
struct ElementParams {
  const void* input = nullptr;  // F32 / F16 / BF16, row-major [rows, cols]
  DType input_dtype = DType::kF32;
  ScaleGeometry geometry;
  ElementCodec codec;
  Packing packing = Packing::kBitstream;
  int64_t code_row_bytes = 0;
  bool stochastic = false;
  uint64_t seed = 0;
  bool reject_nan = false;
  // NVFP4 (kE4M3): E4M3 block scales under S_enc; an element scale of 0 is not lean, and the
  // lean kernels then take codec.h's QuantizeElementAs (codes 0).
  ScaleKind scale_kind = ScaleKind::kF32;
  // NF4 with double quantization: what x̂ multiplies by, per scale group (the codes still use
  // the exact scales); null otherwise. Only the generic and vector kernels take it.
  const float* dequant_scales = nullptr;
  int max_blocks = 1024;  // grid size cap (a few waves of the device's SMs)
};

ElementParams MakeElementParams(const QuantSpec& spec, const QuantLayout& layout, const void* input,
                                DType input_dtype, int max_blocks);

// Flags a launch raises for the host to turn into a Status after the stream synchronizes.
struct DeviceFlags {
  unsigned long long first_nan;    // flat index of the first NaN a NaN-rejecting pass saw
  long long bad_scale_group;       // a group whose asymmetric range overflowed fp32
  unsigned int tensor_amax_bits;   // NVFP4, two passes: the tensor's amax (TensorAmaxKernel)
  unsigned int global_scale_bits;  // NVFP4: S_enc as its bits, for the kernels after its own
  // FlatQuant: flat index of the first input its transform refuses (FlatquantInputError).
  unsigned long long first_bad_input;
};
inline constexpr unsigned long long kNoNan = ~0ull;
inline constexpr long long kNoBadGroup = -1;

// Per-group statistics as order-preserving int keys, so that atomics take min / max.
struct StatsBuffers {
  int32_t* min_keys = nullptr;  // num_scales of them
  int32_t* max_keys = nullptr;
  DeviceFlags* flags = nullptr;
};

// fp64 sums of one block of an element pass; FinalizeMetrics turns their total into metrics.
struct MetricPartial {
  double sum_x2;
  double sum_y2;
  double sum_xy;
  double sum_err2;
  double max_abs_err;
  unsigned long long count;
  unsigned long long nonfinite_count;
  unsigned long long nan_error;
};

// Upper bound of metric partials an element launch writes (its grid size).
inline constexpr int kMaxMetricBlocks = 4096;

// Workspace bytes of one quantization over `layout`: stats keys, flags and metric partials.
int64_t WorkspaceBytes(const QuantLayout& layout);

// Carves StatsBuffers and the metric partials (kMaxMetricBlocks + 1: the last is the total)
// out of `workspace`, which must hold WorkspaceBytes(layout).
void SplitWorkspace(void* workspace, const QuantLayout& layout, StatsBuffers* stats,
                    MetricPartial** partials);

// Sets every key to "no element yet" and clears the flags.
cudaError_t LaunchInitStats(const StatsBuffers& stats, int64_t num_scales, cudaStream_t stream);

// min / max per scale group over finite elements (-0 counted as +0); flags the first NaN
// when p.reject_nan.
cudaError_t LaunchGroupStats(const ElementParams& p, const StatsBuffers& stats,
                             cudaStream_t stream);

// scales[g] (and zero_points[g] when rule.asymmetric) from the statistics, via
// ScaleFromRange; flags a group whose asymmetric range overflows.
cudaError_t LaunchScales(const ScaleRule& rule, float clip, const StatsBuffers& stats,
                         int64_t num_scales, float* scales, int32_t* zero_points,
                         cudaStream_t stream);

// The MSE clip search of Calibrate (kMse), bit for bit the CPU backend's: for every group and
// each of the `steps` ratios in `ratios` (device memory), Σ (x - x̂)² in fp64 in the group's
// flat element order (RNE), into `errors` (MseSearchChunkGroups × steps doubles of workspace:
// groups are searched a chunk at a time); then per
// group the first ratio with the smallest error, its scale (and zero-point) and the ratio into
// `chosen_ratios`. `stats` must hold the groups' ranges (LaunchGroupStats); a group whose
// asymmetric range overflows is flagged.
int64_t MseSearchChunkGroups(int64_t num_scales, int steps);
cudaError_t LaunchMseSearch(const ElementParams& p, const ScaleRule& rule,
                            const StatsBuffers& stats, const float* ratios, int steps,
                            double* errors, float* scales, int32_t* zero_points,
                            float* chosen_ratios, cudaStream_t stream);

// The percentile calibration of Calibrate (kPercentile), bit for bit the CPU backend's: per
// group, numpy's linear percentile of the finite |x| (asymmetric: of x at `percentile` and at
// 100 - `percentile`), then the scale (and zero-point) of that range times `clip`, via
// ScaleFromRange; a group whose asymmetric range overflows is flagged. `workspace` must hold
// PercentileWorkspaceBytes(num_scales) (groups are selected a chunk at a time).
int64_t PercentileWorkspaceBytes(int64_t num_scales);
cudaError_t LaunchPercentileScales(const ElementParams& p, const ScaleRule& rule, float clip,
                                   double percentile, void* workspace, float* scales,
                                   int32_t* zero_points, DeviceFlags* flags, cudaStream_t stream);

// NVFP4's second level of scales, in device memory: the element scales d_b, one per block,
// and the tensor's global scale S_enc.
struct GlobalScaleBuffers {
  float* element_scales = nullptr;
  float* global_scale = nullptr;
};

// NVFP4 scales from the block statistics (LaunchGroupStats): the tensor's amax and S_enc (or
// `static_global_scale` as S_enc when it is not 0), then per block the E4M3 block scale's
// value into `scales` and d_b into `nvfp4.element_scales`.
cudaError_t LaunchNvfp4Scales(const StatsBuffers& stats, int64_t num_scales, float* scales,
                              const GlobalScaleBuffers& nvfp4, float static_global_scale,
                              cudaStream_t stream);

// The element pass: quantizes every element with its group's scale. Writes packed codes when
// `codes` is set, x̂ in `output_dtype` when `output` is set, and per-block metric partials
// (then their total into partials[kMaxMetricBlocks]) when `partials` is set.
cudaError_t LaunchQuantize(const ElementParams& p, const float* scales, const int32_t* zero_points,
                           uint8_t* codes, void* output, DType output_dtype,
                           MetricPartial* partials, DeviceFlags* flags, cudaStream_t stream);

// A whole quantization pass over device-resident input, as Backend::Quantize (codes) or
// QuantDequant (output) needs it: unless `scales_ready` (static scales, or 1 for a plain cast,
// already in `scales`), the statistics and scales first, then the element pass. Dynamic
// quantization runs as one fused pass (statistics, scales and codes from registers) where a
// kernel for it applies; NVFP4 ignores `scales_ready` and takes one pass with
// spec.static_global_scale, two without. `stats` must have been initialized by
// LaunchInitStats. `nvfp4` is NVFP4's second level (else empty).
cudaError_t LaunchQuantizePass(const ElementParams& p, const QuantSpec& spec, bool scales_ready,
                               const StatsBuffers& stats, float* scales, int32_t* zero_points,
                               const GlobalScaleBuffers& nvfp4, uint8_t* codes, void* output,
                               DType output_dtype, MetricPartial* partials, cudaStream_t stream);

// x̂ = s · decode(code) for every element, into `output` (F32 / F16 / BF16).
cudaError_t LaunchDequantize(const ElementParams& p, const uint8_t* codes, const float* scales,
                             const int32_t* zero_points, void* output, DType output_dtype,
                             cudaStream_t stream);

// FlatQuant's transform (flatquant_kernels.cu): `rows` rows of n1 · n2 input elements into
// their transforms Y = P1ᵀ · (X · P2) (quantd/flatquant.h's order, bit for bit the CPU's), F32
// in `output`; `scratch` (as large) holds X · P2. A non-finite input (NaN unless
// `nan_to_zero`, which reads it as 0) is offered to flags->first_bad_input.
struct FlatquantTransform {
  const void* input = nullptr;
  DType input_dtype = DType::kF32;
  int64_t rows = 0, n1 = 0, n2 = 0;
  const float* left = nullptr;   // P1, n1 × n1 row-major
  const float* right = nullptr;  // P2, n2 × n2 row-major
  bool nan_to_zero = false;
  float* scratch = nullptr;
  float* output = nullptr;
  DeviceFlags* flags = nullptr;
  int max_blocks = 1024;
};
cudaError_t LaunchFlatquantTransform(const FlatquantTransform& transform, cudaStream_t stream);

// Sums partials[0, blocks) in a fixed order into partials[kMaxMetricBlocks].
cudaError_t LaunchFinalizeMetrics(MetricPartial* partials, int blocks, cudaStream_t stream);

// Host side: the metrics from the total partial (copied back from partials[kMaxMetricBlocks]).
ErrorMetrics MetricsFromPartial(const MetricPartial& total);

// Order-preserving float <-> int keys: a < b as floats iff Key(a) < Key(b) as ints.
QUANTD_HD int32_t FloatKey(float f) {
  const int32_t bits = static_cast<int32_t>(FloatToBits(f));
  return bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
}
QUANTD_HD float KeyFloat(int32_t key) {
  return BitsToFloat(static_cast<uint32_t>(key >= 0 ? key : key ^ 0x7FFFFFFF));
}

}  // namespace quantd::cuda

#endif  // QUANTD_KERNELS_CUDA_KERNELS_H_
