#include "serve/pipeline/pipeline_config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "serve/yaml_fields.h"
#include "yaml-cpp/yaml.h"

namespace outpost::serve::pipeline {

std::string_view SourceTypeName(SourceType type) {
  switch (type) {
    case SourceType::kImage:
      return "image";
    case SourceType::kFolder:
      return "folder";
    case SourceType::kVideo:
      return "video";
    case SourceType::kCamera:
      return "camera";
    case SourceType::kUrl:
      return "url";
  }
  return "?";
}

std::string_view PostprocessTypeName(PostprocessType type) {
  switch (type) {
    case PostprocessType::kClassification:
      return "classification";
    case PostprocessType::kDetection:
      return "detection";
    case PostprocessType::kAnomaly:
      return "anomaly";
    case PostprocessType::kRaw:
      return "raw";
  }
  return "?";
}

std::string_view SinkTypeName(SinkType type) {
  switch (type) {
    case SinkType::kJsonl:
      return "jsonl";
    case SinkType::kStdout:
      return "stdout";
    case SinkType::kWebhook:
      return "webhook";
    case SinkType::kQueue:
      return "queue";
  }
  return "?";
}

PreprocessConfig ResolvePreprocess(const PreprocessSpec& model, const PreprocessSpec& pipeline) {
  const PreprocessSpec spec = serve::MergePreprocessSpec(model, pipeline);
  PreprocessConfig out;
  if (spec.input) out.input = *spec.input;
  if (spec.resize) out.resize = *spec.resize;
  out.width = spec.width;
  out.height = spec.height;
  if (spec.rgb) out.rgb = *spec.rgb;
  if (spec.scale) out.scale = *spec.scale;
  if (spec.mean) out.mean = *spec.mean;
  if (spec.std) out.std = *spec.std;
  out.layout = spec.layout;
  out.dtype = spec.dtype;
  if (spec.pad_value) out.pad_value = *spec.pad_value;
  out.normalizes = spec.normalizes();
  return out;
}

namespace {

// Reads one file; every error names the file and the dotted key.
class Parser : public YamlFieldReader {
 public:
  Parser(std::string_view source, std::filesystem::path base_dir)
      : source_(source), base_dir_(std::move(base_dir)) {}

  absl::Status Error(std::string_view key, std::string_view reason) const override {
    return absl::InvalidArgumentError(StrCat(source_, ": key '", key, "': ", reason));
  }

  absl::StatusOr<std::string> String(const YAML::Node& node, std::string_view key) const {
    if (!node.IsScalar() || node.Scalar().empty()) {
      return Error(key, StrCat("must be a non-empty string, got ", DescribeYaml(node)));
    }
    return node.Scalar();
  }

  absl::StatusOr<bool> Bool(const YAML::Node& node, std::string_view key) const {
    if (node.IsScalar()) {
      const std::string& s = node.Scalar();
      if (s == "true") return true;
      if (s == "false") return false;
    }
    return Error(key, StrCat("must be true or false, got ", DescribeYaml(node)));
  }

  absl::StatusOr<std::chrono::milliseconds> Millis(const YAML::Node& node, std::string_view key,
                                                   int64_t min) const {
    ASSIGN_OR_RETURN(int64_t ms, Int(node, key, min, 86'400'000));
    return std::chrono::milliseconds(ms);
  }

  std::string Path(const std::string& path) const {
    std::filesystem::path p(path);
    return p.is_absolute() ? path : (base_dir_ / p).lexically_normal().string();
  }

