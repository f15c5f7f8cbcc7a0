// Tests for client/compress.h through the embedded client (the service core in this process):
// the output of every scheme against Quantize answers for the same tensors, the sharding, the
// config.json and index it writes, resuming, and the refusals (usage errors, unusable input)
// with their codes. The numerics against an independent oracle, real servers and
// compressed-tensors itself are tests/e2e/test_compress*.py.
#include "compress.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client.h"
#include "gtest/gtest.h"
#include "json.h"
#include "safetensors.h"

namespace quantd::compress {
namespace {

namespace fs = std::filesystem;
using safetensors::DType;
using safetensors::TensorEntry;

std::string ReadText(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string Floats(size_t count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::string bytes(count * 4, '\0');
  for (size_t i = 0; i < count; ++i) {
    const float value = normal(rng);
    std::memcpy(&bytes[4 * i], &value, 4);
  }
  return bytes;
}

class CompressTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(testing::TempDir()) /
            absl::StrCat("compress_test_", getpid(), "_",
                         testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    input_ = root_ / "in";
    output_ = root_ / "out";
    fs::create_directories(input_);
    // One shard, F32: an embedding, two linear layers (one with 96 in_features: ragged for
    // 128-groups, fine for 16 / 32), a norm, a bias.
    tensors_ = {
        {TensorEntry{"model.embed_tokens.weight", DType::kF32, {64, 128}}, Floats(64 * 128, 1)},
        {TensorEntry{"model.layers.0.mlp.up_proj.weight", DType::kF32, {96, 128}},
         Floats(96 * 128, 2)},
        {TensorEntry{"model.layers.0.mlp.down_proj.weight", DType::kF32, {128, 96}},
         Floats(128 * 96, 3)},
        {TensorEntry{"model.layers.0.mlp.down_proj.bias", DType::kF32, {128}}, Floats(128, 4)},
        {TensorEntry{"model.norm.weight", DType::kF32, {128}}, Floats(128, 5)},
    };
    ASSERT_TRUE(safetensors::WriteFile((input_ / "model.safetensors").string(), tensors_,
                                       {{"format", "pt"}})
                    .ok());
    WriteText(input_ / "config.json", R"({"model_type": "llama", "eps": 1e-06})");
    WriteText(input_ / "tokenizer.json", "{}");
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(ClientOptions());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  void TearDown() override { fs::remove_all(root_); }

  CompressOptions Options(absl::string_view scheme) {
    CompressOptions options;
    options.input_dir = input_.string();
    options.output_dir = output_.string();
    options.scheme = *FindScheme(scheme);
    options.progress = CompressOptions::Progress::kOff;
    options.write_log = [this](absl::string_view text) { log_ += std::string(text); };
    return options;
  }

  // Every tensor of the output: name -> (file, info).
  std::map<std::string, std::pair<std::shared_ptr<safetensors::File>, safetensors::TensorInfo>>
  Output() {
    std::map<std::string, std::pair<std::shared_ptr<safetensors::File>, safetensors::TensorInfo>>
        out;
    for (const auto& entry : fs::directory_iterator(output_)) {
      if (entry.path().extension() != ".safetensors") continue;
      absl::StatusOr<std::unique_ptr<safetensors::File>> file =
          safetensors::File::Open(entry.path().string());
      EXPECT_TRUE(file.ok()) << file.status();
      std::shared_ptr<safetensors::File> shared = *std::move(file);
      for (const auto& info : shared->tensors()) out[info.name] = {shared, info};
    }
    return out;
  }

  v1::QuantizeResponse Quantize(const Scheme& scheme, const TensorEntry& entry,
                                const std::string& bytes) {
    v1::QuantizeRequest request;
    request.mutable_input()->set_dtype(v1::DTYPE_F32);
    for (const int64_t dim : entry.shape) request.mutable_input()->add_shape(dim);
    request.mutable_input()->set_data(bytes);
    v1::QuantSpec* spec = request.mutable_spec();
    spec->set_descriptor_string(std::string(scheme.descriptor));
    spec->set_granularity(scheme.granularity);
    spec->set_group_size(scheme.group_size);
    spec->set_block_rows(scheme.block_rows);
    spec->set_block_cols(scheme.block_cols);
    spec->set_packing(scheme.packing);
    spec->set_scale_rule(scheme.scale_rule);
    absl::StatusOr<v1::QuantizeResponse> response = client_->Quantize(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return *response;
  }

  fs::path root_, input_, output_;
  std::vector<std::pair<TensorEntry, std::string>> tensors_;
  std::unique_ptr<Client> client_;
  std::string log_;
};

TEST_F(CompressTest, EverySchemeWritesTheServiceAnswerInItsLayout) {
  for (const Scheme* scheme : Schemes()) {
    SCOPED_TRACE(std::string(scheme->name));
    fs::remove_all(output_);
    absl::StatusOr<CompressSummary> summary = CompressCheckpoint(*client_, Options(scheme->name));
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->tensors.size(), tensors_.size());
    auto out = Output();
    for (const auto& [entry, bytes] : tensors_) {
      const bool linear = absl::StrContains(entry.name, "proj.weight");
      const bool ragged = entry.shape.size() == 2 && scheme->in_features_multiple > 0 &&
                          entry.shape[1] % scheme->in_features_multiple != 0;
      if (!linear || ragged) {
        ASSERT_TRUE(out.count(entry.name)) << entry.name;
        const auto& [file, info] = out[entry.name];
        EXPECT_EQ(file->Data(info), bytes) << entry.name << " must pass through";
        continue;
      }
      const std::string module = entry.name.substr(0, entry.name.size() - 7);
      v1::QuantizeResponse response = Quantize(*scheme, entry, bytes);
      const bool packed =
          scheme->layout != WeightLayout::kFloat8 && scheme->layout != WeightLayout::kInt8;
      const std::string codes = module + (packed ? ".weight_packed" : ".weight");
      ASSERT_TRUE(out.count(codes)) << codes;
      EXPECT_EQ(out[codes].first->Data(out[codes].second), response.quantized().codes().data());
      const auto& [scale_file, scale_info] = out[module + ".weight_scale"];
      EXPECT_EQ(scale_file->Data(scale_info), response.quantized().scales().data());
      EXPECT_EQ(std::vector<int64_t>(response.quantized().scales().shape().begin(),
                                     response.quantized().scales().shape().end()),
                scale_info.shape);
      if (scheme->layout == WeightLayout::kNvfp4) {
        const auto& [file, info] = out[module + ".weight_global_scale"];
        float global_scale;
        std::memcpy(&global_scale, file->Data(info).data(), 4);
        EXPECT_EQ(global_scale, response.quantized().global_scale());
        EXPECT_EQ(scale_info.dtype, DType::kF8E4M3);
      }
      if (scheme->layout == WeightLayout::kPackedInt4) {
        const auto& [file, info] = out[module + ".weight_shape"];
        int64_t dims[2];
        std::memcpy(dims, file->Data(info).data(), 16);
        EXPECT_EQ(dims[0], entry.shape[0]);
        EXPECT_EQ(dims[1], entry.shape[1]);
      }
    }
    absl::StatusOr<Json> config = ParseJson(ReadText(output_ / "config.json"));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->Find("eps")->text(), "1e-06");  // the original, untouched
    const Json* quantization = config->Find("quantization_config");
    ASSERT_NE(quantization, nullptr);
    EXPECT_EQ(quantization->Find("format")->text(), scheme->format);
    EXPECT_EQ(quantization->Find("quant_method")->text(), "compressed-tensors");
    std::vector<std::string> ignore;
    for (const Json& module : quantization->Find("ignore")->items()) {
      ignore.push_back(module.text());
    }
    std::vector<std::string> want = {"model.embed_tokens"};
    if (scheme->in_features_multiple == 128) want.push_back("model.layers.0.mlp.down_proj");
    EXPECT_EQ(ignore, want);
    EXPECT_EQ(ReadText(output_ / "tokenizer.json"), "{}");
  }
}

TEST_F(CompressTest, ShardsIndexAndResume) {
  CompressOptions options = Options("fp8-dynamic");
  // F32 embed 32768 B | up_proj 12672 B | down_proj 12800 B | bias + norm 1024 B.
  options.max_shard_bytes = 13'000;
  absl::StatusOr<CompressSummary> first = CompressCheckpoint(*client_, options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->shards_total, 4);
  EXPECT_EQ(first->shards_written, 4);
  absl::StatusOr<Json> index = ParseJson(ReadText(output_ / "model.safetensors.index.json"));
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->Find("weight_map")->Find("model.layers.0.mlp.up_proj.weight_scale")->text(),
            "model-00002-of-00004.safetensors");
  const std::string shard = ReadText(output_ / "model-00003-of-00004.safetensors");

