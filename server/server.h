// Server: the quantd gRPC service (quantd.v1.Quantizer) with health checking, reflection and a
// Prometheus /metrics endpoint, over one backend (CPU or CUDA).
//
// The gRPC layer is thin (callback reactors): a handler validates the request
// (QuantizerCore::Plan*), hands the compute to the bounded Scheduler and finishes the call from
// the worker. Streams (QuantizeStream, DequantizeStream) carry tensors larger than one message:
// the header frame is validated in full and its declared size charged against
// --max-inflight-bytes before any data frame is accepted; data frames then append, in order,
// until the declared bytes are complete, and the answer goes back as a header frame followed by
// data frames of at most --stream-chunk-bytes.
//
//   ServerOptions options;
//   options.listen_address = "127.0.0.1:0";   // port 0: pick a free port
//   QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Server> server, Server::Create(options));
//   QUANTD_RETURN_IF_ERROR(server->Start());
//   int port = server->bound_port();
//   ...
//   server->Shutdown(absl::Now() + absl::Seconds(30));   // drain, then stop
//
// Status codes. INVALID_ARGUMENT: the request is malformed or can never succeed on this server
// (including a tensor above --max-tensor-bytes or a unary response above --max-message-bytes:
// retrying will not help, the message says what to change). RESOURCE_EXHAUSTED: a transient
// capacity limit (queue full, tensor bytes in flight above --max-inflight-bytes, out of memory):
// back off and retry. gRPC itself answers RESOURCE_EXHAUSTED for a unary request above
// --max-message-bytes. DEADLINE_EXCEEDED / CANCELLED: the call died before a worker took it.
// UNAVAILABLE: the server is shutting down.
#ifndef QUANTD_SERVER_SERVER_H_
#define QUANTD_SERVER_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quantd::server {

enum class BackendChoice {
  kAuto,  // CUDA when a device is visible and the CUDA backend starts, else CPU
  kCpu,
  kCuda,  // fail at Create when CUDA is unavailable
};

// "auto", "cpu", "cuda".
[[nodiscard]] absl::StatusOr<BackendChoice> ParseBackendChoice(absl::string_view name);
absl::string_view BackendChoiceName(BackendChoice choice);

struct ServerOptions {
  // gRPC address, HOST:PORT (port 0: an ephemeral port, see Server::bound_port()).
  std::string listen_address = "0.0.0.0:50051";
  // Prometheus /metrics address, HOST:PORT; empty: no metrics endpoint.
  std::string metrics_address = "0.0.0.0:9090";
  BackendChoice backend = BackendChoice::kAuto;
  // Validated requests allowed to wait for a worker; beyond, RESOURCE_EXHAUSTED.
  int max_queue = 256;
  // Requests computed at once (0: one per hardware thread).
  int workers = 0;
  // Threads the CPU backend splits one request over (0: one per hardware thread).
  int threads = 0;
  // Largest unary request / response and largest stream frame (gRPC's message limits).
  int64_t max_message_bytes = int64_t{64} << 20;
  // Largest tensor a request may involve, unary or streamed.
  int64_t max_tensor_bytes = int64_t{16} << 30;
  // What registered weights (RegisterWeight) may hold together; 0: half of the GPUs' memory
  // cap under the CUDA backend, 4 GiB under the CPU backend.
  int64_t max_weight_bytes = 0;
  // Largest response frame a stream sends (4 MiB fits a default gRPC client's receive limit).
  int64_t stream_chunk_bytes = int64_t{4} << 20;
  // Bytes of tensors (input + output) all calls in flight together may hold: a unary call is
  // charged when validated, a stream when its header is; beyond, RESOURCE_EXHAUSTED.
  int64_t max_inflight_bytes = int64_t{20} << 30;
  // Unary requests whose tensors (input + output) hold at most this many bytes compute on the
  // gRPC thread that received them when a worker is idle and nothing is queued, instead of
  // being handed to a worker (see Scheduler::RunInlineIfIdle); 0: always hand off.
  int64_t inline_max_bytes = int64_t{256} << 10;
  // CUDA backend: streams per device, i.e. calls computed at once on one GPU.
  int cuda_streams_per_device = 4;
  // CUDA backend: tensors of at most this many elements are computed on the host by the CPU
  // backend (bit-identical), where they finish sooner than a GPU round trip; 0: never.
  int64_t cuda_host_max_elements = 2048;
  // CUDA backend: device memory calls may reserve at once, per GPU (0: 90% of what is free
  // when the server starts). A call that would exceed it is RESOURCE_EXHAUSTED.
  int64_t cuda_memory_cap_bytes = 0;
  // CUDA backend: streamed tensors of at least this many bytes move to the GPU while they
  // arrive (CudaBackendOptions::upload_min_bytes); 0: never.
  int64_t cuda_upload_min_bytes = int64_t{16} << 20;
  // CUDA backend, GEMM: where the autotuned cuBLASLt algorithms persist across restarts
  // (CudaBackendOptions::gemm_algorithm_cache); empty: in memory only.
  std::string cuda_gemm_algorithm_cache;
  // One line on stderr at start (backend, addresses, limits) and at shutdown.
  bool log_to_stderr = true;
  // Test hook, see SchedulerOptions::before_task_for_testing. Leave empty.
  std::function<void()> before_task_for_testing;
};

class Server {
 public:
  // Checks `options`, chooses and creates the backend (see BackendChoice), the scheduler and
  // the metrics. Listens on nothing yet. FailedPrecondition for --backend=cuda without CUDA,
  // InvalidArgument for inconsistent options.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Server>> Create(ServerOptions options);

  // Shuts down (with an immediate deadline) if Shutdown was not called.
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the gRPC and metrics addresses and starts serving; health turns SERVING.
  // Unavailable when an address cannot be bound.
  [[nodiscard]] absl::Status Start();

  // Drains: health turns NOT_SERVING, new RPCs are refused, calls in flight (queued ones
  // included) run to completion until `deadline`, after which the rest are cancelled; then the
  // workers stop. Idempotent; safe from any thread but a request handler.
  void Shutdown(absl::Time deadline);

  // Blocks until Shutdown has finished.
  void Wait();

  // The gRPC port actually bound (after Start), the metrics port (0 when disabled).
  int bound_port() const;
  int metrics_port() const;

  absl::string_view backend_name() const;
  // Why this backend was chosen ("--backend=auto: no CUDA device visible, using cpu").
  const std::string& backend_note() const;
  // Tasks waiting for a worker right now.
  int64_t queue_depth() const;
  const ServerOptions& options() const;

  class Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace quantd::server

#endif  // QUANTD_SERVER_SERVER_H_
