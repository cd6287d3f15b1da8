#include "agent/telemetry_queue.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kNow = 1'700'000'000'000;

class TelemetryQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           StrCat("outpost-queue-test-", getpid(), "-",
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<TelemetryQueue> Open(TelemetryQueueOptions options = {}) {
    options.path = dir_ / "telemetry.db";
    auto queue = TelemetryQueue::Open(std::move(options));
    EXPECT_TRUE(queue.ok()) << MessageOf(queue.status());
    return queue.ok() ? *std::move(queue) : nullptr;
  }
  static json Samples(int from, int count, const std::string& metric = "m") {
    json out = json::array();
    for (int i = from; i < from + count; ++i) out.push_back({{"metric", metric}, {"value", i}});
    return out;
  }
  // Drains the queue, acknowledging every batch; returns the values in order.
  static std::vector<double> Drain(TelemetryQueue& queue, std::vector<uint64_t>* seqs = nullptr) {
    std::vector<double> values;
    while (true) {
      auto batch = queue.NextBatch();
      EXPECT_TRUE(batch.ok());
      if (!batch.ok() || !batch->has_value()) break;
      for (const json& s : (*batch)->samples) {
        values.push_back(s["value"].get<double>());
        if (seqs) seqs->push_back(s["seq"].get<uint64_t>());
      }
      EXPECT_TRUE(queue.Acknowledge((*batch)->batch_id).ok());
    }
    return values;
  }

  fs::path dir_;
};

