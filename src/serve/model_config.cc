#include "serve/model_config.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "yaml-cpp/yaml.h"

namespace outpost::serve {
namespace {

constexpr std::array<std::string_view, 19> kTopLevelKeys = {
    "max_batch_size",      "dynamic_batching", "max_queue_size",   "instance_count",
    "execution_providers", "strict_providers", "intra_op_threads", "inter_op_threads",
    "graph_optimization",  "cpu_arena",        "session_config",   "warmup",
    "version_policy",      "inputs",           "outputs",          "labels",
    "output_score",        "inline_execution", "preprocess"};
constexpr std::array<std::string_view, 2> kDynamicBatchingKeys = {"max_queue_delay_us",
                                                                  "preferred_batch_sizes"};
constexpr std::array<std::string_view, 3> kOutputScoreKeys = {"output", "kind", "buckets"};
constexpr std::array<std::string_view, 1> kWarmupKeys = {"iterations"};
constexpr std::array<std::string_view, 3> kTensorKeys = {"name", "datatype", "shape"};

constexpr int kMaxInstances = 64;
constexpr int kMaxThreads = 1024;
constexpr int64_t kMaxWarmupIterations = 1000;
// Bounds that only catch typos (an extra zero or two), not real limits.
constexpr int64_t kMaxBatchSize = 1 << 20;
constexpr int64_t kMaxQueueSize = 1 << 24;
constexpr int64_t kMaxQueueDelayUs = 60'000'000;

// absl::StrCat does not take std::string_view in Debian's abseil build
// (absl::string_view is its own type there); fmt does.
template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (fmt::format_to(std::back_inserter(out), "{}", args), ...);
  return out;
}

// Levenshtein distance, for "did you mean" on unknown keys.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// How a node looks, for "got ..." in messages.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return Cat("'", node.Scalar(), "'");
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    default:
      return "nothing";
  }
}

// Parses one config file; every error names `source_` and the key path.
class ConfigParser {
 public:
  explicit ConfigParser(std::string_view source) : source_(source) {}

