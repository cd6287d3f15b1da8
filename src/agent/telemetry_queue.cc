#include "agent/telemetry_queue.h"

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/atomic_file.h"
#include "common/fault_injection.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
  seq INTEGER PRIMARY KEY,
  priority INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  bytes INTEGER NOT NULL,
  body TEXT NOT NULL,
  batch TEXT
);
CREATE INDEX IF NOT EXISTS samples_by_priority ON samples (priority, seq);
CREATE INDEX IF NOT EXISTS samples_by_batch ON samples (batch);
CREATE TABLE IF NOT EXISTS imported (name TEXT PRIMARY KEY);
)sql";

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) stmt_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return stmt_ != nullptr; }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // SQLITE_ROW / SQLITE_DONE / an error code.
  int Step() { return stmt_ ? sqlite3_step(stmt_) : SQLITE_ERROR; }
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    return text ? std::string(reinterpret_cast<const char*>(text),
                              static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
                : std::string();
  }
  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

absl::Status SqlError(sqlite3* db, std::string_view what) {
  return absl::InternalError(StrCat("telemetry queue: ", what, ": ", sqlite3_errmsg(db)));
}

// Rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  ~Transaction() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  absl::Status Begin() {
    if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return SqlError(db_, "begin");
    }
    open_ = true;
    return absl::OkStatus();
  }
  absl::Status Commit() {
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return SqlError(db_, "commit");
    }
    open_ = false;
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool open_ = false;
};

absl::StatusOr<std::optional<std::string>> GetMeta(sqlite3* db, const std::string& key) {
  Stmt s(db, "SELECT value FROM meta WHERE key = ?");
  if (!s.ok()) return SqlError(db, "read meta");
  s.Bind(1, key);
  int rc = s.Step();
  if (rc == SQLITE_ROW) return s.Text(0);
  if (rc == SQLITE_DONE) return std::nullopt;
  return SqlError(db, "read meta");
}

absl::Status SetMeta(sqlite3* db, const std::string& key, const std::string& value) {
  Stmt s(db,
         "INSERT INTO meta (key, value) VALUES (?, ?) "
         "ON CONFLICT (key) DO UPDATE SET value = excluded.value");
  if (!s.ok()) return SqlError(db, "write meta");
  s.Bind(1, key).Bind(2, value);
  if (s.Step() != SQLITE_DONE) return SqlError(db, "write meta");
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GetInt(sqlite3* db, const std::string& key, int64_t fallback = 0) {
  ASSIGN_OR_RETURN(std::optional<std::string> text, GetMeta(db, key));
  if (!text) return fallback;
  return std::strtoll(text->c_str(), nullptr, 10);
}

absl::Status SetInt(sqlite3* db, const std::string& key, int64_t value) {
  return SetMeta(db, key, StrCat(value));
}

// The stored form of one sample: metric, value, labels (if any), time_ms.
absl::StatusOr<json> Normalise(const json& sample, int64_t now_ms) {
  if (!sample.is_object() || !sample.contains("metric") || !sample["metric"].is_string() ||
      sample["metric"].get_ref<const std::string&>().empty() || !sample.contains("value") ||
      !sample["value"].is_number() || !std::isfinite(sample["value"].get<double>())) {
    return absl::InvalidArgumentError(
        StrCat("telemetry sample needs a string 'metric' and a finite number 'value', got ",
               sample.dump().substr(0, 200)));
  }
  json out = {{"metric", sample["metric"]}, {"value", sample["value"]}};
  if (sample.contains("labels")) {
    if (!sample["labels"].is_object()) {
      return absl::InvalidArgumentError(
          StrCat("telemetry sample ", sample["metric"].dump(), ": 'labels' must be an object"));
    }
    if (!sample["labels"].empty()) out["labels"] = sample["labels"];
  }
  out["time_ms"] = sample.contains("time_ms") && sample["time_ms"].is_number_integer()
                       ? sample["time_ms"]
                       : json(now_ms);
  return out;
}

absl::Status InsertSamples(sqlite3* db, const std::vector<json>& samples, Priority priority) {
  ASSIGN_OR_RETURN(int64_t next_seq, GetInt(db, "next_seq", 1));
  Stmt insert(db, "INSERT INTO samples (seq, priority, time_ms, bytes, body) VALUES (?,?,?,?,?)");
  if (!insert.ok()) return SqlError(db, "prepare insert");
  for (const json& sample : samples) {
    std::string body = sample.dump();
    insert.Bind(1, next_seq++)
        .Bind(2, static_cast<int64_t>(priority))
        .Bind(3, sample["time_ms"].get<int64_t>())
        .Bind(4, static_cast<int64_t>(body.size()))
        .Bind(5, body);
    if (insert.Step() != SQLITE_DONE) return SqlError(db, "insert sample");
    insert.Reset();
  }
  return SetInt(db, "next_seq", next_seq);
}

}  // namespace

