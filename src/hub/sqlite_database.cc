// SQLite driver: WAL journal (readers never block the writer), FULL sync
// (an acknowledged write survives a power cut), foreign keys on, a busy
// timeout so connections and processes queue for the write lock instead of
// failing, and write transactions that take that lock up front (BEGIN
// IMMEDIATE) so two writers never deadlock upgrading from a read lock.
#include <sqlite3.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <unordered_map>

#include "hub/connection_pool.h"
#include "hub/sql.h"

namespace outpost::hub::sql {
namespace {

// Prepared statements kept per connection; the hub's statements are few,
// but filters build variants, so the cache is bounded.
constexpr size_t kMaxCachedStatements = 256;

absl::Status SqliteError(sqlite3* db, int rc, std::string_view what) {
  int extended = db != nullptr ? sqlite3_extended_errcode(db) : rc;
  std::string message =
      StrCat("SQLite: ", what, ": ", db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      if (extended == SQLITE_CONSTRAINT_UNIQUE || extended == SQLITE_CONSTRAINT_PRIMARYKEY) {
        return absl::AlreadyExistsError(message);
      }
      return absl::FailedPreconditionError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(
          StrCat(message, " (another connection or process held the write lock too long)"));
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_CANTOPEN:
      return absl::PermissionDeniedError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

constexpr std::chrono::milliseconds kMaxPragmaPause{100};

class SqliteConnection final : public Connection {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteConnection>> Open(const std::string& path,
                                                                const DatabaseOptions& options) {
    sqlite3* db = nullptr;
    int rc =
        sqlite3_open_v2(path.c_str(), &db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    auto conn = std::unique_ptr<SqliteConnection>(new SqliteConnection(db));
    if (rc != SQLITE_OK) return SqliteError(db, rc, StrCat("cannot open ", path));
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, static_cast<int>(options.lock_timeout.count()));
    // Switching a fresh file to WAL while another process creates or
    // migrates it can fail with SQLITE_BUSY at once, without the busy
    // handler (SQLite will not wait while holding a lock it must upgrade):
    // retry until the lock timeout.
    const auto deadline = std::chrono::steady_clock::now() + options.lock_timeout;
    for (std::chrono::milliseconds pause{5};; pause = std::min(pause * 2, kMaxPragmaPause)) {
      absl::Status pragmas = conn->ExecScript(
          "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;");
      if (pragmas.ok()) break;
      if (!absl::IsUnavailable(pragmas) || std::chrono::steady_clock::now() + pause > deadline) {
        return pragmas;
      }
      std::this_thread::sleep_for(pause);
    }
    return conn;
  }

  ~SqliteConnection() override {
    for (auto& [sql, statement] : cache_) sqlite3_finalize(statement.stmt);
    sqlite3_close_v2(db_);
  }

  Dialect dialect() const override { return Dialect::kSqlite; }

  absl::StatusOr<Result> QuerySpan(std::string_view sql, std::span<const Param> params) override {
    ASSIGN_OR_RETURN(Statement * statement, Prepare(sql));
    sqlite3_stmt* stmt = statement->stmt;
    // Unbinds borrowed text and resets on every path out.
    struct Reset {
      sqlite3_stmt* stmt;
      ~Reset() {
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
      }
    } reset{stmt};
    for (size_t slot = 0; slot < statement->param_of_slot.size(); ++slot) {
      size_t index = statement->param_of_slot[slot];
      if (index >= params.size()) {
        return absl::InternalError(StrCat("SQL statement uses $", index + 1, " but has ",
                                          params.size(), " parameters: ", sql));
      }
      RETURN_IF_ERROR(Bind(stmt, static_cast<int>(slot + 1), params[index]));
    }
    Result result;
    int columns = sqlite3_column_count(stmt);
    while (true) {
      int rc = sqlite3_step(stmt);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) return SqliteError(db_, rc, StrCat("cannot run ", sql));
      std::vector<Row::Cell> cells(columns);
      for (int c = 0; c < columns; ++c) {
        switch (sqlite3_column_type(stmt, c)) {
          case SQLITE_INTEGER:
            cells[c] = static_cast<int64_t>(sqlite3_column_int64(stmt, c));
            break;
          case SQLITE_FLOAT:
            cells[c] = sqlite3_column_double(stmt, c);
            break;
          case SQLITE_NULL:
            break;
          default: {
            const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
            cells[c] = std::string(text, sqlite3_column_bytes(stmt, c));
          }
        }
      }
      result.rows.emplace_back(std::move(cells));
    }
    if (!sqlite3_stmt_readonly(stmt)) result.affected = sqlite3_changes64(db_);
    return result;
  }

  absl::Status ExecScript(std::string_view sql) override {
    std::string text(sql);
    char* error = nullptr;
    int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error);
    if (rc == SQLITE_OK) return absl::OkStatus();
    sqlite3_free(error);
    return SqliteError(db_, rc, StrCat("cannot run ", sql.substr(0, 200)));
  }

  bool in_transaction() const { return sqlite3_get_autocommit(db_) == 0; }

 private:
  struct Statement {
    sqlite3_stmt* stmt = nullptr;
    // For each bind slot (1-based in SQLite, 0-based here), which $N.
    std::vector<size_t> param_of_slot;
  };

  explicit SqliteConnection(sqlite3* db) : db_(db) {}

  absl::StatusOr<Statement*> Prepare(std::string_view sql) {
    std::string key(sql);
    auto it = cache_.find(key);
    if (it != cache_.end()) return &it->second;
    if (cache_.size() >= kMaxCachedStatements) {
      for (auto& [unused, statement] : cache_) sqlite3_finalize(statement.stmt);
      cache_.clear();
    }
    Statement statement;
    int rc = sqlite3_prepare_v3(db_, key.data(), static_cast<int>(key.size()),
                                SQLITE_PREPARE_PERSISTENT, &statement.stmt, nullptr);
    if (rc != SQLITE_OK) return SqliteError(db_, rc, StrCat("cannot prepare ", sql));
    int slots = sqlite3_bind_parameter_count(statement.stmt);
    for (int slot = 1; slot <= slots; ++slot) {
      const char* name = sqlite3_bind_parameter_name(statement.stmt, slot);
      size_t number = 0;
      if (name != nullptr && name[0] == '$') {
        auto [end, ec] = std::from_chars(name + 1, name + std::strlen(name), number);
        if (ec != std::errc() || *end != '\0') number = 0;
      }
      if (number == 0) {
        sqlite3_finalize(statement.stmt);
        return absl::InternalError(StrCat("SQL parameters must be $1..$N: ", sql));
      }
      statement.param_of_slot.push_back(number - 1);
    }
    return &cache_.emplace(std::move(key), std::move(statement)).first->second;
  }

  absl::Status Bind(sqlite3_stmt* stmt, int slot, const Param& param) {
    int rc = SQLITE_OK;
    switch (param.kind()) {
      case Param::Kind::kNull:
        rc = sqlite3_bind_null(stmt, slot);
        break;
      case Param::Kind::kInt:
        rc = sqlite3_bind_int64(stmt, slot, param.int_value());
        break;
      case Param::Kind::kDouble:
        rc = sqlite3_bind_double(stmt, slot, param.double_value());
        break;
      case Param::Kind::kText:
        // PostgreSQL text cannot hold NUL; refuse it here too so both
        // backends accept the same data.
        if (param.text().find('\0') != std::string_view::npos) {
          return absl::InvalidArgumentError("text contains a NUL byte");
        }
        rc = sqlite3_bind_text64(stmt, slot, param.text().data(), param.text().size(),
                                 SQLITE_STATIC, SQLITE_UTF8);
        break;
    }
    if (rc != SQLITE_OK) return SqliteError(db_, rc, "cannot bind a parameter");
    return absl::OkStatus();
  }

  sqlite3* db_;
  std::unordered_map<std::string, Statement> cache_;
};

class SqliteDatabase final : public Database {
 public:
  SqliteDatabase(std::string path, std::unique_ptr<ConnectionPool<SqliteConnection>> pool)
      : path_(std::move(path)), pool_(std::move(pool)) {}

