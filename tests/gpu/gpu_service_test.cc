// The gRPC service on the CUDA backend: answers equal the CPU backend's bit for bit under
// concurrent clients, a tensor above 2 GiB streams through, running out of device memory (the
// cap, or the device itself) is RESOURCE_EXHAUSTED and the server keeps serving, and the
// per-GPU metrics move. Every test skips without a visible GPU.
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/cuda.h"
#include "quantd/executor.h"
#include "server/convert.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

#define SKIP_WITHOUT_GPU()                                                \
  do {                                                                    \
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible"; \
  } while (false)

server::ServerOptions CudaOptions() {
  server::ServerOptions options = TestOptions();
  options.backend = server::BackendChoice::kCuda;
  options.workers = 8;
  options.cuda_streams_per_device = 4;
  options.cuda_host_max_elements = 0;  // every tensor on the GPU, however small
  return options;
}

// A tensor with the values that break careless kernels: ±0, subnormals, ±FLT_MAX, one huge
// row, one all-zero row, over a normal background. `seed` varies the background.
v1::Tensor NastyTensor(const Shape& shape, DType dtype, uint64_t seed) {
  v1::Tensor tensor = RandomTensor(shape, DType::kF32, seed);
  std::vector<float> values = ValuesOf<float>(tensor.data());
  const int64_t cols = shape.back();
  if (static_cast<int64_t>(values.size()) >= 2 * cols) {
    for (int64_t c = 0; c < cols; ++c) values[c] = 0.0f;           // an all-zero row
    for (int64_t c = 0; c < cols; ++c) values[cols + c] *= 1e30f;  // a huge row
  }
  // ±1e38, not ±FLT_MAX: an asymmetric group's max - min must stay finite to be accepted.
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 1.0e38f, -1.0e38f, 65504.0f, 1e-8f};
  for (size_t i = 0; i < values.size(); i += 97) values[i] = specials[(i / 97) % 8];
  if (dtype != DType::kF32) {
    // Round through the wire dtype the way the server reads it.
    std::string bytes(values.size() * 2, '\0');
    for (size_t i = 0; i < values.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &values[i], 4);
      uint16_t half = 0;
      if (dtype == DType::kBF16) {
        half = static_cast<uint16_t>(bits >> 16);  // truncation: any bf16 value will do
      } else {
        const float clamped = std::fmax(-60000.0f, std::fmin(60000.0f, values[i]));
        const _Float16 h = static_cast<_Float16>(clamped);
        std::memcpy(&half, &h, 2);
      }
      std::memcpy(&bytes[2 * i], &half, 2);
    }
    tensor.set_dtype(static_cast<v1::DType>(dtype));
    tensor.set_data(bytes);
    return tensor;
  }
  tensor.set_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return tensor;
}

void ExpectSameAsCpu(const v1::QuantizeRequest& request, const v1::QuantizeResponse& response) {
  const Direct expected = QuantizeDirect(request);
  ASSERT_TRUE(expected.status.ok()) << expected.status;
  EXPECT_TRUE(response.quantized().codes().data() == expected.codes) << "codes differ";
  EXPECT_EQ(ValuesOf<float>(response.quantized().scales().data()), expected.scales);
  EXPECT_EQ(ValuesOf<int32_t>(response.quantized().zero_points().data()), expected.zero_points);
}

