// What the hub command files (release_commands.cc, device_commands.cc,
// config_commands.cc, rollout_commands.cc, credential_commands.cc) share:
// the context a command runs in and the registry that turns CLI11
// subcommands into handlers. Internal to src/cli; the public entry point
// is hub_commands.h.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "cli/hub_api.h"
#include "common/status.h"

namespace CLI {
class App;
}  // namespace CLI

namespace outpost::cli {

// What a hub command's handler works with.
struct Context {
  HubApi& api;
  std::ostream& out;
  std::ostream& err;
  bool json_output;
  bool interactive;  // err is a terminal: progress is redrawn in place
  // A command that ran but did not succeed (a watched rollout that halted)
  // sets kExitRefused; errors are returned as a Status instead.
  int exit_code = kExitOk;

  void PrintJson(const nlohmann::json& j) { out << j.dump(2) << "\n"; }
};

// Runs a command. Its errors decide the exit code (ExitCodeFor).
using Handler = std::function<absl::Status(Context&)>;

// Options every hub command shares (one command runs per process).
struct CommonArgs {
  std::string hub;
  std::string token;
  std::string ca_file;
  bool json_output = false;
};

// The hub commands: each leaf subcommand with its handler, and the storage
// its options bind to (CLI11 keeps pointers to it, so it lives as long as
// the registry).
class CommandRegistry {
 public:
  // A command group ("release", "device", ...): needs a subcommand, and
  // its help ends with the exit codes.
  CLI::App* AddGroup(CLI::App& app, const std::string& name, const std::string& description);
  // A leaf command with the shared --hub, --token, --ca-file and --json.
  CLI::App* Add(CLI::App* parent, const std::string& name, const std::string& description,
                Handler handler);

  // Storage for a command's arguments.
  template <typename T>
  T& New() {
    auto holder = std::make_unique<HolderOf<T>>();
    T& value = holder->value;
    held_.push_back(std::move(holder));
    return value;
  }

  // The handler of the leaf command app.parse() selected; null when none.
  const Handler* Selected() const;
  const CommonArgs& common() const { return common_; }

 private:
  struct Holder {
    virtual ~Holder() = default;
  };
  template <typename T>
  struct HolderOf : Holder {
    T value{};
  };
  struct Command {
    CLI::App* app;
    Handler handler;
  };

  CommonArgs common_;
  std::vector<Command> commands_;
  std::vector<std::unique_ptr<Holder>> held_;
};

// The command groups, each in its own file.
void AddReleaseCommands(CLI::App& app, CommandRegistry& registry);
void AddDeviceCommands(CLI::App& app, CommandRegistry& registry);
void AddConfigCommands(CLI::App& app, CommandRegistry& registry);
void AddRolloutCommands(CLI::App& app, CommandRegistry& registry);
// token and bootstrap.
void AddCredentialCommands(CLI::App& app, CommandRegistry& registry);
// telemetry and alerts.
void AddObserveCommands(CLI::App& app, CommandRegistry& registry);

// A usage error (exit 2).
absl::Status Usage(std::string message);
// "k=v" items -> {"k": "v"}; a usage error naming `flag` for a bad item.
absl::StatusOr<nlohmann::json> ParseLabels(const std::vector<std::string>& items,
                                           std::string_view flag);
std::string Join(const std::vector<std::string>& items, std::string_view separator);

}  // namespace outpost::cli
