// The bounded queue, admission checks (deadline, cancellation) and draining: the Scheduler on
// its own, then through the server with a test hook that holds the single worker.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/scheduler.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using server::Scheduler;
using server::SchedulerOptions;
using ::testing::HasSubstr;

// Holds every worker that reaches it until Open().
class Gate {
 public:
  void Pass() {
    absl::MutexLock lock(&mu_);
    ++entered_;
    mu_.Await(absl::Condition(&open_));
  }
  void AwaitEntered(int n) {
    absl::MutexLock lock(&mu_);
    target_ = n;
    mu_.Await(absl::Condition(this, &Gate::Reached));
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }

 private:
  bool Reached() { return entered_ >= target_; }

  absl::Mutex mu_;
  int entered_ = 0;
  int target_ = 0;
  bool open_ = false;
};

Scheduler::Task CountingTask(std::atomic<int>* ran, std::vector<absl::StatusCode>* codes,
                             absl::Mutex* mu) {
  Scheduler::Task task;
  task.run = [ran, codes, mu](const absl::Status& admission, absl::Duration) {
    ran->fetch_add(1);
    absl::MutexLock lock(mu);
    codes->push_back(admission.code());
  };
  return task;
}

TEST(SchedulerTest, RunsInlineOnlyWhenAWorkerIsIdleAndNothingWaits) {
  auto gate = std::make_shared<Gate>();
  SchedulerOptions options;
  options.workers = 1;
  options.max_queue = 4;
  options.before_task_for_testing = [gate] { gate->Pass(); };
  Scheduler scheduler(options);
  std::atomic<int> ran{0};
  std::vector<absl::StatusCode> codes;
  absl::Mutex mu;

  // Idle: the task runs on this thread, before RunInlineIfIdle returns, admitted.
  std::thread::id ran_on;
  Scheduler::Task task;
  task.run = [&](const absl::Status& admission, absl::Duration wait) {
    ran_on = std::this_thread::get_id();
    EXPECT_TRUE(admission.ok());
    EXPECT_EQ(wait, absl::ZeroDuration());
  };
  EXPECT_TRUE(scheduler.RunInlineIfIdle(task));
  EXPECT_EQ(ran_on, std::this_thread::get_id());

  // An expired deadline is still refused inline, as it would be by a worker.
  Scheduler::Task late;
  late.deadline = Scheduler::Clock::now() - std::chrono::seconds(1);
  absl::StatusCode late_code = absl::StatusCode::kOk;
  late.run = [&](const absl::Status& admission, absl::Duration) { late_code = admission.code(); };
  EXPECT_TRUE(scheduler.RunInlineIfIdle(late));
  EXPECT_EQ(late_code, absl::StatusCode::kDeadlineExceeded);

  // The only worker busy: refused, and the task is left intact for Submit.
  ASSERT_TRUE(scheduler.Submit(CountingTask(&ran, &codes, &mu)).ok());
  gate->AwaitEntered(1);
  Scheduler::Task held = CountingTask(&ran, &codes, &mu);
  EXPECT_FALSE(scheduler.RunInlineIfIdle(held));
  EXPECT_EQ(ran.load(), 0);
  ASSERT_TRUE(scheduler.Submit(std::move(held)).ok());
  EXPECT_EQ(scheduler.queue_depth(), 1);
  gate->Open();
  scheduler.Shutdown();
  EXPECT_EQ(ran.load(), 2);

  // After Shutdown nothing runs inline either.
  Scheduler::Task after = CountingTask(&ran, &codes, &mu);
  EXPECT_FALSE(scheduler.RunInlineIfIdle(after));
  EXPECT_EQ(ran.load(), 2);
}

