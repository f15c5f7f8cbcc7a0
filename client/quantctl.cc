// quantctl: the quantd command line. Reads and writes NumPy .npy / .npz, talks to one or more
// quantd servers (--server), or runs the same numerics in-process when no server is named.
//
//   quantctl quantize --format=int8 --granularity=token x.npy q.npz      # embedded
//   quantctl --server=localhost:50051 dequantize q.npz x_hat.npy
//   quantctl --server=a:50051,b:50051 quantdequant --format=fp8-e4m3 x.npy x_hat.npy
//   quantctl calibrate --format=int8 --granularity=channel --method=mse w.npy
//   quantctl --server=localhost:50051 capabilities | health
//   quantctl --server=localhost:50051 bench --format=int8 --sizes=4K,1M --concurrency=1,4
//   quantctl --server=a:50051,b:50051 compress --scheme=fp8-dynamic Llama-3.1-8B out/
//
// Results that a script reads go to stdout, the error metrics as one JSON object on the last
// line; errors go to stderr with a non-zero exit (1: the operation failed, 2: bad usage).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "bench.h"
#include "client.h"
#include "compress.h"
#include "convert.h"
#include "npy.h"
#include "quantd/format.h"
#include "quantd/spec.h"
#include "quantd/status.h"
#include "quantd/tensor.h"

ABSL_FLAG(std::string, server, "",
          "quantd server(s): HOST:PORT, a comma-separated list (round-robin), or a gRPC target "
          "such as dns:///quantd:50051; empty runs the numerics in-process");
ABSL_FLAG(absl::Duration, timeout, absl::InfiniteDuration(), "deadline of each call, e.g. 30s");
ABSL_FLAG(int64_t, chunk_bytes, int64_t{4} << 20, "payload bytes per stream frame");

ABSL_FLAG(std::string, format, "",
          "format or descriptor: int8, int4, uint8, uint4, fp8-e4m3, fp8-e5m2, mxfp8, mxfp4, "
          "nvfp4, nf4, hif8, flatquant-int4, int8-asym, int4-g128, e2m1k8b32, ... (quantctl "
          "capabilities lists them all)");
ABSL_FLAG(std::string, granularity, "", "none|tensor|channel|token|group|block (default tensor)");
ABSL_FLAG(int32_t, axis, 0,
          "channel axis for --granularity=channel (negative counts from the end)");
ABSL_FLAG(int64_t, group_size, 0, "group size along the last axis for --granularity=group");
ABSL_FLAG(std::string, block, "", "tile RxC for --granularity=block, e.g. 128x128");
ABSL_FLAG(bool, asymmetric, false, "asymmetric (zero-point) integer quantization");
ABSL_FLAG(std::string, rounding, "", "rne (default) | stochastic | away");
ABSL_FLAG(uint64_t, seed, 0, "seed of stochastic rounding");
ABSL_FLAG(std::string, overflow, "", "saturate (default) | nonfinite");
ABSL_FLAG(double, clip_ratio, 0.0, "multiplies amax (or min/max) before the scale, in (0, 1]");
ABSL_FLAG(std::string, nan_policy, "", "reject | zero | propagate (default: per format)");
ABSL_FLAG(std::string, packing, "",
          "bitstream (default) | int32_offset (int4) | high_nibble_first (nf4's default)");
ABSL_FLAG(std::string, scale_rule, "",
          "MX formats: floor (default, OCP MX) | rceil (cuBLAS / TransformerEngine) | even "
          "(torchao) | nearest (fake_quant_ops carry)");
ABSL_FLAG(double, global_scale, 0.0,
          "nvfp4: the per-tensor S_enc to use (e.g. an earlier run's global_scale, or 2688 / a "
          "tracked amax) instead of the tensor's own; one pass over the input on the GPU");
ABSL_FLAG(std::string, flatquant_left, "",
          "flatquant-int4: .npy of the float32 n1 x n1 left matrix P1 (with --flatquant-right)");
ABSL_FLAG(std::string, flatquant_right, "",
          "flatquant-int4: .npy of the float32 n2 x n2 right matrix P2 (n1 * n2 = last dim)");
ABSL_FLAG(bool, double_quant, false,
          "nf4: quantize the absmax values too (bitsandbytes compress_statistics)");
ABSL_FLAG(std::string, static_scales, "", ".npy of float32 scales to use instead of amax");
ABSL_FLAG(std::string, static_zero_points, "", ".npy of int32 zero-points (with --asymmetric)");
ABSL_FLAG(bool, no_metrics, false, "skip the error metrics");
ABSL_FLAG(std::string, weight_format, "",
          "gemm: B's format or descriptor (default: --format's); the other flags apply to both");
ABSL_FLAG(std::string, bias, "", "gemm: .npy of the float bias [N], added to every row");
ABSL_FLAG(double, alpha, 1.0, "gemm: multiplies the product A·Bᵀ");
ABSL_FLAG(std::string, output_dtype, "", "f32 | f16 | bf16 for dequantize / quantdequant");

ABSL_FLAG(std::string, method, "amax", "calibrate: amax | percentile | mse");
ABSL_FLAG(double, percentile, 0.0, "calibrate --method=percentile: in (0, 100], default 99.99");
ABSL_FLAG(int32_t, search_steps, 0, "calibrate --method=mse: clip ratios tried (default 21)");
ABSL_FLAG(double, search_min_ratio, 0.0, "calibrate --method=mse: smallest ratio (default 0.8)");
ABSL_FLAG(std::string, save, "", "calibrate: also write scales/zero_points/amax/clip_ratios .npz");

