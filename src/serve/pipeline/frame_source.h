// Frame sources (OpenCV imgcodecs/videoio): an image file, a folder of
// images, a video file, a V4L2 camera, an RTSP/HTTP stream; and the bounded
// queue that hands frames to pre-processing.
//
// Thread safety: a FrameSource is used by one thread (the pipeline's source
// thread). FrameQueue is thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <opencv2/core.hpp>
#include <string>

#include "common/status.h"
#include "serve/pipeline/pipeline_config.h"

namespace outpost::serve::pipeline {

struct Frame {
  cv::Mat image;                                  // 8-bit BGR as decoded; empty for an error frame
  int64_t index = 0;                              // 0-based, per source, counting error frames
  int64_t timestamp_ms = 0;                       // wall clock when the frame was read (Unix ms)
  double position_ms = -1;                        // video files: the frame's position in the file
  std::string origin;                             // image/folder: the file the frame came from
  std::chrono::steady_clock::time_point read_at;  // for stage latencies
  int64_t decode_ns = 0;
  // Non-empty: no image, this frame reports what went wrong reading it (an
  // unreadable image, a lost stream) so the error reaches the sinks in order.
  std::string error;
};

class FrameSource {
 public:
  virtual ~FrameSource() = default;
  // Opens or reopens. Unavailable: a camera or stream that may come back
  // (missing device, refused connection): retry with backoff. NotFound /
  // InvalidArgument: a file or folder that is missing or not a video (a
  // corrupt file): retrying will not help.
  virtual absl::Status Open() = 0;
  // Reads the next frame. OutOfRange: a file source is at its end.
  // DataLoss: this frame could not be decoded (frame->error says why; the
  // source goes on). Unavailable: a live source was lost (Open again).
  virtual absl::Status Read(Frame* frame) = 0;
  // True for cameras and streams.
  virtual bool live() const = 0;
  // "video /data/clip.mp4", "camera /dev/video0", for logs.
  virtual std::string Describe() const = 0;
};

absl::StatusOr<std::unique_ptr<FrameSource>> MakeFrameSource(const SourceConfig& config);

// Bounded hand-off between the source thread and pre-processing. Push with
// drop_oldest never blocks: when full the oldest frame is discarded and
// counted; otherwise Push waits for room.
class FrameQueue {
 public:
  FrameQueue(size_t capacity, bool drop_oldest) : capacity_(capacity), drop_oldest_(drop_oldest) {}

  // False when the queue was closed (the frame is discarded). `dropped` is
  // incremented for each frame discarded to make room.
  bool Push(Frame&& frame, int64_t* dropped);
  // Blocks until a frame or Close(); false when closed and empty.
  bool Pop(Frame* frame);
  // Wakes every waiter; Push fails from now on; Pop drains what is left.
  void Close();
  size_t size() const;

 private:
  const size_t capacity_;
  const bool drop_oldest_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;  // guarded by mu_
  bool closed_ = false;       // guarded by mu_
};

}  // namespace outpost::serve::pipeline
