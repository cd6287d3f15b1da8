#include "hub/testing/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace outpost::hub::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr auto kStartTimeout = std::chrono::seconds(60);
constexpr auto kStopTimeout = std::chrono::seconds(30);

absl::StatusOr<fs::path> FindBinaries() {
  if (const char* env = std::getenv("OUTPOST_PG_BINDIR"); env != nullptr && *env != '\0') {
    if (fs::exists(fs::path(env) / "postgres")) return fs::path(env);
    return absl::NotFoundError(StrCat("OUTPOST_PG_BINDIR=", env, " has no postgres binary"));
  }
  for (int version = 17; version >= 13; --version) {
    fs::path dir = StrCat("/usr/lib/postgresql/", version, "/bin");
    if (fs::exists(dir / "initdb") && fs::exists(dir / "postgres")) return dir;
  }
  return absl::NotFoundError(
      "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; run scripts/deps.sh "
      "(Debian package postgresql-15) or set OUTPOST_PG_BINDIR");
}

struct RunAs {
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
};

absl::StatusOr<RunAs> ServerUser() {
  if (geteuid() != 0) return RunAs{};
  for (const char* name : {"postgres", "nobody"}) {
    if (struct passwd* pw = getpwnam(name)) return RunAs{true, pw->pw_uid, pw->pw_gid};
  }
  return absl::NotFoundError(
      "running as root, but there is no postgres or nobody user to run "
      "PostgreSQL as (it refuses root)");
}

std::string Tail(const fs::path& log) {
  std::ifstream in(log);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  return text.size() > 2000 ? text.substr(text.size() - 2000) : text;
}

// Starts argv[0] as `user` with stdout/stderr appended to `log`; the child
// gets `death_signal` when this thread exits (a crashed test leaves no
// server behind).
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const fs::path& log,
                            const fs::path& cwd, const RunAs& user, int death_signal) {
  // Everything the child needs is prepared here: after fork only
  // async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", log.string()));
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(log_fd);
    ::close(null_fd);
    return absl::ErrnoToStatus(err, "fork");
  }
  if (pid == 0) {
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    if (user.switch_user) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(user.gid) != 0 || ::setuid(user.uid) != 0) {
        ::_exit(126);
      }
    }
    if (::chdir(cwd.c_str()) != 0) ::_exit(126);
    // After setuid: a change of credentials clears the parent-death signal.
    ::prctl(PR_SET_PDEATHSIG, death_signal);
    if (::getppid() != parent) ::_exit(1);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  return pid;
}

absl::Status RunToCompletion(const std::vector<std::string>& argv, const fs::path& log,
                             const fs::path& cwd, const RunAs& user) {
  ASSIGN_OR_RETURN(pid_t pid, Spawn(argv, log, cwd, user, SIGKILL));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  return absl::InternalError(StrCat(argv[0], " failed (wait status ", status, "):\n", Tail(log)));
}

absl::StatusOr<uint16_t> FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    ::close(fd);
    return absl::ErrnoToStatus(err, "bind 127.0.0.1:0");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Waits up to `timeout` for `pid` to exit; true if it did.
