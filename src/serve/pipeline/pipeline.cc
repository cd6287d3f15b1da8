#include "serve/pipeline/pipeline.h"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <opencv2/core/utility.hpp>

namespace outpost::serve::pipeline {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

int64_t Ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}
double Ms(int64_t ns) { return std::round(static_cast<double>(ns) / 1e3) / 1e3; }

void NameThread(std::string_view prefix, const std::string& name) {
  std::string full = StrCat(prefix, name).substr(0, 15);
  pthread_setname_np(pthread_self(), full.c_str());
}

std::string IsoTime(int64_t unix_ms) {
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ", static_cast<int>(unix_ms % 1000));
  return buf;
}

json FrameJson(const Frame& frame) {
  json f = {{"index", frame.index},
            {"timestamp_ms", frame.timestamp_ms},
            {"timestamp", IsoTime(frame.timestamp_ms)}};
  if (frame.position_ms >= 0) f["position_ms"] = std::round(frame.position_ms * 1000) / 1000;
  if (!frame.origin.empty()) f["source"] = frame.origin;
  if (!frame.image.empty()) {
    f["width"] = frame.image.cols;
    f["height"] = frame.image.rows;
  }
  return f;
}

}  // namespace

std::string_view PipelineStateName(Pipeline::State state) {
  switch (state) {
    case Pipeline::State::kCreated:
      return "created";
    case Pipeline::State::kRunning:
      return "running";
    case Pipeline::State::kFinished:
      return "finished";
    case Pipeline::State::kFailed:
      return "failed";
    case Pipeline::State::kStopped:
      return "stopped";
  }
  return "?";
}

// Pre- and post-processing resolved against one model version; rebuilt when
// a hot swap serves another version.
struct Pipeline::Binding {
  std::shared_ptr<ModelVersion> version;
  std::optional<Preprocessor> pre;
  std::unique_ptr<Postprocessor> post;
  std::vector<std::string> requested_outputs;
};

// One frame between pre-processing and the sinks; its buffers are reused.
struct Pipeline::Slot {
  Frame frame;
  int frame_width = 0, frame_height = 0;
  std::vector<std::byte> input;
  FrameTransform transform;
  std::shared_ptr<const Binding> binding;
  int64_t queue_ns = 0, preprocess_ns = 0;
  Clock::time_point submitted;
};

Pipeline::Pipeline(PipelineConfig config, ModelRepository& repository,
                   PipelineMetricFamilies& families)
    : config_(std::move(config)),
      repository_(repository),
      metrics_(std::make_unique<PipelineMetrics>(
          families, config_.name,
          config_.postprocess.type == PostprocessType::kAnomaly ? "anomaly" : "confidence")),
      queue_(static_cast<size_t>(config_.source.queue_size), config_.source.drop_oldest),
      post_(StrCat("post-", config_.name).substr(0, 15)) {}

absl::StatusOr<std::unique_ptr<Pipeline>> Pipeline::Create(PipelineConfig config,
                                                           ModelRepository& repository,
                                                           PipelineMetricFamilies& families) {
  // OpenCV's pool parallelises each resize over every core and its workers
  // then spin-wait for the next job: on a small device they take the cores
  // inference needs (pipeline/model fps 0.94 -> 0.98 on 2 cores). Each
  // pipeline has its own decode and pre-processing threads instead.
  cv::setNumThreads(0);
  std::unique_ptr<Pipeline> p(new Pipeline(std::move(config), repository, families));
  auto prefix = [&](const absl::Status& s) {
    return absl::Status(s.code(), StrCat("pipeline '", p->config_.name, "': ", MessageOf(s)));
  };
  absl::StatusOr<std::unique_ptr<FrameSource>> source = MakeFrameSource(p->config_.source);
  if (!source.ok()) return prefix(source.status());
  p->source_ = std::move(*source);
  for (const SinkConfig& sink_config : p->config_.sinks) {
    absl::StatusOr<std::unique_ptr<Sink>> sink = OpenSink(sink_config, p->config_.name);
    if (!sink.ok()) return prefix(sink.status());
    p->sinks_.push_back(std::move(*sink));
    p->sink_failing_.push_back(false);
  }
  for (int i = 0; i < p->config_.max_in_flight; ++i) {
    p->slots_.push_back(std::make_unique<Slot>());
    p->free_slots_.push_back(p->slots_.back().get());
  }
  p->metrics_->SetUp(false);
  p->metrics_->SetConnected(false);
  return p;
}

