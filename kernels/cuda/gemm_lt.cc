// The GEMM's product on cuBLASLt (gemm_path.h): path planning, descriptors, the per-shape
// algorithm choice (heuristic, autotune, persisted cache).
//
// cuBLASLt is column-major; our matrices are row-major. A row-major [rows, k] activation
// matrix is, read column-major, its transpose k × rows, and so is the [n, k] weight. The
// product D = A · Bᵀ ([rows, n] row-major) is, column-major, the n × rows matrix
// Bᵀ·... written as cuBLAS's op(A) · op(B) with cuBLAS's A := our B (transposed: "T") and
// cuBLAS's B := our A ("N"): the TN layout the FP8 and INT8 tensor cores require. So cuBLAS's
// A scale is our B's, its m is our n, its n our rows.
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cuda_status.h"
#include "gemm_path.h"
#include "quantd/status.h"

namespace quantd::cuda {
namespace {

// cuBLASLt is opened on the first GEMM (dlopen), not linked: a process that loads it at start
// carries its 92 KiB of thread-local storage in every thread's static TLS block, and threads
// created with small stacks then fail (civetweb's, behind the /metrics endpoint: "Cannot create
// threads"). Opened later, its TLS is allocated per thread on first use. It also keeps
// cuBLASLt off the CPU-only path of a CUDA build.
#define QUANTD_CUBLASLT_FUNCTIONS(X)                                    \
  X(Create, cublasLtCreate)                                             \
  X(Destroy, cublasLtDestroy)                                           \
  X(GetStatusName, cublasLtGetStatusName)                               \
  X(GetStatusString, cublasLtGetStatusString)                           \
  X(GetVersion, cublasLtGetVersion)                                     \
  X(Matmul, cublasLtMatmul)                                             \
  X(MatmulAlgoCheck, cublasLtMatmulAlgoCheck)                           \
  X(MatmulAlgoConfigGetAttribute, cublasLtMatmulAlgoConfigGetAttribute) \
  X(MatmulAlgoGetHeuristic, cublasLtMatmulAlgoGetHeuristic)             \
  X(MatmulDescCreate, cublasLtMatmulDescCreate)                         \
  X(MatmulDescDestroy, cublasLtMatmulDescDestroy)                       \
  X(MatmulDescSetAttribute, cublasLtMatmulDescSetAttribute)             \
  X(MatmulPreferenceCreate, cublasLtMatmulPreferenceCreate)             \
  X(MatmulPreferenceDestroy, cublasLtMatmulPreferenceDestroy)           \
  X(MatmulPreferenceSetAttribute, cublasLtMatmulPreferenceSetAttribute) \
  X(MatrixLayoutCreate, cublasLtMatrixLayoutCreate)                     \
  X(MatrixLayoutDestroy, cublasLtMatrixLayoutDestroy)

struct CublasLtApi {
#define QUANTD_LT_POINTER(name, symbol) decltype(&::symbol) name = nullptr;
  QUANTD_CUBLASLT_FUNCTIONS(QUANTD_LT_POINTER)
#undef QUANTD_LT_POINTER
};

const CublasLtApi* lt_api = nullptr;  // set once by OpenCublasLt, before any engine exists
const CublasLtApi& Lt() { return *lt_api; }

absl::Status OpenCublasLt() {
  static const absl::Status opened = [] {
    const std::string soname = absl::StrCat("libcublasLt.so.", CUBLAS_VER_MAJOR);
    void* library = nullptr;
    for (const std::string& name : {soname, absl::StrCat("/usr/local/cuda/lib64/", soname)}) {
      library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (library != nullptr) break;
    }
    if (library == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GEMM on the GPU needs ", soname, " (the CUDA toolkit's cuBLASLt) and it did not load: ",
          dlerror(), "; add its directory to LD_LIBRARY_PATH"));
    }
    static CublasLtApi api;
#define QUANTD_LT_LOAD(name, symbol)                                                               \
  api.name = reinterpret_cast<decltype(api.name)>(dlsym(library, #symbol));                        \
  if (api.name == nullptr) {                                                                       \
    return absl::FailedPreconditionError(absl::StrCat(soname, " lacks " #symbol ": a cuBLASLt "    \
                                                              "older than this build's headers")); \
  }
    QUANTD_CUBLASLT_FUNCTIONS(QUANTD_LT_LOAD)
#undef QUANTD_LT_LOAD
    lt_api = &api;
    return absl::OkStatus();
  }();
  return opened;
}

bool IsFp8(Format f) { return f == Format::kFp8E4M3 || f == Format::kFp8E5M2; }

// How an operand's scales map onto the tensor cores' modes: per tensor, per row (a token of A,
// an output channel of B), or neither.
OperandScales RowOrTensorScales(const QuantSpec& spec, int rank) {
  switch (spec.granularity) {
    case Granularity::kNone:
    case Granularity::kTensor:
      return OperandScales::kTensor;
    case Granularity::kToken:
      return OperandScales::kRows;
    case Granularity::kChannel:
      // Channels along the leading axis of a matrix are its rows.
      return rank == 2 && (spec.axis == 0 || spec.axis == -2) ? OperandScales::kRows
                                                              : OperandScales::kNone;
    default:
      return OperandScales::kNone;
  }
}

absl::Status LtError(cublasStatus_t status, const char* what) {
  return absl::InternalError(absl::StrCat("cuBLASLt ", what,
                                          " failed: ", Lt().GetStatusName(status), " (",
                                          Lt().GetStatusString(status), ")"));
}

#define QUANTD_LT_RETURN_IF_ERROR(expr)                         \
  do {                                                          \
    const cublasStatus_t quantd_lt_status_ = (expr);            \
    if (quantd_lt_status_ != CUBLAS_STATUS_SUCCESS) {           \
      return ::quantd::cuda::LtError(quantd_lt_status_, #expr); \
    }                                                           \
  } while (false)

cudaDataType_t LtType(LtElement e) {
  switch (e) {
    case LtElement::kE4M3:
      return CUDA_R_8F_E4M3;
    case LtElement::kE5M2:
      return CUDA_R_8F_E5M2;
    case LtElement::kI8:
      return CUDA_R_8I;
    default:
      return CUDA_R_32F;
  }
}

cudaDataType_t LtType(DType d) {
  switch (d) {
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kI32:
      return CUDA_R_32I;
    default:
      return CUDA_R_32F;
  }
}

// cuBLASLt's scale mode for an operand's scales: blocks are 128 × 128 on the weights (B),
// 1 × 128 on the activations (A).
int32_t LtScaleMode(OperandScales s, bool weights) {
  switch (s) {
    case OperandScales::kRows:
      return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    case OperandScales::kBlocks128:
      return weights ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                     : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    default:
      return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  }
}

// The descriptors of one product (one batch of it), destroyed with it.
struct Descriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // cuBLAS's A (our B), ...

  Descriptors() = default;
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;
  ~Descriptors() {
    if (d != nullptr) Lt().MatrixLayoutDestroy(d);
    if (b != nullptr) Lt().MatrixLayoutDestroy(b);
    if (a != nullptr) Lt().MatrixLayoutDestroy(a);
    if (op != nullptr) Lt().MatmulDescDestroy(op);
  }

  template <typename T>
  absl::Status Set(cublasLtMatmulDescAttributes_t attribute, const T& value) {
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(op, attribute, &value, sizeof(value)));
    return absl::OkStatus();
  }

  // For batch `batch` of `p` (pointer offsets only: the layouts are the same for every batch).
  absl::Status Build(const LtProduct& p, int64_t rows) {
    const bool integer = p.path == GemmPath::kInt8;
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatmulDescCreate(
        &op, integer ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F, integer ? CUDA_R_32I : CUDA_R_32F));
    const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
    QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_TRANSA, transpose));
    QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_TRANSB, none));
    if (p.path == GemmPath::kFp8) {
      const int32_t b_mode = LtScaleMode(p.b_scales, /*weights=*/true);
      const int32_t a_mode = LtScaleMode(p.a_scales, /*weights=*/false);
      QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, b_mode));
      QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, a_mode));
      if (p.has_bias) {
        QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS));
        QUANTD_RETURN_IF_ERROR(
            Set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(LtType(p.d_type))));
      }
    }
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(
        &a, LtType(p.b_type), static_cast<uint64_t>(p.k), static_cast<uint64_t>(p.n), p.k));
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(
        &b, LtType(p.a_type), static_cast<uint64_t>(p.k), static_cast<uint64_t>(rows), p.k));
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(
        &d, LtType(p.d_type), static_cast<uint64_t>(p.n), static_cast<uint64_t>(rows), p.n));
    return absl::OkStatus();
  }

  // The per-batch pointers that live in the descriptor: scales (none: cuBLASLt's default of
  // 1, the codes' plain product) and bias.
  absl::Status Point(const LtProduct& p, int64_t batch, int64_t rows) {
    if (p.path != GemmPath::kFp8) return absl::OkStatus();
    if (p.b_scales != OperandScales::kNone) {
      const float* b_scale = p.b_scale_data + batch * p.b_scale_batch_stride;
      QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, b_scale));
    }
    if (p.a_scales != OperandScales::kNone) {
      const float* a_scale =
          p.a_scale_data + (p.a_scales == OperandScales::kRows ? batch * rows : 0);
      QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, a_scale));
    }
    if (p.has_bias) QUANTD_RETURN_IF_ERROR(Set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, p.bias));
    return absl::OkStatus();
  }
};