ABSL_FLAG(std::string, shape, "", "random: shape of the tensor, e.g. 512,4096");
ABSL_FLAG(std::string, dtype, "f32", "random, bench: f32 | f16 | bf16");
ABSL_FLAG(double, stddev, 1.0, "random: standard deviation of the normal distribution");

ABSL_FLAG(std::string, op, "quantize", "bench: quantize | dequantize | quantdequant");
ABSL_FLAG(std::string, sizes, "4K,64K,1M,16M,64M", "bench: bytes of the input tensor per call");
ABSL_FLAG(std::string, concurrency, "1,4,16", "bench: client threads, one call in flight each");
ABSL_FLAG(int32_t, connections, 0,
          "bench: connections the client threads share (0: one per thread)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(2), "bench: measured time per op / echo phase");
ABSL_FLAG(absl::Duration, warmup, absl::Milliseconds(200), "bench: warm-up before each phase");
ABSL_FLAG(std::string, json, "", "bench: also write the results as JSON to this file");

ABSL_FLAG(std::string, scheme, "",
          "compress: fp8-dynamic | fp8-block | w8a8-int8 | w4a16 | nvfp4 | mxfp4 "
          "(compressed-tensors presets FP8_DYNAMIC, FP8_BLOCK, W8A8, W4A16, NVFP4A16, MXFP4A16)");
ABSL_FLAG(std::string, ignore, "",
          "compress: RE2 pattern; modules whose name it matches anywhere stay dense");
ABSL_FLAG(std::string, include, "",
          "compress: RE2 pattern; quantizes matching modules that are dense by default "
          "(embeddings, lm_head, norms); --ignore wins");
ABSL_FLAG(std::string, max_shard_size, "5GB", "compress: largest output shard, e.g. 5GB, 2GiB");
ABSL_FLAG(int32_t, in_flight, 4,
          "compress: tensors being quantized at once (spread over the --server replicas)");
ABSL_FLAG(bool, local, false, "compress: quantize in this process even when --server is given");
ABSL_FLAG(std::string, progress, "auto",
          "compress: auto (a bar on a terminal, else lines) | bar | lines | off");

namespace quantd {
namespace {

constexpr char kUsage[] = R"(quantctl: the quantd command line

  quantctl [--server=HOST:PORT[,HOST:PORT...]] quantize --format=F [--granularity=G] [--axis=A]
           [--group-size=N] [--block=RxC] [--asymmetric] [--rounding=rne|stochastic|away]
           [--seed=S] [--overflow=saturate|nonfinite] [--clip-ratio=C] [--global-scale=S]
           IN.npy OUT.npz
  quantctl [--server=...] dequantize [--output-dtype=f32|f16|bf16] IN.npz OUT.npy
  quantctl [--server=...] quantdequant --format=F ... IN.npy OUT.npy
  quantctl [--server=...] calibrate --format=F ... [--method=amax|percentile|mse] IN.npy
  quantctl [--server=...] gemm --format=F [--weight-format=F2] [--bias=BIAS.npy] [--alpha=A]
           [--output-dtype=f32|f16|bf16] A.npy B.npy OUT.npy
  quantctl --server=... capabilities | health
  quantctl random --shape=D0,D1,... [--dtype=f32] [--seed=S] OUT.npy
  quantctl --server=... bench [--format=F ...] [--op=quantize|dequantize|quantdequant]
           [--sizes=4K,64K,1M,16M,64M] [--concurrency=1,4,16] [--connections=0]
           [--duration=2s] [--warmup=200ms] [--dtype=f32|f16|bf16] [--json=FILE]
  quantctl [--server=...|--local] compress --scheme=S [--ignore=RE] [--include=RE]
           [--max-shard-size=5GB] [--in-flight=4] [--progress=auto|bar|lines|off]
           IN_DIR OUT_DIR

Without --server the numerics run in this process. quantize writes codes, scales,
zero_points (asymmetric), shape, spec (JSON text as uint8) and source_dtype; it prints the
error metrics as one JSON object on the last line of stdout. gemm writes
OUT = alpha · dequant(A) · dequant(B)ᵀ (+ bias) for activations A [M, K] (per-token scales unless
--granularity says otherwise) and weights B [N, K] in nn.Linear's layout (per-channel scales),
with the error against the unquantized product on the last line. bench measures latency and
throughput of an op against an Echo of the same bytes (the bare transport) per size and
concurrency, and prints a markdown table (format int8 unless --format says otherwise).
compress quantizes the linear layers of a Hugging Face safetensors checkpoint into the
compressed-tensors layout llm-compressor writes (schemes fp8-dynamic, fp8-block, w8a8-int8,
w4a16, nvfp4, mxfp4), copies everything else, writes config.json's quantization_config,
report.json / report.csv, and resumes an interrupted run; a summary table goes to stdout.)";

absl::Status Usage(std::string message) { return absl::InvalidArgumentError(message); }

std::string JsonNumber(double v) {
  if (std::isnan(v)) return "NaN";  // Python's json module reads NaN / Infinity
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return absl::StrFormat("%.12g", v);
}

std::string MetricsJson(const v1::ErrorMetrics& m) {
  return absl::StrCat(
      "{\"mse\": ", JsonNumber(m.mse()), ", \"rmse\": ", JsonNumber(m.rmse()),
      ", \"max_abs_err\": ", JsonNumber(m.max_abs_err()),
      ", \"sqnr_db\": ", JsonNumber(m.sqnr_db()), ", \"cosine\": ", JsonNumber(m.cosine()),
      ", \"rel_fro_err\": ", JsonNumber(m.rel_fro_err()), ", \"count\": ", m.count(),
      ", \"nonfinite_count\": ", m.nonfinite_count(), "}");
}

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = pretty;
  std::string json;
  auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) return absl::InternalError(std::string(status.message()));
  return json;
}

