// Host <-> device transfer benchmark: how the CUDA backend should move a request's bytes.
//
// A request arrives in pageable memory (a protobuf string). Four ways to move it to the GPU and
// back, timed on the same buffers:
//   pageable   cudaMemcpyAsync straight from the pageable buffer (the driver stages it)
//   pinned     cudaMemcpyAsync from page-locked memory: the PCIe ceiling, not reachable for a
//              protobuf string without a copy
//   staged/C   memcpy through two page-locked buffers of C bytes, each memcpy overlapping the
//              DMA of the other buffer
//   register   cudaHostRegister the pageable buffer, DMA, cudaHostUnregister
//
//   quantd_copy_bench [--sizes=1M,16M,256M,1G] [--reps=5]
//
// Speed is never a test assertion; docs/PERF_NOTES.md records what this decided.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_check.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t ParseSize(const std::string& text) {
  char* end = nullptr;
  int64_t value = std::strtoll(text.c_str(), &end, 10);
  switch (*end) {
    case 'K':
      return value << 10;
    case 'M':
      return value << 20;
    case 'G':
      return value << 30;
    default:
      return value;
  }
}

// Two page-locked buffers used alternately: the CPU fills one while the DMA drains the other.
struct Staging {
  int64_t chunk = 0;
  char* buffer[2] = {nullptr, nullptr};
  cudaEvent_t done[2];

  explicit Staging(int64_t chunk_bytes) : chunk(chunk_bytes) {
    for (int b = 0; b < 2; ++b) {
      CUDA_CHECK(cudaMallocHost(&buffer[b], chunk));
      CUDA_CHECK(cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming));
    }
  }
  ~Staging() {
    for (int b = 0; b < 2; ++b) {
      cudaFreeHost(buffer[b]);
      cudaEventDestroy(done[b]);
    }
  }

  void ToDevice(char* device, const char* host, int64_t bytes, cudaStream_t stream) {
    for (int64_t offset = 0, i = 0; offset < bytes; offset += chunk, ++i) {
      const int b = static_cast<int>(i & 1);
      const int64_t n = std::min(chunk, bytes - offset);
      CUDA_CHECK(cudaEventSynchronize(done[b]));  // the DMA that last read this buffer is over
      std::memcpy(buffer[b], host + offset, n);
      CUDA_CHECK(cudaMemcpyAsync(device + offset, buffer[b], n, cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaEventRecord(done[b], stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  void ToHost(char* host, const char* device, int64_t bytes, cudaStream_t stream) {
    const int64_t chunks = (bytes + chunk - 1) / chunk;
    auto issue = [&](int64_t i) {
      const int b = static_cast<int>(i & 1);
      const int64_t offset = i * chunk;
      CUDA_CHECK(cudaMemcpyAsync(buffer[b], device + offset, std::min(chunk, bytes - offset),
                                 cudaMemcpyDeviceToHost, stream));
      CUDA_CHECK(cudaEventRecord(done[b], stream));
    };
    issue(0);
    for (int64_t i = 0; i < chunks; ++i) {
      if (i + 1 < chunks) issue(i + 1);  // the next DMA runs while this chunk is copied out
      const int b = static_cast<int>(i & 1);
      CUDA_CHECK(cudaEventSynchronize(done[b]));
      std::memcpy(host + i * chunk, buffer[b], std::min(chunk, bytes - i * chunk));
    }
  }
};

template <typename Fn>
double BestGBs(int64_t bytes, int reps, Fn&& fn) {
  fn();  // warm-up: first touch, pool growth
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    fn();
    best = std::min(best, Seconds(start, Clock::now()));
  }
  return static_cast<double>(bytes) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes = {1 << 20, 16 << 20, 256 << 20, int64_t{1} << 30};
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--sizes=", 0) == 0) {
      sizes.clear();
      std::string list = arg.substr(8);
      for (size_t pos = 0; pos != std::string::npos;) {
        const size_t comma = list.find(',', pos);
        sizes.push_back(ParseSize(list.substr(pos, comma - pos)));
        pos = comma == std::string::npos ? comma : comma + 1;
      }
    } else if (arg.rfind("--reps=", 0) == 0) {
      reps = std::atoi(arg.c_str() + 7);
    } else {
      std::fprintf(stderr, "usage: %s [--sizes=1M,16M,256M,1G] [--reps=5]\n", argv[0]);
      return 2;
    }
  }
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const int64_t largest = *std::max_element(sizes.begin(), sizes.end());
  std::vector<char> pageable(largest, 1), back(largest, 0);
  char* pinned = nullptr;
  char* device = nullptr;
  CUDA_CHECK(cudaMallocHost(&pinned, largest));
  CUDA_CHECK(cudaMalloc(&device, largest));
  std::memset(pinned, 1, largest);
  const int64_t chunks[] = {int64_t{1} << 20, int64_t{4} << 20, int64_t{16} << 20};

  std::printf("| bytes | dir | pageable GB/s | pinned GB/s |");
  for (int64_t c : chunks) std::printf(" staged %lldM GB/s |", static_cast<long long>(c >> 20));
  std::printf(" register GB/s |\n|---|---|---|---|---|---|---|---|\n");
  for (int64_t bytes : sizes) {
    for (int dir = 0; dir < 2; ++dir) {
      const bool h2d = dir == 0;
      const cudaMemcpyKind kind = h2d ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
      char* host = h2d ? pageable.data() : back.data();
      auto direct = [&](char* from_host) {
        if (h2d) {
          CUDA_CHECK(cudaMemcpyAsync(device, from_host, bytes, kind, stream));
        } else {
          CUDA_CHECK(cudaMemcpyAsync(from_host, device, bytes, kind, stream));
        }
        CUDA_CHECK(cudaStreamSynchronize(stream));
      };
      std::printf("| %lld | %s | %.1f | %.1f |", static_cast<long long>(bytes), h2d ? "H2D" : "D2H",
                  BestGBs(bytes, reps, [&] { direct(host); }),
                  BestGBs(bytes, reps, [&] { direct(pinned); }));
      for (int64_t c : chunks) {
        Staging staging(c);
        std::printf(" %.1f |", BestGBs(bytes, reps, [&] {
                      if (h2d) {
                        staging.ToDevice(device, host, bytes, stream);
                      } else {
                        staging.ToHost(host, device, bytes, stream);
                      }
                    }));
      }
      std::printf(" %.1f |\n", BestGBs(bytes, reps, [&] {
                    CUDA_CHECK(cudaHostRegister(host, bytes, cudaHostRegisterDefault));
                    direct(host);
                    CUDA_CHECK(cudaHostUnregister(host));
                  }));
    }
  }
  if (std::memcmp(back.data(), pinned, std::min<int64_t>(largest, 1 << 20)) != 0) {
    std::fprintf(stderr, "round trip changed the bytes\n");
    return 1;
  }
  cudaFree(device);
  cudaFreeHost(pinned);
  cudaStreamDestroy(stream);
  return 0;
}
