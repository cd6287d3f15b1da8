#include "agent/supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

extern char** environ;

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kTailBytes = 4096;
constexpr milliseconds kFallbackPoll{50};

// The Supervisor whose thread this is, so Stop() from on_event does not join itself.
thread_local const Supervisor* running_supervisor = nullptr;

// What the child reports through the exec pipe when it cannot start.
struct SpawnFailure {
  int stage;  // 0: chdir, 1: execve
  int err;
};

std::vector<std::string> BuildEnv(const SupervisorOptions& options) {
  std::vector<std::string> env;
  auto name_of = [](std::string_view entry) { return entry.substr(0, entry.find('=')); };
  if (options.inherit_env) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      std::string_view entry(*e);
      bool overridden = false;
      for (const std::string& o : options.env) overridden |= name_of(o) == name_of(entry);
      if (!overridden) env.emplace_back(entry);
    }
  }
  env.insert(env.end(), options.env.begin(), options.env.end());
  return env;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

int OpenLog(const fs::path& path) {
  return ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

}  // namespace

std::string_view ChildStateName(ChildState state) {
  switch (state) {
    case ChildState::kRunning:
      return "running";
    case ChildState::kBackoff:
      return "backoff";
    case ChildState::kCrashLoop:
      return "crash-loop";
    case ChildState::kStopped:
      return "stopped";
  }
  return "unknown";
}

std::string ChildExit::Describe() const {
  if (!spawn_error.empty()) return StrCat("failed to start: ", spawn_error);
  if (signal > 0) {
    const char* name = ::sigabbrev_np(signal);
    return StrCat("killed by SIG", name ? name : "?", " (", signal, ") after ", ran.count(), " ms");
  }
  return StrCat("exited with code ", exit_code, " after ", ran.count(), " ms");
}

struct Supervisor::Child {
  pid_t pid = 0;
  int pidfd = -1;
  int out_fd = -1;  // read end of the child's stdout/stderr pipe
  Clock::time_point started;

  void CloseFds() {
    if (pidfd >= 0) ::close(pidfd);
    if (out_fd >= 0) ::close(out_fd);
    pidfd = out_fd = -1;
  }
};

absl::StatusOr<std::unique_ptr<Supervisor>> Supervisor::Start(SupervisorOptions options) {
  if (options.argv.empty() || options.argv[0].empty() || options.argv[0][0] != '/') {
    return absl::InvalidArgumentError(StrCat("supervisor ", options.name,
                                             ": argv[0] must be an absolute path, got \"",
                                             options.argv.empty() ? "" : options.argv[0], "\""));
  }
  if (options.crash_loop_exits < 1 || options.backoff_initial.count() < 0 ||
      options.backoff_max < options.backoff_initial || options.stop_grace.count() < 0) {
    return absl::InvalidArgumentError(
        StrCat("supervisor ", options.name,
               ": need crash_loop_exits >= 1, 0 <= backoff_initial <= backoff_max, "
               "stop_grace >= 0"));
  }
  if (::access(options.argv[0].c_str(), X_OK) != 0) {
    return absl::ErrnoToStatus(
        errno, StrCat("supervisor ", options.name, ": cannot execute ", options.argv[0]));
  }
  for (const std::string& entry : options.env) {
    if (entry.find('=') == std::string::npos || entry.front() == '=') {
      return absl::InvalidArgumentError(StrCat(
          "supervisor ", options.name, ": environment entry \"", entry, "\" is not NAME=value"));
    }
  }
  if (!options.working_dir.empty()) {
    std::error_code ec;
    if (!fs::is_directory(options.working_dir, ec)) {
      return absl::NotFoundError(StrCat("supervisor ", options.name, ": working directory ",
                                        options.working_dir.string(), " does not exist"));
    }
  }
  int log_fd = -1;
  if (!options.log_file.empty()) {
    log_fd = OpenLog(options.log_file);
    if (log_fd < 0) {
      return absl::ErrnoToStatus(errno,
                                 StrCat("supervisor ", options.name, ": cannot open log file ",
                                        options.log_file.string()));
    }
  }
  int wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) {
    int err = errno;
    if (log_fd >= 0) ::close(log_fd);
    return absl::ErrnoToStatus(err, "supervisor: eventfd");
  }
  std::unique_ptr<Supervisor> supervisor(new Supervisor(std::move(options), log_fd, wake_fd));
  supervisor->thread_ = std::thread([s = supervisor.get()] { s->Run(); });
  return supervisor;
}

