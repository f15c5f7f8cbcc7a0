#include "server/metrics.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "prometheus/family.h"
#include "prometheus/metric_family.h"
#include "server/convert.h"

namespace quantd::server {
namespace {

// Request latencies span a 64-byte GetCapabilities (sub-millisecond) to a multi-GB stream
// (tens of seconds): roughly 1-2.5-5 steps over that range.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
      0.25,   0.5,     1,      2.5,   5,      10,    30,   60,    120};
  return *buckets;
}

// SQNR in dB: 4-bit formats land around 10-25, 8-bit ones 30-50, near-lossless cases higher.
// 5 dB steps up to 100; +Inf collects the rest (exact results are skipped, not +Inf).
const prometheus::Histogram::BucketBoundaries& SqnrBuckets() {
  static const auto* buckets = [] {
    auto* b = new prometheus::Histogram::BucketBoundaries;
    for (int db = 0; db <= 100; db += 5) b->push_back(db);
    return b;
  }();
  return *buckets;
}

std::string FormatLabel(Format format) { return std::string(Traits(format).name); }

// GetCapabilities, Echo, ListWeights and DropWeight carry no tensor spec and never queue: their
// series exist for format "unspecified" only and have no queue-wait or compute histograms.
bool HasFormat(Method method) {
  return method != Method::kGetCapabilities && method != Method::kEcho &&
         method != Method::kListWeights && method != Method::kDropWeight;
}

}  // namespace

absl::string_view MethodName(Method method) {
  switch (method) {
    case Method::kQuantize:
      return "Quantize";
    case Method::kDequantize:
      return "Dequantize";
    case Method::kQuantDequant:
      return "QuantDequant";
    case Method::kCalibrate:
      return "Calibrate";
    case Method::kGetCapabilities:
      return "GetCapabilities";
    case Method::kQuantizeStream:
      return "QuantizeStream";
    case Method::kDequantizeStream:
      return "DequantizeStream";
    case Method::kEcho:
      return "Echo";
    case Method::kGemm:
      return "Gemm";
    case Method::kRegisterWeight:
      return "RegisterWeight";
    case Method::kListWeights:
      return "ListWeights";
    case Method::kDropWeight:
      return "DropWeight";
    case Method::kRegisterWeightStream:
      return "RegisterWeightStream";
  }
  return "unknown";
}

Metrics::Metrics(absl::string_view backend_name, absl::string_view version)
    : registry_(std::make_shared<prometheus::Registry>()) {
  const std::string backend(backend_name);
  auto& request_duration =
      prometheus::BuildHistogram()
          .Name("quantd_request_duration_seconds")
          .Help("Time from a request's arrival to its final status, by RPC, format and backend.")
          .Register(*registry_);
  auto& queue_wait = prometheus::BuildHistogram()
                         .Name("quantd_queue_wait_seconds")
                         .Help("Time a validated request waited in the bounded queue for a worker.")
                         .Register(*registry_);
  auto& compute_duration =
      prometheus::BuildHistogram()
          .Name("quantd_compute_duration_seconds")
          .Help("Time a worker spent computing a request on the backend (excluding the queue).")
          .Register(*registry_);
  auto& requests = prometheus::BuildCounter()
                       .Name("quantd_requests_total")
                       .Help("Finished requests by RPC and gRPC status code.")
                       .Register(*registry_);
  auto& bytes_received = prometheus::BuildCounter()
                             .Name("quantd_bytes_received_total")
                             .Help("Serialized request bytes received, by RPC.")
                             .Register(*registry_);
  auto& bytes_sent = prometheus::BuildCounter()
                         .Name("quantd_bytes_sent_total")
                         .Help("Serialized response bytes sent, by RPC.")
                         .Register(*registry_);
  auto& sqnr = prometheus::BuildHistogram()
                   .Name("quantd_sqnr_db")
                   .Help(
                       "Signal-to-quantization-noise ratio of quantized tensors in dB, by "
                       "format (exact results, SQNR +Inf, are not observed).")
                   .Register(*registry_);

  for (int m = 0; m < kNumMethods; ++m) {
    const auto method = static_cast<Method>(m);
    const std::string method_name(MethodName(method));
    for (int f = 0; f < kNumFormats; ++f) {
      const auto format = static_cast<Format>(f);
      // Every RPC with a format may fail before its format is known.
      if (!HasFormat(method) && format != Format::kUnspecified) continue;
      const prometheus::Labels labels{
          {"method", method_name}, {"format", FormatLabel(format)}, {"backend", backend}};
      request_duration_[m][f] = &request_duration.Add(labels, LatencyBuckets());
      // Only validated requests (format known) reach the queue.
      if (HasFormat(method) && format != Format::kUnspecified) {
        queue_wait_[m][f] = &queue_wait.Add(labels, LatencyBuckets());
        compute_duration_[m][f] = &compute_duration.Add(labels, LatencyBuckets());
      }
    }
    for (int c = 0; c < kNumStatusCodes; ++c) {
      requests_[m][c] =
          &requests.Add({{"method", method_name},
                         {"code", std::string(StatusCodeName(static_cast<absl::StatusCode>(c)))}});
    }
    bytes_received_[m] = &bytes_received.Add({{"method", method_name}});
    bytes_sent_[m] = &bytes_sent.Add({{"method", method_name}});
  }
  for (int f = 1; f < kNumFormats; ++f) {
    sqnr_[f] = &sqnr.Add({{"format", FormatLabel(static_cast<Format>(f))}}, SqnrBuckets());
  }
  in_flight_ = &prometheus::BuildGauge()
                    .Name("quantd_requests_in_flight")
                    .Help("RPCs started and not yet finished (streams included).")
                    .Register(*registry_)
                    .Add({});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("quantd_queue_depth")
                      .Help("Validated requests waiting in the bounded queue for a worker.")
                      .Register(*registry_)
                      .Add({});
  inflight_bytes_ =
      &prometheus::BuildGauge()
           .Name("quantd_inflight_bytes")
           .Help(
               "Bytes of tensors (request and response) reserved by calls in flight, capped by "
               "--max-inflight-bytes.")
           .Register(*registry_)
           .Add({});
  prometheus::BuildGauge()
      .Name("quantd_build_info")
      .Help("Always 1; labels name the quantd version and the active backend.")
      .Register(*registry_)
      .Add({{"version", std::string(version)}, {"backend", backend}})
      .Set(1);
}

