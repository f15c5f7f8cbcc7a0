// QuantizeStream / DequantizeStream: round trips over many small chunks (a small
// stream_chunk_bytes makes a few MB exercise hundreds of frames both ways), equality with the
// unary answers, and the opt-in > 2 GiB tensor.
#include <cstdlib>
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

// A tensor above 2 GiB (the protobuf message limit) travels through the stream. Opt-in:
// QUANTD_LARGE_TESTS=1 (needs ~8 GiB of memory and a minute on 2 cores).
TEST(LargeStreamTest, QuantizeAndDequantizeAbove2GiB) {
  if (std::getenv("QUANTD_LARGE_TESTS") == nullptr) {
    GTEST_SKIP() << "set QUANTD_LARGE_TESTS=1 to run the > 2 GiB stream test";
  }
  server::ServerOptions options = TestOptions();
  options.threads = 0;
  TestServer ts = TestServer::Start(options);
  const int64_t rows = 33 << 10, cols = 16 << 10;  // 2.06 GiB of F32
  v1::QuantizeRequest request;
  request.mutable_spec()->set_descriptor_string("int8-token");
  request.mutable_input()->set_dtype(v1::DTYPE_F32);
  request.mutable_input()->add_shape(rows);
  request.mutable_input()->add_shape(cols);
  std::vector<v1::QuantizeStreamRequest> frames;
  {
    v1::QuantizeStreamRequest header;
    *header.mutable_header() = request;
    frames.push_back(std::move(header));
  }
  // Row r holds the values (c - cols/2) * (r + 1) / cols: every row has an exact int8 grid.
  constexpr int64_t kRowsPerFrame = 64;  // 4 MiB frames
  std::vector<float> block(static_cast<size_t>(kRowsPerFrame * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerFrame) {
    for (int64_t r = 0; r < kRowsPerFrame; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        block[static_cast<size_t>(r * cols + c)] =
            static_cast<float>(c % 255 - 127) * static_cast<float>(r0 + r + 1);
      }
    }
    v1::QuantizeStreamRequest frame;
    frame.set_data(block.data(), block.size() * sizeof(float));
    frames.push_back(std::move(frame));
  }
  const QuantizeStreamResult streamed =
      RunQuantizeStream(ts.stub.get(), frames, /*writes_done=*/true, absl::Minutes(10));
  frames.clear();
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  const v1::QuantizedTensor& q = streamed.header.quantized();
  ASSERT_EQ(static_cast<int64_t>(q.codes().data().size()), rows * cols);
  ASSERT_EQ(static_cast<int64_t>(q.scales().data().size()), rows * 4);
  // Each row's amax is 127·(r+1), so its scale is r+1 and its codes are c % 255 - 127.
  const std::vector<float> scales = ValuesOf<float>(q.scales().data());
  for (int64_t r : {int64_t{0}, int64_t{1}, rows / 2, rows - 1}) {
    EXPECT_EQ(scales[static_cast<size_t>(r)], static_cast<float>(r + 1)) << r;
    for (int64_t c : {int64_t{0}, int64_t{1}, int64_t{254}, cols - 1}) {
      EXPECT_EQ(static_cast<int8_t>(q.codes().data()[static_cast<size_t>(r * cols + c)]),
                c % 255 - 127);
    }
  }
  EXPECT_TRUE(std::isinf(streamed.header.metrics().sqnr_db()));  // exact

  // And back: 2 GiB of F32 output from 0.5 GiB of codes.
  v1::DequantizeRequest dequantize;
  *dequantize.mutable_quantized() = q;
  std::vector<v1::DequantizeStreamRequest> dq_frames =
      DequantizeFrames(dequantize, /*chunk=*/4 << 20);
  dequantize.Clear();
  const DequantizeStreamResult back =
      RunDequantizeStream(ts.stub.get(), dq_frames, /*writes_done=*/true, absl::Minutes(10));
  dq_frames.clear();
  ASSERT_TRUE(back.status.ok()) << back.status.error_message();
  const std::string& out = back.header.output().data();
  ASSERT_EQ(static_cast<int64_t>(out.size()), rows * cols * 4);
  for (int64_t r : {int64_t{0}, rows - 1}) {
    for (int64_t c : {int64_t{0}, cols - 1}) {
      float v;
      memcpy(&v, out.data() + (r * cols + c) * 4, 4);
      EXPECT_EQ(v, static_cast<float>(c % 255 - 127) * static_cast<float>(r + 1));
    }
  }
  ts.server->Shutdown(absl::Now() + absl::Seconds(10));
}

}  // namespace
}  // namespace quantd::testing