absl::StatusOr<v1::DType> DTypeFromFlag(const std::string& name) {
  const std::string lowered = absl::AsciiStrToLower(name);
  if (lowered == "f32" || lowered == "float32") return v1::DTYPE_F32;
  if (lowered == "f16" || lowered == "float16") return v1::DTYPE_F16;
  if (lowered == "bf16" || lowered == "bfloat16") return v1::DTYPE_BF16;
  return Usage(absl::StrCat("unknown dtype \"", name, "\"; accepted: f32, f16, bf16"));
}

v1::Tensor TensorFromArray(npy::Array array) {
  v1::Tensor tensor;
  tensor.set_dtype(static_cast<v1::DType>(array.dtype));
  for (int64_t dim : array.shape) tensor.add_shape(dim);
  *tensor.mutable_data() = std::move(array.data);
  return tensor;
}

npy::Array ArrayFromTensor(v1::Tensor* tensor) {
  npy::Array array;
  array.dtype = static_cast<DType>(tensor->dtype());
  array.shape.assign(tensor->shape().begin(), tensor->shape().end());
  array.data = std::move(*tensor->mutable_data());
  return array;
}

npy::Array TextArray(absl::string_view text) {
  npy::Array array;
  array.dtype = DType::kU8;
  array.shape = {static_cast<int64_t>(text.size())};
  array.data = std::string(text);
  return array;
}

absl::StatusOr<npy::Array> ReadFloatInput(const std::string& path) {
  QUANTD_ASSIGN_OR_RETURN(npy::Array array, npy::ReadNpy(path));
  absl::StatusOr<npy::Array> input = npy::ToFloatInput(std::move(array));
  if (!input.ok()) {
    return absl::Status(input.status().code(), absl::StrCat(path, ": ", input.status().message()));
  }
  return input;
}

// The enum value a choice flag names (case-insensitive), or a usage error listing the choices.
template <typename Enum>
absl::StatusOr<Enum> FlagChoice(absl::string_view flag, absl::string_view value,
                                std::initializer_list<std::pair<absl::string_view, Enum>> choices) {
  const std::string lower = absl::AsciiStrToLower(value);
  std::vector<absl::string_view> names;
  for (const auto& [name, choice] : choices) {
    if (lower == name) return choice;
    names.push_back(name);
  }
  return Usage(
      absl::StrCat("unknown --", flag, "=", value, "; accepted: ", absl::StrJoin(names, ", ")));
}