void Metrics::ObserveRequest(Method method, Format format, absl::StatusCode code, double seconds) {
  const int m = static_cast<int>(method);
  int f = static_cast<int>(format);
  if (f < 0 || f >= kNumFormats || request_duration_[m][f] == nullptr) f = 0;
  if (request_duration_[m][f] != nullptr) request_duration_[m][f]->Observe(seconds);
  int c = static_cast<int>(code);
  if (c < 0 || c >= kNumStatusCodes) c = static_cast<int>(absl::StatusCode::kUnknown);
  requests_[m][c]->Increment();
}

void Metrics::ObserveQueueWait(Method method, Format format, double seconds) {
  const int f = static_cast<int>(format);
  if (f < 0 || f >= kNumFormats) return;
  prometheus::Histogram* h = queue_wait_[static_cast<int>(method)][f];
  if (h != nullptr) h->Observe(seconds);
}

void Metrics::ObserveCompute(Method method, Format format, double seconds) {
  const int f = static_cast<int>(format);
  if (f < 0 || f >= kNumFormats) return;
  prometheus::Histogram* h = compute_duration_[static_cast<int>(method)][f];
  if (h != nullptr) h->Observe(seconds);
}

void Metrics::AddBytesReceived(Method method, int64_t bytes) {
  if (bytes > 0) bytes_received_[static_cast<int>(method)]->Increment(static_cast<double>(bytes));
}

void Metrics::AddBytesSent(Method method, int64_t bytes) {
  if (bytes > 0) bytes_sent_[static_cast<int>(method)]->Increment(static_cast<double>(bytes));
}

void Metrics::IncrementInFlight() { in_flight_->Increment(); }
void Metrics::DecrementInFlight() { in_flight_->Decrement(); }
void Metrics::SetQueueDepth(int64_t depth) { queue_depth_->Set(static_cast<double>(depth)); }
void Metrics::SetInflightBytes(int64_t bytes) { inflight_bytes_->Set(static_cast<double>(bytes)); }

void Metrics::ObserveSqnr(Format format, double sqnr_db) {
  const int f = static_cast<int>(format);
  if (f <= 0 || f >= kNumFormats || !std::isfinite(sqnr_db)) return;
  sqnr_[f]->Observe(sqnr_db);
}

