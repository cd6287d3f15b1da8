// The `outpost` commands that drive a hub through its admin API
// (docs/cli.md): whoami, release, device, config, rollout, token,
// bootstrap, telemetry and alerts. Every one of them takes
//   --hub URL       (env OUTPOST_HUB_URL)   the hub, https://host:7443
//   --token TOKEN   (env OUTPOST_HUB_TOKEN) an admin API token
//   --ca-file PEM   (env OUTPOST_HUB_CA)    the hub's own CA
//   --json          the hub's JSON answer (or a JSON summary) on stdout
// and prints tables for people otherwise. Exit codes are those of
// commands.h: 0 ok, 1 the hub refused or the operation failed (the hub's
// message is printed), 2 usage (including a missing hub URL or token),
// 3 the hub cannot be reached or a local file cannot be read or written.
#pragma once

#include <iosfwd>
#include <memory>
#include <optional>

namespace CLI {
class App;
}  // namespace CLI

namespace outpost::cli {

class CommandRegistry;

class HubCommands {
 public:
  // Adds the hub commands to `app`. Their options bind to this object, so
  // it must outlive app.parse() and Run().
  explicit HubCommands(CLI::App& app);
  ~HubCommands();
  HubCommands(const HubCommands&) = delete;
  HubCommands& operator=(const HubCommands&) = delete;

  // After a successful app.parse(): runs the hub command that was selected,
  // writing results to `out` and progress and diagnostics to `err`
  // (`interactive`: err is a terminal, so progress lines are redrawn in
  // place). Returns its exit code, or nullopt when no hub command was
  // selected.
  std::optional<int> Run(std::ostream& out, std::ostream& err, bool interactive);

 private:
  std::unique_ptr<CommandRegistry> registry_;
};

}  // namespace outpost::cli
