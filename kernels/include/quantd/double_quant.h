// NF4's optional double quantization (bitsandbytes' compress_statistics): the per-block absmax
// values are themselves quantized to 8 bits, blockwise in blocks of 256 with bitsandbytes'
// signed dynamic map, after subtracting their mean (FORMATS.md "Block formats": "optional
// double quantization of absmax (8-bit blockwise, block 256, offset = mean)").
//
//   DoubleQuantized dq = DoubleQuantize(absmax);            // what travels beside the NF4 codes
//   std::vector<float> used = DoubleDequantize(dq);         // the absmax values x̂ multiplies by
//
// The NF4 codes are computed with the exact absmax (bitsandbytes quantizes the statistics
// afterwards); dequantization, and so the error metrics, use DoubleDequantize's values.
#ifndef QUANTD_DOUBLE_QUANT_H_
#define QUANTD_DOUBLE_QUANT_H_

#include <cstdint>
#include <vector>

namespace quantd {

inline constexpr int64_t kDoubleQuantBlock = 256;

struct DoubleQuantized {
  std::vector<uint8_t> codes;  // one per absmax value: an index into the dynamic map
  std::vector<float> scales;   // per block of 256 codes: the max |absmax - offset|
  float offset = 0.0f;         // the mean of the absmax values
};

// Entry `code` of bitsandbytes' create_dynamic_map(signed=True) (256 sorted fp32 values,
// -0.99296874 to 1).
float DynamicMapValue(uint32_t code);

// The dynamic-map code of x: bitsandbytes' dQuantize<0> (a seven-step binary search from entry
// 127, then the nearer of the last probed entry and its neighbour by fp32 midpoints; a tie goes
// to the probed entry). NaN gives 0.
uint32_t DynamicMapCode(float x);

// offset = the mean of `absmax` (summed in fp64 in index order, rounded to fp32); c = fp32(absmax
// - offset); per block of 256, s = max |c| and code = DynamicMapCode(fp32(c · fp32(1 / s))).
DoubleQuantized DoubleQuantize(const std::vector<float>& absmax);

// fp32(fp32(DynamicMapValue(code) · s) + offset) for every code: the absmax values NF4
// dequantization multiplies by.
std::vector<float> DoubleDequantize(const DoubleQuantized& dq);

}  // namespace quantd

#endif  // QUANTD_DOUBLE_QUANT_H_
