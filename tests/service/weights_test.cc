// Registered weights through real gRPC stubs (CPU backend): RegisterWeight / ListWeights /
// DropWeight, GEMMs on a handle giving the inline weight's bits, the memory cap, the refusals,
// the gauges, and RegisterWeightStream for weights above one message.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/weights.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(TestOptions()); }
  void TearDown() override {
    if (ts_.server != nullptr) ts_.server->Shutdown(absl::Now() + absl::Seconds(5));
  }
  void Start(const server::ServerOptions& options) {
    if (ts_.server != nullptr) ts_.server->Shutdown(absl::Now() + absl::Seconds(5));
    ts_ = TestServer::Start(options);
    ASSERT_NE(ts_.server, nullptr);
  }

  grpc::Status Register(const v1::Tensor& weight, const std::string& descriptor, bool keep_original,
                        v1::RegisterWeightResponse* response, const std::string& name = "w") {
    v1::RegisterWeightRequest request;
    *request.mutable_weight() = weight;
    if (!descriptor.empty()) request.mutable_spec()->set_descriptor_string(descriptor);
    request.set_name(name);
    request.set_keep_original(keep_original);
    grpc::ClientContext context;
    return ts_.stub->RegisterWeight(&context, request, response);
  }
  grpc::Status Gemm(const v1::GemmRequest& request, v1::GemmResponse* response) {
    grpc::ClientContext context;
    return ts_.stub->Gemm(&context, request, response);
  }
  grpc::Status Drop(const std::string& handle, v1::DropWeightResponse* response) {
    v1::DropWeightRequest request;
    request.set_handle(handle);
    grpc::ClientContext context;
    return ts_.stub->DropWeight(&context, request, response);
  }
  v1::ListWeightsResponse List() {
    v1::ListWeightsResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(ts_.stub->ListWeights(&context, v1::ListWeightsRequest(), &response).ok());
    return response;
  }

  TestServer ts_;
};

struct WeightCase {
  const char* activations;  // A's descriptor ("" = unquantized)
  const char* weight;       // B's ("" = unquantized)
};

// A GEMM on a registered weight is the GEMM on the same weight sent inline, bit for bit, for
// the tensor-core formats and the simulated ones; with keep_original the metrics are the
// inline call's too, without it they measure the activations' quantization only (and say so).
TEST_F(WeightsTest, RegisteredWeightGivesTheInlineProductBitForBit) {
  const WeightCase cases[] = {{"int8", "int8"},   {"fp8-e4m3", "fp8-e4m3"},  {"", "nvfp4"},
                              {"mxfp4", "mxfp4"}, {"int8", "int4-asym-g32"}, {"hif8", "nf4"},
                              {"fp8-e4m3", ""}};
  const v1::Tensor weight = RandomTensor({48, 96}, DType::kBF16, 11);
  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({2, 5, 96}, DType::kF32, 12);
  *request.mutable_bias() = RandomTensor({48}, DType::kF32, 13);
  request.set_output_dtype(v1::DTYPE_BF16);
  for (const WeightCase& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.activations, " x ", c.weight));
    v1::GemmRequest inline_request = request;
    if (*c.activations) inline_request.mutable_a_spec()->set_descriptor_string(c.activations);
    *inline_request.mutable_b() = weight;
    if (*c.weight) inline_request.mutable_b_spec()->set_descriptor_string(c.weight);
    v1::GemmResponse inline_response;
    const grpc::Status inline_status = Gemm(inline_request, &inline_response);
    ASSERT_TRUE(inline_status.ok()) << inline_status.error_message();

    for (const bool keep_original : {true, false}) {
      SCOPED_TRACE(keep_original ? "kept original" : "quantized only");
      v1::RegisterWeightResponse registered;
      const grpc::Status status = Register(weight, c.weight, keep_original, &registered);
      ASSERT_TRUE(status.ok()) << status.error_message();
      const v1::WeightInfo& info = registered.weight();
      EXPECT_THAT(info.handle(), ::testing::StartsWith("w-"));
      EXPECT_EQ(std::vector<int64_t>(info.shape().begin(), info.shape().end()),
                (std::vector<int64_t>{48, 96}));
      EXPECT_EQ(info.dtype(), v1::DTYPE_BF16);
      EXPECT_EQ(info.keep_original(), keep_original || !*c.weight);
      EXPECT_EQ(info.spec().format(), inline_response.b_spec().format());
      EXPECT_EQ(info.spec().granularity(), inline_response.b_spec().granularity());
      EXPECT_EQ(registered.has_metrics(), *c.weight != '\0');
      // The CPU backend keeps x̂ in fp32, and the original values when kept (or unquantized).
      const int64_t copies = (*c.weight ? 1 : 0) + (keep_original || !*c.weight ? 1 : 0);
      EXPECT_EQ(info.bytes(), 4 * 48 * 96 * copies);
      EXPECT_EQ(registered.registered_bytes(), info.bytes());

      v1::GemmRequest on_handle = request;
      if (*c.activations) on_handle.mutable_a_spec()->set_descriptor_string(c.activations);
      on_handle.set_b_handle(info.handle());
      v1::GemmResponse response;
      const grpc::Status gemm = Gemm(on_handle, &response);
      ASSERT_TRUE(gemm.ok()) << gemm.error_message();
      EXPECT_EQ(response.output().data(), inline_response.output().data());
      EXPECT_EQ(response.b_spec().format(), inline_response.b_spec().format());
      if (keep_original || !*c.weight) {
        EXPECT_EQ(response.metrics_reference(), "unquantized A and B");
        EXPECT_EQ(response.metrics().mse(), inline_response.metrics().mse());
        EXPECT_EQ(response.metrics().max_abs_err(), inline_response.metrics().max_abs_err());
      } else {
        EXPECT_EQ(response.metrics_reference(), "unquantized A and the registered (quantized) B");
        // Only A's quantization error remains.
        EXPECT_LT(response.metrics().mse(), inline_response.metrics().mse());
      }
      v1::DropWeightResponse dropped;
      ASSERT_TRUE(Drop(info.handle(), &dropped).ok());
      EXPECT_EQ(dropped.freed_bytes(), info.bytes());
    }
  }
  EXPECT_EQ(List().weights_size(), 0);
  EXPECT_EQ(List().registered_bytes(), 0);
}

