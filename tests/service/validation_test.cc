// Every refusal asserts its specific code and that the message names the problem: unary
// validation (dtypes, shapes, sizes, specs, quantized tensors, calibration options), size limits,
// and the stream protocol (header first, one header, exact byte counts, budget).
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

class ValidationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server::ServerOptions options = TestOptions();
    options.max_tensor_bytes = int64_t{1} << 30;
    ts_ = new TestServer(TestServer::Start(options));
  }
  static void TearDownTestSuite() {
    ts_->server->Shutdown(absl::Now() + absl::Seconds(5));
    delete ts_;
    ts_ = nullptr;
  }
  static v1::Quantizer::Stub* stub() { return ts_->stub.get(); }

  static grpc::Status Quantize(const v1::QuantizeRequest& request) {
    grpc::ClientContext context;
    v1::QuantizeResponse response;
    return stub()->Quantize(&context, request, &response);
  }
  static grpc::Status Dequantize(const v1::DequantizeRequest& request) {
    grpc::ClientContext context;
    v1::DequantizeResponse response;
    return stub()->Dequantize(&context, request, &response);
  }
  static grpc::Status QuantDequant(const v1::QuantDequantRequest& request) {
    grpc::ClientContext context;
    v1::QuantDequantResponse response;
    return stub()->QuantDequant(&context, request, &response);
  }
  static grpc::Status Calibrate(const v1::CalibrateRequest& request) {
    grpc::ClientContext context;
    v1::CalibrateResponse response;
    return stub()->Calibrate(&context, request, &response);
  }
  // A valid quantized tensor to break in Dequantize tests.
  static v1::DequantizeRequest ValidDequantize(const std::string& descriptor) {
    v1::QuantizeResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(
        stub()
            ->Quantize(&context, QuantizeRequestFor(RandomTensor({4, 64}), descriptor), &response)
            .ok());
    v1::DequantizeRequest request;
    *request.mutable_quantized() = response.quantized();
    return request;
  }

  static TestServer* ts_;
};
TestServer* ValidationTest::ts_ = nullptr;

#define EXPECT_STATUS(status_expr, code, substring)                           \
  do {                                                                        \
    const grpc::Status s_ = (status_expr);                                    \
    EXPECT_EQ(s_.error_code(), grpc::StatusCode::code) << s_.error_message(); \
    EXPECT_THAT(s_.error_message(), HasSubstr(substring));                    \
  } while (false)

v1::QuantizeRequest Int8Request(const Shape& shape = {4, 64}) {
  return QuantizeRequestFor(RandomTensor(shape), "int8");
}

// ---- Tensors ----

TEST_F(ValidationTest, ByteLengthMismatchSaysWhatIsNeeded) {
  v1::QuantizeRequest request = Int8Request({4096, 11});
  request.mutable_input()->mutable_data()->resize(180220);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT,
                "shape [4096, 11] has 45056 elements but data holds 180220 bytes; F32 needs "
                "180224");
}

TEST_F(ValidationTest, InputDtypes) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_input()->set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "input.dtype is not set");
  request.mutable_input()->set_dtype(v1::DTYPE_U8);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "input.dtype is U8");
  request.mutable_input()->set_dtype(v1::DTYPE_I32);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "must be F32, F16 or BF16");
  request.mutable_input()->set_dtype(static_cast<v1::DType>(99));
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "input.dtype has the unknown value 99");
}

TEST_F(ValidationTest, Shapes) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_input()->set_shape(1, -64);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "negative dim -64 at index 1");

  request.mutable_input()->clear_shape();
  for (int i = 0; i < 100; ++i) request.mutable_input()->add_shape(1);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "rank 100");

  request.mutable_input()->clear_shape();
  request.mutable_input()->add_shape(int64_t{1} << 62);
  request.mutable_input()->add_shape(4);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "more elements than fit in 64 bits");

  request.mutable_input()->clear_shape();
  request.mutable_input()->add_shape(int64_t{1} << 62);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "more bytes than fit in 64 bits");

  request.mutable_input()->clear_shape();
  request.mutable_input()->add_shape(std::numeric_limits<int64_t>::min());
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "negative dim");
}

