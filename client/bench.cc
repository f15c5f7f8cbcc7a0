// quantctl bench: see bench.h.
#include "bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "client.h"
#include "quantd/backend.h"
#include "quantd/executor.h"
#include "quantd/spec.h"
#include "quantd/status.h"
#include "quantd/v1/quantd.grpc.pb.h"
#include "service_core.h"

namespace quantd {
namespace {

constexpr int kMaxConcurrency = 1024;
// Columns of a benchmark tensor when they divide it: a transformer hidden size.
constexpr int64_t kHiddenSize = 4096;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
  }
}

int64_t VarintSize(uint64_t value) {
  int64_t size = 1;
  for (; value >= 128; value >>= 7) ++size;
  return size;
}

// Serialized size of a bytes field numbered below 16 holding `n` bytes (proto3 omits it empty).
int64_t BytesFieldSize(int64_t n) { return n == 0 ? 0 : 1 + VarintSize(n) + n; }

// The largest payload whose bytes field, plus `other_fields` bytes, fits in `total`: the echo
// message as large as the op's (exactly, except at a varint length boundary).
int64_t PayloadFor(int64_t total, int64_t other_fields) {
  int64_t n = std::max<int64_t>(total - other_fields - 11, 0);  // 11 >= tag + any length
  while (BytesFieldSize(n + 1) + other_fields <= total) ++n;
  return n;
}

std::string SizeName(int64_t bytes) {
  static constexpr std::pair<int, const char*> kUnits[] = {{30, "GiB"}, {20, "MiB"}, {10, "KiB"}};
  for (const auto& [shift, unit] : kUnits) {
    if (bytes >= (int64_t{1} << shift) && bytes % (int64_t{1} << shift) == 0) {
      return absl::StrCat(bytes >> shift, " ", unit);
    }
  }
  return absl::StrCat(bytes, " B");
}

std::string Latency(double us) { return absl::StrFormat(us < 100 ? "%.1f" : "%.0f", us); }

absl::Status CheckLength(absl::string_view rpc, absl::string_view what, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) == want) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("the server answered ", rpc, " with ", got, " bytes of ",
                                          what, " where the request needs ", want,
                                          "; a broken answer is not benchmarked"));
}

// One client connection; its stub (unary calls) and, for streamed cells, a client library
// instance on a connection of its own.
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Quantizer::Stub> stub;
  std::unique_ptr<Client> client;
};

// Makes one call on `connection` and checks its answer; sets `bytes` to the serialized
// request + response bytes. Called from every client thread at once.
using CallFn = std::function<absl::Status(Connection& connection, int64_t* bytes)>;

template <typename Request, typename Response>
using StubMethod = grpc::Status (v1::Quantizer::Stub::*)(grpc::ClientContext*, const Request&,
                                                         Response*);
template <typename Request, typename Response>
using ClientMethod = absl::StatusOr<Response> (Client::*)(Request);

