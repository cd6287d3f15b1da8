// outpost device list | show | label | pin | assign | revoke | decommission
// | events | export (docs/cli.md "Devices").
#include <CLI/CLI.hpp>
#include <algorithm>

#include "cli/format.h"
#include "cli/hub_command_support.h"
#include "common/atomic_file.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

struct FilterArgs {
  std::string site;
  std::vector<std::string> labels;
  std::string status;
  std::string release;
};

void AddFilterOptions(CLI::App* app, FilterArgs& filter) {
  app->add_option("--site", filter.site, "only devices at this site");
  app->add_option("--labels", filter.labels, "only devices with all these labels: k=v,k2=v2")
      ->delimiter(',')
      ->allow_extra_args(false);
  app->add_option("--status", filter.status, "only devices with this status")
      ->check(CLI::IsMember({"active", "revoked", "decommissioned"}));
  app->add_option("--release", filter.release, "only devices running this release");
}

// "?site=...&labels=..." for GET /devices.
absl::StatusOr<std::string> FilterQuery(const FilterArgs& filter, std::string format = "") {
  RETURN_IF_ERROR(ParseLabels(filter.labels, "--labels").status());
  return QueryString({{"site", filter.site},
                      {"labels", Join(filter.labels, ",")},
                      {"status", filter.status},
                      {"release", filter.release},
                      {"format", std::move(format)}});
}

std::string DevicePath(const std::string& id, std::string_view suffix = "") {
  return StrCat("/devices/", UrlEscape(id), suffix);
}

struct ListArgs {
  FilterArgs filter;
  bool csv = false;
};

absl::Status ListDevices(const ListArgs& a, Context& c) {
  if (a.csv) {
    ASSIGN_OR_RETURN(std::string query, FilterQuery(a.filter, "csv"));
    ASSIGN_OR_RETURN(std::string csv, c.api.GetText(StrCat("/devices", query)));
    c.out << csv;
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string query, FilterQuery(a.filter));
  ASSIGN_OR_RETURN(json answer, c.api.Get(StrCat("/devices", query)));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"id", "site", "status", "online", "release", "update", "last seen"});
  const int64_t now = c.api.HubNowMs();
  for (const json& d : Array(answer, "devices")) {
    table.AddRow({Text(d, "id"), OrDash(Text(d, "site")), Text(d, "status"),
                  d.value("online", false) ? "yes" : "no", OrDash(Text(d, "current_release")),
                  OrDash(Text(d, "update_state")), FormatAgo(Int(d, "last_seen_at"), now)});
  }
  table.Print(c.out);
  c.out << Int(answer, "count") << " device(s), " << Int(answer, "online") << " online\n";
  return absl::OkStatus();
}

absl::Status ShowDevice(const std::string& id, Context& c) {
  ASSIGN_OR_RETURN(json d, c.api.Get(DevicePath(id)));
  if (c.json_output) {
    c.PrintJson(d);
    return absl::OkStatus();
  }
  std::string facts;
  for (const auto& [key, value] : Object(d, "facts").items()) {
    StrAppend(&facts, facts.empty() ? "" : ", ", key, "=",
              value.is_string() ? value.get<std::string>() : value.dump());
  }
  std::string update = OrDash(Text(d, "update_state"));
  if (!Text(d, "update_reason").empty()) StrAppend(&update, " (", Text(d, "update_reason"), ")");
  c.out << "id:               " << Text(d, "id") << "\n"
        << "name:             " << OrDash(Text(d, "name")) << "\n"
        << "site:             " << OrDash(Text(d, "site")) << "\n"
        << "labels:           " << FormatLabels(Object(d, "labels")) << "\n"
        << "status:           " << Text(d, "status") << "\n"
        << "online:           " << (d.value("online", false) ? "yes" : "no") << " (last seen "
        << FormatAgo(Int(d, "last_seen_at"), c.api.HubNowMs()) << ")\n"
        << "enrolled:         " << FormatTime(Int(d, "enrolled_at")) << "\n"
        << "current release:  " << OrDash(Text(d, "current_release")) << "\n"
        << "previous release: " << OrDash(Text(d, "previous_release")) << "\n"
        << "desired release:  " << OrDash(Text(d, "desired_release")) << "\n"
        << "pinned release:   " << OrDash(Text(d, "pinned_release")) << "\n"
        << "update:           " << update << "\n"
        << "clock offset:     " << Int(d, "clock_offset_ms") << " ms\n"
        << "facts:            " << OrDash(facts) << "\n";
  return absl::OkStatus();
}