namespace {

prometheus::ClientMetric DeviceSample(const DeviceTelemetry& device,
                                      std::vector<prometheus::ClientMetric::Label> extra = {}) {
  prometheus::ClientMetric sample;
  sample.label.push_back({"device", std::to_string(device.device)});
  for (auto& label : extra) sample.label.push_back(std::move(label));
  return sample;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

}  // namespace

std::vector<prometheus::MetricFamily> DeviceCollector::Collect() const {
  const std::vector<DeviceTelemetry> devices = backend_->Telemetry();
  if (devices.empty()) return {};
  using prometheus::MetricType;
  auto info =
      Family("quantd_gpu_info", "Devices the backend drives (always 1).", MetricType::Gauge);
  auto kernel =
      Family("quantd_gpu_kernel_duration_seconds",
             "Device time of one call's kernels (CUDA events), per device.", MetricType::Histogram);
  auto copy_bytes = Family("quantd_gpu_copy_bytes_total",
                           "Bytes copied between host and device, per device and direction.",
                           MetricType::Counter);
  auto copy_seconds =
      Family("quantd_gpu_copy_seconds_total",
             "Device time of host-to-device and device-to-host copies (CUDA events): calls' copy "
             "phases and streamed tensors' uploads.",
             MetricType::Counter);
  auto streams =
      Family("quantd_gpu_streams", "Size of the device's CUDA stream pool.", MetricType::Gauge);
  auto streams_busy = Family("quantd_gpu_streams_busy",
                             "Streams of the pool held by calls in flight.", MetricType::Gauge);
  auto memory_cap = Family("quantd_gpu_memory_cap_bytes",
                           "Device memory calls may reserve at once (--cuda-memory-cap-bytes).",
                           MetricType::Gauge);
  auto memory_in_use = Family("quantd_gpu_memory_in_use_bytes",
                              "Device memory reserved by calls in flight and registered weights.",
                              MetricType::Gauge);
  auto memory_pool =
      Family("quantd_gpu_memory_pool_bytes",
             "Device memory the stream-ordered pool holds, freed blocks kept for reuse included.",
             MetricType::Gauge);
  auto gemm = Family("quantd_gpu_gemm_products_total",
                     "GEMM products per device by path: fp8 / int8 tensor cores, or fp32 on the "
                     "operands' dequantized values (simulated formats).",
                     MetricType::Counter);
  for (const DeviceTelemetry& device : devices) {
    for (size_t path = 0; path < kGemmPathNames.size(); ++path) {
      auto products = DeviceSample(device, {{"path", kGemmPathNames[path]}});
      products.counter.value = static_cast<double>(device.gemm_products[path]);
      gemm.metric.push_back(std::move(products));
    }
    auto sample = DeviceSample(device, {{"name", device.name}});
    sample.gauge.value = 1;
    info.metric.push_back(std::move(sample));

    sample = DeviceSample(device);
    uint64_t cumulative = 0;
    for (size_t b = 0; b < kKernelSecondsBounds.size(); ++b) {
      cumulative += static_cast<uint64_t>(device.kernel_seconds_buckets[b]);
      sample.histogram.bucket.push_back({cumulative, kKernelSecondsBounds[b]});
    }
    cumulative += static_cast<uint64_t>(device.kernel_seconds_buckets.back());
    sample.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
    sample.histogram.sample_count = cumulative;
    sample.histogram.sample_sum = device.kernel_seconds_sum;
    kernel.metric.push_back(std::move(sample));

    for (const bool h2d : {true, false}) {
      const std::string direction = h2d ? "h2d" : "d2h";
      sample = DeviceSample(device, {{"direction", direction}});
      sample.counter.value =
          static_cast<double>(h2d ? device.host_to_device_bytes : device.device_to_host_bytes);
      copy_bytes.metric.push_back(sample);
      sample.counter.value = h2d ? device.host_to_device_seconds : device.device_to_host_seconds;
      copy_seconds.metric.push_back(std::move(sample));
    }
    const auto gauge = [&](prometheus::MetricFamily& family, double value) {
      auto g = DeviceSample(device);
      g.gauge.value = value;
      family.metric.push_back(std::move(g));
    };
    gauge(streams, device.streams);
    gauge(streams_busy, device.streams_busy);
    gauge(memory_cap, static_cast<double>(device.memory_cap_bytes));
    gauge(memory_in_use, static_cast<double>(device.memory_in_use_bytes));
    gauge(memory_pool, static_cast<double>(device.memory_pool_bytes));
  }
  return {std::move(info),         std::move(kernel),        std::move(copy_bytes),
          std::move(copy_seconds), std::move(streams),       std::move(streams_busy),
          std::move(memory_cap),   std::move(memory_in_use), std::move(memory_pool),
          std::move(gemm)};
}

std::vector<prometheus::MetricFamily> WeightCollector::Collect() const {
  using prometheus::MetricType;
  const auto [count, bytes] = core_->RegisteredWeights();
  auto weights = Family("quantd_registered_weights",
                        "Weights registered for GEMMs (RegisterWeight).", MetricType::Gauge);
  auto held = Family("quantd_registered_weight_bytes",
                     "Memory registered weights hold (the GPU's under the CUDA backend), dropped "
                     "ones still used by a GEMM included.",
                     MetricType::Gauge);
  auto cap =
      Family("quantd_registered_weight_cap_bytes",
             "What registered weights may hold together (--max-weight-bytes).", MetricType::Gauge);
  const auto set = [](prometheus::MetricFamily& family, double value) {
    prometheus::ClientMetric sample;
    sample.gauge.value = value;
    family.metric.push_back(std::move(sample));
  };
  set(weights, static_cast<double>(count));
  set(held, static_cast<double>(bytes));
  set(cap, static_cast<double>(core_->options().max_weight_bytes));
  return {std::move(weights), std::move(held), std::move(cap)};
}

}  // namespace quantd::server