// `request` must outlive the returned function.
template <typename Request, typename Response>
CallFn OpCall(const Request* request, bool streamed, StubMethod<Request, Response> unary,
              ClientMethod<Request, Response> through_client,
              std::function<absl::Status(const Response&)> check, absl::Duration timeout) {
  const int64_t request_bytes = static_cast<int64_t>(request->ByteSizeLong());
  return [=](Connection& connection, int64_t* bytes) -> absl::Status {
    Response response;
    if (streamed) {
      // The library takes requests by value: this copy is part of its streamed path.
      QUANTD_ASSIGN_OR_RETURN(response, ((*connection.client).*through_client)(*request));
    } else {
      grpc::ClientContext context;
      SetDeadline(&context, timeout);
      QUANTD_RETURN_IF_ERROR(FromGrpc(((*connection.stub).*unary)(&context, *request, &response)));
    }
    QUANTD_RETURN_IF_ERROR(check(response));
    *bytes = request_bytes + static_cast<int64_t>(response.ByteSizeLong());
    return absl::OkStatus();
  };
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// `concurrency` threads call `call` back to back: until `warmup` has passed (at least once
// each, which also opens the connections), then, all starting together, for `duration`.
absl::StatusOr<PhaseStats> RunPhase(std::vector<Connection>& connections, int concurrency,
                                    const CallFn& call, absl::Duration warmup,
                                    absl::Duration duration) {
  std::vector<std::vector<double>> latencies(concurrency);
  std::vector<int64_t> bytes(concurrency, 0);
  std::vector<absl::Status> errors(concurrency);
  absl::BlockingCounter warmed(concurrency);
  absl::Notification go;
  absl::Time end;  // written before `go` is notified, read after
  const absl::Time warm_end = absl::Now() + warmup;
  std::vector<std::thread> threads;
  threads.reserve(concurrency);
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      Connection& connection = connections[t % connections.size()];
      int64_t ignored = 0;
      do {
        errors[t] = call(connection, &ignored);
      } while (errors[t].ok() && absl::Now() < warm_end);
      warmed.DecrementCount();
      go.WaitForNotification();
      while (errors[t].ok() && absl::Now() < end) {
        const auto start = std::chrono::steady_clock::now();
        int64_t call_bytes = 0;
        errors[t] = call(connection, &call_bytes);
        const auto stop = std::chrono::steady_clock::now();
        latencies[t].push_back(std::chrono::duration<double, std::micro>(stop - start).count());
        bytes[t] += call_bytes;
      }
    });
  }
  warmed.Wait();
  const absl::Time start = absl::Now();
  end = start + duration;
  go.Notify();
  for (std::thread& thread : threads) thread.join();
  const absl::Duration elapsed = absl::Now() - start;
  for (const absl::Status& error : errors) QUANTD_RETURN_IF_ERROR(error);

  std::vector<double> all;
  PhaseStats stats;
  for (int t = 0; t < concurrency; ++t) {
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
    stats.bytes += bytes[t];
  }
  std::sort(all.begin(), all.end());
  stats.calls = static_cast<int64_t>(all.size());
  stats.p50_us = Percentile(all, 0.50);
  stats.p90_us = Percentile(all, 0.90);
  stats.p99_us = Percentile(all, 0.99);
  stats.seconds = absl::ToDoubleSeconds(elapsed);
  return stats;
}

v1::Tensor RandomInput(const Shape& shape, v1::DType dtype, uint64_t seed) {
  const auto kind = static_cast<DType>(dtype);
  int64_t numel = 1;
  for (int64_t dim : shape) numel *= dim;
  v1::Tensor tensor;
  tensor.set_dtype(dtype);
  for (int64_t dim : shape) tensor.add_shape(dim);
  std::string* data = tensor.mutable_data();
  data->resize(static_cast<size_t>(numel * DTypeSize(kind)));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < numel; ++i) StoreFromFloat(kind, data->data(), i, normal(rng));
  return tensor;
}

// What one size is measured with: the op's request and call, the echo mirroring its bytes.
struct Workload {
  Shape shape;
  bool streamed = false;
  v1::QuantizeRequest quantize;
  v1::DequantizeRequest dequantize;
  v1::QuantDequantRequest quant_dequant;
  server::RequestPlan plan;
  CallFn op;
  v1::EchoRequest echo;
  int64_t echo_payload_back = 0;
};

class Bench {
 public:
  explicit Bench(const BenchOptions& options)
      : options_(options),
        executor_(CreateThreadPoolExecutor(/*threads=*/1)),
        backend_(CreateReferenceBackend(executor_.get())),
        core_(backend_.get(), server::CoreOptions{}) {}

