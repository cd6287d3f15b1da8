#include "hub/config_merge.h"

#include <yaml-cpp/yaml.h>

#include <cmath>

namespace outpost::hub {
namespace {

using json = nlohmann::json;

json NodeToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& item : node) out[item.first.as<std::string>()] = NodeToJson(item.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const auto& item : node) out.push_back(NodeToJson(item));
      return out;
    }
    case YAML::NodeType::Scalar: {
      // Quoted scalars stay strings; plain ones become bool/int/float when
      // they read as one.
      if (node.Tag() != "!") {
        bool b;
        if (YAML::convert<bool>::decode(node, b)) return b;
        long long i;
        if (YAML::convert<long long>::decode(node, i)) return i;
        double d;
        if (YAML::convert<double>::decode(node, d) && std::isfinite(d)) return d;
      }
      return node.as<std::string>();
    }
    default:
      return nullptr;
  }
}

void Merge(json& into, json& sources, const json& layer, const std::string& name) {
  for (auto it = layer.begin(); it != layer.end(); ++it) {
    if (it.value().is_object() && into.contains(it.key()) && into[it.key()].is_object()) {
      if (!sources[it.key()].is_object()) sources[it.key()] = json::object();
      Merge(into[it.key()], sources[it.key()], it.value(), name);
      continue;
    }
    into[it.key()] = it.value();
    if (it.value().is_object()) {
      json leaf_sources = json::object();
      json copy = json::object();
      Merge(copy, leaf_sources, it.value(), name);
      sources[it.key()] = leaf_sources;
    } else {
      sources[it.key()] = name;
    }
  }
}

}  // namespace

absl::StatusOr<json> YamlToJson(std::string_view yaml, std::string_view source) {
  try {
    YAML::Node node = YAML::Load(std::string(yaml));
    if (node.IsNull()) return json::object();
    if (!node.IsMap()) {
      return absl::InvalidArgumentError(
          StrCat(source, ": the configuration must be a YAML mapping (key: value)"));
    }
    return NodeToJson(node);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(source, ": line ", e.mark.line + 1, ": ", e.msg));
  }
}

std::string LayerName(const ConfigLayer& layer) {
  if (layer.scope == ConfigScope::kFleet) return "fleet";
  return StrCat(NameOf(layer.scope), ":", layer.scope_key);
}

absl::StatusOr<EffectiveConfig> MergeLayers(const std::vector<ConfigLayer>& layers) {
  EffectiveConfig out;
  for (const ConfigLayer& layer : layers) {
    std::string name = LayerName(layer);
    ASSIGN_OR_RETURN(json value, YamlToJson(layer.yaml, name));
    Merge(out.value, out.sources, value, name);
  }
  return out;
}

std::vector<std::string> DeviceGroups(const Device& device) {
  std::vector<std::string> groups;
  auto it = device.labels.find("group");
  if (it == device.labels.end()) return groups;
  std::string_view rest = it->second;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view g = rest.substr(0, comma);
    if (!g.empty()) groups.emplace_back(g);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return groups;
}

}  // namespace outpost::hub
