// The service benchmark behind `quantctl bench`: latency percentiles and throughput of one
// quantd operation over payload sizes and client concurrency, each cell measured next to an
// Echo of the same bytes (the transport alone, no quantization) in the same run, so that the
// ratio op/echo says what quantd costs on top of gRPC on this machine and network.
//
//   BenchOptions options;
//   options.target = "127.0.0.1:50051";
//   options.spec.set_descriptor_string("int8");
//   options.sizes = {4 << 10, 1 << 20};
//   options.concurrency = {1, 4};
//   QUANTD_ASSIGN_OR_RETURN(BenchReport report, RunBench(options));
//   std::cout << BenchMarkdown(report);
//
// How a cell is measured. `concurrency` client threads each make synchronous calls back to back:
// first the op (warm-up, then `duration`), then Echo the same way. The Echo request carries as
// many serialized bytes as the op's request and asks for as many as the op's response, so both
// phases move the same bytes through the same connections. The threads share the requests
// (the generated stubs take them by const reference), so neither phase copies its payload on
// the client. Every op answer is checked (status OK, byte lengths of codes / scales /
// zero-points or of the output as the request's shape and spec require) so that a broken
// server cannot look fast.
//
// Connections. gRPC multiplexes every channel to one target over one HTTP/2 connection unless
// told otherwise, and one connection is served by one thread at a time on each side: with all
// client threads on it, the bench would measure that connection rather than the service. So
// each client thread gets a connection of its own by default (`connections` = 0), as separate
// client processes would have; `connections` = N spreads the threads over N connections
// (thread i on connection i mod N) to measure a shared channel instead.
//
// Sizes above the server's unary message limit go through the streamed RPCs of the client
// library (QuantizeStream / DequantizeStream), which copies the request into each call and
// into its frames; Echo has no streamed form, so those cells have no echo.
#ifndef QUANTD_CLIENT_BENCH_H_
#define QUANTD_CLIENT_BENCH_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "quantd/tensor.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd {

enum class BenchOp { kQuantize, kDequantize, kQuantDequant };

// "quantize", "dequantize", "quantdequant".
[[nodiscard]] absl::StatusOr<BenchOp> BenchOpFromName(absl::string_view name);
absl::string_view BenchOpName(BenchOp op);

// "4K,64K,1M,16M,64M" (K, M, G: binary multiples; an optional "iB" / "B" after them; plain
// numbers are bytes) -> bytes.
[[nodiscard]] absl::StatusOr<std::vector<int64_t>> ParseByteSizes(absl::string_view text);
// "1,4,16" -> {1, 4, 16}, each in [1, 1024].
[[nodiscard]] absl::StatusOr<std::vector<int>> ParseConcurrency(absl::string_view text);

// The shape a benchmark tensor of `elements` takes: [elements / 4096, 4096] when 4096 divides
// it (rows of a transformer hidden size), else [1, elements].
Shape BenchShape(int64_t elements);

struct BenchOptions {
  // HOST:PORT or any target quantd::Client accepts; required (the bench measures a server).
  std::string target;
  BenchOp op = BenchOp::kQuantize;
  // How to quantize (Dequantize benchmarks the dequantization of this spec's codes).
  v1::QuantSpec spec;
  // Element type of the float tensors sent (and of the dequantized outputs).
  v1::DType dtype = v1::DTYPE_F32;
  // Quantize / QuantDequant: skip the error metrics.
  bool skip_metrics = false;
  // Bytes of the float input tensor per call, a multiple of the dtype's size.
  std::vector<int64_t> sizes = {int64_t{4} << 10, int64_t{64} << 10, int64_t{1} << 20,
                                int64_t{16} << 20, int64_t{64} << 20};
  // Client threads, each with one call in flight.
  std::vector<int> concurrency = {1, 4, 16};
  // 0: one connection per client thread; N: the threads share N connections.
  int connections = 0;
  // Per phase (op, then echo) of each cell.
  absl::Duration warmup = absl::Milliseconds(200);
  absl::Duration duration = absl::Seconds(2);
  // Deadline of each call.
  absl::Duration timeout = absl::InfiniteDuration();
  // Payload bytes per stream frame (streamed cells).
  int64_t chunk_bytes = int64_t{4} << 20;
  // Of the random input values.
  uint64_t seed = 1;
  // Told one line per finished phase (progress for stderr); may be empty.
  std::function<void(const std::string&)> progress;
};

// One phase of a cell.
struct PhaseStats {
  int64_t calls = 0;
  double p50_us = 0;
  double p90_us = 0;
  double p99_us = 0;
  double seconds = 0;  // from the phase's start until its last call returned
  int64_t bytes = 0;   // serialized request + response bytes of all measured calls
  double gb_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
  double calls_per_s() const { return seconds > 0 ? static_cast<double>(calls) / seconds : 0; }
};

struct BenchCell {
  int64_t size_bytes = 0;
  Shape shape;
  int concurrency = 0;
  bool streamed = false;
  int64_t request_bytes = 0;   // serialized op request
  int64_t response_bytes = 0;  // serialized op response (of the probe call)
  PhaseStats op;
  std::optional<PhaseStats> echo;  // none for streamed cells
  // op / echo throughput; none without echo.
  std::optional<double> ratio() const;
};

struct BenchReport {
  std::string target;
  std::string op;     // "quantize", ...
  std::string spec;   // the resolved spec, e.g. "int8 tensor symmetric rne saturate"
  std::string dtype;  // "f32", ...
  bool skip_metrics = false;
  std::string version;  // the server's
  std::string backend;  // the server's active backend
  int64_t workers = 0;
  int64_t max_message_bytes = 0;
  int connections = 0;  // as in BenchOptions
  absl::Duration warmup;
  absl::Duration duration;
  std::vector<BenchCell> cells;
};

// Runs every size x concurrency cell against `options.target`. InvalidArgument for bad options
// (before any call), the server's status when a call fails, Internal when an answer has the
// wrong byte lengths.
[[nodiscard]] absl::StatusOr<BenchReport> RunBench(const BenchOptions& options);

// A paragraph naming what was measured, then one markdown table row per cell (as
// docs/PERFORMANCE.md shows it). Cells without echo show "—".
std::string BenchMarkdown(const BenchReport& report);
// The same as one JSON object.
std::string BenchJson(const BenchReport& report);

}  // namespace quantd

#endif  // QUANTD_CLIENT_BENCH_H_
