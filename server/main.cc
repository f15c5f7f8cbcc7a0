// quantd: the quantization service.
//
//   quantd --listen=0.0.0.0:50051 --metrics-listen=0.0.0.0:9090 --backend=auto --max-queue=256
//
// SIGTERM / SIGINT drain: new calls are refused, calls in flight finish (until
// --drain-timeout), then the process exits 0. A bad flag exits 2 with a message; a server that
// cannot start (no CUDA for --backend=cuda, an address in use) exits 1.
#include <pthread.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "server/server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address, HOST:PORT (port 0: any free port)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9090",
          "Prometheus /metrics address, HOST:PORT; empty disables it");
ABSL_FLAG(std::string, backend, "auto",
          "auto (CUDA when a GPU is visible, else CPU), cpu, or cuda (fail without a GPU)");
ABSL_FLAG(int, max_queue, 256,
          "validated requests allowed to wait for a worker; beyond, RESOURCE_EXHAUSTED");
ABSL_FLAG(int, workers, 0, "requests computed at once (0: one per hardware thread)");
ABSL_FLAG(int, threads, 0,
          "threads the CPU backend splits one request over (0: one per hardware thread)");
ABSL_FLAG(int64_t, max_message_bytes, int64_t{64} << 20,
          "largest unary request or response and largest stream frame, in bytes");
ABSL_FLAG(int64_t, max_tensor_bytes, int64_t{16} << 30,
          "largest tensor a request may involve (unary or streamed), in bytes");
ABSL_FLAG(int64_t, max_weight_bytes, 0,
          "bytes all registered GEMM weights (RegisterWeight) may hold together; beyond, "
          "RESOURCE_EXHAUSTED (0: half of the GPUs' memory cap, or 4 GiB on the CPU backend)");
ABSL_FLAG(int64_t, stream_chunk_bytes, int64_t{4} << 20,
          "largest response frame a stream sends, in bytes");
ABSL_FLAG(int64_t, max_inflight_bytes, int64_t{20} << 30,
          "bytes of tensors (input + output) all calls in flight together may hold");
ABSL_FLAG(int64_t, inline_max_bytes, int64_t{256} << 10,
          "unary requests with at most this many tensor bytes (input + output) compute on the "
          "receiving thread when a worker is idle, skipping the hand-off (0: never)");
ABSL_FLAG(int, cuda_streams_per_device, 4,
          "CUDA backend: streams per GPU, i.e. requests computed at once on one GPU");
ABSL_FLAG(int64_t, cuda_host_max_elements, 2048,
          "CUDA backend: tensors of at most this many elements are computed on the CPU "
          "(bit-identical, sooner than a GPU round trip); 0: every tensor on the GPU");
ABSL_FLAG(int64_t, cuda_upload_min_bytes, int64_t{16} << 20,
          "CUDA backend: a streamed tensor of at least this many bytes moves to the GPU while it "
          "arrives (0: never; then it is copied in once complete)");
ABSL_FLAG(std::string, cuda_gemm_algorithm_cache, "",
          "CUDA backend: a file where the GEMM's autotuned cuBLASLt algorithms persist across "
          "restarts (one per GPU: FILE.<PCI bus>); empty: each start tunes again");
ABSL_FLAG(int64_t, cuda_memory_cap_bytes, 0,
          "CUDA backend: device memory requests may hold at once, per GPU (0: 90% of what is "
          "free at start); beyond, RESOURCE_EXHAUSTED");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "on SIGTERM, how long calls in flight may take to finish before they are cancelled");

namespace {

constexpr int kExitBadFlag = 2;

void PrintUsage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--flag=value ...]\n\nflags:\n", argv0);
  std::vector<std::pair<absl::string_view, absl::CommandLineFlag*>> flags;
  for (const auto& entry : absl::GetAllFlags()) {
    if (absl::EndsWith(entry.second->Filename(), "server/main.cc")) flags.push_back(entry);
  }
  std::sort(flags.begin(), flags.end());
  for (const auto& [name, flag] : flags) {
    std::fprintf(stderr, "  --%s (default \"%s\")\n      %s\n",
                 absl::StrReplaceAll(name, {{"_", "-"}}).c_str(), flag->DefaultValue().c_str(),
                 flag->Help().c_str());
  }
}

