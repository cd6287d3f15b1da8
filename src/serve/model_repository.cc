#include "serve/model_repository.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <functional>
#include <future>
#include <sstream>
#include <system_error>

namespace outpost::serve {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kModelFile = "model.onnx";
constexpr std::string_view kConfigFile = "config.yaml";

// Parses a version folder name: digits only, > 0.
bool ParseVersion(std::string_view name, int64_t* version) {
  if (name.empty() || name.size() > 18) return false;
  for (char c : name) {
    if (c < '0' || c > '9') return false;
  }
  auto result = std::from_chars(name.data(), name.data() + name.size(), *version);
  return result.ec == std::errc() && *version > 0;
}

// Size and modification time: enough to notice a replaced file.
std::string FileIdentity(const fs::path& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return "-";
  auto mtime = fs::last_write_time(path, ec);
  if (ec) return "-";
  return StrCat(size, "@", mtime.time_since_epoch().count());
}

std::vector<int64_t> VersionsOnDisk(const fs::path& model_dir) {
  std::vector<int64_t> versions;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(model_dir, ec)) {
    int64_t version;
    if (entry.is_directory(ec) && ParseVersion(entry.path().filename().string(), &version) &&
        fs::is_regular_file(entry.path() / kModelFile, ec)) {
      versions.push_back(version);
    }
  }
  std::sort(versions.begin(), versions.end());
  return versions;
}

