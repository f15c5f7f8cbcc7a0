// `quantctl compress`: a Hugging Face safetensors checkpoint in, the same checkpoint with its
// linear layers quantized in the compressed-tensors layout llm-compressor writes out.
// tests/e2e/test_compress_ct.py checks the output against compressed-tensors 0.20.0 (its
// decompressors) and transformers' loader; vLLM's loader source was read, vLLM itself is not
// run here.
//
//   CompressOptions options;
//   options.input_dir = "Llama-3.1-8B";
//   options.output_dir = "Llama-3.1-8B-FP8-dynamic";
//   QUANTD_ASSIGN_OR_RETURN(options.scheme, FindScheme("fp8-dynamic"));
//   QUANTD_ASSIGN_OR_RETURN(CompressSummary summary, CompressCheckpoint(*client, options));
//   std::cout << SummaryTable(summary);
//
// The quantization itself is the quantd service's (Client::Quantize, in process or on the
// servers the client round-robins over): its codes and scales are the numbers, this file only
// relabels and repacks them into compressed-tensors' tensor names, dtypes and shapes. Several
// tensors are in flight at once (`in_flight`), so a multi-replica target spreads the work.
//
// What is quantized: 2-D F32/F16/BF16 tensors named "<module>.weight", except embeddings,
// lm_head and norms (kDefaultIgnoreRegex), adjusted by `include_regex` (adds modules back) and
// `ignore_regex` (removes them; it wins over include). Both are RE2 patterns matched anywhere in
// the module name ("model.layers.0.mlp.down_proj"). A weight whose in_features the scheme
// cannot group (compressed-tensors refuses a ragged last group) stays dense. For NVFP4 the
// layers vLLM fuses (q/k/v, gate/up) share one global scale, as llm-compressor makes them. Every
// other tensor is copied byte for byte; every dense "<module>.weight" (norms aside) is listed in
// the config's `ignore`, so that no loader looks for its scales.
//
// Output: model-0000K-of-0000N.safetensors shards of at most `max_shard_bytes` (a tensor
// group never splits; one larger than the limit gets a shard of its own, as transformers
// does), model.safetensors.index.json, config.json with `quantization_config`, the input
// directory's other top-level files copied (tokenizer, generation config, ...; weights in other
// formats are not), report.json / report.csv (one row per input tensor), and
// compress_manifest.json, which makes the job resumable: each finished shard is renamed into
// place and recorded with its SHA-256, and a re-run of the same job (same input files by size,
// modification time and header, same scheme and options) keeps the shards whose checksum still
// matches and redoes the rest. Anything else in the manifest starts the job over.
#ifndef QUANTD_CLIENT_COMPRESS_H_
#define QUANTD_CLIENT_COMPRESS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client.h"
#include "quantd/v1/quantd.pb.h"
#include "safetensors.h"

