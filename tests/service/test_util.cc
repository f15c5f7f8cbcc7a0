#include "tests/service/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quantd/backend.h"
#include "quantd/executor.h"
#include "quantd/spec.h"
#include "server/convert.h"

namespace quantd::testing {

server::ServerOptions TestOptions(bool with_metrics) {
  server::ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.metrics_address = with_metrics ? "127.0.0.1:0" : "";
  options.backend = server::BackendChoice::kCpu;
  options.workers = 2;
  options.threads = 2;
  options.log_to_stderr = false;
  return options;
}

TestServer TestServer::Start(server::ServerOptions options) {
  TestServer ts;
  absl::StatusOr<std::unique_ptr<server::Server>> created =
      server::Server::Create(std::move(options));
  EXPECT_TRUE(created.ok()) << created.status();
  if (!created.ok()) return ts;
  ts.server = *std::move(created);
  absl::Status started = ts.server->Start();
  EXPECT_TRUE(started.ok()) << started;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  ts.channel = grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", ts.server->bound_port()),
                                         grpc::InsecureChannelCredentials(), args);
  ts.stub = v1::Quantizer::NewStub(ts.channel);
  ts.health = grpc::health::v1::Health::NewStub(ts.channel);
  return ts;
}

v1::Tensor RandomTensor(const Shape& shape, DType dtype, uint64_t seed) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  v1::Tensor tensor;
  tensor.set_dtype(static_cast<v1::DType>(dtype));
  for (int64_t d : shape) tensor.add_shape(d);
  std::string* data = tensor.mutable_data();
  data->resize(static_cast<size_t>(numel * DTypeSize(dtype)));
  for (int64_t i = 0; i < numel; ++i) StoreFromFloat(dtype, data->data(), i, normal(rng));
  return tensor;
}

v1::Tensor FloatTensor(const Shape& shape, const std::vector<float>& values) {
  v1::Tensor tensor;
  tensor.set_dtype(v1::DTYPE_F32);
  for (int64_t d : shape) tensor.add_shape(d);
  tensor.set_data(values.data(), values.size() * sizeof(float));
  return tensor;
}

v1::QuantizeRequest QuantizeRequestFor(const v1::Tensor& input, const std::string& descriptor) {
  v1::QuantizeRequest request;
  *request.mutable_input() = input;
  request.mutable_spec()->set_descriptor_string(descriptor);
  return request;
}

namespace {

Backend* Oracle() {
  static Backend* backend = CreateReferenceBackend(InlineExecutor()).release();
  return backend;
}

Shape ShapeOf(const google::protobuf::RepeatedField<int64_t>& dims) {
  return Shape(dims.begin(), dims.end());
}

absl::StatusOr<std::pair<QuantSpec, QuantLayout>> Resolve(const v1::QuantSpec& proto,
                                                          const Shape& shape) {
  absl::StatusOr<QuantSpec> requested = server::QuantSpecFromProto(proto);
  if (!requested.ok()) return requested.status();
  absl::StatusOr<QuantSpec> spec = ResolveSpec(*requested, shape);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<QuantLayout> layout = ComputeLayout(*spec, shape);
  if (!layout.ok()) return layout.status();
  return std::make_pair(*spec, *layout);
}

TensorView View(const v1::Tensor& tensor) {
  TensorView view;
  view.dtype = static_cast<DType>(tensor.dtype());
  view.shape = ShapeOf(tensor.shape());
  view.data = tensor.data().data();
  view.bytes = static_cast<int64_t>(tensor.data().size());
  return view;
}

}  // namespace

