// outpost rollout start | list | status | pause | resume | abort | rollback
// (docs/cli.md "Rollouts").
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <map>
#include <thread>

#include "cli/format.h"
#include "cli/hub_command_support.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

// Rollout device states in the order a device goes through them.
constexpr std::array<std::string_view, 6> kDeviceStates = {"pending",   "offered", "installing",
                                                           "committed", "failed",  "rolled_back"};

bool Finished(const std::string& state) {
  return state == "completed" || state == "halted" || state == "aborted";
}

// GET /rollouts/{id} boiled down.
struct RolloutSummary {
  int64_t id = 0;
  std::string release;
  std::string state;
  int64_t wave = 0;   // 1-based
  int64_t waves = 0;  // waves that hold devices (fewer than planned when devices are few)
  int64_t total = 0;
  int64_t committed = 0;
  std::map<std::string, int64_t, std::less<>> counts;
};

RolloutSummary Summarize(const json& r) {
  RolloutSummary s;
  s.id = Int(r, "id");
  s.release = Text(r, "release");
  s.state = Text(r, "state");
  s.wave = Int(r, "current_wave") + 1;
  const json& devices = Array(r, "devices");
  for (const json& d : devices) s.waves = std::max(s.waves, Int(d, "wave") + 1);
  if (devices.empty()) s.waves = static_cast<int64_t>(Array(Object(r, "plan"), "waves").size());
  s.wave = std::min(s.wave, std::max<int64_t>(s.waves, 1));
  s.total = static_cast<int64_t>(devices.size());
  for (const auto& [state, count] : Object(r, "counts").items()) {
    if (count.is_number_integer()) s.counts[state] = count.get<int64_t>();
  }
  auto committed = s.counts.find("committed");
  s.committed = committed == s.counts.end() ? 0 : committed->second;
  return s;
}

// "1 committed, 2 pending" in state order, zero counts left out.
std::string CountsText(const RolloutSummary& s, bool with_committed) {
  std::string out;
  for (std::string_view state : kDeviceStates) {
    auto it = s.counts.find(state);
    if (it == s.counts.end() || it->second == 0) continue;
    if (!with_committed && state == "committed") continue;
    StrAppend(&out, out.empty() ? "" : ", ", it->second, " ", state);
  }
  return out;
}

std::string Bar(const RolloutSummary& s) {
  return ProgressBar(s.total > 0 ? static_cast<double>(s.committed) / s.total : 0.0);
}

// "rollout 3 of r1: running, wave 1/2 [#####...] 1/4 committed, 3 pending"
std::string ProgressLine(const json& r) {
  RolloutSummary s = Summarize(r);
  std::string line = StrCat("rollout ", s.id, " of ", s.release, ": ", s.state);
  if (s.total == 0) return StrCat(line, ", no devices");
  StrAppend(&line, ", wave ", s.wave, "/", s.waves, " ", Bar(s), " ", s.committed, "/", s.total,
            " committed");
  std::string others = CountsText(s, false);
  if (!others.empty()) StrAppend(&line, ", ", others);
  return line;
}

std::string WavesText(const json& waves) {
  std::vector<std::string> parts;
  for (const json& w : waves) parts.push_back(w.is_string() ? w.get<std::string>() : w.dump());
  return Join(parts, ", ");
}