TEST(SchedulerTest, QueueFullThenDrain) {
  auto gate = std::make_shared<Gate>();
  SchedulerOptions options;
  options.workers = 1;
  options.max_queue = 2;
  options.before_task_for_testing = [gate] { gate->Pass(); };
  Scheduler scheduler(options);
  std::atomic<int> ran{0};
  std::vector<absl::StatusCode> codes;
  absl::Mutex mu;
  ASSERT_TRUE(scheduler.Submit(CountingTask(&ran, &codes, &mu)).ok());
  gate->AwaitEntered(1);  // the worker holds task 1; the queue is empty
  ASSERT_TRUE(scheduler.Submit(CountingTask(&ran, &codes, &mu)).ok());
  ASSERT_TRUE(scheduler.Submit(CountingTask(&ran, &codes, &mu)).ok());
  EXPECT_EQ(scheduler.queue_depth(), 2);
  absl::Status full = scheduler.Submit(CountingTask(&ran, &codes, &mu));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(full.message()), HasSubstr("queue is full (2 requests waiting"));
  EXPECT_THAT(std::string(full.message()), HasSubstr("back off and retry"));

  gate->Open();
  scheduler.Shutdown();  // drains both queued tasks
  EXPECT_EQ(ran.load(), 3);
  EXPECT_EQ(codes, std::vector<absl::StatusCode>(3, absl::StatusCode::kOk));
  EXPECT_EQ(scheduler.Submit(CountingTask(&ran, &codes, &mu)).code(),
            absl::StatusCode::kUnavailable);
}

TEST(SchedulerTest, DeadAndCancelledCallsDoNoWork) {
  SchedulerOptions options;
  options.workers = 1;
  Scheduler scheduler(options);
  absl::Notification done_expired, done_cancelled, done_live;
  absl::Status expired_admission, cancelled_admission, live_admission;

  Scheduler::Task expired;
  expired.deadline = Scheduler::Clock::now() - std::chrono::seconds(1);
  expired.run = [&](const absl::Status& admission, absl::Duration) {
    expired_admission = admission;
    done_expired.Notify();
  };
  Scheduler::Task cancelled;
  cancelled.is_cancelled = [] { return true; };
  cancelled.run = [&](const absl::Status& admission, absl::Duration) {
    cancelled_admission = admission;
    done_cancelled.Notify();
  };
  Scheduler::Task live;
  live.deadline = Scheduler::Clock::now() + std::chrono::hours(1);
  live.is_cancelled = [] { return false; };
  live.run = [&](const absl::Status& admission, absl::Duration) {
    live_admission = admission;
    done_live.Notify();
  };
  ASSERT_TRUE(scheduler.Submit(std::move(expired)).ok());
  ASSERT_TRUE(scheduler.Submit(std::move(cancelled)).ok());
  ASSERT_TRUE(scheduler.Submit(std::move(live)).ok());
  done_expired.WaitForNotification();
  done_cancelled.WaitForNotification();
  done_live.WaitForNotification();
  EXPECT_EQ(expired_admission.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(expired_admission.message()), HasSubstr("deadline passed"));
  EXPECT_EQ(cancelled_admission.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(live_admission.ok());
}

TEST(SchedulerTest, ManyWorkersRunEverythingOnce) {
  SchedulerOptions options;
  options.workers = 4;
  options.max_queue = 10000;
  Scheduler scheduler(options);
  EXPECT_EQ(scheduler.workers(), 4);
  std::atomic<int> ran{0};
  std::vector<absl::StatusCode> codes;
  absl::Mutex mu;
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(scheduler.Submit(CountingTask(&ran, &codes, &mu)).ok());
  scheduler.Shutdown();
  EXPECT_EQ(ran.load(), 1000);
}

// ---- Through the server ----

class QueueServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gate_ = std::make_shared<Gate>();
    server::ServerOptions options = TestOptions(/*with_metrics=*/true);
    options.workers = 1;
    options.max_queue = 1;
    options.inline_max_bytes = 0;  // every request goes through the queue under test
    options.before_task_for_testing = [gate = gate_] { gate->Pass(); };
    ts_ = TestServer::Start(options);
  }
  void TearDown() override {
    gate_->Open();
    if (ts_.server) ts_.server->Shutdown(absl::Now() + absl::Seconds(10));
  }

  // An asynchronous Quantize whose result lands in `call`.
  struct AsyncCall {
    grpc::ClientContext context;
    v1::QuantizeRequest request;
    v1::QuantizeResponse response;
    grpc::Status status;
    absl::Notification done;
  };
  std::unique_ptr<AsyncCall> Start(absl::Duration timeout = absl::Seconds(30)) {
    auto call = std::make_unique<AsyncCall>();
    call->request = QuantizeRequestFor(RandomTensor({8, 64}), "int8");
    call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    AsyncCall* raw = call.get();
    ts_.stub->async()->Quantize(&raw->context, &raw->request, &raw->response,
                                [raw](grpc::Status status) {
                                  raw->status = std::move(status);
                                  raw->done.Notify();
                                });
    return call;
  }
  void AwaitQueueDepth(int64_t depth) {
    for (int i = 0; i < 1000 && ts_.server->queue_depth() != depth; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_EQ(ts_.server->queue_depth(), depth);
  }
  double Metric(const std::string& series) {
    return SampleValue(ScrapeMetrics(ts_.server->metrics_port()), series);
  }

  std::shared_ptr<Gate> gate_;
  TestServer ts_;
};

