// Happy paths of every RPC against the Backend called directly, plus capabilities, health and
// reflection, on an in-process server with real gRPC stubs.
#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/client_callback.h"
#include "gtest/gtest.h"
#include "quantd/cuda.h"
#include "quantd/format.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ts_ = new TestServer(TestServer::Start(TestOptions())); }
  static void TearDownTestSuite() {
    ts_->server->Shutdown(absl::Now() + absl::Seconds(5));
    delete ts_;
    ts_ = nullptr;
  }
  static v1::Quantizer::Stub* stub() { return ts_->stub.get(); }
  static TestServer* ts_;
};
TestServer* ServiceTest::ts_ = nullptr;

grpc::Status Call(v1::Quantizer::Stub* stub, const v1::QuantizeRequest& request,
                  v1::QuantizeResponse* response) {
  grpc::ClientContext context;
  return stub->Quantize(&context, request, response);
}

struct QuantizeCase {
  std::string name;
  std::string descriptor;
  v1::Format format;
  v1::Granularity granularity;
  int64_t group_size;
  bool asymmetric;
  Shape shape;
  DType dtype;
};

// What CTest prints for each instance (instead of the parameter's bytes).
void PrintTo(const QuantizeCase& c, std::ostream* os) { *os << c.name; }

class QuantizeTest : public ServiceTest, public ::testing::WithParamInterface<QuantizeCase> {};

