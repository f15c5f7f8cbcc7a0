// QuantizeStream / DequantizeStream: round trips over many small chunks (a small
// stream_chunk_bytes makes a few MB exercise hundreds of frames both ways), equality with the
// unary answers, and the opt-in > 2 GiB tensor.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

constexpr int64_t kChunk = 64 << 10;

class StreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = TestOptions();
    options.stream_chunk_bytes = kChunk;
    ts_ = new TestServer(TestServer::Start(options));
  }
  static void TearDownTestSuite() {
    ts_->server->Shutdown(absl::Now() + absl::Seconds(5));
    delete ts_;
    ts_ = nullptr;
  }
  static v1::Quantizer::Stub* stub() { return ts_->stub.get(); }
  static TestServer* ts_;
};
TestServer* StreamTest::ts_ = nullptr;

v1::QuantizeResponse UnaryQuantize(v1::Quantizer::Stub* stub, const v1::QuantizeRequest& request) {
  v1::QuantizeResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub->Quantize(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

TEST_F(StreamTest, QuantizeStreamMatchesUnaryOverManyChunks) {
  for (const char* descriptor : {"int8", "int4-g128", "uint8-asym", "fp8-e5m2"}) {
    SCOPED_TRACE(descriptor);
    // 3 MiB of F32: ~50 request frames of 60 KiB and ~13+ response frames for int8 codes.
    const v1::QuantizeRequest request =
        QuantizeRequestFor(RandomTensor({768, 1024}, DType::kF32, /*seed=*/5), descriptor);
    const QuantizeStreamResult streamed = RunQuantizeStream(
        stub(), QuantizeFrames(request, /*chunk=*/60 << 10, /*first_piece=*/1000));
    ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
    EXPECT_EQ(streamed.header_frames, 1);
    EXPECT_GT(streamed.data_frames, 3);
    EXPECT_LE(streamed.largest_frame, kChunk);

    const v1::QuantizeResponse unary = UnaryQuantize(stub(), request);
    const v1::QuantizedTensor& s = streamed.header.quantized();
    const v1::QuantizedTensor& u = unary.quantized();
    EXPECT_EQ(s.codes().data(), u.codes().data());
    EXPECT_EQ(s.scales().data(), u.scales().data());
    EXPECT_EQ(s.zero_points().data(), u.zero_points().data());
    EXPECT_EQ(s.codes().dtype(), u.codes().dtype());
    EXPECT_EQ(s.codes().shape_size(), u.codes().shape_size());
    EXPECT_EQ(s.scales().shape_size(), u.scales().shape_size());
    EXPECT_EQ(s.spec().format(), u.spec().format());
    // Summed metrics may differ in the last bits (threads add in a different order).
    EXPECT_NEAR(streamed.header.metrics().sqnr_db(), unary.metrics().sqnr_db(), 1e-9);
    EXPECT_EQ(streamed.header.backend(), "cpu");
  }
}

TEST_F(StreamTest, WholeTensorInTheHeader) {
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({4, 64}), "int8");
  const QuantizeStreamResult streamed =
      RunQuantizeStream(stub(), QuantizeFrames(request, /*chunk=*/1 << 20,
                                               /*first_piece=*/int64_t{1} << 40));
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.header.quantized().codes().data(),
            UnaryQuantize(stub(), request).quantized().codes().data());
}

TEST_F(StreamTest, EmptyDataFramesAreHarmless) {
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({4, 64}), "int8");
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, /*chunk=*/100);
  v1::QuantizeStreamRequest empty;
  empty.set_data("");
  frames.insert(frames.begin() + 2, empty);
  const QuantizeStreamResult streamed = RunQuantizeStream(stub(), frames);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
}

TEST_F(StreamTest, CompletesWithoutHalfClose) {
  // A client that waits for the answer without closing its side still gets it: compute starts
  // when the declared bytes are complete.
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({8, 64}), "int8");
  const QuantizeStreamResult streamed =
      RunQuantizeStream(stub(), QuantizeFrames(request, /*chunk=*/512), /*writes_done=*/false);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.header.quantized().codes().data().size(), 8u * 64u);
}

TEST_F(StreamTest, DequantizeStreamMatchesUnary) {
  for (const char* descriptor : {"int8", "int4-g128", "uint4-asym"}) {
    SCOPED_TRACE(descriptor);
    const v1::QuantizeRequest quantize =
        QuantizeRequestFor(RandomTensor({512, 1024}, DType::kF32, /*seed=*/9), descriptor);
    v1::DequantizeRequest request;
    *request.mutable_quantized() = UnaryQuantize(stub(), quantize).quantized();
    const DequantizeStreamResult streamed =
        RunDequantizeStream(stub(), DequantizeFrames(request, /*chunk=*/50 << 10));
    ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
    EXPECT_GT(streamed.data_frames, 10);  // 2 MiB of F32 output in ≤ 64 KiB frames
    EXPECT_LE(streamed.largest_frame, kChunk);
    EXPECT_EQ(streamed.header.output().dtype(), v1::DTYPE_F32);
    EXPECT_EQ(streamed.header.output().data(), DequantizeDirect(request).output);
  }
}

TEST_F(StreamTest, DequantizeStreamAcceptsInterleavedParts) {
  const v1::QuantizeRequest quantize = QuantizeRequestFor(RandomTensor({16, 256}), "int8-asym");
  v1::DequantizeRequest request;
  *request.mutable_quantized() = UnaryQuantize(stub(), quantize).quantized();
  std::vector<v1::DequantizeStreamRequest> frames = DequantizeFrames(request, /*chunk=*/1000);
  // Header first, then the data frames in reverse order of parts (pieces of a part stay in
  // order).
  std::stable_sort(frames.begin() + 1, frames.end(),
                   [](const v1::DequantizeStreamRequest& a, const v1::DequantizeStreamRequest& b) {
                     return a.data().part() > b.data().part();
                   });
  const DequantizeStreamResult streamed = RunDequantizeStream(stub(), frames);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.header.output().data(), DequantizeDirect(request).output);
}

TEST_F(StreamTest, EmptyTensor) {
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({0, 64}), "int8");
  const QuantizeStreamResult streamed = RunQuantizeStream(stub(), QuantizeFrames(request, 100));
  // An empty tensor is either quantized (no codes) or refused clearly; never a crash.
  if (!streamed.status.ok()) {
    EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  } else {
    EXPECT_TRUE(streamed.header.quantized().codes().data().empty());
  }
  EXPECT_EQ(CheckHealth(*ts_), grpc::health::v1::HealthCheckResponse::SERVING);
}

// Tensors above 2 GiB (the protobuf message limit): tests/e2e/test_large.py sends 2.2 GB
// through the real quantd and quantctl, in every CI run.
}  // namespace
}  // namespace quantd::testing