TEST_F(ValidationTest, TensorAboveMaxTensorBytes) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_input()->clear_shape();
  request.mutable_input()->add_shape(int64_t{1} << 30);
  request.mutable_input()->add_shape(4);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "--max-tensor-bytes");
}

// ---- Specs ----

TEST_F(ValidationTest, MissingFormat) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_spec()->Clear();
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT,
                "spec.format (or spec.descriptor_string) is required");
}

TEST_F(ValidationTest, UnknownEnumValuesNameTheirField) {
  struct Case {
    void (*set)(v1::QuantSpec*);
    const char* field;
  };
  const Case cases[] = {
      {[](v1::QuantSpec* s) { s->set_format(static_cast<v1::Format>(42)); }, "spec.format"},
      {[](v1::QuantSpec* s) { s->set_granularity(static_cast<v1::Granularity>(-3)); },
       "spec.granularity"},
      {[](v1::QuantSpec* s) { s->set_rounding(static_cast<v1::Rounding>(9)); }, "spec.rounding"},
      {[](v1::QuantSpec* s) { s->set_overflow(static_cast<v1::Overflow>(9)); }, "spec.overflow"},
      {[](v1::QuantSpec* s) { s->set_nan_policy(static_cast<v1::NanPolicy>(9)); },
       "spec.nan_policy"},
      {[](v1::QuantSpec* s) { s->set_packing(static_cast<v1::Packing>(9)); }, "spec.packing"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    v1::QuantizeRequest request = Int8Request();
    c.set(request.mutable_spec());
    EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT,
                  std::string(c.field) + " has the unknown value");
  }
}

TEST_F(ValidationTest, Descriptors) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_spec()->set_descriptor_string("int3-g7");
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec.descriptor_string");

  request.mutable_spec()->set_descriptor_string(std::string(100000, 'x'));
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "characters long");

  request.mutable_spec()->set_descriptor_string("int8");
  request.mutable_spec()->set_format(v1::FORMAT_INT4);
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ValidationTest, SpecAgainstFormatRules) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_spec()->set_descriptor_string("fp8-e4m3");
  request.mutable_spec()->set_asymmetric(true);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec: ");

  request = Int8Request();
  request.mutable_spec()->set_clip_ratio(2.0f);
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "clip");

  request = Int8Request();
  request.mutable_spec()->set_clip_ratio(std::nanf(""));
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  request = Int8Request();
  request.mutable_spec()->set_granularity(v1::GRANULARITY_NONE);
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  request = Int8Request();
  request.mutable_spec()->set_granularity(v1::GRANULARITY_GROUP);
  request.mutable_spec()->set_group_size(-5);
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  for (int64_t huge : {int64_t{1} << 41, std::numeric_limits<int64_t>::max()}) {
    request = Int8Request();
    request.mutable_spec()->set_granularity(v1::GRANULARITY_GROUP);
    request.mutable_spec()->set_group_size(huge);
    EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec.group_size is");
    request.mutable_spec()->set_granularity(v1::GRANULARITY_BLOCK);
    request.mutable_spec()->set_group_size(0);
    request.mutable_spec()->set_block_rows(1);
    request.mutable_spec()->set_block_cols(huge);
    EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec.block_cols is");
  }

  request = Int8Request();
  request.mutable_spec()->set_granularity(v1::GRANULARITY_CHANNEL);
  request.mutable_spec()->set_axis(7);
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ValidationTest, StaticScales) {
  v1::QuantizeRequest request = Int8Request();
  v1::Tensor* scales = request.mutable_spec()->mutable_static_scales();
  scales->set_dtype(v1::DTYPE_F16);
  scales->add_shape(1);
  scales->set_data(std::string(2, '\0'));
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec.static_scales must be F32, not F16");

  *scales = FloatTensor({2}, {1.0f, 2.0f});  // per-tensor needs one
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  *scales = FloatTensor({1}, {-1.0f});
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  *scales = FloatTensor({1}, {std::nanf("")});
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  *scales = FloatTensor({3}, {1.0f});  // shape says 3, data holds 1
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "spec.static_scales");

  request.mutable_spec()->clear_static_scales();
  v1::Tensor* zps = request.mutable_spec()->mutable_static_zero_points();
  zps->set_dtype(v1::DTYPE_I32);
  zps->add_shape(1);
  zps->set_data(std::string(4, '\0'));
  EXPECT_STATUS(Quantize(request), INVALID_ARGUMENT, "static zero-points go with static scales");

  request.mutable_spec()->clear_static_zero_points();
  *request.mutable_spec()->mutable_static_scales() = FloatTensor({1}, {0.01f});
  EXPECT_TRUE(Quantize(request).ok());
}