Supervisor::Supervisor(SupervisorOptions options, int log_fd, int wake_fd)
    : options_(std::move(options)), log_fd_(log_fd), wake_fd_(wake_fd) {
  struct stat st;
  if (log_fd_ >= 0 && ::fstat(log_fd_, &st) == 0) log_size_ = static_cast<uint64_t>(st.st_size);
}

Supervisor::~Supervisor() {
  Stop();
  if (log_fd_ >= 0) ::close(log_fd_);
  ::close(wake_fd_);
}

void Supervisor::Stop() {
  stop_requested_ = true;
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof(one));
  (void)ignored;
  if (running_supervisor == this) return;  // from on_event
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (thread_.joinable()) thread_.join();
}

SupervisorEvent Supervisor::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

void Supervisor::Publish(SupervisorEvent event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = event;
  }
  if (options_.on_event) options_.on_event(event);
}

absl::StatusOr<Supervisor::Child> Supervisor::Spawn() {
  std::vector<std::string> argv_strings = options_.argv;
  std::vector<std::string> env_strings = BuildEnv(options_);
  std::vector<char*> argv = Pointers(argv_strings);
  std::vector<char*> envp = Pointers(env_strings);
  const char* working_dir = options_.working_dir.empty() ? nullptr : options_.working_dir.c_str();

  int out_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe2");
  int exec_pipe[2];
  if (::pipe2(exec_pipe, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return absl::ErrnoToStatus(err, "pipe2");
  }
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  const int death_signal = options_.parent_death_signal;

  pid_t pid = ::fork();
  if (pid == 0) {
    // Child: only async-signal-safe calls until execve.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, death_signal);
    if (::getppid() != parent) ::_exit(127);  // the agent died before prctl
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    ::dup2(out_pipe[1], STDOUT_FILENO);
    ::dup2(out_pipe[1], STDERR_FILENO);
    // The agent's signal mask and ignored signals must not leak into the runtime.
    sigset_t all;
    sigemptyset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    struct sigaction dfl;
    std::memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
    }
    SpawnFailure failure{0, 0};
    if (working_dir != nullptr && ::chdir(working_dir) != 0) {
      failure = {0, errno};
    } else {
      ::execve(argv[0], argv.data(), envp.data());
      failure = {1, errno};
    }
    ssize_t ignored = ::write(exec_pipe[1], &failure, sizeof(failure));
    (void)ignored;
    ::_exit(127);
  }
  int fork_errno = errno;
  ::close(out_pipe[1]);
  ::close(exec_pipe[1]);
  if (devnull >= 0) ::close(devnull);
  if (pid < 0) {
    ::close(out_pipe[0]);
    ::close(exec_pipe[0]);
    return absl::ErrnoToStatus(fork_errno, "fork");
  }
  ::setpgid(pid, pid);  // also here, so a Stop() right away reaches the group

  // EOF: execve succeeded (the pipe is close-on-exec); data: it failed.
  SpawnFailure failure{0, 0};
  ssize_t n;
  do {
    n = ::read(exec_pipe[0], &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  ::close(exec_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(failure))) {
    ::waitpid(pid, nullptr, 0);
    ::close(out_pipe[0]);
    return absl::ErrnoToStatus(
        failure.err, failure.stage == 0
                         ? StrCat("cannot enter working directory ", options_.working_dir.string())
                         : StrCat("cannot execute ", options_.argv[0]));
  }

  Child child;
  child.pid = pid;
  child.out_fd = out_pipe[0];
  child.started = Clock::now();
  ::fcntl(child.out_fd, F_SETFL, O_NONBLOCK);
  if (options_.use_pidfd) {
    // The raw syscall: glibc 2.36's <sys/pidfd.h> lacks extern "C", and
    // older libcs have no wrapper at all.
    child.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (child.pidfd < 0) {
      spdlog::warn("supervisor {}: pidfd_open failed ({}); polling waitpid every {} ms",
                   options_.name, std::strerror(errno), kFallbackPoll.count());
    }
  }
  return child;
}

void Supervisor::WriteLog(const char* data, size_t n) {
  tail_.append(data, n);
  if (tail_.size() > kTailBytes) tail_.erase(0, tail_.size() - kTailBytes);
  // Rotate before a write that would pass the cap, so the current file
  // always ends with the newest output.
  if (log_fd_ >= 0 && log_size_ > 0 && log_size_ + n > options_.log_max_bytes) RotateLog();
  int fd = log_fd_ >= 0 ? log_fd_ : STDERR_FILENO;
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd, data + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      // A full disk must not stop supervision; the output is dropped.
      if (!log_warned_) {
        log_warned_ = true;
        spdlog::warn("supervisor {}: cannot write the child's log ({}); dropping output",
                     options_.name, std::strerror(errno));
      }
      return;
    }
    done += static_cast<size_t>(w);
  }
  log_size_ += n;
}