Direct QuantizeDirect(const v1::QuantizeRequest& request) {
  Direct direct;
  auto resolved = Resolve(request.spec(), ShapeOf(request.input().shape()));
  if (!resolved.ok()) {
    direct.status = resolved.status();
    return direct;
  }
  const auto& [spec, layout] = *resolved;
  direct.codes.assign(static_cast<size_t>(layout.code_bytes), '\0');
  direct.scales.resize(static_cast<size_t>(layout.geometry.num_scales));
  if (spec.asymmetric) direct.zero_points.resize(direct.scales.size());
  QuantizedBuffers out;
  out.codes = direct.codes.data();
  out.code_bytes = layout.code_bytes;
  out.scales = direct.scales.data();
  out.num_scales = layout.geometry.num_scales;
  out.zero_points = spec.asymmetric ? direct.zero_points.data() : nullptr;
  out.global_scale = &direct.global_scale;
  direct.status = Oracle()->Quantize(View(request.input()), spec, out, nullptr);
  return direct;
}

Direct DequantizeDirect(const v1::DequantizeRequest& request) {
  Direct direct;
  const v1::QuantizedTensor& q = request.quantized();
  const Shape shape = ShapeOf(q.shape());
  auto resolved = Resolve(q.spec(), shape);
  if (!resolved.ok()) {
    direct.status = resolved.status();
    return direct;
  }
  const auto& [spec, layout] = *resolved;
  const DType out_dtype = request.output_dtype() == v1::DTYPE_UNSPECIFIED
                              ? DType::kF32
                              : static_cast<DType>(request.output_dtype());
  direct.output.assign(static_cast<size_t>(layout.numel * DTypeSize(out_dtype)), '\0');
  const std::vector<float> scales = ValuesOf<float>(q.scales().data());
  const std::vector<int32_t> zero_points = ValuesOf<int32_t>(q.zero_points().data());
  ConstQuantizedBuffers in;
  in.codes = q.codes().data().data();
  in.code_bytes = static_cast<int64_t>(q.codes().data().size());
  in.scales = scales.data();
  in.num_scales = static_cast<int64_t>(scales.size());
  in.zero_points = spec.asymmetric ? zero_points.data() : nullptr;
  in.global_scale = q.global_scale();
  MutableTensorView out;
  out.dtype = out_dtype;
  out.shape = shape;
  out.data = direct.output.data();
  out.bytes = static_cast<int64_t>(direct.output.size());
  direct.status = Oracle()->Dequantize(in, spec, out);
  return direct;
}

Direct QuantDequantDirect(const v1::QuantDequantRequest& request) {
  Direct direct;
  const Shape shape = ShapeOf(request.input().shape());
  auto resolved = Resolve(request.spec(), shape);
  if (!resolved.ok()) {
    direct.status = resolved.status();
    return direct;
  }
  const auto& [spec, layout] = *resolved;
  const DType out_dtype = request.output_dtype() == v1::DTYPE_UNSPECIFIED
                              ? static_cast<DType>(request.input().dtype())
                              : static_cast<DType>(request.output_dtype());
  direct.output.assign(static_cast<size_t>(layout.numel * DTypeSize(out_dtype)), '\0');
  MutableTensorView out;
  out.dtype = out_dtype;
  out.shape = shape;
  out.data = direct.output.data();
  out.bytes = static_cast<int64_t>(direct.output.size());
  direct.status = Oracle()->QuantDequant(View(request.input()), spec, out, nullptr);
  return direct;
}

QuantizeStreamResult RunQuantizeStream(v1::Quantizer::Stub* stub,
                                       const std::vector<v1::QuantizeStreamRequest>& frames,
                                       bool writes_done, absl::Duration timeout) {
  QuantizeStreamResult result;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto stream = stub->QuantizeStream(&context);
  for (const v1::QuantizeStreamRequest& frame : frames) {
    if (!stream->Write(frame)) break;  // the server finished early (an error); see status
  }
  if (writes_done) stream->WritesDone();
  v1::QuantizeStreamResponse response;
  v1::QuantizedTensor* q = result.header.mutable_quantized();
  while (stream->Read(&response)) {
    result.largest_frame =
        std::max(result.largest_frame, static_cast<int64_t>(response.ByteSizeLong()));
    if (response.has_header()) {
      ++result.header_frames;
      result.header = response.header();
      q = result.header.mutable_quantized();
    } else if (response.has_data()) {
      ++result.data_frames;
      const v1::DataChunk& chunk = response.data();
      switch (chunk.part()) {
        case v1::PART_CODES:
          q->mutable_codes()->mutable_data()->append(chunk.data());
          break;
        case v1::PART_SCALES:
          q->mutable_scales()->mutable_data()->append(chunk.data());
          break;
        case v1::PART_ZERO_POINTS:
          q->mutable_zero_points()->mutable_data()->append(chunk.data());
          break;
        default:
          ADD_FAILURE() << "data frame with part " << chunk.part();
      }
    }
  }
  result.status = stream->Finish();
  return result;
}