absl::StatusOr<std::unique_ptr<TelemetryQueue>> TelemetryQueue::Open(
    TelemetryQueueOptions options) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(options.path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = absl::InternalError(
        StrCat("telemetry queue ", options.path.string(), ": cannot open: ", sqlite3_errstr(rc)));
    sqlite3_close(db);
    return status;
  }
  std::unique_ptr<TelemetryQueue> queue(new TelemetryQueue(std::move(options), db));
  sqlite3_busy_timeout(db, 5000);
  // WAL: appends do not rewrite the database; FULL: a transaction that
  // returned is on disk (see the header).
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=OFF"}) {
    RETURN_IF_ERROR(queue->Exec(pragma));
  }
  RETURN_IF_ERROR(queue->Exec(kSchema));
  ASSIGN_OR_RETURN(std::optional<std::string> epoch, GetMeta(db, "epoch"));
  if (!epoch) {
    std::mt19937_64 rng(std::random_device{}());
    char hex[17];
    snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(rng()));
    epoch = std::string(hex, 8);
    RETURN_IF_ERROR(SetMeta(db, "epoch", *epoch));
  }
  queue->epoch_ = *epoch;
  return queue;
}

TelemetryQueue::~TelemetryQueue() { sqlite3_close(db_); }

absl::Status TelemetryQueue::Exec(const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status status = absl::InternalError(
        StrCat("telemetry queue ", options_.path.string(), ": ", error ? error : "error"));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

absl::Status TelemetryQueue::Append(const json& samples, Priority priority, int64_t now_ms) {
  std::vector<json> normalised;
  if (samples.is_array()) {
    normalised.reserve(samples.size());
    for (const json& sample : samples) {
      ASSIGN_OR_RETURN(json n, Normalise(sample, now_ms));
      normalised.push_back(std::move(n));
    }
  } else {
    ASSIGN_OR_RETURN(json n, Normalise(samples, now_ms));
    normalised.push_back(std::move(n));
  }
  Transaction tx(db_);
  RETURN_IF_ERROR(tx.Begin());
  RETURN_IF_ERROR(InsertSamples(db_, normalised, priority));
  RETURN_IF_ERROR(EnforceBounds(now_ms));
  return tx.Commit();
}

// Inside the caller's transaction.
absl::Status TelemetryQueue::EnforceBounds(int64_t now_ms) {
  int64_t dropped[2] = {0, 0};
  {
    Stmt old(db_, "DELETE FROM samples WHERE priority = 0 AND time_ms < ?");
    old.Bind(1, now_ms - static_cast<int64_t>(options_.max_age.count()) * 1000);
    if (old.Step() != SQLITE_DONE) return SqlError(db_, "drop old samples");
    dropped[0] += sqlite3_changes(db_);
  }
  int64_t total = 0;
  {
    Stmt sum(db_, "SELECT COALESCE(SUM(bytes), 0) FROM samples");
    if (sum.Step() != SQLITE_ROW) return SqlError(db_, "sum sizes");
    total = sum.Int(0);
  }
  // Oldest routine samples first; events only when no routine one is left.
  for (int priority = 0; priority < 2 && total > static_cast<int64_t>(options_.max_bytes);
       ++priority) {
    int64_t cut = -1;
    {
      Stmt scan(db_, "SELECT seq, bytes FROM samples WHERE priority = ? ORDER BY seq");
      scan.Bind(1, priority);
      int64_t freed = 0;
      const int64_t excess = total - static_cast<int64_t>(options_.max_bytes);
      while (freed < excess && scan.Step() == SQLITE_ROW) {
        cut = scan.Int(0);
        freed += scan.Int(1);
      }
      total -= freed;
    }
    if (cut < 0) continue;
    Stmt drop(db_, "DELETE FROM samples WHERE priority = ? AND seq <= ?");
    drop.Bind(1, priority).Bind(2, cut);
    if (drop.Step() != SQLITE_DONE) return SqlError(db_, "drop samples");
    dropped[priority] += sqlite3_changes(db_);
  }
  if (dropped[0] == 0 && dropped[1] == 0) return absl::OkStatus();
  // Never silent: the loss is itself a (high-priority) sample. One report
  // per priority waits unsent at a time and absorbs later drops, so reports
  // cannot crowd out the samples they are about.
  for (int priority = 0; priority < 2; ++priority) {
    if (dropped[priority] == 0) continue;
    const std::string name = priority == 0 ? "routine" : "high";
    ASSIGN_OR_RETURN(int64_t so_far, GetInt(db_, StrCat("dropped_", name)));
    RETURN_IF_ERROR(SetInt(db_, StrCat("dropped_", name), so_far + dropped[priority]));
    spdlog::warn("telemetry queue: dropped {} {} samples (queue bounds {} bytes, {} s)",
                 dropped[priority], name, options_.max_bytes, options_.max_age.count());
    ASSIGN_OR_RETURN(int64_t report_seq, GetInt(db_, StrCat("drop_report.", name)));
    bool merged = false;
    if (report_seq > 0) {
      Stmt find(db_, "SELECT body FROM samples WHERE seq = ? AND batch IS NULL");
      find.Bind(1, report_seq);
      if (find.Step() == SQLITE_ROW) {
        json report = json::parse(find.Text(0), nullptr, false);
        if (report.is_object()) {
          report["value"] = report.value("value", int64_t{0}) + dropped[priority];
          report["time_ms"] = now_ms;
          std::string body = report.dump();
          Stmt update(db_, "UPDATE samples SET body = ?, bytes = ? WHERE seq = ?");
          update.Bind(1, body).Bind(2, static_cast<int64_t>(body.size())).Bind(3, report_seq);
          if (update.Step() != SQLITE_DONE) return SqlError(db_, "update drop report");
          merged = true;
        }
      }
    }
    if (merged) continue;
    ASSIGN_OR_RETURN(int64_t seq, GetInt(db_, "next_seq", 1));
    RETURN_IF_ERROR(InsertSamples(db_,
                                  {json{{"metric", "telemetry_dropped"},
                                        {"value", dropped[priority]},
                                        {"labels", {{"priority", name}}},
                                        {"time_ms", now_ms}}},
                                  Priority::kHigh));
    RETURN_IF_ERROR(SetInt(db_, StrCat("drop_report.", name), seq));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<QueuedBatch>> TelemetryQueue::NextBatch() {
  Transaction tx(db_);
  RETURN_IF_ERROR(tx.Begin());
  QueuedBatch batch;
  {
    // A batch handed out before (and not acknowledged) goes again as it was.
    Stmt pending(db_, "SELECT batch FROM samples WHERE batch IS NOT NULL ORDER BY seq LIMIT 1");
    int rc = pending.Step();
    if (rc == SQLITE_ROW)
      batch.batch_id = pending.Text(0);
    else if (rc != SQLITE_DONE)
      return SqlError(db_, "find pending batch");
  }
  if (batch.batch_id.empty()) {
    Stmt scan(db_, "SELECT seq, bytes FROM samples ORDER BY seq LIMIT ?");
    scan.Bind(1, static_cast<int64_t>(options_.batch_max_samples));
    int64_t bytes = 0, first = -1, last = -1;
    while (scan.Step() == SQLITE_ROW) {
      if (first >= 0 && bytes + scan.Int(1) > static_cast<int64_t>(options_.batch_max_bytes)) {
        break;
      }
      if (first < 0) first = scan.Int(0);
      last = scan.Int(0);
      bytes += scan.Int(1);
    }
    if (first < 0) return std::nullopt;
    ASSIGN_OR_RETURN(int64_t n, GetInt(db_, "next_batch", 1));
    batch.batch_id = StrCat(epoch_, "-", n);
    RETURN_IF_ERROR(SetInt(db_, "next_batch", n + 1));
    Stmt assign(db_, "UPDATE samples SET batch = ? WHERE seq BETWEEN ? AND ?");
    assign.Bind(1, batch.batch_id).Bind(2, first).Bind(3, last);
    if (assign.Step() != SQLITE_DONE) return SqlError(db_, "assign batch");
  }
  Stmt rows(db_, "SELECT seq, body FROM samples WHERE batch = ? ORDER BY seq");
  rows.Bind(1, batch.batch_id);
  while (rows.Step() == SQLITE_ROW) {
    json sample = json::parse(rows.Text(1), nullptr, false);
    if (sample.is_discarded()) continue;  // written by us; cannot happen short of corruption
    const uint64_t seq = static_cast<uint64_t>(rows.Int(0));
    sample["seq"] = seq;
    if (batch.first_seq == 0) batch.first_seq = seq;
    batch.last_seq = seq;
    batch.samples.push_back(std::move(sample));
  }
  RETURN_IF_ERROR(tx.Commit());
  return batch;
}

absl::Status TelemetryQueue::Acknowledge(const std::string& batch_id) {
  Stmt drop(db_, "DELETE FROM samples WHERE batch = ?");
  drop.Bind(1, batch_id);
  if (drop.Step() != SQLITE_DONE) return SqlError(db_, "acknowledge");
  return absl::OkStatus();
}

absl::StatusOr<size_t> TelemetryQueue::ImportOutbox(const fs::path& dir, int64_t now_ms) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file(ec) && entry.path().extension() == ".json") {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  size_t imported = 0;
  for (const fs::path& file : files) {
    const std::string name = file.filename().string();
    Stmt seen(db_, "SELECT 1 FROM imported WHERE name = ?");
    seen.Bind(1, name);
    if (seen.Step() == SQLITE_ROW) {  // imported before a crash, not yet removed
      fs::remove(file, ec);
      continue;
    }
    absl::StatusOr<std::string> text = ReadFile(file);
    if (!text.ok()) continue;  // vanished or unreadable: next time
    json parsed = json::parse(*text, nullptr, false);
    std::vector<json> samples;
    absl::Status valid =
        parsed.is_discarded() ? absl::InvalidArgumentError("not JSON") : absl::OkStatus();
    if (valid.ok()) {
      const json items = parsed.is_array() ? parsed : json::array({parsed});
      for (const json& item : items) {
        absl::StatusOr<json> n = Normalise(item, now_ms);
        if (!n.ok()) {
          valid = n.status();
          break;
        }
        samples.push_back(*std::move(n));
      }
    }
    if (!valid.ok()) {
      spdlog::warn("telemetry outbox: {} refused ({}); moved to rejected/", file.string(),
                   MessageOf(valid));
      fs::create_directories(dir / "rejected", ec);
      fs::rename(file, dir / "rejected" / name, ec);
      continue;
    }
    Transaction tx(db_);
    RETURN_IF_ERROR(tx.Begin());
    RETURN_IF_ERROR(InsertSamples(db_, samples, Priority::kRoutine));
    Stmt mark(db_, "INSERT INTO imported (name) VALUES (?)");
    mark.Bind(1, name);
    if (mark.Step() != SQLITE_DONE) return SqlError(db_, "record import");
    RETURN_IF_ERROR(EnforceBounds(now_ms));
    RETURN_IF_ERROR(tx.Commit());
    fs::remove(file, ec);
    imported += samples.size();
  }
  // Names whose files are gone can be forgotten.
  Stmt names(db_, "SELECT name FROM imported");
  std::vector<std::string> gone;
  while (names.Step() == SQLITE_ROW) {
    std::string name = names.Text(0);
    if (!fs::exists(dir / name, ec)) gone.push_back(std::move(name));
  }
  for (const std::string& name : gone) {
    Stmt forget(db_, "DELETE FROM imported WHERE name = ?");
    forget.Bind(1, name);
    forget.Step();
  }
  return imported;
}

namespace {

// The results database of outpost-serve's upload sinks, closed on scope exit.
class ResultsDb {
 public:
  ~ResultsDb() { sqlite3_close(db_); }
  absl::Status Open(const fs::path& path) {
    path_ = path.string();
    if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      return Error("cannot open");
    }
    sqlite3_busy_timeout(db_, 5000);
    return absl::OkStatus();
  }
  sqlite3* db() const { return db_; }
  absl::Status Error(std::string_view what) const {
    return absl::InternalError(StrCat("pipeline results ", path_, ": ", what, ": ",
                                      db_ ? sqlite3_errmsg(db_) : "out of memory"));
  }
  absl::Status Exec(const char* sql) const {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return Error(sql);
    return absl::OkStatus();
  }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

constexpr int64_t kResultsPerTransaction = 500;

}  // namespace

absl::StatusOr<size_t> TelemetryQueue::ImportResults(const fs::path& results_db, int64_t now_ms) {
  std::error_code ec;
  if (!fs::exists(results_db, ec)) return 0;
  ResultsDb results;
  RETURN_IF_ERROR(results.Open(results_db));
  {
    Stmt table(results.db(),
               "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'results'");
    int rc = table.Step();
    if (rc == SQLITE_DONE) return 0;  // the sink has not created it yet
    if (rc != SQLITE_ROW) return results.Error("read schema");
  }
  // Which file this is: a results file made anew restarts its ids at 1.
  RETURN_IF_ERROR(results.Exec("CREATE TABLE IF NOT EXISTS upload_epoch (epoch TEXT NOT NULL)"));
  std::string file_epoch;
  {
    Stmt read(results.db(), "SELECT epoch FROM upload_epoch LIMIT 1");
    if (read.Step() == SQLITE_ROW) file_epoch = read.Text(0);
  }
  if (file_epoch.empty()) {
    std::mt19937_64 rng(std::random_device{}());
    file_epoch = StrCat(rng());
    Stmt write(results.db(), "INSERT INTO upload_epoch (epoch) VALUES (?)");
    write.Bind(1, file_epoch);
    if (write.Step() != SQLITE_DONE) return results.Error("write upload_epoch");
  }
  ASSIGN_OR_RETURN(std::optional<std::string> known_epoch, GetMeta(db_, "results_epoch"));
  if (known_epoch != file_epoch) {
    Transaction tx(db_);
    RETURN_IF_ERROR(tx.Begin());
    RETURN_IF_ERROR(SetMeta(db_, "results_epoch", file_epoch));
    RETURN_IF_ERROR(SetInt(db_, "results_last_id", 0));
    RETURN_IF_ERROR(tx.Commit());
  }
  ASSIGN_OR_RETURN(int64_t last, GetInt(db_, "results_last_id"));
  Stmt select(
      results.db(),
      "SELECT id, pipeline, created_ms, body FROM results WHERE id > ? ORDER BY id LIMIT ?");
  Stmt left(results.db(), "SELECT EXISTS (SELECT 1 FROM results WHERE id <= ?)");
  Stmt remove(results.db(), "DELETE FROM results WHERE id <= ?");
  if (!select.ok() || !left.ok() || !remove.ok()) return results.Error("prepare");
  size_t imported = 0;
  std::vector<json> samples;
  while (true) {
    samples.clear();
    int64_t chunk_last = last;
    select.Bind(1, last).Bind(2, kResultsPerTransaction);
    int rc;
    while ((rc = select.Step()) == SQLITE_ROW) {
      chunk_last = select.Int(0);
      json labels = {{"pipeline", select.Text(1)}};
      const std::string body = select.Text(3);
      if (body.size() > kMaxResultBytes) {
        labels["oversize_bytes"] = body.size();
      } else {
        json parsed = json::parse(body, nullptr, false);
        labels["result"] = parsed.is_discarded() ? json(body) : std::move(parsed);
      }
      samples.push_back({{"metric", "pipeline_result"},
                         {"value", 1},
                         {"labels", std::move(labels)},
                         {"time_ms", select.Int(2)}});
    }
    select.Reset();
    if (rc != SQLITE_DONE) return results.Error("read results");
    if (!samples.empty()) {
      Transaction tx(db_);
      RETURN_IF_ERROR(tx.Begin());
      RETURN_IF_ERROR(InsertSamples(db_, samples, Priority::kRoutine));
      RETURN_IF_ERROR(SetInt(db_, "results_last_id", chunk_last));
      RETURN_IF_ERROR(EnforceBounds(now_ms));
      RETURN_IF_ERROR(tx.Commit());
      imported += samples.size();
      last = chunk_last;
    }
    // A crash before this leaves rows <= last behind: deleted next time,
    // never imported again.
    OUTPOST_CRASH_AT("telemetry.results_imported");
    // Deletes only when there is something to delete: an idle heartbeat
    // must not write (and fsync) the file.
    bool stale = false;
    if (last > 0) {
      left.Bind(1, last);
      if (left.Step() != SQLITE_ROW) return results.Error("read imported results");
      stale = left.Int(0) != 0;
      left.Reset();
    }
    if (stale) {
      remove.Bind(1, last);
      if (remove.Step() != SQLITE_DONE) return results.Error("delete imported results");
      remove.Reset();
    }
    if (samples.size() < static_cast<size_t>(kResultsPerTransaction)) break;
  }
  return imported;
}

absl::StatusOr<int64_t> TelemetryQueue::GetCounter(const std::string& key) {
  return GetInt(db_, StrCat("counter.", key));
}

absl::Status TelemetryQueue::SetCounter(const std::string& key, int64_t value) {
  return SetInt(db_, StrCat("counter.", key), value);
}

absl::StatusOr<QueueStats> TelemetryQueue::Stats() {
  QueueStats stats;
  Stmt s(db_,
         "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(priority = 1), 0) FROM samples");
  if (s.Step() != SQLITE_ROW) return SqlError(db_, "stats");
  stats.samples = static_cast<uint64_t>(s.Int(0));
  stats.bytes = static_cast<uint64_t>(s.Int(1));
  stats.high_priority = static_cast<uint64_t>(s.Int(2));
  ASSIGN_OR_RETURN(int64_t next_seq, GetInt(db_, "next_seq", 1));
  ASSIGN_OR_RETURN(int64_t routine, GetInt(db_, "dropped_routine"));
  ASSIGN_OR_RETURN(int64_t high, GetInt(db_, "dropped_high"));
  stats.next_seq = static_cast<uint64_t>(next_seq);
  stats.dropped_routine = static_cast<uint64_t>(routine);
  stats.dropped_high = static_cast<uint64_t>(high);
  return stats;
}

}  // namespace outpost::agent
