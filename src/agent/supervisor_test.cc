#include "agent/supervisor.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <fstream>
#include <sstream>

#include "common/atomic_file.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// Alive and not a zombie (a reparented zombie may linger unreaped in a container).
bool IsAlive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

template <typename Pred>
bool Eventually(Pred pred, milliseconds timeout = milliseconds(5000)) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return pred();
}

// Records every event with the time it arrived.
class Events {
 public:
  std::function<void(const SupervisorEvent&)> Callback() {
    return [this](const SupervisorEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back({Clock::now(), e});
      cv_.notify_all();
    };
  }
  // Waits for an event in `state`; returns its index or -1.
  int WaitFor(ChildState state, milliseconds timeout = milliseconds(5000)) {
    std::unique_lock<std::mutex> lock(mu_);
    int found = -1;
    cv_.wait_for(lock, timeout, [&] {
      for (size_t i = 0; i < events_.size(); ++i) {
        if (events_[i].second.state == state) {
          found = static_cast<int>(i);
          return true;
        }
      }
      return false;
    });
    return found;
  }
  std::vector<std::pair<Clock::time_point, SupervisorEvent>> All() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  std::vector<ChildState> States() {
    std::vector<ChildState> out;
    for (auto& [t, e] : All()) out.push_back(e.state);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<Clock::time_point, SupervisorEvent>> events_;
};

// Every test runs with pidfd and with the 50 ms waitpid fallback.
class SupervisorTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "supervisor_test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    log_ = dir_ / "serve.log";
  }
  void TearDown() override { fs::remove_all(dir_); }

  SupervisorOptions Shell(const std::string& script) {
    SupervisorOptions options;
    options.name = "test";
    options.argv = {"/bin/sh", "-c", script};
    options.log_file = log_;
    options.use_pidfd = GetParam();
    options.on_event = events_.Callback();
    options.backoff_initial = milliseconds(20);
    options.backoff_max = milliseconds(1000);
    return options;
  }
  std::string Log() {
    auto content = ReadFile(log_);
    return content.ok() ? *content : "";
  }
  bool LogHas(std::string_view text) {
    return Eventually([&] { return Log().find(text) != std::string::npos; });
  }
  pid_t ReadPid(const fs::path& file) {
    pid_t pid = 0;
    Eventually([&] {
      std::ifstream in(file);
      return static_cast<bool>(in >> pid);
    });
    return pid;
  }

  fs::path dir_, log_;
  Events events_;
};

TEST_P(SupervisorTest, CapturesOutputAndStopsWithSigterm) {
  auto supervisor = Supervisor::Start(Shell("echo to-stdout; echo to-stderr >&2; exec sleep 30"));
  ASSERT_TRUE(supervisor.ok()) << supervisor.status();
  ASSERT_TRUE(LogHas("to-stdout\nto-stderr\n")) << Log();
  SupervisorEvent running = (*supervisor)->Current();
  EXPECT_EQ(running.state, ChildState::kRunning);
  ASSERT_GT(running.pid, 0);
  EXPECT_TRUE(IsAlive(running.pid));
  EXPECT_EQ(getpgid(running.pid), running.pid);  // its own process group

  auto start = Clock::now();
  (*supervisor)->Stop();
  EXPECT_LT(Clock::now() - start, milliseconds(2000));
  SupervisorEvent stopped = (*supervisor)->Current();
  EXPECT_EQ(stopped.state, ChildState::kStopped);
  ASSERT_TRUE(stopped.last_exit.has_value());
  EXPECT_EQ(stopped.last_exit->signal, SIGTERM);
  EXPECT_FALSE(IsAlive(running.pid));
  EXPECT_EQ(events_.States(),
            (std::vector<ChildState>{ChildState::kRunning, ChildState::kStopped}));
  (*supervisor)->Stop();  // idempotent
}

TEST_P(SupervisorTest, PassesArgsEnvironmentAndWorkingDirectory) {
  fs::create_directory(dir_ / "work");
  SupervisorOptions options = Shell("");
  options.argv = {"/bin/sh", "-c", "echo \"[$FOO|$1|$(pwd)|${HOME:-nohome}]\"; exec sleep 30", "sh",
                  "first-arg"};
  options.env = {"FOO=bar baz"};
  options.inherit_env = false;
  options.working_dir = dir_ / "work";
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok()) << supervisor.status();
  EXPECT_TRUE(LogHas("[bar baz|first-arg|" + (dir_ / "work").string() + "|nohome]")) << Log();

  setenv("OUTPOST_SUPERVISOR_TEST", "inherited", 1);
  options.argv = {"/bin/sh", "-c", "echo \"[$OUTPOST_SUPERVISOR_TEST $FOO]\"; exec sleep 30"};
  options.env = {"OUTPOST_SUPERVISOR_TEST=overridden"};
  options.inherit_env = true;
  auto second = Supervisor::Start(options);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(LogHas("[overridden ]")) << Log();
  unsetenv("OUTPOST_SUPERVISOR_TEST");
}