// The spec the flags describe (validated by the service, which knows the tensor's shape).
absl::StatusOr<v1::QuantSpec> SpecFromFlags() {
  v1::QuantSpec spec;
  const std::string format = absl::GetFlag(FLAGS_format);
  if (format.empty()) return Usage(absl::StrCat("--format is required; ", DescriptorHelp()));
  spec.set_descriptor_string(format);
  if (const std::string g = absl::GetFlag(FLAGS_granularity); !g.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const Granularity granularity, GranularityFromName(g));
    spec.set_granularity(static_cast<v1::Granularity>(granularity));
  }
  spec.set_axis(absl::GetFlag(FLAGS_axis));
  spec.set_group_size(absl::GetFlag(FLAGS_group_size));
  if (const std::string block = absl::GetFlag(FLAGS_block); !block.empty()) {
    std::vector<std::string> parts = absl::StrSplit(absl::AsciiStrToLower(block), 'x');
    int64_t rows = 0, cols = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &rows) ||
        !absl::SimpleAtoi(parts[1], &cols)) {
      return Usage(absl::StrCat("--block=", block, " needs the form RxC, e.g. 128x128"));
    }
    spec.set_block_rows(rows);
    spec.set_block_cols(cols);
  }
  spec.set_asymmetric(absl::GetFlag(FLAGS_asymmetric));
  if (const std::string r = absl::GetFlag(FLAGS_rounding); !r.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const Rounding rounding, RoundingFromName(r));
    spec.set_rounding(static_cast<v1::Rounding>(rounding));
  }
  spec.set_seed(absl::GetFlag(FLAGS_seed));
  if (const std::string o = absl::GetFlag(FLAGS_overflow); !o.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const Overflow overflow, OverflowFromName(o));
    spec.set_overflow(static_cast<v1::Overflow>(overflow));
  }
  spec.set_clip_ratio(static_cast<float>(absl::GetFlag(FLAGS_clip_ratio)));
  if (const std::string p = absl::GetFlag(FLAGS_nan_policy); !p.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const v1::NanPolicy policy,
                            FlagChoice<v1::NanPolicy>("nan-policy", p,
                                                      {{"reject", v1::NAN_POLICY_REJECT},
                                                       {"zero", v1::NAN_POLICY_ZERO},
                                                       {"propagate", v1::NAN_POLICY_PROPAGATE}}));
    spec.set_nan_policy(policy);
  }
  if (const std::string p = absl::GetFlag(FLAGS_packing); !p.empty()) {
    QUANTD_ASSIGN_OR_RETURN(
        const v1::Packing packing,
        FlagChoice<v1::Packing>("packing", p,
                                {{"bitstream", v1::PACKING_BITSTREAM},
                                 {"int32_offset", v1::PACKING_INT32_OFFSET},
                                 {"high_nibble_first", v1::PACKING_HIGH_NIBBLE_FIRST}}));
    spec.set_packing(packing);
  }
  if (const std::string r = absl::GetFlag(FLAGS_scale_rule); !r.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const v1::ScaleRule rule,
                            FlagChoice<v1::ScaleRule>("scale-rule", r,
                                                      {{"floor", v1::SCALE_RULE_FLOOR},
                                                       {"rceil", v1::SCALE_RULE_RCEIL},
                                                       {"even", v1::SCALE_RULE_EVEN},
                                                       {"nearest", v1::SCALE_RULE_NEAREST}}));
    spec.set_scale_rule(rule);
  }
  spec.set_double_quant(absl::GetFlag(FLAGS_double_quant));
  spec.set_static_global_scale(static_cast<float>(absl::GetFlag(FLAGS_global_scale)));
  for (const auto& [path, tensor] :
       {std::pair{absl::GetFlag(FLAGS_flatquant_left), spec.mutable_flatquant_left()},
        std::pair{absl::GetFlag(FLAGS_flatquant_right), spec.mutable_flatquant_right()}}) {
    if (path.empty()) continue;
    QUANTD_ASSIGN_OR_RETURN(npy::Array matrix, npy::ReadNpy(path));
    if (matrix.dtype != DType::kF32) {
      return Usage(absl::StrCat(path, ": a FlatQuant matrix must be float32, not ", matrix.descr));
    }
    *tensor = TensorFromArray(std::move(matrix));
  }
  if (const std::string path = absl::GetFlag(FLAGS_static_scales); !path.empty()) {
    QUANTD_ASSIGN_OR_RETURN(npy::Array scales, npy::ReadNpy(path));
    if (scales.dtype != DType::kF32) {
      return Usage(absl::StrCat(path, ": static scales must be float32, not ", scales.descr));
    }
    *spec.mutable_static_scales() = TensorFromArray(std::move(scales));
  }
  if (const std::string path = absl::GetFlag(FLAGS_static_zero_points); !path.empty()) {
    QUANTD_ASSIGN_OR_RETURN(npy::Array zero_points, npy::ReadNpy(path));
    if (zero_points.dtype != DType::kI32) {
      return Usage(
          absl::StrCat(path, ": static zero-points must be int32, not ", zero_points.descr));
    }
    *spec.mutable_static_zero_points() = TensorFromArray(std::move(zero_points));
  }
  return spec;
}

// "int4-g128 rne saturate" for a log line; the wire spec when it cannot be read back.
std::string SpecSummary(const v1::QuantSpec& proto) {
  absl::StatusOr<QuantSpec> spec = server::QuantSpecFromProto(proto);
  return spec.ok() ? SpecToString(*spec) : proto.ShortDebugString();
}

absl::Status CheckArgs(const std::vector<char*>& args, size_t want, absl::string_view usage) {
  if (args.size() != want + 2) {
    return Usage(absl::StrCat("usage: quantctl ", args.size() > 1 ? args[1] : "", " ", usage));
  }
  return absl::OkStatus();
}

// A float32 [1] array, and its one value back (the .npz's global_scale, double_quant_offset).
npy::Array FloatArray(float value) {
  npy::Array array;
  array.dtype = DType::kF32;
  array.shape = {1};
  array.data.assign(reinterpret_cast<const char*>(&value), sizeof(value));
  return array;
}

absl::StatusOr<float> OneFloat(const npy::Array& array, absl::string_view name,
                               const std::string& path) {
  if (array.dtype != DType::kF32 || array.data.size() != sizeof(float)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"", name, "\" must hold one float32"));
  }
  float value;
  std::memcpy(&value, array.data.data(), sizeof(value));
  return value;
}

