// PostgreSQL driver on libpq: a bounded pool of connections, parameters
// sent typed (int8, float8, text) and results read as text, write
// transactions at READ COMMITTED (the Store's statements are written to be
// race-free there: conditional UPDATE ... RETURNING, row locks), read
// transactions at REPEATABLE READ READ ONLY so a multi-statement read sees
// one snapshot. Deadlocks and serialization failures are retried; a broken
// connection is dropped and replaced.
#include "hub/sql.h"

#if OUTPOST_WITH_POSTGRES

#include <libpq-fe.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "hub/connection_pool.h"

namespace outpost::hub::sql {
namespace {

constexpr int kMaxAttempts = 4;
// PostgreSQL type oids (pg_type.dat), so parameters need no casts in SQL.
constexpr Oid kInt8Oid = 20;
constexpr Oid kFloat8Oid = 701;
constexpr Oid kTextOid = 25;

struct ResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

absl::Status PgError(const PGresult* result, PGconn* conn, std::string_view what) {
  std::string message = result != nullptr ? PQresultErrorMessage(result) : PQerrorMessage(conn);
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  message = StrCat("PostgreSQL: ", what, ": ", message);
  if (PQstatus(conn) != CONNECTION_OK) return absl::UnavailableError(message);
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  std::string_view code = state != nullptr ? state : "";
  if (code == "23505") return absl::AlreadyExistsError(message);
  if (code == "40001" || code == "40P01") return absl::AbortedError(message);
  if (code == "55P03" || code == "57014") {
    return absl::UnavailableError(StrCat(message, " (a lock was held too long)"));
  }
  std::string_view cls = code.substr(0, 2);
  if (cls == "23") return absl::FailedPreconditionError(message);
  if (cls == "08" || cls == "57") return absl::UnavailableError(message);
  if (cls == "53") return absl::ResourceExhaustedError(message);
  if (cls == "22") return absl::InvalidArgumentError(message);
  if (cls == "28" || code == "42501") return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

class PgConnection final : public Connection {
 public:
  static absl::StatusOr<std::unique_ptr<PgConnection>> Open(const std::string& url,
                                                            const DatabaseOptions& options) {
    auto conn = std::unique_ptr<PgConnection>(new PgConnection(PQconnectdb(url.c_str())));
    if (conn->conn_ == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
    if (PQstatus(conn->conn_) != CONNECTION_OK) {
      std::string message = PQerrorMessage(conn->conn_);
      while (!message.empty() && message.back() == '\n') message.pop_back();
      return absl::UnavailableError(
          StrCat("cannot connect to PostgreSQL at ", RedactUrl(url), ": ", message));
    }
    // NOTICEs ("relation already exists, skipping") would go to stderr.
    PQsetNoticeProcessor(
        conn->conn_, [](void*, const char*) {}, nullptr);
    RETURN_IF_ERROR(conn->ExecScript(
        StrCat("SET lock_timeout = ", options.lock_timeout.count(),
               "; SET client_encoding = 'UTF8'; SET application_name = 'outpost-hub'")));
    return conn;
  }

  ~PgConnection() override { PQfinish(conn_); }

  Dialect dialect() const override { return Dialect::kPostgres; }
  bool broken() const { return PQstatus(conn_) != CONNECTION_OK; }

  absl::StatusOr<Result> QuerySpan(std::string_view sql, std::span<const Param> params) override {
    std::vector<Oid> types(params.size(), 0);
    std::vector<std::string> storage(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      const Param& p = params[i];
      switch (p.kind()) {
        case Param::Kind::kNull:
          break;
        case Param::Kind::kInt:
          types[i] = kInt8Oid;
          storage[i] = StrCat(p.int_value());
          values[i] = storage[i].c_str();
          break;
        case Param::Kind::kDouble:
          types[i] = kFloat8Oid;
          storage[i] = StrCat(p.double_value());  // shortest exact; "inf"/"nan" parse too
          values[i] = storage[i].c_str();
          break;
        case Param::Kind::kText:
          if (p.text().find('\0') != std::string_view::npos) {
            return absl::InvalidArgumentError("text contains a NUL byte");
          }
          types[i] = kTextOid;
          storage[i] = std::string(p.text());
          values[i] = storage[i].c_str();
          break;
      }
    }
    std::string text(sql);
    ResultPtr result(PQexecParams(conn_, text.c_str(), static_cast<int>(params.size()),
                                  types.data(), values.data(), nullptr, nullptr, 0));
    ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      return PgError(result.get(), conn_, StrCat("cannot run ", sql));
    }
    Result out;
    const char* tuples = PQcmdTuples(result.get());
    if (tuples != nullptr && *tuples != '\0') {
      std::from_chars(tuples, tuples + std::strlen(tuples), out.affected);
    }
    int rows = PQntuples(result.get());
    int columns = PQnfields(result.get());
    out.rows.reserve(rows);
    for (int r = 0; r < rows; ++r) {
      std::vector<Row::Cell> cells(columns);
      for (int c = 0; c < columns; ++c) {
        if (!PQgetisnull(result.get(), r, c)) {
          cells[c] = std::string(PQgetvalue(result.get(), r, c), PQgetlength(result.get(), r, c));
        }
      }
      out.rows.emplace_back(std::move(cells));
    }
    return out;
  }

  absl::Status ExecScript(std::string_view sql) override {
    std::string text(sql);
    ResultPtr result(PQexec(conn_, text.c_str()));
    ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      return PgError(result.get(), conn_, StrCat("cannot run ", sql.substr(0, 200)));
    }
    return absl::OkStatus();
  }

 private:
  explicit PgConnection(PGconn* conn) : conn_(conn) {}

  PGconn* conn_;
};

class PostgresDatabase final : public Database {
 public:
  PostgresDatabase(std::string url, std::unique_ptr<ConnectionPool<PgConnection>> pool)
      : url_(std::move(url)), pool_(std::move(pool)) {}

