// Metrics: every Prometheus family quantd exports, registered once at start (prometheus-cpp).
//
// Names carry their unit (`_seconds`, `_bytes`, `_total`) and labels are low-cardinality and
// closed: method (the RPC name), format (a traits-table name, "unspecified" before a request's
// format is known), backend ("cpu" / "cuda"), code (a gRPC code name). No label value ever comes
// from client input, and every series is created up front, so the page has a fixed size and a
// scrape never sees a family appear late.
//
//   Metrics metrics(/*backend=*/"cpu", /*version=*/"0.1.0");
//   exposer.RegisterCollectable(metrics.registry());
//   metrics.ObserveRequest(Method::kQuantize, Format::kInt8, absl::StatusCode::kOk, 0.012);
//   metrics.ObserveSqnr(Format::kInt8, 38.5);
//
// Families (see metrics.cc for help texts and buckets):
//   quantd_request_duration_seconds{method,format,backend}   histogram, arrival to status
//   quantd_queue_wait_seconds{method,format,backend}         histogram, Submit to worker
//   quantd_compute_duration_seconds{method,format,backend}   histogram, on the worker
//   quantd_requests_total{method,code}                       counter
//   quantd_bytes_received_total{method}, quantd_bytes_sent_total{method}   counters
//   quantd_requests_in_flight                                gauge, RPCs started not finished
//   quantd_queue_depth                                       gauge, tasks waiting for a worker
//   quantd_inflight_bytes                                    gauge, tensor bytes of calls in flight
//   quantd_sqnr_db{format}                                   histogram, finite SQNRs only
//   quantd_build_info{version,backend}                       gauge, always 1
//
// Thread-safe: every method may be called from any thread.
#ifndef QUANTD_SERVER_METRICS_H_
#define QUANTD_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "quantd/backend.h"
#include "quantd/format.h"
#include "server/service_core.h"

namespace quantd::server {

// The RPCs of quantd.v1.Quantizer, as metric labels.
enum class Method : int {
  kQuantize = 0,
  kDequantize,
  kQuantDequant,
  kCalibrate,
  kGetCapabilities,
  kQuantizeStream,
  kDequantizeStream,
  kEcho,
  kGemm,
  kRegisterWeight,
  kListWeights,
  kDropWeight,
  kRegisterWeightStream,
};
inline constexpr int kNumMethods = 13;
absl::string_view MethodName(Method method);

inline constexpr int kNumStatusCodes = 17;  // gRPC codes 0 (OK) .. 16 (UNAUTHENTICATED)

class Metrics {
 public:
  Metrics(absl::string_view backend, absl::string_view version);

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // What an Exposer serves.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void ObserveRequest(Method method, Format format, absl::StatusCode code, double seconds);
  void ObserveQueueWait(Method method, Format format, double seconds);
  void ObserveCompute(Method method, Format format, double seconds);
  void AddBytesReceived(Method method, int64_t bytes);
  void AddBytesSent(Method method, int64_t bytes);
  void IncrementInFlight();
  void DecrementInFlight();
  void SetQueueDepth(int64_t depth);
  void SetInflightBytes(int64_t bytes);
  // Infinite (exact) and NaN values are skipped: a histogram cannot hold them usefully.
  void ObserveSqnr(Format format, double sqnr_db);

 private:
  using PerMethodFormat = std::array<std::array<prometheus::Histogram*, kNumFormats>, kNumMethods>;

  std::shared_ptr<prometheus::Registry> registry_;
  PerMethodFormat request_duration_{};
  PerMethodFormat queue_wait_{};
  PerMethodFormat compute_duration_{};
  std::array<std::array<prometheus::Counter*, kNumStatusCodes>, kNumMethods> requests_{};
  std::array<prometheus::Counter*, kNumMethods> bytes_received_{};
  std::array<prometheus::Counter*, kNumMethods> bytes_sent_{};
  prometheus::Gauge* in_flight_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* inflight_bytes_ = nullptr;
  std::array<prometheus::Histogram*, kNumFormats> sqnr_{};
};

// The per-device families, read from Backend::Telemetry() at each scrape: the backend keeps
// the counters, so nothing is copied between scrapes and a backend without devices (the CPU
// one) exports none of these. Device labels are the CUDA ordinals, fixed when the backend
// starts.
//   quantd_gpu_info{device,name}                            gauge, always 1
//   quantd_gpu_kernel_duration_seconds{device}              histogram, the kernels of one call
//   quantd_gpu_copy_bytes_total{device,direction}           counter, direction h2d / d2h
//   quantd_gpu_copy_seconds_total{device,direction}         counter, time of the copy phases
//   quantd_gpu_streams{device}, quantd_gpu_streams_busy{device}      gauges, the stream pool
//   quantd_gpu_memory_cap_bytes{device}                     gauge, what calls may reserve
//   quantd_gpu_memory_in_use_bytes{device}                  gauge, reserved by calls in flight
//   quantd_gpu_memory_pool_bytes{device}                    gauge, held by the memory pool
class DeviceCollector final : public prometheus::Collectable {
 public:
  // `backend` must outlive the collector and every Exposer it is registered with.
  explicit DeviceCollector(const Backend* backend) : backend_(backend) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Backend* backend_;
};

// The registered weights (server/weights.h), read from the core at each scrape:
//   quantd_registered_weights                 gauge, weights registered
//   quantd_registered_weight_bytes            gauge, memory they hold (dropped ones still in
//                                             use by a GEMM included)
//   quantd_registered_weight_cap_bytes        gauge, --max-weight-bytes
class WeightCollector final : public prometheus::Collectable {
 public:
  // `core` must outlive the collector and every Exposer it is registered with.
  explicit WeightCollector(const QuantizerCore* core) : core_(core) {}

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const QuantizerCore* core_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_METRICS_H_
