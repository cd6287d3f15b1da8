#include "serve/metrics.h"

#include <onnxruntime_c_api.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <limits>
#include <sstream>

#include "common/process_metrics.h"

namespace outpost::serve {
namespace {

using prometheus::Histogram;

// Latency buckets from 100 µs to 10 s: edge models range from sub-millisecond
// classifiers to multi-second detectors on a busy CPU.
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};
}

Histogram::BucketBoundaries BatchBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128}; }

double Seconds(int64_t ns) { return static_cast<double>(ns) * 1e-9; }

}  // namespace

ModelMetrics::ModelMetrics(ServeMetrics& owner, const std::string& model,
                           const std::string& version, const std::string& provider)
    : owner_(owner),
      model_(model),
      version_(version),
      success_(
          owner.requests_.Add({{"model", model}, {"version", version}, {"status", "success"}})),
      failure_(
          owner.requests_.Add({{"model", model}, {"version", version}, {"status", "failure"}})),
      rejections_(owner.rejections_.Add({{"model", model}, {"version", version}})),
      total_(owner.total_.Add({{"model", model}, {"version", version}}, LatencyBuckets())),
      queue_(owner.queue_.Add({{"model", model}, {"version", version}}, LatencyBuckets())),
      compute_(owner.compute_.Add({{"model", model}, {"version", version}}, LatencyBuckets())),
      batch_(owner.batch_.Add({{"model", model}, {"version", version}}, BatchBuckets())),
      ips_(owner.ips_.Add({{"model", model}, {"version", version}})),
      queue_depth_(owner.queue_depth_.Add({{"model", model}, {"version", version}})),
      last_success_(owner.last_success_.Add({{"model", model}, {"version", version}})),
      loaded_(owner.loaded_.Add({{"model", model}, {"version", version}, {"provider", provider}})),
      load_seconds_(owner.load_seconds_.Add({{"model", model}, {"version", version}})) {}

ModelMetrics::~ModelMetrics() {
  if (!remove_series_) return;
  owner_.requests_.Remove(&success_);
  owner_.requests_.Remove(&failure_);
  owner_.rejections_.Remove(&rejections_);
  owner_.total_.Remove(&total_);
  owner_.queue_.Remove(&queue_);
  owner_.compute_.Remove(&compute_);
  owner_.batch_.Remove(&batch_);
  owner_.ips_.Remove(&ips_);
  owner_.queue_depth_.Remove(&queue_depth_);
  owner_.last_success_.Remove(&last_success_);
  owner_.loaded_.Remove(&loaded_);
  owner_.load_seconds_.Remove(&load_seconds_);
}

void ModelMetrics::RecordSuccess(int64_t total_ns, int64_t queue_ns, int64_t compute_ns) {
  success_.Increment();
  total_.Observe(Seconds(total_ns));
  queue_.Observe(Seconds(queue_ns));
  compute_.Observe(Seconds(compute_ns));
  latency_.Observe(Seconds(total_ns));
  last_success_.SetToCurrentTime();
}

void ModelMetrics::RecordFailure() { failure_.Increment(); }

void ModelMetrics::RecordRejection() {
  rejections_.Increment();
  failure_.Increment();
}

void ModelMetrics::RecordBatch(int batch_size) { batch_.Observe(batch_size); }

void ModelMetrics::SetQueueDepth(int64_t depth) { queue_depth_.Set(static_cast<double>(depth)); }

void ModelMetrics::SetLoaded(double load_seconds) {
  loaded_.Set(1);
  load_seconds_.Set(load_seconds);
}

void ModelMetrics::Tick() {
  std::lock_guard<std::mutex> lock(tick_mu_);
  double now = success_.Value();
  int slot = tick_ % kWindow;
  int span = tick_ < kWindow ? tick_ : kWindow;
  double oldest = history_[tick_ < kWindow ? 0 : slot];
  history_[slot] = now;
  ++tick_;
  ips_.Set((now - oldest) / span);
}

