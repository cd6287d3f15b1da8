// ModelRepository: the models of `<root>/<model>/<version>/model.onnx`, their
// loading, unloading, polling and hot swap.
//
// Hot swap: Load() builds and warms every new or changed version beside the
// versions being served, then switches the model's version set in one step
// under the lock. A version no longer in the set is released; requests that
// already hold it (or are queued in its scheduler) finish on it, and its
// destruction (draining the scheduler, freeing the session) runs on the
// repository's own thread, never on an io or inference thread.
//
// Thread safety: all public methods are thread-safe. Load/Unload/Poll are
// serialized with each other; Get() only takes a reader lock for a
// shared_ptr copy.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status.h"
#include "common/work_queue.h"
#include "serve/engine.h"
#include "serve/metrics.h"
#include "serve/model_config.h"
#include "serve/scheduler.h"

namespace outpost::serve {

enum class ControlMode { kNone, kPoll, kExplicit };

// One loaded, warmed version of a model, ready to take requests.
class ModelVersion {
 public:
  ~ModelVersion();  // drains the scheduler before the engine goes

  const std::string& name() const { return name_; }
  int64_t version() const { return version_; }
  const std::string& version_string() const { return version_string_; }
  const ModelConfig& config() const { return config_; }
  const Engine& engine() const { return *engine_; }
  Scheduler& scheduler() { return *scheduler_; }
  ModelMetrics& metrics() { return *metrics_; }

 private:
  friend class ModelRepository;
  ModelVersion() = default;

  std::string name_;
  int64_t version_ = 0;
  std::string version_string_;
  ModelConfig config_;
  std::string signature_;  // what was loaded: config + file identity
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<ModelMetrics> metrics_;
  std::unique_ptr<Scheduler> scheduler_;  // declared last: destroyed (drained) first
};

struct ModelStatus {
  std::string name;
  std::string version;  // empty when the model has no loaded or failed version
  std::string state;    // READY, UNAVAILABLE, LOADING
  std::string reason;   // why UNAVAILABLE
};

struct RepositoryOptions {
  std::filesystem::path root;
  ControlMode mode = ControlMode::kNone;
  std::vector<std::string> startup_models;  // kExplicit; "*" = all
  std::chrono::milliseconds poll_interval{15000};
  ServeMetrics* metrics = nullptr;  // borrowed, required, outlives the repository
};

class ModelRepository {
 public:
  // Errors: NotFound when root is not a directory.
  static absl::StatusOr<std::unique_ptr<ModelRepository>> Create(RepositoryOptions options);
  // Unloads everything (queued requests finish), then stops the thread.
  ~ModelRepository();

  // Loads what the mode says should be loaded at start (all models for
  // none/poll, startup_models for explicit) and, for poll, starts polling.
  // Failures are recorded per model (see Index()), not returned: one bad
  // model does not keep the others from serving.
  void LoadStartupModels();

  // The version to answer a request: `version` 0 = the newest loaded.
  // NotFound for an unknown model or version (message lists what exists),
  // Unavailable for a known model that is not loaded (with its reason).
  absl::StatusOr<std::shared_ptr<ModelVersion>> Get(std::string_view name, int64_t version) const;

  // Every loaded version of `name`, ascending. Empty when none.
  std::vector<std::shared_ptr<ModelVersion>> Versions(std::string_view name) const;

  // (Re)loads a model from disk: new and changed versions are built beside
  // the served ones, then switched in. Returns the first error (bad config,
  // no version, failed load); versions that did load still serve, and when
  // nothing new could be loaded the previously served versions stay.
  absl::Status Load(const std::string& name);
  // Stops serving every version of `name`. NotFound if it is not known.
  absl::Status Unload(const std::string& name);
  // Unloads every model and returns once the released versions have drained
  // (queued requests answered), except versions a caller still holds.
  void UnloadAll();
  // Runs `task` on the repository's thread (for API calls that load/unload
  // without blocking an io thread). False when shutting down.
  bool RunOnRepositoryThread(absl::AnyInvocable<void() &&> task);

  // Rescans the disk and loads, reloads or unloads what changed. Called
  // periodically in poll mode.
  void Poll();

  std::vector<ModelStatus> Index() const;
  // True when every model that should be loaded is READY.
  bool AllReady() const;
  // Calls fn for every loaded version (under no lock held by the caller).
  void ForEachVersion(const std::function<void(ModelVersion&)>& fn) const;

  const RepositoryOptions& options() const { return options_; }

 private:
  struct Entry {
    std::map<int64_t, std::shared_ptr<ModelVersion>> versions;  // serving
    std::map<int64_t, std::string> failed;                      // version -> reason
    std::string error;  // model-level error (config, no versions)
    bool wanted = false;
    bool loading = false;
    std::string disk_signature;  // for Poll
  };

  explicit ModelRepository(RepositoryOptions options);
  absl::StatusOr<std::shared_ptr<ModelVersion>> BuildVersion(const std::string& name,
                                                             int64_t version,
                                                             const ModelConfig& config,
                                                             const std::string& signature);
  std::shared_ptr<ModelVersion> Adopt(ModelVersion* version);
  std::vector<std::string> ModelsOnDisk() const;
  std::string DiskSignature(const std::string& name) const;

  const RepositoryOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_ ABSL_GUARDED_BY(mu_);
  absl::Mutex load_mu_;  // serializes Load/Unload; taken before mu_
  std::atomic<bool> startup_done_{false};
  std::shared_ptr<WorkQueue> worker_;
};

}  // namespace outpost::serve
