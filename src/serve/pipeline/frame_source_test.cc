#include "serve/pipeline/frame_source.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <thread>

namespace outpost::serve::pipeline {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class FrameSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           StrCat("outpost-source-test-", getpid(), "-",
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<FrameSource> Make(SourceConfig config) {
    auto source = MakeFrameSource(config);
    EXPECT_TRUE(source.ok()) << source.status();
    return std::move(*source);
  }

  fs::path dir_;
};

TEST_F(FrameSourceTest, FolderReadsImagesInNameOrderAndReportsBadOnes) {
  cv::imwrite((dir_ / "b.png").string(), cv::Mat(4, 6, CV_8UC3, cv::Scalar(255, 0, 0)));
  cv::imwrite((dir_ / "a.jpg").string(), cv::Mat(8, 8, CV_8UC3, cv::Scalar(0, 0, 255)));
  std::ofstream(dir_ / "c.jpg") << "not a jpeg";
  std::ofstream(dir_ / "notes.txt") << "skipped: not an image name";
  SourceConfig c;
  c.type = SourceType::kFolder;
  c.path = dir_.string();
  auto source = Make(c);
  ASSERT_TRUE(source->Open().ok());
  EXPECT_FALSE(source->live());
  Frame f;
  ASSERT_TRUE(source->Read(&f).ok());
  EXPECT_EQ(f.origin, (dir_ / "a.jpg").string());
  EXPECT_EQ(f.image.cols, 8);
  EXPECT_GT(f.timestamp_ms, 0);
  Frame g;
  ASSERT_TRUE(source->Read(&g).ok());
  EXPECT_EQ(g.image.cols, 6);
  EXPECT_EQ(g.index, 1);
  Frame bad;
  absl::Status s = source->Read(&bad);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_THAT(bad.error, HasSubstr("cannot decode image " + (dir_ / "c.jpg").string()));
  Frame end;
  EXPECT_TRUE(absl::IsOutOfRange(source->Read(&end)));
}

TEST_F(FrameSourceTest, MissingFilesAreNotRetried) {
  SourceConfig c;
  c.type = SourceType::kFolder;
  c.path = (dir_ / "nope").string();
  EXPECT_TRUE(absl::IsNotFound(Make(c)->Open()));
  c.type = SourceType::kVideo;
  absl::Status s = Make(c)->Open();
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
}

TEST_F(FrameSourceTest, VideoFileFramesAndACorruptOne) {
  fs::path video = dir_ / "v.avi";
  {
    cv::VideoWriter w(video.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 10,
                      cv::Size(64, 48));
    ASSERT_TRUE(w.isOpened());
    for (int i = 0; i < 7; ++i) w.write(cv::Mat(48, 64, CV_8UC3, cv::Scalar(0, 0, 255)));
  }
  SourceConfig c;
  c.type = SourceType::kVideo;
  c.path = video.string();
  auto source = Make(c);
  ASSERT_TRUE(source->Open().ok());
  int frames = 0;
  Frame f;
  absl::Status s;
  while ((s = source->Read(&f)).ok()) {
    EXPECT_EQ(f.image.cols, 64);
    EXPECT_NEAR(f.position_ms, frames * 100.0, 1.0);
    ++frames;
  }
  EXPECT_TRUE(absl::IsOutOfRange(s)) << s;
  EXPECT_EQ(frames, 7);

  std::ofstream(dir_ / "corrupt.avi") << std::string(4096, '\x42');
  c.path = (dir_ / "corrupt.avi").string();
  s = Make(c)->Open();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(MessageOf(s), HasSubstr("corrupt"));
}

TEST_F(FrameSourceTest, AMissingCameraIsRetryable) {
  SourceConfig c;
  c.type = SourceType::kCamera;
  c.path = "/dev/video-outpost-test-missing";
  auto source = Make(c);
  EXPECT_TRUE(source->live());
  absl::Status s = source->Open();
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_THAT(MessageOf(s), HasSubstr("not present (unplugged?)"));
}

TEST(FrameQueueTest, DropOldestCountsAndNeverBlocks) {
  FrameQueue q(2, true);
  int64_t dropped = 0;
  for (int i = 0; i < 5; ++i) {
    Frame f;
    f.index = i;
    ASSERT_TRUE(q.Push(std::move(f), &dropped));
  }
  EXPECT_EQ(dropped, 3);
  Frame f;
  ASSERT_TRUE(q.Pop(&f));
  EXPECT_EQ(f.index, 3);  // the newest two are left
  ASSERT_TRUE(q.Pop(&f));
  EXPECT_EQ(f.index, 4);
  q.Close();
  EXPECT_FALSE(q.Pop(&f));
  EXPECT_FALSE(q.Push(Frame(), &dropped));
}

TEST(FrameQueueTest, WithoutDropPushWaitsForRoom) {
  FrameQueue q(1, false);
  int64_t dropped = 0;
  ASSERT_TRUE(q.Push(Frame(), &dropped));
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    Frame f;
    f.index = 9;
    q.Push(std::move(f), &dropped);
    pushed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(pushed.load());
  Frame f;
  ASSERT_TRUE(q.Pop(&f));
  producer.join();
  EXPECT_TRUE(pushed.load());
  ASSERT_TRUE(q.Pop(&f));
  EXPECT_EQ(f.index, 9);
  EXPECT_EQ(dropped, 0);
}

}  // namespace
}  // namespace outpost::serve::pipeline