absl::Status RunQuantize(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 2, "--format=F [...] IN.npy OUT.npz"));
  v1::QuantizeRequest request;
  QUANTD_ASSIGN_OR_RETURN(*request.mutable_spec(), SpecFromFlags());
  QUANTD_ASSIGN_OR_RETURN(npy::Array input, ReadFloatInput(args[2]));
  *request.mutable_input() = TensorFromArray(std::move(input));
  request.set_skip_metrics(absl::GetFlag(FLAGS_no_metrics));
  QUANTD_ASSIGN_OR_RETURN(v1::QuantizeResponse response, client.Quantize(std::move(request)));

  v1::QuantizedTensor* quantized = response.mutable_quantized();
  npy::NamedArrays outputs;
  outputs.emplace_back("codes", ArrayFromTensor(quantized->mutable_codes()));
  outputs.emplace_back("scales", ArrayFromTensor(quantized->mutable_scales()));
  if (quantized->spec().asymmetric()) {
    outputs.emplace_back("zero_points", ArrayFromTensor(quantized->mutable_zero_points()));
  }
  if (quantized->spec().double_quant()) {  // NF4: the nested absmax quantization
    outputs.emplace_back("double_quant_scales",
                         ArrayFromTensor(quantized->mutable_double_quant_scales()));
    outputs.emplace_back("double_quant_offset", FloatArray(quantized->double_quant_offset()));
  }
  if (quantized->global_scale() != 0.0f) {  // NVFP4
    outputs.emplace_back("global_scale", FloatArray(quantized->global_scale()));
  }
  npy::Array shape;
  shape.descr = "<i8";
  shape.shape = {quantized->shape_size()};
  shape.data.resize(8 * quantized->shape_size());
  for (int i = 0; i < quantized->shape_size(); ++i) {
    const int64_t dim = quantized->shape(i);
    std::memcpy(&shape.data[8 * i], &dim, 8);
  }
  outputs.emplace_back("shape", std::move(shape));
  QUANTD_ASSIGN_OR_RETURN(const std::string spec_json, ToJson(quantized->spec(), false));
  outputs.emplace_back("spec", TextArray(spec_json));
  outputs.emplace_back("source_dtype",
                       TextArray(DTypeName(static_cast<DType>(quantized->source_dtype()))));
  QUANTD_RETURN_IF_ERROR(npy::WriteNpz(args[3], outputs));
  std::cerr << "quantized "
            << ShapeToString(Shape(quantized->shape().begin(), quantized->shape().end()))
            << " with " << SpecSummary(quantized->spec()) << " on " << response.backend() << " -> "
            << args[3] << "\n";
  if (response.has_metrics()) std::cout << MetricsJson(response.metrics()) << std::endl;
  return absl::OkStatus();
}

absl::StatusOr<npy::Array> Member(npy::NamedArrays& arrays, absl::string_view name,
                                  const std::string& path) {
  for (auto& [member, array] : arrays) {
    if (member == name) return std::move(array);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, " has no \"", name, "\" array; is it a `quantctl quantize` output?"));
}

absl::Status RunDequantize(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 2, "[--output-dtype=f32|f16|bf16] IN.npz OUT.npy"));
  const std::string path = args[2];
  QUANTD_ASSIGN_OR_RETURN(npy::NamedArrays arrays, npy::ReadNpz(path));
  v1::DequantizeRequest request;
  v1::QuantizedTensor* quantized = request.mutable_quantized();

  QUANTD_ASSIGN_OR_RETURN(npy::Array spec_text, Member(arrays, "spec", path));
  google::protobuf::util::JsonParseOptions parse_options;
  parse_options.ignore_unknown_fields = true;
  if (!google::protobuf::util::JsonStringToMessage(spec_text.data, quantized->mutable_spec(),
                                                   parse_options)
           .ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"spec\" is not a quantd spec"));
  }
  QUANTD_ASSIGN_OR_RETURN(npy::Array shape, Member(arrays, "shape", path));
  if (shape.descr != "<i8" || shape.shape.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"shape\" must be a 1-D int64 array"));
  }
  for (size_t i = 0; i < shape.data.size() / 8; ++i) {
    int64_t dim;
    std::memcpy(&dim, &shape.data[8 * i], 8);
    quantized->add_shape(dim);
  }
  for (auto& [name, array] : arrays) {
    if (name == "source_dtype") {
      absl::StatusOr<v1::DType> dtype = DTypeFromFlag(array.data);
      if (dtype.ok()) quantized->set_source_dtype(*dtype);
    }
    if (name == "double_quant_scales") {
      *quantized->mutable_double_quant_scales() = TensorFromArray(std::move(array));
    }
    if (name == "double_quant_offset") {
      QUANTD_ASSIGN_OR_RETURN(const float value, OneFloat(array, name, path));
      quantized->set_double_quant_offset(value);
    }
    if (name == "global_scale") {
      QUANTD_ASSIGN_OR_RETURN(const float value, OneFloat(array, name, path));
      quantized->set_global_scale(value);
    }
  }
  QUANTD_ASSIGN_OR_RETURN(npy::Array codes, Member(arrays, "codes", path));
  *quantized->mutable_codes() = TensorFromArray(std::move(codes));
  QUANTD_ASSIGN_OR_RETURN(npy::Array scales, Member(arrays, "scales", path));
  *quantized->mutable_scales() = TensorFromArray(std::move(scales));
  if (quantized->spec().asymmetric()) {
    QUANTD_ASSIGN_OR_RETURN(npy::Array zero_points, Member(arrays, "zero_points", path));
    *quantized->mutable_zero_points() = TensorFromArray(std::move(zero_points));
  }
  if (const std::string dtype = absl::GetFlag(FLAGS_output_dtype); !dtype.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const v1::DType output_dtype, DTypeFromFlag(dtype));
    request.set_output_dtype(output_dtype);
  }
  QUANTD_ASSIGN_OR_RETURN(v1::DequantizeResponse response, client.Dequantize(std::move(request)));
  QUANTD_RETURN_IF_ERROR(npy::WriteNpy(args[3], ArrayFromTensor(response.mutable_output())));
  std::cerr << "dequantized " << path << " on " << response.backend() << " -> " << args[3] << "\n";
  return absl::OkStatus();
}