  absl::Status Source(const YAML::Node& node, SourceConfig& out) {
    RETURN_IF_ERROR(CheckMap(node, "source",
                             {"type", "path", "url", "loop", "max_fps", "queue_size", "drop",
                              "reconnect", "read_timeout_ms"}));
    if (!node["type"]) return Error("source.type", "required (image, folder, video, camera, url)");
    ASSIGN_OR_RETURN(size_t type, Choice(node["type"], "source.type",
                                         {"image", "folder", "video", "camera", "url"}));
    out.type = static_cast<SourceType>(type);
    bool live = out.type == SourceType::kCamera || out.type == SourceType::kUrl;
    out.drop_oldest = live;
    if (out.type == SourceType::kUrl) {
      if (!node["url"]) return Error("source.url", "required for a url source");
      if (node["path"]) return Error("source.path", "not used by a url source (use url)");
      ASSIGN_OR_RETURN(out.url, String(node["url"], "source.url"));
      std::string_view url = out.url;
      if (!url.starts_with("rtsp://") && !url.starts_with("http://") &&
          !url.starts_with("https://") && !url.starts_with("rtmp://")) {
        return Error("source.url", StrCat("must start with rtsp://, http://, https:// or "
                                          "rtmp://, got '",
                                          out.url, "'"));
      }
    } else {
      if (!node["path"])
        return Error("source.path", StrCat("required for a ", SourceTypeName(out.type), " source"));
      if (node["url"]) return Error("source.url", "only for a url source");
      ASSIGN_OR_RETURN(out.path, String(node["path"], "source.path"));
      if (out.type != SourceType::kCamera) out.path = Path(out.path);
    }
    if (node["loop"]) {
      if (live) return Error("source.loop", "only for image, folder and video sources");
      ASSIGN_OR_RETURN(out.loop, Bool(node["loop"], "source.loop"));
    }
    if (node["max_fps"]) {
      ASSIGN_OR_RETURN(out.max_fps, Double(node["max_fps"], "source.max_fps", 0, 1000));
    }
    if (node["queue_size"]) {
      ASSIGN_OR_RETURN(int64_t q, Int(node["queue_size"], "source.queue_size", 1, 1024));
      out.queue_size = static_cast<int>(q);
    }
    if (node["drop"]) {
      ASSIGN_OR_RETURN(size_t d, Choice(node["drop"], "source.drop", {"oldest", "never"}));
      out.drop_oldest = d == 0;
    }
    if (node["reconnect"]) {
      const YAML::Node& r = node["reconnect"];
      RETURN_IF_ERROR(CheckMap(r, "source.reconnect", {"initial_ms", "max_ms"}));
      if (r["initial_ms"]) {
        ASSIGN_OR_RETURN(out.reconnect_initial,
                         Millis(r["initial_ms"], "source.reconnect.initial_ms", 1));
      }
      if (r["max_ms"]) {
        ASSIGN_OR_RETURN(out.reconnect_max, Millis(r["max_ms"], "source.reconnect.max_ms", 1));
      }
      if (out.reconnect_max < out.reconnect_initial) {
        return Error("source.reconnect.max_ms", "must be >= initial_ms");
      }
    }
    if (node["read_timeout_ms"]) {
      ASSIGN_OR_RETURN(out.read_timeout,
                       Millis(node["read_timeout_ms"], "source.read_timeout_ms", 100));
    }
    return absl::OkStatus();
  }

  absl::Status Postprocess(const YAML::Node& node, PostprocessConfig& out) {
    RETURN_IF_ERROR(
        CheckMap(node, "postprocess",
                 {"type", "output", "top_k", "labels", "softmax", "format", "confidence_threshold",
                  "iou_threshold", "max_detections", "boxes", "threshold"}));
    if (!node["type"]) {
      return Error("postprocess.type", "required (classification, detection, anomaly, raw)");
    }
    ASSIGN_OR_RETURN(size_t t, Choice(node["type"], "postprocess.type",
                                      {"classification", "detection", "anomaly", "raw"}));
    out.type = static_cast<PostprocessType>(t);
    auto only = [&](std::string_view key, std::initializer_list<PostprocessType> types) {
      if (!node[std::string(key)]) return absl::OkStatus();
      if (std::find(types.begin(), types.end(), out.type) != types.end()) return absl::OkStatus();
      return Error(StrCat("postprocess.", key),
                   StrCat("not used by ", PostprocessTypeName(out.type), " post-processing"));
    };
    using P = PostprocessType;
    RETURN_IF_ERROR(only("top_k", {P::kClassification}));
    RETURN_IF_ERROR(only("softmax", {P::kClassification}));
    RETURN_IF_ERROR(only("labels", {P::kClassification, P::kDetection}));
    for (std::string_view k :
         {"format", "confidence_threshold", "iou_threshold", "max_detections", "boxes"}) {
      RETURN_IF_ERROR(only(k, {P::kDetection}));
    }
    RETURN_IF_ERROR(only("threshold", {P::kAnomaly}));
    if (node["output"]) {
      ASSIGN_OR_RETURN(out.output, String(node["output"], "postprocess.output"));
    }
    if (node["top_k"]) {
      ASSIGN_OR_RETURN(int64_t k, Int(node["top_k"], "postprocess.top_k", 1, 1000));
      out.top_k = static_cast<int>(k);
    }
    if (node["labels"]) {
      ASSIGN_OR_RETURN(out.labels, String(node["labels"], "postprocess.labels"));
      out.labels = Path(out.labels);
    }
    if (node["softmax"]) {
      ASSIGN_OR_RETURN(size_t s,
                       Choice(node["softmax"], "postprocess.softmax", {"auto", "true", "false"}));
      out.softmax = static_cast<Softmax>(s);
    }
    if (node["format"]) {
      ASSIGN_OR_RETURN(size_t f,
                       Choice(node["format"], "postprocess.format", {"yolov5", "yolov8"}));
      out.format = static_cast<DetectionFormat>(f);
    }
    if (node["confidence_threshold"]) {
      ASSIGN_OR_RETURN(out.confidence_threshold, Double(node["confidence_threshold"],
                                                        "postprocess.confidence_threshold", 0, 1));
    }
    if (node["iou_threshold"]) {
      ASSIGN_OR_RETURN(out.iou_threshold,
                       Double(node["iou_threshold"], "postprocess.iou_threshold", 0, 1));
    }
    if (node["max_detections"]) {
      ASSIGN_OR_RETURN(int64_t m,
                       Int(node["max_detections"], "postprocess.max_detections", 1, 100000));
      out.max_detections = static_cast<int>(m);
    }
    if (node["boxes"]) {
      ASSIGN_OR_RETURN(size_t b,
                       Choice(node["boxes"], "postprocess.boxes", {"pixels", "normalized"}));
      out.normalized_boxes = b == 1;
    }
    if (node["threshold"]) {
      ASSIGN_OR_RETURN(out.threshold,
                       Double(node["threshold"], "postprocess.threshold", -1e12, 1e12));
    }
    return absl::OkStatus();
  }