TEST_F(ValidationTest, NanPolicy) {
  v1::QuantizeRequest request = Int8Request({2, 8});
  float nan = std::nanf("");
  memcpy(request.mutable_input()->mutable_data()->data() + 12, &nan, 4);
  EXPECT_EQ(Quantize(request).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.mutable_spec()->set_nan_policy(v1::NAN_POLICY_ZERO);
  EXPECT_TRUE(Quantize(request).ok());
  // fp8-e4m3 has a NaN: the default propagates it.
  request.mutable_spec()->Clear();
  request.mutable_spec()->set_descriptor_string("fp8-e4m3");
  EXPECT_TRUE(Quantize(request).ok());
}

// ---- Dequantize ----

TEST_F(ValidationTest, DequantizeQuantizedTensors) {
  v1::DequantizeRequest request = ValidDequantize("int8");
  ASSERT_TRUE(Dequantize(request).ok());

  v1::DequantizeRequest r = request;
  r.mutable_quantized()->mutable_codes()->set_dtype(v1::DTYPE_U8);
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.codes.dtype is U8");

  r = request;
  r.mutable_quantized()->mutable_codes()->mutable_data()->pop_back();
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.codes.data holds 255 bytes");

  r = request;
  r.mutable_quantized()->mutable_codes()->clear_shape();
  r.mutable_quantized()->mutable_codes()->add_shape(3);
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.codes.shape [3]");

  r = request;
  r.mutable_quantized()->mutable_scales()->mutable_data()->append("abcd");
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.scales");

  for (float bad : {0.0f, -1.0f, std::nanf(""), INFINITY}) {
    r = request;
    memcpy(r.mutable_quantized()->mutable_scales()->mutable_data()->data(), &bad, 4);
    EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "scales must be finite and > 0");
  }

  r = request;
  v1::Tensor* zps = r.mutable_quantized()->mutable_zero_points();
  zps->set_dtype(v1::DTYPE_I32);
  zps->add_shape(1);
  zps->set_data(std::string(4, '\0'));
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "spec is symmetric");

  r = request;
  r.set_output_dtype(v1::DTYPE_I8);
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "output_dtype is I8");

  r = request;
  r.set_output_dtype(static_cast<v1::DType>(77));
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "output_dtype has the unknown value 77");

  r = request;
  r.mutable_quantized()->set_source_dtype(static_cast<v1::DType>(77));
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.source_dtype");

  r = request;
  r.mutable_quantized()->mutable_spec()->Clear();
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.spec.format");

  r = request;
  r.mutable_quantized()->mutable_spec()->set_format(static_cast<v1::Format>(1000));
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT,
                "quantized.spec.format has the unknown value 1000");

  r = request;
  r.mutable_quantized()->set_shape(0, -4);
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.shape");

  r = request;  // the shape no longer matches the codes
  r.mutable_quantized()->set_shape(0, 5);
  EXPECT_EQ(Dequantize(r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ValidationTest, DequantizeAsymmetric) {
  v1::DequantizeRequest request = ValidDequantize("int8-asym");
  ASSERT_TRUE(Dequantize(request).ok());

  v1::DequantizeRequest r = request;
  r.mutable_quantized()->clear_zero_points();
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "quantized.zero_points.dtype is not set");

  r = request;
  int32_t out_of_range = 1000;
  memcpy(r.mutable_quantized()->mutable_zero_points()->mutable_data()->data(), &out_of_range, 4);
  EXPECT_STATUS(Dequantize(r), INVALID_ARGUMENT, "zero-points must be in [-128, 127]");
}

