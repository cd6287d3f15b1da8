#include "serve/pipeline/sinks.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "common/http_server.h"

namespace outpost::serve::pipeline {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class SinksTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           StrCat("outpost-sinks-test-", getpid(), "-",
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> Lines(const fs::path& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  fs::path dir_;
};

TEST_F(SinksTest, JsonlAppendsAndRotates) {
  SinkConfig c;
  c.type = SinkType::kJsonl;
  c.path = (dir_ / "sub" / "r.jsonl").string();  // the folder is created
  c.max_bytes = 1024;
  c.max_files = 2;
  auto sink = OpenSink(c, "p");
  ASSERT_TRUE(sink.ok()) << sink.status();
  std::string line(99, 'x');  // 100 bytes with the newline
  for (int i = 0; i < 35; ++i) {
    std::string l = line;
    l.replace(0, std::to_string(i).size(), std::to_string(i));
    ASSERT_TRUE((*sink)->Write(l).ok());
  }
  // 10 lines per file: lines 30..34 in the current file, 20..29 in .1,
  // 10..19 in .2, and 0..9 rotated out (max_files 2).
  std::vector<std::string> current = Lines(c.path);
  ASSERT_EQ(current.size(), 5u);
  EXPECT_TRUE(current[0].starts_with("30"));
  EXPECT_TRUE(Lines(c.path + ".1")[0].starts_with("20"));
  EXPECT_TRUE(Lines(c.path + ".2")[0].starts_with("10"));
  EXPECT_FALSE(fs::exists(c.path + ".3"));
  EXPECT_EQ((*sink)->name(), "jsonl:" + c.path);

  // Reopening appends.
  sink->reset();
  sink = OpenSink(c, "p");
  ASSERT_TRUE(sink.ok());
  ASSERT_TRUE((*sink)->Write("{}").ok());
  EXPECT_EQ(Lines(c.path).size(), 6u);
}

TEST_F(SinksTest, JsonlNamesAPathItCannotOpen) {
  SinkConfig c;
  c.type = SinkType::kJsonl;
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "x";
  c.path = (dir_ / "file" / "r.jsonl").string();  // a file where a folder should be
  auto sink = OpenSink(c, "p");
  ASSERT_FALSE(sink.ok());
  EXPECT_THAT(MessageOf(sink.status()), HasSubstr(c.path));
}

TEST_F(SinksTest, QueueKeepsRowsDurablyAndBounded) {
  SinkConfig c;
  c.type = SinkType::kQueue;
  c.path = (dir_ / "q.db").string();
  c.max_rows = 100;
  {
    auto sink = OpenSink(c, "cam1");
    ASSERT_TRUE(sink.ok()) << sink.status();
    for (int i = 0; i < 130; ++i) ASSERT_TRUE((*sink)->Write(StrCat("{\"i\":", i, "}")).ok());
    // Trimmed on the first write and every 64th: after write 128, 28 went.
    EXPECT_EQ((*sink)->dropped(), 28);
  }
  // Another connection (the shipper, later) sees every committed row.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(c.path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(
      sqlite3_prepare_v2(db, "SELECT COUNT(*), MIN(body), MAX(id), MIN(pipeline) FROM results", -1,
                         &stmt, nullptr),
      SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(stmt, 0), 102);  // 100 kept at write 128, then 2 more
  EXPECT_EQ(sqlite3_column_int(stmt, 2), 130);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3)), "cam1");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_F(SinksTest, WebhookRetriesServerErrorsAndGivesUpOnClientErrors) {
  std::atomic<int> calls{0};
  std::atomic<int> fail_first{2};
  std::string last_body;
  std::mutex mu;
  http::ServerOptions options;
  auto server =
      http::Server::Create(options, [&](http::Request&& request, http::Responder responder) {
        ++calls;
        {
          std::lock_guard<std::mutex> lock(mu);
          last_body = request.body();
        }
        http::Status status = http::Status::ok;
        if (request.target() == "/reject") {
          status = http::Status::bad_request;
        } else if (fail_first.fetch_sub(1) > 0) {
          status = http::Status::service_unavailable;
        }
        responder.Send(http::JsonResponse(request, status, "{}"));
      });
  ASSERT_TRUE(server.ok()) << server.status();
  (*server)->Start();
  SinkConfig c;
  c.type = SinkType::kWebhook;
  c.url = StrCat("http://127.0.0.1:", (*server)->port(), "/hook");
  c.retries = 3;
  c.backoff = std::chrono::milliseconds(1);
  auto sink = OpenSink(c, "p");
  ASSERT_TRUE(sink.ok()) << sink.status();
  ASSERT_TRUE((*sink)->Write("{\"a\":1}").ok());
  EXPECT_EQ(calls.load(), 3);  // two 503s, then 200
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(last_body, "{\"a\":1}");
  }

  c.url = StrCat("http://127.0.0.1:", (*server)->port(), "/reject");
  auto rejecting = OpenSink(c, "p");
  ASSERT_TRUE(rejecting.ok());
  calls = 0;
  absl::Status s = (*rejecting)->Write("{}");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(calls.load(), 1);  // a 400 is not retried
  EXPECT_THAT(MessageOf(s), HasSubstr("/reject"));
  (*server)->Stop();

  // Nobody listening: every attempt fails, the error says so.
  c.retries = 1;
  auto unreachable = OpenSink(c, "p");
  ASSERT_TRUE(unreachable.ok());
  s = (*unreachable)->Write("{}");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_THAT(MessageOf(s), HasSubstr("after 2 attempt(s)"));
}

}  // namespace
}  // namespace outpost::serve::pipeline
