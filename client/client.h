// quantd::Client: the C++ client of the quantd service. It hides chunked streaming (a request
// or response too large for one gRPC message goes through QuantizeStream / DequantizeStream),
// spreads calls over several servers with gRPC's round_robin, and, without a server address,
// runs the same service core in-process (the "embedded" mode) so that a laptop without a
// server gets the very same numerics.
//
//   ClientOptions options;
//   options.target = "10.0.0.5:50051,10.0.0.6:50051";   // or "dns:///quantd:50051", or ""
//   (embedded) QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(options));
//   v1::QuantizeRequest request;   // input tensor + spec
//   QUANTD_ASSIGN_OR_RETURN(v1::QuantizeResponse response, client->Quantize(std::move(request)));
//
// Requests are taken by value so that multi-GB payloads move instead of being copied. Every
// method is synchronous and thread-safe; errors come back as absl::Status with the server's
// code and message.
#ifndef QUANTD_CLIENT_CLIENT_H_
#define QUANTD_CLIENT_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd {

struct ClientOptions {
  // "HOST:PORT", "HOST:PORT,HOST:PORT,..." (round-robin over all of them), any gRPC target
  // URI such as "dns:///quantd.svc:50051" (round-robin over what it resolves to), or empty for
  // the embedded, in-process service.
  std::string target;
  // Deadline of each call; infinite by default (a 2 GB tensor takes a while).
  absl::Duration timeout = absl::InfiniteDuration();
  // Payload bytes per stream frame.
  int64_t chunk_bytes = int64_t{4} << 20;
  // Requests above this many bytes are streamed; 0 asks the server (its max_message_bytes).
  int64_t unary_limit_bytes = 0;
  // Embedded mode: compute threads (0: one per hardware thread).
  int embedded_threads = 0;
};

class Client {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);

  virtual ~Client() = default;

  [[nodiscard]] virtual absl::StatusOr<v1::QuantizeResponse> Quantize(
      v1::QuantizeRequest request) = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::DequantizeResponse> Dequantize(
      v1::DequantizeRequest request) = 0;
  // A request too large for one message runs as a streamed quantize and a streamed dequantize.
  [[nodiscard]] virtual absl::StatusOr<v1::QuantDequantResponse> QuantDequant(
      v1::QuantDequantRequest request) = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::CalibrateResponse> Calibrate(
      v1::CalibrateRequest request) = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::GetCapabilitiesResponse> GetCapabilities() = 0;
  // OK when the server reports SERVING (always, embedded).
  [[nodiscard]] virtual absl::Status Health() = 0;

  // "embedded" or the target.
  virtual std::string description() const = 0;
};

}  // namespace quantd

#endif  // QUANTD_CLIENT_CLIENT_H_