TEST_P(SupervisorTest, RestartsWithDoublingBackoffThenReportsCrashLoop) {
  SupervisorOptions options = Shell("echo attempt; exit 3");
  options.backoff_initial = milliseconds(50);
  options.crash_loop_exits = 4;
  options.crash_loop_window = std::chrono::minutes(1);
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok()) << supervisor.status();
  ASSERT_GE(events_.WaitFor(ChildState::kCrashLoop), 0) << Log();
  std::this_thread::sleep_for(milliseconds(300));  // nothing more may start

  using S = ChildState;
  EXPECT_EQ(events_.States(),
            (std::vector<S>{S::kRunning, S::kBackoff, S::kRunning, S::kBackoff, S::kRunning,
                            S::kBackoff, S::kRunning, S::kCrashLoop}));
  auto all = events_.All();
  std::vector<int64_t> backoffs;
  for (size_t i = 0; i < all.size(); ++i) {
    const SupervisorEvent& e = all[i].second;
    if (e.state != S::kBackoff) continue;
    backoffs.push_back(e.backoff.count());
    ASSERT_TRUE(e.last_exit.has_value());
    EXPECT_EQ(e.last_exit->exit_code, 3);
    EXPECT_EQ(e.last_exit->Describe().rfind("exited with code 3", 0), 0u);
    ASSERT_LT(i + 1, all.size());
    EXPECT_GE(all[i + 1].first - all[i].first, e.backoff);  // really waited
  }
  EXPECT_EQ(backoffs, (std::vector<int64_t>{50, 100, 200}));
  SupervisorEvent loop = (*supervisor)->Current();
  EXPECT_EQ(loop.state, S::kCrashLoop);
  EXPECT_EQ(loop.starts, 4);
  EXPECT_NE(loop.log_tail.find("attempt\n"), std::string::npos);
  EXPECT_EQ(Log(), "attempt\nattempt\nattempt\nattempt\n");
  (*supervisor)->Stop();
  EXPECT_EQ((*supervisor)->Current().state, S::kStopped);
}

TEST_P(SupervisorTest, StableRunsKeepTheInitialBackoff) {
  SupervisorOptions options = Shell("exit 1");
  options.backoff_initial = milliseconds(30);
  options.stable_after = milliseconds(0);
  options.crash_loop_exits = 4;
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  ASSERT_GE(events_.WaitFor(ChildState::kCrashLoop), 0);
  for (auto& [t, e] : events_.All()) {
    if (e.state == ChildState::kBackoff) {
      EXPECT_EQ(e.backoff, milliseconds(30));
    }
  }
}

TEST_P(SupervisorTest, ExitsSpreadWiderThanTheWindowAreNotACrashLoop) {
  SupervisorOptions options = Shell("exit 0");
  options.backoff_initial = milliseconds(150);
  options.backoff_max = milliseconds(150);
  options.crash_loop_exits = 2;
  options.crash_loop_window = milliseconds(100);
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  ASSERT_TRUE(Eventually([&] { return (*supervisor)->Current().starts >= 4; }));
  (*supervisor)->Stop();
  EXPECT_EQ(events_.WaitFor(ChildState::kCrashLoop, milliseconds(0)), -1);
}

TEST_P(SupervisorTest, StopEscalatesToSigkillAfterTheGrace) {
  SupervisorOptions options = Shell("trap '' TERM; echo ready; while :; do sleep 1; done");
  options.stop_grace = milliseconds(300);
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  ASSERT_TRUE(LogHas("ready"));
  pid_t pid = (*supervisor)->Current().pid;
  auto start = Clock::now();
  (*supervisor)->Stop();
  auto took = Clock::now() - start;
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(3000));
  ASSERT_TRUE((*supervisor)->Current().last_exit.has_value());
  EXPECT_EQ((*supervisor)->Current().last_exit->signal, SIGKILL);
  EXPECT_FALSE(IsAlive(pid));
}

TEST_P(SupervisorTest, KillsTheWholeProcessGroup) {
  fs::path helper_pid = dir_ / "helper.pid";
  auto supervisor = Supervisor::Start(
      Shell("sleep 300 & echo $! > " + helper_pid.string() + "; echo ready; wait"));
  ASSERT_TRUE(supervisor.ok());
  pid_t helper = ReadPid(helper_pid);
  ASSERT_GT(helper, 0);
  EXPECT_TRUE(IsAlive(helper));
  (*supervisor)->Stop();
  EXPECT_TRUE(Eventually([&] { return !IsAlive(helper); }, milliseconds(2000)));
}