TEST(GpuServiceTest, ConcurrentClientsAgreeWithTheCpuBackend) {
  SKIP_WITHOUT_GPU();
  TestServer ts = TestServer::Start(CudaOptions());
  ASSERT_NE(ts.server, nullptr);
  ASSERT_EQ(ts.server->backend_name(), "cuda");
  const std::vector<std::string> descriptors = {"int8",      "int8-token",        "int8-asym",
                                                "int4-g128", "uint4-asym",        "fp8-e4m3",
                                                "fp8-e5m2",  "fp8-e4m3-b128x128", "uint8"};
  const std::vector<Shape> shapes = {{1, 7}, {33, 130}, {5, 3, 257}, {300, 512}, {129, 4100}};
  const std::vector<DType> dtypes = {DType::kF32, DType::kF16, DType::kBF16};
  constexpr int kClients = 12;
  std::vector<std::thread> clients;
  std::vector<int> failures(kClients, 0);
  for (int client = 0; client < kClients; ++client) {
    clients.emplace_back([&, client] {
      // Each client has its own channel: concurrency across connections, not just streams.
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(-1);
      args.SetMaxSendMessageSize(-1);
      args.SetInt("quantd.test.client", client);  // distinct args: a distinct connection
      auto channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", ts.server->bound_port()),
                                               grpc::InsecureChannelCredentials(), args);
      auto stub = v1::Quantizer::NewStub(channel);
      for (int call = 0; call < 8; ++call) {
        const int pick = client * 8 + call;
        const std::string& descriptor = descriptors[pick % descriptors.size()];
        const Shape& shape = shapes[(pick / 3) % shapes.size()];
        const DType dtype = dtypes[pick % dtypes.size()];
        SCOPED_TRACE(absl::StrCat(descriptor, " shape ", shape.size(), "-d ", shape.back(),
                                  " dtype ", DTypeName(dtype)));
        const v1::QuantizeRequest request =
            QuantizeRequestFor(NastyTensor(shape, dtype, 1000 + pick), descriptor);
        v1::QuantizeResponse response;
        grpc::ClientContext context;
        const grpc::Status status = stub->Quantize(&context, request, &response);
        if (!status.ok()) {
          ADD_FAILURE() << status.error_message();
          ++failures[client];
          continue;
        }
        ExpectSameAsCpu(request, response);
        // And back: the dequantization of those codes, on the GPU, equals the CPU's.
        v1::DequantizeRequest dequantize;
        *dequantize.mutable_quantized() = response.quantized();
        dequantize.set_output_dtype(static_cast<v1::DType>(dtype));
        v1::DequantizeResponse dequantized;
        grpc::ClientContext context2;
        const grpc::Status status2 = stub->Dequantize(&context2, dequantize, &dequantized);
        if (!status2.ok()) {
          ADD_FAILURE() << status2.error_message();
          continue;
        }
        const Direct expected = DequantizeDirect(dequantize);
        EXPECT_TRUE(expected.status.ok()) << expected.status;
        EXPECT_TRUE(dequantized.output().data() == expected.output) << "dequantized bytes differ";
      }
    });
  }
  for (std::thread& client : clients) client.join();
  for (int client = 0; client < kClients; ++client) EXPECT_EQ(failures[client], 0);
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST(GpuServiceTest, TensorAboveTwoGiBStreamsThrough) {
  SKIP_WITHOUT_GPU();
  server::ServerOptions options = CudaOptions();
  options.max_inflight_bytes = int64_t{8} << 30;
  TestServer ts = TestServer::Start(options);
  ASSERT_NE(ts.server, nullptr);
  ClientOptions client_options;
  client_options.target = absl::StrCat("127.0.0.1:", ts.server->bound_port());
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();

  // 2.25 GiB of F32: 73728 tokens x 8192, per-token INT8.
  const Shape shape = {73728, 8192};
  const int64_t numel = shape[0] * shape[1];
  v1::QuantizeRequest request;
  request.mutable_spec()->set_descriptor_string("int8-token");
  v1::Tensor* input = request.mutable_input();
  input->set_dtype(v1::DTYPE_F32);
  for (int64_t d : shape) input->add_shape(d);
  std::string* data = input->mutable_data();
  data->resize(numel * 4);
  {
    // A cheap deterministic fill with a different amax per row.
    float* values = reinterpret_cast<float*>(data->data());
    uint32_t state = 12345;
    for (int64_t i = 0; i < numel; ++i) {
      state = state * 1664525u + 1013904223u;
      values[i] = (static_cast<float>(state >> 8) * 0x1p-24f - 0.5f) *
                  static_cast<float>(1 + (i / shape[1]) % 977);
    }
  }
  ASSERT_GT(data->size(), size_t{2} << 30);

  // The oracle first (the request moves into the client below): the CPU backend on all cores.
  std::unique_ptr<Executor> pool = CreateThreadPoolExecutor(0);
  std::unique_ptr<Backend> cpu = CreateReferenceBackend(pool.get());
  absl::StatusOr<QuantSpec> spec = ResolveSpec(*server::QuantSpecFromProto(request.spec()), shape);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<QuantLayout> layout = ComputeLayout(*spec, shape);
  ASSERT_TRUE(layout.ok());
  std::string codes(layout->code_bytes, '\0');
  std::vector<float> scales(layout->geometry.num_scales);
  const TensorView view{DType::kF32, shape, data->data(), static_cast<int64_t>(data->size())};
  ASSERT_TRUE(cpu->Quantize(view, *spec,
                            {codes.data(), layout->code_bytes, scales.data(),
                             layout->geometry.num_scales, nullptr},
                            nullptr)
                  .ok());

  absl::StatusOr<v1::QuantizeResponse> response = (*client)->Quantize(std::move(request));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->quantized().codes().data() == codes) << "codes differ";
  EXPECT_EQ(ValuesOf<float>(response->quantized().scales().data()), scales);
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

