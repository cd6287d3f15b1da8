#include "serve/pipeline/frame_source.h"

#include <algorithm>
#include <filesystem>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <vector>

namespace outpost::serve::pipeline {
namespace {

namespace fs = std::filesystem;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Stamps the frame and times the decode around `read` (true = got one).
template <typename ReadFn>
bool Timed(Frame* frame, ReadFn read) {
  auto start = std::chrono::steady_clock::now();
  bool ok = read();
  frame->read_at = std::chrono::steady_clock::now();
  frame->decode_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(frame->read_at - start).count();
  frame->timestamp_ms = NowMs();
  return ok;
}

bool IsImageFile(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  static const char* kExtensions[] = {".jpg", ".jpeg", ".png", ".bmp", ".webp",
                                      ".tif", ".tiff", ".ppm", ".pgm", ".pnm"};
  return std::any_of(std::begin(kExtensions), std::end(kExtensions),
                     [&](const char* e) { return ext == e; });
}

// An image file or a folder of them: a list of files read in name order.
class ImageListSource : public FrameSource {
 public:
  explicit ImageListSource(const SourceConfig& config) : config_(config) {}

  absl::Status Open() override {
    files_.clear();
    next_ = 0;
    std::error_code ec;
    if (config_.type == SourceType::kImage) {
      if (!fs::exists(config_.path, ec)) {
        return absl::NotFoundError(StrCat("image ", config_.path, " does not exist"));
      }
      files_.push_back(config_.path);
      return absl::OkStatus();
    }
    if (!fs::is_directory(config_.path, ec)) {
      return absl::NotFoundError(StrCat("folder ", config_.path, " does not exist"));
    }
    for (const fs::directory_entry& entry : fs::directory_iterator(config_.path, ec)) {
      if (entry.is_regular_file(ec) && IsImageFile(entry.path())) files_.push_back(entry.path());
    }
    if (ec) return absl::NotFoundError(StrCat("cannot list ", config_.path, ": ", ec.message()));
    std::sort(files_.begin(), files_.end());
    return absl::OkStatus();
  }

  absl::Status Read(Frame* frame) override {
    if (next_ >= files_.size()) {
      if (!config_.loop || files_.empty()) return absl::OutOfRangeError("end of images");
      next_ = 0;
    }
    const fs::path& file = files_[next_++];
    frame->origin = file.string();
    frame->index = index_++;
    if (!Timed(frame, [&] {
          frame->image = cv::imread(file.string(), cv::IMREAD_COLOR);
          return !frame->image.empty();
        })) {
      frame->error = StrCat("cannot decode image ", file.string(),
                            ": unreadable or not an image format OpenCV reads");
      return absl::DataLossError(frame->error);
    }
    return absl::OkStatus();
  }

  bool live() const override { return false; }
  std::string Describe() const override {
    return StrCat(SourceTypeName(config_.type), " ", config_.path);
  }

 private:
  const SourceConfig config_;
  std::vector<fs::path> files_;
  size_t next_ = 0;
  int64_t index_ = 0;
};

// A video file, a camera or a stream, through cv::VideoCapture.
class CaptureSource : public FrameSource {
 public:
  explicit CaptureSource(const SourceConfig& config) : config_(config) {}

  absl::Status Open() override {
    capture_.release();
    std::error_code ec;
    const int timeout = static_cast<int>(config_.read_timeout.count());
    switch (config_.type) {
      case SourceType::kVideo:
        if (!fs::is_regular_file(config_.path, ec)) {
          return absl::NotFoundError(StrCat("video ", config_.path, " does not exist"));
        }
        if (!capture_.open(config_.path, cv::CAP_FFMPEG) || !capture_.isOpened()) {
          return absl::InvalidArgumentError(
              StrCat("cannot open video ", config_.path,
                     ": corrupt, or not a format this OpenCV build decodes"));
        }
        frames_ = 0;
        return absl::OkStatus();
      case SourceType::kCamera: {
        int number = -1;
        bool by_index = std::all_of(config_.path.begin(), config_.path.end(), ::isdigit);
        if (by_index) {
          number = std::stoi(config_.path);
        } else if (!fs::exists(config_.path, ec)) {
          return absl::UnavailableError(
              StrCat("camera ", config_.path, " is not present (unplugged?)"));
        }
        bool opened = by_index ? capture_.open(number, cv::CAP_V4L2)
                               : capture_.open(config_.path, cv::CAP_V4L2);
        if (!opened || !capture_.isOpened()) {
          return absl::UnavailableError(StrCat("cannot open camera ", config_.path));
        }
        return absl::OkStatus();
      }
      case SourceType::kUrl: {
        std::vector<int> params = {cv::CAP_PROP_OPEN_TIMEOUT_MSEC, timeout,
                                   cv::CAP_PROP_READ_TIMEOUT_MSEC, timeout};
        if (!capture_.open(config_.url, cv::CAP_FFMPEG, params) || !capture_.isOpened()) {
          return absl::UnavailableError(StrCat("cannot open stream ", config_.url));
        }
        return absl::OkStatus();
      }
      default:
        return absl::InternalError("not a capture source");
    }
  }

  absl::Status Read(Frame* frame) override {
    frame->index = index_++;
    if (Timed(frame, [&] { return capture_.read(frame->image) && !frame->image.empty(); })) {
      if (config_.type == SourceType::kVideo) {
        frame->position_ms = capture_.get(cv::CAP_PROP_POS_MSEC);
        ++frames_;
      }
      return absl::OkStatus();
    }
    --index_;  // nothing was read
    if (config_.type == SourceType::kVideo) {
      if (frames_ == 0) {
        return absl::InvalidArgumentError(
            StrCat("video ", config_.path, ": no frame could be decoded (corrupt file?)"));
      }
      return absl::OutOfRangeError("end of video");
    }
    return absl::UnavailableError(StrCat(Describe(), " stopped delivering frames"));
  }

  bool live() const override { return config_.type != SourceType::kVideo; }
  std::string Describe() const override {
    return StrCat(SourceTypeName(config_.type), " ",
                  config_.type == SourceType::kUrl ? config_.url : config_.path);
  }

 private:
  const SourceConfig config_;
  cv::VideoCapture capture_;
  int64_t index_ = 0;
  int64_t frames_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FrameSource>> MakeFrameSource(const SourceConfig& config) {
  // OpenCV's own warnings ("can't open camera by index") repeat what the
  // pipeline reports once, with context.
  static const bool quiet = [] {
    cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
    return true;
  }();
  (void)quiet;
  switch (config.type) {
    case SourceType::kImage:
    case SourceType::kFolder:
      return std::make_unique<ImageListSource>(config);
    case SourceType::kVideo:
    case SourceType::kCamera:
    case SourceType::kUrl:
      return std::make_unique<CaptureSource>(config);
  }
  return absl::InvalidArgumentError("unknown source type");
}

bool FrameQueue::Push(Frame&& frame, int64_t* dropped) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!drop_oldest_) cv_.wait(lock, [&] { return closed_ || frames_.size() < capacity_; });
  if (closed_) return false;
  while (frames_.size() >= capacity_) {
    frames_.pop_front();
    ++*dropped;
  }
  frames_.push_back(std::move(frame));
  cv_.notify_all();
  return true;
}

bool FrameQueue::Pop(Frame* frame) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return closed_ || !frames_.empty(); });
  if (frames_.empty()) return false;
  *frame = std::move(frames_.front());
  frames_.pop_front();
  cv_.notify_all();
  return true;
}

void FrameQueue::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  cv_.notify_all();
}

size_t FrameQueue::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return frames_.size();
}

}  // namespace outpost::serve::pipeline