TEST_P(QuantizeTest, MatchesBackendAndFillsTheSpec) {
  const QuantizeCase& c = GetParam();
  v1::QuantizeRequest request;
  *request.mutable_input() = RandomTensor(c.shape, c.dtype, /*seed=*/7);
  v1::QuantSpec* spec = request.mutable_spec();
  spec->set_descriptor_string(c.descriptor);
  spec->set_format(c.format);
  spec->set_granularity(c.granularity);
  spec->set_group_size(c.group_size);
  spec->set_asymmetric(c.asymmetric);

  v1::QuantizeResponse response;
  grpc::Status status = Call(stub(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Direct direct = QuantizeDirect(request);
  ASSERT_TRUE(direct.status.ok()) << direct.status;

  const v1::QuantizedTensor& q = response.quantized();
  EXPECT_EQ(q.codes().data(), direct.codes);
  EXPECT_EQ(ValuesOf<float>(q.scales().data()), direct.scales);
  EXPECT_EQ(ValuesOf<int32_t>(q.zero_points().data()), direct.zero_points);
  EXPECT_EQ(q.scales().dtype(), v1::DTYPE_F32);
  if (!direct.zero_points.empty()) {
    EXPECT_EQ(q.zero_points().dtype(), v1::DTYPE_I32);
  } else {
    EXPECT_FALSE(q.has_zero_points());
  }
  const bool int8 = q.spec().format() == v1::FORMAT_INT8;
  EXPECT_EQ(q.codes().dtype(), int8 ? v1::DTYPE_I8 : v1::DTYPE_U8);
  EXPECT_EQ(std::vector<int64_t>(q.shape().begin(), q.shape().end()), c.shape);
  EXPECT_EQ(q.source_dtype(), static_cast<v1::DType>(c.dtype));

  // Every default filled in.
  EXPECT_NE(q.spec().format(), v1::FORMAT_UNSPECIFIED);
  EXPECT_NE(q.spec().granularity(), v1::GRANULARITY_UNSPECIFIED);
  EXPECT_NE(q.spec().rounding(), v1::ROUNDING_UNSPECIFIED);
  EXPECT_NE(q.spec().overflow(), v1::OVERFLOW_UNSPECIFIED);
  EXPECT_NE(q.spec().nan_policy(), v1::NAN_POLICY_UNSPECIFIED);
  EXPECT_NE(q.spec().packing(), v1::PACKING_UNSPECIFIED);
  EXPECT_EQ(q.spec().clip_ratio(), 1.0f);
  EXPECT_TRUE(q.spec().descriptor_string().empty());

  ASSERT_TRUE(response.has_metrics());
  EXPECT_GT(response.metrics().sqnr_db(), 5.0);
  EXPECT_EQ(response.metrics().count(), static_cast<int64_t>(q.shape(0)) *
                                            (c.shape.size() > 1 ? c.shape[1] : 1) *
                                            (c.shape.size() > 2 ? c.shape[2] : 1));
  EXPECT_EQ(response.backend(), "cpu");

  // The answer dequantizes to what the backend gives for it.
  v1::DequantizeRequest dequantize;
  *dequantize.mutable_quantized() = q;
  v1::DequantizeResponse dequantized;
  grpc::ClientContext context;
  status = stub()->Dequantize(&context, dequantize, &dequantized);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Direct direct_dq = DequantizeDirect(dequantize);
  ASSERT_TRUE(direct_dq.status.ok()) << direct_dq.status;
  EXPECT_EQ(dequantized.output().data(), direct_dq.output);
  EXPECT_EQ(dequantized.output().dtype(), v1::DTYPE_F32);
  EXPECT_EQ(dequantized.backend(), "cpu");
}

INSTANTIATE_TEST_SUITE_P(Specs, QuantizeTest,
                         ::testing::Values(QuantizeCase{"Int8Descriptor",
                                                        "int8",
                                                        v1::FORMAT_UNSPECIFIED,
                                                        v1::GRANULARITY_UNSPECIFIED,
                                                        0,
                                                        false,
                                                        {5, 160},
                                                        DType::kF32},
                                           QuantizeCase{"Int8AsymF16",
                                                        "int8-asym",
                                                        v1::FORMAT_UNSPECIFIED,
                                                        v1::GRANULARITY_UNSPECIFIED,
                                                        0,
                                                        false,
                                                        {217, 256},
                                                        DType::kF16},
                                           QuantizeCase{"Int4Group128",
                                                        "int4-g128",
                                                        v1::FORMAT_UNSPECIFIED,
                                                        v1::GRANULARITY_UNSPECIFIED,
                                                        0,
                                                        false,
                                                        {5, 160},
                                                        DType::kF32},
                                           QuantizeCase{"Uint4AsymGroupBF16",
                                                        "",
                                                        v1::FORMAT_UINT4,
                                                        v1::GRANULARITY_GROUP,
                                                        32,
                                                        true,
                                                        {3, 5, 64},
                                                        DType::kBF16},
                                           QuantizeCase{"Int8Channel",
                                                        "",
                                                        v1::FORMAT_INT8,
                                                        v1::GRANULARITY_CHANNEL,
                                                        0,
                                                        false,
                                                        {16, 33},
                                                        DType::kF32},
                                           QuantizeCase{"Int8Token",
                                                        "int8-token",
                                                        v1::FORMAT_UNSPECIFIED,
                                                        v1::GRANULARITY_UNSPECIFIED,
                                                        0,
                                                        false,
                                                        {1, 16},
                                                        DType::kF32},
                                           QuantizeCase{"Fp8E4M3",
                                                        "fp8-e4m3",
                                                        v1::FORMAT_UNSPECIFIED,
                                                        v1::GRANULARITY_UNSPECIFIED,
                                                        0,
                                                        false,
                                                        {5, 160},
                                                        DType::kF32},
                                           QuantizeCase{"Fp8E5M2Structured",
                                                        "",
                                                        v1::FORMAT_FP8_E5M2,
                                                        v1::GRANULARITY_TENSOR,
                                                        0,
                                                        false,
                                                        {7, 9},
                                                        DType::kBF16}),
                         [](const ::testing::TestParamInfo<QuantizeCase>& param_info) {
                           return param_info.param.name;
                         });

TEST_F(ServiceTest, SkipMetricsLeavesThemOut) {
  v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({4, 32}), "int8");
  request.set_skip_metrics(true);
  v1::QuantizeResponse response;
  ASSERT_TRUE(Call(stub(), request, &response).ok());
  EXPECT_FALSE(response.has_metrics());
}

TEST_F(ServiceTest, DequantizeToF16AndBF16) {
  v1::QuantizeResponse quantized;
  ASSERT_TRUE(
      Call(stub(), QuantizeRequestFor(RandomTensor({8, 64}), "int4-g128"), &quantized).ok());
  for (v1::DType dtype : {v1::DTYPE_F16, v1::DTYPE_BF16}) {
    v1::DequantizeRequest request;
    *request.mutable_quantized() = quantized.quantized();
    request.set_output_dtype(dtype);
    v1::DequantizeResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub()->Dequantize(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.output().dtype(), dtype);
    EXPECT_EQ(response.output().data(), DequantizeDirect(request).output);
    EXPECT_EQ(response.output().data().size(), 8u * 64u * 2u);
  }
}

TEST_F(ServiceTest, QuantDequantMatchesBackend) {
  for (const char* descriptor : {"int8", "int4-g128", "fp8-e4m3", "uint8-asym"}) {
    SCOPED_TRACE(descriptor);
    v1::QuantDequantRequest request;
    *request.mutable_input() = RandomTensor({6, 256}, DType::kF16, /*seed=*/3);
    request.mutable_spec()->set_descriptor_string(descriptor);
    v1::QuantDequantResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub()->QuantDequant(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.output().dtype(), v1::DTYPE_F16);  // the input's by default
    EXPECT_EQ(response.output().data(), QuantDequantDirect(request).output);
    EXPECT_TRUE(response.has_metrics());
    EXPECT_NE(response.spec().format(), v1::FORMAT_UNSPECIFIED);
    EXPECT_EQ(response.backend(), "cpu");
  }
}

TEST_F(ServiceTest, QuantDequantOutputDtype) {
  v1::QuantDequantRequest request;
  *request.mutable_input() = RandomTensor({4, 64}, DType::kBF16);
  request.mutable_spec()->set_descriptor_string("int8");
  request.set_output_dtype(v1::DTYPE_F32);
  v1::QuantDequantResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub()->QuantDequant(&context, request, &response).ok());
  EXPECT_EQ(response.output().dtype(), v1::DTYPE_F32);
  EXPECT_EQ(response.output().data().size(), 4u * 64u * 4u);
}

