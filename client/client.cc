// The remote (gRPC) and embedded (in-process) implementations of quantd::Client.
#include "client.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "quantd/status.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "service_core.h"

namespace quantd {
namespace {

// What gRPC accepts when a server does not say.
constexpr int64_t kDefaultMessageLimit = 4 << 20;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Bytes of a tensor as its header declares them; -1 when the header is malformed.
int64_t DeclaredBytes(const v1::Tensor& tensor) {
  const int size = DTypeSize(static_cast<DType>(tensor.dtype()));
  int64_t bytes = size;
  for (int64_t dim : tensor.shape()) {
    if (dim < 0 || (dim != 0 && bytes > (int64_t{1} << 50) / dim)) return -1;
    bytes *= dim;
  }
  return bytes;
}

// "host:port" split at the last colon, with IPv6 brackets removed.
absl::Status SplitHostPort(absl::string_view address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("server address \"", address, "\" needs the form HOST:PORT"));
  }
  absl::string_view h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  *host = std::string(h);
  *port = std::string(address.substr(colon + 1));
  return absl::OkStatus();
}

// The gRPC target for `target`: URIs and single addresses pass through; a comma-separated list
// becomes an ipv4:/ipv6: address list (resolved here, since gRPC's dns resolver takes one
// name), over which the round_robin policy spreads calls.
absl::StatusOr<std::string> ChannelTarget(const std::string& target) {
  if (absl::StrContains(target, "://") || absl::StartsWith(target, "ipv4:") ||
      absl::StartsWith(target, "ipv6:") || absl::StartsWith(target, "unix:")) {
    return target;
  }
  std::vector<std::string> addresses = absl::StrSplit(target, ',', absl::SkipWhitespace());
  if (addresses.size() == 1) return addresses[0];
  std::vector<std::string> v4, v6;
  for (const std::string& address : addresses) {
    std::string host, port;
    QUANTD_RETURN_IF_ERROR(SplitHostPort(address, &host, &port));
    addrinfo hints = {};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (int err = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); err != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot resolve server \"", address, "\": ", gai_strerror(err)));
    }
    char text[NI_MAXHOST];
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      if (getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) !=
          0) {
        continue;
      }
      if (a->ai_family == AF_INET) v4.push_back(absl::StrCat(text, ":", port));
      if (a->ai_family == AF_INET6) v6.push_back(absl::StrCat("[", text, "]:", port));
    }
    freeaddrinfo(found);
  }
  std::sort(v4.begin(), v4.end());
  v4.erase(std::unique(v4.begin(), v4.end()), v4.end());
  std::sort(v6.begin(), v6.end());
  v6.erase(std::unique(v6.begin(), v6.end()), v6.end());
  // One channel speaks one address family; IPv4 wins when a list has both.
  if (!v4.empty()) return absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
  if (!v6.empty()) return absl::StrCat("ipv6:", absl::StrJoin(v6, ","));
  return absl::UnavailableError(absl::StrCat("no address found for servers ", target));
}