Pipeline::~Pipeline() { Stop(); }

void Pipeline::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return;
    started_ = true;
    state_ = State::kRunning;
  }
  metrics_->SetUp(true);
  spdlog::info("pipeline '{}': {} -> model '{}' ({}) -> {} sink(s)", config_.name,
               source_->Describe(), config_.model, PostprocessTypeName(config_.postprocess.type),
               sinks_.size());
  source_thread_ = std::thread([this] { SourceLoop(); });
  pre_thread_ = std::thread([this] { PreprocessLoop(); });
}

void Pipeline::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    stopping_ = true;
    cv_.notify_all();
  }
  queue_.Close();
  if (source_thread_.joinable()) source_thread_.join();
  if (pre_thread_.joinable()) pre_thread_.join();
  post_.Stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kRunning || state_ == State::kCreated) state_ = State::kStopped;
    cv_.notify_all();
  }
  metrics_->SetUp(false);
  metrics_->SetConnected(false);
}

bool Pipeline::Wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] {
    return state_ == State::kFinished || state_ == State::kFailed || state_ == State::kStopped;
  });
}

Pipeline::State Pipeline::state() const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(mu_));
  return state_;
}

std::string Pipeline::error() const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(mu_));
  return error_;
}

void Pipeline::SetState(State state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == State::kRunning) state_ = state;
  cv_.notify_all();
}

void Pipeline::Fail(const std::string& message) {
  spdlog::error("pipeline '{}' stopped: {}", config_.name, message);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty()) error_ = message;
  }
  // The state changes once the error result is in the sinks; posted before
  // the queue closes so the pre thread's "finished" comes after it.
  post_.Post([this] {
    SetState(State::kFailed);
    metrics_->SetUp(false);
  });
  // Ends the source thread too (its next Push fails): a failed pipeline
  // must not go on decoding a camera for nothing.
  queue_.Close();
}

void Pipeline::SourceLoop() {
  NameThread("src-", config_.name);
  const bool live = source_->live();
  std::chrono::milliseconds backoff = config_.source.reconnect_initial;
  bool open = false;
  bool outage_reported = false;
  bool drop_logged = false;
  auto wait_backoff = [&] {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, backoff, [&] { return stopping_; });
    backoff = std::min(backoff * 2, config_.source.reconnect_max);
  };
  auto stopping = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  };
  bool failed = false;
  // source.max_fps: reads are spaced at least `period` apart.
  const auto period = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(config_.source.max_fps > 0 ? 1 / config_.source.max_fps : 0));
  auto next_read = std::chrono::steady_clock::now();
  while (!stopping()) {
    if (!open) {
      absl::Status status = source_->Open();
      if (status.ok()) {
        open = true;
        backoff = config_.source.reconnect_initial;
        metrics_->SetConnected(true);
        if (outage_reported)
          spdlog::info("pipeline '{}': {} is back", config_.name, source_->Describe());
        outage_reported = false;
        continue;
      }
      if (live && absl::IsUnavailable(status)) {
        metrics_->Reconnect();
        metrics_->SetConnected(false);
        if (!outage_reported) {
          std::string message = StrCat(MessageOf(status), "; retrying with backoff (",
                                       config_.source.reconnect_initial.count(), " ms doubling to ",
                                       config_.source.reconnect_max.count(), " ms)");
          spdlog::warn("pipeline '{}': {}", config_.name, message);
          metrics_->Error("source");
          ReportError("source", message, nullptr, nullptr);
          outage_reported = true;
        }
        wait_backoff();
        continue;
      }
      metrics_->Error("source");
      ReportError("source", std::string(MessageOf(status)), nullptr, nullptr);
      Fail(std::string(MessageOf(status)));
      failed = true;
      break;
    }
    if (period.count() > 0) {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_until(lock, next_read, [&] { return stopping_; })) break;
      next_read = std::max(next_read + period, std::chrono::steady_clock::now());
    }
    Frame frame;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!spare_mats_.empty()) {
        frame.image = std::move(spare_mats_.back());
        spare_mats_.pop_back();
      }
    }
    absl::Status status = source_->Read(&frame);
    if (status.ok()) {
      metrics_->FrameReceived();
      metrics_->Latency(Stage::kDecode, frame.decode_ns);
      int64_t dropped = 0;
      if (!queue_.Push(std::move(frame), &dropped)) break;
      if (dropped > 0) {
        metrics_->Dropped("queue_full", dropped);
        if (!drop_logged) {
          spdlog::warn(
              "pipeline '{}': inference is slower than {}: dropping the oldest frames "
              "(counted in outpost_pipeline_frames_dropped_total)",
              config_.name, source_->Describe());
          drop_logged = true;
        }
      }
    } else if (absl::IsDataLoss(status)) {
      metrics_->FrameReceived();
      metrics_->Error("decode");
      ReportError("decode", frame.error, &frame, nullptr);
    } else if (absl::IsOutOfRange(status)) {
      if (!config_.source.loop) break;
      open = false;
    } else if (absl::IsUnavailable(status)) {
      open = false;
      metrics_->SetConnected(false);
      metrics_->Error("source");
      std::string message = StrCat(MessageOf(status), "; reconnecting");
      spdlog::warn("pipeline '{}': {}", config_.name, message);
      ReportError("source", message, nullptr, nullptr);
      outage_reported = true;
      metrics_->Reconnect();
      wait_backoff();
    } else {
      metrics_->Error("source");
      ReportError("source", std::string(MessageOf(status)), nullptr, nullptr);
      Fail(std::string(MessageOf(status)));
      failed = true;
      break;
    }
  }
  (void)failed;
  metrics_->SetConnected(false);
  queue_.Close();
}