absl::StatusOr<std::string> ReadConfigText(const fs::path& model_dir, bool* exists) {
  fs::path path = model_dir / kConfigFile;
  std::error_code ec;
  *exists = fs::exists(path, ec);
  if (!*exists) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(StrCat(path.string(), ": cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A model whose every input has a dynamic first dimension can batch.
int64_t InferMaxBatchSize(const Engine& engine) {
  if (engine.inputs().empty()) return 0;
  for (const TensorSpec& spec : engine.inputs()) {
    if (spec.shape.empty() || spec.shape[0] != -1) return 0;
  }
  for (const TensorSpec& spec : engine.outputs()) {
    if (spec.shape.empty() || spec.shape[0] != -1) return 0;
  }
  return 8;
}

std::string JoinVersions(const std::map<int64_t, std::shared_ptr<ModelVersion>>& versions) {
  std::string out;
  for (const auto& [v, unused] : versions) StrAppend(&out, out.empty() ? "" : ", ", v);
  return out.empty() ? "none" : out;
}

}  // namespace

ModelVersion::~ModelVersion() {
  // Queued requests finish before the session and the metric series go.
  if (scheduler_) scheduler_->Drain();
  scheduler_.reset();
  engine_.reset();
}

ModelRepository::ModelRepository(RepositoryOptions options)
    : options_(std::move(options)), worker_(std::make_shared<WorkQueue>("model-repo")) {}

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::Create(
    RepositoryOptions options) {
  std::error_code ec;
  if (!fs::is_directory(options.root, ec)) {
    return absl::NotFoundError(
        StrCat("model repository '", options.root.string(), "' is not a directory"));
  }
  if (options.metrics == nullptr) return absl::InvalidArgumentError("metrics are required");
  return std::unique_ptr<ModelRepository>(new ModelRepository(std::move(options)));
}

ModelRepository::~ModelRepository() {
  worker_->SetPeriodic(std::chrono::milliseconds(0), nullptr);
  std::map<std::string, Entry, std::less<>> entries;
  {
    absl::MutexLock lock(&mu_);
    entries.swap(entries_);
  }
  entries.clear();  // releases the versions: their destruction is queued on the worker
  worker_->Stop();
}

std::shared_ptr<ModelVersion> ModelRepository::Adopt(ModelVersion* version) {
  std::weak_ptr<WorkQueue> worker = worker_;
  return std::shared_ptr<ModelVersion>(version, [worker](ModelVersion* v) {
    // Draining may wait for a batch in flight: never do it on the thread that
    // happened to drop the last reference (an io or inference thread).
    auto destroy = [v] {
      delete v;
      // glibc keeps freed heap pages; a device that swaps models for weeks
      // must return a session's hundreds of MB to the system.
      malloc_trim(0);
    };
    if (auto queue = worker.lock(); queue && !queue->OnQueueThread()) {
      if (queue->Post(destroy)) return;
    }
    destroy();
  });
}

std::vector<std::string> ModelRepository::ModelsOnDisk() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.root, ec)) {
    std::string name = entry.path().filename().string();
    if (!name.empty() && name[0] != '.' && entry.is_directory(ec)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string ModelRepository::DiskSignature(const std::string& name) const {
  fs::path dir = options_.root / name;
  std::string signature = FileIdentity(dir / kConfigFile);
  for (int64_t version : VersionsOnDisk(dir)) {
    StrAppend(&signature, ";", version, "=",
              FileIdentity(dir / std::to_string(version) / kModelFile));
  }
  return signature;
}

absl::StatusOr<std::shared_ptr<ModelVersion>> ModelRepository::BuildVersion(
    const std::string& name, int64_t version, const ModelConfig& config,
    const std::string& signature) {
  auto started = std::chrono::steady_clock::now();
  EngineOptions engine_options;
  engine_options.model_path = options_.root / name / std::to_string(version) / kModelFile;
  engine_options.config = config;
  engine_options.model_name = name;
  engine_options.version = version;
  auto engine = Engine::Create(engine_options);
  if (!engine.ok()) return engine.status();

  std::unique_ptr<ModelVersion> loaded(new ModelVersion());
  loaded->name_ = name;
  loaded->version_ = version;
  loaded->version_string_ = std::to_string(version);
  loaded->config_ = config;
  loaded->signature_ = signature;
  loaded->engine_ = std::move(engine).value();
  // Override shapes were read as full shapes (no max_batch_size given), so
  // batching is inferred only when the model's own shapes are used.
  if (!config.max_batch_size_set && config.inputs.empty() && config.outputs.empty()) {
    loaded->config_.max_batch_size = InferMaxBatchSize(*loaded->engine_);
  }
  for (const ProviderFallback& fallback : loaded->engine_->fallbacks()) {
    options_.metrics->RecordProviderFallback(name, std::string(ProviderName(fallback.provider)));
  }
  loaded->metrics_ = options_.metrics->ForModel(
      name, loaded->version_string_, std::string(ProviderName(loaded->engine_->provider())));

  SchedulerOptions scheduler_options;
  scheduler_options.name = StrCat(name, ":", version);
  scheduler_options.max_batch_size = loaded->config_.max_batch_size;
  scheduler_options.dynamic_batching = loaded->config_.dynamic_batching;
  scheduler_options.max_queue_size = loaded->config_.max_queue_size;
  scheduler_options.instance_count = loaded->config_.instance_count;
  scheduler_options.inline_execution = loaded->config_.inline_execution;
  ModelMetrics* metrics = loaded->metrics_.get();
  scheduler_options.on_batch = [metrics](int batch_size, int64_t, bool ok) {
    if (ok) metrics->RecordBatch(batch_size);
  };
  const OutputScoreConfig& score_config = loaded->config_.output_score;
  absl::StatusOr<std::optional<OutputScorer>> scorer = OutputScorer::Create(
      loaded->engine_->outputs(), score_config,
      score_config.enabled
          ? metrics->OutputScoreHistogram(score_config.buckets.empty() ? DefaultScoreBuckets()
                                                                       : score_config.buckets)
          : nullptr);
  if (!scorer.ok()) {
    return absl::InvalidArgumentError(
        StrCat("model '", name, "' version ", version, ": ", MessageOf(scorer.status())));
  }
  if (scorer->has_value()) {
    scheduler_options.on_outputs =
        [scorer = **std::move(scorer)](std::span<const OutputTensor> outputs) {
          scorer.Observe(outputs);
        };
  }
  auto scheduler = Scheduler::Create(*loaded->engine_, std::move(scheduler_options));
  if (!scheduler.ok()) return scheduler.status();
  loaded->scheduler_ = std::move(scheduler).value();

  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  loaded->metrics_->SetLoaded(seconds);
  spdlog::info("model '{}' version {} loaded on {} in {:.0f} ms", name, version,
               ProviderName(loaded->engine_->provider()), seconds * 1000);
  return Adopt(loaded.release());
}

absl::Status ModelRepository::Load(const std::string& name) {
  absl::MutexLock serialize(&load_mu_);
  fs::path dir = options_.root / name;
  std::error_code ec;
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      !fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        StrCat("no model '", name, "' in the repository ", options_.root.string()));
  }
  std::map<int64_t, std::shared_ptr<ModelVersion>> current;
  {
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[name];
    entry.wanted = true;
    entry.loading = true;
    current = entry.versions;
  }
  std::string disk_signature = DiskSignature(name);
  auto fail_model = [&](absl::Status status) {
    options_.metrics->RecordLoadFailure(name);
    spdlog::error("model '{}': {}", name, MessageOf(status));
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[name];
    entry.loading = false;
    entry.error = std::string(MessageOf(status));
    entry.disk_signature = disk_signature;
    return status;
  };

  bool has_config = false;
  auto text = ReadConfigText(dir, &has_config);
  if (!text.ok()) return fail_model(text.status());
  ModelConfig config;
  if (has_config) {
    auto parsed = ParseModelConfig(*text, (dir / kConfigFile).string());
    if (!parsed.ok()) return fail_model(parsed.status());
    config = std::move(parsed).value();
  }
  std::vector<int64_t> available = VersionsOnDisk(dir);
  std::vector<int64_t> selected = config.version_policy.Select(available);
  if (selected.empty()) {
    return fail_model(absl::NotFoundError(StrCat(
        "no version to load in ", dir.string(), " (expected <version>/model.onnx with a numeric ",
        "version folder", available.empty() ? "" : " matching the version_policy", ")")));
  }

  std::map<int64_t, std::shared_ptr<ModelVersion>> next;
  std::map<int64_t, std::string> failed;
  absl::Status first_error;
  size_t config_hash = std::hash<std::string>{}(*text);
  for (int64_t version : selected) {
    std::string signature =
        StrCat(config_hash, "/", FileIdentity(dir / std::to_string(version) / kModelFile));
    auto it = current.find(version);
    if (it != current.end() && it->second->signature_ == signature) {
      next[version] = it->second;
      continue;
    }
    auto built = BuildVersion(name, version, config, signature);
    if (built.ok()) {
      next[version] = std::move(built).value();
      continue;
    }
    options_.metrics->RecordLoadFailure(name);
    // The engine's message already names the model, version and file.
    std::string reason(MessageOf(built.status()));
    spdlog::error("{}", reason);
    failed[version] = reason;
    if (first_error.ok()) first_error = absl::Status(built.status().code(), reason);
    if (it != current.end()) next[version] = it->second;  // keep serving the old build
  }
  // A newer version that fails must not take the model down: keep what served.
  if (next.empty()) next = current;

  {
    absl::MutexLock lock(&mu_);
    Entry& entry = entries_[name];
    entry.versions.swap(next);
    entry.failed = std::move(failed);
    entry.error.clear();
    entry.loading = false;
    entry.disk_signature = disk_signature;
  }
  // `next` now holds the replaced versions; releasing them queues their drain.
  return first_error;
}

