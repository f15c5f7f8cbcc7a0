// Echo, the transport baseline of `quantctl bench`: payload mirrored or `response_bytes` bytes
// back, refusals of sizes that cannot be answered, and the same through the client library.
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

// Small enough that answers at the limit are cheap to allocate.
constexpr int64_t kMessageLimit = int64_t{1} << 20;
// What the server keeps for a response's framing (server.cc kFrameOverheadBytes).
constexpr int64_t kFraming = 16;

class EchoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = TestOptions();
    options.max_message_bytes = kMessageLimit;
    options.stream_chunk_bytes = kMessageLimit / 4;
    ts_ = new TestServer(TestServer::Start(options));
  }
  static void TearDownTestSuite() {
    ts_->server->Shutdown(absl::Now() + absl::Seconds(5));
    delete ts_;
    ts_ = nullptr;
  }

  static grpc::Status Echo(const std::string& payload, int64_t response_bytes,
                           v1::EchoResponse* response) {
    v1::EchoRequest request;
    request.set_payload(payload);
    request.set_response_bytes(response_bytes);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    return ts_->stub->Echo(&context, request, response);
  }

  static TestServer* ts_;
};
TestServer* EchoTest::ts_ = nullptr;

// Bytes that differ from position to position, so that a truncated or shifted echo differs.
std::string Pattern(int64_t n) {
  std::string bytes(static_cast<size_t>(n), '\0');
  for (int64_t i = 0; i < n; ++i) bytes[i] = static_cast<char>((i * 131 + i / 256) & 0xff);
  return bytes;
}

TEST_F(EchoTest, ZeroResponseBytesMirrorsThePayload) {
  for (int64_t size : {int64_t{0}, int64_t{1}, int64_t{4096}, kMessageLimit - 64}) {
    SCOPED_TRACE(size);
    const std::string payload = Pattern(size);
    v1::EchoResponse response;
    const grpc::Status status = Echo(payload, /*response_bytes=*/0, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.payload(), payload);
  }
}

TEST_F(EchoTest, ResponseBytesSetsTheAnswersSize) {
  struct Case {
    int64_t payload;
    int64_t response_bytes;
  };
  for (const Case& c : {Case{0, 1}, Case{0, 4096}, Case{10, 5000}, Case{100000, 7},
                        Case{0, kMessageLimit - kFraming}}) {
    SCOPED_TRACE(absl::StrCat(c.payload, " bytes there, ", c.response_bytes, " back"));
    v1::EchoResponse response;
    const grpc::Status status = Echo(Pattern(c.payload), c.response_bytes, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(static_cast<int64_t>(response.payload().size()), c.response_bytes);
  }
}

TEST_F(EchoTest, NegativeResponseBytesIsInvalidArgument) {
  for (int64_t response_bytes : {int64_t{-1}, std::numeric_limits<int64_t>::min()}) {
    SCOPED_TRACE(response_bytes);
    v1::EchoResponse response;
    const grpc::Status status = Echo("abc", response_bytes, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(absl::StrCat("response_bytes is ", response_bytes,
                                                               "; it must be in "
                                                               "[0, ")));
  }
}

TEST_F(EchoTest, ResponseBytesAboveTheMessageLimitIsInvalidArgument) {
  for (int64_t response_bytes :
       {kMessageLimit - kFraming + 1, kMessageLimit, std::numeric_limits<int64_t>::max()}) {
    SCOPED_TRACE(response_bytes);
    v1::EchoResponse response;
    const grpc::Status status = Echo("abc", response_bytes, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("--max-message-bytes"));
    EXPECT_THAT(status.error_message(),
                HasSubstr(absl::StrCat("[0, ", kMessageLimit - kFraming, "]")));
  }
  // The server is still answering.
  v1::EchoResponse response;
  EXPECT_TRUE(Echo("abc", 0, &response).ok());
  EXPECT_EQ(response.payload(), "abc");
}

TEST_F(EchoTest, ThroughTheClientLibrary) {
  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", ts_->server->bound_port());
  options.dedicated_connection = true;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  v1::EchoRequest request;
  request.set_payload(Pattern(3000));
  absl::StatusOr<v1::EchoResponse> mirrored = (*client)->Echo(request);
  ASSERT_TRUE(mirrored.ok()) << mirrored.status();
  EXPECT_EQ(mirrored->payload(), request.payload());
  request.set_response_bytes(-5);
  EXPECT_EQ((*client)->Echo(request).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EmbeddedEchoTest, AnswersInProcess) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(ClientOptions{});
  ASSERT_TRUE(client.ok()) << client.status();
  v1::EchoRequest request;
  request.set_payload("payload");
  absl::StatusOr<v1::EchoResponse> mirrored = (*client)->Echo(request);
  ASSERT_TRUE(mirrored.ok()) << mirrored.status();
  EXPECT_EQ(mirrored->payload(), "payload");
  request.set_response_bytes(3);
  absl::StatusOr<v1::EchoResponse> sized = (*client)->Echo(request);
  ASSERT_TRUE(sized.ok()) << sized.status();
  EXPECT_EQ(sized->payload().size(), 3u);
  request.set_response_bytes(-1);
  EXPECT_EQ((*client)->Echo(request).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quantd::testing
