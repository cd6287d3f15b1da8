// outpost config list | get | set | delete | effective (docs/cli.md
// "Configuration").
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>

#include "cli/format.h"
#include "cli/hub_command_support.h"
#include "common/atomic_file.h"

namespace outpost::cli {
namespace {

using json = nlohmann::json;

struct LayerArgs {
  std::string scope;
  std::string key;
};

void AddLayerPositionals(CLI::App* app, LayerArgs& a) {
  app->add_option("scope", a.scope, "fleet, site, group or device")
      ->required()
      ->check(CLI::IsMember({"fleet", "site", "group", "device"}));
  app->add_option("key", a.key, "the site, group or device (not for fleet)");
}

// "/config/fleet" or "/config/site/berlin"; a usage error for a missing or
// extra key.
absl::StatusOr<std::string> LayerPath(const LayerArgs& a) {
  if (a.scope == "fleet") {
    if (!a.key.empty()) return Usage("the fleet layer takes no KEY");
    return std::string("/config/fleet");
  }
  if (a.key.empty()) return Usage(StrCat("the ", a.scope, " layer needs a KEY: ", a.scope, " KEY"));
  return StrCat("/config/", a.scope, "/", UrlEscape(a.key));
}

// "fleet", "site:berlin" (as the hub names layers in provenance).
std::string LayerName(const json& layer) {
  std::string key = Text(layer, "key");
  return key.empty() ? Text(layer, "scope") : StrCat(Text(layer, "scope"), ":", key);
}

absl::Status ListLayers(Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get("/config"));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"layer", "version", "updated", "lines"});
  for (const json& layer : Array(answer, "layers")) {
    std::string yaml = Text(layer, "yaml");
    int64_t lines =
        std::count(yaml.begin(), yaml.end(), '\n') + (!yaml.empty() && yaml.back() != '\n');
    table.AddRow({LayerName(layer), Text(layer, "version"), FormatTime(Int(layer, "updated_at")),
                  StrCat(lines)});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

absl::Status GetLayer(const LayerArgs& a, Context& c) {
  ASSIGN_OR_RETURN(std::string path, LayerPath(a));
  ASSIGN_OR_RETURN(json layer, c.api.Get(path));
  if (c.json_output) {
    c.PrintJson(layer);
    return absl::OkStatus();
  }
  // A YAML comment: the output can be edited and set again as it is.
  std::string yaml = Text(layer, "yaml");
  c.out << "# " << LayerName(layer) << " layer, version " << Int(layer, "version") << ", updated "
        << FormatTime(Int(layer, "updated_at")) << "\n"
        << yaml;
  if (!yaml.empty() && yaml.back() != '\n') c.out << "\n";
  return absl::OkStatus();
}

struct SetArgs {
  LayerArgs layer;
  std::string file;
  int64_t expected_version = -1;  // -1: unconditional
};

absl::Status SetLayer(const SetArgs& a, Context& c) {
  ASSIGN_OR_RETURN(std::string path, LayerPath(a.layer));
  ASSIGN_OR_RETURN(std::string yaml, ReadFile(a.file));
  json body = {{"yaml", yaml}};
  if (a.expected_version >= 0) body["expected_version"] = a.expected_version;
  ASSIGN_OR_RETURN(json layer, c.api.Put(path, body));
  if (c.json_output) {
    c.PrintJson(layer);
  } else {
    c.out << "layer " << LayerName(layer) << " set: version " << Int(layer, "version") << "\n";
  }
  return absl::OkStatus();
}

absl::Status DeleteLayer(const LayerArgs& a, Context& c) {
  ASSIGN_OR_RETURN(std::string path, LayerPath(a));
  ASSIGN_OR_RETURN(json answer, c.api.Delete(path));
  if (c.json_output) {
    c.PrintJson(answer);
  } else {
    c.out << "layer " << (a.key.empty() ? a.scope : StrCat(a.scope, ":", a.key)) << " deleted\n";
  }
  return absl::OkStatus();
}

// The leaves of `value` as "a.b.c", each with its value (JSON) and the
// layer `sources` (the same shape) names for it.
void FlattenConfig(const json& value, const json& sources, const std::string& prefix,
                   std::vector<std::array<std::string, 3>>* rows) {
  if (value.is_object() && !value.empty()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      const json& source =
          sources.is_object() && sources.contains(it.key()) ? sources[it.key()] : json();
      FlattenConfig(it.value(), source, prefix.empty() ? it.key() : StrCat(prefix, ".", it.key()),
                    rows);
    }
    return;
  }
  rows->push_back({prefix, value.dump(), sources.is_string() ? sources.get<std::string>() : "?"});
}

absl::Status EffectiveConfig(const std::string& device, Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get(StrCat("/devices/", UrlEscape(device), "/config")));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  std::vector<std::string> layers;
  for (const json& name : Array(answer, "layers")) {
    layers.push_back(name.is_string() ? name.get<std::string>() : name.dump());
  }
  c.out << "# device " << Text(answer, "device_id")
        << ", layers: " << (layers.empty() ? std::string("none") : Join(layers, " -> ")) << "\n";
  std::vector<std::array<std::string, 3>> rows;
  const json& config = Object(answer, "config");
  if (!config.empty()) FlattenConfig(config, Object(answer, "sources"), "", &rows);
  size_t key_width = 0, value_width = 0;
  for (const auto& row : rows) {
    key_width = std::max(key_width, row[0].size());
    value_width = std::max(value_width, row[1].size());
  }
  for (auto [key, value, source] : rows) {
    key.resize(key_width, ' ');
    value.resize(value_width, ' ');
    c.out << key << " = " << value << "   (" << source << ")\n";
  }
  return absl::OkStatus();
}

}  // namespace

void AddConfigCommands(CLI::App& app, CommandRegistry& r) {
  CLI::App* group = r.AddGroup(app, "config",
                               "configuration layers (fleet -> site -> group -> device): list, "
                               "get, set, delete, effective");

  r.Add(group, "list", "every layer, in merge order", &ListLayers);

  LayerArgs& get_args = r.New<LayerArgs>();
  AddLayerPositionals(r.Add(group, "get", "one layer's YAML, ready to edit and set again",
                            [&get_args](Context& c) { return GetLayer(get_args, c); }),
                      get_args);

  SetArgs& set_args = r.New<SetArgs>();
  CLI::App* set = r.Add(group, "set", "create or replace a layer from a YAML file",
                        [&set_args](Context& c) { return SetLayer(set_args, c); });
  AddLayerPositionals(set, set_args.layer);
  set->add_option("--file", set_args.file, "the layer: a YAML mapping")->required();
  set->add_option("--expected-version", set_args.expected_version,
                  "only if the layer is at this version (0: only if it does not exist yet)")
      ->check(CLI::NonNegativeNumber);

  LayerArgs& delete_args = r.New<LayerArgs>();
  AddLayerPositionals(r.Add(group, "delete", "remove a layer",
                            [&delete_args](Context& c) { return DeleteLayer(delete_args, c); }),
                      delete_args);

  std::string& device = r.New<std::string>();
  r.Add(group, "effective", "a device's merged configuration, each value with its layer",
        [&device](Context& c) { return EffectiveConfig(device, c); })
      ->add_option("device", device, "device id")
      ->required();
}

}  // namespace outpost::cli