class RemoteClient final : public Client {
 public:
  RemoteClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
      : channel_(std::move(channel)),
        stub_(v1::Quantizer::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)),
        options_(std::move(options)) {
    options_.chunk_bytes = std::clamp<int64_t>(options_.chunk_bytes, 1 << 10, 1 << 26);
  }

  absl::StatusOr<v1::QuantizeResponse> Quantize(v1::QuantizeRequest request) override {
    const int64_t input_bytes = static_cast<int64_t>(request.input().data().size());
    if (!NeedsStream(request.ByteSizeLong(), input_bytes)) {
      return Call(stub_.get(), &v1::Quantizer::Stub::Quantize, request);
    }
    return QuantizeStream(std::move(request));
  }

  absl::StatusOr<v1::DequantizeResponse> Dequantize(v1::DequantizeRequest request) override {
    // The response is the float tensor: up to 4 bytes per element whatever the codes are.
    int64_t output_bytes = 4;
    for (int64_t dim : request.quantized().shape()) output_bytes *= std::max<int64_t>(dim, 0);
    if (!NeedsStream(request.ByteSizeLong(), output_bytes)) {
      return Call(stub_.get(), &v1::Quantizer::Stub::Dequantize, request);
    }
    return DequantizeStream(std::move(request));
  }

  absl::StatusOr<v1::QuantDequantResponse> QuantDequant(v1::QuantDequantRequest request) override {
    const int64_t input_bytes = static_cast<int64_t>(request.input().data().size());
    if (!NeedsStream(request.ByteSizeLong(), 2 * input_bytes)) {
      return Call(stub_.get(), &v1::Quantizer::Stub::QuantDequant, request);
    }
    // Too large for one message: the same result through the two streamed calls.
    const v1::DType output_dtype = request.output_dtype() != v1::DTYPE_UNSPECIFIED
                                       ? request.output_dtype()
                                       : request.input().dtype();
    v1::QuantizeRequest quantize;
    *quantize.mutable_input() = std::move(*request.mutable_input());
    *quantize.mutable_spec() = std::move(*request.mutable_spec());
    quantize.set_skip_metrics(request.skip_metrics());
    QUANTD_ASSIGN_OR_RETURN(v1::QuantizeResponse quantized, QuantizeStream(std::move(quantize)));
    v1::DequantizeRequest dequantize;
    *dequantize.mutable_quantized() = std::move(*quantized.mutable_quantized());
    dequantize.set_output_dtype(output_dtype);
    v1::QuantDequantResponse response;
    *response.mutable_spec() = dequantize.quantized().spec();
    QUANTD_ASSIGN_OR_RETURN(v1::DequantizeResponse output, DequantizeStream(std::move(dequantize)));
    *response.mutable_output() = std::move(*output.mutable_output());
    if (quantized.has_metrics()) *response.mutable_metrics() = quantized.metrics();
    response.set_backend(quantized.backend());
    return response;
  }

  absl::StatusOr<v1::CalibrateResponse> Calibrate(v1::CalibrateRequest request) override {
    QUANTD_RETURN_IF_ERROR(CheckUnary("Calibrate", request, "calibrate a representative slice"));
    return Call(stub_.get(), &v1::Quantizer::Stub::Calibrate, request);
  }

  absl::StatusOr<v1::GemmResponse> Gemm(v1::GemmRequest request) override {
    QUANTD_RETURN_IF_ERROR(CheckUnary("Gemm", request, "split M into slices"));
    return Call(stub_.get(), &v1::Quantizer::Stub::Gemm, request);
  }

  absl::StatusOr<v1::RegisterWeightResponse> RegisterWeight(
      v1::RegisterWeightRequest request) override {
    if (NeedsStream(request.ByteSizeLong(), 0)) return RegisterWeightStream(std::move(request));
    return Call(stub_.get(), &v1::Quantizer::Stub::RegisterWeight, request);
  }

  absl::StatusOr<v1::ListWeightsResponse> ListWeights() override {
    return Call(stub_.get(), &v1::Quantizer::Stub::ListWeights, v1::ListWeightsRequest());
  }

  absl::StatusOr<v1::DropWeightResponse> DropWeight(v1::DropWeightRequest request) override {
    return Call(stub_.get(), &v1::Quantizer::Stub::DropWeight, request);
  }

  absl::StatusOr<v1::GetCapabilitiesResponse> GetCapabilities() override {
    return Call(stub_.get(), &v1::Quantizer::Stub::GetCapabilities, v1::GetCapabilitiesRequest());
  }

  absl::StatusOr<v1::EchoResponse> Echo(v1::EchoRequest request) override {
    return Call(stub_.get(), &v1::Quantizer::Stub::Echo, request);
  }

  absl::Status Health() override {
    QUANTD_ASSIGN_OR_RETURN(const grpc::health::v1::HealthCheckResponse response,
                            Call(health_.get(), &grpc::health::v1::Health::Stub::Check,
                                 grpc::health::v1::HealthCheckRequest()));
    if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::UnavailableError(absl::StrCat(
          "server is ",
          grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())));
    }
    return absl::OkStatus();
  }

  std::string description() const override { return options_.target; }

 private:
  void Prepare(grpc::ClientContext* context) const {
    if (options_.timeout != absl::InfiniteDuration()) {
      context->set_deadline(std::chrono::system_clock::now() +
                            absl::ToChronoMilliseconds(options_.timeout));
    }
  }

  // One unary call on `stub` with the client's deadline.
  template <typename Stub, typename Request, typename Response>
  absl::StatusOr<Response> Call(Stub* stub,
                                grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                                const Request& request) {
    grpc::ClientContext context;
    Prepare(&context);
    Response response;
    QUANTD_RETURN_IF_ERROR(FromGrpc((stub->*method)(&context, request, &response)));
    return response;
  }

  // FAILED_PRECONDITION for a request of a method without a streamed form that one message
  // cannot carry, with `advice` on what to send instead.
  absl::Status CheckUnary(absl::string_view method, const google::protobuf::Message& request,
                          absl::string_view advice) {
    const int64_t limit = UnaryLimit();
    if (static_cast<int64_t>(request.ByteSizeLong()) <= limit) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(method, " has no streamed form and this request is ", request.ByteSizeLong(),
                     " bytes, above the server's message limit of ", limit + kMessageMarginBytes,
                     "; ", advice, ", or start quantd with a larger --max-message-bytes"));
  }

  // The largest request or response sent as one message.
  int64_t UnaryLimit() {
    if (options_.unary_limit_bytes > 0) return options_.unary_limit_bytes;
    absl::MutexLock lock(&mu_);
    if (unary_limit_ == 0) {
      absl::StatusOr<v1::GetCapabilitiesResponse> capabilities = GetCapabilities();
      const int64_t server_limit =
          capabilities.ok() && capabilities->limits().max_message_bytes() > 0
              ? capabilities->limits().max_message_bytes()
              : kDefaultMessageLimit;
      unary_limit_ = std::max<int64_t>(server_limit - kMessageMarginBytes, 1 << 10);
    }
    return unary_limit_;
  }

  // Payload bytes per stream frame: the configured chunk, but never more than one message of
  // the server's may carry.
  int64_t FrameBytes() { return std::min(options_.chunk_bytes, UnaryLimit()); }

  bool NeedsStream(size_t request_bytes, int64_t response_payload_bytes) {
    const int64_t limit = UnaryLimit();
    return static_cast<int64_t>(request_bytes) > limit || response_payload_bytes > limit;
  }

  // Writes `header` as the header frame, then `payload` in FrameBytes() pieces, then closes
  // the writing side (unless the server already ended the call).
  template <typename Frame, typename Header, typename Stream>
  void SendFrames(Header header, const std::string& payload, Stream* stream) {
    Frame frame;
    *frame.mutable_header() = std::move(header);
    bool open = stream->Write(frame);
    const int64_t frame_bytes = FrameBytes();
    for (size_t offset = 0; open && offset < payload.size(); offset += frame_bytes) {
      frame.set_data(payload.substr(offset, frame_bytes));
      open = stream->Write(frame);
    }
    if (open) stream->WritesDone();
  }

  // Header frame, then the weight in chunk_bytes pieces; the reply is the one response.
  absl::StatusOr<v1::RegisterWeightResponse> RegisterWeightStream(
      v1::RegisterWeightRequest request) {
    grpc::ClientContext context;
    Prepare(&context);
    auto stream = stub_->RegisterWeightStream(&context);
    const std::string payload = std::move(*request.mutable_weight()->mutable_data());
    request.mutable_weight()->clear_data();
    SendFrames<v1::RegisterWeightStreamRequest>(std::move(request), payload, stream.get());
    v1::RegisterWeightResponse response;
    const bool answered = stream->Read(&response);
    QUANTD_RETURN_IF_ERROR(FromGrpc(stream->Finish()));
    if (!answered) return absl::InternalError("server stream ended without a response");
    return response;
  }

  // Header frame, then the payload in chunk_bytes pieces; the reply is a header and its parts.
  absl::StatusOr<v1::QuantizeResponse> QuantizeStream(v1::QuantizeRequest request) {
    grpc::ClientContext context;
    Prepare(&context);
    std::unique_ptr<grpc::ClientReaderWriter<v1::QuantizeStreamRequest, v1::QuantizeStreamResponse>>
        stream = stub_->QuantizeStream(&context);
    const std::string payload = std::move(*request.mutable_input()->mutable_data());
    request.mutable_input()->clear_data();
    SendFrames<v1::QuantizeStreamRequest>(std::move(request), payload, stream.get());

    v1::QuantizeResponse response;
    v1::QuantizeStreamResponse reply;
    bool have_header = false;
    while (stream->Read(&reply)) {
      if (reply.has_header()) {
        response = std::move(*reply.mutable_header());
        have_header = true;
        continue;
      }
      v1::Tensor* part = nullptr;
      switch (reply.data().part()) {
        case v1::PART_CODES:
          part = response.mutable_quantized()->mutable_codes();
          break;
        case v1::PART_SCALES:
          part = response.mutable_quantized()->mutable_scales();
          break;
        case v1::PART_ZERO_POINTS:
          part = response.mutable_quantized()->mutable_zero_points();
          break;
        default:
          break;
      }
      if (!have_header || part == nullptr) {
        context.TryCancel();
        stream->Finish();
        return absl::InternalError("server stream sent data before its header or for no part");
      }
      part->mutable_data()->append(reply.data().data());
    }
    QUANTD_RETURN_IF_ERROR(FromGrpc(stream->Finish()));
    if (!have_header) return absl::InternalError("server stream ended without a header");
    for (const v1::Tensor* part : {&response.quantized().codes(), &response.quantized().scales()}) {
      if (static_cast<int64_t>(part->data().size()) != DeclaredBytes(*part)) {
        return absl::InternalError("server stream ended before every part was complete");
      }
    }
    return response;
  }

  absl::StatusOr<v1::DequantizeResponse> DequantizeStream(v1::DequantizeRequest request) {
    grpc::ClientContext context;
    Prepare(&context);
    std::unique_ptr<
        grpc::ClientReaderWriter<v1::DequantizeStreamRequest, v1::DequantizeStreamResponse>>
        stream = stub_->DequantizeStream(&context);
    v1::QuantizedTensor* quantized = request.mutable_quantized();
    const std::pair<v1::Part, std::string> parts[] = {
        {v1::PART_CODES, std::move(*quantized->mutable_codes()->mutable_data())},
        {v1::PART_SCALES, std::move(*quantized->mutable_scales()->mutable_data())},
        {v1::PART_ZERO_POINTS, std::move(*quantized->mutable_zero_points()->mutable_data())},
    };
    quantized->mutable_codes()->clear_data();
    quantized->mutable_scales()->clear_data();
    quantized->mutable_zero_points()->clear_data();
    v1::DequantizeStreamRequest frame;
    *frame.mutable_header() = std::move(request);
    bool open = stream->Write(frame);
    const int64_t frame_bytes = FrameBytes();
    for (const auto& [part, payload] : parts) {
      for (size_t offset = 0; open && offset < payload.size(); offset += frame_bytes) {
        frame.mutable_data()->set_part(part);
        frame.mutable_data()->set_data(payload.substr(offset, frame_bytes));
        open = stream->Write(frame);
      }
    }
    if (open) stream->WritesDone();

    v1::DequantizeResponse response;
    v1::DequantizeStreamResponse reply;
    bool have_header = false;
    while (stream->Read(&reply)) {
      if (reply.has_header()) {
        response = std::move(*reply.mutable_header());
        have_header = true;
      } else if (have_header) {
        response.mutable_output()->mutable_data()->append(reply.data());
      } else {
        context.TryCancel();
        stream->Finish();
        return absl::InternalError("server stream sent data before its header");
      }
    }
    QUANTD_RETURN_IF_ERROR(FromGrpc(stream->Finish()));
    if (!have_header ||
        static_cast<int64_t>(response.output().data().size()) != DeclaredBytes(response.output())) {
      return absl::InternalError("server stream ended before the output was complete");
    }
    return response;
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quantizer::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  ClientOptions options_;
  absl::Mutex mu_;
  int64_t unary_limit_ ABSL_GUARDED_BY(mu_) = 0;
};

