#include "serve/pipeline/sinks.h"

#include <sqlite3.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/http_client.h"

namespace outpost::serve::pipeline {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoError(int err, std::string_view what) {
  absl::Status s = absl::ErrnoToStatus(err, "");
  return absl::Status(s.code(), StrCat(what, ": ", std::strerror(err)));
}

class JsonlSink : public Sink {
 public:
  explicit JsonlSink(const SinkConfig& config)
      : config_(config), name_(StrCat("jsonl:", config.path)) {}
  ~JsonlSink() override {
    if (file_ != nullptr) std::fclose(file_);
  }

  absl::Status Open() {
    std::error_code ec;
    fs::path dir = fs::path(config_.path).parent_path();
    if (!dir.empty()) fs::create_directories(dir, ec);
    file_ = std::fopen(config_.path.c_str(), "ae");
    if (file_ == nullptr) return ErrnoError(errno, StrCat("cannot open ", config_.path));
    size_ = static_cast<int64_t>(fs::file_size(config_.path, ec));
    if (ec) size_ = 0;
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view json) override {
    int64_t line = static_cast<int64_t>(json.size()) + 1;
    if (size_ > 0 && size_ + line > config_.max_bytes) RETURN_IF_ERROR(Rotate());
    if (std::fwrite(json.data(), 1, json.size(), file_) != json.size() ||
        std::fputc('\n', file_) == EOF || std::fflush(file_) != 0) {
      int err = errno;
      std::clearerr(file_);
      return ErrnoError(err, StrCat("cannot write ", config_.path));
    }
    size_ += line;
    return absl::OkStatus();
  }

  const std::string& name() const override { return name_; }

 private:
  absl::Status Rotate() {
    std::fclose(file_);
    file_ = nullptr;
    std::error_code ec;
    fs::remove(StrCat(config_.path, ".", config_.max_files), ec);
    for (int i = config_.max_files - 1; i >= 1; --i) {
      fs::path from = StrCat(config_.path, ".", i);
      if (fs::exists(from, ec)) fs::rename(from, StrCat(config_.path, ".", i + 1), ec);
    }
    fs::rename(config_.path, StrCat(config_.path, ".1"), ec);
    if (ec) return absl::InternalError(StrCat("cannot rotate ", config_.path, ": ", ec.message()));
    return Open();
  }

  const SinkConfig config_;
  const std::string name_;
  FILE* file_ = nullptr;
  int64_t size_ = 0;
};

class StdoutSink : public Sink {
 public:
  absl::Status Write(std::string_view json) override {
    // Pipelines share stdout: one whole line at a time.
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (std::fwrite(json.data(), 1, json.size(), stdout) != json.size() ||
        std::fputc('\n', stdout) == EOF || std::fflush(stdout) != 0) {
      return ErrnoError(errno, "cannot write to stdout");
    }
    return absl::OkStatus();
  }
  const std::string& name() const override { return name_; }

 private:
  const std::string name_ = "stdout";
};

class WebhookSink : public Sink {
 public:
  WebhookSink(const SinkConfig& config, std::unique_ptr<HttpClient> client)
      : config_(config), name_(StrCat("webhook:", config.url)), client_(std::move(client)) {}

  absl::Status Write(std::string_view json) override {
    HttpRequest request;
    request.method = "POST";
    request.url = config_.url;
    request.body.assign(json);
    request.content_type = "application/json";
    request.timeout = config_.timeout;
    std::chrono::milliseconds backoff = config_.backoff;
    absl::Status last;
    for (int attempt = 0; attempt <= config_.retries; ++attempt) {
      if (attempt > 0) {
        std::this_thread::sleep_for(backoff);
        backoff *= 2;
      }
      absl::StatusOr<HttpResponse> response = client_->Send(request);
      if (!response.ok()) {
        last = response.status();
        if (absl::IsInvalidArgument(last)) break;  // a malformed URL stays malformed
        continue;
      }
      if (response->status >= 200 && response->status < 300) return absl::OkStatus();
      last = HttpErrorStatus(*response, StrCat("webhook ", config_.url));
      if (response->status != 429 && response->status < 500) break;
    }
    return absl::Status(last.code(),
                        StrCat(MessageOf(last), " (after ", config_.retries + 1, " attempt(s))"));
  }
  const std::string& name() const override { return name_; }

 private:
  const SinkConfig config_;
  const std::string name_;
  std::unique_ptr<HttpClient> client_;
};

class QueueSink : public Sink {
 public:
  QueueSink(const SinkConfig& config, std::string pipeline)
      : config_(config), name_(StrCat("queue:", config.path)), pipeline_(std::move(pipeline)) {}
  ~QueueSink() override {
    sqlite3_finalize(insert_);
    sqlite3_finalize(trim_);
    sqlite3_close(db_);
  }