TEST_P(SupervisorTest, LeftoversOfAnExitedChildAreKilled) {
  fs::path helper_pid = dir_ / "helper.pid";
  SupervisorOptions options = Shell("sleep 300 & echo $! > " + helper_pid.string() + "; exit 1");
  options.crash_loop_exits = 1;
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  ASSERT_GE(events_.WaitFor(ChildState::kCrashLoop), 0);
  pid_t helper = ReadPid(helper_pid);
  ASSERT_GT(helper, 0);
  EXPECT_TRUE(Eventually([&] { return !IsAlive(helper); }, milliseconds(2000)));
}

TEST_P(SupervisorTest, ChildDiesWithTheAgent) {
  fs::path child_pid = dir_ / "child.pid";
  pid_t agent = fork();
  ASSERT_GE(agent, 0);
  if (agent == 0) {
    SupervisorOptions options = Shell("echo $$ > " + child_pid.string() + "; exec sleep 300");
    options.on_event = nullptr;
    auto supervisor = Supervisor::Start(options);
    if (!supervisor.ok()) _exit(1);
    while (true) pause();
  }
  pid_t child = ReadPid(child_pid);
  ASSERT_GT(child, 0);
  EXPECT_TRUE(IsAlive(child));
  kill(agent, SIGKILL);
  waitpid(agent, nullptr, 0);
  EXPECT_TRUE(Eventually([&] { return !IsAlive(child); }, milliseconds(2000)));
}

TEST_P(SupervisorTest, ExecFailuresCountAsExits) {
  fs::path bogus = dir_ / "not-a-program";
  ASSERT_TRUE(WriteFileAtomic(bogus, "this is not an executable\n", 0755).ok());
  SupervisorOptions options = Shell("");
  options.argv = {bogus.string()};
  options.crash_loop_exits = 2;
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok()) << supervisor.status();
  ASSERT_GE(events_.WaitFor(ChildState::kCrashLoop), 0);
  SupervisorEvent loop = (*supervisor)->Current();
  ASSERT_TRUE(loop.last_exit.has_value());
  EXPECT_NE(loop.last_exit->Describe().find("failed to start: cannot execute " + bogus.string()),
            std::string::npos)
      << loop.last_exit->Describe();
  EXPECT_NE(loop.last_exit->spawn_error.find("Exec format error"), std::string::npos)
      << loop.last_exit->spawn_error;
  EXPECT_EQ(events_.States(),
            (std::vector<ChildState>{ChildState::kBackoff, ChildState::kCrashLoop}));
}

TEST_P(SupervisorTest, StartValidatesOptions) {
  SupervisorOptions options = Shell("true");
  options.argv = {"sh", "-c", "true"};
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.argv = {(dir_ / "missing").string()};
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "plain", "#!/bin/sh\n", 0644).ok());
  options.argv = {(dir_ / "plain").string()};
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kPermissionDenied);
  options = Shell("true");
  options.working_dir = dir_ / "missing";
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kNotFound);
  options = Shell("true");
  options.env = {"NOEQUALS"};
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Shell("true");
  options.log_file = dir_ / "missing" / "log";
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kNotFound);
  options = Shell("true");
  options.crash_loop_exits = 0;
  EXPECT_EQ(Supervisor::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(events_.All().empty());
}

TEST_P(SupervisorTest, RotatesTheLogFile) {
  SupervisorOptions options = Shell(
      "i=0; while [ $i -lt 15 ]; do printf '%0300d\\n' $i; sleep 0.02; i=$((i+1)); "
      "done; echo done; exec sleep 30");
  options.log_max_bytes = 1000;
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  ASSERT_TRUE(LogHas("done"));
  fs::path old = log_;
  old += ".1";
  EXPECT_TRUE(fs::exists(old));
  EXPECT_LE(fs::file_size(old), 1000u);
  EXPECT_LE(fs::file_size(log_), 1000u);
  EXPECT_GT(fs::file_size(old), 0u);
}

TEST_P(SupervisorTest, StopFromTheEventCallbackAndPromptDestruction) {
  std::unique_ptr<Supervisor>* self = nullptr;
  SupervisorOptions options = Shell("exit 2");
  options.backoff_initial = milliseconds(10000);
  options.backoff_max = milliseconds(10000);
  std::atomic<bool> asked{false};
  options.on_event = [&](const SupervisorEvent& e) {
    if (e.state == ChildState::kBackoff && self != nullptr) {
      (*self)->Stop();  // must not deadlock
      asked = true;
    }
  };
  auto supervisor = Supervisor::Start(options);
  ASSERT_TRUE(supervisor.ok());
  self = &*supervisor;
  ASSERT_TRUE(Eventually(
      [&] { return asked.load() || (*supervisor)->Current().state == ChildState::kBackoff; }));
  auto start = Clock::now();
  supervisor->reset();  // in a 10 s backoff
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
}

INSTANTIATE_TEST_SUITE_P(WaitModes, SupervisorTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "pidfd" : "waitpid_poll";
                         });

}  // namespace
}  // namespace outpost::agent