// The service core in this process: the numerics without a network hop.
class EmbeddedClient final : public Client {
 public:
  EmbeddedClient(std::unique_ptr<Executor> pool, std::unique_ptr<Backend> backend)
      : pool_(std::move(pool)),
        backend_(std::move(backend)),
        core_(backend_.get(), server::CoreOptions{}) {}

  absl::StatusOr<v1::QuantizeResponse> Quantize(v1::QuantizeRequest request) override {
    return core_.Quantize(request);
  }
  absl::StatusOr<v1::DequantizeResponse> Dequantize(v1::DequantizeRequest request) override {
    return core_.Dequantize(request);
  }
  absl::StatusOr<v1::QuantDequantResponse> QuantDequant(v1::QuantDequantRequest request) override {
    return core_.QuantDequant(request);
  }
  absl::StatusOr<v1::CalibrateResponse> Calibrate(v1::CalibrateRequest request) override {
    return core_.Calibrate(request);
  }
  absl::StatusOr<v1::GemmResponse> Gemm(v1::GemmRequest request) override {
    return core_.Gemm(request);
  }
  absl::StatusOr<v1::RegisterWeightResponse> RegisterWeight(
      v1::RegisterWeightRequest request) override {
    return core_.RegisterWeight(request);
  }
  absl::StatusOr<v1::ListWeightsResponse> ListWeights() override { return core_.ListWeights(); }
  absl::StatusOr<v1::DropWeightResponse> DropWeight(v1::DropWeightRequest request) override {
    return core_.DropWeight(request);
  }
  absl::StatusOr<v1::GetCapabilitiesResponse> GetCapabilities() override {
    return core_.GetCapabilities();
  }
  absl::StatusOr<v1::EchoResponse> Echo(v1::EchoRequest request) override {
    const int64_t asked = request.response_bytes();
    const int64_t limit = core_.options().max_tensor_bytes;
    if (asked < 0 || asked > limit) {
      return absl::InvalidArgumentError(absl::StrCat("response_bytes is ", asked,
                                                     "; it must be in [0, ", limit,
                                                     "]; 0 echoes the payload back"));
    }
    v1::EchoResponse response;
    if (asked == 0) {
      *response.mutable_payload() = std::move(*request.mutable_payload());
    } else {
      response.mutable_payload()->assign(static_cast<size_t>(asked), '\0');
    }
    return response;
  }
  absl::Status Health() override { return absl::OkStatus(); }
  std::string description() const override {
    return absl::StrCat("embedded (", backend_->name(), ")");
  }