absl::StatusOr<std::shared_ptr<const Pipeline::Binding>> Pipeline::Bind(
    std::shared_ptr<ModelVersion> version) {
  auto binding = std::make_shared<Binding>();
  const Engine& engine = version->engine();
  const std::vector<TensorSpec>& inputs = engine.inputs();
  const PreprocessConfig pre_config =
      ResolvePreprocess(version->config().preprocess, config_.preprocess);
  if (inputs.size() != 1 && pre_config.input.empty()) {
    return absl::InvalidArgumentError(
        StrCat("model '", version->name(), "' has ", inputs.size(),
               " inputs: name the image input with preprocess.input"));
  }
  const TensorSpec* input = &inputs[0];
  if (!pre_config.input.empty()) {
    auto it = std::find_if(inputs.begin(), inputs.end(),
                           [&](const TensorSpec& s) { return s.name == pre_config.input; });
    if (it == inputs.end()) {
      return absl::InvalidArgumentError(StrCat("preprocess.input '", pre_config.input, "': model '",
                                               version->name(), "' has no such input"));
    }
    input = &*it;
  }
  absl::StatusOr<Preprocessor> pre = Preprocessor::Create(pre_config, *input);
  if (!pre.ok()) return pre.status();
  binding->pre.emplace(std::move(*pre));
  std::vector<std::string> labels;
  std::filesystem::path labels_file = config_.postprocess.labels;
  if (labels_file.empty() && !version->config().labels_file.empty()) {
    labels_file = repository_.options().root / version->name() / version->config().labels_file;
  }
  if (!labels_file.empty()) {
    ASSIGN_OR_RETURN(labels, LoadLabels(labels_file));
  }
  ASSIGN_OR_RETURN(binding->post,
                   Postprocessor::Create(config_.postprocess, engine.outputs(),
                                         binding->pre->batched(), std::move(labels)));
  for (int index : binding->post->output_indices()) {
    binding->requested_outputs.push_back(engine.outputs()[index].name);
  }
  binding->version = std::move(version);
  return std::shared_ptr<const Binding>(std::move(binding));
}

Pipeline::Slot* Pipeline::AcquireSlot() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return stopping_ || !free_slots_.empty(); });
  if (stopping_ && free_slots_.empty()) return nullptr;
  Slot* slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

