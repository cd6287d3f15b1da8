#include "serve/preprocess_spec.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "serve/yaml_fields.h"
#include "yaml-cpp/yaml.h"

namespace outpost::serve {
namespace {

class SectionParser : public YamlFieldReader {
 public:
  SectionParser(std::string_view source, std::string_view key) : source_(source), key_(key) {}

  // `sub` is relative to the section's key.
  absl::Status Error(std::string_view sub, std::string_view reason) const override {
    return absl::InvalidArgumentError(
        StrCat(source_, ": key '", sub.empty() ? std::string(key_) : StrCat(key_, ".", sub),
               "': ", reason));
  }

  absl::StatusOr<std::array<double, 3>> Triple(const YAML::Node& node, std::string_view sub,
                                               bool positive) const {
    if (!node.IsSequence() || node.size() != 3) {
      return Error(sub, StrCat("must be a list of 3 numbers, got ", DescribeYaml(node)));
    }
    std::array<double, 3> out{};
    for (size_t i = 0; i < 3; ++i) {
      ASSIGN_OR_RETURN(out[i],
                       Double(node[i], StrCat(sub, "[", i, "]"), positive ? 1e-12 : -1e9, 1e9));
    }
    return out;
  }

  absl::StatusOr<PreprocessSpec> Parse(const YAML::Node& node) const {
    const YamlKeys kKeys = {"input", "resize", "size",   "color", "scale",
                            "mean",  "std",    "layout", "dtype", "pad_value"};
    RETURN_IF_ERROR(CheckMap(node, "", kKeys));
    PreprocessSpec out;
    if (node["input"]) {
      const YAML::Node& n = node["input"];
      if (!n.IsScalar() || n.Scalar().empty()) {
        return Error("input", StrCat("must be a non-empty string, got ", DescribeYaml(n)));
      }
      out.input = n.Scalar();
    }
    if (node["resize"]) {
      ASSIGN_OR_RETURN(size_t r, Choice(node["resize"], "resize", {"stretch", "letterbox"}));
      out.resize = static_cast<ResizeMode>(r);
    }
    if (node["size"]) {
      const YAML::Node& s = node["size"];
      if (!s.IsSequence() || s.size() != 2) {
        return Error("size", StrCat("must be [width, height], got ", DescribeYaml(s)));
      }
      ASSIGN_OR_RETURN(int64_t w, Int(s[0], "size[0]", 1, 16384));
      ASSIGN_OR_RETURN(int64_t h, Int(s[1], "size[1]", 1, 16384));
      out.width = static_cast<int>(w);
      out.height = static_cast<int>(h);
    }
    if (node["color"]) {
      ASSIGN_OR_RETURN(size_t c, Choice(node["color"], "color", {"rgb", "bgr"}));
      out.rgb = c == 0;
    }
    if (node["scale"]) {
      ASSIGN_OR_RETURN(out.scale, Double(node["scale"], "scale", -1e9, 1e9));
    }
    if (node["mean"]) {
      ASSIGN_OR_RETURN(out.mean, Triple(node["mean"], "mean", false));
    }
    if (node["std"]) {
      ASSIGN_OR_RETURN(out.std, Triple(node["std"], "std", true));
    }
    if (node["layout"]) {
      ASSIGN_OR_RETURN(size_t l, Choice(node["layout"], "layout", {"nchw", "nhwc"}));
      out.layout = static_cast<Layout>(l);
    }
    if (node["dtype"]) {
      ASSIGN_OR_RETURN(size_t d, Choice(node["dtype"], "dtype", {"fp32", "fp16", "uint8"}));
      out.dtype = d == 0 ? DataType::kFp32 : d == 1 ? DataType::kFp16 : DataType::kUint8;
    }
    if (node["pad_value"]) {
      ASSIGN_OR_RETURN(int64_t p, Int(node["pad_value"], "pad_value", 0, 255));
      out.pad_value = static_cast<int>(p);
    }
    if (out.dtype == DataType::kUint8 && out.normalizes()) {
      return Error("dtype", "uint8 input takes the pixels as they are: remove scale, mean and std");
    }
    return out;
  }

 private:
  std::string_view source_;
  std::string_view key_;
};

}  // namespace

bool PreprocessSpec::empty() const {
  return !input && !resize && !width && !height && !rgb && !normalizes() && !layout && !dtype &&
         !pad_value;
}

absl::StatusOr<PreprocessSpec> ParsePreprocessSpec(const YAML::Node& node, std::string_view source,
                                                   std::string_view key) {
  return SectionParser(source, key).Parse(node);
}

PreprocessSpec MergePreprocessSpec(const PreprocessSpec& base, const PreprocessSpec& over) {
  PreprocessSpec out = base;
  if (over.input) out.input = over.input;
  if (over.resize) out.resize = over.resize;
  if (over.width || over.height) {
    out.width = over.width;
    out.height = over.height;
  }
  if (over.rgb) out.rgb = over.rgb;
  if (over.scale) out.scale = over.scale;
  if (over.mean) out.mean = over.mean;
  if (over.std) out.std = over.std;
  if (over.layout) out.layout = over.layout;
  if (over.dtype) out.dtype = over.dtype;
  if (over.pad_value) out.pad_value = over.pad_value;
  return out;
}

std::string_view ResizeModeName(ResizeMode mode) {
  return mode == ResizeMode::kLetterbox ? "letterbox" : "stretch";
}

std::string_view LayoutName(Layout layout) { return layout == Layout::kNhwc ? "nhwc" : "nchw"; }

nlohmann::json PreprocessSpecJson(const PreprocessSpec& spec) {
  nlohmann::json j = nlohmann::json::object();
  if (spec.input) j["input"] = *spec.input;
  if (spec.resize) j["resize"] = ResizeModeName(*spec.resize);
  if (spec.width && spec.height) j["size"] = {*spec.width, *spec.height};
  if (spec.rgb) j["color"] = *spec.rgb ? "rgb" : "bgr";
  if (spec.scale) j["scale"] = *spec.scale;
  if (spec.mean) j["mean"] = *spec.mean;
  if (spec.std) j["std"] = *spec.std;
  if (spec.layout) j["layout"] = LayoutName(*spec.layout);
  if (spec.dtype) {
    j["dtype"] = *spec.dtype == DataType::kUint8  ? "uint8"
                 : *spec.dtype == DataType::kFp16 ? "fp16"
                                                  : "fp32";
  }
  if (spec.pad_value) j["pad_value"] = *spec.pad_value;
  return j;
}

}  // namespace outpost::serve