void PrintRollout(Context& c, const json& r) {
  RolloutSummary s = Summarize(r);
  const json& plan = Object(r, "plan");
  const json& plan_gates = Object(plan, "gates");
  const json& gates = Object(r, "gates");
  c.out << "rollout " << s.id << " of release " << s.release << "\n"
        << "state:     " << s.state << "\n";
  if (s.total > 0) {
    const int64_t started = Int(r, "wave_started_at");
    c.out << "wave:      " << s.wave << "/" << s.waves
          << (started > 0 ? StrCat(", started ", FormatTime(started), " (",
                                   FormatAgo(started, c.api.HubNowMs()), ")")
                          : std::string(", not started yet"))
          << "\n"
          << "progress:  " << Bar(s) << " " << s.committed << "/" << s.total << " committed ("
          << 100 * s.committed / s.total << "%)\n"
          << "devices:   " << CountsText(s, true) << "\n";
  } else {
    c.out << "devices:   none matched\n";
  }
  // Which devices failed matters more than how many.
  std::map<std::string, std::vector<std::string>> troubled;
  for (const json& d : Array(r, "devices")) {
    std::string state = Text(d, "state");
    if (state == "failed" || state == "rolled_back")
      troubled[state].push_back(Text(d, "device_id"));
  }
  for (const auto& [state, ids] : troubled) {
    c.out << (state == "failed" ? "failed:    " : "rolled back: ") << Join(ids, ", ") << "\n";
  }
  c.out << "plan:      waves " << WavesText(Array(plan, "waves")) << "; soak "
        << Int(plan, "soak_s") << " s; deadline " << Int(plan, "deadline_s") << " s\n";
  std::string gate_text =
      StrCat(Int(gates, "failures"), " failure(s) of ", Int(gates, "offered"),
             " offered; halts above ", Int(plan_gates, "max_failures"), " failure(s)");
  const json& rate =
      plan_gates.contains("max_failure_rate") ? plan_gates["max_failure_rate"] : json();
  if (rate.is_number() && rate.get<double>() > 0) {
    StrAppend(&gate_text, " or a failure rate above ", rate.get<double>() * 100, "%");
  }
  c.out << "gates:     " << gate_text << "\n";
  if (!Text(gates, "halt_reason").empty()) {
    c.out << "halted:    " << Text(gates, "halt_reason") << "\n";
  }
  c.out << "created:   " << FormatTime(Int(r, "created_at")) << ", updated "
        << FormatTime(Int(r, "updated_at")) << "\n";
  const json& history = Array(gates, "history");
  if (!history.empty()) {
    constexpr size_t kShown = 10;
    c.out << "history:\n";
    for (size_t i = history.size() > kShown ? history.size() - kShown : 0; i < history.size();
         ++i) {
      c.out << "  " << FormatTime(Int(history[i], "time")) << "  " << Text(history[i], "event")
            << "\n";
    }
  }
}

void PrintRolloutOrJson(Context& c, const json& rollout) {
  if (c.json_output) {
    c.PrintJson(rollout);
  } else {
    PrintRollout(c, rollout);
  }
}

// Polls rollout `id` every `interval_s` until it is completed, halted or
// aborted, drawing its progress on stderr, then prints its status. Exit
// code 0 only for a completed rollout.
absl::Status WatchRollout(Context& c, int64_t id, double interval_s) {
  // A hub restarting is waited out; one gone for good ends the watch.
  constexpr int kMaxFailedPolls = 10;
  const auto interval = std::chrono::duration<double>(std::max(interval_s, 0.01));
  std::string last_line;
  int failed_polls = 0;
  json rollout;
  while (true) {
    absl::StatusOr<json> polled = c.api.Get(StrCat("/rollouts/", id));
    if (!polled.ok()) {
      const bool redrawn = c.interactive && !last_line.empty();
      if (HubHttpStatusOf(polled.status()) != 0 || ++failed_polls >= kMaxFailedPolls) {
        if (redrawn) c.err << "\n";
        return polled.status();
      }
      c.err << (redrawn ? "\n" : "") << "outpost: warning: " << MessageOf(polled.status())
            << " (retrying)\n";
      last_line.clear();
      std::this_thread::sleep_for(interval);
      continue;
    }
    failed_polls = 0;
    rollout = std::move(*polled);
    std::string line = ProgressLine(rollout);
    if (line != last_line) {
      if (c.interactive) {
        c.err << "\r" << line << "\x1b[K" << std::flush;
      } else {
        c.err << line << "\n";
      }
      last_line = line;
    }
    if (Finished(Text(rollout, "state"))) break;
    std::this_thread::sleep_for(interval);
  }
  if (c.interactive) c.err << "\n";
  PrintRolloutOrJson(c, rollout);
  c.exit_code = Text(rollout, "state") == "completed" ? kExitOk : kExitRefused;
  return absl::OkStatus();
}

// "1", "10%", "100%" -> [1, "10%", "100%"]; the hub checks the percentages.
absl::StatusOr<json> ParseWaves(const std::vector<std::string>& items) {
  json waves = json::array();
  for (const std::string& item : items) {
    if (!item.empty() && item.back() == '%') {
      waves.push_back(item);
      continue;
    }
    int64_t count = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), count);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || count < 1) {
      return Usage(StrCat("--waves '", item, "': a device count >= 1 or a percentage such as 10%"));
    }
    waves.push_back(count);
  }
  return waves;
}