absl::Status ModelRepository::Unload(const std::string& name) {
  absl::MutexLock serialize(&load_mu_);
  std::map<int64_t, std::shared_ptr<ModelVersion>> released;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      return absl::NotFoundError(StrCat("no model '", name, "' in the repository"));
    }
    it->second.versions.swap(released);
    it->second.failed.clear();
    it->second.error.clear();
    it->second.wanted = false;
  }
  if (!released.empty()) spdlog::info("model '{}' unloaded", name);
  return absl::OkStatus();
}

void ModelRepository::UnloadAll() {
  worker_->SetPeriodic(std::chrono::milliseconds(0), nullptr);
  std::vector<std::string> names;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) names.push_back(name);
  }
  for (const std::string& name : names) (void)Unload(name);
  // The released versions' destruction was queued on the worker before this.
  std::promise<void> drained;
  if (worker_->Post([&drained] { drained.set_value(); })) drained.get_future().wait();
}

bool ModelRepository::RunOnRepositoryThread(absl::AnyInvocable<void() &&> task) {
  return worker_->Post(std::move(task));
}

void ModelRepository::LoadStartupModels() {
  std::vector<std::string> on_disk = ModelsOnDisk();
  std::vector<std::string> wanted;
  if (options_.mode == ControlMode::kExplicit) {
    for (const std::string& name : options_.startup_models) {
      if (name == "*") {
        wanted = on_disk;
        break;
      }
      wanted.push_back(name);
    }
  } else {
    wanted = on_disk;
  }
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& name : on_disk) entries_[name];
  }
  for (const std::string& name : wanted) {
    absl::Status status = Load(name);
    if (absl::IsNotFound(status)) {
      absl::MutexLock lock(&mu_);
      Entry& entry = entries_[name];
      entry.wanted = true;
      entry.error = std::string(MessageOf(status));
    }
  }
  startup_done_.store(true);
  if (options_.mode == ControlMode::kPoll) {
    worker_->SetPeriodic(options_.poll_interval, [this] { Poll(); });
  }
}