// The bytes of one element of an operand.
int64_t ElementBytes(LtElement e) { return e == LtElement::kF32 ? 4 : 1; }

std::string AlgoHex(const cublasLtMatmulAlgo_t& algo) {
  std::string hex;
  for (uint64_t word : algo.data) absl::StrAppendFormat(&hex, "%016x", word);
  return hex;
}

bool AlgoFromHex(const std::string& hex, cublasLtMatmulAlgo_t* algo) {
  if (hex.size() != 16 * 8) return false;
  for (int i = 0; i < 8; ++i) {
    uint64_t word = 0;
    for (int j = 0; j < 16; ++j) {
      const char c = hex[16 * i + j];
      const int digit = c >= '0' && c <= '9' ? c - '0' : (c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1);
      if (digit < 0) return false;
      word = word << 4 | static_cast<uint64_t>(digit);
    }
    algo->data[i] = word;
  }
  return true;
}

class CublasLtEngine final : public LtEngine {
 public:
  // 32 MiB: what cuBLAS recommends on Hopper for split-K and stream-K algorithms.
  static constexpr int64_t kWorkspaceBytes = int64_t{32} << 20;
  // Candidates the autotune times (the heuristic's first ones).
  static constexpr int kCandidates = 8;

  CublasLtEngine(cublasLtHandle_t handle, bool autotune, std::string cache_path, std::string header)
      : handle_(handle),
        autotune_(autotune),
        cache_path_(std::move(cache_path)),
        header_(std::move(header)) {}
  ~CublasLtEngine() override { Lt().Destroy(handle_); }

