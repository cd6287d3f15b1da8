#include "hub/blob_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace outpost::hub {
namespace {

namespace fs = std::filesystem;

std::string Bytes(size_t size, uint32_t seed) {
  std::string out(size, '\0');
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (char& c : out) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    c = static_cast<char>(state >> 56);
  }
  return out;
}

std::vector<std::string> FilesUnder(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) out.push_back(fs::relative(entry.path(), dir).string());
  }
  return out;
}

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "outpost-blobs-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    auto store = BlobStore::Open(dir_ / "blobs");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }

  fs::path dir_;
  std::unique_ptr<BlobStore> store_;
};

TEST_F(BlobStoreTest, StoresUnderItsHashReadOnlyAndReadsBackRanges) {
  std::string data = Bytes(3 * 1024 * 1024 + 17, 1);
  std::string sha = Sha256::HexOf(data);
  auto put = store_->Put(data);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->sha256, sha);
  EXPECT_EQ(put->size, static_cast<int64_t>(data.size()));
  EXPECT_FALSE(put->already_present);

  fs::path file = dir_ / "blobs" / "sha256" / sha.substr(0, 2) / sha;
  struct stat st;
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u);
  EXPECT_EQ(FilesUnder(dir_ / "blobs"),
            std::vector<std::string>{fs::relative(file, dir_ / "blobs")});

  EXPECT_TRUE(*store_->Has(sha));
  EXPECT_EQ(*store_->SizeOf(sha), static_cast<int64_t>(data.size()));
  auto blob = store_->Get(sha);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(blob->size(), static_cast<int64_t>(data.size()));
  EXPECT_EQ(*blob->ReadAt(0, 10), data.substr(0, 10));
  EXPECT_EQ(*blob->ReadAt(1'000'000, 5000), data.substr(1'000'000, 5000));
  EXPECT_EQ(*blob->ReadAt(data.size() - 3, 100), data.substr(data.size() - 3));  // clipped
  EXPECT_EQ(*blob->ReadAt(data.size(), 100), "");
  EXPECT_EQ(blob->ReadAt(data.size() + 1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(blob->ReadAt(-1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store_->Verify(sha).ok());
}

TEST_F(BlobStoreTest, TheSameContentTwiceIsStoredOnce) {
  ASSERT_TRUE(store_->Put("model weights").ok());
  auto again = store_->Put("model weights");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->already_present);
  EXPECT_EQ(FilesUnder(dir_ / "blobs").size(), 1u);  // no temporary file left either
}

TEST_F(BlobStoreTest, AMismatchedExpectedHashStoresNothing) {
  std::string expected = Sha256::HexOf("the real bundle");
  auto put = store_->Put("a truncated bundle", expected);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(MessageOf(put.status())).find(expected), std::string::npos);
  EXPECT_FALSE(*store_->Has(expected));
  EXPECT_TRUE(FilesUnder(dir_ / "blobs").empty());
  auto ok = store_->Put("the real bundle", expected);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->sha256, expected);
}

TEST_F(BlobStoreTest, StreamsFilesAndIncrementalWriters) {
  std::string data = Bytes(2'500'000, 2);
  fs::path source = dir_ / "bundle.tar.zst";
  std::ofstream(source, std::ios::binary) << data;
  auto from_file = store_->PutFile(source, Sha256::HexOf(data));
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->size, static_cast<int64_t>(data.size()));
  EXPECT_EQ(store_->PutFile(dir_ / "missing").status().code(), absl::StatusCode::kNotFound);

  std::string other = Bytes(1'234'567, 3);
  std::istringstream in(other);
  auto from_stream = store_->PutStream(in);
  ASSERT_TRUE(from_stream.ok()) << from_stream.status();
  EXPECT_EQ(from_stream->sha256, Sha256::HexOf(other));

  auto writer = store_->NewWriter();
  ASSERT_TRUE(writer.ok());
  for (size_t at = 0; at < other.size(); at += 4096) {
    ASSERT_TRUE((*writer)->Append(std::string_view(other).substr(at, 4096)).ok());
  }
  EXPECT_EQ((*writer)->size(), static_cast<int64_t>(other.size()));
  auto committed = (*writer)->Commit();
  ASSERT_TRUE(committed.ok());
  EXPECT_TRUE(committed->already_present);
  EXPECT_EQ((*writer)->Commit().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*writer)->Append("x").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(BlobStoreTest, AnAbandonedUploadLeavesNoFile) {
  {
    auto writer = store_->NewWriter();
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Append("half an upload").ok());
    EXPECT_EQ(FilesUnder(dir_ / "blobs").size(), 1u);  // the temporary file
  }
  EXPECT_TRUE(FilesUnder(dir_ / "blobs").empty());
}

TEST_F(BlobStoreTest, ReopeningRemovesOnlyStaleTemporaryFiles) {
  fs::path stale = dir_ / "blobs" / "tmp" / "upload-stale";
  fs::path fresh = dir_ / "blobs" / "tmp" / "upload-fresh";
  std::ofstream(stale) << "x";
  std::ofstream(fresh) << "y";
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(25));
  auto reopened = BlobStore::Open(dir_ / "blobs");
  ASSERT_TRUE(reopened.ok());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh));  // maybe another hub's upload in progress
}

TEST_F(BlobStoreTest, RemoveListAndVerifyDetectsCorruption) {
  std::string a = Sha256::HexOf("a"), b = Sha256::HexOf("b");
  ASSERT_TRUE(store_->Put("a").ok());
  ASSERT_TRUE(store_->Put("b").ok());
  auto listed = store_->List();
  ASSERT_TRUE(listed.ok());
  std::vector<std::string> expected{a, b};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(*listed, expected);

  // A reader that opened the blob keeps it across a Remove.
  auto held = store_->Get(a);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(store_->Remove(a).ok());
  EXPECT_EQ(store_->Remove(a).code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(*store_->Has(a));
  EXPECT_EQ(store_->Get(a).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*held->ReadAt(0, 10), "a");
  EXPECT_EQ(store_->List()->size(), 1u);

  fs::path file = dir_ / "blobs" / "sha256" / b.substr(0, 2) / b;
  fs::permissions(file, fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(file, std::ios::trunc) << "c";
  absl::Status verified = store_->Verify(b);
  EXPECT_EQ(verified.code(), absl::StatusCode::kDataLoss) << verified;
}

TEST_F(BlobStoreTest, RefusesNamesThatAreNotHashes) {
  for (std::string_view bad :
       std::vector<std::string_view>{"", "../../etc/passwd", "ABCDEF", "zz"}) {
    EXPECT_EQ(store_->Get(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store_->Has(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store_->Remove(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  std::string upper = Sha256::HexOf("x");
  for (char& c : upper) c = static_cast<char>(toupper(c));
  EXPECT_EQ(store_->Put("x", upper).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(IsSha256Hex(upper));
  EXPECT_TRUE(IsSha256Hex(Sha256::HexOf("x")));
}

TEST_F(BlobStoreTest, ConcurrentUploadsOfTheSameAndDifferentContent) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::string data = Bytes(300'000, static_cast<uint32_t>(t % 2));
      for (int i = 0; i < 5; ++i) {
        auto put = store_->Put(data, Sha256::HexOf(data));
        if (put.ok()) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 40);
  auto listed = store_->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);
  EXPECT_TRUE(FilesUnder(dir_ / "blobs" / "tmp").empty());
  for (const std::string& sha : *listed) EXPECT_TRUE(store_->Verify(sha).ok());
}

}  // namespace
}  // namespace outpost::hub
