// A `preprocess:` section as written in a model's config.yaml or in a
// pipeline file: how a decoded frame becomes the model's image input. Both
// files take the same keys (docs/pipelines.md, "Pre-processing"):
//
//   preprocess:
//     input: images            # model input name; default: the only input
//     resize: letterbox        # stretch | letterbox
//     size: [640, 640]         # [width, height]; default: from the input shape
//     color: rgb               # rgb | bgr, the order fed to the model
//     scale: 0.00392156862745  # pixel (0..255) x scale, then (x - mean) / std
//     mean: [0.485, 0.456, 0.406]
//     std: [0.229, 0.224, 0.225]
//     layout: nchw             # nchw | nhwc; default: from the input shape
//     dtype: fp32              # fp32 | fp16 | uint8; default: the input's datatype
//     pad_value: 114           # letterbox border, 0..255
//
// Only the keys present are set, so that a pipeline's section can override
// a model's key by key (MergePreprocessSpec).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "nlohmann/json_fwd.hpp"
#include "serve/tensor.h"

namespace YAML {
class Node;
}

namespace outpost::serve {

enum class ResizeMode { kStretch, kLetterbox };
enum class Layout { kNchw, kNhwc };

struct PreprocessSpec {
  std::optional<std::string> input;
  std::optional<ResizeMode> resize;
  std::optional<int> width, height;  // `size`: both or neither
  std::optional<bool> rgb;
  std::optional<double> scale;
  std::optional<std::array<double, 3>> mean;  // in the model's colour order, after scale
  std::optional<std::array<double, 3>> std;   // each > 0
  std::optional<Layout> layout;
  std::optional<DataType> dtype;  // kFp32, kFp16 or kUint8
  std::optional<int> pad_value;

  bool empty() const;
  // Whether scale, mean or std is set (they do not apply to uint8 input).
  bool normalizes() const { return scale || mean || std; }
};

// Parses `node`, the value of key `key` (e.g. "preprocess") in file
// `source`. InvalidArgument "source: key 'preprocess.mean[1]': must be a
// number, got 'x'" for a non-map, an unknown or repeated key, a bad value,
// or dtype uint8 together with scale/mean/std. yaml-cpp exceptions are the
// caller's to catch (both callers wrap their whole parse).
absl::StatusOr<PreprocessSpec> ParsePreprocessSpec(const YAML::Node& node, std::string_view source,
                                                   std::string_view key);

// `over`'s keys replace `base`'s one by one (`size` counts as one key).
PreprocessSpec MergePreprocessSpec(const PreprocessSpec& base, const PreprocessSpec& over);

// The keys that are set, as in YAML ("resize": "letterbox", "size": [w, h],
// "dtype": "fp16", ...), for model metadata and logs.
nlohmann::json PreprocessSpecJson(const PreprocessSpec& spec);

std::string_view ResizeModeName(ResizeMode mode);  // "stretch", "letterbox"
std::string_view LayoutName(Layout layout);        // "nchw", "nhwc"

}  // namespace outpost::serve