// ---- QuantDequant and Calibrate ----

TEST_F(ValidationTest, QuantDequantOutputDtype) {
  v1::QuantDequantRequest request;
  *request.mutable_input() = RandomTensor({2, 32});
  request.mutable_spec()->set_descriptor_string("int8");
  request.set_output_dtype(v1::DTYPE_U8);
  EXPECT_STATUS(QuantDequant(request), INVALID_ARGUMENT, "output_dtype is U8");
  request.set_output_dtype(v1::DTYPE_F32);
  request.mutable_input()->mutable_data()->append("x");
  EXPECT_STATUS(QuantDequant(request), INVALID_ARGUMENT, "data holds 257 bytes; F32 needs 256");
}

TEST_F(ValidationTest, CalibrateOptions) {
  v1::CalibrateRequest request;
  *request.mutable_input() = RandomTensor({2, 32});
  request.mutable_spec()->set_descriptor_string("int8");
  ASSERT_TRUE(Calibrate(request).ok());

  v1::CalibrateRequest r = request;
  r.set_method(static_cast<v1::CalibrationMethod>(7));
  EXPECT_STATUS(Calibrate(r), INVALID_ARGUMENT, "method has the unknown value 7");

  for (double p : {-1.0, 100.5, std::nan(""), double{INFINITY}}) {
    r = request;
    r.set_method(v1::CALIBRATION_METHOD_PERCENTILE);
    r.set_percentile(p);
    EXPECT_STATUS(Calibrate(r), INVALID_ARGUMENT, "percentile");
  }
  for (int steps : {-1, 1001, std::numeric_limits<int>::max()}) {
    r = request;
    r.set_method(v1::CALIBRATION_METHOD_MSE);
    r.set_search_steps(steps);
    EXPECT_STATUS(Calibrate(r), INVALID_ARGUMENT, "search_steps");
  }
  for (float ratio : {-0.5f, 1.5f, std::nanf("")}) {
    r = request;
    r.set_search_min_ratio(ratio);
    EXPECT_STATUS(Calibrate(r), INVALID_ARGUMENT, "search_min_ratio");
  }
  r = request;
  *r.mutable_spec()->mutable_static_scales() = FloatTensor({1}, {1.0f});
  EXPECT_STATUS(Calibrate(r), INVALID_ARGUMENT, "Calibrate computes the scales");
}

// ---- Streams ----

v1::QuantizeStreamRequest DataFrame(size_t bytes) {
  v1::QuantizeStreamRequest frame;
  frame.set_data(std::string(bytes, '\0'));
  return frame;
}

TEST_F(ValidationTest, StreamDataBeforeHeader) {
  const QuantizeStreamResult r = RunQuantizeStream(stub(), {DataFrame(16), DataFrame(16)});
  EXPECT_STATUS(r.status, INVALID_ARGUMENT, "the first frame must be a header");
  EXPECT_STATUS(RunQuantizeStream(stub(), {v1::QuantizeStreamRequest()}).status, INVALID_ARGUMENT,
                "the first frame is empty");
}

TEST_F(ValidationTest, StreamEndsBeforeHeader) {
  EXPECT_STATUS(RunQuantizeStream(stub(), {}).status, INVALID_ARGUMENT,
                "ended before its header frame");
}