// Both ways of running out: the server's cap, and the device itself. Each refusal is
// RESOURCE_EXHAUSTED saying what happened; the next request that fits succeeds.
TEST(GpuServiceTest, OutOfDeviceMemoryIsResourceExhaustedAndTheServerKeepsServing) {
  SKIP_WITHOUT_GPU();
  const v1::QuantizeRequest small = QuantizeRequestFor(RandomTensor({64, 256}), "int8-token");
  const v1::QuantizeRequest large = QuantizeRequestFor(RandomTensor({4096, 4096}), "int8-token");
  auto call = [](TestServer& ts, const v1::QuantizeRequest& request) {
    v1::QuantizeResponse response;
    grpc::ClientContext context;
    return ts.stub->Quantize(&context, request, &response);
  };
  {
    server::ServerOptions options = CudaOptions();
    options.cuda_memory_cap_bytes = int64_t{32} << 20;  // the 64 MiB input alone is above it
    options.max_message_bytes = int64_t{128} << 20;
    TestServer ts = TestServer::Start(options);
    ASSERT_NE(ts.server, nullptr);
    const grpc::Status refused = call(ts, large);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(absl::StrContains(refused.error_message(), "cap")) << refused.error_message();
    EXPECT_TRUE(call(ts, small).ok());
    EXPECT_EQ(CheckHealth(ts), grpc::health::v1::HealthCheckResponse::SERVING);
    ts.server->Shutdown(absl::Now() + absl::Seconds(5));
  }
  {
    server::ServerOptions options = CudaOptions();
    options.cuda_memory_cap_bytes = int64_t{1} << 50;  // the device runs out first
    options.max_message_bytes = int64_t{128} << 20;
    TestServer ts = TestServer::Start(options);
    ASSERT_NE(ts.server, nullptr);
    ASSERT_TRUE(call(ts, small).ok());  // the pool and the kernels are loaded
    // The device's memory pool is process-wide and keeps what earlier tests freed (the
    // backend sets no release threshold): hand it back, so that the device itself runs out.
    cudaMemPool_t pool;
    ASSERT_EQ(cudaDeviceGetDefaultMemPool(&pool, 0), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemPoolTrimTo(pool, 0), cudaSuccess);
    // Take all but 16 MiB of what the device has free, in 256 MiB pieces.
    std::vector<void*> hog;
    size_t free_bytes = 0, total_bytes = 0;
    ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
    while (free_bytes > (size_t{16} << 20)) {
      const size_t piece = std::min(size_t{256} << 20, free_bytes - (size_t{16} << 20));
      void* block = nullptr;
      if (cudaMalloc(&block, piece) != cudaSuccess) {
        (void)cudaGetLastError();
        break;
      }
      hog.push_back(block);
      ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
    }
    ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
    EXPECT_LT(free_bytes, size_t{64} << 20) << hog.size() << " blocks taken";
    const grpc::Status refused = call(ts, large);
    for (void* block : hog) cudaFree(block);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << refused.error_message();
    EXPECT_TRUE(call(ts, large).ok());
    EXPECT_TRUE(call(ts, small).ok());
    ts.server->Shutdown(absl::Now() + absl::Seconds(5));
  }
}