struct LabelArgs {
  std::string id;
  std::vector<std::string> changes;  // "k=v" sets, "k-" removes
  std::string site;
  std::string name;
  CLI::Option* site_option = nullptr;
  CLI::Option* name_option = nullptr;
};

absl::Status LabelDevice(const LabelArgs& a, Context& c) {
  json patch = json::object();
  if (a.site_option->count() > 0) patch["site"] = a.site;
  if (a.name_option->count() > 0) patch["name"] = a.name;
  if (a.changes.empty() && patch.empty()) {
    return Usage("nothing to change: give k=v or k- labels, --site or --name");
  }
  if (!a.changes.empty()) {
    // The hub replaces labels whole: merge the changes into the current ones.
    ASSIGN_OR_RETURN(json device, c.api.Get(DevicePath(a.id)));
    json labels = Object(device, "labels");
    for (const std::string& change : a.changes) {
      if (change.size() > 1 && change.back() == '-' && change.find('=') == std::string::npos) {
        labels.erase(change.substr(0, change.size() - 1));
        continue;
      }
      ASSIGN_OR_RETURN(json one, ParseLabels({change}, "label"));
      labels.update(one);
    }
    patch["labels"] = labels;
  }
  ASSIGN_OR_RETURN(json device, c.api.Patch(DevicePath(a.id), patch));
  if (c.json_output) {
    c.PrintJson(device);
  } else {
    c.out << "device " << Text(device, "id") << ": site " << OrDash(Text(device, "site"))
          << ", name " << OrDash(Text(device, "name")) << ", labels "
          << FormatLabels(Object(device, "labels")) << "\n";
  }
  return absl::OkStatus();
}

// pin and assign: a release, or a flag that clears it.
struct ReleaseArgs {
  std::string id;
  std::string release;
  bool clear = false;
};

struct ReleaseRoute {
  std::string command;     // "pin"
  std::string route;       // "pin" (POST /devices/{id}/<route>)
  std::string clear_flag;  // "--unpin"
  std::string what;        // "pinned release"
};

absl::Status SetDeviceRelease(const ReleaseRoute& route, const ReleaseArgs& a, Context& c) {
  if (a.release.empty() == !a.clear) {
    return Usage(
        StrCat("device ", route.command, ": give a RELEASE or ", route.clear_flag, " (not both)"));
  }
  json body = {{"release", a.clear ? json(nullptr) : json(a.release)}};
  ASSIGN_OR_RETURN(json answer, c.api.Post(DevicePath(a.id, StrCat("/", route.route)), body));
  if (c.json_output) {
    c.PrintJson(answer);
  } else if (a.clear) {
    c.out << "device " << a.id << ": " << route.what << " cleared\n";
  } else {
    c.out << "device " << a.id << ": " << route.what << " " << a.release << "\n";
  }
  return absl::OkStatus();
}

// revoke and decommission.
absl::Status SetDeviceStatus(const std::string& action, const std::string& id, Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Post(DevicePath(id, StrCat("/", action))));
  if (c.json_output) {
    c.PrintJson(answer);
  } else {
    c.out << "device " << id << " is now " << Text(answer, "status") << "\n";
  }
  return absl::OkStatus();
}

