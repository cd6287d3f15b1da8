#include "cli/hub_commands.h"

#include <CLI/CLI.hpp>
#include <ostream>

#include "cli/commands.h"
#include "cli/format.h"
#include "cli/hub_api.h"
#include "cli/hub_command_support.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

absl::Status WhoAmI(Context& c) {
  ASSIGN_OR_RETURN(json me, c.api.Get("/whoami"));
  // The version is a nicety: a hub whose database is down still says who we are.
  absl::StatusOr<json> health = c.api.Health();
  json out = {{"hub", c.api.url()},
              {"name", Text(me, "name")},
              {"role", Text(me, "role")},
              {"version", health.ok() ? Text(*health, "version") : ""}};
  if (c.json_output) {
    c.PrintJson(out);
    return absl::OkStatus();
  }
  c.out << "hub:    " << c.api.url();
  if (health.ok()) c.out << " (outpost-hub " << Text(out, "version") << ")";
  c.out << "\ntoken:  " << Text(out, "name") << " (" << Text(out, "role") << ")\n";
  return absl::OkStatus();
}

}  // namespace

HubCommands::HubCommands(CLI::App& app) : registry_(std::make_unique<CommandRegistry>()) {
  registry_->Add(&app, "whoami", "show the hub, its version and this token's role", &WhoAmI);
  AddReleaseCommands(app, *registry_);
  AddDeviceCommands(app, *registry_);
  AddConfigCommands(app, *registry_);
  AddRolloutCommands(app, *registry_);
  AddCredentialCommands(app, *registry_);
  AddObserveCommands(app, *registry_);
}

HubCommands::~HubCommands() = default;

std::optional<int> HubCommands::Run(std::ostream& out, std::ostream& err, bool interactive) {
  const Handler* handler = registry_->Selected();
  if (handler == nullptr) return std::nullopt;
  const CommonArgs& common = registry_->common();
  if (common.hub.empty()) {
    err << "outpost: error: no hub: pass --hub https://HOST:7443 or set OUTPOST_HUB_URL\n";
    return kExitUsage;
  }
  if (common.token.empty()) {
    err << "outpost: error: no API token: pass --token or set OUTPOST_HUB_TOKEN (the first one "
           "comes from `outpost-hub admin create-token`, more from `outpost token create`)\n";
    return kExitUsage;
  }
  absl::StatusOr<std::unique_ptr<HubApi>> api =
      HubApi::Create({.url = common.hub, .token = common.token, .ca_file = common.ca_file});
  if (!api.ok()) {
    err << "outpost: error: " << MessageOf(api.status()) << "\n";
    return ExitCodeFor(api.status());
  }
  Context context{.api = **api,
                  .out = out,
                  .err = err,
                  .json_output = common.json_output,
                  .interactive = interactive};
  absl::Status status = (*handler)(context);
  if (!status.ok()) {
    err << "outpost: error: " << MessageOf(status) << "\n";
    return ExitCodeFor(status);
  }
  return context.exit_code;
}

}  // namespace outpost::cli
