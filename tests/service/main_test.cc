// The `quantd` executable itself: exit codes for bad flags and an unavailable backend, and a
// SIGTERM that drains and exits 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/test_util.h"

namespace quantd::testing {
namespace {

using ::testing::HasSubstr;

struct Process {
  pid_t pid = -1;
  int stderr_fd = -1;
};

Process Spawn(const std::vector<std::string>& args) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(pipe_fds[1], STDERR_FILENO);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    std::vector<char*> argv;
    std::string binary = QUANTD_BINARY;
    argv.push_back(binary.data());
    std::vector<std::string> copies = args;
    for (std::string& a : copies) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(pipe_fds[1]);
  return {pid, pipe_fds[0]};
}

// Reads stderr until it holds "(port N)" (the start line) or EOF / timeout; returns N or 0.
int ReadPort(int fd, std::string* text) {
  fcntl(fd, F_SETFL, O_NONBLOCK);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    char buffer[4096];
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      text->append(buffer, static_cast<size_t>(n));
      const size_t at = text->find("(port ");
      if (at != std::string::npos && text->find(')', at) != std::string::npos) {
        return std::atoi(text->c_str() + at + 6);
      }
    } else if (n == 0) {
      return 0;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  return 0;
}

int ExitCode(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string ReadAll(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t n;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
  return text;
}

TEST(MainTest, BadFlagsExit2) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--bogus=1"},
                                             {"--max-queue=many"},
                                             {"--backend=tpu"},
                                             {"positional"},
                                             {"--stream-chunk-bytes=1"}}) {
    Process p = Spawn(args);
    ASSERT_GT(p.pid, 0);
    const std::string err = ReadAll(p.stderr_fd);
    EXPECT_EQ(ExitCode(p.pid), 2) << args[0] << ": " << err;
    EXPECT_THAT(err, HasSubstr("quantd: ")) << args[0];
    close(p.stderr_fd);
  }
}

TEST(MainTest, CudaWithoutDeviceExits1) {
  Process p = Spawn({"--backend=cuda", "--listen=127.0.0.1:0", "--metrics-listen="});
  const std::string err = ReadAll(p.stderr_fd);
  close(p.stderr_fd);
  const int code = ExitCode(p.pid);
  if (err.find("serving") != std::string::npos) GTEST_SKIP() << "a CUDA device is visible";
  EXPECT_EQ(code, 1) << err;
  EXPECT_THAT(err, HasSubstr("--backend=cuda"));
}

TEST(MainTest, SigtermDrainsAndExits0) {
  Process p = Spawn({"--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0", "--backend=cpu",
                     "--workers=1", "--threads=1"});
  ASSERT_GT(p.pid, 0);
  std::string log;
  const int port = ReadPort(p.stderr_fd, &log);
  ASSERT_GT(port, 0) << log;
  EXPECT_THAT(log, HasSubstr("backend cpu"));

  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  auto stub = v1::Quantizer::NewStub(channel);
  {
    grpc::ClientContext context;
    v1::QuantizeResponse response;
    grpc::Status s =
        stub->Quantize(&context, QuantizeRequestFor(RandomTensor({64, 64}), "int8"), &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
  }
  // A call in flight when SIGTERM arrives still completes.
  grpc::ClientContext context;
  v1::QuantizeResponse response;
  const v1::QuantizeRequest request = QuantizeRequestFor(RandomTensor({2048, 2048}), "int4-g128");
  grpc::Status in_flight_status;
  absl::Notification done;
  stub->async()->Quantize(&context, &request, &response, [&](grpc::Status s) {
    in_flight_status = std::move(s);
    done.Notify();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  kill(p.pid, SIGTERM);
  done.WaitForNotification();
  EXPECT_TRUE(in_flight_status.ok() ||
              in_flight_status.error_code() == grpc::StatusCode::UNAVAILABLE)
      << in_flight_status.error_message();
  const std::string rest = ReadAll(p.stderr_fd);
  close(p.stderr_fd);
  EXPECT_EQ(ExitCode(p.pid), 0) << rest;
  EXPECT_THAT(rest, HasSubstr("draining"));
}

}  // namespace
}  // namespace quantd::testing
