// The update state machine of outpost-agent: takes a release bundle from an
// UpdateSource and ends either on the new release, working, or back on the
// old one, working — whatever fails and whenever the agent dies.
//
//   fetch -> verify (bundle::Verify, trust store, device facts, sequence
//   floor) -> unpack into the inactive slot (wiped first) -> start
//   outpost-serve on it (Supervisor) -> health gate (ready within a deadline,
//   every manifest self-test within tolerance, no exit during the soak) ->
//   switch `current` -> record the commit, raise the sequence floor -> stop
//   the old runtime.
//   Any failure: rolling_back -> stop the new runtime, point `current` back
//   at the previous slot, make sure its runtime runs -> rolled_back, with a
//   reason code (bundle::ReasonName for verification refusals, else one of
//   kReason* below).
//
// Every transition is persisted (StateStore) before the step it announces,
// and Resume() finishes or undoes whatever state.json says was in progress:
//   downloading                     -> idle; the source offers the bundle again
//   verifying .. soaking            -> redo from verify with the downloaded
//                                      bundle (the target slot is wiped again),
//                                      up to max_attempts, then roll back
//                                      (reason "interrupted")
//   committing                      -> health-check the target slot again;
//                                      pass: switch (again) and commit, fail:
//                                      roll back
//   rolling_back                    -> finish the rollback
//   idle, committed, rolled_back    -> start the runtime on `current`
// The old runtime is never stopped before `current` points at a release
// that passed the gate, so a device always serves a working release.
//
// After a commit, a crash loop of the runtime (Supervisor kCrashLoop) rolls
// back to the previous release if its slot still holds it.
//
// Crash points (OUTPOST_CRASH_AT, common/fault_injection.h), in install order:
//   fetch.*                 inside HttpBundleSource's download (fetcher.h)
//   updater.after_download  bundle file complete, state still downloading
//   updater.after_verify    manifest verified, state still verifying
//   updater.before_unpack   state unpacking, target slot wiped, nothing written
//   bundle.mid_unpack       after each payload file is written (bundle.h)
//   bundle.before_fsync     every payload file written, directories not synced
//   updater.after_unpack    slot unpacked and durable, state still unpacking
//   updater.after_start     new runtime spawned, state starting
//   updater.after_ready     new runtime ready, self-tests not yet run
//   updater.after_health    self-tests passed, soak not started
//   updater.after_soak      soak passed, state still soaking
//   updater.before_switch   state committing, `current` not switched
//   updater.after_switch    `current` switched, commit not recorded
//   updater.before_commit_record  (same window, just before the state write)
//   updater.after_commit    committed recorded, old runtime still running
//   updater.rollback_started  state rolling_back, nothing undone yet
//   updater.mid_rollback    `current` restored, runtime not yet restarted
//   updater.after_rollback  rolled_back recorded
//
// Thread safety: an Updater is driven by one thread (Run, or Resume and
// InstallNext from tests). RequestStop() may be called from any thread or a
// signal handler's flag watcher.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/fetcher.h"
#include "agent/state_store.h"
#include "agent/supervisor.h"
#include "bundle/bundle.h"
#include "common/status.h"

namespace outpost::agent {

// Failure reasons that are not bundle::Reason names.
inline constexpr std::string_view kReasonFetchFailed = "fetch_failed";
inline constexpr std::string_view kReasonIoError = "io_error";
inline constexpr std::string_view kReasonRuntimeFailed = "runtime_failed";  // did not start/exited
inline constexpr std::string_view kReasonNotReady = "not_ready";
inline constexpr std::string_view kReasonModelLoadFailed = "model_load_failed";
inline constexpr std::string_view kReasonSelfTestFailed = "self_test_failed";
inline constexpr std::string_view kReasonSoakFailed = "soak_failed";
inline constexpr std::string_view kReasonInterrupted = "interrupted";
inline constexpr std::string_view kReasonCrashLoop = "crash_loop";
inline constexpr std::string_view kReasonReverted = "reverted_by_hub";

// A bundle a source can deliver.
struct UpdateOffer {
  // Stable identity: the same bundle keeps the same id (handled-list key).
  std::string id;
  std::string description;  // for logs and history ("/media/usb/r7.tar.zst")
};

// Where bundles come from (a local folder, the hub). Used by the updater's
// thread only.
class UpdateSource {
 public:
  virtual ~UpdateSource() = default;
  // The next bundle worth trying, skipping ids in `handled`; nullopt when
  // there is none. Errors are logged by the caller and retried next poll.
  virtual absl::StatusOr<std::optional<UpdateOffer>> Next(
      const std::vector<std::string>& handled) = 0;
  // Makes the offered bundle a complete local file at `dest` (in the state's
  // downloads folder; a `<dest>.part` may be left for a resume). Cancelled
  // when the agent is stopping: the install stays in `downloading` and is
  // offered again after the restart, not rolled back.
  virtual absl::Status Fetch(const UpdateOffer& offer, const std::filesystem::path& dest) = 0;
  // True when an offer is the release this device should run (the hub's
  // desired state), not merely a bundle that is available. Then the offer
  // of the release kept in the previous slot means "go back to it" (a
  // rollout halted by the hub): the updater switches slots without a
  // download and without the sequence-floor check, which guards against
  // replayed bundles, not against the device's own previous release.
  virtual bool Authoritative() const { return false; }
};

// A folder (USB stick, shared drive) watched for *.tar.zst bundles. Offers
// the unhandled bundle with the highest manifest sequence (read unverified:
// it only orders candidates; a bundle whose head cannot be read is still
// offered, so that it is refused with its reason). Fetch copies it into the
// state directory, so the stick may be pulled once the copy is done.
// Offer id: "file:<name>:<size>:<mtime ns>".
class LocalFolderSource : public UpdateSource {
 public:
  explicit LocalFolderSource(std::filesystem::path dir) : dir_(std::move(dir)) {}
  absl::StatusOr<std::optional<UpdateOffer>> Next(const std::vector<std::string>& handled) override;
  absl::Status Fetch(const UpdateOffer& offer, const std::filesystem::path& dest) override;

