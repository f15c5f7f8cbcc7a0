// Error propagation helpers for quantd.
//
// Everything above the kernel line returns absl::Status / absl::StatusOr. Our Abseil
// (20220623) predates ABSL_RETURN_IF_ERROR, so these macros have the same shape:
//
//   QUANTD_RETURN_IF_ERROR(ValidateShape(shape));
//   QUANTD_ASSIGN_OR_RETURN(QuantLayout layout, ComputeLayout(shape, spec));
#ifndef QUANTD_STATUS_H_
#define QUANTD_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QUANTD_STATUS_CONCAT_INNER_(a, b) a##b
#define QUANTD_STATUS_CONCAT_(a, b) QUANTD_STATUS_CONCAT_INNER_(a, b)

#define QUANTD_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status quantd_status_ = (expr);          \
    if (!quantd_status_.ok()) return quantd_status_; \
  } while (false)

#define QUANTD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return statusor.status();             \
  lhs = std::move(statusor).value()

#define QUANTD_ASSIGN_OR_RETURN(lhs, rexpr) \
  QUANTD_ASSIGN_OR_RETURN_IMPL_(QUANTD_STATUS_CONCAT_(quantd_statusor_, __LINE__), lhs, rexpr)

#endif  // QUANTD_STATUS_H_