 private:
  std::unique_ptr<Executor> pool_;
  std::unique_ptr<Backend> backend_;
  server::QuantizerCore core_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  if (options.target.empty()) {
    std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(options.embedded_threads);
    std::unique_ptr<Backend> backend;
    if (CudaDeviceCount() > 0) {
      absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(CudaBackendOptions{});
      if (cuda.ok()) backend = std::move(*cuda);
    }
    if (backend == nullptr) backend = CreateReferenceBackend(pool.get());
    return std::unique_ptr<Client>(new EmbeddedClient(std::move(pool), std::move(backend)));
  }
  QUANTD_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, CreateChannel(options));
  return std::unique_ptr<Client>(new RemoteClient(std::move(channel), options));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ClientOptions& options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError("no server to connect to: the target is empty");
  }
  QUANTD_ASSIGN_OR_RETURN(const std::string target, ChannelTarget(options.target));
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(-1);
  arguments.SetMaxSendMessageSize(-1);
  arguments.SetServiceConfigJSON(R"({"loadBalancingConfig": [{"round_robin": {}}]})");
  // Subchannels (connections) come from a pool shared by every channel of the process unless
  // the channel keeps a pool of its own.
  if (options.dedicated_connection) arguments.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), arguments);
}

}  // namespace quantd