TEST_F(ValidationTest, StreamSecondHeader) {
  const v1::QuantizeRequest request = Int8Request();
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, 100);
  frames.insert(frames.begin() + 2, frames.front());
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT,
                "a second header frame arrived");
}

TEST_F(ValidationTest, StreamTruncated) {
  const v1::QuantizeRequest request = Int8Request();  // 1024 bytes
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, 100);
  frames.resize(5);  // header + 400 bytes
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT,
                "the stream ended after 400 of 1024 bytes of input (shape [4, 64], F32)");
}

TEST_F(ValidationTest, StreamMoreBytesThanDeclared) {
  const v1::QuantizeRequest request = Int8Request();
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, 1000);
  frames.back().mutable_data()->append(std::string(10, 'x'));
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT,
                "the stream sent more than the declared 1024 bytes");

  // Too much already in the header.
  frames = QuantizeFrames(request, 1000, /*first_piece=*/1024);
  frames.front().mutable_header()->mutable_input()->mutable_data()->append("x");
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT,
                "the header's data already holds 1025 bytes");
}

TEST_F(ValidationTest, StreamHeaderValidatedBeforeData) {
  v1::QuantizeRequest request = Int8Request();
  request.mutable_input()->clear_data();
  request.mutable_input()->clear_shape();
  request.mutable_input()->add_shape(int64_t{1} << 40);  // 4 TiB declared
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, 100);
  frames.push_back(DataFrame(1 << 20));
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT, "--max-tensor-bytes");

  request = Int8Request();
  request.mutable_spec()->set_format(static_cast<v1::Format>(99));
  frames = QuantizeFrames(request, 100);
  EXPECT_STATUS(RunQuantizeStream(stub(), frames).status, INVALID_ARGUMENT,
                "spec.format has the unknown value 99");
}

TEST_F(ValidationTest, DequantizeStreamProtocol) {
  const v1::DequantizeRequest request = ValidDequantize("int8");
  std::vector<v1::DequantizeStreamRequest> frames = DequantizeFrames(request, 100);

  std::vector<v1::DequantizeStreamRequest> bad = frames;
  bad[1].mutable_data()->set_part(v1::PART_UNSPECIFIED);
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT, "data.part is 0");

  bad = frames;
  bad[1].mutable_data()->set_part(static_cast<v1::Part>(17));
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT, "data.part is 17");

  bad = frames;
  bad[1].mutable_data()->set_part(v1::PART_ZERO_POINTS);
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "PART_ZERO_POINTS data arrived but the header's spec is symmetric");

  bad = frames;
  bad[1].mutable_data()->mutable_data()->append(std::string(300, 'x'));
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "more PART_CODES bytes than declared");

  bad = frames;
  bad.pop_back();  // the last piece of the scales is missing
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "256 of 256 bytes of codes, 0 of 4 bytes of scales");

  bad = frames;
  bad.insert(bad.begin() + 1, bad.front());
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT, "second header");

  bad = frames;
  bad.front().mutable_header()->mutable_quantized()->mutable_codes()->set_dtype(v1::DTYPE_I32);
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "quantized.codes.dtype is I32");

  bad = frames;  // a zero scale is caught once the scales are complete
  bad.back().mutable_data()->set_data(std::string(4, '\0'));
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "scales must be finite and > 0");

  bad = {frames[1]};
  EXPECT_STATUS(RunDequantizeStream(stub(), bad).status, INVALID_ARGUMENT,
                "the first frame must be a header");
}

// ---- Limits that need their own server ----