  Dialect dialect() const override { return Dialect::kPostgres; }
  std::string Describe() const override { return RedactUrl(url_); }

  absl::Status Transact(TxMode mode, absl::FunctionRef<absl::Status(Connection&)> fn) override {
    const char* begin =
        mode == TxMode::kWrite ? "BEGIN" : "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    absl::Status status;
    for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
      ASSIGN_OR_RETURN(auto conn, pool_->Acquire());
      status = conn->ExecScript(begin);
      if (!status.ok()) {
        // A pooled connection the server closed (restart, idle timeout):
        // nothing was done yet, so try again on a fresh one.
        if (conn->broken()) {
          conn.Discard();
          continue;
        }
        return status;
      }
      status = fn(*conn);
      if (status.ok()) {
        status = conn->ExecScript("COMMIT");
        if (!status.ok() && conn->broken()) {
          conn.Discard();
          return absl::UnavailableError(
              StrCat("lost the PostgreSQL connection during COMMIT; the change may or may not "
                     "have been applied: ",
                     MessageOf(status)));
        }
      } else {
        (void)conn->ExecScript("ROLLBACK");
      }
      if (conn->broken()) conn.Discard();
      if (!absl::IsAborted(status) || attempt == kMaxAttempts) return status;
      // Deadlock or serialization failure: back off a little, with jitter
      // so the competing transactions do not collide again in step.
      thread_local std::minstd_rand random(std::random_device{}());
      std::this_thread::sleep_for(std::chrono::milliseconds(1 + random() % (5 * attempt)));
    }
    return status;
  }

 private:
  const std::string url_;
  std::unique_ptr<ConnectionPool<PgConnection>> pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Database>> OpenPostgres(const std::string& url,
                                                       const DatabaseOptions& options) {
  ASSIGN_OR_RETURN(auto pool, ConnectionPool<PgConnection>::Create(options.max_connections, [=] {
                     return PgConnection::Open(url, options);
                   }));
  return std::make_unique<PostgresDatabase>(url, std::move(pool));
}

}  // namespace outpost::hub::sql

#else  // !OUTPOST_WITH_POSTGRES

namespace outpost::hub::sql {

absl::StatusOr<std::unique_ptr<Database>> OpenPostgres(const std::string& url,
                                                       const DatabaseOptions& options) {
  return absl::UnimplementedError(
      "this outpost-hub was built without PostgreSQL support (OUTPOST_WITH_POSTGRES=OFF); "
      "install libpq-dev and rebuild, or use SQLite");
}

}  // namespace outpost::hub::sql

#endif
