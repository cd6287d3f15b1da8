// The device's store-and-forward telemetry queue: <state>/telemetry.db
// (SQLite, WAL). Everything the agent reports as telemetry — heartbeats,
// alert-worthy events, pipeline results dropped into the outbox — is
// written here before anything is sent, and deleted only once the hub has
// acknowledged the batch that carried it (docs/agent.md "Telemetry queue").
//
// - Order: every sample gets the next per-device sequence number (`seq`,
//   1, 2, ...) when it is appended; batches carry samples in seq order and
//   the next batch starts where the acknowledged one ended.
// - Exactly once: a batch's id and contents are fixed (persisted) when it
//   is first handed out and handed out again, unchanged, until acknowledged
//   — across retries and agent restarts — so the hub, which stores a batch
//   once per (device, batch_id), stores each sample once. Ids are
//   "<queue epoch>-<n>": a fresh epoch (random) when the file is created, so
//   a lost file cannot make new batches collide with stored ones.
// - Bounds: total sample bytes <= max_bytes and routine samples younger
//   than max_age. Over the size bound the oldest routine samples go first;
//   high-priority samples (events) only when no routine sample is left.
//   Every drop is counted and reported as a high-priority sample
//   `telemetry_dropped` (value = samples lost, labels {priority}) appended
//   right after the drop; while that report is not yet sent, later drops
//   add to its value instead of queueing more reports.
// - Durability: synchronous=FULL (each append/ack transaction is on disk
//   when it returns: the queue exists to survive power cuts, and it is
//   written a few times per telemetry interval, so the extra fsync is free).
//
// Thread safety: a TelemetryQueue is used by one thread (the reporter's).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

struct sqlite3;

namespace outpost::agent {

enum class Priority { kRoutine = 0, kHigh = 1 };

struct TelemetryQueueOptions {
  std::filesystem::path path;                   // <state>/telemetry.db
  uint64_t max_bytes = 16ull << 20;             // sum of the samples' JSON sizes
  std::chrono::seconds max_age{7 * 24 * 3600};  // routine samples only
  size_t batch_max_samples = 500;
  size_t batch_max_bytes = 256u << 10;
};

struct QueueStats {
  uint64_t samples = 0;
  uint64_t bytes = 0;
  uint64_t high_priority = 0;
  uint64_t next_seq = 1;
  uint64_t dropped_routine = 0;  // since the file was created
  uint64_t dropped_high = 0;
};

// One batch to ship: POST /telemetry {"batch_id", "samples"}; each sample
// carries its own "seq" and "time_ms".
struct QueuedBatch {
  std::string batch_id;
  nlohmann::json samples = nlohmann::json::array();
  uint64_t first_seq = 0, last_seq = 0;
};

class TelemetryQueue {
 public:
  // Opens or creates the database. Errors: Internal (SQLite's message and
  // the path) when the file cannot be opened or is not a queue.
  static absl::StatusOr<std::unique_ptr<TelemetryQueue>> Open(TelemetryQueueOptions options);
  ~TelemetryQueue();

  // Appends samples ({"metric", "value", "labels"?}; "time_ms" added when
  // missing) in one transaction, numbering them, then enforces the bounds
  // at `now_ms`. InvalidArgument for a sample without a string metric and
  // a finite number value (nothing is appended).
  absl::Status Append(const nlohmann::json& samples, Priority priority, int64_t now_ms);

  // The batch to send: the one handed out earlier and not yet acknowledged,
  // else the oldest samples (up to the batch limits) under a new id.
  // nullopt when the queue is empty.
  absl::StatusOr<std::optional<QueuedBatch>> NextBatch();
  // Deletes the samples of `batch_id` (the hub stored it). Unknown ids are
  // ignored (already acknowledged).
  absl::Status Acknowledge(const std::string& batch_id);

  // Imports `<dir>/*.json` (each a JSON array of samples, or one sample,
  // written by another program with temp + rename) as routine samples, once
  // each — the file's name is recorded in the same transaction — then
  // removes the files. A file that does not parse is moved to
  // `<dir>/rejected/` and logged. Returns the number of samples imported.
  absl::StatusOr<size_t> ImportOutbox(const std::filesystem::path& dir, int64_t now_ms);

  // Moves the pipeline results in `results_db` (outpost-serve's `upload:
  // true` queue sinks: table results(id, pipeline, created_ms, body)) into
  // this queue as routine samples `pipeline_result` (value 1, time_ms =
  // created_ms, labels {"pipeline", "result": the result object}; a body
  // over kMaxResultBytes ships as labels {"pipeline", "oversize_bytes"}), in
  // id order, then deletes them from `results_db`. Exactly once across
  // crashes: the last imported id is recorded in the same transaction as
  // the samples, and rows at or below it are only deleted, never imported
  // again. A results file created anew (its random `upload_epoch` differs
  // from the recorded one) starts over from id 0. No file or no table yet:
  // 0. Returns the number of results imported.
  static constexpr size_t kMaxResultBytes = 64u << 10;
  absl::StatusOr<size_t> ImportResults(const std::filesystem::path& results_db, int64_t now_ms);

  // A persisted integer (e.g. the last history seq turned into events);
  // 0 when unset.
  absl::StatusOr<int64_t> GetCounter(const std::string& key);
  absl::Status SetCounter(const std::string& key, int64_t value);

  absl::StatusOr<QueueStats> Stats();

 private:
  TelemetryQueue(TelemetryQueueOptions options, sqlite3* db)
      : options_(std::move(options)), db_(db) {}
  absl::Status Exec(const char* sql);
  absl::Status EnforceBounds(int64_t now_ms);

  const TelemetryQueueOptions options_;
  sqlite3* db_;
  std::string epoch_;
};

}  // namespace outpost::agent