// Inline execution through the server: with the worker idle, a small request completes
// although the worker's hook would hold it; a large one (above --inline-max-bytes) is queued
// and waits for the worker; while the worker is busy, small ones queue too.
TEST(InlineServerTest, SmallRequestsSkipTheHandOffOnlyWhenAWorkerIsIdle) {
  auto gate = std::make_shared<Gate>();
  server::ServerOptions options = TestOptions();
  options.workers = 1;
  options.max_queue = 4;
  options.inline_max_bytes = 64 << 10;
  options.before_task_for_testing = [gate] { gate->Pass(); };
  TestServer ts = TestServer::Start(options);
  auto quantize = [&](const v1::QuantizeRequest& request, v1::QuantizeResponse* response,
                      grpc::ClientContext* context) {
    return ts.stub->Quantize(context, request, response);
  };
  const v1::QuantizeRequest small = QuantizeRequestFor(RandomTensor({8, 64}), "int8");
  {
    v1::QuantizeResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(quantize(small, &response, &context).ok());  // inline: the gate is closed
    EXPECT_EQ(response.quantized().codes().data(), QuantizeDirect(small).codes);
  }
  // 64 KiB of input + 16 KiB of codes: above the limit, so it goes to the (gated) worker.
  const v1::QuantizeRequest large = QuantizeRequestFor(RandomTensor({64, 256}), "int8");
  v1::QuantizeResponse large_response;
  grpc::ClientContext large_context;
  grpc::Status large_status;
  std::thread large_call([&] { large_status = quantize(large, &large_response, &large_context); });
  gate->AwaitEntered(1);
  // The worker is busy: a small request now waits in the queue instead of running inline.
  v1::QuantizeResponse queued_response;
  grpc::ClientContext queued_context;
  grpc::Status queued_status;
  std::thread queued_call(
      [&] { queued_status = quantize(small, &queued_response, &queued_context); });
  for (int i = 0; i < 1000 && ts.server->queue_depth() != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(ts.server->queue_depth(), 1);
  gate->Open();
  large_call.join();
  queued_call.join();
  EXPECT_TRUE(large_status.ok()) << large_status.error_message();
  EXPECT_TRUE(queued_status.ok()) << queued_status.error_message();
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST_F(QueueServerTest, QueueFullIsResourceExhausted) {
  auto running = Start();
  gate_->AwaitEntered(1);
  auto queued = Start();
  AwaitQueueDepth(1);

  grpc::ClientContext context;
  v1::QuantizeResponse response;
  grpc::Status refused =
      ts_.stub->Quantize(&context, QuantizeRequestFor(RandomTensor({8, 64}), "int8"), &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("request queue is full (1 requests waiting"));

  // Streams share the queue.
  const QuantizeStreamResult stream = RunQuantizeStream(
      ts_.stub.get(), QuantizeFrames(QuantizeRequestFor(RandomTensor({8, 64}), "int8"), 512));
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);

  gate_->Open();
  running->done.WaitForNotification();
  queued->done.WaitForNotification();
  EXPECT_TRUE(running->status.ok()) << running->status.error_message();
  EXPECT_TRUE(queued->status.ok()) << queued->status.error_message();
  EXPECT_EQ(Metric(R"(quantd_requests_total{code="RESOURCE_EXHAUSTED",method="Quantize"})"), 1);
}

// Echo is the transport's own cost: it never waits for a worker, even with the queue full.
TEST_F(QueueServerTest, EchoAnswersWhileTheQueueIsFull) {
  auto running = Start();
  gate_->AwaitEntered(1);
  auto queued = Start();
  AwaitQueueDepth(1);

  v1::EchoRequest request;
  request.set_payload(std::string(1000, 'e'));
  v1::EchoResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  const grpc::Status status = ts_.stub->Echo(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.payload(), request.payload());
  EXPECT_EQ(ts_.server->queue_depth(), 1);

  gate_->Open();
  running->done.WaitForNotification();
  queued->done.WaitForNotification();
  EXPECT_TRUE(running->status.ok()) << running->status.error_message();
  EXPECT_TRUE(queued->status.ok()) << queued->status.error_message();
}

TEST_F(QueueServerTest, ExpiredDeadlineIsDroppedBeforeWork) {
  auto running = Start();
  gate_->AwaitEntered(1);
  auto doomed = Start(absl::Milliseconds(1500));  // long enough to surely reach the queue
  AwaitQueueDepth(1);
  doomed->done.WaitForNotification();
  EXPECT_EQ(doomed->status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server's deadline lags the client's by the request's transit time; past it, the server
  // answers DEADLINE_EXCEEDED. (Before it, the client's cancellation makes it CANCELLED: either
  // way the call is dropped without work.)
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  gate_->Open();
  running->done.WaitForNotification();
  EXPECT_TRUE(running->status.ok());
  AwaitQueueDepth(0);
  const std::string expired =
      R"(quantd_requests_total{code="DEADLINE_EXCEEDED",method="Quantize"})";
  const std::string cancelled = R"(quantd_requests_total{code="CANCELLED",method="Quantize"})";
  for (int i = 0; i < 200 && Metric(expired) + Metric(cancelled) != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Metric(expired) + Metric(cancelled), 1);
  // Only the first call was computed.
  EXPECT_EQ(
      Metric(
          R"(quantd_compute_duration_seconds_count{backend="cpu",format="int8",method="Quantize"})"),
      1);
}

TEST_F(QueueServerTest, CancelledCallIsDroppedBeforeWork) {
  auto running = Start();
  gate_->AwaitEntered(1);
  auto cancelled = Start();
  AwaitQueueDepth(1);
  cancelled->context.TryCancel();
  cancelled->done.WaitForNotification();
  EXPECT_EQ(cancelled->status.error_code(), grpc::StatusCode::CANCELLED);
  // Give the server a moment to see the cancellation before the worker takes the call.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  gate_->Open();
  running->done.WaitForNotification();
  AwaitQueueDepth(0);
  for (int i = 0; i < 200; ++i) {
    if (Metric(R"(quantd_requests_total{code="CANCELLED",method="Quantize"})") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Metric(R"(quantd_requests_total{code="CANCELLED",method="Quantize"})"), 1);
  EXPECT_EQ(
      Metric(
          R"(quantd_compute_duration_seconds_count{backend="cpu",format="int8",method="Quantize"})"),
      1);
}

TEST_F(QueueServerTest, ShutdownDrainsCallsInFlight) {
  auto running = Start();
  gate_->AwaitEntered(1);
  auto queued = Start();
  AwaitQueueDepth(1);

  std::thread shutdown([this] { ts_.server->Shutdown(absl::Now() + absl::Seconds(30)); });
  // Shutdown is now waiting for the two calls; neither is lost.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(running->done.HasBeenNotified());
  gate_->Open();
  running->done.WaitForNotification();
  queued->done.WaitForNotification();
  shutdown.join();
  EXPECT_TRUE(running->status.ok()) << running->status.error_message();
  EXPECT_TRUE(queued->status.ok()) << queued->status.error_message();
  EXPECT_EQ(running->response.quantized().codes().data().size(), 8u * 64u);

  // After the drain nothing is served.
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  v1::GetCapabilitiesResponse caps;
  EXPECT_FALSE(ts_.stub->GetCapabilities(&context, {}, &caps).ok());
}

}  // namespace
}  // namespace quantd::testing
