#include "agent/gpu.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>

namespace outpost::agent {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kMissing = "/nonexistent/libnvidia-ml.so.1";
constexpr const char* kMissingCuda = "/nonexistent/libcuda.so.1";

// Sets environment variables for one test and restores them afterwards.
class ScopedEnv {
 public:
  ScopedEnv(std::initializer_list<std::pair<const char*, std::string>> vars) {
    for (auto& [name, value] : vars) {
      const char* old = getenv(name);
      saved_.push_back({name, old ? std::optional<std::string>(old) : std::nullopt});
      setenv(name, value.c_str(), 1);
    }
  }
  ~ScopedEnv() {
    for (auto& [name, old] : saved_) {
      if (old) {
        setenv(name, old->c_str(), 1);
      } else {
        unsetenv(name);
      }
    }
  }

 private:
  std::vector<std::pair<const char*, std::optional<std::string>>> saved_;
};

struct AgentRun {
  int code = -1;
  std::string out, err;
  Clock::duration took;
};

// Runs the real outpost-agent binary with extra environment variables.
AgentRun RunAgent(std::vector<std::string> args, std::vector<std::string> env = {}) {
  int out_pipe[2], err_pipe[2];
  EXPECT_EQ(pipe2(out_pipe, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(err_pipe, O_CLOEXEC), 0);
  args.insert(args.begin(), OUTPOST_AGENT_BINARY);
  auto start = Clock::now();
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  AgentRun run;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0 && poll(fds, 2, 30000) > 0) {
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? run.out : run.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  run.took = Clock::now() - start;
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return run;
}

GpuProbeOptions Libraries(const char* nvml, const char* cuda) { return {nvml, cuda}; }

TEST(GpuProberTest, NoLibrariesMeansNoDriverWithBothReasons) {
  GpuProber prober(Libraries(kMissing, kMissingCuda));
  GpuStatus status = prober.Probe();
  EXPECT_FALSE(status.ready);
  EXPECT_FALSE(status.driver_present);
  EXPECT_TRUE(status.devices.empty());
  EXPECT_NE(status.reason.find("NVML: /nonexistent/libnvidia-ml.so.1: cannot open"),
            std::string::npos)
      << status.reason;
  EXPECT_NE(status.reason.find("CUDA: /nonexistent/libcuda.so.1: cannot open"), std::string::npos)
      << status.reason;
}

TEST(GpuProberTest, ThisMachineDefaultsAnswerConsistently) {
  GpuProber prober;  // the real sonames
  GpuStatus status = prober.Probe();
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  EXPECT_EQ(status.driver_present, nvml != nullptr || cuda != nullptr);
  if (nvml == nullptr && cuda == nullptr) {
    EXPECT_FALSE(status.ready);
    EXPECT_NE(status.reason.find("libnvidia-ml.so.1"), std::string::npos) << status.reason;
  }
  if (nvml != nullptr) dlclose(nvml);
}

TEST(GpuProberTest, FakeNvmlReportsDevices) {
  ScopedEnv env({{"FAKE_NVML_DEVICES", "2"}});
  GpuProber prober(Libraries(FAKE_NVML_LIBRARY, kMissingCuda));
  GpuStatus status = prober.Probe();
  ASSERT_TRUE(status.ready) << status.reason;
  EXPECT_EQ(status.source, "nvml");
  EXPECT_EQ(status.driver_version, "999.99.fake");
  ASSERT_EQ(status.devices.size(), 2u);
  EXPECT_EQ(status.devices[1].index, 1);
  EXPECT_EQ(status.devices[1].name, "Fake GPU 1");
  EXPECT_EQ(status.devices[1].uuid, "GPU-fake-0001");
  EXPECT_EQ(status.devices[1].memory_total_bytes, 16ull << 30);
  EXPECT_EQ(status.devices[1].memory_used_bytes, 2ull << 30);
  EXPECT_EQ(status.devices[1].temperature_c, 41);
  EXPECT_EQ(status.devices[1].utilization_percent, 7);
  EXPECT_TRUE(status.reason.empty());
}

TEST(GpuProberTest, NvmlInitErrorFallsBackToCuda) {
  ScopedEnv env({{"FAKE_NVML_INIT_ERROR", "9"}, {"FAKE_CUDA_DEVICES", "1"}});
  {
    GpuProber prober(Libraries(FAKE_NVML_LIBRARY, kMissingCuda));
    GpuStatus status = prober.Probe();
    EXPECT_FALSE(status.ready);
    EXPECT_TRUE(status.driver_present);
    EXPECT_NE(status.reason.find("NVML: nvmlInit failed: Driver Not Loaded (9)"), std::string::npos)
        << status.reason;
  }
  GpuProber prober(Libraries(FAKE_NVML_LIBRARY, FAKE_CUDA_LIBRARY));
  GpuStatus status = prober.Probe();
  ASSERT_TRUE(status.ready) << status.reason;
  EXPECT_EQ(status.source, "cuda");
  EXPECT_EQ(status.driver_version, "CUDA 12.4");
  ASSERT_EQ(status.devices.size(), 1u);
  EXPECT_EQ(status.devices[0].name, "Fake CUDA GPU 0");
  EXPECT_EQ(status.devices[0].memory_total_bytes, 8ull << 30);
  EXPECT_EQ(status.devices[0].temperature_c, -1);
}

TEST(GpuProberTest, CudaWithoutDevicesIsNotReady) {
  ScopedEnv env({{"FAKE_CUDA_INIT_ERROR", "100"}});
  GpuProber prober(Libraries(kMissing, FAKE_CUDA_LIBRARY));
  GpuStatus status = prober.Probe();
  EXPECT_FALSE(status.ready);
  EXPECT_TRUE(status.driver_present);
  EXPECT_NE(status.reason.find("CUDA: cuInit failed: no CUDA-capable device is detected (100)"),
            std::string::npos)
      << status.reason;
}

TEST(GpuProberTest, WaitsForAGpuThatComesUpLate) {
  ScopedEnv env({{"FAKE_NVML_DEVICES_AFTER", "3"}});
  GpuProber prober(Libraries(FAKE_NVML_LIBRARY, kMissingCuda));
  int polls = 0;
  auto start = Clock::now();
  GpuStatus status = WaitForGpu(prober, milliseconds(5000), milliseconds(20), &polls);
  ASSERT_TRUE(status.ready) << status.reason;
  EXPECT_EQ(polls, 4);  // 0, 0, 0, then 1 device
  EXPECT_GE(Clock::now() - start, milliseconds(60));
}

TEST(GpuProberTest, WaitRespectsTheTimeout) {
  GpuProber prober(Libraries(kMissing, kMissingCuda));
  int polls = 0;
  auto start = Clock::now();
  GpuStatus status = WaitForGpu(prober, milliseconds(300), milliseconds(100), &polls);
  auto took = Clock::now() - start;
  EXPECT_FALSE(status.ready);
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(1500));
  EXPECT_GE(polls, 4);  // t = 0, 100, 200, 300
  EXPECT_LE(polls, 5);
}

// The command itself, through the real binary.
std::vector<std::string> NoGpuEnv() {
  return {std::string("OUTPOST_NVML_LIBRARY=") + kMissing,
          std::string("OUTPOST_CUDA_LIBRARY=") + kMissingCuda};
}

TEST(GpuWaitCommandTest, NoDriverTimesOutWithTheReason) {
  AgentRun run = RunAgent({"gpu-wait", "--timeout", "1.2"}, NoGpuEnv());
  EXPECT_EQ(run.code, 1) << run.err;
  EXPECT_GE(run.took, milliseconds(1200));
  EXPECT_LT(run.took, milliseconds(4000));
  EXPECT_NE(run.err.find("gpu-wait: no GPU after 1.2 s (4 polls): NVML: "), std::string::npos)
      << run.err;
  EXPECT_NE(run.err.find("cannot open shared object file"), std::string::npos) << run.err;
  EXPECT_EQ(run.out, "");
}

TEST(GpuWaitCommandTest, CpuOnlyAllowedAnswersAtOnce) {
  AgentRun run =
      RunAgent({"gpu-wait", "--timeout", "30", "--require-gpu=false", "--json"}, NoGpuEnv());
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_LT(run.took, milliseconds(5000));
  auto j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j["mode"], "cpu-only");
  EXPECT_EQ(j["ready"], false);
  EXPECT_EQ(j["driver_present"], false);
  EXPECT_EQ(j["polls"], 1);
  EXPECT_NE(j["reason"].get<std::string>().find("NVML:"), std::string::npos);
}