void ModelRepository::Poll() {
  std::vector<std::string> on_disk = ModelsOnDisk();
  std::vector<std::string> signatures;
  for (const std::string& name : on_disk) signatures.push_back(DiskSignature(name));
  std::vector<std::string> to_load;
  std::vector<std::string> to_remove;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (size_t i = 0; i < on_disk.size(); ++i) {
      auto it = entries_.find(on_disk[i]);
      if (it == entries_.end() || it->second.disk_signature != signatures[i]) {
        to_load.push_back(on_disk[i]);
      }
    }
    for (const auto& [name, entry] : entries_) {
      if (!std::binary_search(on_disk.begin(), on_disk.end(), name)) to_remove.push_back(name);
    }
  }
  for (const std::string& name : to_load) {
    spdlog::info("repository poll: model '{}' changed on disk, loading", name);
    (void)Load(name);  // failures are recorded in the index and logged
  }
  for (const std::string& name : to_remove) {
    spdlog::info("repository poll: model '{}' removed from disk, unloading", name);
    absl::MutexLock serialize(&load_mu_);
    std::map<int64_t, std::shared_ptr<ModelVersion>> released;  // drained outside the lock
    // Unload and forget in one step, so a request sees the model either
    // served or unknown, never half-removed.
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(name); it != entries_.end()) {
      released.swap(it->second.versions);
      entries_.erase(it);
    }
  }
}

absl::StatusOr<std::shared_ptr<ModelVersion>> ModelRepository::Get(std::string_view name,
                                                                   int64_t version) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string known;
    for (const auto& [n, e] : entries_) StrAppend(&known, known.empty() ? "" : ", ", n);
    return absl::NotFoundError(StrCat(
        "unknown model '", name, "'; the repository has: ", known.empty() ? "no models" : known));
  }
  const Entry& entry = it->second;
  if (version == 0) {
    if (!entry.versions.empty()) return entry.versions.rbegin()->second;
    std::string reason = !entry.error.empty()    ? entry.error
                         : !entry.failed.empty() ? entry.failed.rbegin()->second
                         : entry.loading         ? "it is loading"
                                                 : "it is not loaded";
    return absl::UnavailableError(StrCat("model '", name, "' is not available: ", reason));
  }
  if (auto v = entry.versions.find(version); v != entry.versions.end()) return v->second;
  if (auto f = entry.failed.find(version); f != entry.failed.end()) {
    return absl::UnavailableError(f->second);
  }
  return absl::NotFoundError(StrCat("model '", name, "' has no version ", version,
                                    " loaded; loaded versions: ", JoinVersions(entry.versions)));
}

std::vector<std::shared_ptr<ModelVersion>> ModelRepository::Versions(std::string_view name) const {
  std::vector<std::shared_ptr<ModelVersion>> out;
  absl::ReaderMutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return out;
  for (const auto& [v, version] : it->second.versions) out.push_back(version);
  return out;
}

std::vector<ModelStatus> ModelRepository::Index() const {
  std::vector<ModelStatus> out;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, entry] : entries_) {
    std::map<int64_t, ModelStatus> by_version;
    for (const auto& [v, unused] : entry.versions) {
      by_version[v] = {name, std::to_string(v), "READY", ""};
    }
    for (const auto& [v, reason] : entry.failed) {
      if (!by_version.count(v)) by_version[v] = {name, std::to_string(v), "UNAVAILABLE", reason};
    }
    for (auto& [v, status] : by_version) out.push_back(std::move(status));
    if (!by_version.empty()) continue;
    if (entry.loading) {
      out.push_back({name, "", "LOADING", ""});
    } else if (!entry.error.empty()) {
      out.push_back({name, "", "UNAVAILABLE", entry.error});
    } else {
      out.push_back({name, "", "UNAVAILABLE", "unloaded"});
    }
  }
  return out;
}

bool ModelRepository::AllReady() const {
  if (!startup_done_.load()) return false;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [name, entry] : entries_) {
    if (!entry.wanted) continue;
    if (entry.loading || entry.versions.empty() || !entry.error.empty() || !entry.failed.empty()) {
      return false;
    }
  }
  return true;
}

void ModelRepository::ForEachVersion(const std::function<void(ModelVersion&)>& fn) const {
  std::vector<std::shared_ptr<ModelVersion>> all;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, entry] : entries_) {
      for (const auto& [v, version] : entry.versions) all.push_back(version);
    }
  }
  for (const auto& version : all) fn(*version);
}

}  // namespace outpost::serve
