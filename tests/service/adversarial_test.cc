// Thousands of malformed and adversarial requests on every RPC, from several client threads at
// once: random dtypes and enum values (known and unknown), absurd and negative shapes, ranks up
// to 100, random bytes, random specs and calibration options, mutated quantized tensors, raw
// garbage instead of protobuf, and broken streams (no header, two headers, data before header,
// truncated, overlong, wrong parts, cancelled mid-way). Afterwards the server must answer a
// normal request, report SERVING, and hold nothing (in-flight gauge and byte budget at 0).
#include <atomic>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

class Fuzzer {
 public:
  explicit Fuzzer(uint64_t seed) : rng_(seed) {}

  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool Coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng_); }
  template <typename T>
  T Pick(const std::vector<T>& values) {
    return values[static_cast<size_t>(Int(0, static_cast<int>(values.size()) - 1))];
  }

  std::string Bytes(size_t max) {
    std::string bytes(static_cast<size_t>(Int(0, static_cast<int>(max))), '\0');
    for (char& c : bytes) c = static_cast<char>(Int(0, 255));
    return bytes;
  }

  int64_t Dim() {
    return Pick<int64_t>({0, 1, 2, 3, 7, 16, 64, 127, 128, 129, -1, -64, int64_t{1} << 31,
                          int64_t{1} << 40, int64_t{1} << 62, std::numeric_limits<int64_t>::max(),
                          std::numeric_limits<int64_t>::min()});
  }

  // Mostly small shapes (so that matching data can be sent), sometimes absurd ones.
  std::vector<int64_t> Shape() {
    std::vector<int64_t> shape;
    if (Coin(0.7)) {
      const int rank = Int(0, 3);
      for (int i = 0; i < rank; ++i) shape.push_back(Pick<int64_t>({0, 1, 2, 3, 5, 16, 33, 64}));
    } else {
      const int rank = Pick<int>({0, 1, 2, 5, 16, 17, 100});
      for (int i = 0; i < rank; ++i) shape.push_back(Coin(0.8) ? Int(1, 3) : Dim());
    }
    return shape;
  }

  v1::DType DType() { return static_cast<v1::DType>(Int(-2, 9)); }

  v1::Tensor Tensor(bool float_input) {
    v1::Tensor tensor;
    tensor.set_dtype(float_input && Coin(0.8)
                         ? Pick<v1::DType>({v1::DTYPE_F32, v1::DTYPE_F16, v1::DTYPE_BF16})
                         : DType());
    const std::vector<int64_t> shape = Shape();
    for (int64_t d : shape) tensor.add_shape(d);
    // Exactly the right length when that is small, else random bytes.
    int64_t numel = 1;
    bool small = true;
    for (int64_t d : shape) {
      if (d < 0 || d > 4096 || (d > 0 && numel > 4096 / d)) small = false;
      if (small) numel *= d;
    }
    const int size = DTypeSize(static_cast<quantd::DType>(
        tensor.dtype() >= 0 && tensor.dtype() < kNumDTypes ? tensor.dtype() : 0));
    if (small && size > 0 && Coin(0.8)) {
      const bool is_float = tensor.dtype() == v1::DTYPE_F32 || tensor.dtype() == v1::DTYPE_F16 ||
                            tensor.dtype() == v1::DTYPE_BF16;
      if (!is_float || Coin(0.5)) {
        std::string data(static_cast<size_t>(numel * size), '\0');
        for (char& c : data) c = static_cast<char>(Int(0, 255));
        tensor.set_data(std::move(data));
      } else {
        tensor = RandomTensor(quantd::Shape(shape.begin(), shape.end()),
                              static_cast<quantd::DType>(tensor.dtype()),
                              static_cast<uint64_t>(Int(0, 1 << 30)));
      }
      if (Coin(0.1)) tensor.mutable_data()->push_back('x');
    } else {
      tensor.set_data(Bytes(512));
    }
    return tensor;
  }

  v1::QuantSpec Spec() {
    v1::QuantSpec spec;
    if (Coin(0.6)) {
      spec.set_descriptor_string(Pick<std::string>({"int8",
                                                    "int8-asym",
                                                    "int4-g128",
                                                    "int8-token",
                                                    "fp8-e4m3",
                                                    "fp8-e5m2",
                                                    "fp8-e4m3-b128x128",
                                                    "uint4-asym",
                                                    "uint8",
                                                    "int4-g0",
                                                    "int4-g-1",
                                                    "int8-b0x0",
                                                    "int4-g99999999999999999999",
                                                    "mxfp4",
                                                    "",
                                                    "nonsense",
                                                    std::string(300, 'a'),
                                                    std::string("int8\0asym", 9),
                                                    "int8-\xc3\xa9",
                                                    "\xf0\x9f\x98\x80"}));
    }
    if (Coin(0.6)) spec.set_format(static_cast<v1::Format>(Int(-1, 9)));
    if (Coin(0.5)) spec.set_granularity(static_cast<v1::Granularity>(Int(-1, 8)));
    if (Coin(0.3)) {
      spec.set_axis(Pick<int>({0, 1, -1, -2, 5, -100, std::numeric_limits<int>::min(),
                               std::numeric_limits<int>::max()}));
    }
    if (Coin(0.4)) spec.set_group_size(Coin() ? Pick<int64_t>({1, 2, 32, 128}) : Dim());
    if (Coin(0.3)) spec.set_block_rows(Coin() ? Pick<int64_t>({1, 2, 32, 128}) : Dim());
    if (Coin(0.3)) spec.set_block_cols(Coin() ? Pick<int64_t>({1, 2, 32, 128}) : Dim());
    spec.set_asymmetric(Coin(0.3));
    if (Coin(0.3)) spec.set_rounding(static_cast<v1::Rounding>(Int(-1, 5)));
    if (Coin(0.3)) spec.set_seed(static_cast<uint64_t>(Int(0, 1 << 30)) * 0x9E3779B97F4A7C15ull);
    if (Coin(0.3)) spec.set_overflow(static_cast<v1::Overflow>(Int(-1, 4)));
    if (Coin(0.3)) {
      spec.set_clip_ratio(
          Pick<float>({0.0f, -1.0f, 0.5f, 1.0f, 2.0f, 1e-30f, std::nanf(""), INFINITY, -INFINITY}));
    }
    if (Coin(0.3)) spec.set_nan_policy(static_cast<v1::NanPolicy>(Int(-1, 5)));
    if (Coin(0.3)) spec.set_packing(static_cast<v1::Packing>(Int(-1, 4)));
    if (Coin(0.2)) *spec.mutable_static_scales() = Tensor(/*float_input=*/false);
    if (Coin(0.1)) *spec.mutable_static_zero_points() = Tensor(/*float_input=*/false);
    if (Coin(0.1)) {
      v1::Tensor* scales = spec.mutable_static_scales();
      *scales = FloatTensor(
          {1}, {Pick<float>({0.0f, -1.0f, 1.0f, std::nanf(""), INFINITY, 1e-38f, 3e38f})});
    }
    return spec;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
};

