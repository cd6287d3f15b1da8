// Pipeline: frames from a source through pre-processing, the model's
// scheduler (the same one API requests go through, so batching, hot swap and
// model metrics apply), post-processing, and out to the sinks.
//
// Threads, each with a bounded hand-off so decoding and pre-processing
// overlap with inference:
//   "src-<name>"   reads and decodes frames into a FrameQueue of
//                  source.queue_size (drops the oldest for live sources);
//                  reopens a lost source with doubling backoff
//   "pre-<name>"   takes a frame, waits for one of max_in_flight slots,
//                  pre-processes into the slot's reused buffer and submits it
//   scheduler      runs the model (the model version's instance threads)
//   "post-<name>"  post-processes, writes the result to every sink
//
// Errors a frame or the source runs into (an unreadable image, a lost
// camera, a model that is not loaded, an inference or post-processing
// failure) are logged (the first of a kind, then every 1000th), counted in
// outpost_pipeline_errors_total and written to the sinks as an error result;
// the pipeline goes on. A source that can never work (a missing file, a
// corrupt video) or a model whose outputs do not fit the post-processing
// when the pipeline first binds to it stops the pipeline (state kFailed,
// with the message). After a hot swap to a version that does not fit, each
// frame gets an error result until a fitting version is served.
//
// Thread safety: Start/Stop/Wait/state/Tick are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/work_queue.h"
#include "serve/model_repository.h"
#include "serve/pipeline/frame_source.h"
#include "serve/pipeline/pipeline_config.h"
#include "serve/pipeline/pipeline_metrics.h"
#include "serve/pipeline/postprocess.h"
#include "serve/pipeline/preprocess.h"
#include "serve/pipeline/sinks.h"

namespace outpost::serve::pipeline {

class Pipeline {
 public:
  enum class State { kCreated, kRunning, kFinished, kFailed, kStopped };

  // Opens the sinks and makes the source (not opened yet). `repository`
  // and `families` are borrowed and must outlive the pipeline. Errors: those
  // of OpenSink / MakeFrameSource, naming the pipeline.
  // Process-wide side effect: OpenCV's own thread pool is turned off
  // (cv::setNumThreads(0)), so resize and colour conversion run on the
  // pipeline's threads; see docs/pipelines.md "Threads".
  static absl::StatusOr<std::unique_ptr<Pipeline>> Create(PipelineConfig config,
                                                          ModelRepository& repository,
                                                          PipelineMetricFamilies& families);
  // Stop().
  ~Pipeline();

  // Starts the threads. Once.
  void Start();
  // Stops reading, lets in-flight frames finish and reach the sinks, joins
  // the threads. Idempotent. A live source blocked in a read returns within
  // its read timeout.
  void Stop();
  // Waits until the pipeline finished (a file source at its end and every
  // result written) or failed; false on timeout.
  bool Wait(std::chrono::milliseconds timeout);

  State state() const;
  // Why the pipeline failed (empty unless kFailed).
  std::string error() const;
  // Error results written so far (frames and source events).
  int64_t error_results() const { return error_results_.load(); }
  const PipelineConfig& config() const { return config_; }
  PipelineMetrics& metrics() { return *metrics_; }
  // Updates the fps gauges; call about once a second.
  void Tick() { metrics_->Tick(); }

 private:
  struct Binding;
  struct Slot;

  Pipeline(PipelineConfig config, ModelRepository& repository, PipelineMetricFamilies& families);
  void SourceLoop();
  void PreprocessLoop();
  absl::StatusOr<std::shared_ptr<const Binding>> Bind(std::shared_ptr<ModelVersion> version);
  void Finish(Slot* slot, absl::StatusOr<InferResponse> result);
  // Posts an error result to the post thread (sinks are used there only).
  void ReportError(const std::string& stage, const std::string& message, const Frame* frame,
                   const ModelVersion* version);
  void WriteResult(const std::string& json);
  void Fail(const std::string& message);
  Slot* AcquireSlot();
  void ReleaseSlot(Slot* slot);
  void SetState(State state);

  const PipelineConfig config_;
  ModelRepository& repository_;
  std::unique_ptr<PipelineMetrics> metrics_;
  std::unique_ptr<FrameSource> source_;
  std::vector<std::unique_ptr<Sink>> sinks_;  // post thread only
  std::vector<bool> sink_failing_;            // post thread only: for log-once
  FrameQueue queue_;

  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kCreated;  // guarded by mu_
  std::string error_;              // guarded by mu_
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> free_slots_;    // guarded by mu_
  std::vector<cv::Mat> spare_mats_;  // guarded by mu_: decoded-frame buffers to reuse
  bool stopping_ = false;            // guarded by mu_
  bool started_ = false;             // guarded by mu_
  bool stopped_ = false;             // guarded by mu_

  std::shared_ptr<const Binding> binding_;  // pre thread only
  bool ever_bound_ = false;                 // pre thread only
  cv::Mat resize_scratch_;                  // pre thread only
  std::atomic<int64_t> error_results_{0};
  std::atomic<int64_t> error_log_count_{0};

  WorkQueue post_;
  std::thread source_thread_;
  std::thread pre_thread_;
};

std::string_view PipelineStateName(Pipeline::State state);

}  // namespace outpost::serve::pipeline