absl::Status DeviceEvents(const std::string& id, Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get(DevicePath(id, "/events")));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"seq", "state", "release", "reason", "device time", "hub time"});
  for (const json& e : Array(answer, "events")) {
    table.AddRow({Text(e, "seq"), Text(e, "state"), OrDash(Text(e, "release")),
                  OrDash(Text(e, "reason")), FormatTime(Int(e, "device_time")),
                  FormatTime(Int(e, "hub_time"))});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

struct ExportArgs {
  FilterArgs filter;
  std::string format = "csv";
  std::string out;
};

absl::Status ExportDevices(const ExportArgs& a, Context& c) {
  std::string data;
  int64_t count = 0;
  if (a.format == "csv") {
    ASSIGN_OR_RETURN(std::string query, FilterQuery(a.filter, "csv"));
    ASSIGN_OR_RETURN(data, c.api.GetText(StrCat("/devices", query)));
    count = std::max<int64_t>(0, std::count(data.begin(), data.end(), '\n') - 1);
  } else {
    ASSIGN_OR_RETURN(std::string query, FilterQuery(a.filter));
    ASSIGN_OR_RETURN(json answer, c.api.Get(StrCat("/devices", query)));
    data = answer.dump(2) + "\n";
    count = Int(answer, "count");
  }
  if (a.out.empty()) {
    c.out << data;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(WriteFileAtomic(a.out, data, 0644));
  if (c.json_output) {
    c.PrintJson({{"out", a.out}, {"format", a.format}, {"devices", count}});
  } else {
    c.out << "exported " << count << " device(s) to " << a.out << " (" << a.format << ")\n";
  }
  return absl::OkStatus();
}

}  // namespace

void AddDeviceCommands(CLI::App& app, CommandRegistry& r) {
  CLI::App* group = r.AddGroup(app, "device",
                               "the device inventory: list, show, label, pin, assign, revoke, "
                               "decommission, events, export");

  ListArgs& list_args = r.New<ListArgs>();
  CLI::App* list = r.Add(group, "list", "devices, with filters",
                         [&list_args](Context& c) { return ListDevices(list_args, c); });
  AddFilterOptions(list, list_args.filter);
  list->add_flag("--csv", list_args.csv, "print the hub's CSV export")
      ->excludes(list->get_option("--json"));

  std::string& show_id = r.New<std::string>();
  r.Add(group, "show", "one device in full",
        [&show_id](Context& c) { return ShowDevice(show_id, c); })
      ->add_option("id", show_id, "device id")
      ->required();

  LabelArgs& label_args = r.New<LabelArgs>();
  CLI::App* label =
      r.Add(group, "label",
            "set labels (k=v), remove them (k-), change site or name; other labels are kept",
            [&label_args](Context& c) { return LabelDevice(label_args, c); });
  label->add_option("id", label_args.id, "device id")->required();
  label->add_option("labels", label_args.changes, "k=v to set, k- to remove");
  label_args.site_option = label->add_option("--site", label_args.site, "move it to this site");
  label_args.name_option = label->add_option("--name", label_args.name, "rename it");

  for (const auto& [route, description, clear_help] :
       {std::tuple<ReleaseRoute, std::string, std::string>{
            {"pin", "pin", "--unpin", "pinned release"},
            "keep a device on a release whatever rollouts say",
            "remove the pin"},
        {{"assign", "desired", "--clear", "desired release"},
         "set the release a device should run (a later rollout may change it)",
         "clear the assignment"}}) {
    ReleaseArgs& a = r.New<ReleaseArgs>();
    CLI::App* command = r.Add(group, route.command, description, [&a, route = route](Context& c) {
      return SetDeviceRelease(route, a, c);
    });
    command->add_option("id", a.id, "device id")->required();
    command->add_option("release", a.release, "release name");
    command->add_flag(route.clear_flag, a.clear, clear_help);
  }

  for (const auto& [action, description] :
       {std::pair<std::string, std::string>{"revoke",
                                            "refuse the device's credential (it must re-enrol)"},
        {"decommission", "retire the device for good"}}) {
    std::string& id = r.New<std::string>();
    r.Add(group, action, description,
          [&id, action = action](Context& c) { return SetDeviceStatus(action, id, c); })
        ->add_option("id", id, "device id")
        ->required();
  }

  std::string& events_id = r.New<std::string>();
  r.Add(group, "events", "a device's update history, newest first",
        [&events_id](Context& c) { return DeviceEvents(events_id, c); })
      ->add_option("id", events_id, "device id")
      ->required();

  ExportArgs& export_args = r.New<ExportArgs>();
  CLI::App* export_command =
      r.Add(group, "export", "the inventory as CSV or JSON, to a file or stdout",
            [&export_args](Context& c) { return ExportDevices(export_args, c); });
  AddFilterOptions(export_command, export_args.filter);
  export_command->add_option("--format", export_args.format, "csv or json")
      ->check(CLI::IsMember({"csv", "json"}))
      ->capture_default_str();
  export_command->add_option("--out", export_args.out, "file to write (default: stdout)");
}

}  // namespace outpost::cli
