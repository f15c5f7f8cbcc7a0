#include "server/server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "prometheus/exposer.h"
#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "quantd/status.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "server/convert.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/service_core.h"

#ifndef QUANTD_VERSION
#define QUANTD_VERSION "unknown"
#endif

namespace quantd::server {
namespace {

constexpr char kServiceName[] = "quantd.v1.Quantizer";
// Initial buffer of a stream's tensor: the declared size comes from an unauthenticated header,
// so the buffer grows with the bytes that actually arrive, starting from at most this.
constexpr int64_t kInitialStreamReserve = int64_t{64} << 20;
// Bound on what a response frame adds around its data bytes (oneof tag, part, lengths).
constexpr int64_t kFrameOverheadBytes = 16;
// Bound on what a unary response adds around its bulk bytes (spec, metrics, shapes).
constexpr int64_t kResponseOverheadBytes = 16 << 10;

void Log(const std::string& line) { std::fprintf(stderr, "quantd: %s\n", line.c_str()); }

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// Bytes of tensors held by calls in flight (a unary call's request and response, a stream's
// buffers), against --max-inflight-bytes: what keeps a burst of large requests from exhausting
// memory while they wait in the queue. A mutex rather than an atomic: the gauge must change in
// the same order as the count.
class ByteBudget {
 public:
  ByteBudget(int64_t limit, Metrics* metrics) : limit_(limit), metrics_(metrics) {}

  [[nodiscard]] absl::Status Reserve(int64_t bytes) {
    if (bytes > limit_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "this call needs ", bytes, " bytes of tensors (input and output), more than the ", limit_,
          " all calls together may hold on this server (--max-inflight-bytes); split "
          "the tensor"));
    }
    absl::MutexLock lock(&mu_);
    if (used_ + bytes > limit_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("calls in flight already hold ", used_, " of the ", limit_,
                       " bytes this server allows (--max-inflight-bytes) and this one needs ",
                       bytes, " more; back off and retry"));
    }
    used_ += bytes;
    metrics_->SetInflightBytes(used_);
    return absl::OkStatus();
  }

  void Release(int64_t bytes) {
    if (bytes == 0) return;
    absl::MutexLock lock(&mu_);
    used_ -= bytes;
    metrics_->SetInflightBytes(used_);
  }

 private:
  const int64_t limit_;
  Metrics* const metrics_;
  absl::Mutex mu_;
  int64_t used_ ABSL_GUARDED_BY(mu_) = 0;
};

// Everything a handler or reactor needs; owned by Server::Impl and outliving every call.
struct ServiceState {
  const ServerOptions* options = nullptr;
  const QuantizerCore* core = nullptr;
  Scheduler* scheduler = nullptr;
  Metrics* metrics = nullptr;
  ByteBudget* budget = nullptr;
  int64_t frame_data_bytes = 0;  // data bytes per response frame
};

// The metrics of one RPC (in-flight from construction, duration and code at Done) and, for a
// unary call, its share of the byte budget (released at Done).
class CallRecord {
 public:
  CallRecord(Metrics* metrics, Method method)
      : metrics_(metrics), method_(method), start_(absl::Now()) {
    metrics_->IncrementInFlight();
  }
  ~CallRecord() { Done(absl::CancelledError("call dropped")); }

  void set_format(Format format) { format_.store(format, std::memory_order_relaxed); }
  Format format() const { return format_.load(std::memory_order_relaxed); }
  Method method() const { return method_; }
  void Received(size_t bytes) { metrics_->AddBytesReceived(method_, static_cast<int64_t>(bytes)); }
  void Sent(size_t bytes) { metrics_->AddBytesSent(method_, static_cast<int64_t>(bytes)); }

  [[nodiscard]] absl::Status Reserve(ByteBudget* budget, int64_t bytes) {
    QUANTD_RETURN_IF_ERROR(budget->Reserve(bytes));
    budget_ = budget;
    reserved_ = bytes;
    return absl::OkStatus();
  }

  // The first call counts; later ones are ignored.
  void Done(const absl::Status& status) {
    if (done_.exchange(true)) return;
    if (budget_ != nullptr) budget_->Release(reserved_);
    metrics_->ObserveRequest(method_, format(), status.code(), Seconds(absl::Now() - start_));
    metrics_->DecrementInFlight();
  }

