// `quantctl bench` against an in-process server: the table has the documented columns and one
// row per size x concurrency with calls made, streamed sizes have no echo, the JSON agrees, and
// usage errors exit 2. Timings are printed, never asserted.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const std::vector<std::string>& Columns() {
  static const auto* columns = new std::vector<std::string>{
      "size",        "shape",       "clients",     "path",      "bytes/call",   "op calls",
      "op p50 us",   "op p90 us",   "op p99 us",   "op GB/s",   "op calls/s",   "echo calls",
      "echo p50 us", "echo p90 us", "echo p99 us", "echo GB/s", "echo calls/s", "op/echo"};
  return *columns;
}

struct Outcome {
  int exit_code = -1;
  std::string output;  // stdout (plus stderr when asked)
};

// Runs quantctl with `args` through the shell.
Outcome Quantctl(const std::string& args, bool with_stderr = false) {
  const std::string command =
      absl::StrCat(QUANTCTL_BINARY, " ", args, with_stderr ? " 2>&1" : " 2>/dev/null");
  Outcome run;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return run;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// The cells of the markdown table's rows (header first), without the separator row.
std::vector<std::vector<std::string>> TableRows(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, "| ") || !absl::ConsumeSuffix(&line, " |")) continue;
    std::vector<std::string> cells = absl::StrSplit(line, " | ");
    if (!cells.empty() && absl::StartsWith(cells[0], "--")) continue;
    rows.push_back(std::move(cells));
  }
  return rows;
}

double Number(const std::string& cell) {
  double value = -1;
  EXPECT_TRUE(absl::SimpleAtod(cell, &value)) << "\"" << cell << "\" is not a number";
  return value;
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TMPDIR");
  return absl::StrCat(dir != nullptr ? dir : "/tmp", "/quantd_bench_test_", getpid(), "_", name);
}

class BenchTest : public ::testing::Test {
 protected:
  void StartServer(int64_t max_message_bytes = int64_t{64} << 20) {
    server::ServerOptions options = TestOptions();
    options.max_message_bytes = max_message_bytes;
    options.stream_chunk_bytes = std::min<int64_t>(options.stream_chunk_bytes, max_message_bytes);
    ts_ = TestServer::Start(options);
    server_ = absl::StrCat("--server=127.0.0.1:", ts_.server->bound_port());
  }
  void TearDown() override {
    if (ts_.server) ts_.server->Shutdown(absl::Now() + absl::Seconds(5));
  }

  TestServer ts_;
  std::string server_;
};

constexpr char kTiny[] = "--duration=100ms --warmup=20ms";

TEST_F(BenchTest, TableHasARowPerCellWithCallsOnBothSides) {
  StartServer();
  const std::string json_path = TempPath("cells.json");
  const Outcome run = Quantctl(
      absl::StrCat(server_, " bench --sizes=4K --concurrency=1,2 ", kTiny, " --json=", json_path));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::cout << run.output;  // for whoever reads the log; never asserted
  EXPECT_THAT(run.output, HasSubstr("`quantctl bench`: quantize int8"));

  const std::vector<std::vector<std::string>> rows = TableRows(run.output);
  ASSERT_EQ(rows.size(), 3u) << run.output;
  EXPECT_THAT(rows[0], ElementsAreArray(Columns()));
  for (size_t r = 1; r < rows.size(); ++r) {
    const std::vector<std::string>& row = rows[r];
    SCOPED_TRACE(absl::StrCat("row ", r));
    ASSERT_EQ(row.size(), Columns().size());
    EXPECT_EQ(row[0], "4 KiB");
    EXPECT_EQ(row[1], "[1, 1024]");
    EXPECT_EQ(row[2], r == 1 ? "1" : "2");
    EXPECT_EQ(row[3], "unary");
    EXPECT_GT(Number(row[4]), 4096);  // the tensor plus the codes and the fields around them
    EXPECT_GT(Number(row[5]), 0);     // op calls
    EXPECT_GT(Number(row[11]), 0);    // echo calls
    for (size_t c = 6; c < row.size(); ++c) EXPECT_GT(Number(row[c]), 0) << Columns()[c];
  }

  std::ifstream file(json_path);
  std::stringstream json;
  json << file.rdbuf();
  std::remove(json_path.c_str());
  EXPECT_THAT(json.str(), HasSubstr("\"op\": \"quantize\""));
  EXPECT_THAT(json.str(),
              HasSubstr("\"size_bytes\": 4096, \"shape\": [1, 1024], \"concurrency\": 1"));
  EXPECT_THAT(json.str(), HasSubstr("\"concurrency\": 2, \"streamed\": false"));
  EXPECT_THAT(json.str(), ::testing::Not(HasSubstr("\"echo\": null")));
}