// Which codes a malformed-but-parseable request may get. Never UNKNOWN, INTERNAL (a crash
// path turned status), UNIMPLEMENTED or UNAVAILABLE (the server went away).
bool Acceptable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return true;
    default:
      return false;
  }
}

class AdversarialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = TestOptions(/*with_metrics=*/true);
    options.max_message_bytes = 1 << 20;
    options.max_tensor_bytes = int64_t{256} << 20;
    options.max_inflight_bytes = int64_t{512} << 20;
    options.stream_chunk_bytes = 4 << 10;
    options.max_queue = 10000;
    ts_ = TestServer::Start(options);
  }
  void TearDown() override { ts_.server->Shutdown(absl::Now() + absl::Seconds(10)); }

  // A valid quantized tensor to mutate.
  v1::QuantizedTensor Valid(const std::string& descriptor) {
    grpc::ClientContext context;
    v1::QuantizeResponse response;
    EXPECT_TRUE(
        ts_.stub
            ->Quantize(&context, QuantizeRequestFor(RandomTensor({8, 64}), descriptor), &response)
            .ok());
    return response.quantized();
  }

  void MutateQuantized(Fuzzer& f, v1::QuantizedTensor* q) {
    switch (f.Int(0, 9)) {
      case 0:
        *q->mutable_spec() = f.Spec();
        break;
      case 1:
        q->clear_shape();
        for (int64_t d : f.Shape()) q->add_shape(d);
        break;
      case 2: {  // random codes of the right length: any code must decode
        std::string* codes = q->mutable_codes()->mutable_data();
        for (char& c : *codes) c = static_cast<char>(f.Int(0, 255));
        break;
      }
      case 3:
        *q->mutable_codes() = f.Tensor(/*float_input=*/false);
        break;
      case 4:
        *q->mutable_scales() = f.Tensor(/*float_input=*/false);
        break;
      case 5: {
        std::string* scales = q->mutable_scales()->mutable_data();
        for (char& c : *scales) c = static_cast<char>(f.Int(0, 255));
        break;
      }
      case 6:
        *q->mutable_zero_points() = f.Tensor(/*float_input=*/false);
        break;
      case 7:
        q->set_source_dtype(f.DType());
        break;
      case 8:
        q->mutable_codes()->set_dtype(f.DType());
        break;
      default:
        q->mutable_spec()->set_granularity(static_cast<v1::Granularity>(f.Int(0, 7)));
        break;
    }
  }

  grpc::Status OneUnary(Fuzzer& f, const std::vector<v1::QuantizedTensor>& valid) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    switch (f.Int(0, 4)) {
      case 0: {
        v1::QuantizeRequest request;
        *request.mutable_input() = f.Tensor(/*float_input=*/true);
        *request.mutable_spec() = f.Spec();
        request.set_skip_metrics(f.Coin());
        v1::QuantizeResponse response;
        return ts_.stub->Quantize(&context, request, &response);
      }
      case 1: {
        v1::DequantizeRequest request;
        *request.mutable_quantized() = f.Pick(valid);
        const int mutations = f.Int(1, 3);
        for (int i = 0; i < mutations; ++i) MutateQuantized(f, request.mutable_quantized());
        if (f.Coin(0.3)) request.set_output_dtype(f.DType());
        v1::DequantizeResponse response;
        return ts_.stub->Dequantize(&context, request, &response);
      }
      case 2: {
        v1::QuantDequantRequest request;
        *request.mutable_input() = f.Tensor(/*float_input=*/true);
        *request.mutable_spec() = f.Spec();
        if (f.Coin(0.3)) request.set_output_dtype(f.DType());
        v1::QuantDequantResponse response;
        return ts_.stub->QuantDequant(&context, request, &response);
      }
      case 3: {
        v1::CalibrateRequest request;
        *request.mutable_input() = f.Tensor(/*float_input=*/true);
        *request.mutable_spec() = f.Spec();
        request.set_method(static_cast<v1::CalibrationMethod>(f.Int(-1, 5)));
        if (f.Coin()) {
          request.set_percentile(
              f.Pick<double>({0.0, -1.0, 50.0, 99.99, 100.0, 101.0, std::nan(""), INFINITY}));
        }
        if (f.Coin()) {
          request.set_search_steps(
              f.Pick<int>({-1, 0, 1, 5, 100, 1000, 1001, std::numeric_limits<int>::max()}));
        }
        if (f.Coin()) {
          request.set_search_min_ratio(
              f.Pick<float>({0.0f, -1.0f, 0.01f, 0.5f, 1.0f, 2.0f, std::nanf("")}));
        }
        v1::CalibrateResponse response;
        return ts_.stub->Calibrate(&context, request, &response);
      }
      default: {
        v1::GetCapabilitiesResponse response;
        return ts_.stub->GetCapabilities(&context, {}, &response);
      }
    }
  }

  grpc::Status OneQuantizeStream(Fuzzer& f) {
    v1::QuantizeRequest request;
    if (f.Coin(0.5)) {
      request = QuantizeRequestFor(RandomTensor({16, 64}),
                                   f.Pick<std::string>({"int8", "int4-g128", "uint8-asym"}));
    } else {
      *request.mutable_input() = f.Tensor(/*float_input=*/true);
      *request.mutable_spec() = f.Spec();
    }
    std::vector<v1::QuantizeStreamRequest> frames =
        QuantizeFrames(request, f.Int(1, 2000), f.Int(0, 100));
    switch (f.Int(0, 7)) {
      case 0:  // truncated
        frames.resize(static_cast<size_t>(f.Int(0, static_cast<int>(frames.size()))));
        break;
      case 1:  // second header somewhere
        frames.insert(frames.begin() + f.Int(1, static_cast<int>(frames.size())), frames.front());
        break;
      case 2:  // data before the header
        std::swap(frames.front(), frames.back());
        break;
      case 3: {  // overlong
        v1::QuantizeStreamRequest extra;
        extra.set_data(f.Bytes(100));
        frames.push_back(extra);
        break;
      }
      case 4:  // an empty frame
        frames.insert(frames.begin() + f.Int(0, static_cast<int>(frames.size())),
                      v1::QuantizeStreamRequest());
        break;
      case 5: {  // a header declaring a huge tensor, then a little data
        v1::QuantizeStreamRequest header = frames.front();
        header.mutable_header()->mutable_input()->clear_shape();
        header.mutable_header()->mutable_input()->add_shape(f.Dim());
        header.mutable_header()->mutable_input()->add_shape(f.Dim());
        frames.front() = header;
        break;
      }
      default:
        break;
    }
    // A client that never closes its side is cut short by its own deadline.
    const bool close = f.Coin(0.97);
    return RunQuantizeStream(ts_.stub.get(), frames, /*writes_done=*/close,
                             absl::Seconds(close ? 60 : 1))
        .status;
  }

  grpc::Status OneDequantizeStream(Fuzzer& f, const std::vector<v1::QuantizedTensor>& valid) {
    v1::DequantizeRequest request;
    *request.mutable_quantized() = f.Pick(valid);
    if (f.Coin(0.5)) MutateQuantized(f, request.mutable_quantized());
    std::vector<v1::DequantizeStreamRequest> frames = DequantizeFrames(request, f.Int(1, 300));
    switch (f.Int(0, 6)) {
      case 0:
        frames.resize(static_cast<size_t>(f.Int(0, static_cast<int>(frames.size()))));
        break;
      case 1:
        frames.insert(frames.begin() + f.Int(1, static_cast<int>(frames.size())), frames.front());
        break;
      case 2:
        std::swap(frames.front(), frames.back());
        break;
      case 3:
        if (frames.size() > 1) {
          frames[static_cast<size_t>(f.Int(1, static_cast<int>(frames.size()) - 1))]
              .mutable_data()
              ->set_part(static_cast<v1::Part>(f.Int(-1, 5)));
        }
        break;
      case 4: {
        v1::DequantizeStreamRequest extra;
        extra.mutable_data()->set_part(static_cast<v1::Part>(f.Int(1, 3)));
        extra.mutable_data()->set_data(f.Bytes(64));
        frames.push_back(extra);
        break;
      }
      default:
        break;
    }
    // A client that never closes its side is cut short by its own deadline.
    const bool close = f.Coin(0.97);
    return RunDequantizeStream(ts_.stub.get(), frames, /*writes_done=*/close,
                               absl::Seconds(close ? 60 : 1))
        .status;
  }

  TestServer ts_;
};

