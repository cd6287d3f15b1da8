#include "common/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

namespace outpost {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "atomic_file_test-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Everything in dir_ except `keep`: finds leftover temporary files.
  std::vector<std::string> Others(const std::string& keep) {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      if (entry.path().filename() != keep) out.push_back(entry.path().filename().string());
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(AtomicFileTest, WritesReadsAndReplacesWithoutLeftovers) {
  fs::path file = dir_ / "state.json";
  ASSERT_TRUE(WriteFileAtomic(file, "first").ok());
  auto read = ReadFile(file);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "first");
  ASSERT_TRUE(WriteFileAtomic(file, std::string(200000, 'x')).ok());
  read = ReadFile(file);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, std::string(200000, 'x'));
  ASSERT_TRUE(WriteFileAtomic(file, "").ok());
  EXPECT_EQ(*ReadFile(file), "");
  EXPECT_TRUE(Others("state.json").empty());
}

TEST_F(AtomicFileTest, AppliesExactModeRegardlessOfUmask) {
  mode_t old = umask(077);
  fs::path file = dir_ / "public";
  absl::Status status = WriteFileAtomic(file, "data", 0644);
  umask(old);
  ASSERT_TRUE(status.ok()) << status;
  struct stat st;
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "secret", "key", 0600).ok());
  ASSERT_EQ(stat((dir_ / "secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(AtomicFileTest, MissingDirectoryIsNotFoundAndNamesThePath) {
  fs::path file = dir_ / "no-such-dir" / "f";
  absl::Status status = WriteFileAtomic(file, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_NE(MessageOf(status).find("no-such-dir"), std::string_view::npos) << status;
  EXPECT_EQ(ReadFile(file).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AtomicFileTest, ReadFileRefusesADirectory) {
  EXPECT_EQ(ReadFile(dir_).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(AtomicFileTest, ConcurrentReaderSeesOnlyWholeVersions) {
  fs::path file = dir_ / "big";
  const std::string a(1 << 20, 'a');
  const std::string b(1 << 19, 'b');
  ASSERT_TRUE(WriteFileAtomic(file, a).ok());
  std::atomic<bool> done{false};
  std::atomic<int> reads{0}, torn{0};
  std::thread reader([&] {
    while (!done.load()) {
      auto content = ReadFile(file);
      if (!content.ok() || (*content != a && *content != b)) torn++;
      reads++;
    }
  });
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(WriteFileAtomic(file, i % 2 ? a : b).ok());
  while (reads.load() < 5) std::this_thread::yield();
  done = true;
  reader.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_TRUE(Others("big").empty());
}

TEST_F(AtomicFileTest, ReplaceSymlinkCreatesAndSwitches) {
  fs::create_directory(dir_ / "A");
  fs::create_directory(dir_ / "B");
  fs::path current = dir_ / "current";
  ASSERT_TRUE(ReplaceSymlinkAtomic(current, "slots/../A").ok());
  EXPECT_EQ(fs::read_symlink(current), "slots/../A");
  ASSERT_TRUE(ReplaceSymlinkAtomic(current, "B").ok());
  EXPECT_EQ(fs::read_symlink(current), "B");
  EXPECT_TRUE(fs::is_directory(current));
  auto others = Others("current");
  std::sort(others.begin(), others.end());
  EXPECT_EQ(others, (std::vector<std::string>{"A", "B"}));
}

TEST_F(AtomicFileTest, ReplaceSymlinkNeverLeavesLinkMissing) {
  fs::path current = dir_ / "current";
  ASSERT_TRUE(ReplaceSymlinkAtomic(current, "A").ok());
  std::atomic<bool> done{false};
  std::atomic<int> missing{0}, reads{0};
  std::thread reader([&] {
    while (!done.load()) {
      std::error_code ec;
      fs::path target = fs::read_symlink(current, ec);
      if (ec || (target != "A" && target != "B")) missing++;
      reads++;
    }
  });
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(ReplaceSymlinkAtomic(current, i % 2 ? "A" : "B").ok());
  while (reads.load() < 5) std::this_thread::yield();
  done = true;
  reader.join();
  EXPECT_EQ(missing.load(), 0);
}

TEST_F(AtomicFileTest, ReplaceSymlinkRefusesToReplaceADirectory) {
  fs::create_directory(dir_ / "current");
  fs::create_directory(dir_ / "current" / "child");
  absl::Status status = ReplaceSymlinkAtomic(dir_ / "current", "A");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(fs::is_directory(dir_ / "current" / "child"));
  EXPECT_EQ(Others("current").size(), 0u);
}

}  // namespace
}  // namespace outpost