ServeMetrics::ServeMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("outpost_inference_requests_total")
                    .Help("Inference requests by outcome.")
                    .Register(*registry_)),
      rejections_(prometheus::BuildCounter()
                      .Name("outpost_inference_queue_rejections_total")
                      .Help("Requests refused with 503 because the model's queue was full.")
                      .Register(*registry_)),
      total_(prometheus::BuildHistogram()
                 .Name("outpost_inference_request_duration_seconds")
                 .Help("End-to-end inference latency: request parsed to response ready.")
                 .Register(*registry_)),
      queue_(prometheus::BuildHistogram()
                 .Name("outpost_inference_queue_duration_seconds")
                 .Help("Time a request waited in the model's queue.")
                 .Register(*registry_)),
      compute_(prometheus::BuildHistogram()
                   .Name("outpost_inference_compute_duration_seconds")
                   .Help("ONNX Runtime execution time of the batch a request was in.")
                   .Register(*registry_)),
      batch_(prometheus::BuildHistogram()
                 .Name("outpost_inference_batch_size")
                 .Help("Batch sizes executed (first dimension).")
                 .Register(*registry_)),
      ips_(prometheus::BuildGauge()
               .Name("outpost_inferences_per_second")
               .Help("Successful inferences per second over the last 10 seconds.")
               .Register(*registry_)),
      queue_depth_(prometheus::BuildGauge()
                       .Name("outpost_inference_queue_depth")
                       .Help("Requests waiting in the model's queue.")
                       .Register(*registry_)),
      last_success_(prometheus::BuildGauge()
                        .Name("outpost_last_inference_timestamp_seconds")
                        .Help("Unix time of the last successful inference.")
                        .Register(*registry_)),
      loaded_(prometheus::BuildGauge()
                  .Name("outpost_model_loaded")
                  .Help("1 while the model version is loaded, labelled with its provider.")
                  .Register(*registry_)),
      load_seconds_(prometheus::BuildGauge()
                        .Name("outpost_model_load_duration_seconds")
                        .Help("Time to load and warm up the model version.")
                        .Register(*registry_)),
      load_failures_(prometheus::BuildCounter()
                         .Name("outpost_model_load_failures_total")
                         .Help("Model loads that failed.")
                         .Register(*registry_)),
      fallbacks_(prometheus::BuildCounter()
                     .Name("outpost_execution_provider_fallbacks_total")
                     .Help("Preferred execution providers that failed, so the next was used.")
                     .Register(*registry_)),
      process_(MakeProcessCollector()) {
  // What runs here, for inventories (the agent reports it to the hub).
  prometheus::BuildGauge()
      .Name("outpost_build_info")
      .Help("1, labelled with outpost-serve's version and the ONNX Runtime library's.")
      .Register(*registry_)
      .Add({{"version", OUTPOST_VERSION}, {"onnxruntime", OrtGetApiBase()->GetVersionString()}})
      .Set(1);
}

ServeMetrics::~ServeMetrics() = default;

std::shared_ptr<ModelMetrics> ServeMetrics::ForModel(const std::string& model,
                                                     const std::string& version,
                                                     const std::string& provider) {
  std::lock_guard<std::mutex> lock(models_mu_);
  auto& slot = models_[{model, version}];
  if (auto existing = slot.lock()) return existing;
  std::shared_ptr<ModelMetrics> created(
      new ModelMetrics(*this, model, version, provider),
      [this, key = std::make_pair(model, version)](ModelMetrics* m) {
        std::lock_guard<std::mutex> lock(models_mu_);
        auto it = models_.find(key);
        // A reload may already have made a new holder of
        // the same series; then they must stay.
        bool replaced = it != models_.end() && !it->second.expired();
        if (!replaced && it != models_.end()) models_.erase(it);
        m->remove_series_ = !replaced;
        delete m;
      });
  slot = created;
  return created;
}

void ServeMetrics::RecordLoadFailure(const std::string& model) {
  load_failures_.Add({{"model", model}}).Increment();
}

void ServeMetrics::RecordProviderFallback(const std::string& model, const std::string& provider) {
  fallbacks_.Add({{"model", model}, {"provider", provider}}).Increment();
}

std::shared_ptr<ScoreHistogram> ModelMetrics::OutputScoreHistogram(
    const std::vector<double>& edges) {
  std::lock_guard<std::mutex> lock(score_mu_);
  if (score_ == nullptr || score_->edges() != edges)
    score_ = std::make_shared<ScoreHistogram>(edges);
  return score_;
}

std::string ServeMetrics::Serialize() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::MetricFamily> extra = process_->Collect();
  families.insert(families.end(), extra.begin(), extra.end());

  prometheus::MetricFamily latency;
  latency.name = "outpost_inference_latency_seconds";
  latency.help = "End-to-end latency quantiles over a rolling 5-minute window.";
  latency.type = prometheus::MetricType::Summary;
  std::vector<std::shared_ptr<ModelMetrics>> live;
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    for (const auto& [key, weak] : models_) {
      if (auto model = weak.lock()) live.push_back(std::move(model));
    }
  }
  for (const auto& model : live) {
    prometheus::ClientMetric metric;
    metric.label = {{"model", model->model_}, {"version", model->version_}};
    metric.summary.sample_count = model->latency_.Count();
    metric.summary.sample_sum = model->latency_.Sum();
    for (double q : {0.5, 0.95, 0.99}) {
      metric.summary.quantile.push_back({q, model->latency_.Quantile(q)});
    }
    latency.metric.push_back(std::move(metric));
  }
  families.push_back(std::move(latency));

  prometheus::MetricFamily scores;
  scores.name = "outpost_output_score";
  scores.help = "Per-row output score (top-class probability by default), for drift checks.";
  scores.type = prometheus::MetricType::Histogram;
  for (const auto& model : live) {
    std::shared_ptr<ScoreHistogram> histogram;
    {
      std::lock_guard<std::mutex> lock(model->score_mu_);
      histogram = model->score_;
    }
    if (histogram == nullptr) continue;
    ScoreHistogram::Snapshot snapshot = histogram->Take();
    prometheus::ClientMetric metric;
    metric.label = {{"model", model->model_}, {"version", model->version_}};
    metric.histogram.sample_count = snapshot.count;
    metric.histogram.sample_sum = snapshot.sum;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < snapshot.counts.size(); ++i) {
      cumulative += snapshot.counts[i];
      metric.histogram.bucket.push_back(
          {cumulative, i < histogram->edges().size() ? histogram->edges()[i]
                                                     : std::numeric_limits<double>::infinity()});
    }
    scores.metric.push_back(std::move(metric));
  }
  if (!scores.metric.empty()) families.push_back(std::move(scores));
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace outpost::serve