  absl::StatusOr<ModelConfig> Parse(std::string_view yaml_text) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
      // yaml-cpp marks are 0-based; editors count from 1.
      return absl::InvalidArgumentError(Cat(source_, ": line ", e.mark.line + 1, ", column ",
                                            e.mark.column + 1, ": invalid YAML: ", e.msg));
    }
    ModelConfig config;
    if (root.IsNull()) return config;  // empty file: all defaults
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          Cat(source_, ": the top level must be a map of keys (e.g. 'max_batch_size: 8'), got ",
              Describe(root)));
    }
    try {
      RETURN_IF_ERROR(ParseTopLevel(root, config));
    } catch (const YAML::Exception& e) {
      // Not expected (only the checked accessors are used); kept so that a
      // yaml-cpp surprise is a config error, not a crash.
      return absl::InvalidArgumentError(
          Cat(source_, ": line ", e.mark.line + 1, ": cannot read: ", e.msg));
    }
    RETURN_IF_ERROR(CrossCheck(config));
    return config;
  }

 private:
  absl::Status Error(std::string_view key, std::string_view reason) const {
    return absl::InvalidArgumentError(Cat(source_, ": key '", key, "': ", reason));
  }

  // Calls `handle(key, value)` for each entry of `map`, after checking the
  // key is known and not repeated (yaml-cpp keeps duplicates silently).
  template <size_t N, typename Handler>
  absl::Status ForEachEntry(const YAML::Node& map, std::string_view prefix,
                            const std::array<std::string_view, N>& known, Handler handle) {
    std::set<std::string, std::less<>> seen;
    for (const auto& entry : map) {
      if (!entry.first.IsScalar()) {
        return absl::InvalidArgumentError(
            Cat(source_, ": ", prefix.empty() ? "top level" : Cat("key '", prefix, "'"),
                ": keys must be plain names, got ", Describe(entry.first)));
      }
      const std::string& name = entry.first.Scalar();
      std::string path = prefix.empty() ? name : Cat(prefix, ".", name);
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string_view best;
        size_t best_distance = std::numeric_limits<size_t>::max();
        for (std::string_view candidate : known) {
          size_t distance = EditDistance(absl::AsciiStrToLower(name), candidate);
          // Suggest only near misses: a few edits, more for long names.
          const size_t limit = std::max<size_t>(2, candidate.size() / 4);
          if (distance <= limit && distance < best_distance) {
            best_distance = distance;
            best = candidate;
          }
        }
        std::string hint = best.empty() ? "" : Cat(" (did you mean '", best, "'?)");
        return Error(path, Cat("unknown key", hint,
                               "; known keys: ", fmt::format("{}", fmt::join(known, ", "))));
      }
      if (!seen.insert(name).second) return Error(path, "appears more than once");
      RETURN_IF_ERROR(handle(name, path, entry.second));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> Int(const YAML::Node& node, std::string_view key, int64_t min,
                              int64_t max) const {
    int64_t value = 0;
    if (!node.IsScalar() || !absl::SimpleAtoi(node.Scalar(), &value)) {
      return Error(key, Cat("must be an integer, got ", Describe(node)));
    }
    if (value < min) return Error(key, Cat("must be >= ", min, ", got ", value));
    if (value > max) return Error(key, Cat("must be <= ", max, ", got ", value));
    return value;
  }

  absl::StatusOr<bool> Bool(const YAML::Node& node, std::string_view key) const {
    if (node.IsScalar()) {
      std::string text = absl::AsciiStrToLower(node.Scalar());
      if (text == "true" || text == "yes" || text == "on") return true;
      if (text == "false" || text == "no" || text == "off") return false;
    }
    return Error(key, Cat("must be true or false, got ", Describe(node)));
  }

  absl::StatusOr<std::string> String(const YAML::Node& node, std::string_view key) const {
    if (!node.IsScalar() || node.Scalar().empty()) {
      return Error(key, Cat("must be a non-empty string, got ", Describe(node)));
    }
    return node.Scalar();
  }

  absl::Status RequireMap(const YAML::Node& node, std::string_view key,
                          std::string_view example) const {
    if (node.IsMap()) return absl::OkStatus();
    return Error(key, Cat("must be a map (e.g. ", example, "), got ", Describe(node)));
  }

  absl::Status RequireList(const YAML::Node& node, std::string_view key,
                           std::string_view example) const {
    if (node.IsSequence()) return absl::OkStatus();
    return Error(key, Cat("must be a list (e.g. ", example, "), got ", Describe(node)));
  }

  // A list of integers in [min, max], none repeated.
  absl::StatusOr<std::vector<int64_t>> IntList(const YAML::Node& node, std::string_view key,
                                               int64_t min, int64_t max,
                                               std::string_view example) const {
    RETURN_IF_ERROR(RequireList(node, key, example));
    std::vector<int64_t> values;
    for (size_t i = 0; i < node.size(); ++i) {
      ASSIGN_OR_RETURN(int64_t value, Int(node[i], Cat(key, "[", i, "]"), min, max));
      if (std::find(values.begin(), values.end(), value) != values.end()) {
        return Error(key, Cat("lists ", value, " more than once"));
      }
      values.push_back(value);
    }
    return values;
  }

  absl::Status ParseTopLevel(const YAML::Node& root, ModelConfig& config) {
    return ForEachEntry(
        root, "", kTopLevelKeys,
        [&](const std::string& name, const std::string& key,
            const YAML::Node& value) -> absl::Status {
          if (name == "max_batch_size") {
            ASSIGN_OR_RETURN(config.max_batch_size, Int(value, key, 0, kMaxBatchSize));
            config.max_batch_size_set = true;
          } else if (name == "dynamic_batching") {
            ASSIGN_OR_RETURN(config.dynamic_batching, ParseDynamicBatching(value, key));
          } else if (name == "preprocess") {
            ASSIGN_OR_RETURN(config.preprocess, ParsePreprocessSpec(value, source_, key));
          } else if (name == "max_queue_size") {
            ASSIGN_OR_RETURN(config.max_queue_size, Int(value, key, 1, kMaxQueueSize));
          } else if (name == "instance_count") {
            ASSIGN_OR_RETURN(config.instance_count, Int(value, key, 1, kMaxInstances));
          } else if (name == "inline_execution") {
            ASSIGN_OR_RETURN(config.inline_execution, Bool(value, key));
          } else if (name == "execution_providers") {
            ASSIGN_OR_RETURN(config.execution_providers, ParseProviders(value, key));
          } else if (name == "strict_providers") {
            ASSIGN_OR_RETURN(config.strict_providers, Bool(value, key));
          } else if (name == "intra_op_threads") {
            ASSIGN_OR_RETURN(config.intra_op_threads, Int(value, key, 0, kMaxThreads));
          } else if (name == "inter_op_threads") {
            ASSIGN_OR_RETURN(config.inter_op_threads, Int(value, key, 0, kMaxThreads));
          } else if (name == "graph_optimization") {
            ASSIGN_OR_RETURN(config.graph_optimization, ParseGraphOptimization(value, key));
          } else if (name == "cpu_arena") {
            ASSIGN_OR_RETURN(config.cpu_arena, Bool(value, key));
          } else if (name == "session_config") {
            ASSIGN_OR_RETURN(config.session_config, ParseSessionConfig(value, key));
          } else if (name == "warmup") {
            return ParseWarmup(value, key, config);
          } else if (name == "version_policy") {
            ASSIGN_OR_RETURN(config.version_policy, ParseVersionPolicy(value, key));
          } else if (name == "inputs") {
            ASSIGN_OR_RETURN(config.inputs, ParseTensors(value, key));
          } else if (name == "outputs") {
            ASSIGN_OR_RETURN(config.outputs, ParseTensors(value, key));
          } else if (name == "labels") {
            ASSIGN_OR_RETURN(config.labels_file, ParseLabels(value, key));
          } else if (name == "output_score") {
            ASSIGN_OR_RETURN(config.output_score, ParseOutputScore(value, key));
          }
          return absl::OkStatus();
        });
  }

  absl::StatusOr<DynamicBatching> ParseDynamicBatching(const YAML::Node& node,
                                                       std::string_view key) {
    DynamicBatching batching;
    // `dynamic_batching:` with nothing under it turns batching on with defaults.
    if (node.IsNull()) return batching;
    RETURN_IF_ERROR(RequireMap(node, key, "{max_queue_delay_us: 500}"));
    RETURN_IF_ERROR(ForEachEntry(
        node, key, kDynamicBatchingKeys,
        [&](const std::string& name, const std::string& path,
            const YAML::Node& value) -> absl::Status {
          if (name == "max_queue_delay_us") {
            ASSIGN_OR_RETURN(batching.max_queue_delay_us, Int(value, path, 0, kMaxQueueDelayUs));
          } else {
            ASSIGN_OR_RETURN(batching.preferred_batch_sizes,
                             IntList(value, path, 1, kMaxBatchSize, "[4, 8]"));
          }
          return absl::OkStatus();
        }));
    return batching;
  }

  absl::StatusOr<std::vector<ExecutionProvider>> ParseProviders(const YAML::Node& node,
                                                                std::string_view key) {
    RETURN_IF_ERROR(RequireList(node, key, "[cuda, cpu]"));
    if (node.size() == 0) return Error(key, "must list at least one provider (e.g. [cpu])");
    std::vector<ExecutionProvider> providers;
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item_key = Cat(key, "[", i, "]");
      ASSIGN_OR_RETURN(std::string text, String(node[i], item_key));
      std::string name = absl::AsciiStrToLower(text);
      ExecutionProvider provider;
      if (name == "cpu") {
        provider = ExecutionProvider::kCpu;
      } else if (name == "cuda") {
        provider = ExecutionProvider::kCuda;
      } else if (name == "tensorrt") {
        provider = ExecutionProvider::kTensorRt;
      } else {
        return Error(item_key, Cat("unknown execution provider '", text,
                                   "'; expected cpu, cuda or tensorrt"));
      }
      if (std::find(providers.begin(), providers.end(), provider) != providers.end()) {
        return Error(key, Cat("lists '", ProviderName(provider), "' more than once"));
      }
      providers.push_back(provider);
    }
    return providers;
  }

  absl::StatusOr<GraphOptimization> ParseGraphOptimization(const YAML::Node& node,
                                                           std::string_view key) {
    if (node.IsScalar()) {
      std::string name = absl::AsciiStrToLower(node.Scalar());
      if (name == "disable") return GraphOptimization::kDisable;
      if (name == "basic") return GraphOptimization::kBasic;
      if (name == "extended") return GraphOptimization::kExtended;
      if (name == "all") return GraphOptimization::kAll;
    }
    return Error(key, Cat("must be one of disable, basic, extended, all, got ", Describe(node)));
  }

  // A map of ONNX Runtime session config keys to scalar values. The keys
  // are ONNX Runtime's (it ignores ones it does not know), so only their
  // form is checked here.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseSessionConfig(
      const YAML::Node& node, std::string_view key) {
    RETURN_IF_ERROR(RequireMap(node, key, "{session.intra_op.allow_spinning: \"0\"}"));
    std::vector<std::pair<std::string, std::string>> entries;
    for (const auto& entry : node) {
      const YAML::Node& name = entry.first;
      if (!name.IsScalar() || name.Scalar().empty()) {
        return Error(key, Cat("keys must be ONNX Runtime config names, got ", Describe(name)));
      }
      const std::string path = Cat(key, ".", name.Scalar());
      if (!entry.second.IsScalar()) {
        return Error(path, Cat("must be a string or number, got ", Describe(entry.second)));
      }
      entries.emplace_back(name.Scalar(), entry.second.Scalar());
    }
    return entries;
  }

  absl::Status ParseWarmup(const YAML::Node& node, std::string_view key, ModelConfig& config) {
    RETURN_IF_ERROR(RequireMap(node, key, "{iterations: 1}"));
    return ForEachEntry(
        node, key, kWarmupKeys,
        [&](const std::string&, const std::string& path, const YAML::Node& value) -> absl::Status {
          ASSIGN_OR_RETURN(config.warmup_iterations, Int(value, path, 0, kMaxWarmupIterations));
          return absl::OkStatus();
        });
  }

  absl::StatusOr<VersionPolicy> ParseVersionPolicy(const YAML::Node& node, std::string_view key) {
    constexpr std::string_view kForms = "expected latest, all, {latest: N} or {specific: [1, 3]}";
    VersionPolicy policy;
    if (node.IsScalar()) {
      std::string name = absl::AsciiStrToLower(node.Scalar());
      if (name == "latest") return policy;
      if (name == "all") {
        policy.kind = VersionPolicy::Kind::kAll;
        return policy;
      }
      return Error(key, Cat(kForms, ", got ", Describe(node)));
    }
    if (!node.IsMap() || node.size() != 1) {
      return Error(key, Cat(kForms, ", got ",
                            node.IsMap() ? "a map with " + std::to_string(node.size()) + " keys"
                                         : Describe(node)));
    }
    const auto entry = *node.begin();
    std::string name = entry.first.IsScalar() ? entry.first.Scalar() : "";
    std::string path = Cat(key, ".", name);
    if (name == "latest") {
      ASSIGN_OR_RETURN(int64_t count, Int(entry.second, path, 1, 1'000'000));
      policy.latest_count = static_cast<int>(count);
      return policy;
    }
    if (name == "specific") {
      policy.kind = VersionPolicy::Kind::kSpecific;
      ASSIGN_OR_RETURN(policy.versions, IntList(entry.second, path, 1,
                                                std::numeric_limits<int64_t>::max(), "[1, 3]"));
      if (policy.versions.empty()) return Error(path, "must list at least one version");
      std::sort(policy.versions.begin(), policy.versions.end());
      return policy;
    }
    return Error(key, Cat(kForms, ", got a map with key ", Describe(entry.first)));
  }

  absl::StatusOr<std::vector<TensorSpec>> ParseTensors(const YAML::Node& node,
                                                       std::string_view key) {
    RETURN_IF_ERROR(RequireList(node, key, "[{name: x, datatype: FP32, shape: [3, 224, 224]}]"));
    std::vector<TensorSpec> specs;
    for (size_t i = 0; i < node.size(); ++i) {
      std::string item_key = Cat(key, "[", i, "]");
      const YAML::Node item = node[i];
      RETURN_IF_ERROR(RequireMap(item, item_key, "{name: x, datatype: FP32, shape: [4]}"));
      TensorSpec spec;
      bool has_datatype = false;
      bool has_shape = false;
      RETURN_IF_ERROR(ForEachEntry(
          item, item_key, kTensorKeys,
          [&](const std::string& name, const std::string& path,
              const YAML::Node& value) -> absl::Status {
            if (name == "name") {
              ASSIGN_OR_RETURN(spec.name, String(value, path));
            } else if (name == "datatype") {
              has_datatype = true;
              ASSIGN_OR_RETURN(std::string text, String(value, path));
              spec.datatype = DataTypeFromName(absl::AsciiStrToUpper(text));
              if (spec.datatype == DataType::kInvalid || spec.datatype == DataType::kBytes) {
                return Error(path, Cat("unsupported datatype '", text,
                                       "'; expected one of BOOL, UINT8, UINT16, "
                                       "UINT32, UINT64, INT8, INT16, INT32, INT64, "
                                       "FP16, FP32, FP64"));
              }
            } else {
              has_shape = true;
              RETURN_IF_ERROR(RequireList(value, path, "[3, 224, 224]"));
              for (size_t d = 0; d < value.size(); ++d) {
                std::string dim_key = Cat(path, "[", d, "]");
                ASSIGN_OR_RETURN(int64_t dim,
                                 Int(value[d], dim_key, -1, std::numeric_limits<int64_t>::max()));
                if (dim == 0) return Error(dim_key, "must be -1 (dynamic) or >= 1, got 0");
                spec.shape.push_back(dim);
              }
            }
            return absl::OkStatus();
          }));
      if (spec.name.empty()) return Error(item_key, "missing 'name'");
      if (!has_datatype) return Error(item_key, "missing 'datatype' (e.g. FP32)");
      if (!has_shape) return Error(item_key, "missing 'shape' (e.g. [3, 224, 224])");
      for (const TensorSpec& other : specs) {
        if (other.name == spec.name) {
          return Error(item_key, Cat("names '", spec.name, "' more than once"));
        }
      }
      specs.push_back(std::move(spec));
    }
    return specs;
  }

  absl::StatusOr<std::string> ParseLabels(const YAML::Node& node, std::string_view key) {
    ASSIGN_OR_RETURN(std::string file, String(node, key));
    std::filesystem::path path(file);
    // A config may come from a release bundle: keep it inside the model folder.
    bool escapes = path.is_absolute();
    for (const auto& part : path) escapes = escapes || part == "..";
    if (escapes) {
      return Error(key, Cat("must be a path relative to the model folder, without "
                            "'..', got '",
                            file, "'"));
    }
    return file;
  }

  absl::StatusOr<OutputScoreConfig> ParseOutputScore(const YAML::Node& node, std::string_view key) {
    OutputScoreConfig score;
    if (node.IsScalar()) {
      ASSIGN_OR_RETURN(bool on, Bool(node, key));
      score.enabled = on;
      return score;
    }
    if (node.IsNull()) return score;
    RETURN_IF_ERROR(RequireMap(node, key, "{kind: softmax_max} or off"));
    RETURN_IF_ERROR(ForEachEntry(
        node, key, kOutputScoreKeys,
        [&](const std::string& name, const std::string& path,
            const YAML::Node& value) -> absl::Status {
          if (name == "output") {
            ASSIGN_OR_RETURN(score.output, String(value, path));
          } else if (name == "kind") {
            ASSIGN_OR_RETURN(std::string text, String(value, path));
            if (text == "auto") {
              score.kind = ScoreKind::kAuto;
            } else if (text == "softmax_max") {
              score.kind = ScoreKind::kSoftmaxMax;
            } else if (text == "max") {
              score.kind = ScoreKind::kMax;
            } else if (text == "value") {
              score.kind = ScoreKind::kValue;
            } else {
              return Error(path, Cat("must be auto, softmax_max, max or value, got '", text, "'"));
            }
          } else {
            RETURN_IF_ERROR(RequireList(value, path, "[0.5, 0.9, 1.0]"));
            if (value.size() == 0 || value.size() > kMaxScoreBuckets) {
              return Error(path, Cat("must list 1..", kMaxScoreBuckets, " bucket edges, got ",
                                     value.size()));
            }
            for (size_t i = 0; i < value.size(); ++i) {
              std::string item = Cat(path, "[", i, "]");
              double edge = 0;
              if (!value[i].IsScalar() || !absl::SimpleAtod(value[i].Scalar(), &edge) ||
                  !std::isfinite(edge)) {
                return Error(item, Cat("must be a finite number, got ", Describe(value[i])));
              }
              if (!score.buckets.empty() && edge <= score.buckets.back()) {
                return Error(item, Cat("bucket edges must increase strictly, got ", edge, " after ",
                                       score.buckets.back()));
              }
              score.buckets.push_back(edge);
            }
          }
          return absl::OkStatus();
        }));
    return score;
  }

  absl::Status CrossCheck(const ModelConfig& config) const {
    if (!config.dynamic_batching) return absl::OkStatus();
    if (!config.max_batch_size_set) {
      return Error("dynamic_batching",
                   "requires max_batch_size > 0, and max_batch_size is not set");
    }
    if (config.max_batch_size == 0) {
      return Error("dynamic_batching", "requires max_batch_size > 0, got 0");
    }
    for (int64_t size : config.dynamic_batching->preferred_batch_sizes) {
      if (size > config.max_batch_size) {
        return Error("dynamic_batching.preferred_batch_sizes",
                     Cat("must be <= max_batch_size (", config.max_batch_size, "), got ", size));
      }
    }
    return absl::OkStatus();
  }

  std::string source_;
};

}  // namespace