  absl::StatusOr<BenchReport> Run() {
    QUANTD_RETURN_IF_ERROR(CheckOptions());
    BenchReport report;
    report.target = options_.target;
    report.op = std::string(BenchOpName(options_.op));
    report.dtype = absl::AsciiStrToLower(DTypeName(static_cast<DType>(options_.dtype)));
    report.skip_metrics = options_.skip_metrics;
    report.connections = options_.connections;
    report.warmup = options_.warmup;
    report.duration = options_.duration;

    // The spec against every size's shape, here, before the first call.
    for (int64_t size : options_.sizes) {
      v1::QuantizeRequest probe;
      probe.mutable_input()->set_dtype(options_.dtype);
      for (int64_t dim : BenchShape(size / DTypeSize(static_cast<DType>(options_.dtype)))) {
        probe.mutable_input()->add_shape(dim);
      }
      *probe.mutable_spec() = options_.spec;
      absl::StatusOr<server::RequestPlan> plan =
          core_.PlanQuantize(probe, server::DataCheck::kAtMost);
      if (!plan.ok()) {
        return absl::Status(plan.status().code(),
                            absl::StrCat(SizeName(size), " tensor: ", plan.status().message()));
      }
      report.spec = SpecToString(plan->spec);
    }

    ClientOptions control_options;
    control_options.target = options_.target;
    control_options.timeout = options_.timeout;
    control_options.chunk_bytes = options_.chunk_bytes;
    QUANTD_ASSIGN_OR_RETURN(control_, Client::Create(control_options));
    QUANTD_ASSIGN_OR_RETURN(const v1::GetCapabilitiesResponse capabilities,
                            control_->GetCapabilities());
    report.version = capabilities.version();
    report.backend = capabilities.active_backend();
    report.workers = capabilities.limits().workers();
    report.max_message_bytes = capabilities.limits().max_message_bytes();
    unary_limit_ = std::max<int64_t>(report.max_message_bytes - kMessageMarginBytes, 1 << 10);

    const int threads = *std::max_element(options_.concurrency.begin(), options_.concurrency.end());
    const int count = options_.connections > 0 ? options_.connections : threads;
    connections_.resize(count);
    for (Connection& connection : connections_) {
      ClientOptions channel_options;
      channel_options.target = options_.target;
      channel_options.dedicated_connection = true;
      QUANTD_ASSIGN_OR_RETURN(connection.channel, CreateChannel(channel_options));
      connection.stub = v1::Quantizer::NewStub(connection.channel);
    }

    for (int64_t size : options_.sizes) {
      Workload work;
      QUANTD_RETURN_IF_ERROR(Prepare(size, &work));
      for (int concurrency : options_.concurrency) {
        BenchCell cell;
        cell.size_bytes = size;
        cell.shape = work.shape;
        cell.concurrency = concurrency;
        cell.streamed = work.streamed;
        cell.request_bytes = request_bytes_;
        cell.response_bytes = response_bytes_;
        QUANTD_ASSIGN_OR_RETURN(cell.op, RunPhase(connections_, concurrency, work.op,
                                                  options_.warmup, options_.duration));
        Report(cell, report.op, cell.op);
        if (!work.streamed) {
          QUANTD_ASSIGN_OR_RETURN(cell.echo, RunPhase(connections_, concurrency, EchoCall(work),
                                                      options_.warmup, options_.duration));
          Report(cell, "echo", *cell.echo);
        }
        report.cells.push_back(std::move(cell));
      }
    }
    return report;
  }