struct StartArgs {
  std::string release;
  std::vector<std::string> waves;
  int64_t soak_s = 0;
  int64_t deadline_s = 0;
  int64_t max_failures = 0;
  double max_failure_rate = 0;
  double p95_regression_pct = 0;
  double max_error_rate = 0;
  double max_drift_psi = 0;
  int64_t max_offline = 0;
  std::string window;  // "HH:MM-HH:MM", devices' local time
  std::string site;
  std::vector<std::string> labels;
  std::vector<std::string> devices;
  bool watch = false;
  double interval_s = 1.0;
  // Plan fields are sent only when given: the hub owns the defaults.
  CLI::Option* soak_option = nullptr;
  CLI::Option* deadline_option = nullptr;
  CLI::Option* max_failures_option = nullptr;
  CLI::Option* max_failure_rate_option = nullptr;
  CLI::Option* p95_option = nullptr;
  CLI::Option* error_rate_option = nullptr;
  CLI::Option* drift_option = nullptr;
  CLI::Option* offline_option = nullptr;
};

absl::Status StartRollout(const StartArgs& a, Context& c) {
  json body = {{"release", a.release}};
  if (!a.waves.empty()) {
    ASSIGN_OR_RETURN(body["waves"], ParseWaves(a.waves));
  }
  if (a.soak_option->count() > 0) body["soak_s"] = a.soak_s;
  if (a.deadline_option->count() > 0) body["deadline_s"] = a.deadline_s;
  json gates = json::object();
  if (a.max_failures_option->count() > 0) gates["max_failures"] = a.max_failures;
  if (a.max_failure_rate_option->count() > 0) gates["max_failure_rate"] = a.max_failure_rate;
  if (a.p95_option->count() > 0) gates["p95_regression_pct"] = a.p95_regression_pct;
  if (a.error_rate_option->count() > 0) gates["max_error_rate"] = a.max_error_rate;
  if (a.drift_option->count() > 0) gates["max_drift_psi"] = a.max_drift_psi;
  if (a.offline_option->count() > 0) gates["max_offline"] = a.max_offline;
  if (!gates.empty()) body["gates"] = gates;
  if (!a.window.empty()) {
    size_t dash = a.window.find('-');
    if (dash == std::string::npos) {
      return absl::InvalidArgumentError("--window: HH:MM-HH:MM (the devices' local time)");
    }
    body["maintenance_window"] = {{"start", a.window.substr(0, dash)},
                                  {"end", a.window.substr(dash + 1)}};
  }
  json selector = json::object();
  if (!a.site.empty()) selector["site"] = a.site;
  if (!a.labels.empty()) {
    ASSIGN_OR_RETURN(selector["labels"], ParseLabels(a.labels, "--labels"));
  }
  if (!a.devices.empty()) selector["devices"] = a.devices;
  body["selector"] = selector;
  ASSIGN_OR_RETURN(json created, c.api.Post("/rollouts", body));
  const int64_t id = Int(created, "id");
  if (c.json_output && !a.watch) {
    c.PrintJson(created);
    return absl::OkStatus();
  }
  if (!c.json_output) {
    c.out << "rollout " << id << " of " << Text(created, "release")
          << " started: " << Int(created, "device_count") << " device(s), waves "
          << WavesText(Array(Object(created, "plan"), "waves")) << "\n";
  }
  if (a.watch) return WatchRollout(c, id, a.interval_s);
  c.out << "follow it with: outpost rollout status " << id << " --watch\n";
  return absl::OkStatus();
}