// A streamed tensor moves to the GPU while it arrives (--cuda-upload-min-bytes): the answer is
// the CPU's, the copy is counted, and no device memory stays held; a stream the client abandons
// half way gives its device memory back; a stream above the memory cap is RESOURCE_EXHAUSTED
// and the server keeps serving.
TEST(GpuServiceTest, StreamsMoveToTheGpuWhileTheyArrive) {
  SKIP_WITHOUT_GPU();
  server::ServerOptions options = CudaOptions();
  options.metrics_address = "127.0.0.1:0";
  options.cuda_memory_cap_bytes = int64_t{96} << 20;
  options.cuda_upload_min_bytes = int64_t{16} << 20;
  TestServer ts = TestServer::Start(options);
  ASSERT_NE(ts.server, nullptr);
  ClientOptions client_options;
  client_options.target = absl::StrCat("127.0.0.1:", ts.server->bound_port());
  client_options.unary_limit_bytes = int64_t{1} << 20;  // stream everything above 1 MiB
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(client_options);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string metrics_before = ScrapeMetrics(ts.server->metrics_port());
  const double h2d_before =
      SampleValue(metrics_before, R"(quantd_gpu_copy_bytes_total{device="0",direction="h2d"})");

  // 24 MiB of input (above the upload threshold, well under the cap): per-token INT8, INT4
  // groups from BF16, asymmetric UINT8.
  for (const auto& [dtype, descriptor] :
       {std::pair{DType::kF32, "int8-token"}, std::pair{DType::kBF16, "int4-g128"},
        std::pair{DType::kF32, "uint8-asym"}}) {
    SCOPED_TRACE(descriptor);
    const Shape shape = dtype == DType::kF32 ? Shape{1536, 4096} : Shape{3072, 4096};
    const v1::QuantizeRequest request =
        QuantizeRequestFor(NastyTensor(shape, dtype, 7), descriptor);
    absl::StatusOr<v1::QuantizeResponse> response =
        (*client)->Quantize(v1::QuantizeRequest(request));
    ASSERT_TRUE(response.ok()) << response.status();
    ExpectSameAsCpu(request, *response);
  }
  const std::string metrics_after = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_GE(
      SampleValue(metrics_after, R"(quantd_gpu_copy_bytes_total{device="0",direction="h2d"})") -
          h2d_before,
      3 * (int64_t{24} << 20));
  EXPECT_EQ(SampleValue(metrics_after, R"(quantd_gpu_memory_in_use_bytes{device="0"})"), 0);

  // Half a stream, then the client goes away.
  {
    const v1::QuantizeRequest request =
        QuantizeRequestFor(RandomTensor({1536, 4096}), "int8-token");
    grpc::ClientContext context;
    auto stream = ts.stub->QuantizeStream(&context);
    v1::QuantizeStreamRequest header;
    *header.mutable_header() = request;
    header.mutable_header()->mutable_input()->clear_data();
    ASSERT_TRUE(stream->Write(header));
    const std::string& data = request.input().data();
    for (size_t offset = 0; offset < data.size() / 2; offset += size_t{1} << 20) {
      v1::QuantizeStreamRequest frame;
      frame.set_data(data.substr(offset, size_t{1} << 20));
      ASSERT_TRUE(stream->Write(frame));
    }
    context.TryCancel();
    (void)stream->Finish();
  }
  double in_use = -1;
  for (int i = 0; i < 100 && in_use != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    in_use = SampleValue(ScrapeMetrics(ts.server->metrics_port()),
                         R"(quantd_gpu_memory_in_use_bytes{device="0"})");
  }
  EXPECT_EQ(in_use, 0);

  // 128 MiB: above the cap. No upload can start; the call is refused when it computes.
  {
    const v1::QuantizeRequest request =
        QuantizeRequestFor(RandomTensor({8192, 4096}), "int8-token");
    absl::StatusOr<v1::QuantizeResponse> response =
        (*client)->Quantize(v1::QuantizeRequest(request));
    EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted) << response.status();
  }
  const v1::QuantizeRequest small = QuantizeRequestFor(RandomTensor({1536, 4096}), "int8-token");
  absl::StatusOr<v1::QuantizeResponse> response = (*client)->Quantize(v1::QuantizeRequest(small));
  ASSERT_TRUE(response.ok()) << response.status();
  ExpectSameAsCpu(small, *response);
  EXPECT_EQ(CheckHealth(ts), grpc::health::v1::HealthCheckResponse::SERVING);
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

