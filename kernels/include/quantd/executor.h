// Executor: where the CPU backend's parallel loops run. The numerics own no threads; whoever
// creates a backend decides how many threads it may use by handing it an Executor.
//
//   std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(/*threads=*/8);
//   pool->ParallelFor(rows, /*min_chunk=*/16, [&](int64_t begin, int64_t end) { ... });
#ifndef QUANTD_EXECUTOR_H_
#define QUANTD_EXECUTOR_H_

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"

namespace quantd {

class Executor {
 public:
  virtual ~Executor() = default;

  // Calls fn(begin, end) over disjoint chunks that cover [0, n), each at least `min_chunk`
  // long (except the last), possibly concurrently, and returns when all have returned.
  // Safe to call from several threads at once; nested calls run inline.
  virtual void ParallelFor(int64_t n, int64_t min_chunk,
                           absl::FunctionRef<void(int64_t begin, int64_t end)> fn) = 0;

  // Number of chunks worth making: the threads this executor runs on.
  virtual int concurrency() const = 0;
};

// Runs everything on the calling thread.
Executor* InlineExecutor();

// A fixed pool of `threads` worker threads (0: one per hardware thread). The calling thread
// takes part in its own ParallelFor, so concurrent callers never deadlock.
std::unique_ptr<Executor> CreateThreadPoolExecutor(int threads);

}  // namespace quantd

#endif  // QUANTD_EXECUTOR_H_