// Above the message limit the op streams through the client library and Echo has no row.
TEST_F(BenchTest, StreamedSizesHaveNoEcho) {
  StartServer(/*max_message_bytes=*/int64_t{128} << 10);
  const Outcome run =
      Quantctl(absl::StrCat(server_, " bench --sizes=4K,256K --concurrency=2 ", kTiny));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::cout << run.output;
  const std::vector<std::vector<std::string>> rows = TableRows(run.output);
  ASSERT_EQ(rows.size(), 3u) << run.output;
  EXPECT_EQ(rows[1][3], "unary");
  const std::vector<std::string>& streamed = rows[2];
  ASSERT_EQ(streamed.size(), Columns().size());
  EXPECT_EQ(streamed[0], "256 KiB");
  EXPECT_EQ(streamed[1], "[16, 4096]");
  EXPECT_EQ(streamed[3], "stream");
  EXPECT_GT(Number(streamed[5]), 0);
  for (size_t c = 11; c < streamed.size(); ++c) EXPECT_EQ(streamed[c], "—") << Columns()[c];
}

TEST_F(BenchTest, DequantizeAndQuantDequant) {
  StartServer();
  for (const char* op : {"dequantize", "quantdequant"}) {
    SCOPED_TRACE(op);
    const Outcome run = Quantctl(absl::StrCat(server_, " bench --op=", op,
                                              " --format=int4 --granularity=group --group-size=128 "
                                              "--dtype=bf16 --sizes=64K --concurrency=1 ",
                                              kTiny));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_THAT(run.output, HasSubstr(absl::StrCat("`quantctl bench`: ", op, " int4")));
    EXPECT_THAT(run.output, HasSubstr(" of bf16 tensors"));
    const std::vector<std::vector<std::string>> rows = TableRows(run.output);
    ASSERT_EQ(rows.size(), 2u) << run.output;
    EXPECT_EQ(rows[1][1], "[8, 4096]");
    EXPECT_GT(Number(rows[1][5]), 0);
    EXPECT_GT(Number(rows[1][11]), 0);
  }
}

TEST_F(BenchTest, UsageErrorsExit2) {
  StartServer();
  struct Case {
    std::string args;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"bench --sizes=4K", "bench measures a server: give --server=HOST:PORT"},
           {absl::StrCat(server_, " bench --sizes=6"), "not a positive multiple of the 4-byte"},
           {absl::StrCat(server_, " bench --sizes=4Q"), "is not a byte count"},
           {absl::StrCat(server_, " bench --concurrency=0"), "concurrency \"0\""},
           {absl::StrCat(server_, " bench --op=matmul"), "unknown --op=matmul"},
           {absl::StrCat(server_, " bench --format=int9"), "4 KiB tensor: "},
       }) {
    SCOPED_TRACE(c.args);
    const Outcome run = Quantctl(c.args, /*with_stderr=*/true);
    EXPECT_EQ(run.exit_code, 2) << run.output;
    EXPECT_THAT(run.output, HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace quantd::testing