 private:
  absl::Status CheckOptions() const {
    const BenchOptions& o = options_;
    if (o.target.empty()) {
      return absl::InvalidArgumentError(
          "bench measures a server: give --server=HOST:PORT (scripts/service_bench.sh starts "
          "one)");
    }
    if (o.dtype != v1::DTYPE_F32 && o.dtype != v1::DTYPE_F16 && o.dtype != v1::DTYPE_BF16) {
      return absl::InvalidArgumentError("the bench's dtype must be f32, f16 or bf16");
    }
    const int element = DTypeSize(static_cast<DType>(o.dtype));
    if (o.sizes.empty()) return absl::InvalidArgumentError("--sizes is empty; e.g. 4K,1M,64M");
    for (int64_t size : o.sizes) {
      if (size < element || size % element != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("size ", size, " is not a positive multiple of the ", element,
                         "-byte elements of ", DTypeName(static_cast<DType>(o.dtype))));
      }
    }
    if (o.concurrency.empty()) return absl::InvalidArgumentError("--concurrency is empty");
    for (int c : o.concurrency) {
      if (c < 1 || c > kMaxConcurrency) {
        return absl::InvalidArgumentError(
            absl::StrCat("concurrency ", c, " is outside [1, ", kMaxConcurrency, "]"));
      }
    }
    if (o.connections < 0 || o.connections > kMaxConcurrency) {
      return absl::InvalidArgumentError(absl::StrCat("--connections is ", o.connections,
                                                     "; it must be in [0, ", kMaxConcurrency,
                                                     "] (0: one per client thread)"));
    }
    if (o.duration <= absl::ZeroDuration() || o.warmup < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--duration is ", absl::FormatDuration(o.duration), " and --warmup ",
                       absl::FormatDuration(o.warmup), "; the first must be > 0, the second >= 0"));
    }
    return absl::OkStatus();
  }

  // Builds the op's request for `size` bytes of input, decides unary or streamed, makes one
  // probe call (its answer sizes the echo) and builds the echo.
  absl::Status Prepare(int64_t size, Workload* work) {
    const DType dtype = static_cast<DType>(options_.dtype);
    work->shape = BenchShape(size / DTypeSize(dtype));
    v1::Tensor input = RandomInput(work->shape, options_.dtype, options_.seed);
    const std::string rpc(BenchOpName(options_.op));
    int64_t request_bytes = 0;
    switch (options_.op) {
      case BenchOp::kQuantize: {
        v1::QuantizeRequest& request = work->quantize;
        *request.mutable_input() = std::move(input);
        *request.mutable_spec() = options_.spec;
        request.set_skip_metrics(options_.skip_metrics);
        QUANTD_ASSIGN_OR_RETURN(work->plan, core_.PlanQuantize(request, server::DataCheck::kExact));
        request_bytes = static_cast<int64_t>(request.ByteSizeLong());
        work->streamed = Streamed(request_bytes, work->plan.output_bytes);
        const server::RequestPlan& plan = work->plan;
        work->op = OpCall<v1::QuantizeRequest, v1::QuantizeResponse>(
            &request, work->streamed, &v1::Quantizer::Stub::Quantize, &Client::Quantize,
            [plan](const v1::QuantizeResponse& response) -> absl::Status {
              const v1::QuantizedTensor& q = response.quantized();
              QUANTD_RETURN_IF_ERROR(
                  CheckLength("Quantize", "codes", q.codes().data().size(), plan.code_bytes));
              QUANTD_RETURN_IF_ERROR(
                  CheckLength("Quantize", "scales", q.scales().data().size(), plan.scale_bytes));
              return CheckLength("Quantize", "zero-points", q.zero_points().data().size(),
                                 plan.zero_point_bytes);
            },
            options_.timeout);
        break;
      }
      case BenchOp::kDequantize: {
        // The codes to dequantize: the server's own quantization of the input.
        v1::QuantizeRequest quantize;
        *quantize.mutable_input() = std::move(input);
        *quantize.mutable_spec() = options_.spec;
        quantize.set_skip_metrics(true);
        QUANTD_ASSIGN_OR_RETURN(v1::QuantizeResponse quantized,
                                control_->Quantize(std::move(quantize)));
        v1::DequantizeRequest& request = work->dequantize;
        *request.mutable_quantized() = std::move(*quantized.mutable_quantized());
        request.set_output_dtype(options_.dtype);
        QUANTD_ASSIGN_OR_RETURN(work->plan,
                                core_.PlanDequantize(request, server::DataCheck::kExact));
        request_bytes = static_cast<int64_t>(request.ByteSizeLong());
        work->streamed = Streamed(request_bytes, work->plan.output_bytes);
        const int64_t want = work->plan.output_bytes;
        work->op = OpCall<v1::DequantizeRequest, v1::DequantizeResponse>(
            &request, work->streamed, &v1::Quantizer::Stub::Dequantize, &Client::Dequantize,
            [want](const v1::DequantizeResponse& response) {
              return CheckLength("Dequantize", "output", response.output().data().size(), want);
            },
            options_.timeout);
        break;
      }
      case BenchOp::kQuantDequant: {
        v1::QuantDequantRequest& request = work->quant_dequant;
        *request.mutable_input() = std::move(input);
        *request.mutable_spec() = options_.spec;
        request.set_output_dtype(options_.dtype);
        request.set_skip_metrics(options_.skip_metrics);
        QUANTD_ASSIGN_OR_RETURN(work->plan,
                                core_.PlanQuantDequant(request, server::DataCheck::kExact));
        request_bytes = static_cast<int64_t>(request.ByteSizeLong());
        work->streamed = Streamed(request_bytes, work->plan.output_bytes);
        const int64_t want = work->plan.output_bytes;
        work->op = OpCall<v1::QuantDequantRequest, v1::QuantDequantResponse>(
            &request, work->streamed, &v1::Quantizer::Stub::QuantDequant, &Client::QuantDequant,
            [want](const v1::QuantDequantResponse& response) {
              return CheckLength("QuantDequant", "output", response.output().data().size(), want);
            },
            options_.timeout);
        break;
      }
    }

    if (work->streamed) {
      for (Connection& connection : connections_) {
        if (connection.client != nullptr) continue;
        ClientOptions client_options;
        client_options.target = options_.target;
        client_options.timeout = options_.timeout;
        client_options.chunk_bytes = options_.chunk_bytes;
        client_options.unary_limit_bytes = unary_limit_;
        client_options.dedicated_connection = true;
        QUANTD_ASSIGN_OR_RETURN(connection.client, Client::Create(client_options));
      }
    }
    int64_t probe_bytes = 0;
    QUANTD_RETURN_IF_ERROR(work->op(connections_.front(), &probe_bytes));
    request_bytes_ = request_bytes;
    response_bytes_ = probe_bytes - request_bytes;
    if (work->streamed) return absl::OkStatus();

    // Same serialized sizes as the op's request and response. response_bytes = 0 would mean
    // "the payload back", so the smallest explicit answer is one byte.
    work->echo_payload_back = std::max<int64_t>(PayloadFor(response_bytes_, 0), 1);
    const int64_t response_field = 1 + VarintSize(static_cast<uint64_t>(work->echo_payload_back));
    work->echo.mutable_payload()->assign(
        static_cast<size_t>(PayloadFor(request_bytes_, response_field)), 'q');
    work->echo.set_response_bytes(work->echo_payload_back);
    return absl::OkStatus();
  }

  CallFn EchoCall(const Workload& work) const {
    const v1::EchoRequest* request = &work.echo;
    const int64_t request_bytes = static_cast<int64_t>(request->ByteSizeLong());
    const int64_t want = work.echo_payload_back;
    const absl::Duration timeout = options_.timeout;
    return [=](Connection& connection, int64_t* bytes) -> absl::Status {
      grpc::ClientContext context;
      SetDeadline(&context, timeout);
      v1::EchoResponse response;
      QUANTD_RETURN_IF_ERROR(FromGrpc(connection.stub->Echo(&context, *request, &response)));
      QUANTD_RETURN_IF_ERROR(CheckLength("Echo", "payload", response.payload().size(), want));
      *bytes = request_bytes + static_cast<int64_t>(response.ByteSizeLong());
      return absl::OkStatus();
    };
  }

  bool Streamed(int64_t request_bytes, int64_t response_payload_bytes) const {
    return request_bytes > unary_limit_ || response_payload_bytes > unary_limit_;
  }

  void Report(const BenchCell& cell, absl::string_view what, const PhaseStats& stats) const {
    if (!options_.progress) return;
    options_.progress(absl::StrFormat(
        "%s %s x %d: %s %d calls, p50 %s us, p99 %s us, %.3f GB/s, %.0f calls/s",
        SizeName(cell.size_bytes), ShapeToString(cell.shape), cell.concurrency, what, stats.calls,
        Latency(stats.p50_us), Latency(stats.p99_us), stats.gb_per_s(), stats.calls_per_s()));
  }

  const BenchOptions& options_;
  // The server's validation, run here: the expected byte lengths of every answer.
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Backend> backend_;
  server::QuantizerCore core_;
  std::unique_ptr<Client> control_;
  std::vector<Connection> connections_;
  int64_t unary_limit_ = 0;
  int64_t request_bytes_ = 0;
  int64_t response_bytes_ = 0;
};

