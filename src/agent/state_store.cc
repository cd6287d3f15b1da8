#include "agent/state_store.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <system_error>

#include "common/atomic_file.h"
#include "common/fault_injection.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kStateNames[] = {
    "idle",    "downloading", "verifying", "unpacking",    "starting",    "health_check",
    "soaking", "committing",  "committed", "rolling_back", "rolled_back",
};
// A history file over this is moved to history.jsonl.1 (one generation).
constexpr uintmax_t kMaxHistoryBytes = 4u << 20;

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

json ReleaseToJson(const ReleaseRecord& r) {
  return {
      {"release", r.release}, {"sequence", r.sequence}, {"slot", r.slot}, {"offer_id", r.offer_id}};
}

json UpdateToJson(const UpdateRecord& u) {
  return {
      {"offer_id", u.offer_id},         {"source", u.source},        {"bundle_path", u.bundle_path},
      {"release", u.release},           {"sequence", u.sequence},    {"target_slot", u.target_slot},
      {"restore_slot", u.restore_slot}, {"attempts", u.attempts},    {"reason", u.reason},
      {"message", u.message},           {"started_at", u.started_at}};
}

bool ValidSlot(std::string_view slot) { return slot.empty() || slot == "A" || slot == "B"; }

absl::Status ErrnoError(int err, std::string_view what, const fs::path& path) {
  return absl::ErrnoToStatus(err, StrCat(what, " ", path.string()));
}

}  // namespace

std::string_view UpdateStateName(UpdateState state) { return kStateNames[static_cast<int>(state)]; }

std::optional<UpdateState> UpdateStateFromName(std::string_view name) {
  for (size_t i = 0; i < std::size(kStateNames); ++i) {
    if (kStateNames[i] == name) return static_cast<UpdateState>(i);
  }
  return std::nullopt;
}

bool AtRest(UpdateState state) {
  return state == UpdateState::kIdle || state == UpdateState::kCommitted ||
         state == UpdateState::kRolledBack;
}

std::string OtherSlot(std::string_view slot) { return slot == "A" ? "B" : "A"; }

json DeferredToJson(const std::vector<DeferredOffer>& deferred) {
  json out = json::array();
  for (const DeferredOffer& d : deferred) {
    out.push_back(
        {{"offer_id", d.offer_id}, {"failures", d.failures}, {"not_before", d.not_before}});
  }
  return out;
}

std::string SerializeState(const AgentState& state) {
  json j = {{"state", UpdateStateName(state.state)},
            {"committed", state.committed ? ReleaseToJson(*state.committed) : json(nullptr)},
            {"previous", state.previous ? ReleaseToJson(*state.previous) : json(nullptr)},
            {"sequence_floor", state.sequence_floor},
            {"update", UpdateToJson(state.update)},
            {"handled", state.handled},
            {"deferred", DeferredToJson(state.deferred)},
            {"updated_at", state.updated_at},
            {"event_seq", state.event_seq}};
  return j.dump(2) + "\n";
}