  absl::Status Sink(const YAML::Node& node, std::string_view key, SinkConfig& out) {
    if (!node.IsMap() || !node["type"]) {
      return Error(StrCat(key, ".type"), "required (jsonl, stdout, webhook, queue)");
    }
    ASSIGN_OR_RETURN(size_t t, Choice(node["type"], StrCat(key, ".type"),
                                      {"jsonl", "stdout", "webhook", "queue"}));
    out.type = static_cast<SinkType>(t);
    switch (out.type) {
      case SinkType::kJsonl:
        RETURN_IF_ERROR(CheckMap(node, key, {"type", "path", "max_bytes", "max_files"}));
        break;
      case SinkType::kStdout:
        RETURN_IF_ERROR(CheckMap(node, key, {"type"}));
        break;
      case SinkType::kWebhook:
        RETURN_IF_ERROR(
            CheckMap(node, key, {"type", "url", "retries", "timeout_ms", "backoff_ms"}));
        break;
      case SinkType::kQueue:
        RETURN_IF_ERROR(CheckMap(node, key, {"type", "path", "max_rows", "upload"}));
        break;
    }
    if (node["upload"]) {
      ASSIGN_OR_RETURN(out.upload, Bool(node["upload"], StrCat(key, ".upload")));
    }
    if (out.upload) {
      // The queue outpost-agent drains into its telemetry queue: the agent
      // names it in the runtime's environment.
      if (node["path"]) {
        return Error(StrCat(key, ".path"),
                     "not used with upload: true (the agent names the queue)");
      }
      const char* upload_queue = std::getenv("OUTPOST_UPLOAD_QUEUE");
      if (upload_queue == nullptr || *upload_queue == '\0') {
        return Error(StrCat(key, ".upload"),
                     "OUTPOST_UPLOAD_QUEUE is not set (outpost-agent sets it for the runtime it "
                     "supervises; without an agent, give a path instead)");
      }
      out.path = upload_queue;
    } else if (out.type == SinkType::kJsonl || out.type == SinkType::kQueue) {
      if (!node["path"]) return Error(StrCat(key, ".path"), "required");
      ASSIGN_OR_RETURN(out.path, String(node["path"], StrCat(key, ".path")));
      out.path = Path(out.path);
    }
    if (node["max_bytes"]) {
      ASSIGN_OR_RETURN(out.max_bytes,
                       Int(node["max_bytes"], StrCat(key, ".max_bytes"), 1024, int64_t{1} << 40));
    }
    if (node["max_files"]) {
      ASSIGN_OR_RETURN(int64_t m, Int(node["max_files"], StrCat(key, ".max_files"), 1, 1000));
      out.max_files = static_cast<int>(m);
    }
    if (out.type == SinkType::kWebhook) {
      if (!node["url"]) return Error(StrCat(key, ".url"), "required");
      ASSIGN_OR_RETURN(out.url, String(node["url"], StrCat(key, ".url")));
      if (!out.url.starts_with("http://") && !out.url.starts_with("https://")) {
        return Error(StrCat(key, ".url"),
                     StrCat("must start with http:// or https://, got '", out.url, "'"));
      }
    }
    if (node["retries"]) {
      ASSIGN_OR_RETURN(int64_t r, Int(node["retries"], StrCat(key, ".retries"), 0, 100));
      out.retries = static_cast<int>(r);
    }
    if (node["timeout_ms"]) {
      ASSIGN_OR_RETURN(out.timeout, Millis(node["timeout_ms"], StrCat(key, ".timeout_ms"), 10));
    }
    if (node["backoff_ms"]) {
      ASSIGN_OR_RETURN(out.backoff, Millis(node["backoff_ms"], StrCat(key, ".backoff_ms"), 1));
    }
    if (node["max_rows"]) {
      ASSIGN_OR_RETURN(out.max_rows,
                       Int(node["max_rows"], StrCat(key, ".max_rows"), 1, int64_t{1} << 40));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<PipelineConfig> Parse(const YAML::Node& root) {
    PipelineConfig config;
    RETURN_IF_ERROR(CheckMap(
        root, "",
        {"name", "source", "model", "preprocess", "postprocess", "sinks", "max_in_flight"}));
    if (!root["name"]) return Error("name", "required");
    ASSIGN_OR_RETURN(config.name, String(root["name"], "name"));
    for (char c : config.name) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
        return Error("name", StrCat("may hold letters, digits, '-', '_' and '.' only, got '",
                                    config.name, "'"));
      }
    }
    if (!root["source"]) return Error("source", "required");
    RETURN_IF_ERROR(Source(root["source"], config.source));
    if (!root["model"]) return Error("model", "required");
    const YAML::Node& model = root["model"];
    if (model.IsScalar()) {
      ASSIGN_OR_RETURN(config.model, String(model, "model"));
    } else {
      RETURN_IF_ERROR(CheckMap(model, "model", {"name", "version"}));
      if (!model["name"]) return Error("model.name", "required");
      ASSIGN_OR_RETURN(config.model, String(model["name"], "model.name"));
      if (model["version"]) {
        ASSIGN_OR_RETURN(config.model_version,
                         Int(model["version"], "model.version", 0, INT64_MAX));
      }
    }
    if (root["preprocess"]) {
      ASSIGN_OR_RETURN(config.preprocess,
                       serve::ParsePreprocessSpec(root["preprocess"], source_, "preprocess"));
    }
    if (!root["postprocess"]) return Error("postprocess", "required");
    RETURN_IF_ERROR(Postprocess(root["postprocess"], config.postprocess));
    if (!root["sinks"]) return Error("sinks", "required (at least one sink)");
    const YAML::Node& sinks = root["sinks"];
    if (!sinks.IsSequence() || sinks.size() == 0) {
      return Error("sinks", StrCat("must be a non-empty list, got ", DescribeYaml(sinks)));
    }
    for (size_t i = 0; i < sinks.size(); ++i) {
      SinkConfig sink;
      RETURN_IF_ERROR(Sink(sinks[i], StrCat("sinks[", i, "]"), sink));
      config.sinks.push_back(std::move(sink));
    }
    if (root["max_in_flight"]) {
      ASSIGN_OR_RETURN(int64_t m, Int(root["max_in_flight"], "max_in_flight", 1, 64));
      config.max_in_flight = static_cast<int>(m);
    }
    return config;
  }

 private:
  const std::string source_;
  const std::filesystem::path base_dir_;
};

}  // namespace

absl::StatusOr<PipelineConfig> ParsePipelineConfig(std::string_view yaml_text,
                                                   std::string_view source,
                                                   const std::filesystem::path& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(source, ": line ", e.mark.line + 1, ", column ",
                                             e.mark.column + 1, ": invalid YAML: ", e.msg));
  }
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        StrCat(source, ": the top level must be a map (name, source, model, postprocess, sinks)"));
  }
  Parser parser(source, base_dir);
  try {
    return parser.Parse(root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        StrCat(source, ": line ", e.mark.line + 1, ": cannot read: ", e.msg));
  }
}

absl::StatusOr<PipelineConfig> LoadPipelineConfig(const std::filesystem::path& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  return ParsePipelineConfig(*text, path.string(), dir);
}

}  // namespace outpost::serve::pipeline
