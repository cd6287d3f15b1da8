// The device's update state, persisted (DESIGN.md "State and durability").
//
// State directory layout:
//   <state>/slots/A, <state>/slots/B   release slots (an unpacked bundle each)
//   <state>/current -> slots/X         the active slot, switched atomically
//   <state>/state.json                 AgentState, rewritten on every transition
//   <state>/history.jsonl              one line per transition (append + fsync)
//   <state>/downloads/                 bundles being fetched or installed
//   <state>/logs/                      outpost-serve output, per slot
//
// state.json is the truth: it is written (temp, fsync, rename, fsync dir)
// before the step it announces is acted on, so an agent restarted after a
// power cut knows what may have been half done. history.jsonl is the log
// kept for the hub (reported once the hub is reachable); losing its tail in
// a power cut loses history lines, never state.
//
// Thread safety: a StateStore is used by one thread (the updater's).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace outpost::agent {

// The install state machine. Happy path: kIdle -> kDownloading ->
// kVerifying -> kUnpacking -> kStarting -> kHealthCheck -> kSoaking ->
// kCommitting -> kCommitted; a failure at any step -> kRollingBack ->
// kRolledBack. kCommitted and kRolledBack are at rest like kIdle.
enum class UpdateState {
  kIdle,
  kDownloading,
  kVerifying,
  kUnpacking,
  kStarting,
  kHealthCheck,
  kSoaking,
  kCommitting,
  kCommitted,
  kRollingBack,
  kRolledBack,
};
std::string_view UpdateStateName(UpdateState state);  // "health_check"
std::optional<UpdateState> UpdateStateFromName(std::string_view name);
// True for kIdle, kCommitted, kRolledBack: nothing half done.
bool AtRest(UpdateState state);

// A release installed in a slot.
struct ReleaseRecord {
  std::string release;
  uint64_t sequence = 0;
  std::string slot;      // "A" or "B"
  std::string offer_id;  // the source's id of the bundle it came from

  bool operator==(const ReleaseRecord&) const = default;
};

// The install in progress, or the last one.
struct UpdateRecord {
  std::string offer_id;     // UpdateSource offer id
  std::string source;       // human-readable origin ("/media/usb/r7.tar.zst")
  std::string bundle_path;  // the local bundle file once downloaded
  std::string release;      // from the verified manifest
  uint64_t sequence = 0;
  std::string target_slot;   // slot being installed into
  std::string restore_slot;  // slot to go back to on failure ("" = none)
  int attempts = 0;          // installs of this offer started (redo after a crash)
  std::string reason;        // snake_case failure code ("" = none)
  std::string message;       // human-readable detail
  int64_t started_at = 0;    // unix seconds

  bool operator==(const UpdateRecord&) const = default;
};

// An offer whose install failed for a reason that may pass (the download
// failed, the disk was full): not offered again before `not_before`.
struct DeferredOffer {
  std::string offer_id;
  int failures = 0;        // transient failures so far
  int64_t not_before = 0;  // unix seconds

  bool operator==(const DeferredOffer&) const = default;
};

struct AgentState {
  UpdateState state = UpdateState::kIdle;
  std::optional<ReleaseRecord> committed;  // what `current` serves
  std::optional<ReleaseRecord> previous;   // the release before it, still in its slot
  // Bundles with a lower sequence are refused (raised at every commit).
  uint64_t sequence_floor = 0;
  UpdateRecord update;
  // Offer ids already installed, refused or rolled back (newest last,
  // bounded): a source does not offer them again.
  std::vector<std::string> handled;
  // Offers whose last install failed transiently, tried again later
  // (UpdaterOptions::transient_retries); moved to `handled` on success or
  // after the last retry.
  std::vector<DeferredOffer> deferred;
  int64_t updated_at = 0;  // unix seconds of the last transition
  // Numbers the transitions (1, 2, ...): the history line of a transition
  // carries it, and the hub de-duplicates status reports on it. Persisted
  // with the state, so it never goes back, even when the history's tail
  // is lost.
  uint64_t event_seq = 0;

  bool operator==(const AgentState&) const = default;
};

std::string SerializeState(const AgentState& state);
// InvalidArgument naming the field when `json` is not a valid state.
absl::StatusOr<AgentState> ParseState(std::string_view json);

class StateStore {
 public:
  // Creates the layout under `dir` if missing and loads state.json (a
  // missing file is a fresh idle state, written at once). Errors: I/O
  // errors from errno naming the path; InvalidArgument when state.json is
  // corrupt (it is never silently replaced: an operator must look).
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::filesystem::path& dir);

  const AgentState& state() const { return state_; }

  // Makes `next` the state: writes state.json (fault point
  // updater.state_write), then appends a history line with `next.state`,
  // the update record and `note`. The in-memory state changes only if
  // state.json was written; a history failure is logged, not returned.
  absl::Status Transition(AgentState next, std::string_view note = "");

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path SlotDir(std::string_view slot) const;
  std::filesystem::path current_link() const { return dir_ / "current"; }
  std::filesystem::path downloads_dir() const { return dir_ / "downloads"; }
  std::filesystem::path logs_dir() const { return dir_ / "logs"; }
  std::filesystem::path history_path() const { return dir_ / "history.jsonl"; }

  // The slot `current` points at: "A", "B", or "" when it does not exist.
  // InvalidArgument when it points anywhere else.
  absl::StatusOr<std::string> CurrentSlot() const;
  // Points `current` at `slot` atomically; "" removes it.
  absl::Status SwitchCurrent(std::string_view slot);

 private:
  StateStore(std::filesystem::path dir, AgentState state)
      : dir_(std::move(dir)), state_(std::move(state)) {}
  void AppendHistory(const AgentState& state, std::string_view note);

  const std::filesystem::path dir_;
  AgentState state_;
};

// The slot that is not `slot` ("A" for "" and "B").
std::string OtherSlot(std::string_view slot);

}  // namespace outpost::agent
