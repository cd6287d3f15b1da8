// Supervisor: keeps one child process (outpost-serve) running. Starts it with
// the given argv/env/working directory in its own process group, copies its
// stdout and stderr into a size-capped log file, restarts it with
// exponential backoff when it exits, and gives up with a CrashLoop state when
// it exits too often, so the updater can roll the release back.
//
// The child dies with the agent (PR_SET_PDEATHSIG), so a restarted agent
// never finds an orphaned runtime holding the port. Exits are noticed through
// a pidfd (no SIGCHLD handler, no busy loop); on kernels without pidfd_open
// the thread polls waitpid every 50 ms.
//
// Threads: one thread per Supervisor ("supervisor") runs the child's whole
// lifecycle and calls on_event. Stop() and Current() are thread-safe.
// Nothing else in the process may reap this child (no waitpid(-1), no
// SIGCHLD set to SIG_IGN).
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace outpost::agent {

enum class ChildState {
  kRunning,    // a child is running (pid set)
  kBackoff,    // the child exited; waiting `backoff` before the next start
  kCrashLoop,  // it exited crash_loop_exits times within crash_loop_window; no more restarts
  kStopped,    // Stop() ended it
};
std::string_view ChildStateName(ChildState state);

// How a child ended (or failed to start).
struct ChildExit {
  int exit_code = -1;       // >= 0 when it exited normally
  int signal = 0;           // > 0 when a signal killed it
  std::string spawn_error;  // set when it never ran (exec failed, bad working dir)
  std::chrono::milliseconds ran{0};
  // "exited with code 3 after 20 ms", "killed by SIGKILL (9) after 5 ms",
  // "failed to start: ...".
  std::string Describe() const;
};

struct SupervisorEvent {
  ChildState state = ChildState::kRunning;
  pid_t pid = 0;                         // kRunning: the child
  int starts = 0;                        // children started so far (spawn attempts)
  std::optional<ChildExit> last_exit;    // the latest exit
  std::chrono::milliseconds backoff{0};  // kBackoff: delay before the next start
  std::string log_tail;                  // kBackoff/kCrashLoop: last output lines (<= 4 KiB)
};

struct SupervisorOptions {
  std::string name = "child";     // in log messages
  std::vector<std::string> argv;  // argv[0]: absolute path of the executable
  // "NAME=value" entries set on top of the agent's environment (or alone
  // when inherit_env is false).
  std::vector<std::string> env;
  bool inherit_env = true;
  std::filesystem::path working_dir;  // empty: the agent's
  // The child's stdout and stderr are appended here; when it grows past
  // log_max_bytes it is renamed to "<log_file>.1" (replacing the older one)
  // and a new file started (checked per write of up to 16 KiB, so a file
  // may exceed the cap by one write). Empty: copied to the agent's stderr.
  std::filesystem::path log_file;
  uint64_t log_max_bytes = 16u << 20;

  // Restart delay: backoff_initial, doubling per consecutive short run, up to
  // backoff_max; a run of at least stable_after starts the doubling over.
  std::chrono::milliseconds backoff_initial{1000};
  std::chrono::milliseconds backoff_max{60000};
  std::chrono::milliseconds stable_after{60000};
  // This many exits within crash_loop_window: CrashLoop, no more restarts.
  int crash_loop_exits = 5;
  std::chrono::milliseconds crash_loop_window{std::chrono::minutes(5)};
  // Stop(): SIGTERM to the child's process group, SIGKILL after this.
  std::chrono::milliseconds stop_grace{10000};
  int parent_death_signal = SIGKILL;
  // Called on the supervisor thread at every state change; must not block
  // for long. May call Stop() (it then returns without waiting).
  std::function<void(const SupervisorEvent&)> on_event;
  // Tests only: false forces the 50 ms waitpid fallback.
  bool use_pidfd = true;
};

class Supervisor {
 public:
  // Validates `options` and starts the supervisor thread, which starts the
  // first child at once. Errors: InvalidArgument (empty argv, argv[0] not an
  // absolute path, bad limits), NotFound / PermissionDenied (argv[0] missing
  // or not executable, working_dir missing, log file cannot be opened).
  // Later start failures (exec errors) are exits like any other.
  static absl::StatusOr<std::unique_ptr<Supervisor>> Start(SupervisorOptions options);
  // Stop().
  ~Supervisor();

  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Ends supervision: SIGTERM to the child's process group, SIGKILL to the
  // group after stop_grace, reaps it, joins the thread. Afterwards Current()
  // is kStopped. Idempotent. From on_event: only asks, does not wait.
  void Stop();
  // The latest state.
  SupervisorEvent Current() const;

 private:
  struct Child;
  explicit Supervisor(SupervisorOptions options, int log_fd, int wake_fd);
  void Run();
  absl::StatusOr<Child> Spawn();
  // Waits for the child to exit or for Stop(); copies output meanwhile.
  // Returns true when it exited by itself.
  bool WaitForExit(Child& child);
  void Terminate(Child& child);
  bool Exited(Child& child);
  // Kills what is left of the child's group, reaps it, collects its output.
  ChildExit Reap(Child& child);
  void DrainOutput(Child& child);
  void WriteLog(const char* data, size_t n);
  void RotateLog();
  void Publish(SupervisorEvent event);
  // Sleeps up to `delay`; false when Stop() was asked meanwhile.
  bool SleepUnlessStopped(std::chrono::milliseconds delay);

  const SupervisorOptions options_;
  int log_fd_;  // -1: agent's stderr
  uint64_t log_size_ = 0;
  bool log_warned_ = false;  // a failed log write was reported
  const int wake_fd_;        // eventfd: Stop() writes it
  std::atomic<bool> stop_requested_{false};
  std::string tail_;                                         // last output bytes
  std::deque<std::chrono::steady_clock::time_point> exits_;  // within the window

  mutable std::mutex mu_;
  SupervisorEvent current_;  // guarded by mu_
  std::mutex stop_mu_;       // serialises Stop()
  std::thread thread_;
};

}  // namespace outpost::agent