std::string_view ProviderName(ExecutionProvider provider) {
  switch (provider) {
    case ExecutionProvider::kCpu:
      return "cpu";
    case ExecutionProvider::kCuda:
      return "cuda";
    case ExecutionProvider::kTensorRt:
      return "tensorrt";
  }
  return "unknown";
}

std::vector<int64_t> VersionPolicy::Select(std::vector<int64_t> available) const {
  std::sort(available.begin(), available.end());
  available.erase(std::unique(available.begin(), available.end()), available.end());
  switch (kind) {
    case Kind::kAll:
      return available;
    case Kind::kLatest: {
      size_t keep = std::min(available.size(), static_cast<size_t>(std::max(latest_count, 0)));
      available.erase(available.begin(), available.end() - static_cast<ptrdiff_t>(keep));
      return available;
    }
    case Kind::kSpecific: {
      std::vector<int64_t> selected;
      for (int64_t version : available) {
        if (std::find(versions.begin(), versions.end(), version) != versions.end()) {
          selected.push_back(version);
        }
      }
      return selected;
    }
  }
  return {};
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view yaml_text, std::string_view source) {
  return ConfigParser(source).Parse(yaml_text);
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir) {
  const std::filesystem::path path = model_dir / "config.yaml";
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (status.type() == std::filesystem::file_type::not_found) return ModelConfig{};
  if (error) {
    return absl::FailedPreconditionError(Cat(path.string(), ": cannot read: ", error.message()));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::FailedPreconditionError(
        Cat(path.string(), ": not a regular file; config.yaml must be a YAML file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    return absl::FailedPreconditionError(
        Cat(path.string(), ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::FailedPreconditionError(
        Cat(path.string(), ": cannot read: ", std::strerror(errno)));
  }
  return ParseModelConfig(text.str(), path.string());
}

}  // namespace outpost::serve
