// quantd::Client: the C++ client of the quantd service. It hides chunked streaming (a request
// or response too large for one gRPC message goes through QuantizeStream / DequantizeStream /
// RegisterWeightStream),
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

namespace grpc {
class Channel;
}  // namespace grpc

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
  // A TCP connection of this client's own. gRPC otherwise lets every channel to the same
  // target share one connection (one HTTP/2 session for all of a process's clients).
  bool dedicated_connection = false;
};

// A request or response within this many bytes of the server's message limit is streamed:
// room for the fields around the payload.
inline constexpr int64_t kMessageMarginBytes = int64_t{64} << 10;

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
  // Unary only: a request above the server's message limit fails with what to do instead.
  [[nodiscard]] virtual absl::StatusOr<v1::GemmResponse> Gemm(v1::GemmRequest request) = 0;
  // Registered weights live on the server that registered them: with several servers behind
  // one target, register and multiply through a client of one server (its own address).
  // Unary only, as Gemm.
  [[nodiscard]] virtual absl::StatusOr<v1::RegisterWeightResponse> RegisterWeight(
      v1::RegisterWeightRequest request) = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::ListWeightsResponse> ListWeights() = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::DropWeightResponse> DropWeight(
      v1::DropWeightRequest request) = 0;
  [[nodiscard]] virtual absl::StatusOr<v1::GetCapabilitiesResponse> GetCapabilities() = 0;
  // The transport alone (see EchoRequest): the payload there and `response_bytes` bytes back,
  // no quantization work. Unary only: gRPC refuses a request above the server's message limit
  // (RESOURCE_EXHAUSTED), the server a response above it (INVALID_ARGUMENT). Embedded, it is
  // answered in this process.
  [[nodiscard]] virtual absl::StatusOr<v1::EchoResponse> Echo(v1::EchoRequest request) = 0;
  // OK when the server reports SERVING (always, embedded).
  [[nodiscard]] virtual absl::Status Health() = 0;

  // "embedded" or the target.
  virtual std::string description() const = 0;
};

// The channel a remote Client talks through (round-robin over `options.target`, no message size
// limits, a connection of its own when `options.dedicated_connection`), for callers that drive
// the generated stubs themselves, as `quantctl bench` does so that requests are sent from one
// buffer instead of moved into each call. InvalidArgument for an empty target.
[[nodiscard]] absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(
    const ClientOptions& options);

}  // namespace quantd

#endif  // QUANTD_CLIENT_CLIENT_H_