void Supervisor::RotateLog() {
  fs::path old = options_.log_file;
  old += ".1";
  if (::rename(options_.log_file.c_str(), old.c_str()) != 0) {
    spdlog::warn("supervisor {}: cannot rotate {}: {}", options_.name, options_.log_file.string(),
                 std::strerror(errno));
  }
  int fresh = OpenLog(options_.log_file);
  if (fresh >= 0) {
    ::close(log_fd_);
    log_fd_ = fresh;
    log_size_ = 0;
  }
}

void Supervisor::DrainOutput(Child& child) {
  if (child.out_fd < 0) return;
  char buf[16384];
  while (true) {
    ssize_t n = ::read(child.out_fd, buf, sizeof(buf));
    if (n > 0) {
      WriteLog(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {  // every writer closed it
      ::close(child.out_fd);
      child.out_fd = -1;
    }
    return;  // EAGAIN: nothing more for now
  }
}

bool Supervisor::Exited(Child& child) {
  // WNOWAIT leaves the zombie in place: while it exists its pid (the group
  // id) cannot be reused, so Reap() can still signal the group safely.
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  int r;
  do {
    r = ::waitid(P_PID, static_cast<id_t>(child.pid), &info, WEXITED | WNOHANG | WNOWAIT);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    // ECHILD: someone else reaped it (a bug elsewhere); treat it as gone.
    spdlog::error("supervisor {}: waitid({}) failed: {}", options_.name, child.pid,
                  std::strerror(errno));
    return true;
  }
  return info.si_pid == child.pid;
}

ChildExit Supervisor::Reap(Child& child) {
  // Leftovers of the group (helpers the child started) go with it.
  ::kill(-child.pid, SIGKILL);
  int wait_status = 0;
  while (::waitpid(child.pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
  DrainOutput(child);
  ChildExit exit;
  if (WIFEXITED(wait_status)) exit.exit_code = WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) exit.signal = WTERMSIG(wait_status);
  exit.ran = std::chrono::duration_cast<milliseconds>(Clock::now() - child.started);
  child.CloseFds();
  return exit;
}

bool Supervisor::WaitForExit(Child& child) {
  while (true) {
    pollfd fds[3] = {{wake_fd_, POLLIN, 0}, {child.pidfd, POLLIN, 0}, {child.out_fd, POLLIN, 0}};
    int timeout = child.pidfd >= 0 ? -1 : static_cast<int>(kFallbackPoll.count());
    int r = ::poll(fds, 3, timeout);
    if (r < 0 && errno != EINTR) {
      spdlog::error("supervisor {}: poll failed: {}", options_.name, std::strerror(errno));
      std::this_thread::sleep_for(kFallbackPoll);
    }
    if (fds[2].revents != 0) DrainOutput(child);
    if (stop_requested_) return false;
    if ((child.pidfd < 0 || fds[1].revents != 0) && Exited(child)) {
      ChildExit exit = Reap(child);
      std::lock_guard<std::mutex> lock(mu_);
      current_.last_exit = exit;
      return true;
    }
  }
}

void Supervisor::Terminate(Child& child) {
  ::kill(-child.pid, SIGTERM);
  auto deadline = Clock::now() + options_.stop_grace;
  bool exited = false;
  while (!exited) {
    auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd fds[2] = {{child.pidfd, POLLIN, 0}, {child.out_fd, POLLIN, 0}};
    int timeout =
        static_cast<int>(child.pidfd >= 0 ? left.count() : std::min(left, kFallbackPoll).count());
    ::poll(fds, 2, std::max(timeout, 1));
    if (fds[1].revents != 0) DrainOutput(child);
    exited = Exited(child);
  }
  if (!exited) {
    spdlog::warn("supervisor {}: pid {} ignored SIGTERM for {} ms; sending SIGKILL", options_.name,
                 child.pid, options_.stop_grace.count());
  }
  ChildExit exit = Reap(child);  // SIGKILLs the group
  spdlog::info("supervisor {}: stopped pid {}: {}", options_.name, child.pid, exit.Describe());
  std::lock_guard<std::mutex> lock(mu_);
  current_.last_exit = exit;
}

bool Supervisor::SleepUnlessStopped(milliseconds delay) {
  auto deadline = Clock::now() + delay;
  while (!stop_requested_) {
    auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return true;
    pollfd fd{wake_fd_, POLLIN, 0};
    ::poll(&fd, 1, static_cast<int>(left.count()) + 1);
  }
  return false;
}

void Supervisor::Run() {
  pthread_setname_np(pthread_self(), "supervisor");
  running_supervisor = this;
  int starts = 0;
  int short_runs = 0;  // consecutive runs shorter than stable_after
  auto stopped = [this, &starts] {
    SupervisorEvent event = Current();
    event.state = ChildState::kStopped;
    event.pid = 0;
    event.starts = starts;
    event.backoff = milliseconds(0);
    Publish(std::move(event));
  };
  while (!stop_requested_) {
    ++starts;
    auto spawned = Spawn();
    ChildExit exit;
    if (spawned.ok()) {
      Child& child = *spawned;
      spdlog::info("supervisor {}: started pid {} ({})", options_.name, child.pid,
                   options_.argv[0]);
      SupervisorEvent running = Current();
      running.state = ChildState::kRunning;
      running.pid = child.pid;
      running.starts = starts;
      running.backoff = milliseconds(0);
      running.log_tail.clear();
      Publish(std::move(running));
      if (!WaitForExit(child)) {
        Terminate(child);
        break;
      }
      exit = *Current().last_exit;
    } else {
      exit.spawn_error = std::string(MessageOf(spawned.status()));
      std::lock_guard<std::mutex> lock(mu_);
      current_.last_exit = exit;
    }

    auto now = Clock::now();
    exits_.push_back(now);
    while (!exits_.empty() && now - exits_.front() > options_.crash_loop_window) {
      exits_.pop_front();
    }
    short_runs = exit.ran >= options_.stable_after ? 1 : short_runs + 1;
    SupervisorEvent event;
    event.starts = starts;
    event.last_exit = exit;
    event.log_tail = tail_;
    if (static_cast<int>(exits_.size()) >= options_.crash_loop_exits) {
      spdlog::error(
          "supervisor {}: crash loop: {} exits within {} s, last {}; not restarting", options_.name,
          exits_.size(),
          std::chrono::duration_cast<std::chrono::seconds>(options_.crash_loop_window).count(),
          exit.Describe());
      event.state = ChildState::kCrashLoop;
      Publish(std::move(event));
      while (SleepUnlessStopped(std::chrono::hours(24))) {
      }
      break;
    }
    int64_t factor = int64_t{1} << std::min(short_runs - 1, 30);
    milliseconds delay(
        std::min<int64_t>(options_.backoff_max.count(), options_.backoff_initial.count() * factor));
    spdlog::warn("supervisor {}: {} {}; restarting in {} ms", options_.name, options_.argv[0],
                 exit.Describe(), delay.count());
    event.state = ChildState::kBackoff;
    event.backoff = delay;
    Publish(std::move(event));
    if (!SleepUnlessStopped(delay)) break;
  }
  stopped();
}

}  // namespace outpost::agent