  Dialect dialect() const override { return Dialect::kSqlite; }
  std::string Describe() const override { return StrCat("sqlite://", path_); }

  absl::Status Transact(TxMode mode, absl::FunctionRef<absl::Status(Connection&)> fn) override {
    ASSIGN_OR_RETURN(auto conn, pool_->Acquire());
    RETURN_IF_ERROR(conn->ExecScript(mode == TxMode::kWrite ? "BEGIN IMMEDIATE" : "BEGIN"));
    absl::Status status = fn(*conn);
    if (status.ok()) status = conn->ExecScript("COMMIT");
    // SQLite rolls back by itself after some errors (SQLITE_FULL, ...).
    if (conn->in_transaction()) {
      absl::Status rollback = conn->ExecScript("ROLLBACK");
      if (!rollback.ok()) conn.Discard();  // never hand out a connection mid-transaction
    }
    return status;
  }

 private:
  const std::string path_;
  std::unique_ptr<ConnectionPool<SqliteConnection>> pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Database>> OpenSqlite(const std::string& path,
                                                     const DatabaseOptions& options) {
  ASSIGN_OR_RETURN(auto pool,
                   ConnectionPool<SqliteConnection>::Create(options.max_connections, [=] {
                     return SqliteConnection::Open(path, options);
                   }));
  return std::make_unique<SqliteDatabase>(path, std::move(pool));
}

}  // namespace outpost::hub::sql
