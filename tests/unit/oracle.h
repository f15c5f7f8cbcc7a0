// An independent implementation of FORMATS.md, written from the document alone, that the
// quantd_unit_test binary compares the CPU backend against.
//
// It is deliberately naive: scalar, single-threaded, no shared code with kernels/ beyond the
// public input types (QuantSpec, Format, Shape). Where kernels/ computes a minifloat code from
// the binade's quantum, the oracle enumerates every finite value of the format and picks the
// nearest; where kernels/ maps elements to scale groups through ScaleGeometry, the oracle walks
// multi-indices. Compiled with -ffp-contract=off so that every fp32 formula is evaluated
// operation by operation, as FORMATS.md "Arithmetic" demands.
//
//   oracle::Result r = oracle::Quantize(values, shape, requested_spec);
//   if (r.status.ok()) { r.packed_codes, r.scales, r.zero_points, r.x_hat, r.metrics ... }
//
// The choices FORMATS.md leaves open follow the ones kernels/ documents (amax over finite
// elements only, NaN keeps its sign, ...): see oracle.cc for each one, next to the code.
#ifndef QUANTD_TESTS_UNIT_ORACLE_H_
#define QUANTD_TESTS_UNIT_ORACLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "quantd/backend.h"
#include "quantd/spec.h"
#include "quantd/tensor.h"

