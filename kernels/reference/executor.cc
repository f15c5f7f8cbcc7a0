// The inline executor and a fixed thread pool whose callers work on their own loops.
#include "quantd/executor.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace quantd {
namespace {

class Inline final : public Executor {
 public:
  void ParallelFor(int64_t n, int64_t, absl::FunctionRef<void(int64_t, int64_t)> fn) override {
    if (n > 0) fn(0, n);
  }
  int concurrency() const override { return 1; }
};

// Marks threads that are running a chunk, so that a nested ParallelFor runs inline instead of
// waiting on workers that may all be busy with the outer loop.
thread_local bool in_parallel_region = false;

// One ParallelFor call: chunks are claimed with an atomic counter by the caller and by any
// worker that picks the job up; the caller waits until every chunk has finished.
struct Job {
  int64_t n = 0;
  int64_t chunk = 1;
  int64_t num_chunks = 0;
  absl::FunctionRef<void(int64_t, int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable finished;

  // Runs chunks until none is left; returns after this thread's last one.
  void Work() {
    const bool was_nested = in_parallel_region;
    in_parallel_region = true;
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
      const int64_t begin = c * chunk;
      (*fn)(begin, std::min(n, begin + chunk));
      if (done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
    in_parallel_region = was_nested;
  }
};

class ThreadPool final : public Executor {
 public:
  explicit ThreadPool(int threads) : threads_(threads) {
    // The caller of ParallelFor works too, so threads - 1 helpers make `threads` in all.
    for (int i = 0; i + 1 < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }

  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }

  void ParallelFor(int64_t n, int64_t min_chunk,
                   absl::FunctionRef<void(int64_t, int64_t)> fn) override {
    if (n <= 0) return;
    min_chunk = std::max<int64_t>(min_chunk, 1);
    // About four chunks per thread balances uneven rows without much claiming overhead.
    const int64_t target_chunks = static_cast<int64_t>(threads_) * 4;
    const int64_t chunk = std::max(min_chunk, (n + target_chunks - 1) / target_chunks);
    if (in_parallel_region || threads_ == 1 || chunk >= n) {
      fn(0, n);
      return;
    }
    auto job = std::make_shared<Job>();
    job->n = n;
    job->chunk = chunk;
    job->num_chunks = (n + chunk - 1) / chunk;
    job->fn = &fn;
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(job);
    }
    wake_.notify_all();
    job->Work();
    std::unique_lock<std::mutex> lock(job->mu);
    job->finished.wait(lock, [&] { return job->done.load() == job->num_chunks; });
  }

  int concurrency() const override { return threads_; }

 private:
  void WorkerLoop() {
    while (true) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping
        job = jobs_.front();
        // A job with no chunks left to claim leaves the queue; its caller finishes it.
        if (job->next.load() >= job->num_chunks) {
          jobs_.pop_front();
          continue;
        }
      }
      job->Work();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> jobs_;
  bool stopping_ = false;
};

}  // namespace

Executor* InlineExecutor() {
  static Inline* executor = new Inline();
  return executor;
}

std::unique_ptr<Executor> CreateThreadPoolExecutor(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<ThreadPool>(threads);
}

}  // namespace quantd