bool WaitExit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (true) {
    int status;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::mutex shared_mu;
std::unique_ptr<PostgresServer> shared_server;
absl::Status shared_error = absl::OkStatus();
bool shared_started = false;

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  auto began = Clock::now();
  ASSIGN_OR_RETURN(fs::path bin, FindBinaries());
  ASSIGN_OR_RETURN(RunAs user, ServerUser());
  auto server = std::unique_ptr<PostgresServer>(new PostgresServer());
  std::string pattern = (fs::temp_directory_path() / "outpost-pg-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) return absl::ErrnoToStatus(errno, "mkdtemp");
  server->dir_ = pattern;
  if (user.switch_user && ::chown(pattern.c_str(), user.uid, user.gid) != 0) {
    return absl::ErrnoToStatus(errno, StrCat("chown ", pattern));
  }
  fs::path data = server->dir_ / "data";
  RETURN_IF_ERROR(
      RunToCompletion({(bin / "initdb").string(), "-D", data.string(), "-U", "outpost", "-A",
                       "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"},
                      server->dir_ / "initdb.log", server->dir_, user));
  // The port is free when picked but may be taken before the server binds
  // it: try a few.
  fs::path log = server->dir_ / "postgres.log";
  absl::Status last = absl::OkStatus();
  for (int attempt = 0; attempt < 5; ++attempt) {
    ASSIGN_OR_RETURN(uint16_t port, FreePort());
    ASSIGN_OR_RETURN(
        pid_t pid, Spawn({(bin / "postgres").string(), "-D", data.string(), "-p", StrCat(port),
                          "-k", server->dir_.string(), "-c", "listen_addresses=127.0.0.1", "-c",
                          "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                          "-c", "max_connections=200", "-c", "log_min_messages=warning"},
                         log, server->dir_, user, SIGQUIT));
    server->pid_ = pid;
    server->port_ = port;
    std::string conninfo =
        StrCat("host=127.0.0.1 port=", port, " dbname=postgres user=outpost connect_timeout=2");
    auto deadline = Clock::now() + kStartTimeout;
    bool exited = false;
    while (Clock::now() < deadline) {
      if (PQping(conninfo.c_str()) == PQPING_OK) {
        server->startup_time_ =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began);
        return server;
      }
      int status;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    server->pid_ = -1;
    if (!exited) {
      ::kill(pid, SIGKILL);
      WaitExit(pid, kStopTimeout);
      return absl::DeadlineExceededError(
          StrCat("PostgreSQL did not accept connections within 60 s:\n", Tail(log)));
    }
    last = absl::InternalError(StrCat("PostgreSQL exited while starting:\n", Tail(log)));
    if (Tail(log).find("already in use") == std::string::npos) break;
  }
  return last;
}

PostgresServer::~PostgresServer() {
  if (pid_ > 0) {
    ::kill(pid_, SIGINT);  // fast shutdown: disconnects clients, no waiting
    if (!WaitExit(pid_, kStopTimeout)) {
      ::kill(pid_, SIGKILL);
      WaitExit(pid_, kStopTimeout);
    }
  }
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

absl::StatusOr<PostgresServer*> PostgresServer::Shared() {
  std::lock_guard<std::mutex> lock(shared_mu);
  if (!shared_started) {
    shared_started = true;
    absl::StatusOr<std::unique_ptr<PostgresServer>> server = Start();
    if (server.ok()) {
      shared_server = *std::move(server);
    } else {
      shared_error = server.status();
    }
  }
  if (!shared_error.ok()) return shared_error;
  if (!shared_server) return absl::FailedPreconditionError("the shared PostgreSQL was stopped");
  return shared_server.get();
}

void PostgresServer::StopShared() {
  std::lock_guard<std::mutex> lock(shared_mu);
  shared_server.reset();
}

std::string PostgresServer::Url(std::string_view database) const {
  return StrCat("postgresql://outpost@127.0.0.1:", port_, "/", database);
}

absl::Status PostgresServer::Admin(const std::string& sql) {
  std::string conninfo = StrCat("host=127.0.0.1 port=", port_, " dbname=postgres user=outpost");
  PGconn* conn = PQconnectdb(conninfo.c_str());
  absl::Status status = absl::OkStatus();
  if (PQstatus(conn) != CONNECTION_OK) {
    status = absl::UnavailableError(StrCat("cannot connect: ", PQerrorMessage(conn)));
  } else {
    PGresult* result = PQexec(conn, sql.c_str());
    if (PQresultStatus(result) != PGRES_COMMAND_OK) {
      status = absl::InternalError(StrCat(sql, ": ", PQresultErrorMessage(result)));
    }
    PQclear(result);
  }
  PQfinish(conn);
  return status;
}

absl::StatusOr<std::string> PostgresServer::CreateDatabase() {
  std::string name = StrCat("test_", next_database_.fetch_add(1));
  RETURN_IF_ERROR(Admin(StrCat("CREATE DATABASE ", name)));
  return Url(name);
}

absl::Status PostgresServer::DropDatabase(std::string_view url) {
  std::string_view name = url.substr(url.rfind('/') + 1);
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return absl::InvalidArgumentError(StrCat("not a test database URL: ", url));
    }
  }
  return Admin(StrCat("DROP DATABASE IF EXISTS ", name, " WITH (FORCE)"));
}

}  // namespace outpost::hub::testing