TEST_F(TelemetryQueueTest, BatchesKeepOrderAndSequenceAcrossReopen) {
  {
    auto queue = Open({.batch_max_samples = 4});
    ASSERT_TRUE(queue->Append(Samples(0, 6), Priority::kRoutine, kNow).ok());
  }
  auto queue = Open({.batch_max_samples = 4});  // a restarted agent
  ASSERT_TRUE(queue->Append(Samples(6, 3), Priority::kRoutine, kNow).ok());
  std::vector<uint64_t> seqs;
  EXPECT_EQ(Drain(*queue, &seqs), (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(seqs, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(queue->Stats()->samples, 0u);
  EXPECT_EQ(queue->Stats()->next_seq, 10u);
  EXPECT_FALSE(queue->NextBatch()->has_value());
}

TEST_F(TelemetryQueueTest, SamplesCarryTheirTimeAndRefuseBadInput) {
  auto queue = Open();
  ASSERT_TRUE(queue
                  ->Append(json::array({{{"metric", "a"}, {"value", 1}, {"time_ms", kNow - 5}},
                                        {{"metric", "b"}, {"value", 2}, {"labels", {{"k", "v"}}}}}),
                           Priority::kRoutine, kNow)
                  .ok());
  auto batch = queue->NextBatch();
  ASSERT_TRUE(batch.ok() && batch->has_value());
  EXPECT_EQ((*batch)->samples[0]["time_ms"], kNow - 5);
  EXPECT_EQ((*batch)->samples[1]["time_ms"], kNow);
  EXPECT_EQ((*batch)->samples[1]["labels"]["k"], "v");
  for (const json& bad : {json{{"value", 1}}, json{{"metric", "x"}, {"value", "1"}},
                          json{{"metric", "x"}, {"value", 1}, {"labels", 3}}, json(7)}) {
    absl::Status status = queue->Append(json::array({{{"metric", "ok"}, {"value", 1}}, bad}),
                                        Priority::kRoutine, kNow);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << bad.dump();
  }
  EXPECT_EQ(queue->Stats()->samples, 2u);  // nothing of a refused append was kept
}

// The crash between "sent" and "acknowledged": the restarted agent sends the
// same batch id with the same samples, which the hub de-duplicates.
TEST_F(TelemetryQueueTest, AnUnacknowledgedBatchIsResentUnchangedAfterARestart) {
  std::string first_id;
  json first_samples;
  {
    auto queue = Open({.batch_max_samples = 3});
    ASSERT_TRUE(queue->Append(Samples(0, 5), Priority::kRoutine, kNow).ok());
    auto batch = queue->NextBatch();
    ASSERT_TRUE(batch.ok() && batch->has_value());
    first_id = (*batch)->batch_id;
    first_samples = (*batch)->samples;
    // "Sent", then the process dies: no Acknowledge.
  }
  auto queue = Open({.batch_max_samples = 3});
  ASSERT_TRUE(queue->Append(Samples(5, 1), Priority::kHigh, kNow).ok());
  auto again = queue->NextBatch();
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->batch_id, first_id);
  EXPECT_EQ((*again)->samples, first_samples);
  ASSERT_TRUE(queue->Acknowledge(first_id).ok());
  ASSERT_TRUE(queue->Acknowledge(first_id).ok());  // a second ack is harmless
  auto next = queue->NextBatch();
  ASSERT_TRUE(next.ok() && next->has_value());
  EXPECT_NE((*next)->batch_id, first_id);
  EXPECT_EQ((*next)->first_seq, 4u);
  EXPECT_EQ(Drain(*queue), (std::vector<double>{3, 4, 5}));
}

TEST_F(TelemetryQueueTest, BatchIdsDifferBetweenQueueFiles) {
  std::string id;
  {
    auto queue = Open();
    ASSERT_TRUE(queue->Append(Samples(0, 1), Priority::kRoutine, kNow).ok());
    id = (*queue->NextBatch())->batch_id;
  }
  fs::remove(dir_ / "telemetry.db");  // the file is lost; the hub still has the batch
  auto queue = Open();
  ASSERT_TRUE(queue->Append(Samples(0, 1), Priority::kRoutine, kNow).ok());
  EXPECT_NE((*queue->NextBatch())->batch_id, id);
}

TEST_F(TelemetryQueueTest, FullQueueDropsOldestRoutineFirstAndReportsTheLoss) {
  // Each sample {"metric":"m","time_ms":...,"value":N} is ~45 bytes.
  auto queue = Open({.max_bytes = 2000});
  ASSERT_TRUE(queue->Append(Samples(1000, 3, "event"), Priority::kHigh, kNow).ok());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(queue->Append(Samples(i, 1), Priority::kRoutine, kNow).ok());
  }
  QueueStats stats = *queue->Stats();
  EXPECT_LE(stats.bytes, 2000u + 200u);  // the loss reports themselves may exceed a little
  EXPECT_GT(stats.dropped_routine, 50u);
  EXPECT_EQ(stats.dropped_high, 0u);

  std::vector<uint64_t> seqs;
  std::vector<double> values;
  int64_t reported = 0;
  std::vector<double> events;
  while (true) {
    auto batch = queue->NextBatch();
    ASSERT_TRUE(batch.ok());
    if (!batch->has_value()) break;
    for (const json& s : (*batch)->samples) {
      seqs.push_back(s["seq"]);
      if (s["metric"] == "telemetry_dropped") {
        EXPECT_EQ(s["labels"]["priority"], "routine");
        reported += s["value"].get<int64_t>();
      } else if (s["metric"] == "event") {
        events.push_back(s["value"]);
      } else {
        values.push_back(s["value"]);
      }
    }
    ASSERT_TRUE(queue->Acknowledge((*batch)->batch_id).ok());
  }
  EXPECT_EQ(events, (std::vector<double>{1000, 1001, 1002}));  // events survive
  // What is left is the newest routine samples, in order, and every dropped
  // routine sample was reported.
  ASSERT_FALSE(values.empty());
  EXPECT_EQ(values.back(), 99);
  for (size_t i = 1; i < values.size(); ++i) EXPECT_EQ(values[i], values[i - 1] + 1);
  EXPECT_EQ(reported + static_cast<int64_t>(values.size()), 100);
  EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end()));
}

