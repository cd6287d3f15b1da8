#include "cli/hub_command_support.h"

#include <CLI/CLI.hpp>

namespace outpost::cli {
namespace {

constexpr const char* kExitCodesHelp =
    "Exit codes: 0 ok; 1 the hub refused or the operation failed (its message is printed); "
    "2 usage error (bad flags, no --hub/OUTPOST_HUB_URL or --token/OUTPOST_HUB_TOKEN); "
    "3 the hub cannot be reached, or a local file cannot be read or written.";

}  // namespace

CLI::App* CommandRegistry::AddGroup(CLI::App& app, const std::string& name,
                                    const std::string& description) {
  CLI::App* group = app.add_subcommand(name, description)->require_subcommand(1);
  // Leaves added later inherit the footer.
  group->footer(kExitCodesHelp);
  return group;
}

CLI::App* CommandRegistry::Add(CLI::App* parent, const std::string& name,
                               const std::string& description, Handler handler) {
  CLI::App* app = parent->add_subcommand(name, description);
  app->footer(kExitCodesHelp);
  app->add_option("--hub", common_.hub, "hub URL, e.g. https://hub.example:7443")
      ->envname("OUTPOST_HUB_URL");
  app->add_option("--token", common_.token, "admin API token (oat_...)")
      ->envname("OUTPOST_HUB_TOKEN");
  app->add_option("--ca-file", common_.ca_file,
                  "PEM file of the hub's own CA (default: the system's CAs)")
      ->envname("OUTPOST_HUB_CA");
  app->add_flag("--json", common_.json_output, "print the hub's JSON answer on stdout");
  commands_.push_back({app, std::move(handler)});
  return app;
}

const Handler* CommandRegistry::Selected() const {
  for (const Command& command : commands_) {
    if (command.app->parsed()) return &command.handler;
  }
  return nullptr;
}

absl::Status Usage(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::StatusOr<nlohmann::json> ParseLabels(const std::vector<std::string>& items,
                                           std::string_view flag) {
  nlohmann::json labels = nlohmann::json::object();
  for (const std::string& item : items) {
    size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Usage(StrCat(flag, " '", item, "': expected key=value"));
    }
    labels[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return labels;
}

std::string Join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (const std::string& item : items) StrAppend(&out, out.empty() ? "" : separator, item);
  return out;
}

}  // namespace outpost::cli