absl::Status ListRollouts(Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get("/rollouts"));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"id", "release", "state", "wave", "waves", "created", "updated"});
  for (const json& r : Array(answer, "rollouts")) {
    table.AddRow({Text(r, "id"), Text(r, "release"), Text(r, "state"),
                  StrCat(Int(r, "current_wave") + 1), WavesText(Array(Object(r, "plan"), "waves")),
                  FormatTime(Int(r, "created_at")), FormatTime(Int(r, "updated_at"))});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

struct StatusArgs {
  int64_t id = 0;
  bool watch = false;
  double interval_s = 1.0;
};

absl::Status RolloutStatus(const StatusArgs& a, Context& c) {
  if (a.watch) return WatchRollout(c, a.id, a.interval_s);
  ASSIGN_OR_RETURN(json rollout, c.api.Get(StrCat("/rollouts/", a.id)));
  PrintRolloutOrJson(c, rollout);
  return absl::OkStatus();
}

// pause, resume, abort, rollback.
absl::Status RolloutAction(const std::string& action, int64_t id, Context& c) {
  ASSIGN_OR_RETURN(json rollout, c.api.Post(StrCat("/rollouts/", id, "/", action)));
  if (c.json_output) {
    c.PrintJson(rollout);
    return absl::OkStatus();
  }
  c.out << "rollout " << id << " of " << Text(rollout, "release") << ": " << Text(rollout, "state");
  std::string reason = Text(Object(rollout, "gates"), "halt_reason");
  if (action == "rollback" && !reason.empty()) c.out << " (" << reason << ")";
  c.out << "\n";
  return absl::OkStatus();
}

void AddWatchOptions(CLI::App* command, bool& watch, double& interval_s) {
  command->add_flag("--watch", watch,
                    "follow it until it completes (exit 0) or halts or is aborted (exit 1)");
  command->add_option("--interval", interval_s, "seconds between --watch polls")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

}  // namespace

void AddRolloutCommands(CLI::App& app, CommandRegistry& r) {
  CLI::App* group = r.AddGroup(
      app, "rollout", "staged rollouts: start, list, status, pause, resume, abort, rollback");

  StartArgs& a = r.New<StartArgs>();
  CLI::App* start =
      r.Add(group, "start", "roll a release out to the devices a selector picks, wave by wave",
            [&a](Context& c) { return StartRollout(a, c); });
  start->add_option("release", a.release, "release name")->required();
  start
      ->add_option("--waves", a.waves,
                   "cumulative device counts or percentages (hub default 1,10%,100%)")
      ->delimiter(',')
      ->allow_extra_args(false);
  a.soak_option =
      start->add_option("--soak", a.soak_s, "seconds a wave soaks after its last commit")
          ->check(CLI::NonNegativeNumber);
  a.deadline_option = start
                          ->add_option("--deadline", a.deadline_s,
                                       "seconds a device has to commit before it counts as failed")
                          ->check(CLI::PositiveNumber);
  a.max_failures_option =
      start
          ->add_option("--max-failures", a.max_failures,
                       "halt and roll back above this many failed devices (hub default 0)")
          ->check(CLI::NonNegativeNumber);
  a.max_failure_rate_option =
      start
          ->add_option("--max-failure-rate", a.max_failure_rate,
                       "also halt above this fraction of failed devices (0..1)")
          ->check(CLI::Range(0.0, 1.0));
  a.p95_option =
      start
          ->add_option("--p95-regression", a.p95_regression_pct,
                       "halt when the wave's p95 latency rises more than this % (hub default 50; "
                       "0 turns the gate off)")
          ->check(CLI::NonNegativeNumber);
  a.error_rate_option =
      start
          ->add_option("--max-error-rate", a.max_error_rate,
                       "halt above this inference error rate (0..1, hub default 0.05)")
          ->check(CLI::Range(0.0, 1.0));
  a.drift_option = start
                       ->add_option("--max-drift-psi", a.max_drift_psi,
                                    "halt when the wave's output drift (population stability "
                                    "index against the bundle's baseline) exceeds this (hub "
                                    "default 0.25; 0 turns the gate off)")
                       ->check(CLI::NonNegativeNumber);
  a.offline_option = start
                         ->add_option("--max-offline", a.max_offline,
                                      "halt when more than this many devices fall silent after "
                                      "taking the release (hub default 0)")
                         ->check(CLI::NonNegativeNumber);
  start->add_option("--window", a.window,
                    "maintenance window HH:MM-HH:MM in the devices' local time: download at "
                    "once, install only inside it");
  start->add_option("--site", a.site, "only devices at this site");
  start->add_option("--labels", a.labels, "only devices with these labels: k=v,k2=v2")
      ->delimiter(',')
      ->allow_extra_args(false);
  start->add_option("--devices", a.devices, "only these devices: a,b,c")
      ->delimiter(',')
      ->allow_extra_args(false);
  AddWatchOptions(start, a.watch, a.interval_s);

  r.Add(group, "list", "rollouts, newest first", &ListRollouts);

  StatusArgs& status_args = r.New<StatusArgs>();
  CLI::App* status = r.Add(group, "status", "a rollout's progress, gates and history",
                           [&status_args](Context& c) { return RolloutStatus(status_args, c); });
  status->add_option("id", status_args.id, "rollout id")->required();
  AddWatchOptions(status, status_args.watch, status_args.interval_s);

  for (const auto& [action, description] : std::vector<std::pair<std::string, std::string>>{
           {"pause", "stop starting new waves"},
           {"resume", "continue a paused or halted rollout (its wave gets a fresh deadline)"},
           {"abort", "stop the rollout; devices keep what they run"},
           {"rollback",
            "halt it and send every device that took it back to its previous release"}}) {
    int64_t& id = r.New<int64_t>();
    r.Add(group, action, description,
          [&id, action = action](Context& c) { return RolloutAction(action, id, c); })
        ->add_option("id", id, "rollout id")
        ->required();
  }
}

}  // namespace outpost::cli