 private:
  const std::filesystem::path dir_;
};

// One bundle at a URL, known by size and SHA-256 (what the hub's desired
// state names), fetched resumably with agent::Fetch; a complete `dest` with
// that size and hash (left by an agent that died right after the download)
// is used as it is. Offer id: "sha256:<hex>".
class HttpBundleSource : public UpdateSource {
 public:
  HttpBundleSource(std::string url, std::string sha256_hex, uint64_t size, FetchOptions options)
      : url_(std::move(url)),
        sha256_(std::move(sha256_hex)),
        size_(size),
        options_(std::move(options)) {}
  absl::StatusOr<std::optional<UpdateOffer>> Next(const std::vector<std::string>& handled) override;
  absl::Status Fetch(const UpdateOffer& offer, const std::filesystem::path& dest) override;

 private:
  const std::string url_;
  const std::string sha256_;
  const uint64_t size_;
  const FetchOptions options_;
};

// Where the updater keeps the bundle of `offer` while installing it (a
// source may fetch it there ahead of time: maintenance windows).
std::filesystem::path BundleDownloadPath(const std::filesystem::path& downloads_dir,
                                         const UpdateOffer& offer);

// The release's pipelines (docs/agent.md "Pipeline results"): the files
// `<slot>/config/*.pipeline.yaml`, in name order, which outpost-serve runs
// with `--pipeline`.
std::vector<std::filesystem::path> ReleasePipelines(const std::filesystem::path& slot_dir);
// The queue the release's `upload: true` sinks write and the agent ships:
// `<state>/results.db`, named to the runtime by OUTPOST_UPLOAD_QUEUE.
std::filesystem::path UploadQueuePath(const std::filesystem::path& state_dir);

struct UpdaterOptions {
  std::filesystem::path state_dir;
  std::filesystem::path trust_dir;  // *.pub files (bundle::TrustStore)
  // outpost-serve to run when a bundle ships no runtime/outpost-serve.
  std::filesystem::path serve_binary;
  bundle::DeviceFacts facts;  // sequence_floor is taken from state.json
  bundle::Limits limits;

  std::chrono::milliseconds ready_timeout{60000};      // start -> /v2/health/ready 200
  std::chrono::milliseconds self_test_timeout{30000};  // per inference request
  std::chrono::milliseconds soak{30000};               // must stay up this long
  std::chrono::milliseconds poll_interval{5000};       // source polls
  int max_attempts = 3;  // installs of one bundle interrupted by agent deaths
  // A bundle whose install failed for a reason that may pass (fetch_failed:
  // the hub went away, a corrupt or cut download; io_error: a full disk) is
  // offered again after transient_retry_delay, then 3x longer each time
  // (at most 6 h, +-10% jitter), up to transient_retries times; then it is
  // handled like a refused one.
  int transient_retries = 5;
  std::chrono::seconds transient_retry_delay{300};

