// A throwaway PostgreSQL server for tests (test code only): initdb into a
// fresh temporary directory, then the server itself on 127.0.0.1 at a free
// port, unix sockets in that directory, trust authentication, fsync off.
// Stopping it (or the test process dying: the server gets SIGQUIT with its
// parent) leaves nothing running; the destructor removes the directory.
//
// PostgreSQL refuses to run as root, so a root test process runs it as the
// `postgres` user the Debian package creates (else `nobody`), which then
// owns the directory. Binaries: $OUTPOST_PG_BINDIR, else the newest
// /usr/lib/postgresql/<version>/bin (scripts/deps.sh installs 15).
//
// The parent-death signal is tied to the thread that starts the server:
// call Start()/Shared() from a thread that outlives it (gtest's main thread,
// e.g. in a fixture's SetUp), never from a worker thread.
//
// Thread safety: CreateDatabase/DropDatabase are thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outpost::hub::testing {

class PostgresServer {
 public:
  // Errors: NotFound (no PostgreSQL binaries: run scripts/deps.sh),
  // Internal (initdb or the server failed; the message has its log's tail),
  // DeadlineExceeded (not accepting connections within 60 s).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();

  // One server per test process, started by the first call; later calls
  // return it (or the first call's error). StopShared() stops it (call it
  // from a ::testing::Environment's TearDown).
  static absl::StatusOr<PostgresServer*> Shared();
  static void StopShared();

  // Fast shutdown, then removes the directory.
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // Creates an empty database with a fresh name and returns its URL.
  absl::StatusOr<std::string> CreateDatabase();
  // Drops it, closing its remaining connections.
  absl::Status DropDatabase(std::string_view url);

  uint16_t port() const { return port_; }
  std::string Url(std::string_view database) const;
  // From initdb's start to the first accepted connection.
  std::chrono::milliseconds startup_time() const { return startup_time_; }

 private:
  PostgresServer() = default;
  absl::Status Admin(const std::string& sql);

  std::filesystem::path dir_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::chrono::milliseconds startup_time_{0};
  std::atomic<int> next_database_{0};
};

}  // namespace outpost::hub::testing