TEST(SmallLimitsTest, MessageAndBudgetLimits) {
  server::ServerOptions options = TestOptions(/*with_metrics=*/true);
  options.max_message_bytes = 1 << 20;
  options.stream_chunk_bytes = 64 << 10;
  options.max_inflight_bytes = 2 << 20;
  TestServer ts = TestServer::Start(options);

  // A unary request above the message limit: gRPC itself refuses it.
  {
    grpc::ClientContext context;
    v1::QuantizeResponse response;
    grpc::Status s = ts.stub->Quantize(
        &context, QuantizeRequestFor(RandomTensor({512, 1024}), "int8"), &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  }
  // A unary response above the message limit: refused before any work, pointing at streams.
  {
    v1::QuantDequantRequest request;
    *request.mutable_input() = RandomTensor({300, 1000}, DType::kBF16);  // 600 KB in
    request.mutable_spec()->set_descriptor_string("int8");
    request.set_output_dtype(v1::DTYPE_F32);  // 1.2 MB out
    grpc::ClientContext context;
    v1::QuantDequantResponse response;
    EXPECT_STATUS(ts.stub->QuantDequant(&context, request, &response), INVALID_ARGUMENT,
                  "--max-message-bytes");
  }
  // A stream needing more than the whole budget can never run.
  {
    const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({1024, 1024}), "int8");
    EXPECT_STATUS(RunQuantizeStream(ts.stub.get(), QuantizeFrames(request, 60 << 10)).status,
                  INVALID_ARGUMENT, "--max-inflight-bytes");
  }
  // One stream holding most of the budget makes the next one wait (RESOURCE_EXHAUSTED).
  {
    const v1::QuantizeRequest big = QuantizeRequestFor(RandomTensor({256, 1024}), "int8");
    grpc::ClientContext holder_context;
    auto holder = ts.stub->QuantizeStream(&holder_context);
    ASSERT_TRUE(holder->Write(QuantizeFrames(big, 60 << 10).front()));  // header only
    // Wait until the server charged the header.
    for (int i = 0; i < 500; ++i) {
      if (SampleValue(ScrapeMetrics(ts.server->metrics_port()), "quantd_inflight_bytes") > 0) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_STATUS(RunQuantizeStream(ts.stub.get(), QuantizeFrames(big, 60 << 10)).status,
                  RESOURCE_EXHAUSTED, "--max-inflight-bytes");
    // Unary calls share the budget: 600 KB in + 600 KB out do not fit beside the stream.
    {
      v1::QuantDequantRequest request;
      *request.mutable_input() = RandomTensor({300, 512});
      request.mutable_spec()->set_descriptor_string("int8");
      grpc::ClientContext context;
      v1::QuantDequantResponse response;
      EXPECT_STATUS(ts.stub->QuantDequant(&context, request, &response), RESOURCE_EXHAUSTED,
                    "calls in flight already hold");
    }
    holder_context.TryCancel();
    holder->Finish();
    // The budget comes back: the same stream now succeeds.
    grpc::Status after;
    for (int i = 0; i < 100; ++i) {
      after = RunQuantizeStream(ts.stub.get(), QuantizeFrames(big, 60 << 10)).status;
      if (after.ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(after.ok()) << after.error_message();
    // Released when the server is done with the call, which may be just after the client has
    // its status.
    double buffered = -1;
    for (int i = 0; i < 200 && buffered != 0; ++i) {
      buffered = SampleValue(ScrapeMetrics(ts.server->metrics_port()), "quantd_inflight_bytes");
      if (buffered != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(buffered, 0);
  }
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST(LateFrameTest, FrameAfterTheDeclaredBytes) {
  // The worker pauses before each task so that the extra frame is surely read before the
  // answer is written.
  server::ServerOptions options = TestOptions();
  options.before_task_for_testing = [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  };
  TestServer ts = TestServer::Start(options);
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({4, 64}), "int8");
  std::vector<v1::QuantizeStreamRequest> frames = QuantizeFrames(request, 512);
  frames.push_back(DataFrame(8));
  EXPECT_STATUS(RunQuantizeStream(ts.stub.get(), frames).status, INVALID_ARGUMENT,
                "a frame arrived after the 1024 bytes of input");
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

}  // namespace
}  // namespace quantd::testing
