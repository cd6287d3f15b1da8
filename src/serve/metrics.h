// Prometheus metrics of outpost-serve (names in docs/serve.md).
//
// ServeMetrics owns the registry and the metric families; ModelMetrics is the
// set of series of one loaded model version, added on load and removed on
// unload so repeated load/unload cycles do not grow the exposition.
//
// Thread safety: every method is thread-safe (prometheus-cpp metrics are).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/summary.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "common/rolling_quantiles.h"
#include "serve/output_score.h"

namespace outpost::serve {

class ServeMetrics;

// Series of one model version. Created by ServeMetrics::ForModel, removed
// from the exposition by its destructor.
class ModelMetrics {
 public:
  ~ModelMetrics();
  ModelMetrics(const ModelMetrics&) = delete;
  ModelMetrics& operator=(const ModelMetrics&) = delete;

  // One finished request. Durations in nanoseconds.
  void RecordSuccess(int64_t total_ns, int64_t queue_ns, int64_t compute_ns);
  void RecordFailure();
  void RecordRejection();  // queue full
  void RecordBatch(int batch_size);
  void SetQueueDepth(int64_t depth);
  void SetLoaded(double load_seconds);
  // Recomputes inferences/s over the last `window` ticks; called once a second.
  void Tick();
  // The output-score histogram of this version, exported as
  // outpost_output_score: the existing one when its edges equal `edges`
  // (a reload keeps counting), else a new one that replaces it.
  std::shared_ptr<ScoreHistogram> OutputScoreHistogram(const std::vector<double>& edges);

 private:
  friend class ServeMetrics;
  ModelMetrics(ServeMetrics& owner, const std::string& model, const std::string& version,
               const std::string& provider);

  const std::string model_;
  const std::string version_;

  ServeMetrics& owner_;
  bool remove_series_ = true;
  prometheus::Counter& success_;
  prometheus::Counter& failure_;
  prometheus::Counter& rejections_;
  prometheus::Histogram& total_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& compute_;
  RollingQuantiles latency_;  // exposed as outpost_inference_latency_seconds
  prometheus::Histogram& batch_;
  prometheus::Gauge& ips_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& last_success_;
  prometheus::Gauge& loaded_;
  prometheus::Gauge& load_seconds_;

  mutable std::mutex score_mu_;  // load and scrape only; scoring holds its own pointer
  std::shared_ptr<ScoreHistogram> score_;

  static constexpr int kWindow = 10;
  std::mutex tick_mu_;  // only Tick() takes it, once a second
  // history_[t % kWindow] = success count at tick t; tick 0 is creation
  // (count 0), so the first second of traffic is counted.
  double history_[kWindow] = {};
  int tick_ = 1;
};

class ServeMetrics {
 public:
  ServeMetrics();
  ~ServeMetrics();

  // The series of one model version, shared by every live instance of that
  // version (a reload builds the new one beside the old), removed when the
  // last holder lets go.
  std::shared_ptr<ModelMetrics> ForModel(const std::string& model, const std::string& version,
                                         const std::string& provider);
  void RecordLoadFailure(const std::string& model);
  void RecordProviderFallback(const std::string& model, const std::string& provider);

  // Prometheus text exposition format 0.0.4.
  std::string Serialize() const;

  // The registry every family is in, for components that export their own
  // families on the same /metrics (pipelines).
  prometheus::Registry& registry() { return *registry_; }

 private:
  friend class ModelMetrics;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejections_;
  prometheus::Family<prometheus::Histogram>& total_;
  prometheus::Family<prometheus::Histogram>& queue_;
  prometheus::Family<prometheus::Histogram>& compute_;
  prometheus::Family<prometheus::Histogram>& batch_;
  prometheus::Family<prometheus::Gauge>& ips_;
  prometheus::Family<prometheus::Gauge>& queue_depth_;
  prometheus::Family<prometheus::Gauge>& last_success_;
  prometheus::Family<prometheus::Gauge>& loaded_;
  prometheus::Family<prometheus::Gauge>& load_seconds_;
  prometheus::Family<prometheus::Counter>& load_failures_;
  prometheus::Family<prometheus::Counter>& fallbacks_;
  std::shared_ptr<prometheus::Collectable> process_;
  mutable std::mutex models_mu_;
  std::map<std::pair<std::string, std::string>, std::weak_ptr<ModelMetrics>> models_;
};

}  // namespace outpost::serve
