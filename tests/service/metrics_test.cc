// The live /metrics page: scraped over HTTP after a few requests, checked for every family and
// for the counts those requests must have left, and linted with `promtool check metrics`.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ts_ = TestServer::Start(TestOptions(/*with_metrics=*/true));
    // A successful request of each kind, a refused one, and two streams.
    v1::QuantizeRequest quantize = QuantizeRequestFor(RandomTensor({16, 64}), "int8");
    v1::QuantizeResponse quantized;
    {
      grpc::ClientContext context;
      ASSERT_TRUE(ts_.stub->Quantize(&context, quantize, &quantized).ok());
    }
    {
      grpc::ClientContext context;
      v1::DequantizeRequest request;
      *request.mutable_quantized() = quantized.quantized();
      v1::DequantizeResponse response;
      ASSERT_TRUE(ts_.stub->Dequantize(&context, request, &response).ok());
    }
    {
      grpc::ClientContext context;
      v1::QuantDequantRequest request;
      *request.mutable_input() = RandomTensor({16, 64});
      request.mutable_spec()->set_descriptor_string("int4-g128");
      v1::QuantDequantResponse response;
      ASSERT_TRUE(ts_.stub->QuantDequant(&context, request, &response).ok());
    }
    {
      grpc::ClientContext context;
      v1::CalibrateRequest request;
      *request.mutable_input() = RandomTensor({16, 64});
      request.mutable_spec()->set_descriptor_string("fp8-e4m3");
      v1::CalibrateResponse response;
      ASSERT_TRUE(ts_.stub->Calibrate(&context, request, &response).ok());
    }
    {
      grpc::ClientContext context;
      v1::GetCapabilitiesResponse response;
      ASSERT_TRUE(ts_.stub->GetCapabilities(&context, {}, &response).ok());
    }
    {
      grpc::ClientContext context;
      v1::EchoRequest request;
      request.set_payload("echo");
      v1::EchoResponse response;
      ASSERT_TRUE(ts_.stub->Echo(&context, request, &response).ok());
    }
    {
      grpc::ClientContext context;
      v1::QuantizeRequest bad = quantize;
      bad.mutable_input()->mutable_data()->pop_back();
      v1::QuantizeResponse response;
      ASSERT_EQ(ts_.stub->Quantize(&context, bad, &response).error_code(),
                grpc::StatusCode::INVALID_ARGUMENT);
    }
    ASSERT_TRUE(RunQuantizeStream(ts_.stub.get(), QuantizeFrames(quantize, 1000)).status.ok());
    v1::DequantizeRequest dequantize;
    *dequantize.mutable_quantized() = quantized.quantized();
    ASSERT_TRUE(
        RunDequantizeStream(ts_.stub.get(), DequantizeFrames(dequantize, 1000)).status.ok());
    // A stream's buffers are released when the server is done with the call, which may be
    // just after the client has its status.
    for (int i = 0; i < 200; ++i) {
      page_ = ScrapeMetrics(ts_.server->metrics_port());
      if (SampleValue(page_, "quantd_inflight_bytes") == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_FALSE(page_.empty());
  }
  void TearDown() override { ts_.server->Shutdown(absl::Now() + absl::Seconds(5)); }

  TestServer ts_;
  std::string page_;
};

TEST_F(MetricsTest, EveryFamilyIsExported) {
  for (const char* family :
       {"quantd_request_duration_seconds", "quantd_queue_wait_seconds",
        "quantd_compute_duration_seconds", "quantd_requests_total", "quantd_bytes_received_total",
        "quantd_bytes_sent_total", "quantd_requests_in_flight", "quantd_queue_depth",
        "quantd_inflight_bytes", "quantd_sqnr_db", "quantd_build_info"}) {
    EXPECT_THAT(page_, HasSubstr(absl::StrCat("# TYPE ", family, " "))) << family;
    EXPECT_THAT(page_, HasSubstr(absl::StrCat("# HELP ", family, " "))) << family;
  }
}

TEST_F(MetricsTest, RequestsAreCounted) {
  for (const char* method : {"Quantize", "Dequantize", "QuantDequant", "Calibrate",
                             "GetCapabilities", "QuantizeStream", "DequantizeStream", "Echo"}) {
    SCOPED_TRACE(method);
    EXPECT_EQ(SampleValue(page_, absl::StrCat(R"(quantd_requests_total{code="OK",method=")", method,
                                              "\"}")),
              1);
    if (std::string(method) != "GetCapabilities") {  // its request is empty: 0 bytes
      EXPECT_GT(SampleValue(page_,
                            absl::StrCat(R"(quantd_bytes_received_total{method=")", method, "\"}")),
                0);
    }
    EXPECT_GT(
        SampleValue(page_, absl::StrCat(R"(quantd_bytes_sent_total{method=")", method, "\"}")), 0);
  }
  EXPECT_EQ(
      SampleValue(page_, R"(quantd_requests_total{code="INVALID_ARGUMENT",method="Quantize"})"), 1);
  EXPECT_EQ(
      SampleValue(
          page_,
          R"(quantd_request_duration_seconds_count{backend="cpu",format="int8",method="Quantize"})"),
      1);
  // The refused request had no format yet.
  EXPECT_EQ(
      SampleValue(
          page_,
          R"(quantd_request_duration_seconds_count{backend="cpu",format="unspecified",method="Quantize"})"),
      1);
  EXPECT_EQ(
      SampleValue(
          page_,
          R"(quantd_queue_wait_seconds_count{backend="cpu",format="int8",method="QuantizeStream"})"),
      1);
  EXPECT_EQ(
      SampleValue(
          page_,
          R"(quantd_compute_duration_seconds_count{backend="cpu",format="int4",method="QuantDequant"})"),
      1);
  // Echo has no format and never queues.
  EXPECT_EQ(
      SampleValue(
          page_,
          R"(quantd_request_duration_seconds_count{backend="cpu",format="unspecified",method="Echo"})"),
      1);
  EXPECT_EQ(
      SampleValue(page_,
                  R"(quantd_queue_wait_seconds_count{backend="cpu",format="int8",method="Echo"})"),
      -1);
  // Quantize, QuantizeStream: int8; QuantDequant: int4; Calibrate: fp8-e4m3.
  EXPECT_EQ(SampleValue(page_, R"(quantd_sqnr_db_count{format="int8"})"), 2);
  EXPECT_EQ(SampleValue(page_, R"(quantd_sqnr_db_count{format="int4"})"), 1);
  EXPECT_EQ(SampleValue(page_, R"(quantd_sqnr_db_count{format="fp8-e4m3"})"), 1);
  EXPECT_EQ(SampleValue(page_, "quantd_requests_in_flight"), 0);
  EXPECT_EQ(SampleValue(page_, "quantd_queue_depth"), 0);
  EXPECT_EQ(SampleValue(page_, "quantd_inflight_bytes"), 0);
  EXPECT_EQ(SampleValue(page_, R"(quantd_build_info{backend="cpu",version="0.1.0"})"), 1);
}

TEST_F(MetricsTest, PromtoolCheckMetricsIsClean) {
  if (access("/usr/bin/promtool", X_OK) != 0) GTEST_SKIP() << "/usr/bin/promtool not installed";
  char path[] = "/tmp/quantd_metrics_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, page_.data(), page_.size()), static_cast<ssize_t>(page_.size()));
  close(fd);
  const std::string command = absl::StrCat("/usr/bin/promtool check metrics < ", path, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  unlink(path);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_EQ(output, "") << output;
}

}  // namespace
}  // namespace quantd::testing
