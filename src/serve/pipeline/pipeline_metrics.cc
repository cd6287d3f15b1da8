#include "serve/pipeline/pipeline_metrics.h"

#include <algorithm>

namespace outpost::serve::pipeline {
namespace {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};
}

// Confidences live in 0..1 (steps of 0.05); anomaly scores may go past 1.
prometheus::Histogram::BucketBoundaries ScoreBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (int i = 1; i <= 20; ++i) b.push_back(i * 0.05);
  b.insert(b.end(), {2, 5, 10, 100});
  return b;
}

}  // namespace

const char* StageName(Stage stage) {
  static const char* kNames[kStageCount] = {
      "decode",    "queue",       "preprocess", "inference_queue",
      "inference", "postprocess", "sink",       "total"};
  return kNames[static_cast<int>(stage)];
}

PipelineMetricFamilies::PipelineMetricFamilies(prometheus::Registry& registry)
    : frames_(prometheus::BuildCounter()
                  .Name("outpost_pipeline_frames_total")
                  .Help("Frames read from the pipeline's source.")
                  .Register(registry)),
      dropped_(prometheus::BuildCounter()
                   .Name("outpost_pipeline_frames_dropped_total")
                   .Help("Frames dropped before inference, by reason.")
                   .Register(registry)),
      reconnects_(prometheus::BuildCounter()
                      .Name("outpost_pipeline_source_reconnects_total")
                      .Help("Attempts to (re)open a lost or missing source.")
                      .Register(registry)),
      errors_(prometheus::BuildCounter()
                  .Name("outpost_pipeline_errors_total")
                  .Help("Frames or source events that produced an error result, by stage.")
                  .Register(registry)),
      results_(prometheus::BuildCounter()
                   .Name("outpost_pipeline_results_total")
                   .Help("Results (successful frames) written to the sinks.")
                   .Register(registry)),
      sink_failures_(prometheus::BuildCounter()
                         .Name("outpost_pipeline_sink_failures_total")
                         .Help("Results a sink could not take, by sink.")
                         .Register(registry)),
      source_fps_(prometheus::BuildGauge()
                      .Name("outpost_pipeline_source_fps")
                      .Help("Frames per second read from the source.")
                      .Register(registry)),
      fps_(prometheus::BuildGauge()
               .Name("outpost_pipeline_fps")
               .Help("Results per second, end to end.")
               .Register(registry)),
      up_(prometheus::BuildGauge()
              .Name("outpost_pipeline_up")
              .Help("1 while the pipeline runs, 0 once it finished or failed.")
              .Register(registry)),
      connected_(prometheus::BuildGauge()
                     .Name("outpost_pipeline_source_connected")
                     .Help("1 while the source is open and delivering.")
                     .Register(registry)),
      latency_(prometheus::BuildHistogram()
                   .Name("outpost_pipeline_stage_latency_seconds")
                   .Help("Time per frame in each stage (total: read to sinks written).")
                   .Register(registry)),
      score_(prometheus::BuildHistogram()
                 .Name("outpost_pipeline_score")
                 .Help("Post-processed scores: top-1 or detection confidences, anomaly scores.")
                 .Register(registry)) {}

PipelineMetrics::PipelineMetrics(PipelineMetricFamilies& families, const std::string& pipeline,
                                 const std::string& score_kind)
    : families_(families),
      pipeline_(pipeline),
      frames_(families.frames_.Add({{"pipeline", pipeline}})),
      reconnects_(families.reconnects_.Add({{"pipeline", pipeline}})),
      results_(families.results_.Add({{"pipeline", pipeline}})),
      source_fps_(families.source_fps_.Add({{"pipeline", pipeline}})),
      fps_(families.fps_.Add({{"pipeline", pipeline}})),
      up_(families.up_.Add({{"pipeline", pipeline}})),
      connected_(families.connected_.Add({{"pipeline", pipeline}})),
      score_(families.score_.Add({{"pipeline", pipeline}, {"kind", score_kind}}, ScoreBuckets())),
      last_tick_(std::chrono::steady_clock::now()) {
  for (int i = 0; i < kStageCount; ++i) {
    latency_[i] = &families.latency_.Add(
        {{"pipeline", pipeline}, {"stage", StageName(static_cast<Stage>(i))}}, LatencyBuckets());
  }
  // Present from the start, so a dashboard shows 0 rather than nothing.
  dropped_series_.push_back(
      &families.dropped_.Add({{"pipeline", pipeline}, {"reason", "queue_full"}}));
}

PipelineMetrics::~PipelineMetrics() {
  families_.frames_.Remove(&frames_);
  families_.reconnects_.Remove(&reconnects_);
  families_.results_.Remove(&results_);
  families_.source_fps_.Remove(&source_fps_);
  families_.fps_.Remove(&fps_);
  families_.up_.Remove(&up_);
  families_.connected_.Remove(&connected_);
  families_.score_.Remove(&score_);
  for (prometheus::Histogram* h : latency_) families_.latency_.Remove(h);
  for (prometheus::Counter* c : dropped_series_) families_.dropped_.Remove(c);
  for (prometheus::Counter* c : lazy_counters_) {
    // Each lazily added counter belongs to errors_ or sink_failures_;
    // Remove ignores a metric that is not in the family.
    families_.errors_.Remove(c);
    families_.sink_failures_.Remove(c);
  }
}

void PipelineMetrics::Dropped(const std::string& reason, int64_t n) {
  prometheus::Counter& c = families_.dropped_.Add({{"pipeline", pipeline_}, {"reason", reason}});
  c.Increment(static_cast<double>(n));
  std::lock_guard<std::mutex> lock(mu_);
  if (std::find(dropped_series_.begin(), dropped_series_.end(), &c) == dropped_series_.end()) {
    dropped_series_.push_back(&c);
  }
}

void PipelineMetrics::Error(const std::string& stage) {
  prometheus::Counter& c = families_.errors_.Add({{"pipeline", pipeline_}, {"stage", stage}});
  c.Increment();
  std::lock_guard<std::mutex> lock(mu_);
  if (std::find(lazy_counters_.begin(), lazy_counters_.end(), &c) == lazy_counters_.end()) {
    lazy_counters_.push_back(&c);
  }
}

void PipelineMetrics::SinkFailure(const std::string& sink) {
  prometheus::Counter& c = families_.sink_failures_.Add({{"pipeline", pipeline_}, {"sink", sink}});
  c.Increment();
  std::lock_guard<std::mutex> lock(mu_);
  if (std::find(lazy_counters_.begin(), lazy_counters_.end(), &c) == lazy_counters_.end()) {
    lazy_counters_.push_back(&c);
  }
}

void PipelineMetrics::Latency(Stage stage, int64_t ns) {
  latency_[static_cast<int>(stage)]->Observe(static_cast<double>(ns) * 1e-9);
}

double PipelineMetrics::dropped_total() const {
  double total = 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (prometheus::Counter* c : dropped_series_) total += c->Value();
  return total;
}

void PipelineMetrics::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  auto now = std::chrono::steady_clock::now();
  double seconds = std::chrono::duration<double>(now - last_tick_).count();
  if (seconds <= 0) return;
  double frames = frames_.Value(), results = results_.Value();
  source_fps_.Set((frames - last_frames_) / seconds);
  fps_.Set((results - last_results_) / seconds);
  last_frames_ = frames;
  last_results_ = results;
  last_tick_ = now;
}

}  // namespace outpost::serve::pipeline