TEST_F(TelemetryQueueTest, EventsGoOnlyWhenNoRoutineSampleIsLeft) {
  auto queue = Open({.max_bytes = 500});
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(queue->Append(Samples(i, 1, "event"), Priority::kHigh, kNow).ok());
  }
  QueueStats stats = *queue->Stats();
  EXPECT_GT(stats.dropped_high, 0u);
  EXPECT_EQ(stats.dropped_routine, 0u);
  int64_t kept = 0, reported = 0;
  double last = -1;
  while (true) {
    auto batch = queue->NextBatch();
    ASSERT_TRUE(batch.ok());
    if (!batch->has_value()) break;
    for (const json& s : (*batch)->samples) {
      if (s["metric"] == "event") {
        ++kept;
        last = s["value"];
      }
      if (s["metric"] == "telemetry_dropped") reported += s["value"].get<int64_t>();
    }
    ASSERT_TRUE(queue->Acknowledge((*batch)->batch_id).ok());
  }
  EXPECT_EQ(last, 29);  // the newest event stays
  EXPECT_LT(kept, 30);
  EXPECT_GT(reported, 0);  // the loss was reported
}

TEST_F(TelemetryQueueTest, RoutineSamplesOlderThanMaxAgeAreDroppedAndCounted) {
  auto queue = Open({.max_age = std::chrono::seconds(3600)});
  ASSERT_TRUE(queue->Append(Samples(0, 2), Priority::kRoutine, kNow).ok());
  ASSERT_TRUE(queue->Append(Samples(10, 1, "event"), Priority::kHigh, kNow).ok());
  const int64_t later = kNow + 3601 * 1000;
  ASSERT_TRUE(queue->Append(Samples(2, 1), Priority::kRoutine, later).ok());
  EXPECT_EQ(queue->Stats()->dropped_routine, 2u);
  std::vector<double> values = Drain(*queue);
  // The old event stays; the two old routine samples became one report.
  EXPECT_EQ(values, (std::vector<double>{10, 2, 2}));
}

TEST_F(TelemetryQueueTest, OutboxFilesAreImportedOnceAndBadOnesSetAside) {
  const fs::path outbox = dir_ / "outbox";
  fs::create_directories(outbox);
  std::ofstream(outbox / "0001.json") << R"([{"metric": "pipeline_result", "value": 1,
                                             "labels": {"camera": "door"}}])";
  std::ofstream(outbox / "0002.json") << R"({"metric": "pipeline_result", "value": 2})";
  std::ofstream(outbox / "0003.json") << "not json";
  std::ofstream(outbox / "ignored.tmp") << "[]";
  auto queue = Open();
  auto imported = queue->ImportOutbox(outbox, kNow);
  ASSERT_TRUE(imported.ok()) << MessageOf(imported.status());
  EXPECT_EQ(*imported, 2u);
  EXPECT_FALSE(fs::exists(outbox / "0001.json"));
  EXPECT_TRUE(fs::exists(outbox / "rejected" / "0003.json"));
  EXPECT_TRUE(fs::exists(outbox / "ignored.tmp"));
  EXPECT_EQ(*queue->ImportOutbox(outbox, kNow), 0u);
  EXPECT_EQ(Drain(*queue), (std::vector<double>{1, 2}));
  EXPECT_EQ(*queue->ImportOutbox(dir_ / "missing", kNow), 0u);
}

TEST_F(TelemetryQueueTest, CountersPersist) {
  {
    auto queue = Open();
    EXPECT_EQ(*queue->GetCounter("history_seq"), 0);
    ASSERT_TRUE(queue->SetCounter("history_seq", 42).ok());
  }
  EXPECT_EQ(*Open()->GetCounter("history_seq"), 42);
}

TEST_F(TelemetryQueueTest, NotADatabaseIsAnError) {
  std::ofstream(dir_ / "telemetry.db") << std::string(4096, 'x');
  auto queue = TelemetryQueue::Open({.path = dir_ / "telemetry.db"});
  ASSERT_FALSE(queue.ok());
  EXPECT_NE(MessageOf(queue.status()).find("telemetry.db"), std::string_view::npos);
}