TEST(GpuServiceTest, PerGpuMetricsMove) {
  SKIP_WITHOUT_GPU();
  server::ServerOptions options = CudaOptions();
  options.metrics_address = "127.0.0.1:0";
  options.cuda_memory_cap_bytes = int64_t{1} << 30;
  options.cuda_host_max_elements = 2048;
  TestServer ts = TestServer::Start(options);
  ASSERT_NE(ts.server, nullptr);
  const std::string before = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(before, R"(quantd_gpu_streams{device="0"})"), 4);
  EXPECT_EQ(SampleValue(before, R"(quantd_gpu_streams_busy{device="0"})"), 0);
  EXPECT_EQ(SampleValue(before, R"(quantd_gpu_memory_cap_bytes{device="0"})"), 1 << 30);
  EXPECT_EQ(SampleValue(before, R"(quantd_gpu_kernel_duration_seconds_count{device="0"})"), 0);

  // A tensor at the host threshold is computed by the CPU backend: no GPU call is counted.
  {
    const v1::QuantizeRequest tiny = QuantizeRequestFor(RandomTensor({2, 1024}), "int8-token");
    v1::QuantizeResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(ts.stub->Quantize(&context, tiny, &response).ok());
    ExpectSameAsCpu(tiny, response);
  }
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({256, 1024}), "int8-token");
  for (int i = 0; i < 3; ++i) {
    v1::QuantizeResponse response;
    grpc::ClientContext context;
    ASSERT_TRUE(ts.stub->Quantize(&context, request, &response).ok());
  }
  const std::string after = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(after, R"(quantd_gpu_kernel_duration_seconds_count{device="0"})"), 3);
  EXPECT_GT(SampleValue(after, R"(quantd_gpu_kernel_duration_seconds_sum{device="0"})"), 0);
  // At least the input, and at least codes + scales, per call.
  EXPECT_GE(SampleValue(after, R"(quantd_gpu_copy_bytes_total{device="0",direction="h2d"})"),
            3 * 256 * 1024 * 4);
  EXPECT_GE(SampleValue(after, R"(quantd_gpu_copy_bytes_total{device="0",direction="d2h"})"),
            3 * (256 * 1024 + 256 * 4));
  EXPECT_GT(SampleValue(after, R"(quantd_gpu_copy_seconds_total{device="0",direction="h2d"})"), 0);
  EXPECT_EQ(SampleValue(after, R"(quantd_gpu_memory_in_use_bytes{device="0"})"), 0);
  EXPECT_GT(SampleValue(after, R"(quantd_gpu_memory_pool_bytes{device="0"})"), 0);
  EXPECT_TRUE(absl::StrContains(after, "quantd_gpu_info{device=\"0\",name=\"")) << after;
  ts.server->Shutdown(absl::Now() + absl::Seconds(5));
}

