// Internal to the CPU backend: static-scale calibration (amax, percentile, MSE clip search).
#ifndef QUANTD_KERNELS_REFERENCE_CALIBRATE_H_
#define QUANTD_KERNELS_REFERENCE_CALIBRATE_H_

#include "absl/status/status.h"
#include "quantd/backend.h"

namespace quantd::reference {

// `layout` is ComputeLayout(spec, input.shape) for a checked input.
absl::Status Calibrate(Executor* executor, const TensorView& input, const QuantSpec& spec,
                       const QuantLayout& layout, const CalibrationOptions& options,
                       CalibrationResult* result);

}  // namespace quantd::reference

#endif  // QUANTD_KERNELS_REFERENCE_CALIBRATE_H_