  int64_t workspace_bytes() const override { return kWorkspaceBytes; }

  // Reads the cache file when its header is this device's and this cuBLASLt's.
  void Load() {
    if (cache_path_.empty()) return;
    std::ifstream in(cache_path_);
    std::string line;
    if (!std::getline(in, line) || line != header_) return;
    while (std::getline(in, line)) {
      const std::vector<std::string> fields = absl::StrSplit(line, '\t');
      cublasLtMatmulAlgo_t algo;
      if (fields.size() == 2 && AlgoFromHex(fields[1], &algo)) {
        chosen_[fields[0]] = Choice{algo, /*checked=*/false};
      }
    }
  }

  bool Supports(const LtProduct& product) override {
    const int64_t rows = product.rows / product.batches;
    const std::string key = Key(product, rows);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (chosen_.count(key) > 0) return true;
      if (refused_.count(key) > 0) return false;
    }
    // The heuristic refuses the vector and block scale modes (and the bias epilogue) without
    // their pointers (it reads none of them): a caller asking before they exist gets stand-ins.
    LtProduct asked = product;
    const float* stand_in = reinterpret_cast<const float*>(uintptr_t{256});
    if (asked.a_scale_data == nullptr) asked.a_scale_data = stand_in;
    if (asked.b_scale_data == nullptr) asked.b_scale_data = stand_in;
    if (asked.has_bias && asked.bias == nullptr) asked.bias = stand_in;
    Descriptors desc;
    std::vector<cublasLtMatmulHeuristicResult_t> results;
    const bool supported = desc.Build(asked, rows).ok() && desc.Point(asked, 0, rows).ok() &&
                           Heuristic(desc, 1, &results).ok() && !results.empty();
    // A refusal is remembered too: the next product of this shape takes the fallback at once.
    if (!supported) {
      std::lock_guard<std::mutex> lock(mu_);
      refused_.insert(key);
    }
    return supported;
  }

  absl::Status Run(const LtProduct& p, void* workspace, cudaStream_t stream) override {
    const int64_t rows = p.rows / p.batches;
    Descriptors desc;
    QUANTD_RETURN_IF_ERROR(desc.Build(p, rows));
    QUANTD_RETURN_IF_ERROR(desc.Point(p, 0, rows));
    QUANTD_ASSIGN_OR_RETURN(const cublasLtMatmulAlgo_t algo,
                            Algorithm(p, rows, desc, workspace, stream));
    for (int64_t batch = 0; batch < p.batches; ++batch) {
      if (batch > 0) QUANTD_RETURN_IF_ERROR(desc.Point(p, batch, rows));
      QUANTD_RETURN_IF_ERROR(Matmul(p, batch, rows, desc, algo, workspace, stream));
    }
    return absl::OkStatus();
  }

 private:
  struct Choice {
    cublasLtMatmulAlgo_t algo;
    bool checked;  // loaded from the cache file: checked against this cuBLASLt on first use
  };

  absl::Status Heuristic(const Descriptors& desc, int count,
                         std::vector<cublasLtMatmulHeuristicResult_t>* results) {
    cublasLtMatmulPreference_t preference = nullptr;
    QUANTD_LT_RETURN_IF_ERROR(Lt().MatmulPreferenceCreate(&preference));
    const uint64_t workspace = kWorkspaceBytes;
    cublasStatus_t status = Lt().MatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
    results->resize(static_cast<size_t>(count));
    int returned = 0;
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = Lt().MatmulAlgoGetHeuristic(handle_, desc.op, desc.a, desc.b, desc.d, desc.d,
                                           preference, count, results->data(), &returned);
    }
    Lt().MatmulPreferenceDestroy(preference);
    results->resize(status == CUBLAS_STATUS_SUCCESS ? static_cast<size_t>(returned) : 0);
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
      return LtError(status, "cublasLtMatmulAlgoGetHeuristic");
    }
    return absl::OkStatus();
  }

  absl::Status Matmul(const LtProduct& p, int64_t batch, int64_t rows, const Descriptors& desc,
                      const cublasLtMatmulAlgo_t& algo, void* workspace, cudaStream_t stream) {
    const char* a = static_cast<const char*>(p.a) + batch * rows * p.k * ElementBytes(p.a_type);
    const char* b =
        static_cast<const char*>(p.b) + batch * p.b_batch_stride * ElementBytes(p.b_type);
    char* d = static_cast<char*>(p.d) + batch * rows * p.n * DTypeSize(p.d_type);
    const int32_t one = 1, zero = 0;
    const float alpha = p.alpha, beta = 0.0f;
    const bool integer = p.path == GemmPath::kInt8;
    QUANTD_LT_RETURN_IF_ERROR(
        Lt().Matmul(handle_, desc.op, integer ? static_cast<const void*>(&one) : &alpha, b, desc.a,
                    a, desc.b, integer ? static_cast<const void*>(&zero) : &beta, d, desc.d, d,
                    desc.d, &algo, workspace, static_cast<size_t>(kWorkspaceBytes), stream));
    return absl::OkStatus();
  }

  static std::string Key(const LtProduct& p, int64_t rows) {
    return absl::StrFormat("path=%d a=%d b=%d as=%d bs=%d d=%d bias=%d rows=%d n=%d k=%d",
                           static_cast<int>(p.path), static_cast<int>(p.a_type),
                           static_cast<int>(p.b_type), static_cast<int>(p.a_scales),
                           static_cast<int>(p.b_scales), static_cast<int>(p.d_type),
                           p.has_bias ? 1 : 0, rows, p.n, p.k);
  }

  // The algorithm for this product's shape: the cached one, else the heuristic's candidates
  // timed on this call's operands (the output is rewritten by the real product after).
  absl::StatusOr<cublasLtMatmulAlgo_t> Algorithm(const LtProduct& p, int64_t rows,
                                                 const Descriptors& desc, void* workspace,
                                                 cudaStream_t stream) {
    const std::string key = Key(p, rows);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = chosen_.find(key);
      if (it != chosen_.end()) {
        if (it->second.checked) return it->second.algo;
        cublasLtMatmulHeuristicResult_t check{};
        if (Lt().MatmulAlgoCheck(handle_, desc.op, desc.a, desc.b, desc.d, desc.d, &it->second.algo,
                                 &check) == CUBLAS_STATUS_SUCCESS &&
            check.workspaceSize <= static_cast<size_t>(kWorkspaceBytes)) {
          it->second.checked = true;
          return it->second.algo;
        }
        chosen_.erase(it);  // stale: choose again
      }
    }
    std::vector<cublasLtMatmulHeuristicResult_t> candidates;
    QUANTD_RETURN_IF_ERROR(Heuristic(desc, autotune_ ? kCandidates : 1, &candidates));
    if (candidates.empty()) {
      return absl::InternalError(absl::StrCat("cuBLASLt has no algorithm for the product ", key));
    }
    cublasLtMatmulAlgo_t best = candidates[0].algo;
    if (autotune_ && candidates.size() > 1) {
      QUANTD_ASSIGN_OR_RETURN(best, Fastest(p, rows, desc, candidates, workspace, stream));
    }
    std::lock_guard<std::mutex> lock(mu_);
    chosen_[key] = Choice{best, true};
    Persist();
    return best;
  }

  // The fastest candidate on this product. Timing on a cold GPU misleads (its clocks ramp up
  // over the first milliseconds of load), so the heuristic's first choice runs until ~20 ms of
  // work have passed first; then each candidate runs enough times for ~2 ms per sample, and
  // the best of two rounds counts.
  absl::StatusOr<cublasLtMatmulAlgo_t> Fastest(
      const LtProduct& p, int64_t rows, const Descriptors& desc,
      const std::vector<cublasLtMatmulHeuristicResult_t>& candidates, void* workspace,
      cudaStream_t stream) {
    constexpr int kRounds = 2;
    cudaEvent_t start = nullptr, stop = nullptr;
    QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
    QUANTD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
    // Runs `algo` `repeats` times; the mean milliseconds, or a negative value if it failed.
    auto time = [&](const cublasLtMatmulAlgo_t& algo, int repeats) {
      bool ok = cudaEventRecord(start, stream) == cudaSuccess;
      for (int r = 0; r < repeats && ok; ++r) {
        ok = Matmul(p, 0, rows, desc, algo, workspace, stream).ok();
      }
      float ms = 0.0f;
      ok = ok && cudaEventRecord(stop, stream) == cudaSuccess &&
           cudaEventSynchronize(stop) == cudaSuccess &&
           cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
      return ok ? ms / static_cast<float>(repeats) : -1.0f;
    };
    float warm_ms = 0.0f, one_ms = 0.0f;
    for (int r = 0; r < 64 && warm_ms < 20.0f; ++r) {
      one_ms = time(candidates[0].algo, 1);
      if (one_ms < 0.0f) break;
      warm_ms += one_ms;
    }
    const int repeats = std::clamp(one_ms > 0.0f ? static_cast<int>(2.0f / one_ms) : 3, 3, 50);
    std::vector<float> best_ms(candidates.size(), -1.0f);
    for (int round = 0; round < kRounds; ++round) {
      for (size_t c = 0; c < candidates.size(); ++c) {
        if (round > 0 && best_ms[c] < 0.0f) continue;  // failed in the first round
        const float ms = time(candidates[c].algo, repeats);
        if (ms >= 0.0f && (best_ms[c] < 0.0f || ms < best_ms[c])) best_ms[c] = ms;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    (void)cudaGetLastError();
    size_t best = 0;
    for (size_t c = 1; c < candidates.size(); ++c) {
      if (best_ms[c] >= 0.0f && (best_ms[best] < 0.0f || best_ms[c] < best_ms[best])) best = c;
    }
    if (std::getenv("QUANTD_GEMM_TUNE_LOG") != nullptr) {
      std::string line = absl::StrFormat("gemm tune %s: %d repeats;", Key(p, rows), repeats);
      for (size_t c = 0; c < candidates.size(); ++c) {
        int32_t id = -1, tile = -1, stages = -1;
        size_t written = 0;
        Lt().MatmulAlgoConfigGetAttribute(&candidates[c].algo, CUBLASLT_ALGO_CONFIG_ID, &id,
                                          sizeof(id), &written);
        Lt().MatmulAlgoConfigGetAttribute(&candidates[c].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile,
                                          sizeof(tile), &written);
        Lt().MatmulAlgoConfigGetAttribute(&candidates[c].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID,
                                          &stages, sizeof(stages), &written);
        absl::StrAppendFormat(&line, " [%d id=%d tile=%d stages=%d %.4f ms%s]", c, id, tile, stages,
                              best_ms[c], c == best ? " *" : "");
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    return candidates[best].algo;
  }

  // Rewrites the cache file (a temporary file renamed over it, so a reader never sees half of
  // one). Call with mu_ held. A file that cannot be written costs only the next start's tuning.
  void Persist() {
    if (cache_path_.empty()) return;
    const std::string temporary = cache_path_ + ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << header_ << '\n';
      for (const auto& [key, choice] : chosen_) out << key << '\t' << AlgoHex(choice.algo) << '\n';
      if (!out) return;
    }
    std::rename(temporary.c_str(), cache_path_.c_str());
  }

  cublasLtHandle_t handle_;
  const bool autotune_;
  const std::string cache_path_;
  const std::string header_;
  std::mutex mu_;
  std::map<std::string, Choice> chosen_;
  std::set<std::string> refused_;  // shapes the heuristic has no algorithm for
};

}  // namespace

GemmPathPlan PlanGemmPath(const GemmDims& dims, const GemmSpec& spec) {
  GemmPathPlan plan;
  const bool aligned = dims.k % 16 == 0 && dims.n % 16 == 0;
  const int a_rank = dims.batch > 1 || dims.out_shape.size() == 3 ? 3 : 2;
  const int b_rank = dims.b_batched ? 3 : 2;
  if (!aligned) return plan;
  const QuantSpec& a = spec.a;
  const QuantSpec& b = spec.b;
  if (IsFp8(a.format) && IsFp8(b.format) &&
      !(a.format == Format::kFp8E5M2 && b.format == Format::kFp8E5M2)) {
    if (a.granularity == Granularity::kGroup && a.group_size == 128 &&
        b.granularity == Granularity::kBlock && b.block_rows == 128 && b.block_cols == 128 &&
        dims.k % 512 == 0 && dims.n % 128 == 0 && dims.batch * dims.m >= 16 && !dims.b_batched) {
      return {GemmPath::kFp8, OperandScales::kBlocks128, OperandScales::kBlocks128};
    }
    const OperandScales as = RowOrTensorScales(a, a_rank);
    const OperandScales bs = RowOrTensorScales(b, b_rank);
    if (as != OperandScales::kNone && bs != OperandScales::kNone) {
      return {GemmPath::kFp8, as, bs};
    }
    return plan;
  }
  if (a.format == Format::kInt8 && b.format == Format::kInt8 && !a.asymmetric && !b.asymmetric) {
    const OperandScales as = RowOrTensorScales(a, a_rank);
    const OperandScales bs = RowOrTensorScales(b, b_rank);
    if (as != OperandScales::kNone && bs != OperandScales::kNone) {
      return {GemmPath::kInt8, as, bs};
    }
  }
  return plan;
}

LtProduct ProductShape(const GemmDims& dims, const GemmSpec& spec, const GemmPathPlan& plan) {
  LtProduct p;
  p.path = plan.path;
  p.rows = dims.batch * dims.m;
  p.n = dims.n;
  p.k = dims.k;
  p.batches = dims.b_batched ? dims.batch : 1;
  p.b_batch_stride = dims.b_batched ? dims.n * dims.k : 0;
  p.a_scales = plan.a_scales;
  p.b_scales = plan.b_scales;
  if (plan.path == GemmPath::kFp8) {
    p.a_type = spec.a.format == Format::kFp8E5M2 ? LtElement::kE5M2 : LtElement::kE4M3;
    p.b_type = spec.b.format == Format::kFp8E5M2 ? LtElement::kE5M2 : LtElement::kE4M3;
  } else if (plan.path == GemmPath::kInt8) {
    p.a_type = p.b_type = LtElement::kI8;
    p.d_type = DType::kI32;
  }
  return p;
}

GemmRoute RouteGemm(const GemmDims& dims, const GemmSpec& spec, DType out, bool has_c, DType bias,
                    LtEngine& lt) {
  const bool has_bias = bias != DType::kUnspecified;
  GemmRoute route;
  route.plan = PlanGemmPath(dims, spec);
  const bool sixteen_bit = out == DType::kF16 || out == DType::kBF16;
  const int64_t rows = dims.batch * dims.m;
  if (route.plan.path == GemmPath::kInt8) {
    route.scales_in_epilogue = true;
    route.product = ProductShape(dims, spec, route.plan);
    route.product.a_scales = route.product.b_scales = OperandScales::kNone;
    if (lt.Supports(route.product)) return route;
    route.plan = GemmPathPlan();
  }
  if (route.plan.path == GemmPath::kFp8) {
    const GemmPathPlan& plan = route.plan;
    const bool per_row =
        plan.a_scales == OperandScales::kRows || plan.b_scales == OperandScales::kRows;
    const bool blocks = plan.a_scales == OperandScales::kBlocks128;
    const bool can_direct = !has_c && (has_bias ? sixteen_bit && bias == out : true);
    for (const bool in_epilogue : {false, true}) {
      // Block scales vary along K: only cuBLASLt applies them, and on the H200 only into a
      // 16-bit output with no bias epilogue (it had no algorithm for F32 or a bias).
      if (blocks && (in_epilogue || !can_direct || !sixteen_bit || has_bias)) break;
      if (!in_epilogue && per_row && (rows <= kFewRows || !sixteen_bit)) continue;
      route.scales_in_epilogue = in_epilogue;
      route.direct = can_direct && !in_epilogue;
      route.product = ProductShape(dims, spec, plan);
      if (in_epilogue) {
        route.product.a_scales = route.product.b_scales = OperandScales::kNone;
      } else if (per_row) {
        // OUTER_VEC_32F on both: a tensor's one scale beside the other's vector is broadcast
        // to a vector (the backend's PrepareFp8Scales), so ask about the modes that will run.
        route.product.a_scales = route.product.b_scales = OperandScales::kRows;
      }
      route.product.d_type = route.direct ? out : DType::kF32;
      route.product.has_bias = route.direct && has_bias;  // a bias of `out`'s type (can_direct)
      if (lt.Supports(route.product)) return route;
    }
    route.plan = GemmPathPlan();  // the tensor cores refuse it on this GPU: x̂ in fp32
  }
  route.scales_in_epilogue = false;
  route.direct = !has_c && !has_bias && out == DType::kF32;
  route.product = ProductShape(dims, spec, route.plan);
  return route;
}

absl::StatusOr<std::unique_ptr<LtEngine>> CreateLtEngine(int device, bool autotune,
                                                         const std::string& cache_path) {
  QUANTD_RETURN_IF_ERROR(OpenCublasLt());
  cudaDeviceProp prop;
  QUANTD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  cublasLtHandle_t handle = nullptr;
  QUANTD_LT_RETURN_IF_ERROR(Lt().Create(&handle));
  // Several devices share one cache file: each keeps its own section by its own file name.
  const std::string path = cache_path.empty() ? "" : absl::StrCat(cache_path, ".", prop.pciBusID);
  const std::string header =
      absl::StrFormat("quantd-gemm-algorithms v1 %s sm_%d%d cublasLt %d", prop.name, prop.major,
                      prop.minor, static_cast<int>(Lt().GetVersion()));
  auto engine = std::make_unique<CublasLtEngine>(handle, autotune, path, header);
  engine->Load();
  return std::unique_ptr<LtEngine>(std::move(engine));
}

}  // namespace quantd::cuda