// Parses --name=value and --name value; names may be spelled with '-' or '_'. Returns false
// (after printing why) on anything else. absl::ParseCommandLine would exit 1 on a bad flag;
// this exits 2, the usual code for a usage error, and accepts the dashed spelling.
bool ParseFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      PrintUsage(argv[0]);
      std::exit(0);
    }
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      std::fprintf(stderr,
                   "quantd: unexpected argument \"%s\"; flags look like --name=value "
                   "(--help lists them)\n",
                   argv[i]);
      return false;
    }
    arg.remove_prefix(2);
    const std::string spelled(arg.substr(0, arg.find('=')));
    std::string name = spelled;
    std::string value;
    bool has_value = arg.find('=') != absl::string_view::npos;
    if (has_value) value = std::string(arg.substr(arg.find('=') + 1));
    name = absl::StrReplaceAll(name, {{"-", "_"}});
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr || !absl::EndsWith(flag->Filename(), "server/main.cc")) {
      std::fprintf(stderr, "quantd: unknown flag --%s (--help lists the flags)\n", spelled.c_str());
      return false;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "quantd: flag --%s needs a value\n", spelled.c_str());
        return false;
      }
      value = argv[++i];
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      std::fprintf(stderr, "quantd: bad value \"%s\" for --%s: %s\n", value.c_str(),
                   spelled.c_str(), error.c_str());
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (!ParseFlags(argc, argv)) return kExitBadFlag;

  quantd::server::ServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  absl::StatusOr<quantd::server::BackendChoice> backend =
      quantd::server::ParseBackendChoice(absl::GetFlag(FLAGS_backend));
  if (!backend.ok()) {
    std::fprintf(stderr, "quantd: --backend: %s\n",
                 std::string(backend.status().message()).c_str());
    return kExitBadFlag;
  }
  options.backend = *backend;
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_weight_bytes = absl::GetFlag(FLAGS_max_weight_bytes);
  options.max_tensor_bytes = absl::GetFlag(FLAGS_max_tensor_bytes);
  options.stream_chunk_bytes = absl::GetFlag(FLAGS_stream_chunk_bytes);
  options.max_inflight_bytes = absl::GetFlag(FLAGS_max_inflight_bytes);
  options.inline_max_bytes = absl::GetFlag(FLAGS_inline_max_bytes);
  options.cuda_streams_per_device = absl::GetFlag(FLAGS_cuda_streams_per_device);
  options.cuda_memory_cap_bytes = absl::GetFlag(FLAGS_cuda_memory_cap_bytes);
  options.cuda_host_max_elements = absl::GetFlag(FLAGS_cuda_host_max_elements);
  options.cuda_upload_min_bytes = absl::GetFlag(FLAGS_cuda_upload_min_bytes);
  options.cuda_gemm_algorithm_cache = absl::GetFlag(FLAGS_cuda_gemm_algorithm_cache);
  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);

  // Block the shutdown signals before any thread exists, so that every thread inherits the mask
  // and only sigwait below receives them: no work ever happens in a signal handler.
  sigset_t shutdown_signals;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGTERM);
  sigaddset(&shutdown_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &shutdown_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<quantd::server::Server>> server =
      quantd::server::Server::Create(options);
  if (!server.ok()) {
    std::fprintf(stderr, "quantd: %s\n", std::string(server.status().message()).c_str());
    return server.status().code() == absl::StatusCode::kInvalidArgument ? kExitBadFlag : 1;
  }
  if (absl::Status started = (*server)->Start(); !started.ok()) {
    std::fprintf(stderr, "quantd: %s\n", std::string(started.message()).c_str());
    return 1;
  }

  int signal_number = 0;
  sigwait(&shutdown_signals, &signal_number);
  std::fprintf(stderr, "quantd: %s received, draining (up to %s)\n", strsignal(signal_number),
               absl::FormatDuration(drain_timeout).c_str());
  (*server)->Shutdown(absl::Now() + drain_timeout);
  return 0;
}