std::vector<v1::QuantizeStreamRequest> QuantizeFrames(const v1::QuantizeRequest& request,
                                                      int64_t chunk, int64_t first_piece) {
  std::vector<v1::QuantizeStreamRequest> frames;
  const std::string& data = request.input().data();
  v1::QuantizeStreamRequest header;
  *header.mutable_header() = request;
  const size_t first = std::min(static_cast<size_t>(first_piece), data.size());
  header.mutable_header()->mutable_input()->set_data(data.substr(0, first));
  frames.push_back(std::move(header));
  for (size_t offset = first; offset < data.size(); offset += static_cast<size_t>(chunk)) {
    v1::QuantizeStreamRequest frame;
    frame.set_data(data.substr(offset, static_cast<size_t>(chunk)));
    frames.push_back(std::move(frame));
  }
  return frames;
}

DequantizeStreamResult RunDequantizeStream(v1::Quantizer::Stub* stub,
                                           const std::vector<v1::DequantizeStreamRequest>& frames,
                                           bool writes_done, absl::Duration timeout) {
  DequantizeStreamResult result;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto stream = stub->DequantizeStream(&context);
  for (const v1::DequantizeStreamRequest& frame : frames) {
    if (!stream->Write(frame)) break;
  }
  if (writes_done) stream->WritesDone();
  v1::DequantizeStreamResponse response;
  while (stream->Read(&response)) {
    result.largest_frame =
        std::max(result.largest_frame, static_cast<int64_t>(response.ByteSizeLong()));
    if (response.has_header()) {
      result.header = response.header();
    } else {
      ++result.data_frames;
      result.header.mutable_output()->mutable_data()->append(response.data());
    }
  }
  result.status = stream->Finish();
  return result;
}

std::vector<v1::DequantizeStreamRequest> DequantizeFrames(const v1::DequantizeRequest& request,
                                                          int64_t chunk) {
  std::vector<v1::DequantizeStreamRequest> frames;
  v1::DequantizeStreamRequest header;
  *header.mutable_header() = request;
  v1::QuantizedTensor* q = header.mutable_header()->mutable_quantized();
  q->mutable_codes()->clear_data();
  q->mutable_scales()->clear_data();
  q->mutable_zero_points()->clear_data();
  frames.push_back(std::move(header));
  const std::pair<v1::Part, const std::string*> parts[] = {
      {v1::PART_CODES, &request.quantized().codes().data()},
      {v1::PART_SCALES, &request.quantized().scales().data()},
      {v1::PART_ZERO_POINTS, &request.quantized().zero_points().data()}};
  for (const auto& [part, bytes] : parts) {
    for (size_t offset = 0; offset < bytes->size(); offset += static_cast<size_t>(chunk)) {
      v1::DequantizeStreamRequest frame;
      frame.mutable_data()->set_part(part);
      frame.mutable_data()->set_data(bytes->substr(offset, static_cast<size_t>(chunk)));
      frames.push_back(std::move(frame));
    }
  }
  return frames;
}

std::string ScrapeMetrics(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request =
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[65536];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

double SampleValue(const std::string& page, const std::string& series) {
  std::istringstream lines(page);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.compare(0, series.size(), series) == 0 && line.size() > series.size() &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

grpc::health::v1::HealthCheckResponse::ServingStatus CheckHealth(TestServer& ts,
                                                                 const std::string& service) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = ts.health->Check(&context, request, &response);
  if (!status.ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return response.status();
}

}  // namespace quantd::testing