void Pipeline::ReleaseSlot(Slot* slot) {
  slot->binding.reset();
  std::lock_guard<std::mutex> lock(mu_);
  if (!slot->frame.image.empty() && spare_mats_.size() < 4) {
    spare_mats_.push_back(std::move(slot->frame.image));
  }
  slot->frame.image = cv::Mat();
  free_slots_.push_back(slot);
  cv_.notify_all();
}

void Pipeline::PreprocessLoop() {
  NameThread("pre-", config_.name);
  Frame frame;
  bool model_missing_reported = false;
  while (queue_.Pop(&frame)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    Slot* slot = AcquireSlot();
    if (slot == nullptr) break;
    slot->queue_ns = Ns(Clock::now() - frame.read_at);
    absl::StatusOr<std::shared_ptr<ModelVersion>> version =
        repository_.Get(config_.model, config_.model_version);
    if (!version.ok()) {
      metrics_->Dropped("model_unavailable");
      if (!model_missing_reported) {
        metrics_->Error("model");
        std::string message = StrCat("model not available: ", MessageOf(version.status()));
        spdlog::warn("pipeline '{}': {} (dropping frames until it is)", config_.name, message);
        ReportError("model", message, &frame, nullptr);
        model_missing_reported = true;
      }
      slot->frame = std::move(frame);
      ReleaseSlot(slot);
      continue;
    }
    model_missing_reported = false;
    if (binding_ == nullptr || binding_->version != *version) {
      absl::StatusOr<std::shared_ptr<const Binding>> bound = Bind(*version);
      if (!bound.ok()) {
        std::string message =
            StrCat("model '", (*version)->name(), "' version ", (*version)->version_string(),
                   " does not fit the pipeline: ", MessageOf(bound.status()));
        metrics_->Error("model");
        ReportError("model", message, &frame, version->get());
        slot->frame = std::move(frame);
        ReleaseSlot(slot);
        if (!ever_bound_) {
          Fail(message);
          break;
        }
        binding_.reset();
        continue;
      }
      if (binding_ != nullptr) {
        spdlog::info("pipeline '{}': now on model '{}' version {}", config_.name,
                     (*version)->name(), (*version)->version_string());
      }
      binding_ = std::move(*bound);
      ever_bound_ = true;
    }
    ModelVersion& mv = *binding_->version;
    Clock::time_point start = Clock::now();
    slot->frame_width = frame.image.cols;
    slot->frame_height = frame.image.rows;
    slot->transform = binding_->pre->Run(frame.image, &slot->input, &resize_scratch_);
    slot->frame = std::move(frame);
    slot->binding = binding_;
    slot->submitted = Clock::now();
    slot->preprocess_ns = Ns(slot->submitted - start);
    InferRequest request;
    request.inputs.push_back(InputTensor{binding_->pre->input_name(), binding_->pre->dtype(),
                                         binding_->pre->shape(),
                                         std::span<const std::byte>(slot->input)});
    request.requested_outputs = binding_->requested_outputs;
    request.arrival = slot->submitted;
    absl::Status status = mv.scheduler().Submit(
        std::move(request), [this, slot](absl::StatusOr<InferResponse> result) mutable {
          // Off the inference thread: post-processing and sinks (a webhook
          // may retry for seconds) must not hold up the model.
          post_.Post([this, slot, result = std::move(result)]() mutable {
            Finish(slot, std::move(result));
          });
        });
    if (!status.ok()) {
      if (absl::IsUnavailable(status)) {
        mv.metrics().RecordRejection();
        metrics_->Dropped("model_busy");
      } else {
        mv.metrics().RecordFailure();
        metrics_->Error("inference");
        ReportError("inference", std::string(MessageOf(status)), &slot->frame, &mv);
      }
      ReleaseSlot(slot);
    }
  }
  // Every slot back means every result is in the sinks (Finish releases its
  // slot last); the state then says finished.
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return free_slots_.size() == slots_.size(); });
  }
  binding_.reset();
  post_.Post([this] {
    bool stopped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopped = stopping_;
    }
    SetState(stopped ? State::kStopped : State::kFinished);
    metrics_->SetUp(false);
  });
}

