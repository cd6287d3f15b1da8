// Layered configuration (DESIGN.md "Configuration"): fleet -> site -> group
// -> device, each layer a YAML mapping; a device's effective configuration
// is their deep merge, later layers winning. Mappings merge key by key;
// any other value (scalar, list, null) replaces what was below it whole.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "hub/store.h"

namespace outpost::hub {

struct EffectiveConfig {
  nlohmann::json value = nlohmann::json::object();
  // The same shape as `value`, each leaf replaced by the layer it came
  // from ("fleet", "site:berlin", "group:line-2", "device:cam-7").
  nlohmann::json sources = nlohmann::json::object();
};

// A YAML document as JSON (a mapping at the top; empty text is {}).
// Errors: InvalidArgument naming `source`, the line and the reason.
absl::StatusOr<nlohmann::json> YamlToJson(std::string_view yaml, std::string_view source);

// "fleet", "site:<key>", "group:<key>", "device:<key>".
std::string LayerName(const ConfigLayer& layer);

// Merges `layers` in the order given. Errors: those of YamlToJson.
absl::StatusOr<EffectiveConfig> MergeLayers(const std::vector<ConfigLayer>& layers);

// A device's groups: its "group" label, comma-separated, in that order.
std::vector<std::string> DeviceGroups(const Device& device);

}  // namespace outpost::hub
