// Prometheus series of pipelines (names in docs/pipelines.md), on the same
// registry as outpost-serve's model metrics.
//
// Thread safety: every method is thread-safe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace outpost::serve::pipeline {

enum class Stage {
  kDecode,
  kQueue,
  kPreprocess,
  kInferenceQueue,
  kInference,
  kPostprocess,
  kSink,
  kTotal
};
inline constexpr int kStageCount = 8;
const char* StageName(Stage stage);

// The families, registered once per registry.
class PipelineMetricFamilies {
 public:
  explicit PipelineMetricFamilies(prometheus::Registry& registry);

 private:
  friend class PipelineMetrics;
  prometheus::Family<prometheus::Counter>& frames_;
  prometheus::Family<prometheus::Counter>& dropped_;
  prometheus::Family<prometheus::Counter>& reconnects_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Family<prometheus::Counter>& results_;
  prometheus::Family<prometheus::Counter>& sink_failures_;
  prometheus::Family<prometheus::Gauge>& source_fps_;
  prometheus::Family<prometheus::Gauge>& fps_;
  prometheus::Family<prometheus::Gauge>& up_;
  prometheus::Family<prometheus::Gauge>& connected_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Family<prometheus::Histogram>& score_;
};

// The series of one pipeline; removed from the exposition on destruction.
class PipelineMetrics {
 public:
  // `score_kind`: "confidence" or "anomaly" (the score histogram's label).
  PipelineMetrics(PipelineMetricFamilies& families, const std::string& pipeline,
                  const std::string& score_kind);
  ~PipelineMetrics();
  PipelineMetrics(const PipelineMetrics&) = delete;
  PipelineMetrics& operator=(const PipelineMetrics&) = delete;

  void FrameReceived() { frames_.Increment(); }
  // reason: queue_full (the source outran inference), model_unavailable,
  // model_busy (the model's queue was full).
  void Dropped(const std::string& reason, int64_t n = 1);
  void Reconnect() { reconnects_.Increment(); }
  // stage: source, decode, preprocess, inference, postprocess, model.
  void Error(const std::string& stage);
  void Result() { results_.Increment(); }
  void SinkFailure(const std::string& sink);
  void Latency(Stage stage, int64_t ns);
  void Score(double score) { score_.Observe(score); }
  void SetUp(bool up) { up_.Set(up ? 1 : 0); }
  void SetConnected(bool connected) { connected_.Set(connected ? 1 : 0); }
  // Recomputes source fps and end-to-end fps over the time since the last
  // call; call about once a second.
  void Tick();

  double frames_received() const { return frames_.Value(); }
  double results() const { return results_.Value(); }
  double dropped_total() const;
  double reconnects() const { return reconnects_.Value(); }

 private:
  PipelineMetricFamilies& families_;
  const std::string pipeline_;
  prometheus::Counter& frames_;
  prometheus::Counter& reconnects_;
  prometheus::Counter& results_;
  prometheus::Gauge& source_fps_;
  prometheus::Gauge& fps_;
  prometheus::Gauge& up_;
  prometheus::Gauge& connected_;
  std::array<prometheus::Histogram*, kStageCount> latency_{};
  prometheus::Histogram& score_;
  mutable std::mutex mu_;  // Tick's state and the lazily added labelled series
  std::vector<prometheus::Counter*> lazy_counters_;
  std::vector<prometheus::Counter*> dropped_series_;
  std::chrono::steady_clock::time_point last_tick_;
  double last_frames_ = 0, last_results_ = 0;
};

}  // namespace outpost::serve::pipeline