 private:
  Metrics* const metrics_;
  const Method method_;
  const absl::Time start_;
  std::atomic<Format> format_{Format::kUnspecified};
  std::atomic<bool> done_{false};
  ByteBudget* budget_ = nullptr;
  int64_t reserved_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Unary RPCs: validate on gRPC's thread, compute on a worker, finish from the worker.

template <typename Request, typename Response>
struct UnaryMethod {
  Method method;
  absl::StatusOr<RequestPlan> (QuantizerCore::*plan)(const Request&, DataCheck) const;
  absl::StatusOr<Response> (QuantizerCore::*run)(const Request&) const;
  // Where the response keeps its metrics (null when it has none).
  const v1::ErrorMetrics* (*metrics_of)(const Response&);
};

void FinishUnary(grpc::ServerUnaryReactor* reactor, CallRecord* record,
                 const absl::Status& status) {
  record->Done(status);
  reactor->Finish(ToGrpcStatus(status));
}

template <typename Request, typename Response>
grpc::ServerUnaryReactor* ServeUnary(const ServiceState& state,
                                     const UnaryMethod<Request, Response>& method,
                                     grpc::CallbackServerContext* context, const Request* request,
                                     Response* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto record = std::make_shared<CallRecord>(state.metrics, method.method);
  record->Received(request->ByteSizeLong());

  absl::StatusOr<RequestPlan> plan = (state.core->*method.plan)(*request, DataCheck::kExact);
  if (!plan.ok()) {
    FinishUnary(reactor, record.get(), plan.status());
    return reactor;
  }
  const Format format = plan->spec.format;
  record->set_format(format);
  const int64_t static_bytes =
      static_cast<int64_t>(plan->spec.static_scales.size() * sizeof(float) +
                           plan->spec.static_zero_points.size() * sizeof(int32_t));
  const int64_t response_bytes = plan->output_bytes + static_bytes + kResponseOverheadBytes;
  if (response_bytes > state.options->max_message_bytes) {
    FinishUnary(
        reactor, record.get(),
        absl::InvalidArgumentError(absl::StrCat(
            "the response would be about ", response_bytes,
            " bytes, above this server's message limit of ", state.options->max_message_bytes,
            " bytes (--max-message-bytes); use QuantizeStream / DequantizeStream or "
            "send a smaller tensor")));
    return reactor;
  }

  // gRPC has the request in memory already; charging it (and the response to come) keeps a
  // burst of large requests from piling up in the queue beyond --max-inflight-bytes.
  if (absl::Status reserved = record->Reserve(state.budget, plan->input_bytes + plan->output_bytes);
      !reserved.ok()) {
    FinishUnary(reactor, record.get(), reserved);
    return reactor;
  }

  Scheduler::Task task;
  task.deadline = context->deadline();
  task.is_cancelled = [context] { return context->IsCancelled(); };
  task.run = [&state, method, reactor, record, request, response, format](
                 const absl::Status& admission, absl::Duration queue_wait) {
    state.metrics->ObserveQueueWait(method.method, format, Seconds(queue_wait));
    if (!admission.ok()) {
      FinishUnary(reactor, record.get(), admission);
      return;
    }
    const absl::Time start = absl::Now();
    absl::StatusOr<Response> result = (state.core->*method.run)(*request);
    state.metrics->ObserveCompute(method.method, format, Seconds(absl::Now() - start));
    if (!result.ok()) {
      FinishUnary(reactor, record.get(), result.status());
      return;
    }
    if (method.metrics_of != nullptr) {
      const v1::ErrorMetrics* m = method.metrics_of(*result);
      if (m != nullptr) state.metrics->ObserveSqnr(format, m->sqnr_db());
    }
    // Same (null) arena on both sides: the move is a swap, the payload is not copied.
    *response = *std::move(result);
    record->Sent(response->ByteSizeLong());
    FinishUnary(reactor, record.get(), absl::OkStatus());
  };
  // Small requests compute right here when a worker would be idle anyway: no thread wake-up
  // on the way in, and the reply is written by the thread gRPC is already running.
  if (plan->input_bytes + plan->output_bytes <= state.options->inline_max_bytes &&
      state.scheduler->RunInlineIfIdle(task)) {
    return reactor;
  }
  absl::Status submitted = state.scheduler->Submit(std::move(task));
  if (!submitted.ok()) FinishUnary(reactor, record.get(), submitted);
  return reactor;
}

template <typename Response>
const v1::ErrorMetrics* MetricsIfPresent(const Response& response) {
  return response.has_metrics() ? &response.metrics() : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Streams. Protocol per call:
//   reads:  header, data... until the declared bytes are complete; then one more read that must
//           end the stream (a further frame is an error);
//   work:   one scheduler task;
//   writes: response header, then data frames, one outstanding write at a time;
//   Finish exactly once; OnDone releases the budget and deletes the reactor.
// OnReadDone calls are serialized by the one-read-at-a-time rule, and before the tensor is
// complete nothing else runs; afterwards the worker, OnWriteDone and the last OnReadDone share
// state under mu_. gRPC operations (StartRead / StartWrite / Finish) are never called with mu_
// held.

// A response's bulk tensors, sent in order as data frames.
class PendingParts {
 public:
  void Add(v1::Part part, std::string bytes) {
    if (!bytes.empty()) parts_.push_back({part, std::move(bytes)});
  }
  // The next piece of at most `max_bytes`; false when everything was handed out.
  bool Next(int64_t max_bytes, v1::Part* part, const char** data, size_t* size) {
    while (index_ < parts_.size() && offset_ >= parts_[index_].second.size()) {
      std::string().swap(parts_[index_].second);  // sent: free it now
      ++index_;
      offset_ = 0;
    }
    if (index_ >= parts_.size()) return false;
    const std::string& bytes = parts_[index_].second;
    *part = parts_[index_].first;
    *data = bytes.data() + offset_;
    *size = std::min(bytes.size() - offset_, static_cast<size_t>(max_bytes));
    offset_ += *size;
    return true;
  }

 private:
  std::vector<std::pair<v1::Part, std::string>> parts_;
  size_t index_ = 0;
  size_t offset_ = 0;
};

// Appends `piece` to `buffer` of final size `expected`. Below kInitialStreamReserve the buffer
// grows geometrically (never past `expected`); once the client has actually sent that much,
// it has shown it means the declared size (already charged to the budget), and the buffer
// jumps to `expected` at once, so a multi-GB tensor is not copied again at every doubling.
[[nodiscard]] absl::Status AppendBounded(std::string* buffer, const std::string& piece,
                                         int64_t expected) {
  try {
    const size_t need = buffer->size() + piece.size();
    if (buffer->capacity() < need) {
      const size_t grown = need > static_cast<size_t>(kInitialStreamReserve)
                               ? static_cast<size_t>(expected)
                               : std::max(need, buffer->capacity() * 2);
      buffer->reserve(std::min(grown, static_cast<size_t>(expected)));
    }
    buffer->append(piece);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory buffering the stream; retry later");
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError("stream buffer too large for this host");
  }
  return absl::OkStatus();
}

void ReserveInitial(std::string* buffer, int64_t expected) {
  try {
    buffer->reserve(static_cast<size_t>(std::min(expected, kInitialStreamReserve)));
  } catch (const std::exception&) {
    // Only an optimization: appending will try again and report a failure.
  }
}

template <typename Request, typename Response>
class StreamReactor : public grpc::ServerBidiReactor<Request, Response> {
 public:
  StreamReactor(const ServiceState& state, grpc::CallbackServerContext* context, Method method)
      : state_(state), context_(context), record_(state.metrics, method) {}

  // Starts the first read; call once, right after construction.
  void Begin() { this->StartRead(&in_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      OnReadsEnded();
      return;
    }
    record_.Received(in_.ByteSizeLong());
    if (accepting_) {
      absl::Status status = seen_header_ ? AcceptData(in_) : AcceptHeader(in_);
      seen_header_ = true;
      in_.Clear();
      if (!status.ok()) {
        FinishOnce(status);
        return;
      }
      if (Complete()) {
        accepting_ = false;
        Submit();
      } else {
        this->StartRead(&in_);
      }
      return;
    }
    // The one read after the tensor was complete delivered a frame: the client sent more than
    // it declared. No further reads; whoever holds the call next finishes it with this error.
    in_.Clear();
    absl::MutexLock lock(&mu_);
    late_error_ = absl::InvalidArgumentError(absl::StrCat(
        "a frame arrived after the ", ExpectedBytesDescription(),
        " the header declared were complete; send exactly the declared bytes, then close"));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(absl::CancelledError("the client stopped receiving the response"));
      return;
    }
    record_.Sent(out_.ByteSizeLong());
    WriteNext();
  }

  void OnDone() override {
    state_.budget->Release(reserved_);
    record_.Done(absl::CancelledError("stream ended without a status"));
    delete this;
  }

 protected:
  // Validates the header frame (Plan*, kAtMost), charges the budget via Admit() and takes
  // the header's data as the first pieces.
  [[nodiscard]] virtual absl::Status AcceptHeader(Request& frame) = 0;
  [[nodiscard]] virtual absl::Status AcceptData(Request& frame) = 0;
  virtual bool Complete() const = 0;
  // "12 of 40 bytes of codes" for an incomplete stream.
  virtual std::string Progress() const = 0;
  virtual std::string ExpectedBytesDescription() const = 0;
  // On a worker: compute, then fill the response header and the parts to send.
  [[nodiscard]] virtual absl::Status Compute(Response* header, PendingParts* parts) = 0;
  virtual void SetDataFrame(v1::Part part, const char* data, size_t size, Response* out) = 0;
  // The call failed after Compute succeeded (a frame past the declared bytes, the client gone
  // before the answer): undo what Compute did that would outlive the call.
  virtual void Abandon() {}

  // Takes the header's plan: labels the call's metrics with its format and charges its input
  // and output bytes to the server's budget.
  [[nodiscard]] absl::Status Admit(const RequestPlan& plan) {
    record_.set_format(plan.spec.format);
    const int64_t bytes = plan.input_bytes + plan.output_bytes;
    QUANTD_RETURN_IF_ERROR(state_.budget->Reserve(bytes));
    reserved_ = bytes;
    return absl::OkStatus();
  }

  const ServiceState& state_;
  grpc::CallbackServerContext* const context_;
  CallRecord record_;

 private:
  void OnReadsEnded() {
    if (!accepting_) return;  // the normal end of the stream after the tensor
    if (context_->IsCancelled()) {
      FinishOnce(absl::CancelledError("the client cancelled the stream"));
    } else if (!seen_header_) {
      FinishOnce(absl::InvalidArgumentError(
          "the stream ended before its header frame; send one header frame, then data frames"));
    } else {
      FinishOnce(
          absl::InvalidArgumentError(absl::StrCat("the stream ended after ", Progress(),
                                                  "; send every byte the header declared before "
                                                  "closing the stream")));
    }
  }

  void Submit() {
    Scheduler::Task task;
    task.deadline = context_->deadline();
    task.is_cancelled = [context = context_] { return context->IsCancelled(); };
    task.run = [this](const absl::Status& admission, absl::Duration queue_wait) {
      Run(admission, queue_wait);
    };
    // Watch for frames beyond the declared bytes (and for the client's half-close). Started
    // before Submit: once the task is queued, a worker may finish the call at any moment, and
    // no read may start after Finish.
    this->StartRead(&in_);
    absl::Status submitted = state_.scheduler->Submit(std::move(task));
    if (!submitted.ok()) FinishOnce(submitted);
  }

  void Run(const absl::Status& admission, absl::Duration queue_wait) {
    const Method method = record_.method();
    const Format format = record_.format();
    state_.metrics->ObserveQueueWait(method, format, Seconds(queue_wait));
    if (!admission.ok()) {
      FinishOnce(admission);
      return;
    }
    if (absl::Status late = LateError(); !late.ok()) {
      FinishOnce(late);
      return;
    }
    const absl::Time start = absl::Now();
    absl::Status status = Compute(&header_, &parts_);
    state_.metrics->ObserveCompute(method, format, Seconds(absl::Now() - start));
    if (!status.ok()) {
      FinishOnce(status);
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      computed_ = true;
    }
    if (absl::Status late = LateError(); !late.ok()) {
      FinishOnce(late);
      return;
    }
    out_ = std::move(header_);
    this->StartWrite(&out_);
  }

  void WriteNext() {
    if (absl::Status late = LateError(); !late.ok()) {
      FinishOnce(late);
      return;
    }
    v1::Part part;
    const char* data;
    size_t size;
    if (!parts_.Next(state_.frame_data_bytes, &part, &data, &size)) {
      FinishOnce(absl::OkStatus());
      return;
    }
    out_.Clear();
    SetDataFrame(part, data, size, &out_);
    this->StartWrite(&out_);
  }

  [[nodiscard]] absl::Status LateError() {
    absl::MutexLock lock(&mu_);
    return late_error_;
  }

  void FinishOnce(const absl::Status& status) {
    bool computed;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      computed = computed_;
    }
    if (!status.ok() && computed) Abandon();
    record_.Done(status);
    this->Finish(ToGrpcStatus(status));
  }