TEST_F(WeightsTest, ListShowsRegistrationOrderAndDroppedHandlesAreNotFound) {
  v1::RegisterWeightResponse first, second;
  ASSERT_TRUE(Register(RandomTensor({16, 64}, DType::kF32, 1), "int8", false, &first, "q").ok());
  ASSERT_TRUE(
      Register(RandomTensor({32, 64}, DType::kF16, 2), "fp8-e4m3", true, &second, "k").ok());
  v1::ListWeightsResponse list = List();
  ASSERT_EQ(list.weights_size(), 2);
  EXPECT_EQ(list.weights(0).name(), "q");
  EXPECT_EQ(list.weights(1).name(), "k");
  EXPECT_EQ(list.weights(1).dtype(), v1::DTYPE_F16);
  EXPECT_EQ(list.weights(0).backend(), "cpu");
  EXPECT_EQ(list.registered_bytes(), first.weight().bytes() + second.weight().bytes());
  EXPECT_EQ(list.cap_bytes(), int64_t{4} << 30);  // the CPU backend's default

  v1::DropWeightResponse dropped;
  ASSERT_TRUE(Drop(first.weight().handle(), &dropped).ok());
  EXPECT_EQ(dropped.freed_bytes(), first.weight().bytes());
  list = List();
  ASSERT_EQ(list.weights_size(), 1);
  EXPECT_EQ(list.weights(0).handle(), second.weight().handle());
  EXPECT_EQ(list.registered_bytes(), second.weight().bytes());

  const grpc::Status again = Drop(first.weight().handle(), &dropped);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(again.error_message(), HasSubstr("ListWeights"));
  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({3, 64}, DType::kF32, 3);
  request.set_b_handle(first.weight().handle());
  v1::GemmResponse response;
  const grpc::Status gemm = Gemm(request, &response);
  EXPECT_EQ(gemm.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(gemm.error_message(), HasSubstr(first.weight().handle()));
  EXPECT_EQ(Drop("", &dropped).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Above --max-weight-bytes a registration is refused with what to do; what is registered stays,
// and room made by a drop is usable at once.
TEST_F(WeightsTest, TheCapIsResourceExhaustedAndKeepsWhatIsRegistered) {
  server::ServerOptions options = TestOptions();
  options.max_weight_bytes = 3 * 64 * 64 * 4 / 2;  // one 64 x 64 fp32 x̂ fits, two do not
  Start(options);
  const v1::Tensor weight = RandomTensor({64, 64}, DType::kF32, 5);
  v1::RegisterWeightResponse first, second;
  ASSERT_TRUE(Register(weight, "int8", false, &first).ok());
  const grpc::Status refused = Register(weight, "int8", false, &second, "second");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("--max-weight-bytes"));
  EXPECT_THAT(refused.error_message(), HasSubstr("'second'"));
  EXPECT_THAT(refused.error_message(), HasSubstr("DropWeight"));
  ASSERT_EQ(List().weights_size(), 1);

  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({4, 64}, DType::kF32, 6);
  request.mutable_a_spec()->set_descriptor_string("int8");
  request.set_b_handle(first.weight().handle());
  v1::GemmResponse response;
  EXPECT_TRUE(Gemm(request, &response).ok());

  v1::DropWeightResponse dropped;
  ASSERT_TRUE(Drop(first.weight().handle(), &dropped).ok());
  EXPECT_TRUE(Register(weight, "int8", false, &second, "second").ok());
  EXPECT_EQ(List().registered_bytes(), second.weight().bytes());
}

TEST_F(WeightsTest, RefusalsSayWhatToFixAndTheServerKeepsServing) {
  v1::RegisterWeightResponse registered;
  // A weight the backend refuses while storing it (NaN, int8 rejects it): its reservation is
  // given back.
  std::vector<float> values(8 * 64, 0.5f);
  values[77] = NAN;
  grpc::Status nan = Register(FloatTensor({8, 64}, values), "int8", false, &registered);
  EXPECT_EQ(nan.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(nan.error_message(), HasSubstr("NaN"));
  EXPECT_EQ(List().registered_bytes(), 0);
  // Sizes no tensor has are refused before any layout arithmetic, in the field's name.
  v1::RegisterWeightRequest huge;
  *huge.mutable_weight() = RandomTensor({8, 64}, DType::kF32, 1);
  huge.mutable_spec()->set_descriptor_string("int4");
  huge.mutable_spec()->set_granularity(v1::GRANULARITY_GROUP);
  huge.mutable_spec()->set_group_size(int64_t{1} << 62);
  {
    grpc::ClientContext context;
    const grpc::Status status = ts_.stub->RegisterWeight(&context, huge, &registered);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("spec.group_size"));
  }
  {
    v1::GemmRequest gemm;
    *gemm.mutable_a() = RandomTensor({3, 64}, DType::kF32, 2);
    *gemm.mutable_b() = RandomTensor({8, 64}, DType::kF32, 3);
    *gemm.mutable_a_spec() = huge.spec();
    v1::GemmResponse response;
    const grpc::Status status = Gemm(gemm, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("a_spec.group_size"));
  }
  grpc::Status status = Register(RandomTensor({64}, DType::kF32, 1), "int8", false, &registered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("nn.Linear"));
  status = Register(RandomTensor({8, 64}, DType::kF32, 1), "int9", false, &registered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::Tensor short_weight = RandomTensor({8, 64}, DType::kF32, 1);
  short_weight.mutable_data()->pop_back();
  status = Register(short_weight, "int8", false, &registered);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(List().weights_size(), 0);

  ASSERT_TRUE(Register(RandomTensor({8, 64}, DType::kF32, 1), "int8", false, &registered).ok());
  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({3, 32}, DType::kF32, 2);  // K = 32, the weight's is 64
  request.set_b_handle(registered.weight().handle());
  v1::GemmResponse response;
  status = Gemm(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("disagree on K"));

  *request.mutable_a() = RandomTensor({3, 64}, DType::kF32, 2);
  *request.mutable_b() = RandomTensor({8, 64}, DType::kF32, 3);
  status = Gemm(request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("leave b and b_spec empty"));

  request.clear_b();
  request.mutable_b_spec()->set_descriptor_string("int8");
  EXPECT_EQ(Gemm(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  request.clear_b_spec();
  status = Gemm(request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(List().weights_size(), 1);
}

TEST_F(WeightsTest, GaugesAndCountersSeeRegistrations) {
  Start(TestOptions(/*with_metrics=*/true));
  v1::RegisterWeightResponse registered;
  ASSERT_TRUE(Register(RandomTensor({16, 32}, DType::kF32, 1), "nvfp4", false, &registered).ok());
  v1::DropWeightResponse dropped;
  EXPECT_EQ(Drop("w-none", &dropped).error_code(), grpc::StatusCode::NOT_FOUND);
  List();
  const std::string page = ScrapeMetrics(ts_.server->metrics_port());
  EXPECT_EQ(SampleValue(page, "quantd_registered_weights"), 1) << page;
  EXPECT_EQ(SampleValue(page, "quantd_registered_weight_bytes"), registered.weight().bytes());
  EXPECT_EQ(SampleValue(page, "quantd_registered_weight_cap_bytes"), registered.cap_bytes());
  EXPECT_EQ(SampleValue(page, R"(quantd_requests_total{code="OK",method="RegisterWeight"})"), 1);
  EXPECT_EQ(SampleValue(page, R"(quantd_requests_total{code="NOT_FOUND",method="DropWeight"})"), 1);
  EXPECT_EQ(SampleValue(page, R"(quantd_requests_total{code="OK",method="ListWeights"})"), 1);
}

// Sends `frames` on a RegisterWeightStream; the call's status, and the response if one came.
grpc::Status RegisterStream(v1::Quantizer::Stub* stub,
                            const std::vector<v1::RegisterWeightStreamRequest>& frames,
                            v1::RegisterWeightResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto stream = stub->RegisterWeightStream(&context);
  for (const v1::RegisterWeightStreamRequest& frame : frames) {
    if (!stream->Write(frame)) break;
  }
  stream->WritesDone();
  stream->Read(response);
  return stream->Finish();
}

// The header (request without the weight's bytes) and the bytes in `chunk`-sized data frames.
std::vector<v1::RegisterWeightStreamRequest> WeightFrames(v1::RegisterWeightRequest request,
                                                          size_t chunk) {
  const std::string bytes = request.weight().data();
  request.mutable_weight()->clear_data();
  std::vector<v1::RegisterWeightStreamRequest> frames(1);
  *frames[0].mutable_header() = request;
  for (size_t offset = 0; offset < bytes.size(); offset += chunk) {
    frames.emplace_back().set_data(bytes.substr(offset, chunk));
  }
  return frames;
}

// A weight above --max-message-bytes cannot go in one RegisterWeight; the client library
// streams it (RegisterWeightStream) and the registered weight is the one the embedded core
// registers from the same bytes: same spec, metrics and GEMM output bit for bit.
TEST_F(WeightsTest, AWeightAboveTheMessageLimitIsStreamed) {
  server::ServerOptions options = TestOptions();
  options.max_message_bytes = 256 << 10;
  options.stream_chunk_bytes = 64 << 10;
  Start(options);
  ClientOptions remote_options;
  remote_options.target = absl::StrCat("127.0.0.1:", ts_.server->bound_port());
  remote_options.dedicated_connection = true;
  remote_options.chunk_bytes = 48 << 10;
  absl::StatusOr<std::unique_ptr<Client>> remote = Client::Create(remote_options);
  absl::StatusOr<std::unique_ptr<Client>> embedded = Client::Create(ClientOptions{});
  ASSERT_TRUE(remote.ok()) << remote.status();
  ASSERT_TRUE(embedded.ok()) << embedded.status();

  v1::RegisterWeightRequest request;
  *request.mutable_weight() = RandomTensor({320, 256}, DType::kF32, 21);  // 320 KiB
  request.mutable_spec()->set_descriptor_string("int4-g32");
  request.set_name("big");
  grpc::ClientContext context;
  v1::RegisterWeightResponse unused;
  EXPECT_EQ(ts_.stub->RegisterWeight(&context, request, &unused).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);  // gRPC's own message limit

  absl::StatusOr<v1::RegisterWeightResponse> streamed = (*remote)->RegisterWeight(request);
  absl::StatusOr<v1::RegisterWeightResponse> local = (*embedded)->RegisterWeight(request);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(streamed->weight().name(), "big");
  EXPECT_EQ(streamed->weight().bytes(), local->weight().bytes());
  EXPECT_EQ(streamed->weight().spec().group_size(), 32);
  EXPECT_EQ(streamed->metrics().mse(), local->metrics().mse());
  EXPECT_EQ(List().weights_size(), 1);

  v1::GemmRequest gemm;
  *gemm.mutable_a() = RandomTensor({5, 256}, DType::kF32, 22);
  gemm.mutable_a_spec()->set_descriptor_string("int8");
  gemm.set_b_handle(streamed->weight().handle());
  absl::StatusOr<v1::GemmResponse> on_server = (*remote)->Gemm(gemm);
  gemm.set_b_handle(local->weight().handle());
  absl::StatusOr<v1::GemmResponse> in_process = (*embedded)->Gemm(gemm);
  ASSERT_TRUE(on_server.ok()) << on_server.status();
  ASSERT_TRUE(in_process.ok()) << in_process.status();
  EXPECT_EQ(on_server->output().data(), in_process->output().data());
  // The same weight inline is a Gemm above one message, which has no streamed form: the
  // client says so before sending anything.
  gemm.clear_b_handle();
  *gemm.mutable_b() = request.weight();
  const absl::StatusOr<v1::GemmResponse> refused = (*remote)->Gemm(gemm);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("Gemm has no streamed form"));
  EXPECT_THAT(refused.status().message(), HasSubstr("split M into slices"));

  // A first piece in the header frame and uneven frames give the same weight.
  std::vector<v1::RegisterWeightStreamRequest> frames = WeightFrames(request, 40000);
  frames[0].mutable_header()->mutable_weight()->set_data(frames[1].data());
  frames.erase(frames.begin() + 1);
  v1::RegisterWeightResponse second;
  const grpc::Status status = RegisterStream(ts_.stub.get(), frames, &second);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(second.metrics().mse(), local->metrics().mse());
  EXPECT_EQ(second.registered_bytes(), 2 * local->weight().bytes());
}

// A broken stream registers nothing, gives its reservation back, says what to fix, and the
// server keeps serving.
TEST_F(WeightsTest, BrokenWeightStreamsRegisterNothing) {
  v1::RegisterWeightRequest request;
  *request.mutable_weight() = RandomTensor({64, 64}, DType::kF32, 31);
  request.mutable_spec()->set_descriptor_string("fp8-e4m3");
  const std::vector<v1::RegisterWeightStreamRequest> frames = WeightFrames(request, 4096);
  struct Broken {
    const char* what;
    std::vector<v1::RegisterWeightStreamRequest> frames;
    const char* message;
  };
  std::vector<Broken> cases = {
      {"data first", {frames.begin() + 1, frames.end()}, "must be a header"},
      {"ends early", {frames.begin(), frames.end() - 1}, "of weight"},
      {"second header", {frames[0], frames[0]}, "second header"},
      {"too many bytes", frames, "more than the declared"},
      {"bad spec", frames, "spec"},
  };
  cases[3].frames.back().mutable_data()->append("extra");
  cases[4].frames[0].mutable_header()->mutable_spec()->set_descriptor_string("int3-turbo");
  for (const Broken& c : cases) {
    SCOPED_TRACE(c.what);
    v1::RegisterWeightResponse response;
    const grpc::Status status = RegisterStream(ts_.stub.get(), c.frames, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(c.message));
  }
  EXPECT_EQ(List().weights_size(), 0);
  EXPECT_EQ(List().registered_bytes(), 0);
  v1::RegisterWeightResponse response;
  const grpc::Status status = RegisterStream(ts_.stub.get(), frames, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.weight().shape_size(), 2);
  EXPECT_EQ(List().weights_size(), 1);
}

// A weight dropped while a GEMM holds it keeps counting against the cap until that GEMM lets
// go (the registry's entries are what GEMMs hold: server/weights.h).
TEST(WeightRegistryTest, DroppedWeightsCountUntilTheLastUserLetsGo) {
  class FakeWeight final : public StoredWeight {
   public:
    FakeWeight() : StoredWeight(DType::kF32, {4, 8}, QuantSpec(), true) {}
    int64_t bytes() const override { return 128; }
  };
  server::WeightRegistry registry(/*cap_bytes=*/200);
  ASSERT_TRUE(registry.Reserve(128, "w").ok());
  const std::string handle = registry.Add("w", std::make_unique<FakeWeight>(), 128).handle;
  EXPECT_EQ(registry.Reserve(128, "x").code(), absl::StatusCode::kResourceExhausted);
  std::shared_ptr<const StoredWeight> held;  // what a GEMM in flight holds
  {
    absl::StatusOr<server::WeightRegistry::Entry> found = registry.Find(handle);
    ASSERT_TRUE(found.ok());
    held = found->weight;
  }
  ASSERT_EQ(*registry.Drop(handle), 128);
  EXPECT_EQ(registry.Find(handle).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.stats().count, 0);
  EXPECT_EQ(registry.bytes(), 128);
  EXPECT_EQ(registry.Reserve(128, "x").code(), absl::StatusCode::kResourceExhausted);
  held.reset();
  EXPECT_EQ(registry.bytes(), 0);
  EXPECT_TRUE(registry.Reserve(128, "x").ok());
}

}  // namespace
}  // namespace quantd::testing