// A CUDA server serving /metrics, and a CPU server beside it whose answers are the oracle.
// One unary call on `ts` that must succeed (the server's message as the failure).
template <typename Request, typename Response>
::testing::AssertionResult CallOk(TestServer& ts,
                                  grpc::Status (v1::Quantizer::Stub::*method)(grpc::ClientContext*,
                                                                              const Request&,
                                                                              Response*),
                                  const Request& request, Response* response) {
  grpc::ClientContext context;
  const grpc::Status status = (ts.stub.get()->*method)(&context, request, response);
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status.error_message();
}

struct GpuAndCpuServers {
  GpuAndCpuServers() {
    server::ServerOptions options = CudaOptions();
    options.metrics_address = "127.0.0.1:0";
    gpu = TestServer::Start(options);
    cpu = TestServer::Start(TestOptions());
  }
  ~GpuAndCpuServers() {
    for (TestServer* ts : {&gpu, &cpu}) {
      if (ts->server != nullptr) ts->server->Shutdown(absl::Now() + absl::Seconds(5));
    }
  }
  bool ok() const { return gpu.server != nullptr && cpu.server != nullptr; }

  TestServer gpu;
  TestServer cpu;
};

// A GEMM through the server on the GPU: cuBLASLt opens on the first one (gemm_lt.cc: not at
// start, where it broke the /metrics server's threads), the product agrees with the CPU
// backend's, and /metrics keeps serving and counts it on the INT8 tensor cores.
TEST(GpuServiceTest, GemmRunsOnTheTensorCoresAndMetricsKeepServing) {
  SKIP_WITHOUT_GPU();
  GpuAndCpuServers servers;
  ASSERT_TRUE(servers.ok());
  TestServer& ts = servers.gpu;
  TestServer& cpu = servers.cpu;
  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({64, 256}, DType::kF32, 1);
  *request.mutable_b() = RandomTensor({128, 256}, DType::kF32, 2);
  request.mutable_a_spec()->set_descriptor_string("int8");
  request.mutable_b_spec()->set_descriptor_string("int8");
  v1::GemmResponse gpu_response, cpu_response;
  ASSERT_TRUE(CallOk(ts, &v1::Quantizer::Stub::Gemm, request, &gpu_response));
  ASSERT_TRUE(CallOk(cpu, &v1::Quantizer::Stub::Gemm, request, &cpu_response));
  EXPECT_EQ(gpu_response.backend(), "cuda");
  const std::vector<float> gpu_out = ValuesOf<float>(gpu_response.output().data());
  const std::vector<float> cpu_out = ValuesOf<float>(cpu_response.output().data());
  ASSERT_EQ(gpu_out.size(), size_t{64 * 128});
  ASSERT_EQ(cpu_out.size(), gpu_out.size());
  for (size_t i = 0; i < gpu_out.size(); ++i) {
    // INT8 sums are exact; the epilogue's fp32 steps against the CPU's fp64 (K = 256).
    ASSERT_NEAR(gpu_out[i], cpu_out[i], 1e-3 + 1e-5 * std::fabs(cpu_out[i])) << i;
  }
  const std::string metrics = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(metrics, R"(quantd_gpu_gemm_products_total{device="0",path="int8"})"), 1)
      << metrics;
  EXPECT_EQ(SampleValue(metrics, R"(quantd_gpu_gemm_products_total{device="0",path="fp32"})"), 0);
}