  Request in_;
  Response out_;
  Response header_;
  PendingParts parts_;
  bool seen_header_ = false;
  bool accepting_ = true;  // reading the tensor (header and data frames)
  int64_t reserved_ = 0;
  absl::Mutex mu_;
  absl::Status late_error_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool computed_ ABSL_GUARDED_BY(mu_) = false;  // Compute succeeded
};

constexpr char kDataBeforeHeader[] =
    "the first frame must be a header (the request with dtype and shape set); a data frame "
    "came first";
constexpr char kEmptyFirstFrame[] = "the first frame is empty; it must be a header";
constexpr char kSecondHeader[] =
    "a second header frame arrived; a stream carries one header, then data frames";
constexpr char kEmptyDataFrame[] = "an empty frame arrived; frames after the header carry data";

// OK when `frame` is the kind the stream expects next (its header first, data frames after);
// else the refusal saying what arrived instead.
template <typename Frame>
absl::Status ExpectFrame(const Frame& frame, typename Frame::FrameCase expected) {
  if (frame.frame_case() == expected) return absl::OkStatus();
  if (expected == Frame::kHeader) {
    return absl::InvalidArgumentError(frame.frame_case() == Frame::kData ? kDataBeforeHeader
                                                                         : kEmptyFirstFrame);
  }
  return absl::InvalidArgumentError(frame.frame_case() == Frame::kHeader ? kSecondHeader
                                                                         : kEmptyDataFrame);
}

// Counts one data frame of a stream carrying one tensor of `expected` bytes, refusing a frame
// that would go past them.
absl::Status CountPiece(int64_t piece, int64_t expected, const std::string& description,
                        int64_t* received) {
  if (piece > expected - *received) {
    return absl::InvalidArgumentError(absl::StrCat("the stream sent more than the declared ",
                                                   description, ": ", *received,
                                                   " bytes so far plus a frame of ", piece));
  }
  *received += piece;
  return absl::OkStatus();
}