TEST_F(AdversarialTest, BurstOfMalformedRequestsLeavesServerHealthy) {
  const std::vector<v1::QuantizedTensor> valid = {Valid("int8"), Valid("int4-g128"),
                                                  Valid("uint8-asym"), Valid("fp8-e4m3"),
                                                  Valid("int8-token")};
  constexpr int kThreads = 6;
  constexpr int kPerThread = 400;  // 2400 requests in all
  std::atomic<int> unacceptable{0};
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Fuzzer f(1000 + static_cast<uint64_t>(t));
      for (int i = 0; i < kPerThread; ++i) {
        grpc::Status status;
        bool bounded = true;  // a short client deadline may legitimately expire
        const int kind = f.Int(0, 9);
        if (kind < 6) {
          status = OneUnary(f, valid);
        } else if (kind < 8) {
          status = OneQuantizeStream(f);
          bounded = false;
        } else {
          status = OneDequantizeStream(f, valid);
          bounded = false;
        }
        if (status.ok()) ok.fetch_add(1);
        const bool timing =
            !bounded && (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                         status.error_code() == grpc::StatusCode::CANCELLED);
        if (!Acceptable(status) && !timing) {
          unacceptable.fetch_add(1);
          ADD_FAILURE() << "kind " << kind << ": code " << status.error_code() << ": "
                        << status.error_message();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(unacceptable.load(), 0);
  EXPECT_GT(ok.load(), 0);  // some random requests are valid and must succeed

  // Raw garbage where protobuf is expected, on every method.
  grpc::GenericStub generic(ts_.channel);
  Fuzzer f(99);
  for (const char* method :
       {"Quantize", "Dequantize", "QuantDequant", "Calibrate", "GetCapabilities"}) {
    for (int i = 0; i < 20; ++i) {
      const std::string bytes = f.Bytes(200);
      grpc::Slice slice(bytes);
      grpc::ByteBuffer request(&slice, 1), response;
      grpc::ClientContext context;
      absl::Notification done;
      grpc::Status status;
      generic.UnaryCall(&context, absl::StrCat("/quantd.v1.Quantizer/", method),
                        grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
                          status = std::move(s);
                          done.Notify();
                        });
      done.WaitForNotification();
      EXPECT_NE(status.error_code(), grpc::StatusCode::UNAVAILABLE) << method;
    }
  }

  // Still serving, and nothing left behind.
  grpc::ClientContext context;
  v1::QuantizeResponse response;
  grpc::Status s =
      ts_.stub->Quantize(&context, QuantizeRequestFor(RandomTensor({8, 64}), "int8"), &response);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(CheckHealth(ts_), grpc::health::v1::HealthCheckResponse::SERVING);
  std::string page;
  for (int i = 0; i < 200; ++i) {
    page = ScrapeMetrics(ts_.server->metrics_port());
    if (SampleValue(page, "quantd_requests_in_flight") == 0 &&
        SampleValue(page, "quantd_inflight_bytes") == 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(SampleValue(page, "quantd_requests_in_flight"), 0);
  EXPECT_EQ(SampleValue(page, "quantd_inflight_bytes"), 0);
}

}  // namespace
}  // namespace quantd::testing