TEST_F(ServiceTest, CalibrateThenStaticQuantize) {
  for (v1::CalibrationMethod method :
       {v1::CALIBRATION_METHOD_AMAX, v1::CALIBRATION_METHOD_PERCENTILE,
        v1::CALIBRATION_METHOD_MSE}) {
    SCOPED_TRACE(v1::CalibrationMethod_Name(method));
    v1::CalibrateRequest request;
    *request.mutable_input() = RandomTensor({16, 128}, DType::kF32, /*seed=*/11);
    request.mutable_spec()->set_descriptor_string("int8-token");
    request.set_method(method);
    v1::CalibrateResponse response;
    grpc::ClientContext context;
    grpc::Status status = stub()->Calibrate(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.scales().data().size(), 16u * 4u);
    EXPECT_EQ(
        std::vector<int64_t>(response.scales().shape().begin(), response.scales().shape().end()),
        (std::vector<int64_t>{16, 1}));
    EXPECT_EQ(response.amax().data().size(), 16u * 4u);
    EXPECT_EQ(response.clip_ratios().data().size(), 16u * 4u);
    EXPECT_EQ(response.spec().static_scales().data(), response.scales().data());
    EXPECT_TRUE(response.has_metrics());
    EXPECT_EQ(response.backend(), "cpu");

    // The calibrated spec quantizes with exactly those scales.
    v1::QuantizeRequest quantize;
    *quantize.mutable_input() = request.input();
    *quantize.mutable_spec() = response.spec();
    v1::QuantizeResponse quantized;
    ASSERT_TRUE(Call(stub(), quantize, &quantized).ok());
    EXPECT_EQ(quantized.quantized().scales().data(), response.scales().data());
  }
}

TEST_F(ServiceTest, CalibrateAsymmetricFillsZeroPoints) {
  v1::CalibrateRequest request;
  *request.mutable_input() = RandomTensor({4, 64});
  request.mutable_spec()->set_descriptor_string("int8-asym");
  v1::CalibrateResponse response;
  grpc::ClientContext context;
  grpc::Status status = stub()->Calibrate(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.zero_points().dtype(), v1::DTYPE_I32);
  EXPECT_EQ(response.zero_points().data().size(), 4u);
  EXPECT_EQ(response.spec().static_zero_points().data(), response.zero_points().data());
}

TEST_F(ServiceTest, GetCapabilities) {
  v1::GetCapabilitiesResponse response;
  grpc::ClientContext context;
  ASSERT_TRUE(stub()->GetCapabilities(&context, {}, &response).ok());
  EXPECT_FALSE(response.version().empty());
  ASSERT_EQ(response.formats_size(), kNumFormats - 1);
  for (const v1::FormatInfo& info : response.formats()) {
    const FormatTraits& traits = Traits(static_cast<Format>(info.format()));
    EXPECT_EQ(info.name(), std::string(traits.name));
    EXPECT_EQ(info.bits(), traits.bits);
    EXPECT_GT(info.granularities_size(), 0);
    EXPECT_GT(info.descriptors_size(), 0) << info.name();
  }
  EXPECT_EQ(response.active_backend(), "cpu");
  EXPECT_GE(response.backends_size(), 1);
  EXPECT_EQ(response.limits().max_message_bytes(), int64_t{64} << 20);
  EXPECT_EQ(response.limits().max_tensor_bytes(), int64_t{16} << 30);
  EXPECT_EQ(response.limits().max_queue(), 256);
  EXPECT_EQ(response.limits().workers(), 2);
  EXPECT_EQ(response.limits().stream_chunk_bytes(), int64_t{4} << 20);
  EXPECT_EQ(response.limits().max_rank(), kMaxRank);
  EXPECT_GT(response.descriptors_size(), 0);
}