namespace quantd::oracle {

// ---- Minifloats: sign, E exponent bits, M mantissa bits, bias. ----

enum class Specials {
  kFiniteOnly,  // every code is a number (E3M2, E2M1, ...)
  kNanAllOnes,  // only S.1..1.1..1 is NaN, no Inf (OCP E4M3 "fn")
  kIeee,        // all-ones exponent: mantissa 0 = Inf, else NaN (E5M2, F16, BF16)
};

struct Minifloat {
  int exp_bits = 0;
  int man_bits = 0;
  int bias = 0;
  Specials specials = Specials::kFiniteOnly;
};

inline constexpr Minifloat kE4M3{4, 3, 7, Specials::kNanAllOnes};
inline constexpr Minifloat kE5M2{5, 2, 15, Specials::kIeee};
inline constexpr Minifloat kE3M2{3, 2, 3, Specials::kFiniteOnly};
inline constexpr Minifloat kE2M3{2, 3, 1, Specials::kFiniteOnly};
inline constexpr Minifloat kE2M1{2, 1, 1, Specials::kFiniteOnly};
inline constexpr Minifloat kF16{5, 10, 15, Specials::kIeee};
inline constexpr Minifloat kBF16{8, 7, 127, Specials::kIeee};

// Value of a code (sign bit = 1 << (E + M)); NaN codes give NaN, Inf codes ±Inf. Exact.
double MinifloatValue(const Minifloat& f, uint32_t code);
// Every finite non-negative value in code order (= value order): element c is code c.
const std::vector<double>& FiniteMagnitudes(const Minifloat& f);
double MaxFinite(const Minifloat& f);
uint32_t MaxFiniteCode(const Minifloat& f);
// The quiet NaN magnitude code (S.1111.111 for E4M3, S.11111.10 for E5M2); 0 if none.
uint32_t NanCode(const Minifloat& f);
uint32_t InfCode(const Minifloat& f);  // 0 if none

// The code of fp32 `v` by nearest-value search over FiniteMagnitudes: RNE ties go to the even
// code, NEAREST_AWAY ties go up, STOCHASTIC goes up iff (random_bits >> 8)·2^-24 is below the
// fraction of the way from the lower to the upper neighbour. Results beyond the max finite
// value overflow: SATURATE gives ±max, NONFINITE ±Inf (or NaN for E4M3). NaN keeps its sign.
uint32_t EncodeMinifloat(const Minifloat& f, float v, Rounding rounding, uint32_t random_bits,
                         Overflow overflow);

// ---- HiF8 (FORMATS.md "Block formats": tapered, with a prefix "dot" field). ----
// Value of a code from its fields (NaN 0x80, ±Inf 0x6F / 0xEF). Exact.
double Hif8Value(uint32_t code);
// "ties away from zero (equivalently: the nearest entry of the 256-code value table, ties
// away). SATURATE maps every |x| > 32768 to ±32768; NONFINITE maps |x| ≥ 40960 ... to ±Inf."
uint32_t EncodeHif8(float v, Overflow overflow);

// ---- NF4 (bitsandbytes). ----
// The 16 values, code order.
const std::vector<float>& Nf4Values();
// "code = index of the nearest of the 16 NF4 values by bitsandbytes' decision tree (strict >
// on midpoints)": the number of (fp32) midpoints that n exceeds.
uint32_t EncodeNf4(float n);

// ---- Conversions of the input / output dtypes, through the same engine. ----
float HalfBitsToFloat(uint16_t h);
uint16_t FloatToHalfBits(float v);
float BF16BitsToFloat(uint16_t h);
uint16_t FloatToBF16Bits(float v);
// Bytes of `values` stored as F32/F16/BF16, and back.
std::vector<uint8_t> ToBytes(const std::vector<float>& values, DType dtype);
std::vector<float> FromBytes(const std::vector<uint8_t>& bytes, DType dtype);
// What storing `v` as `dtype` and loading it again gives.
float RoundTrip(float v, DType dtype);

// ---- Philox4x32-10 and the stochastic-rounding stream. ----
void Philox4x32_10(uint32_t ctr[4], uint32_t key0, uint32_t key1);
uint32_t RandomBits(uint64_t seed, uint64_t flat_index);

// ---- Integers. ----
// clamp(round(v) + zero_point, qmin, qmax), round acting on |v| with the sign put back.
int32_t QuantizeInt(float v, int32_t zero_point, int32_t qmin, int32_t qmax, Rounding rounding,
                    uint32_t random_bits);

// ---- Formats as FORMATS.md describes them. ----
struct FormatInfo {
  std::string name;
  bool is_int = false;
  int bits = 0;
  int qmin = 0, qmax = 0;  // integers
  Minifloat minifloat;     // minifloats
  double max_finite = 0;   // FORMATS.md table (minifloats)
  double min_subnormal = 0;
  float symmetric_divisor = 0;  // qmax of a symmetric scale
  bool symmetric_ok = false;
  bool asymmetric_ok = false;
  bool has_nan = false;
  bool has_inf = false;
  // MX (FORMATS.md "Block formats"): blocks of mx_block (0: not MX) along the last axis; the
  // element's emax, mantissa bits (EVEN rule) and largest value (RCEIL rule); MXINT8's implicit
  // 2^-6. The scale the oracle reports is what the elements are divided by: 2^X for the
  // minifloats, 2^(X-6) for MXINT8 ("int8 with implicit 2^-6"); its E8M0 code is X + 127.
  int mx_block = 0;
  int mx_emax = 0;
  int mx_mbits = 0;
  int mx_implicit_exponent = 0;
  double mx_max_element = 0;
  // NVFP4 ("E2M1 in blocks of 16, block scale E4M3, plus a per-tensor F32 global scale"):
  // the scale the oracle reports is the E4M3 block scale's value, decode(s_b).
  int nvfp4_block = 0;
  bool hif8 = false;  // HiF8 elements (Hif8Value / EncodeHif8), `minifloat` unused
  // NF4: "blocks of 64 (32..4096) over the flattened tensor, F32 absmax per block"; codes are
  // indices into Nf4Values().
  int nf4_block = 0;
  // FlatQuant int4: "per-token transform X → P1ᵀ·X·P2 on the [n1, n2] view of each row", then
  // per-token symmetric INT4 (the int4 row above).
  bool flatquant = false;
  // The block size of a block format (MX or NVFP4), 0 for free-scale formats.
  int block() const {
    return mx_block > 0 ? mx_block : (nvfp4_block > 0 ? nvfp4_block : nf4_block);
  }
};
// Null when the oracle has not been taught `format` yet.
const FormatInfo* FindFormat(Format format);
// A minifloat, HiF8 or NF4 format's finite non-negative element values in order (HiF8: those
// up to 8, where a scaled amax lands).
std::vector<double> ElementMagnitudes(const FormatInfo& info);

// ---- Whole tensors. ----
struct Metrics {
  double mse = 0, rmse = 0, max_abs_err = 0, sqnr_db = 0, cosine = 0, rel_fro_err = 0;
  int64_t count = 0, nonfinite_count = 0;
};
Metrics ComputeMetrics(const std::vector<float>& x, const std::vector<float>& x_hat);

// The requested spec with FORMATS.md's defaults filled in and its rules checked; an error
// (always InvalidArgument) when the oracle thinks the spec must be refused.
struct Resolved {
  const FormatInfo* info = nullptr;
  Format format = Format::kUnspecified;
  Granularity granularity = Granularity::kTensor;
  int axis = 0;  // normalized, >= 0
  int64_t group = 0, block_rows = 0, block_cols = 0;
  bool asymmetric = false;
  Rounding rounding = Rounding::kNearestEven;
  uint64_t seed = 0;
  Overflow overflow = Overflow::kSaturate;
  float clip = 1.0f;
  NanPolicy nan_policy = NanPolicy::kReject;
  Packing packing = Packing::kBitstream;
  ScaleRounding scale_rounding = ScaleRounding::kUnspecified;  // MX: FLOOR, RCEIL or EVEN
  std::vector<float> transform_left, transform_right;          // FlatQuant: P1, P2 (row-major)
  int64_t n1 = 0, n2 = 0;
  std::vector<float> static_scales;
  std::vector<int32_t> static_zero_points;
};
absl::Status Resolve(const QuantSpec& requested, const Shape& shape, Resolved* out);

// Scale shape and the scale group of every element (flat row-major index).
struct Grouping {
  Shape scale_shape;
  int64_t num_scales = 0;
  int64_t rows = 0, cols = 0;  // the [rows, cols] view
  std::vector<int64_t> group_of;
};
Grouping GroupElements(const Resolved& spec, const Shape& shape);

struct Result {
  absl::Status status;  // InvalidArgument for a refused spec or a refused NaN
  Resolved spec;
  Grouping grouping;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;  // asymmetric only
  float global_scale = 0.0f;         // NVFP4's S_enc
  std::vector<uint32_t> codes;       // one native code per element, unpacked
  std::vector<uint8_t> packed_codes;
  std::vector<float> x_hat;
  Metrics metrics;
};
// FlatQuant's get_decompose_dim(n).
std::pair<int64_t, int64_t> GetDecomposeDim(int64_t n);
// FlatQuant's transform of every row of `x` (the [rows, cols] view), in the order
// kernels/include/quantd/flatquant.h fixes: X · P2 first, then P1ᵀ ·, each entry an fp32 sum
// from +0 in ascending index order.
std::vector<float> FlatquantTransform(const std::vector<float>& x, int64_t rows,
                                      const Resolved& spec);

// `x` holds the fp32 values of the input (already converted from its dtype).
Result Quantize(const std::vector<float>& x, const Shape& shape, const QuantSpec& requested);

// Per-group scale (and zero point) from the group's finite values and a clip ratio (for MX
// formats: the power of two of `mx_rule`). False when an asymmetric range max - min overflows
// fp32.
bool ScaleOf(const FormatInfo& info, bool asymmetric, float clip, const std::vector<float>& group,
             float* scale, int32_t* zero_point, ScaleRounding mx_rule = ScaleRounding::kFloor);

// Packs / unpacks native codes row by row.
std::vector<uint8_t> Pack(const std::vector<uint32_t>& codes, int64_t rows, int64_t cols, int bits,
                          Packing packing);
std::vector<uint32_t> Unpack(const std::vector<uint8_t>& packed, int64_t rows, int64_t cols,
                             int bits, Packing packing);
int64_t PackedRowBytes(int64_t cols, int bits, Packing packing);

// x̂ of one code.
float DequantizeCode(const FormatInfo& info, uint32_t code, float scale, int32_t zero_point);
// x̂ of a whole packed tensor (`global_scale`: NVFP4's S_enc).
std::vector<float> Dequantize(const std::vector<uint8_t>& packed, const std::vector<float>& scales,
                              const std::vector<int32_t>& zero_points, const Shape& shape,
                              const Resolved& spec, float global_scale = 0.0f);

// numpy.percentile(values, q) with the default 'linear' method, in fp64.
double NumpyPercentile(std::vector<double> values, double q);

// Calibration by brute force. kAmax: the dynamic scales; kPercentile: the percentile of |x|
// (or of x for max and min) replaces the amax / max / min; kMse: every ratio of the grid is
// tried and the one with the smallest Σ(x - x̂)² over the group's finite values wins, ties to
// the larger ratio. Candidates are scored under RNE whatever the spec's rounding.
struct Calibration {
  absl::Status status;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  std::vector<float> amax;
  std::vector<float> clip_ratios;
  std::vector<double> mse_of_choice;  // kMse: Σ(x - x̂)² of the chosen ratio, per group
};
Calibration Calibrate(const std::vector<float>& x, const Shape& shape, const QuantSpec& requested,
                      const CalibrationOptions& options);
// The kMse grid: search_steps ratios from 1 down to search_min_ratio,
// r_k = fp32(1 - k·(1 - min) / (steps - 1)) in fp64.
std::vector<float> MseGrid(const CalibrationOptions& options);

}  // namespace quantd::oracle

#endif  // QUANTD_TESTS_UNIT_ORACLE_H_