  absl::Status Open() {
    std::error_code ec;
    fs::path dir = fs::path(config_.path).parent_path();
    if (!dir.empty()) fs::create_directories(dir, ec);
    if (sqlite3_open_v2(config_.path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      return Error("cannot open");
    }
    sqlite3_busy_timeout(db_, 5000);
    // Every write is on disk when Write returns (a result queue must survive
    // a power cut); WAL keeps that to one fsync per result.
    RETURN_IF_ERROR(Exec("PRAGMA journal_mode=WAL"));
    RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL"));
    RETURN_IF_ERROR(
        Exec("CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
             "pipeline TEXT NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL)"));
    if (sqlite3_prepare_v2(db_, "INSERT INTO results (pipeline, created_ms, body) VALUES (?, ?, ?)",
                           -1, &insert_, nullptr) != SQLITE_OK ||
        sqlite3_prepare_v2(db_, "DELETE FROM results WHERE id <= (SELECT MAX(id) FROM results) - ?",
                           -1, &trim_, nullptr) != SQLITE_OK) {
      return Error("cannot prepare statements on");
    }
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view json) override {
    int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    sqlite3_reset(insert_);
    sqlite3_bind_text(insert_, 1, pipeline_.data(), static_cast<int>(pipeline_.size()),
                      SQLITE_STATIC);
    sqlite3_bind_int64(insert_, 2, now_ms);
    sqlite3_bind_text(insert_, 3, json.data(), static_cast<int>(json.size()), SQLITE_STATIC);
    int rc = sqlite3_step(insert_);
    sqlite3_reset(insert_);
    if (rc != SQLITE_DONE) return Error("cannot insert into");
    // Ids only grow, so everything more than max_rows below the newest is
    // the overflow (a consumer that deleted rows leaves gaps; that only
    // makes this keep fewer).
    if (++writes_ % 64 == 0 || writes_ == 1) {
      sqlite3_reset(trim_);
      sqlite3_bind_int64(trim_, 1, config_.max_rows);
      if (sqlite3_step(trim_) != SQLITE_DONE) {
        sqlite3_reset(trim_);
        return Error("cannot trim");
      }
      dropped_ += sqlite3_changes(db_);
      sqlite3_reset(trim_);
    }
    return absl::OkStatus();
  }
  int64_t dropped() const override { return dropped_; }
  const std::string& name() const override { return name_; }

 private:
  absl::Status Exec(const char* sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
      std::string text = message ? message : "unknown error";
      sqlite3_free(message);
      return absl::InternalError(StrCat("result queue ", config_.path, ": ", sql, ": ", text));
    }
    return absl::OkStatus();
  }
  absl::Status Error(std::string_view what) {
    int code = db_ ? sqlite3_errcode(db_) : SQLITE_CANTOPEN;
    std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
    std::string text = StrCat("result queue: ", what, " ", config_.path, ": ", message);
    if (code == SQLITE_FULL) return absl::ResourceExhaustedError(text);
    if (code == SQLITE_CANTOPEN || code == SQLITE_PERM || code == SQLITE_READONLY) {
      return absl::FailedPreconditionError(text);
    }
    return absl::InternalError(text);
  }

  const SinkConfig config_;
  const std::string name_;
  const std::string pipeline_;
  sqlite3* db_ = nullptr;
  sqlite3_stmt* insert_ = nullptr;
  sqlite3_stmt* trim_ = nullptr;
  int64_t writes_ = 0;
  int64_t dropped_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Sink>> OpenSink(const SinkConfig& config,
                                               std::string_view pipeline) {
  switch (config.type) {
    case SinkType::kJsonl: {
      auto sink = std::make_unique<JsonlSink>(config);
      RETURN_IF_ERROR(sink->Open());
      return sink;
    }
    case SinkType::kStdout:
      return std::make_unique<StdoutSink>();
    case SinkType::kWebhook: {
      HttpClientOptions options;
      options.timeout = config.timeout;
      options.connect_timeout = config.timeout;
      ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> client, HttpClient::Create(options));
      return std::make_unique<WebhookSink>(config, std::move(client));
    }
    case SinkType::kQueue: {
      auto sink = std::make_unique<QueueSink>(config, std::string(pipeline));
      RETURN_IF_ERROR(sink->Open());
      return sink;
    }
  }
  return absl::InvalidArgumentError("unknown sink type");
}

}  // namespace outpost::serve::pipeline