class QuantizeStreamReactor final
    : public StreamReactor<v1::QuantizeStreamRequest, v1::QuantizeStreamResponse> {
 public:
  QuantizeStreamReactor(const ServiceState& state, grpc::CallbackServerContext* context)
      : StreamReactor(state, context, Method::kQuantizeStream) {}

 protected:
  absl::Status AcceptHeader(v1::QuantizeStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::QuantizeStreamRequest::kHeader));
    QUANTD_ASSIGN_OR_RETURN(plan_, state_.core->PlanQuantize(frame.header(), DataCheck::kAtMost));
    QUANTD_RETURN_IF_ERROR(Admit(plan_));
    request_ = std::move(*frame.mutable_header());
    // The backend may take the tensor as it arrives (the CUDA backend moves it to the GPU
    // meanwhile); the pieces are then handed over, not gathered here. Without an upload (none
    // offered, or it could not start) the tensor is gathered in host memory and computed whole.
    absl::StatusOr<std::unique_ptr<TensorUpload>> upload = state_.core->BeginUpload(plan_);
    if (upload.ok() && *upload != nullptr) {
      upload_ = *std::move(upload);
      std::string first_piece;
      first_piece.swap(*request_.mutable_input()->mutable_data());
      received_ = static_cast<int64_t>(first_piece.size());
      return upload_->Append(std::move(first_piece));
    }
    received_ = static_cast<int64_t>(request_.input().data().size());
    ReserveInitial(request_.mutable_input()->mutable_data(), plan_.input_bytes);
    return absl::OkStatus();
  }

  absl::Status AcceptData(v1::QuantizeStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::QuantizeStreamRequest::kData));
    QUANTD_RETURN_IF_ERROR(CountPiece(static_cast<int64_t>(frame.data().size()), plan_.input_bytes,
                                      ExpectedBytesDescription(), &received_));
    if (upload_ != nullptr) return upload_->Append(std::move(*frame.mutable_data()));
    return AppendBounded(request_.mutable_input()->mutable_data(), frame.data(), plan_.input_bytes);
  }

  bool Complete() const override { return received_ == plan_.input_bytes; }

  std::string Progress() const override {
    return absl::StrCat(received_, " of ", ExpectedBytesDescription());
  }

  std::string ExpectedBytesDescription() const override {
    return absl::StrCat(plan_.input_bytes, " bytes of input (shape ",
                        ShapeToString(plan_.layout.shape), ", ", DTypeName(plan_.input_dtype), ")");
  }

  absl::Status Compute(v1::QuantizeStreamResponse* header, PendingParts* parts) override {
    absl::StatusOr<v1::QuantizeResponse> result = state_.core->Quantize(request_, upload_.get());
    std::string().swap(*request_.mutable_input()->mutable_data());  // free the input now
    upload_.reset();
    QUANTD_RETURN_IF_ERROR(result.status());
    if (result->has_metrics())
      state_.metrics->ObserveSqnr(plan_.spec.format, result->metrics().sqnr_db());
    v1::QuantizedTensor* q = result->mutable_quantized();
    parts->Add(v1::PART_CODES, std::move(*q->mutable_codes()->mutable_data()));
    parts->Add(v1::PART_SCALES, std::move(*q->mutable_scales()->mutable_data()));
    parts->Add(v1::PART_ZERO_POINTS, std::move(*q->mutable_zero_points()->mutable_data()));
    q->mutable_codes()->clear_data();
    q->mutable_scales()->clear_data();
    q->mutable_zero_points()->clear_data();
    // Static scales would make the header as large as the scales themselves; they follow as
    // PART_SCALES data anyway.
    q->mutable_spec()->clear_static_scales();
    q->mutable_spec()->clear_static_zero_points();
    *header->mutable_header() = std::move(*result);
    return absl::OkStatus();
  }

  void SetDataFrame(v1::Part part, const char* data, size_t size,
                    v1::QuantizeStreamResponse* out) override {
    v1::DataChunk* chunk = out->mutable_data();
    chunk->set_part(part);
    chunk->set_data(data, size);
  }

 private:
  RequestPlan plan_;
  v1::QuantizeRequest request_;  // input.data gathers the tensor unless upload_ takes it
  std::unique_ptr<TensorUpload> upload_;
  int64_t received_ = 0;  // bytes of the tensor so far
};

