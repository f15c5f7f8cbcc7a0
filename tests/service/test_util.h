// Helpers for quantd_service_test: an in-process server on 127.0.0.1 with an ephemeral port and
// the CPU backend, real gRPC stubs, tensors, stream drivers and the direct-backend oracle the
// service's answers are checked against.
//
//   TestServer ts = TestServer::Start(TestOptions());
//   v1::QuantizeRequest request = QuantizeRequestFor(RandomF32({5, 160}), "int8");
//   v1::QuantizeResponse response;
//   grpc::ClientContext context;
//   ASSERT_TRUE(ts.stub->Quantize(&context, request, &response).ok());
//   Direct expected = QuantizeDirect(request);   // the Backend called in-process
#ifndef QUANTD_TESTS_SERVICE_TEST_UTIL_H_
#define QUANTD_TESTS_SERVICE_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "quantd/tensor.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "server/server.h"

namespace quantd::testing {

namespace v1 = ::quantd::v1;

// Loopback, ephemeral ports, CPU backend, 2 workers, quiet. /metrics only when asked for: its
// HTTP server takes a second or two to stop, which each test process would pay.
server::ServerOptions TestOptions(bool with_metrics = false);

struct TestServer {
  std::unique_ptr<server::Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Quantizer::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;

  // Creates and starts the server (fails the current test on error) and connects to it with
  // unlimited client message sizes.
  static TestServer Start(server::ServerOptions options);
};

// A tensor of normally distributed values (F32, F16 or BF16), deterministic in `seed`.
v1::Tensor RandomTensor(const Shape& shape, DType dtype = DType::kF32, uint64_t seed = 1);
v1::Tensor FloatTensor(const Shape& shape, const std::vector<float>& values);

v1::QuantizeRequest QuantizeRequestFor(const v1::Tensor& input, const std::string& descriptor);

// What calling the Backend in-process gives for a request (the oracle of the service tests).
struct Direct {
  absl::Status status;
  std::string codes;
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
  float global_scale = 0.0f;  // NVFP4
  std::string output;         // Dequantize / QuantDequant
};
Direct QuantizeDirect(const v1::QuantizeRequest& request);
Direct DequantizeDirect(const v1::DequantizeRequest& request);
Direct QuantDequantDirect(const v1::QuantDequantRequest& request);

template <typename T>
std::vector<T> ValuesOf(const std::string& bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  if (!values.empty()) memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
  return values;
}

// ---- Streams, driven with the synchronous client API. ----

struct QuantizeStreamResult {
  grpc::Status status;
  v1::QuantizeResponse header;  // with codes / scales / zero_points data reassembled
  int header_frames = 0;
  int data_frames = 0;
  int64_t largest_frame = 0;  // serialized bytes
};
// Sends `frames` (then half-closes when `writes_done`) and reads everything back.
QuantizeStreamResult RunQuantizeStream(v1::Quantizer::Stub* stub,
                                       const std::vector<v1::QuantizeStreamRequest>& frames,
                                       bool writes_done = true,
                                       absl::Duration timeout = absl::Seconds(60));
// `request` as a header (data stripped, its first `first_piece` bytes kept) plus data frames of
// `chunk` bytes.
std::vector<v1::QuantizeStreamRequest> QuantizeFrames(const v1::QuantizeRequest& request,
                                                      int64_t chunk, int64_t first_piece = 0);

struct DequantizeStreamResult {
  grpc::Status status;
  v1::DequantizeResponse header;  // output data reassembled
  int data_frames = 0;
  int64_t largest_frame = 0;
};
DequantizeStreamResult RunDequantizeStream(v1::Quantizer::Stub* stub,
                                           const std::vector<v1::DequantizeStreamRequest>& frames,
                                           bool writes_done = true,
                                           absl::Duration timeout = absl::Seconds(60));
std::vector<v1::DequantizeStreamRequest> DequantizeFrames(const v1::DequantizeRequest& request,
                                                          int64_t chunk);

// GET http://127.0.0.1:port/metrics; empty on failure.
std::string ScrapeMetrics(int port);
// The value of the sample line that starts with `series` (e.g.
// `quantd_requests_total{method="Quantize",code="OK"}`); -1 when absent.
double SampleValue(const std::string& page, const std::string& series);

// grpc.health.v1.Health/Check for `service` ("" = the whole server).
grpc::health::v1::HealthCheckResponse::ServingStatus CheckHealth(TestServer& ts,
                                                                 const std::string& service = "");

}  // namespace quantd::testing

#endif  // QUANTD_TESTS_SERVICE_TEST_UTIL_H_