TEST_F(ServiceTest, HealthIsServing) {
  EXPECT_EQ(CheckHealth(*ts_), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(CheckHealth(*ts_, "quantd.v1.Quantizer"),
            grpc::health::v1::HealthCheckResponse::SERVING);
}

// A reflection client without the reflection protos: ServerReflectionRequest{list_services: ""}
// is the two bytes 0x3A 0x00, and the answer names every service as a plain string.
class ReflectionCall : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit ReflectionCall(grpc::GenericStub* stub) {
    const char list_services[] = {0x3A, 0x00};
    grpc::Slice slice(list_services, sizeof(list_services));
    request_ = grpc::ByteBuffer(&slice, 1);
    stub->PrepareBidiStreamingCall(&context_,
                                   "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (ok) {
      std::vector<grpc::Slice> slices;
      if (response_.Dump(&slices).ok()) {
        for (const grpc::Slice& s : slices) {
          answer_.append(reinterpret_cast<const char*>(s.begin()), s.size());
        }
      }
      StartRead(&response_);
    }
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }
  std::string Await() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return answer_;
  }

 private:
  grpc::ClientContext context_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  std::string answer_;
  absl::Mutex mu_;
  bool done_ = false;
  grpc::Status status_;
};

TEST_F(ServiceTest, ReflectionListsTheService) {
  grpc::GenericStub generic(ts_->channel);
  ReflectionCall call(&generic);
  const std::string answer = call.Await();
  EXPECT_NE(answer.find("quantd.v1.Quantizer"), std::string::npos) << answer;
  EXPECT_NE(answer.find("grpc.health.v1.Health"), std::string::npos) << answer;
}

}  // namespace
}  // namespace quantd::testing

namespace quantd::testing {
namespace {

TEST(ServerLifecycleTest, BadOptionsAreInvalidArgument) {
  const std::vector<std::function<void(server::ServerOptions*)>> breakers = {
      [](server::ServerOptions* o) { o->listen_address = ""; },
      [](server::ServerOptions* o) { o->max_queue = -1; },
      [](server::ServerOptions* o) { o->workers = -2; },
      [](server::ServerOptions* o) { o->max_message_bytes = 10; },
      [](server::ServerOptions* o) { o->stream_chunk_bytes = 0; },
      [](server::ServerOptions* o) { o->stream_chunk_bytes = o->max_message_bytes + 1; },
      [](server::ServerOptions* o) { o->max_tensor_bytes = 0; },
      [](server::ServerOptions* o) { o->max_inflight_bytes = -1; },
      [](server::ServerOptions* o) { o->inline_max_bytes = -1; },
      [](server::ServerOptions* o) { o->cuda_host_max_elements = -1; },
      [](server::ServerOptions* o) { o->cuda_memory_cap_bytes = -1; },
      [](server::ServerOptions* o) { o->cuda_upload_min_bytes = -1; },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    server::ServerOptions options = TestOptions();
    breakers[i](&options);
    absl::StatusOr<std::unique_ptr<server::Server>> created = server::Server::Create(options);
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << i;
    EXPECT_THAT(std::string(created.status().message()), ::testing::HasSubstr("--")) << i;
  }
}

TEST(ServerLifecycleTest, BackendChoice) {
  EXPECT_EQ(*server::ParseBackendChoice("cpu"), server::BackendChoice::kCpu);
  EXPECT_EQ(*server::ParseBackendChoice("auto"), server::BackendChoice::kAuto);
  EXPECT_EQ(*server::ParseBackendChoice("cuda"), server::BackendChoice::kCuda);
  EXPECT_EQ(server::ParseBackendChoice("gpu").status().code(), absl::StatusCode::kInvalidArgument);
  server::ServerOptions options = TestOptions();
  options.backend = server::BackendChoice::kAuto;
  absl::StatusOr<std::unique_ptr<server::Server>> created = server::Server::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  // Without a visible GPU, auto chooses the CPU and says why.
  if (quantd::CudaDeviceCount() == 0) {
    EXPECT_EQ((*created)->backend_name(), "cpu");
    EXPECT_THAT((*created)->backend_note(), ::testing::HasSubstr("using cpu"));
    options.backend = server::BackendChoice::kCuda;
    EXPECT_EQ(server::Server::Create(options).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

TEST(ServerLifecycleTest, BusyAddressIsUnavailable) {
  TestServer first = TestServer::Start(TestOptions());
  server::ServerOptions options = TestOptions();
  options.listen_address = absl::StrCat("127.0.0.1:", first.server->bound_port());
  absl::StatusOr<std::unique_ptr<server::Server>> second = server::Server::Create(options);
  ASSERT_TRUE(second.ok());
  absl::Status started = (*second)->Start();
  EXPECT_EQ(started.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(started.message()), ::testing::HasSubstr("--listen"));
  first.server->Shutdown(absl::Now() + absl::Seconds(5));
}

}  // namespace
}  // namespace quantd::testing