// outpost-serve's `upload: true` queue sink, as docs/pipelines.md defines
// its table (the agent reads that contract, not the sink's code).
class ResultsFile {
 public:
  explicit ResultsFile(const fs::path& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    Exec("PRAGMA journal_mode=WAL");
    Exec(
        "CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "pipeline TEXT NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL)");
  }
  ~ResultsFile() { sqlite3_close(db_); }
  void Exec(const std::string& sql) {
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
        << (error ? error : "") << " in " << sql;
    sqlite3_free(error);
  }
  // Results {"frame": {"index": i}} for i in [from, from + count).
  void Add(int from, int count, const std::string& pipeline = "door") {
    Exec("BEGIN");
    for (int i = from; i < from + count; ++i) {
      Exec(StrCat("INSERT INTO results (pipeline, created_ms, body) VALUES ('", pipeline, "', ",
                  kNow + i, ", '{\"frame\":{\"index\":", i, "}}')"));
    }
    Exec("COMMIT");
  }
  int64_t Count() { return Query("SELECT COUNT(*) FROM results"); }
  // Changes whenever another connection commits to the file.
  int64_t DataVersion() { return Query("PRAGMA data_version"); }

 private:
  int64_t Query(const char* sql) {
    sqlite3_stmt* stmt = nullptr;
    sqlite3_prepare_v2(db_, sql, -1, &stmt, nullptr);
    int64_t n = sqlite3_step(stmt) == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    sqlite3_finalize(stmt);
    return n;
  }

  sqlite3* db_ = nullptr;
};

// The frame indexes of the pipeline_result samples, in queue order.
std::vector<int> ResultIndexes(TelemetryQueue& queue) {
  std::vector<int> indexes;
  uint64_t last_seq = 0;
  while (true) {
    auto batch = queue.NextBatch();
    EXPECT_TRUE(batch.ok());
    if (!batch.ok() || !batch->has_value()) break;
    for (const json& s : (*batch)->samples) {
      EXPECT_GT(s["seq"].get<uint64_t>(), last_seq);
      last_seq = s["seq"].get<uint64_t>();
      if (s["metric"] != "pipeline_result") continue;
      const int index = s["labels"]["result"]["frame"]["index"].get<int>();
      EXPECT_EQ(s["value"], 1);
      EXPECT_EQ(s["labels"]["pipeline"], "door");
      EXPECT_EQ(s["time_ms"].get<int64_t>(), kNow + index);  // when the result was written
      indexes.push_back(index);
    }
    EXPECT_TRUE(queue.Acknowledge((*batch)->batch_id).ok());
  }
  return indexes;
}

std::vector<int> Range(int from, int count) {
  std::vector<int> out;
  for (int i = from; i < from + count; ++i) out.push_back(i);
  return out;
}

TEST_F(TelemetryQueueTest, PipelineResultsMoveOverOnceInOrder) {
  auto queue = Open();
  const fs::path path = dir_ / "results.db";
  EXPECT_EQ(*queue->ImportResults(path, kNow), 0u);  // no file yet: nothing to do
  EXPECT_FALSE(fs::exists(path));                    // and none is created
  ResultsFile results(path);
  results.Add(0, 1234);  // more than one transaction's worth
  absl::StatusOr<size_t> imported = queue->ImportResults(path, kNow);
  ASSERT_TRUE(imported.ok()) << MessageOf(imported.status());
  EXPECT_EQ(*imported, 1234u);
  EXPECT_EQ(results.Count(), 0);  // moved, not copied
  results.Add(1234, 10);
  EXPECT_EQ(*queue->ImportResults(path, kNow), 10u);
  EXPECT_EQ(*queue->ImportResults(path, kNow), 0u);
  EXPECT_EQ(ResultIndexes(*queue), Range(0, 1244));
}