std::string JsonPhase(const PhaseStats& s) {
  return absl::StrFormat(
      "{\"calls\": %d, \"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"seconds\": %.6f, "
      "\"bytes\": %d, \"gb_per_s\": %.6f, \"calls_per_s\": %.3f}",
      s.calls, s.p50_us, s.p90_us, s.p99_us, s.seconds, s.bytes, s.gb_per_s(), s.calls_per_s());
}

// A JSON string literal of text that holds no quotes, backslashes or control characters
// except where they are escaped here.
std::string JsonString(absl::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      absl::StrAppend(&out, "\\", std::string(1, c));
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppend(&out, absl::StrFormat("\\u%04x", static_cast<int>(c)));
    } else {
      out.push_back(c);
    }
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<BenchOp> BenchOpFromName(absl::string_view name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  if (lowered == "quantize") return BenchOp::kQuantize;
  if (lowered == "dequantize") return BenchOp::kDequantize;
  if (lowered == "quantdequant") return BenchOp::kQuantDequant;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --op=", name, "; accepted: quantize, dequantize, quantdequant"));
}

absl::string_view BenchOpName(BenchOp op) {
  switch (op) {
    case BenchOp::kQuantize:
      return "quantize";
    case BenchOp::kDequantize:
      return "dequantize";
    case BenchOp::kQuantDequant:
      return "quantdequant";
  }
  return "quantize";
}

