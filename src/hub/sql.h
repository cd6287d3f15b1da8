// Internal to src/hub: the small SQL layer the Store is written on, so the
// hub's queries exist once and the two database drivers (SQLite, libpq)
// only move statements, parameters and rows. Callers outside src/hub use
// store.h, never this.
//
// SQL text uses PostgreSQL-style placeholders $1..$N for both drivers
// (SQLite binds them by name), stores booleans as BIGINT 0/1, times as
// BIGINT unix milliseconds, and keeps to the syntax both databases share
// (INSERT ... ON CONFLICT, RETURNING, IS DISTINCT FROM). The few places that
// differ branch on Dialect.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/functional/function_ref.h"
#include "common/status.h"

namespace outpost::hub::sql {

enum class Dialect { kSqlite, kPostgres };

// A statement parameter. Text is borrowed: it must outlive the Query call.
class Param {
 public:
  enum class Kind { kNull, kInt, kDouble, kText };

  Param(std::nullptr_t) {}  // NOLINT: implicit on purpose, like all below
  template <std::integral T>
  Param(T value) : kind_(Kind::kInt), int_(static_cast<int64_t>(value)) {}  // NOLINT
  Param(double value) : kind_(Kind::kDouble), double_(value) {}             // NOLINT
  Param(std::string_view value) : kind_(Kind::kText), text_(value) {}       // NOLINT
  Param(const std::string& value) : kind_(Kind::kText), text_(value) {}     // NOLINT
  Param(const char* value) : kind_(Kind::kText), text_(value) {}            // NOLINT
  template <typename T>
  Param(const std::optional<T>& value) {  // NOLINT: nullopt binds NULL
    if (value.has_value()) *this = Param(*value);
  }

  Kind kind() const { return kind_; }
  int64_t int_value() const { return int_; }
  double double_value() const { return double_; }
  std::string_view text() const { return text_; }

 private:
  Kind kind_ = Kind::kNull;
  int64_t int_ = 0;
  double double_ = 0;
  std::string_view text_;
};

// One result row, materialised. Accessors convert between the stored
// representations (PostgreSQL answers in text, SQLite in typed values); a
// NULL reads as 0 / "" / nullopt.
class Row {
 public:
  using Cell = std::variant<std::monostate, int64_t, double, std::string>;

  explicit Row(std::vector<Cell> cells) : cells_(std::move(cells)) {}

  size_t size() const { return cells_.size(); }
  bool IsNull(size_t i) const { return std::holds_alternative<std::monostate>(cells_.at(i)); }
  int64_t Int(size_t i) const;
  double Double(size_t i) const;
  bool Bool(size_t i) const { return Int(i) != 0; }
  std::string Text(size_t i) const;
  std::optional<std::string> OptText(size_t i) const {
    if (IsNull(i)) return std::nullopt;
    return Text(i);
  }

 private:
  std::vector<Cell> cells_;
};

struct Result {
  std::vector<Row> rows;
  // Rows inserted, updated or deleted by the statement.
  int64_t affected = 0;
};

// A database connection inside a transaction. Used by one thread at a time.
class Connection {
 public:
  virtual ~Connection() = default;
  virtual Dialect dialect() const = 0;

  // Runs one statement with parameters $1..$N.
  // Errors: AlreadyExists (unique violation), FailedPrecondition (foreign
  // key or check violation), Aborted (deadlock or serialization failure:
  // the transaction is retried), Unavailable (lock wait timed out, server
  // gone), Internal (anything else; the message has the SQL error).
  virtual absl::StatusOr<Result> QuerySpan(std::string_view sql, std::span<const Param> params) = 0;
  // Runs several statements without parameters (migrations).
  virtual absl::Status ExecScript(std::string_view sql) = 0;

  absl::StatusOr<Result> Query(std::string_view sql, std::initializer_list<Param> params = {}) {
    return QuerySpan(sql, std::span<const Param>(params.begin(), params.size()));
  }
  absl::StatusOr<Result> Query(std::string_view sql, const std::vector<Param>& params) {
    return QuerySpan(sql, std::span<const Param>(params));
  }
};

enum class TxMode {
  kRead,   // reads only: a consistent snapshot, never blocks writers
  kWrite,  // takes the write lock up front (SQLite: BEGIN IMMEDIATE)
};

// A pool of connections to one database. Thread-safe.
class Database {
 public:
  virtual ~Database() = default;
  virtual Dialect dialect() const = 0;
  // The database's URL for logs, without a password.
  virtual std::string Describe() const = 0;

  // Runs `fn` in a transaction on a pooled connection: commits if it
  // returns OK, rolls back and returns its error otherwise. When the
  // database reports a deadlock or serialization failure (Aborted) the
  // whole transaction, `fn` included, runs again, a few times at most, so
  // `fn` must only touch the database and its own outputs. `fn` must not
  // call Transact itself (it would wait for a second connection or, on
  // SQLite, for the write lock it competes with).
  virtual absl::Status Transact(TxMode mode, absl::FunctionRef<absl::Status(Connection&)> fn) = 0;
};

struct DatabaseOptions {
  int max_connections = 8;
  std::chrono::milliseconds lock_timeout{10000};
};

// `path` is a file name; its directory must exist.
absl::StatusOr<std::unique_ptr<Database>> OpenSqlite(const std::string& path,
                                                     const DatabaseOptions& options);
// `url` is a libpq connection URI (postgres://...). Unimplemented when
// built without OUTPOST_WITH_POSTGRES.
absl::StatusOr<std::unique_ptr<Database>> OpenPostgres(const std::string& url,
                                                       const DatabaseOptions& options);

// `url` without the password, for logs.
std::string RedactUrl(std::string_view url);

}  // namespace outpost::hub::sql