absl::StatusOr<AgentState> ParseState(std::string_view text) {
  AgentState state;
  std::string field = "(document)";
  try {
    json j = json::parse(text);
    field = "state";
    auto s = UpdateStateFromName(j.at("state").get<std::string>());
    if (!s) return absl::InvalidArgumentError("state.json: field 'state': unknown state");
    state.state = *s;
    auto release = [&](const json& r) {
      ReleaseRecord out;
      out.release = r.at("release").get<std::string>();
      out.sequence = r.at("sequence").get<uint64_t>();
      out.slot = r.at("slot").get<std::string>();
      out.offer_id = r.value("offer_id", "");
      return out;
    };
    field = "committed";
    if (j.contains("committed") && !j["committed"].is_null()) {
      state.committed = release(j["committed"]);
    }
    field = "previous";
    if (j.contains("previous") && !j["previous"].is_null()) {
      state.previous = release(j["previous"]);
    }
    field = "sequence_floor";
    state.sequence_floor = j.value("sequence_floor", uint64_t{0});
    field = "update";
    if (j.contains("update")) {
      const json& u = j["update"];
      UpdateRecord& r = state.update;
      r.offer_id = u.value("offer_id", "");
      r.source = u.value("source", "");
      r.bundle_path = u.value("bundle_path", "");
      r.release = u.value("release", "");
      r.sequence = u.value("sequence", uint64_t{0});
      r.target_slot = u.value("target_slot", "");
      r.restore_slot = u.value("restore_slot", "");
      r.attempts = u.value("attempts", 0);
      r.reason = u.value("reason", "");
      r.message = u.value("message", "");
      r.started_at = u.value("started_at", int64_t{0});
    }
    field = "handled";
    if (j.contains("handled")) state.handled = j["handled"].get<std::vector<std::string>>();
    field = "deferred";
    if (j.contains("deferred")) {
      for (const json& d : j["deferred"]) {
        state.deferred.push_back({d.at("offer_id").get<std::string>(), d.at("failures").get<int>(),
                                  d.at("not_before").get<int64_t>()});
      }
    }
    field = "updated_at";
    state.updated_at = j.value("updated_at", int64_t{0});
    field = "event_seq";
    state.event_seq = j.value("event_seq", uint64_t{0});
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(StrCat("state.json: field '", field, "': ", e.what()));
  }
  for (const ReleaseRecord* r : {state.committed ? &*state.committed : nullptr,
                                 state.previous ? &*state.previous : nullptr}) {
    if (r != nullptr && (r->slot.empty() || !ValidSlot(r->slot))) {
      return absl::InvalidArgumentError(StrCat("state.json: bad slot '", r->slot, "'"));
    }
  }
  if (!ValidSlot(state.update.target_slot) || !ValidSlot(state.update.restore_slot)) {
    return absl::InvalidArgumentError("state.json: field 'update': bad slot name");
  }
  return state;
}

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const fs::path& dir) {
  for (const fs::path& d : {dir, dir / "slots", dir / "downloads", dir / "logs"}) {
    std::error_code ec;
    fs::create_directories(d, ec);
    if (ec) return ErrnoError(ec.value(), "cannot create state directory", d);
  }
  fs::path state_path = dir / "state.json";
  absl::StatusOr<std::string> text = ReadFile(state_path);
  if (text.ok()) {
    absl::StatusOr<AgentState> state = ParseState(*text);
    if (!state.ok()) {
      return absl::InvalidArgumentError(StrCat(state_path.string(), ": ", MessageOf(state.status()),
                                               " (fix or remove it; the agent will not guess)"));
    }
    return std::unique_ptr<StateStore>(new StateStore(dir, *std::move(state)));
  }
  if (!absl::IsNotFound(text.status())) return text.status();
  auto store = std::unique_ptr<StateStore>(new StateStore(dir, AgentState{}));
  AgentState fresh;
  RETURN_IF_ERROR(store->Transition(fresh, "state directory initialised"));
  return store;
}

absl::Status StateStore::Transition(AgentState next, std::string_view note) {
  next.updated_at = NowUnix();
  next.event_seq = state_.event_seq + 1;
  RETURN_IF_ERROR(OUTPOST_FAIL_WRITE_AT("updater.state_write"));
  RETURN_IF_ERROR(WriteFileAtomic(dir_ / "state.json", SerializeState(next)));
  state_ = std::move(next);
  AppendHistory(state_, note);
  return absl::OkStatus();
}

void StateStore::AppendHistory(const AgentState& state, std::string_view note) {
  fs::path path = history_path();
  std::error_code ec;
  if (fs::file_size(path, ec) > kMaxHistoryBytes && !ec) {
    fs::rename(path, fs::path(path.string() + ".1"), ec);
  }
  json line = {{"seq", state.event_seq},
               {"time", state.updated_at},
               {"time_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count()},
               {"state", UpdateStateName(state.state)},
               {"release", state.update.release},
               {"sequence", state.update.sequence},
               {"slot", state.update.target_slot},
               {"offer_id", state.update.offer_id},
               {"reason", state.update.reason},
               {"message", state.update.message},
               {"committed", state.committed ? state.committed->release : ""}};
  if (!note.empty()) line["note"] = note;
  std::string data = line.dump() + "\n";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    spdlog::warn("history: cannot open {}: {}", path.string(), std::strerror(errno));
    return;
  }
  ssize_t n = ::write(fd, data.data(), data.size());
  if (n != static_cast<ssize_t>(data.size()) || ::fsync(fd) != 0) {
    spdlog::warn("history: cannot append to {}: {}", path.string(), std::strerror(errno));
  }
  ::close(fd);
}

fs::path StateStore::SlotDir(std::string_view slot) const { return dir_ / "slots" / slot; }

absl::StatusOr<std::string> StateStore::CurrentSlot() const {
  std::error_code ec;
  fs::path target = fs::read_symlink(current_link(), ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return std::string();
    return ErrnoError(ec.value(), "cannot read symlink", current_link());
  }
  std::string t = target.string();
  if (t == "slots/A") return std::string("A");
  if (t == "slots/B") return std::string("B");
  return absl::InvalidArgumentError(
      StrCat(current_link().string(), " points at '", t, "', not slots/A or slots/B"));
}

absl::Status StateStore::SwitchCurrent(std::string_view slot) {
  if (slot.empty()) {
    if (::unlink(current_link().c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, "cannot remove", current_link());
    }
    return FsyncDirectory(dir_);
  }
  return ReplaceSymlinkAtomic(current_link(), fs::path("slots") / slot);
}

}  // namespace outpost::agent