namespace quantd::compress {

// How the service's answer becomes compressed-tensors tensors (the parameter names after
// "<module>.").
enum class WeightLayout {
  kFloat8,      // weight F8_E4M3 [N, K] (the codes' bytes), weight_scale F32
  kInt8,        // weight I8 [N, K], weight_scale F32
  kPackedInt4,  // weight_packed I32 [N, ceil(K/8)], weight_scale F32, weight_shape I64 [2]
  kNvfp4,       // weight_packed U8 [N, K/2], weight_scale F8_E4M3, weight_global_scale F32 [1]
  kMxfp4,       // weight_packed U8 [N, K/2], weight_scale U8 (E8M0)
};

// One compressed-tensors preset: what to ask the service for and what to write. kSchemes in
// compress.cc holds the rows.
struct Scheme {
  absl::string_view name;    // the --scheme value
  absl::string_view preset;  // compressed-tensors PRESET_SCHEMES name it reproduces
  absl::string_view format;  // compressed-tensors CompressionFormat value
  WeightLayout layout;
  // The request: a FORMATS.md descriptor string refined by granularity / group / block.
  absl::string_view descriptor;
  v1::Granularity granularity;
  int64_t group_size;
  int64_t block_rows;
  int64_t block_cols;
  v1::Packing packing;
  v1::ScaleRule scale_rule;
  // in_features must be a multiple of this (compressed-tensors' group strategy refuses a
  // ragged last group); 0: any.
  int64_t in_features_multiple;
  // config.json's config_groups.group_0.weights / .input_activations as compressed-tensors
  // serializes the preset (JSON text; "null" for weight-only schemes).
  absl::string_view weights_json;
  absl::string_view input_activations_json;
};

// The schemes, in the order `quantctl compress --help` lists them.
const std::vector<const Scheme*>& Schemes();
// InvalidArgument naming the accepted schemes for an unknown name.
[[nodiscard]] absl::StatusOr<const Scheme*> FindScheme(absl::string_view name);

// Modules left dense unless --include names them: embeddings, lm_head and norms.
inline constexpr absl::string_view kDefaultIgnoreRegex =
    R"((^|\.)lm_head$|(^|\.)(wte|wpe)$|embed|norm)";

// The compressed-tensors release whose layout and config this writer was checked against; it
// goes into quantization_config.version as llm-compressor writes the version it used.
inline constexpr absl::string_view kCompressedTensorsVersion = "0.20.0";

struct CompressOptions {
  std::string input_dir;
  std::string output_dir;
  const Scheme* scheme = nullptr;
  std::string ignore_regex;                 // RE2; empty: none
  std::string include_regex;                // RE2; empty: none
  int64_t max_shard_bytes = 5'000'000'000;  // transformers' default max_shard_size "5GB"
  int in_flight = 4;                        // Quantize calls at once
  // Progress: a bar redrawn in place (for a terminal), a line every few seconds (for a log
  // file), or nothing but the log lines.
  enum class Progress { kBar, kLines, kOff };
  Progress progress = Progress::kLines;
  // Receives the log (lines ending in '\n') and, in kBar mode, the bar (redrawn after '\r').
  // Called from several threads, one call at a time. Unset: nothing is written.
  std::function<void(absl::string_view)> write_log;
};

struct TensorReport {
  std::string name;  // the input tensor
  std::vector<int64_t> shape;
  std::string dtype;   // the input dtype
  std::string scheme;  // the scheme's name, or "dense"
  std::string note;    // why a quantizable-looking weight stayed dense
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;  // all output tensors of this one
  // From the service's metrics; NaN for dense tensors.
  double sqnr_db;
  double cosine;
  double max_abs_err;
  std::string backend;  // "cpu" / "cuda" as the service answered; empty for dense tensors
  std::string shard;    // output file
};

struct CompressSummary {
  const Scheme* scheme = nullptr;
  std::vector<TensorReport> tensors;  // in input order
  int shards_total = 0;
  int shards_written = 0;
  int shards_resumed = 0;  // kept from an earlier run
  std::vector<std::string> copied_files;
  double seconds = 0;
};

// Runs the job. InvalidArgument for unusable input (missing or hostile files, a checkpoint that
// is already quantized, bad regexes, OUT_DIR = IN_DIR, an OUT_DIR that is neither empty nor an
// earlier output of this command) before any work is sent; the service's status for a refused
// tensor, prefixed with the tensor's name.
[[nodiscard]] absl::StatusOr<CompressSummary> CompressCheckpoint(Client& client,
                                                                 const CompressOptions& options);

// A markdown table per kind of tensor (the scheme, "dense"): count, bytes before and after,
// SQNR / cosine / max_abs_err extremes, the worst tensor; and the shard counts.
std::string SummaryTable(const CompressSummary& summary);

// "5GB" = 5e9, "500MB", "2GiB" = 2^31, "1048576": transformers' max_shard_size spellings.
[[nodiscard]] absl::StatusOr<int64_t> ParseShardSize(absl::string_view text);

}  // namespace quantd::compress

#endif  // QUANTD_CLIENT_COMPRESS_H_