  fs::remove(output_ / "model-00003-of-00004.safetensors");
  log_.clear();
  absl::StatusOr<CompressSummary> second = CompressCheckpoint(*client_, options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->shards_resumed, 3);
  EXPECT_EQ(second->shards_written, 1);
  EXPECT_EQ(ReadText(output_ / "model-00003-of-00004.safetensors"), shard);
  EXPECT_TRUE(absl::StrContains(log_, "redoing model-00003-of-00004.safetensors is missing"))
      << log_;
  ASSERT_EQ(second->tensors.size(), first->tensors.size());
  for (size_t i = 0; i < first->tensors.size(); ++i) {
    EXPECT_EQ(second->tensors[i].name, first->tensors[i].name);
    EXPECT_EQ(second->tensors[i].bytes_after, first->tensors[i].bytes_after);
  }
  const std::string table = SummaryTable(*second);
  EXPECT_TRUE(absl::StrContains(table, "| fp8-dynamic | 2 |")) << table;
  EXPECT_TRUE(absl::StrContains(table, "4 shards: 1 written, 3 kept")) << table;

  // Another max shard size is another job.
  options.max_shard_bytes = 5'000'000'000;
  log_.clear();
  absl::StatusOr<CompressSummary> third = CompressCheckpoint(*client_, options);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->shards_total, 1);
  EXPECT_TRUE(absl::StrContains(log_, "starting over")) << log_;
  EXPECT_TRUE(absl::StrContains(log_, "removing model-00002-of-00004.safetensors")) << log_;
  EXPECT_FALSE(fs::exists(output_ / "model-00004-of-00004.safetensors"));
}