class DequantizeStreamReactor final
    : public StreamReactor<v1::DequantizeStreamRequest, v1::DequantizeStreamResponse> {
 public:
  DequantizeStreamReactor(const ServiceState& state, grpc::CallbackServerContext* context)
      : StreamReactor(state, context, Method::kDequantizeStream) {}

 protected:
  absl::Status AcceptHeader(v1::DequantizeStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::DequantizeStreamRequest::kHeader));
    QUANTD_ASSIGN_OR_RETURN(plan_, state_.core->PlanDequantize(frame.header(), DataCheck::kAtMost));
    QUANTD_RETURN_IF_ERROR(Admit(plan_));
    request_ = std::move(*frame.mutable_header());
    for (int p = v1::PART_CODES; p <= v1::PART_ZERO_POINTS; ++p) {
      ReserveInitial(Buffer(static_cast<v1::Part>(p)), Expected(static_cast<v1::Part>(p)));
    }
    return absl::OkStatus();
  }

  absl::Status AcceptData(v1::DequantizeStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::DequantizeStreamRequest::kData));
    const v1::DataChunk& chunk = frame.data();
    const int part_value = chunk.part();
    if (part_value < v1::PART_CODES || part_value > v1::PART_ZERO_POINTS) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.part is ", part_value,
                       "; it must be PART_CODES (1), PART_SCALES (2) or "
                       "PART_ZERO_POINTS (3)"));
    }
    const auto part = static_cast<v1::Part>(part_value);
    if (part == v1::PART_ZERO_POINTS && !plan_.spec.asymmetric) {
      return absl::InvalidArgumentError(
          "PART_ZERO_POINTS data arrived but the header's spec is symmetric (no zero-points)");
    }
    std::string* buffer = Buffer(part);
    const int64_t have = static_cast<int64_t>(buffer->size());
    const int64_t piece = static_cast<int64_t>(chunk.data().size());
    if (piece > Expected(part) - have) {
      return absl::InvalidArgumentError(
          absl::StrCat("the stream sent more ", v1::Part_Name(part), " bytes than declared: ", have,
                       " so far plus a frame of ", piece, "; the header's spec and shape need ",
                       Expected(part)));
    }
    return AppendBounded(buffer, chunk.data(), Expected(part));
  }

  bool Complete() const override {
    const v1::QuantizedTensor& q = request_.quantized();
    return static_cast<int64_t>(q.codes().data().size()) == plan_.code_bytes &&
           static_cast<int64_t>(q.scales().data().size()) == plan_.scale_bytes &&
           static_cast<int64_t>(q.zero_points().data().size()) == plan_.zero_point_bytes;
  }

  std::string Progress() const override {
    const v1::QuantizedTensor& q = request_.quantized();
    std::string progress =
        absl::StrCat(q.codes().data().size(), " of ", plan_.code_bytes, " bytes of codes, ",
                     q.scales().data().size(), " of ", plan_.scale_bytes, " bytes of scales");
    if (plan_.spec.asymmetric) {
      absl::StrAppend(&progress, ", ", q.zero_points().data().size(), " of ",
                      plan_.zero_point_bytes, " bytes of zero-points");
    }
    return progress;
  }

  std::string ExpectedBytesDescription() const override {
    return absl::StrCat(plan_.input_bytes, " bytes of codes, scales and zero-points");
  }

  absl::Status Compute(v1::DequantizeStreamResponse* header, PendingParts* parts) override {
    absl::StatusOr<v1::DequantizeResponse> result = state_.core->Dequantize(request_);
    request_.Clear();
    QUANTD_RETURN_IF_ERROR(result.status());
    parts->Add(v1::PART_UNSPECIFIED, std::move(*result->mutable_output()->mutable_data()));
    result->mutable_output()->clear_data();
    *header->mutable_header() = std::move(*result);
    return absl::OkStatus();
  }

  void SetDataFrame(v1::Part /*part*/, const char* data, size_t size,
                    v1::DequantizeStreamResponse* out) override {
    out->set_data(data, size);
  }

 private:
  std::string* Buffer(v1::Part part) {
    v1::QuantizedTensor* q = request_.mutable_quantized();
    switch (part) {
      case v1::PART_SCALES:
        return q->mutable_scales()->mutable_data();
      case v1::PART_ZERO_POINTS:
        return q->mutable_zero_points()->mutable_data();
      default:
        return q->mutable_codes()->mutable_data();
    }
  }

  int64_t Expected(v1::Part part) const {
    switch (part) {
      case v1::PART_SCALES:
        return plan_.scale_bytes;
      case v1::PART_ZERO_POINTS:
        return plan_.zero_point_bytes;
      default:
        return plan_.code_bytes;
    }
  }

  RequestPlan plan_;
  v1::DequantizeRequest request_;
};

// A weight larger than one message: gathered in host memory, then registered exactly as
// RegisterWeight registers it (the backend quantizes the whole weight at once).
class RegisterWeightStreamReactor final
    : public StreamReactor<v1::RegisterWeightStreamRequest, v1::RegisterWeightResponse> {
 public:
  RegisterWeightStreamReactor(const ServiceState& state, grpc::CallbackServerContext* context)
      : StreamReactor(state, context, Method::kRegisterWeightStream) {}

 protected:
  absl::Status AcceptHeader(v1::RegisterWeightStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::RegisterWeightStreamRequest::kHeader));
    QUANTD_ASSIGN_OR_RETURN(plan_,
                            state_.core->PlanRegisterWeight(frame.header(), DataCheck::kAtMost));
    QUANTD_RETURN_IF_ERROR(Admit(plan_));
    request_ = std::move(*frame.mutable_header());
    received_ = static_cast<int64_t>(request_.weight().data().size());
    ReserveInitial(request_.mutable_weight()->mutable_data(), plan_.input_bytes);
    return absl::OkStatus();
  }

  absl::Status AcceptData(v1::RegisterWeightStreamRequest& frame) override {
    QUANTD_RETURN_IF_ERROR(ExpectFrame(frame, v1::RegisterWeightStreamRequest::kData));
    QUANTD_RETURN_IF_ERROR(CountPiece(static_cast<int64_t>(frame.data().size()), plan_.input_bytes,
                                      ExpectedBytesDescription(), &received_));
    return AppendBounded(request_.mutable_weight()->mutable_data(), frame.data(),
                         plan_.input_bytes);
  }

  bool Complete() const override { return received_ == plan_.input_bytes; }

  std::string Progress() const override {
    return absl::StrCat(received_, " of ", ExpectedBytesDescription());
  }

  std::string ExpectedBytesDescription() const override {
    return absl::StrCat(plan_.input_bytes, " bytes of weight (shape ",
                        ShapeToString(plan_.layout.shape), ", ", DTypeName(plan_.input_dtype), ")");
  }

  absl::Status Compute(v1::RegisterWeightResponse* header, PendingParts* /*parts*/) override {
    absl::StatusOr<v1::RegisterWeightResponse> result = state_.core->RegisterWeight(request_);
    request_.Clear();  // the host copy of the weight is no longer needed
    QUANTD_RETURN_IF_ERROR(result.status());
    if (result->has_metrics()) {
      state_.metrics->ObserveSqnr(plan_.spec.format, result->metrics().sqnr_db());
    }
    handle_ = result->weight().handle();
    *header = *std::move(result);
    return absl::OkStatus();
  }

  // A client that never learns the handle could not drop the weight: it is dropped here.
  void Abandon() override {
    v1::DropWeightRequest drop;
    drop.set_handle(handle_);
    (void)state_.core->DropWeight(drop);
  }

  // The response is the one message; there are no data frames.
  void SetDataFrame(v1::Part /*part*/, const char* /*data*/, size_t /*size*/,
                    v1::RegisterWeightResponse* /*out*/) override {}

 private:
  RequestPlan plan_;
  v1::RegisterWeightRequest request_;  // weight.data gathers the weight
  int64_t received_ = 0;               // bytes of the weight so far
  std::string handle_;                 // the registered weight's, once Compute succeeded
};

// ---------------------------------------------------------------------------------------------

class QuantizerService final : public v1::Quantizer::CallbackService {
 public:
  explicit QuantizerService(const ServiceState& state) : state_(state) {}