absl::StatusOr<std::vector<int64_t>> ParseByteSizes(absl::string_view text) {
  std::vector<int64_t> sizes;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string number(absl::StripAsciiWhitespace(item));
    const std::string lowered_text = absl::AsciiStrToLower(number);
    absl::string_view lowered = lowered_text;
    if (!absl::ConsumeSuffix(&lowered, "ib")) absl::ConsumeSuffix(&lowered, "b");
    int shift = 0;
    if (!lowered.empty()) {
      switch (lowered.back()) {
        case 'k':
          shift = 10;
          break;
        case 'm':
          shift = 20;
          break;
        case 'g':
          shift = 30;
          break;
        default:
          break;
      }
      if (shift != 0) lowered.remove_suffix(1);
    }
    int64_t value = 0;
    if (!absl::SimpleAtoi(lowered, &value) || value <= 0 || value > (int64_t{1} << (40 - shift))) {
      return absl::InvalidArgumentError(
          absl::StrCat("size \"", number, "\" is not a byte count such as 4096, 4K, 64M or 1G"));
    }
    sizes.push_back(value << shift);
  }
  if (sizes.empty()) return absl::InvalidArgumentError("no sizes given; e.g. 4K,1M,64M");
  return sizes;
}

absl::StatusOr<std::vector<int>> ParseConcurrency(absl::string_view text) {
  std::vector<int> levels;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int value = 0;
    if (!absl::SimpleAtoi(item, &value) || value < 1 || value > kMaxConcurrency) {
      return absl::InvalidArgumentError(absl::StrCat("concurrency \"", item,
                                                     "\" is not a number of client threads in [1, ",
                                                     kMaxConcurrency, "]"));
    }
    levels.push_back(value);
  }
  if (levels.empty()) return absl::InvalidArgumentError("no concurrency given; e.g. 1,4,16");
  return levels;
}

Shape BenchShape(int64_t elements) {
  if (elements >= kHiddenSize && elements % kHiddenSize == 0) {
    return {elements / kHiddenSize, kHiddenSize};
  }
  return {1, elements};
}

std::optional<double> BenchCell::ratio() const {
  if (!echo.has_value() || echo->gb_per_s() <= 0) return std::nullopt;
  return op.gb_per_s() / echo->gb_per_s();
}

absl::StatusOr<BenchReport> RunBench(const BenchOptions& options) {
  Bench bench(options);
  return bench.Run();
}