// An idle import (every heartbeat) only reads the results file: no write
// transaction, so no fsync on the device's flash when nothing happened.
TEST_F(TelemetryQueueTest, AnIdleResultsImportDoesNotWriteTheFile) {
  auto queue = Open();
  const fs::path path = dir_ / "results.db";
  ResultsFile results(path);
  results.Add(0, 3);
  ASSERT_EQ(*queue->ImportResults(path, kNow), 3u);
  const int64_t version = results.DataVersion();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(*queue->ImportResults(path, kNow), 0u);
  EXPECT_EQ(results.DataVersion(), version);
  results.Add(3, 1);
  EXPECT_EQ(*queue->ImportResults(path, kNow), 1u);
  EXPECT_EQ(results.Count(), 0);
}

// A crash after the samples were queued but before the rows were deleted
// leaves them in the results file: the next import deletes them and
// imports nothing twice; a reopened queue remembers where it was.
TEST_F(TelemetryQueueTest, ResultsLeftBehindByACrashAreNotImportedTwice) {
  const fs::path path = dir_ / "results.db";
  ResultsFile results(path);
  {
    auto queue = Open();
    results.Add(0, 5);
    EXPECT_EQ(*queue->ImportResults(path, kNow), 5u);
  }
  // The state right after the crash: the same rows, the same ids, still there.
  results.Exec("BEGIN");
  for (int i = 0; i < 5; ++i) {
    results.Exec(StrCat("INSERT INTO results (id, pipeline, created_ms, body) VALUES (", i + 1,
                        ", 'door', ", kNow + i, ", '{\"frame\":{\"index\":", i, "}}')"));
  }
  results.Exec("COMMIT");
  results.Add(5, 3);
  auto queue = Open();
  EXPECT_EQ(*queue->ImportResults(path, kNow), 3u);
  EXPECT_EQ(results.Count(), 0);
  EXPECT_EQ(ResultIndexes(*queue), Range(0, 8));
}

TEST_F(TelemetryQueueTest, ARecreatedResultsFileStartsOver) {
  auto queue = Open();
  const fs::path path = dir_ / "results.db";
  {
    ResultsFile results(path);
    results.Add(0, 4);
    EXPECT_EQ(*queue->ImportResults(path, kNow), 4u);
  }
  fs::remove(path);
  fs::remove(StrCat(path.string(), "-wal"));
  fs::remove(StrCat(path.string(), "-shm"));
  ResultsFile again(path);  // ids start at 1 again
  again.Add(4, 2);
  EXPECT_EQ(*queue->ImportResults(path, kNow), 2u);
  EXPECT_EQ(ResultIndexes(*queue), Range(0, 6));
}

TEST_F(TelemetryQueueTest, OversizeAndUnparsableResultsStillShip) {
  auto queue = Open();
  const fs::path path = dir_ / "results.db";
  ResultsFile results(path);
  results.Exec(StrCat("INSERT INTO results (pipeline, created_ms, body) VALUES ('big', ", kNow,
                      ", '", std::string(TelemetryQueue::kMaxResultBytes + 1, 'x'), "')"));
  results.Exec(StrCat("INSERT INTO results (pipeline, created_ms, body) VALUES ('odd', ", kNow,
                      ", 'not json')"));
  ASSERT_EQ(*queue->ImportResults(path, kNow), 2u);
  auto batch = queue->NextBatch();
  ASSERT_TRUE(batch.ok() && batch->has_value());
  const json& samples = (*batch)->samples;
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0]["labels"]["pipeline"], "big");
  EXPECT_EQ(samples[0]["labels"]["oversize_bytes"], TelemetryQueue::kMaxResultBytes + 1);
  EXPECT_FALSE(samples[0]["labels"].contains("result"));
  EXPECT_EQ(samples[1]["labels"]["result"], "not json");
}

TEST_F(TelemetryQueueTest, AResultsFileThatIsNotADatabaseIsAnError) {
  auto queue = Open();
  std::ofstream(dir_ / "results.db")
      << "this is not SQLite, just long enough to be read as a header";
  absl::StatusOr<size_t> imported = queue->ImportResults(dir_ / "results.db", kNow);
  ASSERT_FALSE(imported.ok());
  EXPECT_NE(MessageOf(imported.status()).find("results.db"), std::string::npos)
      << MessageOf(imported.status());
}

}  // namespace
}  // namespace outpost::agent