TEST_F(CompressTest, IgnoreAndInclude) {
  CompressOptions options = Options("w8a8-int8");
  options.ignore_regex = "up_proj";
  options.include_regex = "embed";
  absl::StatusOr<CompressSummary> summary = CompressCheckpoint(*client_, options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  std::map<std::string, std::string> kind;
  for (const TensorReport& row : summary->tensors) kind[row.name] = row.scheme;
  EXPECT_EQ(kind["model.embed_tokens.weight"], "w8a8-int8");
  EXPECT_EQ(kind["model.layers.0.mlp.up_proj.weight"], "dense");
  EXPECT_EQ(kind["model.layers.0.mlp.down_proj.weight"], "w8a8-int8");
  EXPECT_EQ(kind["model.norm.weight"], "dense");
}

TEST_F(CompressTest, RefusesUnusableInput) {
  CompressOptions options = Options("nvfp4");
  options.ignore_regex = "(";
  EXPECT_EQ(CompressCheckpoint(*client_, options).status().code(),
            absl::StatusCode::kInvalidArgument);

  options = Options("nvfp4");
  options.output_dir = input_.string();
  absl::Status same = CompressCheckpoint(*client_, options).status();
  EXPECT_EQ(same.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(same.message(), "OUT_DIR is IN_DIR")) << same;

  fs::create_directories(output_);
  WriteText(output_ / "config.json", "{}");
  absl::Status foreign = CompressCheckpoint(*client_, Options("nvfp4")).status();
  EXPECT_EQ(foreign.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(foreign.message(), "not an earlier `quantctl compress` output"))
      << foreign;
  EXPECT_EQ(ReadText(output_ / "config.json"), "{}");
  fs::remove_all(output_);

  WriteText(input_ / "config.json", R"({"quantization_config": {"quant_method": "fp8"}})");
  absl::Status quantized = CompressCheckpoint(*client_, Options("nvfp4")).status();
  EXPECT_EQ(quantized.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(quantized.message(), "already has a quantization_config"));

  WriteText(input_ / "config.json", "{");
  EXPECT_EQ(CompressCheckpoint(*client_, Options("nvfp4")).status().code(),
            absl::StatusCode::kInvalidArgument);

  WriteText(input_ / "config.json", "{}");
  WriteText(input_ / "model.safetensors.index.json",
            R"({"weight_map": {"model.norm.weight": "/etc/passwd"}})");
  absl::Status escape = CompressCheckpoint(*client_, Options("nvfp4")).status();
  EXPECT_EQ(escape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(escape.message(), "not a .safetensors file name")) << escape;
  EXPECT_FALSE(fs::exists(output_ / "model-00001-of-00001.safetensors"));
}

TEST_F(CompressTest, ServiceRefusalNamesTheTensor) {
  // NaN in an INT8 weight: the service refuses it (FORMATS.md: formats without NaN reject).
  std::string bytes = tensors_[1].second;
  const float nan = std::nanf("");
  std::memcpy(&bytes[40], &nan, 4);
  tensors_[1].second = bytes;
  ASSERT_TRUE(safetensors::WriteFile((input_ / "model.safetensors").string(), tensors_).ok());
  absl::Status status = CompressCheckpoint(*client_, Options("w8a8-int8")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(status.message(),
                                "quantizing \"model.layers.0.mlp.up_proj.weight\" [96, 128]"))
      << status;
  // Nothing half-written is left behind.
  for (const auto& entry : fs::directory_iterator(output_)) {
    EXPECT_FALSE(absl::StrContains(entry.path().filename().string(), ".tmp.")) << entry.path();
  }
}

TEST(ParseShardSizeTest, TransformersSpellings) {
  EXPECT_EQ(*ParseShardSize("5GB"), 5'000'000'000);
  EXPECT_EQ(*ParseShardSize("500MB"), 500'000'000);
  EXPECT_EQ(*ParseShardSize("2GiB"), int64_t{2} << 30);
  EXPECT_EQ(*ParseShardSize("1.5kb"), 1500);
  EXPECT_EQ(*ParseShardSize("1048576"), 1048576);
  EXPECT_EQ(*ParseShardSize(" 10 KiB "), 10240);
  for (const char* bad : {"", "GB", "-1GB", "0", "lots", "1e30", "5 GBs"}) {
    EXPECT_EQ(ParseShardSize(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(SchemesTest, NamesAndLookup) {
  std::vector<std::string> names;
  for (const Scheme* scheme : Schemes()) names.emplace_back(scheme->name);
  EXPECT_EQ(names, (std::vector<std::string>{"fp8-dynamic", "fp8-block", "w8a8-int8", "w4a16",
                                             "nvfp4", "mxfp4"}));
  EXPECT_EQ((*FindScheme("NVFP4"))->preset, "NVFP4A16");
  absl::StatusOr<const Scheme*> unknown = FindScheme("int3");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.status().message(), "accepted: fp8-dynamic"));
  for (const Scheme* scheme : Schemes()) {
    EXPECT_TRUE(ParseJson(scheme->weights_json).ok()) << scheme->name;
    EXPECT_TRUE(ParseJson(scheme->input_activations_json).ok()) << scheme->name;
  }
}

}  // namespace
}  // namespace quantd::compress