std::string BenchMarkdown(const BenchReport& r) {
  std::string out = absl::StrFormat(
      "`quantctl bench`: %s %s (%s) of %s tensors on %s (quantd %s, backend %s, workers %d); "
      "each cell: %s of warm-up, then %s of calls by each of `clients` threads with one call in "
      "flight, for the op and then for an Echo carrying the op's request and response bytes "
      "(the transport alone). %s. GB/s counts serialized request + response bytes (10^9/s); "
      "op/echo is the ratio of their throughputs; \"stream\" cells exceed the %s message limit "
      "and have no echo.\n\n",
      r.op, r.spec, r.skip_metrics ? "no metrics" : "with metrics", r.dtype, r.target, r.version,
      r.backend, r.workers, absl::FormatDuration(r.warmup), absl::FormatDuration(r.duration),
      r.connections == 0 ? "One connection per client thread"
                         : absl::StrCat("Client threads share ", r.connections, " connection(s)"),
      SizeName(r.max_message_bytes));
  absl::StrAppend(&out,
                  "| size | shape | clients | path | bytes/call | op calls | op p50 us | op p90 us "
                  "| op p99 us | op GB/s | op calls/s | echo calls | echo p50 us | echo p90 us "
                  "| echo p99 us | echo GB/s | echo calls/s | op/echo |\n",
                  "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
  constexpr char kNone[] = "—";
  for (const BenchCell& c : r.cells) {
    absl::StrAppend(
        &out, absl::StrFormat("| %s | %s | %d | %s | %d | %d | %s | %s | %s | %.3f | %.0f |",
                              SizeName(c.size_bytes), ShapeToString(c.shape), c.concurrency,
                              c.streamed ? "stream" : "unary", c.request_bytes + c.response_bytes,
                              c.op.calls, Latency(c.op.p50_us), Latency(c.op.p90_us),
                              Latency(c.op.p99_us), c.op.gb_per_s(), c.op.calls_per_s()));
    if (c.echo.has_value()) {
      const PhaseStats& e = *c.echo;
      const std::optional<double> ratio = c.ratio();
      absl::StrAppend(&out, absl::StrFormat(" %d | %s | %s | %s | %.3f | %.0f | %s |\n", e.calls,
                                            Latency(e.p50_us), Latency(e.p90_us), Latency(e.p99_us),
                                            e.gb_per_s(), e.calls_per_s(),
                                            ratio ? absl::StrFormat("%.2f", *ratio) : kNone));
    } else {
      absl::StrAppend(&out, " ", absl::StrJoin(std::vector<const char*>(7, kNone), " | "), " |\n");
    }
  }
  return out;
}

std::string BenchJson(const BenchReport& r) {
  std::vector<std::string> cells;
  for (const BenchCell& c : r.cells) {
    const std::optional<double> ratio = c.ratio();
    cells.push_back(absl::StrFormat(
        "{\"size_bytes\": %d, \"shape\": [%s], \"concurrency\": %d, \"streamed\": %s, "
        "\"request_bytes\": %d, \"response_bytes\": %d, \"op\": %s, \"echo\": %s, "
        "\"op_over_echo\": %s}",
        c.size_bytes, absl::StrJoin(c.shape, ", "), c.concurrency, c.streamed ? "true" : "false",
        c.request_bytes, c.response_bytes, JsonPhase(c.op), c.echo ? JsonPhase(*c.echo) : "null",
        ratio ? absl::StrFormat("%.6f", *ratio) : "null"));
  }
  return absl::StrFormat(
      "{\"target\": %s, \"op\": %s, \"spec\": %s, \"dtype\": %s, \"skip_metrics\": %s, "
      "\"version\": %s, \"backend\": %s, \"workers\": %d, \"max_message_bytes\": %d, "
      "\"connections\": %d, \"warmup_s\": %.6f, \"duration_s\": %.6f, \"cells\": [%s]}\n",
      JsonString(r.target), JsonString(r.op), JsonString(r.spec), JsonString(r.dtype),
      r.skip_metrics ? "true" : "false", JsonString(r.version), JsonString(r.backend), r.workers,
      r.max_message_bytes, r.connections, absl::ToDoubleSeconds(r.warmup),
      absl::ToDoubleSeconds(r.duration), absl::StrJoin(cells, ", "));
}

}  // namespace quantd