absl::Status RunQuantDequant(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 2, "--format=F [...] IN.npy OUT.npy"));
  v1::QuantDequantRequest request;
  QUANTD_ASSIGN_OR_RETURN(*request.mutable_spec(), SpecFromFlags());
  QUANTD_ASSIGN_OR_RETURN(npy::Array input, ReadFloatInput(args[2]));
  *request.mutable_input() = TensorFromArray(std::move(input));
  request.set_skip_metrics(absl::GetFlag(FLAGS_no_metrics));
  if (const std::string dtype = absl::GetFlag(FLAGS_output_dtype); !dtype.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const v1::DType output_dtype, DTypeFromFlag(dtype));
    request.set_output_dtype(output_dtype);
  }
  QUANTD_ASSIGN_OR_RETURN(v1::QuantDequantResponse response,
                          client.QuantDequant(std::move(request)));
  QUANTD_RETURN_IF_ERROR(npy::WriteNpy(args[3], ArrayFromTensor(response.mutable_output())));
  std::cerr << "fake-quantized with " << SpecSummary(response.spec()) << " on "
            << response.backend() << " -> " << args[3] << "\n";
  if (response.has_metrics()) std::cout << MetricsJson(response.metrics()) << std::endl;
  return absl::OkStatus();
}

absl::Status RunGemm(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(
      CheckArgs(args, 3, "--format=F [--weight-format=F2] [--bias=BIAS.npy] A.npy B.npy OUT.npy"));
  v1::GemmRequest request;
  QUANTD_ASSIGN_OR_RETURN(*request.mutable_a_spec(), SpecFromFlags());
  *request.mutable_b_spec() = request.a_spec();
  if (const std::string weight = absl::GetFlag(FLAGS_weight_format); !weight.empty()) {
    request.mutable_b_spec()->set_descriptor_string(weight);
  }
  QUANTD_ASSIGN_OR_RETURN(npy::Array a, ReadFloatInput(args[2]));
  QUANTD_ASSIGN_OR_RETURN(npy::Array b, ReadFloatInput(args[3]));
  *request.mutable_a() = TensorFromArray(std::move(a));
  *request.mutable_b() = TensorFromArray(std::move(b));
  if (const std::string bias = absl::GetFlag(FLAGS_bias); !bias.empty()) {
    QUANTD_ASSIGN_OR_RETURN(npy::Array values, ReadFloatInput(bias));
    *request.mutable_bias() = TensorFromArray(std::move(values));
  }
  const auto alpha = static_cast<float>(absl::GetFlag(FLAGS_alpha));
  request.set_alpha(alpha);
  request.set_alpha_is_zero(alpha == 0.0f);
  request.set_skip_metrics(absl::GetFlag(FLAGS_no_metrics));
  if (const std::string dtype = absl::GetFlag(FLAGS_output_dtype); !dtype.empty()) {
    QUANTD_ASSIGN_OR_RETURN(const v1::DType output_dtype, DTypeFromFlag(dtype));
    request.set_output_dtype(output_dtype);
  }
  QUANTD_ASSIGN_OR_RETURN(v1::GemmResponse response, client.Gemm(std::move(request)));
  QUANTD_RETURN_IF_ERROR(npy::WriteNpy(args[4], ArrayFromTensor(response.mutable_output())));
  std::cerr << "A " << SpecSummary(response.a_spec()) << " x B " << SpecSummary(response.b_spec())
            << " on " << response.backend() << " -> " << args[4] << "\n";
  if (response.has_metrics()) std::cout << MetricsJson(response.metrics()) << std::endl;
  return absl::OkStatus();
}

// A JSON array of the float32 / int32 values in `tensor` (%.9g round-trips a float32).
std::string JsonValues(const v1::Tensor& tensor) {
  std::vector<std::string> values;
  const std::string& data = tensor.data();
  for (size_t i = 0; i + 4 <= data.size(); i += 4) {
    if (tensor.dtype() == v1::DTYPE_I32) {
      int32_t v;
      std::memcpy(&v, &data[i], 4);
      values.push_back(absl::StrCat(v));
    } else {
      float v;
      std::memcpy(&v, &data[i], 4);
      values.push_back(std::isfinite(v) ? absl::StrFormat("%.9g", v) : JsonNumber(v));
    }
  }
  return absl::StrCat("[", absl::StrJoin(values, ", "), "]");
}