// A weight registered on the GPU server: a GEMM on its handle gives the inline weight's bits
// on the GPU, and agrees with the CPU server's registered weight; the gauges count it, the GPU
// memory it holds shows in quantd_gpu_memory_in_use_bytes until it is dropped.
TEST(GpuServiceTest, RegisteredWeightsLiveOnTheGpu) {
  SKIP_WITHOUT_GPU();
  GpuAndCpuServers servers;
  ASSERT_TRUE(servers.ok());
  TestServer& ts = servers.gpu;
  TestServer& cpu = servers.cpu;
  v1::RegisterWeightRequest registration;
  *registration.mutable_weight() = RandomTensor({512, 1024}, DType::kBF16, 3);
  registration.mutable_spec()->set_descriptor_string("fp8-e4m3");
  registration.set_name("up_proj");
  registration.set_keep_original(true);
  v1::RegisterWeightResponse gpu_weight, cpu_weight;
  ASSERT_TRUE(CallOk(ts, &v1::Quantizer::Stub::RegisterWeight, registration, &gpu_weight));
  ASSERT_TRUE(CallOk(cpu, &v1::Quantizer::Stub::RegisterWeight, registration, &cpu_weight));
  EXPECT_EQ(gpu_weight.weight().backend(), "cuda");
  // Codes (1 byte), a scale per row, the original in fp32.
  EXPECT_EQ(gpu_weight.weight().bytes(), 512 * 1024 + 512 * 4 + 512 * 1024 * 4);
  EXPECT_NEAR(gpu_weight.metrics().sqnr_db(), cpu_weight.metrics().sqnr_db(), 1e-3);
  std::string page = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(page, "quantd_registered_weights"), 1);
  // The default cap: half of the GPU's memory cap.
  EXPECT_EQ(
      gpu_weight.cap_bytes(),
      static_cast<int64_t>(SampleValue(page, R"(quantd_gpu_memory_cap_bytes{device="0"})") / 2));
  EXPECT_GE(SampleValue(page, R"(quantd_gpu_memory_in_use_bytes{device="0"})"),
            gpu_weight.weight().bytes());

  v1::GemmRequest request;
  *request.mutable_a() = RandomTensor({64, 1024}, DType::kBF16, 4);
  request.mutable_a_spec()->set_descriptor_string("fp8-e4m3");
  request.set_output_dtype(v1::DTYPE_BF16);
  v1::GemmRequest inline_request = request;
  *inline_request.mutable_b() = registration.weight();
  *inline_request.mutable_b_spec() = registration.spec();
  v1::GemmResponse on_handle, inline_response, cpu_response;
  request.set_b_handle(gpu_weight.weight().handle());
  ASSERT_TRUE(CallOk(ts, &v1::Quantizer::Stub::Gemm, request, &on_handle));
  ASSERT_TRUE(CallOk(ts, &v1::Quantizer::Stub::Gemm, inline_request, &inline_response));
  request.set_b_handle(cpu_weight.weight().handle());
  ASSERT_TRUE(CallOk(cpu, &v1::Quantizer::Stub::Gemm, request, &cpu_response));
  EXPECT_EQ(on_handle.output().data(), inline_response.output().data());
  EXPECT_EQ(on_handle.metrics().sqnr_db(), inline_response.metrics().sqnr_db());
  EXPECT_NEAR(on_handle.metrics().sqnr_db(), cpu_response.metrics().sqnr_db(), 0.5);
  page = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(page, R"(quantd_gpu_gemm_products_total{device="0",path="fp8"})"), 2);

  v1::DropWeightRequest drop;
  drop.set_handle(gpu_weight.weight().handle());
  v1::DropWeightResponse dropped;
  ASSERT_TRUE(CallOk(ts, &v1::Quantizer::Stub::DropWeight, drop, &dropped));
  EXPECT_EQ(dropped.freed_bytes(), gpu_weight.weight().bytes());
  page = ScrapeMetrics(ts.server->metrics_port());
  EXPECT_EQ(SampleValue(page, "quantd_registered_weights"), 0);
  EXPECT_EQ(SampleValue(page, "quantd_registered_weight_bytes"), 0);
  EXPECT_EQ(SampleValue(page, R"(quantd_gpu_memory_in_use_bytes{device="0"})"), 0);
}

}  // namespace
}  // namespace quantd::testing