TEST(GpuWaitCommandTest, FakeNvmlSucceedsWithDetails) {
  std::vector<std::string> env = {std::string("OUTPOST_NVML_LIBRARY=") + FAKE_NVML_LIBRARY,
                                  std::string("OUTPOST_CUDA_LIBRARY=") + kMissingCuda};
  AgentRun text = RunAgent({"gpu-wait", "--timeout", "5"}, env);
  EXPECT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("GPU ready: 1 device(s) via NVML, driver 999.99.fake"), std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("#0 Fake GPU 0, 16.0 GiB, 40 C, 7 % busy"), std::string::npos)
      << text.out;

  AgentRun json = RunAgent({"gpu-wait", "--timeout", "5", "--json"}, env);
  ASSERT_EQ(json.code, 0) << json.err;
  auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["mode"], "gpu");
  EXPECT_EQ(j["source"], "nvml");
  ASSERT_EQ(j["devices"].size(), 1u);
  EXPECT_EQ(j["devices"][0]["memory_total_bytes"], 16ull << 30);
  EXPECT_EQ(j["devices"][0]["temperature_c"], 40);
}

TEST(GpuWaitCommandTest, GpuThatComesUpLateIsWaitedFor) {
  std::vector<std::string> env = {std::string("OUTPOST_NVML_LIBRARY=") + FAKE_NVML_LIBRARY,
                                  std::string("OUTPOST_CUDA_LIBRARY=") + kMissingCuda,
                                  "FAKE_NVML_DEVICES_AFTER=2"};
  AgentRun run = RunAgent({"gpu-wait", "--timeout", "10", "--json"}, env);
  ASSERT_EQ(run.code, 0) << run.err;
  auto j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j["polls"], 3);  // at 0, 0.5 and 1.0 s: the default interval
  EXPECT_GE(j["waited_ms"].get<int>(), 1000);
  EXPECT_LT(j["waited_ms"].get<int>(), 3000);
}

