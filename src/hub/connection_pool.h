// Internal to src/hub: a bounded pool of database connections shared by the
// SQLite and PostgreSQL drivers.
//
// Thread safety: Acquire() and the Lease are thread-safe; a leased
// connection is used by one thread until the Lease goes away. The pool must
// outlive its leases.
#pragma once

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"

namespace outpost::hub::sql {

template <typename Conn>
class ConnectionPool {
 public:
  using Factory = std::function<absl::StatusOr<std::unique_ptr<Conn>>()>;

  // A connection on loan; goes back to the pool when destroyed unless
  // Discard() was called (a broken connection is closed instead).
  class Lease {
   public:
    Lease(ConnectionPool* pool, std::unique_ptr<Conn> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), conn_(std::move(other.conn_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_ != nullptr) pool_->Return(std::move(conn_));
    }
    Conn& operator*() const { return *conn_; }
    Conn* operator->() const { return conn_.get(); }
    void Discard() { conn_.reset(); }

   private:
    ConnectionPool* pool_;
    std::unique_ptr<Conn> conn_;
  };

  // The first connection is opened by Create() so a wrong path or URL fails
  // at startup, not on the first request.
  static absl::StatusOr<std::unique_ptr<ConnectionPool>> Create(int max_connections,
                                                                Factory factory) {
    auto pool =
        std::unique_ptr<ConnectionPool>(new ConnectionPool(max_connections, std::move(factory)));
    ASSIGN_OR_RETURN(std::unique_ptr<Conn> first, pool->factory_());
    absl::MutexLock lock(&pool->mu_);
    pool->idle_.push_back(std::move(first));
    pool->open_ = 1;
    return pool;
  }

  // An idle connection, a new one while fewer than max_connections are
  // open, or else waits for one to come back. Errors: those of the factory.
  absl::StatusOr<Lease> Acquire() {
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &ConnectionPool::CanAcquire));
      if (!idle_.empty()) {
        std::unique_ptr<Conn> conn = std::move(idle_.back());
        idle_.pop_back();
        return Lease(this, std::move(conn));
      }
      ++open_;
    }
    // Connecting can take a while (PostgreSQL over a network): not under mu_.
    absl::StatusOr<std::unique_ptr<Conn>> conn = factory_();
    if (!conn.ok()) {
      absl::MutexLock lock(&mu_);
      --open_;
      return conn.status();
    }
    return Lease(this, *std::move(conn));
  }

 private:
  ConnectionPool(int max_connections, Factory factory)
      : max_(max_connections < 1 ? 1 : max_connections), factory_(std::move(factory)) {}

  bool CanAcquire() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !idle_.empty() || open_ < max_;
  }

  void Return(std::unique_ptr<Conn> conn) {
    absl::MutexLock lock(&mu_);
    if (conn) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;
    }
  }

  const int max_;
  const Factory factory_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Conn>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace outpost::hub::sql