  grpc::ServerUnaryReactor* Quantize(grpc::CallbackServerContext* context,
                                     const v1::QuantizeRequest* request,
                                     v1::QuantizeResponse* response) override {
    static const UnaryMethod<v1::QuantizeRequest, v1::QuantizeResponse> kMethod{
        Method::kQuantize, &QuantizerCore::PlanQuantize, &QuantizerCore::Quantize,
        &MetricsIfPresent<v1::QuantizeResponse>};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  grpc::ServerUnaryReactor* Dequantize(grpc::CallbackServerContext* context,
                                       const v1::DequantizeRequest* request,
                                       v1::DequantizeResponse* response) override {
    static const UnaryMethod<v1::DequantizeRequest, v1::DequantizeResponse> kMethod{
        Method::kDequantize, &QuantizerCore::PlanDequantize, &QuantizerCore::Dequantize, nullptr};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  grpc::ServerUnaryReactor* QuantDequant(grpc::CallbackServerContext* context,
                                         const v1::QuantDequantRequest* request,
                                         v1::QuantDequantResponse* response) override {
    static const UnaryMethod<v1::QuantDequantRequest, v1::QuantDequantResponse> kMethod{
        Method::kQuantDequant, &QuantizerCore::PlanQuantDequant, &QuantizerCore::QuantDequant,
        &MetricsIfPresent<v1::QuantDequantResponse>};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  grpc::ServerUnaryReactor* Gemm(grpc::CallbackServerContext* context,
                                 const v1::GemmRequest* request,
                                 v1::GemmResponse* response) override {
    static const UnaryMethod<v1::GemmRequest, v1::GemmResponse> kMethod{
        Method::kGemm, &QuantizerCore::PlanGemm, &QuantizerCore::Gemm,
        &MetricsIfPresent<v1::GemmResponse>};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  grpc::ServerUnaryReactor* RegisterWeight(grpc::CallbackServerContext* context,
                                           const v1::RegisterWeightRequest* request,
                                           v1::RegisterWeightResponse* response) override {
    static const UnaryMethod<v1::RegisterWeightRequest, v1::RegisterWeightResponse> kMethod{
        Method::kRegisterWeight, &QuantizerCore::PlanRegisterWeight, &QuantizerCore::RegisterWeight,
        &MetricsIfPresent<v1::RegisterWeightResponse>};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  // Answered on gRPC's thread, as GetCapabilities: bookkeeping, no GPU work to queue (a dropped
  // weight's memory is freed by whichever thread lets go of it last).
  grpc::ServerUnaryReactor* ListWeights(grpc::CallbackServerContext* context,
                                        const v1::ListWeightsRequest* request,
                                        v1::ListWeightsResponse* response) override {
    return AnswerHere(
        Method::kListWeights, context, request, response,
        [&]() -> absl::StatusOr<v1::ListWeightsResponse> { return state_.core->ListWeights(); });
  }

  grpc::ServerUnaryReactor* DropWeight(grpc::CallbackServerContext* context,
                                       const v1::DropWeightRequest* request,
                                       v1::DropWeightResponse* response) override {
    return AnswerHere(Method::kDropWeight, context, request, response,
                      [&] { return state_.core->DropWeight(*request); });
  }

  grpc::ServerUnaryReactor* Calibrate(grpc::CallbackServerContext* context,
                                      const v1::CalibrateRequest* request,
                                      v1::CalibrateResponse* response) override {
    static const UnaryMethod<v1::CalibrateRequest, v1::CalibrateResponse> kMethod{
        Method::kCalibrate, &QuantizerCore::PlanCalibrate, &QuantizerCore::Calibrate,
        &MetricsIfPresent<v1::CalibrateResponse>};
    return ServeUnary(state_, kMethod, context, request, response);
  }

  grpc::ServerUnaryReactor* GetCapabilities(grpc::CallbackServerContext* context,
                                            const v1::GetCapabilitiesRequest* request,
                                            v1::GetCapabilitiesResponse* response) override {
    return AnswerHere(Method::kGetCapabilities, context, request, response,
                      [&]() -> absl::StatusOr<v1::GetCapabilitiesResponse> {
                        return state_.core->GetCapabilities();
                      });
  }

  // Answered here, on gRPC's thread: Echo measures the transport, so it must not wait for a
  // worker. It is charged to the byte budget like any call holding tensors of that size.
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* context,
                                 const v1::EchoRequest* request,
                                 v1::EchoResponse* response) override {
    CallRecord record(state_.metrics, Method::kEcho);
    record.Received(request->ByteSizeLong());
    const absl::Status status = AnswerEcho(*request, &record, response);
    if (status.ok()) record.Sent(response->ByteSizeLong());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    FinishUnary(reactor, &record, status);
    return reactor;
  }

  grpc::ServerBidiReactor<v1::QuantizeStreamRequest, v1::QuantizeStreamResponse>* QuantizeStream(
      grpc::CallbackServerContext* context) override {
    auto* reactor = new QuantizeStreamReactor(state_, context);
    reactor->Begin();
    return reactor;
  }

  grpc::ServerBidiReactor<v1::DequantizeStreamRequest, v1::DequantizeStreamResponse>*
  DequantizeStream(grpc::CallbackServerContext* context) override {
    auto* reactor = new DequantizeStreamReactor(state_, context);
    reactor->Begin();
    return reactor;
  }

  grpc::ServerBidiReactor<v1::RegisterWeightStreamRequest, v1::RegisterWeightResponse>*
  RegisterWeightStream(grpc::CallbackServerContext* context) override {
    auto* reactor = new RegisterWeightStreamReactor(state_, context);
    reactor->Begin();
    return reactor;
  }

 private:
  // A call answered on gRPC's thread, without queueing for a worker: `answer` is bookkeeping
  // (no tensors, no GPU work).
  template <typename Request, typename Response, typename Answer>
  grpc::ServerUnaryReactor* AnswerHere(Method method, grpc::CallbackServerContext* context,
                                       const Request* request, Response* response,
                                       Answer&& answer) {
    CallRecord record(state_.metrics, method);
    record.Received(request->ByteSizeLong());
    absl::StatusOr<Response> answered = answer();
    if (answered.ok()) {
      *response = std::move(*answered);
      record.Sent(response->ByteSizeLong());
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    FinishUnary(reactor, &record, answered.status());
    return reactor;
  }

  [[nodiscard]] absl::Status AnswerEcho(const v1::EchoRequest& request, CallRecord* record,
                                        v1::EchoResponse* response) const {
    const int64_t limit = state_.options->max_message_bytes - kFrameOverheadBytes;
    const int64_t asked = request.response_bytes();
    if (asked < 0 || asked > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("response_bytes is ", asked, "; it must be in [0, ", limit,
                       "] (this server's --max-message-bytes less ", kFrameOverheadBytes,
                       " bytes of framing); 0 echoes the payload back"));
    }
    const int64_t payload_bytes = static_cast<int64_t>(request.payload().size());
    const int64_t answer_bytes = asked == 0 ? payload_bytes : asked;
    QUANTD_RETURN_IF_ERROR(record->Reserve(state_.budget, payload_bytes + answer_bytes));
    try {
      if (asked == 0) {
        response->set_payload(request.payload());
      } else {
        response->mutable_payload()->assign(static_cast<size_t>(answer_bytes), '\0');
      }
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError(
          absl::StrCat("out of memory allocating ", answer_bytes, " bytes of echo; retry later"));
    }
    return absl::OkStatus();
  }

  const ServiceState& state_;
};

[[nodiscard]] absl::Status CheckOptions(const ServerOptions& o) {
  if (o.listen_address.empty()) {
    return absl::InvalidArgumentError("--listen is empty; give HOST:PORT (port 0: any free port)");
  }
  if (o.max_queue < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-queue is ", o.max_queue, "; it must be >= 0"));
  }
  if (o.workers < 0 || o.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--workers is ", o.workers, " and --threads is ",
                                                   o.threads,
                                                   "; both must be >= 0 (0: one per "
                                                   "hardware thread)"));
  }
  // gRPC takes message limits as int.
  if (o.max_message_bytes < 4096 || o.max_message_bytes > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("--max-message-bytes is ", o.max_message_bytes,
                                                   "; it must be in [4096, ", INT32_MAX, "]"));
  }
  if (o.stream_chunk_bytes <= kFrameOverheadBytes || o.stream_chunk_bytes > o.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--stream-chunk-bytes is ", o.stream_chunk_bytes, "; it must be in [",
        kFrameOverheadBytes + 1, ", --max-message-bytes = ", o.max_message_bytes, "]"));
  }
  if (o.max_tensor_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-tensor-bytes is ", o.max_tensor_bytes, "; it must be > 0"));
  }
  if (o.max_inflight_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-inflight-bytes is ", o.max_inflight_bytes, "; it must be > 0"));
  }
  if (o.cuda_streams_per_device < 1 || o.cuda_streams_per_device > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cuda-streams-per-device is ", o.cuda_streams_per_device, "; it must be in [1, 256]"));
  }
  if (o.inline_max_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--inline-max-bytes is ", o.inline_max_bytes,
                                                   "; it must be >= 0 (0: never inline)"));
  }
  if (o.cuda_host_max_elements < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda-host-max-elements is ", o.cuda_host_max_elements,
                     "; it must be >= 0 (0: every tensor on the GPU)"));
  }
  if (o.cuda_upload_min_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda-upload-min-bytes is ", o.cuda_upload_min_bytes,
                     "; it must be >= 0 (0: never upload while receiving)"));
  }
  if (o.cuda_memory_cap_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cuda-memory-cap-bytes is ", o.cuda_memory_cap_bytes,
                     "; it must be >= 0 (0: 90% of the free device memory)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BackendChoice> ParseBackendChoice(absl::string_view name) {
  if (name == "auto") return BackendChoice::kAuto;
  if (name == "cpu") return BackendChoice::kCpu;
  if (name == "cuda") return BackendChoice::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend \"", name, "\"; choose auto, cpu or cuda"));
}