TEST(GpuWaitCommandTest, DriverWithoutGpuAndCpuAllowedWaitsThenWarns) {
  std::vector<std::string> env = {std::string("OUTPOST_NVML_LIBRARY=") + FAKE_NVML_LIBRARY,
                                  std::string("OUTPOST_CUDA_LIBRARY=") + kMissingCuda,
                                  "FAKE_NVML_DEVICES=0"};
  AgentRun run = RunAgent(
      {"gpu-wait", "--timeout", "0.3", "--poll-interval", "0.1", "--require-gpu=false"}, env);
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_GE(run.took, milliseconds(300));
  EXPECT_NE(run.out.find("cpu-only: no GPU (NVML: 0 devices"), std::string::npos) << run.out;
  EXPECT_NE(run.err.find("warning: a GPU driver is installed but no GPU answered"),
            std::string::npos)
      << run.err;

  AgentRun required = RunAgent({"gpu-wait", "--timeout", "0"}, env);
  EXPECT_EQ(required.code, 1);
  EXPECT_NE(required.err.find("(1 polls): NVML: 0 devices"), std::string::npos) << required.err;
}

TEST(GpuWaitCommandTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunAgent({"gpu-wait"}).code, 2);  // --timeout missing
  EXPECT_EQ(RunAgent({"gpu-wait", "--timeout", "soon"}).code, 2);
  EXPECT_EQ(RunAgent({"gpu-wait", "--timeout", "-1"}).code, 2);
  EXPECT_EQ(RunAgent({"gpu-wait", "--timeout", "1", "--require-gpu=maybe"}).code, 2);
  EXPECT_EQ(RunAgent({"gpu-wait", "--timeout", "1", "--bogus"}).code, 2);
  EXPECT_EQ(RunAgent({}).code, 2);       // no subcommand
  EXPECT_EQ(RunAgent({"run"}).code, 2);  // not yet a command
  EXPECT_EQ(RunAgent({"gpu-wait", "--help"}).code, 0);
}

TEST(GpuWaitCommandTest, VersionPrintsTheProjectVersion) {
  AgentRun run = RunAgent({"version"});
  EXPECT_EQ(run.code, 0);
  EXPECT_EQ(run.out, std::string("outpost-agent ") + OUTPOST_VERSION + "\n");
}

}  // namespace
}  // namespace outpost::agent
