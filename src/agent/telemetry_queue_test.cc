#include "agent/telemetry_queue.h"

#include <gtest/gtest.h>
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

}  // namespace
}  // namespace outpost::agent