absl::string_view BackendChoiceName(BackendChoice choice) {
  switch (choice) {
    case BackendChoice::kAuto:
      return "auto";
    case BackendChoice::kCpu:
      return "cpu";
    case BackendChoice::kCuda:
      return "cuda";
  }
  return "auto";
}

class Server::Impl {
 public:
  explicit Impl(ServerOptions options) : options_(std::move(options)) {}

  ~Impl() { Shutdown(absl::Now()); }

  [[nodiscard]] absl::Status Init() {
    QUANTD_RETURN_IF_ERROR(CheckOptions(options_));
    QUANTD_RETURN_IF_ERROR(CreateBackend());
    metrics_ = std::make_unique<Metrics>(backend_->name(), QUANTD_VERSION);

    SchedulerOptions scheduler_options;
    scheduler_options.workers = options_.workers;
    scheduler_options.max_queue = options_.max_queue;
    scheduler_options.on_queue_depth = [metrics = metrics_.get()](int64_t depth) {
      metrics->SetQueueDepth(depth);
    };
    scheduler_options.before_task_for_testing = options_.before_task_for_testing;
    scheduler_ = std::make_unique<Scheduler>(std::move(scheduler_options));

    CoreOptions core_options;
    core_options.max_tensor_bytes = options_.max_tensor_bytes;
    core_options.max_message_bytes = options_.max_message_bytes;
    core_options.max_weight_bytes = options_.max_weight_bytes;  // 0: the core's default
    core_options.max_queue = options_.max_queue;
    core_options.workers = scheduler_->workers();
    core_options.stream_chunk_bytes = options_.stream_chunk_bytes;
    core_ = std::make_unique<QuantizerCore>(backend_.get(), core_options);

    budget_ = std::make_unique<ByteBudget>(options_.max_inflight_bytes, metrics_.get());
    state_.options = &options_;
    state_.core = core_.get();
    state_.scheduler = scheduler_.get();
    state_.metrics = metrics_.get();
    state_.budget = budget_.get();
    state_.frame_data_bytes = options_.stream_chunk_bytes - kFrameOverheadBytes;
    service_ = std::make_unique<QuantizerService>(state_);
    return absl::OkStatus();
  }