absl::Status RunCalibrate(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(
      CheckArgs(args, 1, "--format=F [...] [--method=amax|percentile|mse] IN.npy"));
  v1::CalibrateRequest request;
  QUANTD_ASSIGN_OR_RETURN(*request.mutable_spec(), SpecFromFlags());
  QUANTD_ASSIGN_OR_RETURN(npy::Array input, ReadFloatInput(args[2]));
  *request.mutable_input() = TensorFromArray(std::move(input));
  const std::string method = absl::AsciiStrToLower(absl::GetFlag(FLAGS_method));
  if (method == "amax") {
    request.set_method(v1::CALIBRATION_METHOD_AMAX);
  } else if (method == "percentile") {
    request.set_method(v1::CALIBRATION_METHOD_PERCENTILE);
  } else if (method == "mse") {
    request.set_method(v1::CALIBRATION_METHOD_MSE);
  } else {
    return Usage(absl::StrCat("unknown --method=", method, "; accepted: amax, percentile, mse"));
  }
  request.set_percentile(absl::GetFlag(FLAGS_percentile));
  request.set_search_steps(absl::GetFlag(FLAGS_search_steps));
  request.set_search_min_ratio(static_cast<float>(absl::GetFlag(FLAGS_search_min_ratio)));
  QUANTD_ASSIGN_OR_RETURN(v1::CalibrateResponse response, client.Calibrate(std::move(request)));

  const v1::QuantSpec& spec = response.spec();
  std::string json =
      absl::StrCat("{\"spec\": \"", SpecSummary(spec), "\", \"method\": \"", method,
                   "\", \"scale_shape\": [", absl::StrJoin(response.scales().shape(), ", "),
                   "], \"scales\": ", JsonValues(response.scales()));
  if (spec.asymmetric())
    absl::StrAppend(&json, ", \"zero_points\": ", JsonValues(response.zero_points()));
  absl::StrAppend(&json, ", \"amax\": ", JsonValues(response.amax()),
                  ", \"clip_ratios\": ", JsonValues(response.clip_ratios()),
                  ", \"metrics\": ", MetricsJson(response.metrics()), "}");
  if (const std::string save = absl::GetFlag(FLAGS_save); !save.empty()) {
    npy::NamedArrays outputs;
    outputs.emplace_back("scales", ArrayFromTensor(response.mutable_scales()));
    if (spec.asymmetric()) {
      outputs.emplace_back("zero_points", ArrayFromTensor(response.mutable_zero_points()));
    }
    outputs.emplace_back("amax", ArrayFromTensor(response.mutable_amax()));
    outputs.emplace_back("clip_ratios", ArrayFromTensor(response.mutable_clip_ratios()));
    QUANTD_RETURN_IF_ERROR(npy::WriteNpz(save, outputs));
  }
  std::cout << json << std::endl;
  return absl::OkStatus();
}

absl::Status RunCapabilities(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 0, ""));
  QUANTD_ASSIGN_OR_RETURN(const v1::GetCapabilitiesResponse capabilities, client.GetCapabilities());
  QUANTD_ASSIGN_OR_RETURN(const std::string json, ToJson(capabilities, /*pretty=*/true));
  std::cout << json << std::endl;
  return absl::OkStatus();
}

absl::Status RunHealth(Client& client, const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 0, ""));
  QUANTD_RETURN_IF_ERROR(client.Health());
  std::cout << "SERVING " << client.description() << std::endl;
  return absl::OkStatus();
}

// Writes a tensor of normal random values: demo and benchmark inputs without Python.
absl::Status RunRandom(const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 1, "--shape=D0,D1,... [--dtype=f32] OUT.npy"));
  Shape shape;
  for (absl::string_view dim : absl::StrSplit(absl::GetFlag(FLAGS_shape), ',', absl::SkipEmpty())) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(dim, &d) || d < 0) {
      return Usage(absl::StrCat("--shape=", absl::GetFlag(FLAGS_shape), " needs D0,D1,... >= 0"));
    }
    shape.push_back(d);
  }
  QUANTD_ASSIGN_OR_RETURN(const int64_t numel, NumElements(shape));
  QUANTD_ASSIGN_OR_RETURN(const v1::DType proto_dtype, DTypeFromFlag(absl::GetFlag(FLAGS_dtype)));
  const DType dtype = static_cast<DType>(proto_dtype);
  npy::Array array;
  array.dtype = dtype;
  array.shape = shape;
  array.data.resize(numel * DTypeSize(dtype));
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::normal_distribution<float> normal(0.0f, static_cast<float>(absl::GetFlag(FLAGS_stddev)));
  for (int64_t i = 0; i < numel; ++i) StoreFromFloat(dtype, array.data.data(), i, normal(rng));
  return npy::WriteNpy(args[2], array);
}

absl::Status RunBenchCommand(const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(CheckArgs(args, 0, "[--format=F ...] [--op=...] [--sizes=...] ..."));
  BenchOptions options;
  options.target = absl::GetFlag(FLAGS_server);
  if (options.target.empty()) {
    return Usage(
        "bench measures a server: give --server=HOST:PORT (scripts/service_bench.sh starts one)");
  }
  if (absl::GetFlag(FLAGS_format).empty()) absl::SetFlag(&FLAGS_format, "int8");
  QUANTD_ASSIGN_OR_RETURN(options.spec, SpecFromFlags());
  QUANTD_ASSIGN_OR_RETURN(options.op, BenchOpFromName(absl::GetFlag(FLAGS_op)));
  QUANTD_ASSIGN_OR_RETURN(options.dtype, DTypeFromFlag(absl::GetFlag(FLAGS_dtype)));
  options.skip_metrics = absl::GetFlag(FLAGS_no_metrics);
  QUANTD_ASSIGN_OR_RETURN(options.sizes, ParseByteSizes(absl::GetFlag(FLAGS_sizes)));
  QUANTD_ASSIGN_OR_RETURN(options.concurrency, ParseConcurrency(absl::GetFlag(FLAGS_concurrency)));
  options.connections = absl::GetFlag(FLAGS_connections);
  options.duration = absl::GetFlag(FLAGS_duration);
  options.warmup = absl::GetFlag(FLAGS_warmup);
  options.timeout = absl::GetFlag(FLAGS_timeout);
  options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  options.progress = [](const std::string& line) { std::cerr << "bench: " << line << std::endl; };
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty()) {
    // Before minutes of measuring: a path that cannot be written is a usage error now.
    std::ofstream probe(json_path, std::ios::app);
    if (!probe) return Usage(absl::StrCat("--json=", json_path, " cannot be written"));
  }
  QUANTD_ASSIGN_OR_RETURN(const BenchReport report, RunBench(options));
  std::cout << BenchMarkdown(report) << std::flush;
  if (!json_path.empty()) {
    std::ofstream json(json_path, std::ios::trunc);
    json << BenchJson(report);
    if (!json.flush()) return absl::InternalError(absl::StrCat("cannot write ", json_path));
  }
  return absl::OkStatus();
}