  // Runtime supervision (Supervisor options for outpost-serve).
  std::chrono::milliseconds restart_backoff{1000};
  std::chrono::milliseconds restart_backoff_max{30000};
  int crash_loop_exits = 5;
  std::chrono::milliseconds crash_loop_window{std::chrono::minutes(5)};
  std::chrono::milliseconds stop_grace{10000};
};

// The outcome of one install attempt (also in state.json's "update").
struct InstallResult {
  UpdateState state = UpdateState::kIdle;  // kCommitted or kRolledBack
  std::string reason;                      // "" when committed
  std::string message;
};

class Updater {
 public:
  // Opens the state directory and loads the trust store. Errors: those of
  // StateStore::Open and TrustStore::LoadDirectory, InvalidArgument for bad
  // options. Starts nothing (Resume does).
  static absl::StatusOr<std::unique_ptr<Updater>> Create(UpdaterOptions options,
                                                         std::unique_ptr<UpdateSource> source);
  // Stops the runtimes it supervises (the device stops serving).
  ~Updater();

  // Finishes or undoes what state.json says was in progress (see above),
  // then makes sure the runtime of `current` runs. Errors only when the
  // state cannot be written or no runtime binary is known; a failed
  // install is not an error.
  absl::Status Resume();
  // Polls the source once and installs what it offers. nullopt when it
  // offered nothing. Cancelled when RequestStop() interrupted the install
  // (state.json keeps the step; the next Resume redoes it). Other errors
  // (a state write failed, e.g. ENOSPC) leave state.json at the last step
  // recorded and the old runtime serving: call Resume to redo or undo.
  absl::StatusOr<std::optional<InstallResult>> InstallNext();
  // Rolls back when the committed release's runtime is in a crash loop and
  // the previous release is still in its slot. Returns whether it did.
  absl::StatusOr<bool> CheckRuntime();
  // Resume, then until RequestStop: CheckRuntime, InstallNext, sleep
  // poll_interval. `exit_when_idle`: return once the source has nothing
  // new (tests, one-shot installs from a stick).
  absl::Status Run(bool exit_when_idle = false);
  void RequestStop() { stop_.store(true); }

  const AgentState& state() const { return store_->state(); }
  // Process id of the runtime serving `current` (0 when none is running).
  pid_t ServingPid() const;

 private:
  struct Runtime;
  Updater(UpdaterOptions options, std::unique_ptr<UpdateSource> source,
          std::unique_ptr<StateStore> store, bundle::TrustStore trust);

  absl::StatusOr<InstallResult> Install(const UpdateOffer& offer);
  // From verifying on, with the bundle file recorded in state.json.
  absl::StatusOr<InstallResult> InstallFrom();
  // Health gate + commit for a runtime already started on the target slot.
  absl::StatusOr<InstallResult> GateAndCommit(const bundle::Manifest& manifest);
  absl::StatusOr<InstallResult> Commit();
  // Persists rolling_back with `reason`, then restores update.restore_slot.
  absl::StatusOr<InstallResult> Rollback(std::string_view reason, std::string message);
  absl::StatusOr<InstallResult> FinishRollback();
  // Rolls the committed release back to the previous one still in its slot
  // (crash loop, or a revert the source asked for).
  absl::StatusOr<InstallResult> RollBackCommitted(std::string_view reason, std::string message,
                                                  std::string_view source);
  bool CanRollBackCommitted() const;

  // Starts outpost-serve on `slot`; waits for nothing.
  absl::StatusOr<std::unique_ptr<Runtime>> StartRuntime(const std::string& slot);
  // Makes sure the runtime of `current` runs (starts it if needed).
  absl::Status EnsureActiveRuntime();
  // Waits for the port file and /v2/health/ready (fails early on a runtime
  // exit or a model the runtime reports as failed to load).
  absl::Status WaitReady(Runtime& runtime);
  absl::Status RunSelfTests(Runtime& runtime, const bundle::Manifest& manifest);
  absl::Status Soak(Runtime& runtime);
  // Reads and verifies the manifest of the bundle recorded in the update.
  absl::StatusOr<bundle::VerifiedManifest> VerifyBundle(const std::string& bundle_path);
  bundle::DeviceFacts Facts() const;
  void RemoveFinishedDownloads();
  // Sleeps up to `d`; false when a stop was requested.
  bool SleepUnlessStopped(std::chrono::milliseconds d);
  AgentState WithHandled(AgentState state, const std::string& offer_id) const;
  // After a rollback: the offer goes to `deferred` when the failure may
  // pass and retries are left, else to `handled`.
  AgentState AfterFailure(AgentState state) const;

  const UpdaterOptions options_;
  std::unique_ptr<UpdateSource> source_;
  std::unique_ptr<StateStore> store_;
  const bundle::TrustStore trust_;
  std::atomic<bool> stop_{false};

  std::unique_ptr<Runtime> active_;     // serving `current`
  std::unique_ptr<Runtime> candidate_;  // on the target slot during an install
  bool crash_loop_reported_ = false;
};

}  // namespace outpost::agent