  [[nodiscard]] absl::Status Start() {
    absl::MutexLock lock(&mu_);
    if (started_) return absl::FailedPreconditionError("Start was already called");
    if (shutdown_started_) return absl::FailedPreconditionError("the server was shut down");
    if (!options_.metrics_address.empty()) {
      try {
        exposer_ = std::make_unique<prometheus::Exposer>(options_.metrics_address);
      } catch (const std::exception& e) {
        return absl::UnavailableError(absl::StrCat("cannot serve /metrics on ",
                                                   options_.metrics_address, ": ", e.what(),
                                                   " (--metrics-listen; empty disables it)"));
      }
      exposer_->RegisterCollectable(metrics_->registry());
      device_collector_ = std::make_shared<DeviceCollector>(backend_.get());
      exposer_->RegisterCollectable(device_collector_);
      weight_collector_ = std::make_shared<WeightCollector>(core_.get());
      exposer_->RegisterCollectable(weight_collector_);
      const std::vector<int> ports = exposer_->GetListeningPorts();
      metrics_port_ = ports.empty() ? 0 : ports.front();
    }

    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    builder.AddListeningPort(options_.listen_address, grpc::InsecureServerCredentials(),
                             &bound_port_);
    builder.RegisterService(service_.get());
    builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
    builder.SetMaxSendMessageSize(static_cast<int>(options_.max_message_bytes));
    // gRPC sets SO_REUSEPORT by default: a second quantd on the same port would start fine and
    // silently take half the traffic. A busy address must be an error instead.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr || bound_port_ == 0) {
      grpc_server_.reset();
      exposer_.reset();
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen_address,
                                                 " (--listen): address in use or invalid"));
    }
    if (grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService()) {
      health->SetServingStatus(true);
      health->SetServingStatus(kServiceName, true);
    }
    started_ = true;
    if (options_.log_to_stderr) {
      Log(absl::StrFormat(
          "serving quantd.v1.Quantizer %s on %s (port %d), metrics on %s, backend %s (%s), "
          "workers %d, max-queue %d, max-message-bytes %d, max-tensor-bytes %d, "
          "stream-chunk-bytes %d, max-inflight-bytes %d",
          QUANTD_VERSION, options_.listen_address, bound_port_,
          options_.metrics_address.empty()
              ? std::string("(disabled)")
              : absl::StrCat(options_.metrics_address, " (port ", metrics_port_, ")"),
          backend_->name(), backend_note_, scheduler_->workers(), options_.max_queue,
          options_.max_message_bytes, options_.max_tensor_bytes, options_.stream_chunk_bytes,
          options_.max_inflight_bytes));
    }
    return absl::OkStatus();
  }

  void Shutdown(absl::Time deadline) {
    bool first;
    {
      absl::MutexLock lock(&mu_);
      first = !shutdown_started_;
      shutdown_started_ = true;
    }
    if (!first) {
      shutdown_done_.WaitForNotification();
      return;
    }
    if (grpc_server_ != nullptr) {
      if (options_.log_to_stderr) Log("draining: refusing new calls, finishing calls in flight");
      // NOT_SERVING for watchers, and the health service ends its Watch streams, which would
      // otherwise hold the drain until the deadline.
      if (grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService()) {
        health->SetServingStatus(false);
        health->Shutdown();
      }
      // Waits for calls in flight until `deadline`, then cancels the rest; the scheduler keeps
      // running meanwhile so that queued calls complete.
      grpc_server_->Shutdown(absl::ToChronoTime(deadline));
      grpc_server_->Wait();
    }
    if (scheduler_ != nullptr) scheduler_->Shutdown();
    exposer_.reset();
    if (grpc_server_ != nullptr && options_.log_to_stderr) Log("stopped");
    shutdown_done_.Notify();
  }

  void Wait() { shutdown_done_.WaitForNotification(); }

  int bound_port() const { return bound_port_; }
  int metrics_port() const { return metrics_port_; }
  absl::string_view backend_name() const { return backend_->name(); }
  const std::string& backend_note() const { return backend_note_; }
  int64_t queue_depth() const { return scheduler_->queue_depth(); }
  const ServerOptions& options() const { return options_; }

 private:
  [[nodiscard]] absl::Status CreateBackend() {
    const int devices = CudaDeviceCount();
    if (options_.backend == BackendChoice::kCuda ||
        (options_.backend == BackendChoice::kAuto && devices > 0)) {
      if (devices == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("--backend=cuda but no CUDA device is visible",
                         CudaBackendBuilt() ? " (check the driver and CUDA_VISIBLE_DEVICES)"
                                            : " (this quantd was built without CUDA)",
                         "; use --backend=cpu or --backend=auto"));
      }
      CudaBackendOptions cuda_options;
      cuda_options.streams_per_device = options_.cuda_streams_per_device;
      cuda_options.device_memory_cap = options_.cuda_memory_cap_bytes;
      cuda_options.host_max_elements = options_.cuda_host_max_elements;
      cuda_options.upload_min_bytes = options_.cuda_upload_min_bytes;
      cuda_options.gemm_algorithm_cache = options_.cuda_gemm_algorithm_cache;
      absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateCudaBackend(cuda_options);
      if (cuda.ok()) {
        backend_ = *std::move(cuda);
        backend_note_ = absl::StrCat("--backend=", BackendChoiceName(options_.backend), ": ",
                                     devices, " CUDA device(s)");
        return absl::OkStatus();
      }
      if (options_.backend == BackendChoice::kCuda) {
        return absl::Status(cuda.status().code(),
                            absl::StrCat("--backend=cuda: ", cuda.status().message()));
      }
      backend_note_ = absl::StrCat("--backend=auto: ", devices,
                                   " CUDA device(s) visible but the CUDA backend failed (",
                                   cuda.status().message(), "), using cpu");
    } else if (options_.backend == BackendChoice::kAuto) {
      backend_note_ = CudaBackendBuilt() ? "--backend=auto: no CUDA device visible, using cpu"
                                         : "--backend=auto: built without CUDA, using cpu";
    } else {
      backend_note_ = "--backend=cpu";
    }
    executor_ = CreateThreadPoolExecutor(options_.threads);
    backend_ = CreateReferenceBackend(executor_.get());
    if (backend_ == nullptr) return absl::InternalError("the CPU backend could not be created");
    return absl::OkStatus();
  }

  ServerOptions options_;
  // Destruction runs bottom-up: the service and gRPC server go before the scheduler, core,
  // backend and executor they use.
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Backend> backend_;
  std::string backend_note_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<QuantizerCore> core_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ByteBudget> budget_;
  ServiceState state_;
  std::unique_ptr<QuantizerService> service_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<DeviceCollector> device_collector_;  // reads backend_, registered with exposer_
  std::shared_ptr<WeightCollector> weight_collector_;  // reads core_, registered with exposer_
  std::unique_ptr<grpc::Server> grpc_server_;
  int bound_port_ = 0;
  int metrics_port_ = 0;
  absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool shutdown_started_ ABSL_GUARDED_BY(mu_) = false;
  absl::Notification shutdown_done_;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Create(ServerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  QUANTD_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

absl::Status Server::Start() { return impl_->Start(); }
void Server::Shutdown(absl::Time deadline) { impl_->Shutdown(deadline); }
void Server::Wait() { impl_->Wait(); }
int Server::bound_port() const { return impl_->bound_port(); }
int Server::metrics_port() const { return impl_->metrics_port(); }
absl::string_view Server::backend_name() const { return impl_->backend_name(); }
const std::string& Server::backend_note() const { return impl_->backend_note(); }
int64_t Server::queue_depth() const { return impl_->queue_depth(); }
const ServerOptions& Server::options() const { return impl_->options(); }

}  // namespace quantd::server