absl::Status RunCompress(const std::vector<char*>& args) {
  QUANTD_RETURN_IF_ERROR(
      CheckArgs(args, 2,
                "--scheme=S [--ignore=RE] [--include=RE] [--max-shard-size=5GB] [--in-flight=4] "
                "IN_DIR OUT_DIR"));
  compress::CompressOptions options;
  options.input_dir = args[2];
  options.output_dir = args[3];
  const std::string scheme = absl::GetFlag(FLAGS_scheme);
  if (scheme.empty()) {
    return Usage(
        "compress needs --scheme: fp8-dynamic, fp8-block, w8a8-int8, w4a16, nvfp4 or "
        "mxfp4");
  }
  QUANTD_ASSIGN_OR_RETURN(options.scheme, compress::FindScheme(scheme));
  options.ignore_regex = absl::GetFlag(FLAGS_ignore);
  options.include_regex = absl::GetFlag(FLAGS_include);
  QUANTD_ASSIGN_OR_RETURN(options.max_shard_bytes,
                          compress::ParseShardSize(absl::GetFlag(FLAGS_max_shard_size)));
  options.in_flight = absl::GetFlag(FLAGS_in_flight);
  if (options.in_flight < 1 || options.in_flight > 256) {
    return Usage(absl::StrCat("--in-flight=", options.in_flight, " must be in [1, 256]"));
  }
  QUANTD_ASSIGN_OR_RETURN(
      const std::string progress,
      FlagChoice<std::string>(
          "progress", absl::GetFlag(FLAGS_progress),
          {{"auto", "auto"}, {"bar", "bar"}, {"lines", "lines"}, {"off", "off"}}));
  const bool terminal = isatty(STDERR_FILENO) != 0;
  options.progress = progress == "bar" || (progress == "auto" && terminal)
                         ? compress::CompressOptions::Progress::kBar
                     : progress == "off" ? compress::CompressOptions::Progress::kOff
                                         : compress::CompressOptions::Progress::kLines;
  options.write_log = [](absl::string_view text) { std::cerr << text << std::flush; };

  ClientOptions client_options;
  client_options.target = absl::GetFlag(FLAGS_local) ? "" : absl::GetFlag(FLAGS_server);
  client_options.timeout = absl::GetFlag(FLAGS_timeout);
  client_options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(client_options));
  std::cerr << "compress: quantizing on " << client->description() << "\n";
  QUANTD_ASSIGN_OR_RETURN(const compress::CompressSummary summary,
                          compress::CompressCheckpoint(*client, options));
  std::cout << compress::SummaryTable(summary) << std::flush;
  return absl::OkStatus();
}

absl::Status Run(const std::vector<char*>& args) {
  if (args.size() < 2) return Usage(kUsage);
  const std::string command = args[1];
  if (command == "random") return RunRandom(args);
  if (command == "bench") return RunBenchCommand(args);
  if (command == "compress") return RunCompress(args);
  using Command = absl::Status (*)(Client&, const std::vector<char*>&);
  const std::pair<const char*, Command> commands[] = {
      {"quantize", RunQuantize},
      {"dequantize", RunDequantize},
      {"quantdequant", RunQuantDequant},
      {"calibrate", RunCalibrate},
      {"gemm", RunGemm},
      {"capabilities", RunCapabilities},
      {"health", RunHealth},
  };
  for (const auto& [name, run] : commands) {
    if (command != name) continue;
    ClientOptions options;
    options.target = absl::GetFlag(FLAGS_server);
    options.timeout = absl::GetFlag(FLAGS_timeout);
    options.chunk_bytes = absl::GetFlag(FLAGS_chunk_bytes);
    QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Create(options));
    return run(*client, args);
  }
  return Usage(absl::StrCat("unknown command \"", command, "\"\n\n", kUsage));
}

}  // namespace
}  // namespace quantd

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(quantd::kUsage);
  // The documented spellings are dashed (--group-size); absl flags are named with underscores.
  // Rewrite the name part of every --flag argument before absl parses them.
  std::vector<std::string> spelled(argv, argv + argc);
  std::vector<char*> normalized;
  for (std::string& arg : spelled) {
    if (arg.rfind("--", 0) == 0) {
      const size_t name_end = std::min(arg.find('='), arg.size());
      std::replace(arg.begin() + 2, arg.begin() + name_end, '-', '_');
    }
    normalized.push_back(arg.data());
  }
  const std::vector<char*> args =
      absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized.data());
  const absl::Status status = quantd::Run(args);
  if (status.ok()) return 0;
  std::cerr << "quantctl: " << status.message() << " (" << absl::StatusCodeToString(status.code())
            << ")\n";
  // Refusals of what the caller asked (bad flags, files, specs) exit 2; failures to do it, 1.
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}