void Pipeline::Finish(Slot* slot, absl::StatusOr<InferResponse> result) {
  const Binding& binding = *slot->binding;
  ModelVersion& mv = *binding.version;
  if (!result.ok()) {
    mv.metrics().RecordFailure();
    metrics_->Error("inference");
    ReportError("inference", std::string(MessageOf(result.status())), &slot->frame, &mv);
    ReleaseSlot(slot);
    return;
  }
  Clock::time_point inferred = Clock::now();
  mv.metrics().RecordSuccess(Ns(inferred - slot->submitted), result->stats.queue_ns,
                             result->stats.compute_ns);
  json out = {{"pipeline", config_.name},
              {"model", mv.name()},
              {"model_version", mv.version_string()},
              {"frame", FrameJson(slot->frame)}};
  std::vector<double> scores;
  absl::Status status = binding.post->Run(result->outputs, slot->transform, &out, &scores);
  result->outputs.clear();  // ONNX Runtime's buffers go back now
  if (!status.ok()) {
    metrics_->Error("postprocess");
    ReportError("postprocess", std::string(MessageOf(status)), &slot->frame, &mv);
    ReleaseSlot(slot);
    return;
  }
  Clock::time_point done = Clock::now();
  int64_t post_ns = Ns(done - inferred);
  int64_t total_ns = Ns(done - slot->frame.read_at);
  out["latency_ms"] = {{"decode", Ms(slot->frame.decode_ns)},
                       {"queue", Ms(slot->queue_ns)},
                       {"preprocess", Ms(slot->preprocess_ns)},
                       {"inference_queue", Ms(result->stats.queue_ns)},
                       {"inference", Ms(result->stats.compute_ns)},
                       {"postprocess", Ms(post_ns)},
                       {"total", Ms(total_ns + slot->frame.decode_ns)}};
  WriteResult(out.dump(-1, ' ', false, json::error_handler_t::replace));
  Clock::time_point written = Clock::now();
  metrics_->Result();
  for (double s : scores) metrics_->Score(s);
  metrics_->Latency(Stage::kQueue, slot->queue_ns);
  metrics_->Latency(Stage::kPreprocess, slot->preprocess_ns);
  metrics_->Latency(Stage::kInferenceQueue, result->stats.queue_ns);
  metrics_->Latency(Stage::kInference, result->stats.compute_ns);
  metrics_->Latency(Stage::kPostprocess, post_ns);
  metrics_->Latency(Stage::kSink, Ns(written - done));
  metrics_->Latency(Stage::kTotal, Ns(written - slot->frame.read_at) + slot->frame.decode_ns);
  ReleaseSlot(slot);
}

void Pipeline::ReportError(const std::string& stage, const std::string& message, const Frame* frame,
                           const ModelVersion* version) {
  error_results_.fetch_add(1);
  int64_t n = error_log_count_.fetch_add(1) + 1;
  if (stage != "source" && stage != "model" && (n == 1 || n % 1000 == 0)) {
    spdlog::warn("pipeline '{}': {} error (#{}): {}", config_.name, stage, n, message);
  }
  json out = {{"pipeline", config_.name}, {"model", config_.model}};
  if (version != nullptr) out["model_version"] = version->version_string();
  if (frame != nullptr) {
    out["frame"] = FrameJson(*frame);
  } else {
    int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    out["time"] = IsoTime(now_ms);
  }
  out["error"] = {{"stage", stage}, {"message", message}};
  post_.Post([this, line = out.dump(-1, ' ', false, json::error_handler_t::replace)] {
    WriteResult(line);
  });
}

void Pipeline::WriteResult(const std::string& line) {
  for (size_t i = 0; i < sinks_.size(); ++i) {
    absl::Status status = sinks_[i]->Write(line);
    if (!status.ok()) {
      metrics_->SinkFailure(sinks_[i]->name());
      if (!sink_failing_[i]) {
        spdlog::warn("pipeline '{}': sink {} failed (results to it are lost until it recovers): {}",
                     config_.name, sinks_[i]->name(), MessageOf(status));
        sink_failing_[i] = true;
      }
    } else if (sink_failing_[i]) {
      spdlog::info("pipeline '{}': sink {} works again", config_.name, sinks_[i]->name());
      sink_failing_[i] = false;
    }
  }
}

}  // namespace outpost::serve::pipeline
