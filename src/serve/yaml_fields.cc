#include "serve/yaml_fields.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "absl/strings/numbers.h"
#include "yaml-cpp/yaml.h"

namespace outpost::serve {

std::string DescribeYaml(const YAML::Node& node) {
  if (node.IsScalar()) return StrCat("'", node.Scalar(), "'");
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return "nothing";
}

std::string JoinKeys(YamlKeys keys) {
  std::string out;
  for (std::string_view k : keys) StrAppend(&out, out.empty() ? "" : ", ", k);
  return out;
}

absl::Status YamlFieldReader::CheckMap(const YAML::Node& node, std::string_view key,
                                       YamlKeys known) const {
  if (!node.IsMap()) return Error(key, StrCat("must be a map, got ", DescribeYaml(node)));
  std::set<std::string, std::less<>> seen;
  for (const auto& entry : node) {
    std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "";
    std::string full = key.empty() ? name : StrCat(key, ".", name);
    if (std::find(known.begin(), known.end(), name) == known.end()) {
      return Error(full, StrCat("unknown key (known: ", JoinKeys(known), ")"));
    }
    if (!seen.insert(name).second) return Error(full, "repeated");
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> YamlFieldReader::Int(const YAML::Node& node, std::string_view key,
                                             int64_t min, int64_t max) const {
  int64_t value = 0;
  if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value)) {
    return Error(key, StrCat("must be an integer, got ", DescribeYaml(node)));
  }
  if (value < min || value > max) {
    return Error(key, StrCat("must be in ", min, "..", max, ", got ", value));
  }
  return value;
}

absl::StatusOr<double> YamlFieldReader::Double(const YAML::Node& node, std::string_view key,
                                               double min, double max) const {
  double value = 0;
  if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !std::isfinite(value)) {
    return Error(key, StrCat("must be a number, got ", DescribeYaml(node)));
  }
  if (value < min || value > max) {
    return Error(key, StrCat("must be in ", min, "..", max, ", got ", value));
  }
  return value;
}

absl::StatusOr<size_t> YamlFieldReader::Choice(const YAML::Node& node, std::string_view key,
                                               YamlKeys choices) const {
  if (node.IsScalar()) {
    size_t i = 0;
    for (std::string_view c : choices) {
      if (node.Scalar() == c) return i;
      ++i;
    }
  }
  return Error(key, StrCat("must be one of ", JoinKeys(choices), "; got ", DescribeYaml(node)));
}

}  // namespace outpost::serve
