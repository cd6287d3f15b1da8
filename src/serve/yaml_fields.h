// Readers of YAML config fields shared by the config parsers (the model's
// preprocess section, pipeline files): each parser says how an error names
// its file and key; the readers say what was wrong with the value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "common/status.h"

namespace YAML {
class Node;
}

namespace outpost::serve {

using YamlKeys = std::initializer_list<std::string_view>;

// "'value'", "a list", "a map" or "nothing", for error messages.
std::string DescribeYaml(const YAML::Node& node);
// "a, b, c".
std::string JoinKeys(YamlKeys keys);

class YamlFieldReader {
 public:
  virtual ~YamlFieldReader() = default;
  // InvalidArgument naming the file and `key` (dotted) with `reason`.
  virtual absl::Status Error(std::string_view key, std::string_view reason) const = 0;

  // `node` is a map whose keys are all in `known`, none repeated; errors
  // name "key.name" (or just the name when key is empty).
  absl::Status CheckMap(const YAML::Node& node, std::string_view key, YamlKeys known) const;
  absl::StatusOr<int64_t> Int(const YAML::Node& node, std::string_view key, int64_t min,
                              int64_t max) const;
  // A finite number in [min, max].
  absl::StatusOr<double> Double(const YAML::Node& node, std::string_view key, double min,
                                double max) const;
  // One of `choices`; returns its index.
  absl::StatusOr<size_t> Choice(const YAML::Node& node, std::string_view key,
                                YamlKeys choices) const;
};

}  // namespace outpost::serve
