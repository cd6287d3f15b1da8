#include "serve/pipeline/postprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "common/atomic_file.h"

namespace outpost::serve::pipeline {
namespace {

using nlohmann::json;

std::vector<int64_t> FrameDims(const std::vector<int64_t>& shape, bool batched) {
  if (batched && !shape.empty()) return {shape.begin() + 1, shape.end()};
  return shape;
}

std::string Needs(const PostprocessConfig& c) {
  switch (c.type) {
    case PostprocessType::kClassification:
      return "classification needs one FP32 or FP16 score per class ([N, classes] or [classes], "
             "other "
             "dimensions 1)";
    case PostprocessType::kDetection:
      return c.format == DetectionFormat::kYoloV5
                 ? "detection (yolov5) needs an FP32 or FP16 output [N, boxes, 5 + classes]"
                 : "detection (yolov8) needs an FP32 or FP16 output [N, 4 + classes, boxes]";
    case PostprocessType::kAnomaly:
      return "anomaly needs an FP32 or FP16 output with one value per frame";
    case PostprocessType::kRaw:
      break;
  }
  return "";
}

// Whether `dims` (one frame's, -1 = not known yet) fit the post-processing.
bool Fits(const PostprocessConfig& c, const std::vector<int64_t>& dims) {
  switch (c.type) {
    case PostprocessType::kClassification: {
      if (dims.empty()) return false;
      return std::count_if(dims.begin(), dims.end(), [](int64_t d) { return d > 1; }) <= 1 &&
             std::none_of(dims.begin(), dims.end(), [](int64_t d) { return d == 0; });
    }
    case PostprocessType::kDetection:
      if (dims.size() != 2) return false;
      return c.format == DetectionFormat::kYoloV5 ? (dims[1] == -1 || dims[1] >= 6)
                                                  : (dims[0] == -1 || dims[0] >= 5);
    case PostprocessType::kAnomaly:
      return std::all_of(dims.begin(), dims.end(), [](int64_t d) { return d == 1 || d == -1; });
    case PostprocessType::kRaw:
      return true;
  }
  return false;
}

bool IsFloat(DataType type) { return type == DataType::kFp32 || type == DataType::kFp16; }

// An FP32 or FP16 output read as floats in place: FP16 values are widened
// as they are read, with no converted copy of the tensor.
class FloatView {
 public:
  explicit FloatView(const OutputTensor& out)
      : data_(out.data.data()),
        half_(out.datatype == DataType::kFp16),
        size_(out.data.size() / (half_ ? sizeof(uint16_t) : sizeof(float))) {}
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  float operator[](size_t i) const {
    if (half_) {
      uint16_t h;
      std::memcpy(&h, data_ + i * sizeof(h), sizeof(h));
      return HalfToFloat(h);
    }
    float f;
    std::memcpy(&f, data_ + i * sizeof(f), sizeof(f));
    return f;
  }

 private:
  const std::byte* data_;
  bool half_;
  size_t size_;
};

template <typename T>
json Values(const OutputTensor& out) {
  json values = json::array();
  const T* p = reinterpret_cast<const T*>(out.data.data());
  size_t n = out.data.size() / sizeof(T);
  for (size_t i = 0; i < n; ++i) values.push_back(p[i]);
  return values;
}

json RawValues(const OutputTensor& out) {
  switch (out.datatype) {
    case DataType::kFp32:
      return Values<float>(out);
    case DataType::kFp64:
      return Values<double>(out);
    case DataType::kInt64:
      return Values<int64_t>(out);
    case DataType::kInt32:
      return Values<int32_t>(out);
    case DataType::kInt16:
      return Values<int16_t>(out);
    case DataType::kInt8:
      return Values<int8_t>(out);
    case DataType::kUint8:
      return Values<uint8_t>(out);
    case DataType::kUint16:
      return Values<uint16_t>(out);
    case DataType::kUint32:
      return Values<uint32_t>(out);
    case DataType::kUint64:
      return Values<uint64_t>(out);
    case DataType::kBool:
      return Values<bool>(out);
    case DataType::kFp16: {
      json values = json::array();
      FloatView view(out);
      for (size_t i = 0; i < view.size(); ++i) values.push_back(view[i]);
      return values;
    }
    default:
      return nullptr;
  }
}

}  // namespace

float IoU(const Detection& a, const Detection& b) {
  float iw = std::max(0.0f, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  float ih = std::max(0.0f, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  float inter = iw * ih;
  float uni = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return uni > 0 ? inter / uni : 0.0f;
}

std::vector<Detection> NonMaxSuppression(std::vector<Detection> boxes, float iou_threshold,
                                         int max_keep) {
  std::stable_sort(boxes.begin(), boxes.end(),
                   [](const Detection& a, const Detection& b) { return a.score > b.score; });
  std::vector<Detection> kept;
  for (const Detection& box : boxes) {
    if (static_cast<int>(kept.size()) >= max_keep) break;
    bool suppressed = false;
    for (const Detection& k : kept) {
      if (k.class_id == box.class_id && IoU(k, box) > iou_threshold) {
        suppressed = true;
        break;
      }
    }
    if (!suppressed) kept.push_back(box);
  }
  return kept;
}

absl::StatusOr<std::vector<std::string>> LoadLabels(const std::filesystem::path& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        StrCat("labels file ", path.string(), ": ", MessageOf(text.status())));
  }
  std::vector<std::string> labels;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    std::string line = text->substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(std::move(line));
    start = end + 1;
  }
  while (!labels.empty() && labels.back().empty()) labels.pop_back();
  return labels;
}

absl::StatusOr<std::unique_ptr<Postprocessor>> Postprocessor::Create(
    const PostprocessConfig& config, const std::vector<TensorSpec>& outputs, bool batched,
    std::vector<std::string> labels) {
  std::unique_ptr<Postprocessor> p(new Postprocessor());
  p->config_ = config;
  p->batched_ = batched;
  p->labels_ = std::move(labels);
  if (outputs.empty()) return absl::InvalidArgumentError("the model has no outputs");
  if (config.type == PostprocessType::kRaw && config.output.empty()) return p;  // all outputs
  int index = 0;
  if (!config.output.empty()) {
    auto it = std::find_if(outputs.begin(), outputs.end(),
                           [&](const TensorSpec& s) { return s.name == config.output; });
    if (it == outputs.end()) {
      std::string names;
      for (const TensorSpec& s : outputs) StrAppend(&names, names.empty() ? "" : ", ", s.name);
      return absl::InvalidArgumentError(StrCat("postprocess.output '", config.output,
                                               "': the model has no such output (it has ", names,
                                               ")"));
    }
    index = static_cast<int>(it - outputs.begin());
  }
  const TensorSpec& spec = outputs[index];
  p->output_indices_ = {index};
  p->output_name_ = spec.name;
  if (config.type != PostprocessType::kRaw) {
    if (!IsFloat(spec.datatype) || !Fits(config, FrameDims(spec.shape, batched))) {
      return absl::InvalidArgumentError(StrCat("model output '", spec.name, "' is ",
                                               DataTypeName(spec.datatype), " ",
                                               ShapeString(spec.shape), ": ", Needs(config)));
    }
  }
  return p;
}

std::string Postprocessor::Label(int index) const {
  if (index >= 0 && index < static_cast<int>(labels_.size())) return labels_[index];
  return std::to_string(index);
}

absl::Status Postprocessor::Run(std::span<const OutputTensor> outputs,
                                const FrameTransform& transform, json* result,
                                std::vector<double>* scores) const {
  if (config_.type == PostprocessType::kRaw) {
    json list = json::array();
    for (const OutputTensor& out : outputs) {
      list.push_back({{"name", out.name},
                      {"datatype", DataTypeName(out.datatype)},
                      {"shape", out.shape},
                      {"data", RawValues(out)}});
    }
    (*result)["outputs"] = std::move(list);
    return absl::OkStatus();
  }
  if (outputs.size() != 1) return absl::InternalError("post-processing expected one output");
  const OutputTensor& out = outputs[0];
  std::vector<int64_t> dims = FrameDims(out.shape, batched_);
  if (!IsFloat(out.datatype) || !Fits(config_, dims) ||
      (batched_ && !out.shape.empty() && out.shape[0] != 1)) {
    return absl::InvalidArgumentError(StrCat("model output '", out.name, "' came out ",
                                             DataTypeName(out.datatype), " ",
                                             ShapeString(out.shape), ": ", Needs(config_)));
  }
  switch (config_.type) {
    case PostprocessType::kClassification:
      return Classify(out, result, scores);
    case PostprocessType::kDetection:
      return Detect(out, transform, result, scores);
    case PostprocessType::kAnomaly:
      return Anomaly(out, result, scores);
    case PostprocessType::kRaw:
      break;
  }
  return absl::OkStatus();
}

absl::Status Postprocessor::Classify(const OutputTensor& out, json* result,
                                     std::vector<double>* scores) const {
  FloatView logits(out);
  if (logits.empty()) return absl::InvalidArgumentError("classification output is empty");
  std::vector<float> probs(logits.size());
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = logits[i];
  bool apply = config_.softmax == Softmax::kYes;
  if (config_.softmax == Softmax::kAuto) {
    double sum = 0;
    bool in_range = true;
    for (float v : probs) {
      sum += v;
      in_range = in_range && v >= 0 && v <= 1;
    }
    apply = !in_range || std::abs(sum - 1.0) > 1e-3;
  }
  if (apply) {
    float max = *std::max_element(probs.begin(), probs.end());
    double sum = 0;
    for (float& v : probs) sum += (v = std::exp(v - max));
    for (float& v : probs) v = static_cast<float>(v / sum);
  }
  std::vector<int> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  size_t k = std::min(order.size(), static_cast<size_t>(config_.top_k));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  });
  json classes = json::array();
  for (size_t i = 0; i < k; ++i) {
    classes.push_back(
        {{"index", order[i]}, {"label", Label(order[i])}, {"score", probs[order[i]]}});
  }
  scores->push_back(probs[order[0]]);
  (*result)["classes"] = std::move(classes);
  return absl::OkStatus();
}

absl::Status Postprocessor::Detect(const OutputTensor& out, const FrameTransform& t, json* result,
                                   std::vector<double>* scores) const {
  std::vector<int64_t> dims = FrameDims(out.shape, batched_);
  FloatView data(out);
  const bool v5 = config_.format == DetectionFormat::kYoloV5;
  const int64_t boxes = v5 ? dims[0] : dims[1];
  const int64_t attrs = v5 ? dims[1] : dims[0];
  const int64_t first_class = v5 ? 5 : 4;
  const int64_t classes = attrs - first_class;
  // yolov5 rows are contiguous; yolov8 stores attribute a of box b at a*boxes+b.
  auto at = [&](int64_t box, int64_t attr) {
    return v5 ? data[box * attrs + attr] : data[attr * boxes + box];
  };
  const float threshold = static_cast<float>(config_.confidence_threshold);
  const float sx = config_.normalized_boxes ? static_cast<float>(t.input_width) : 1.0f;
  const float sy = config_.normalized_boxes ? static_cast<float>(t.input_height) : 1.0f;
  std::vector<Detection> candidates;
  for (int64_t b = 0; b < boxes; ++b) {
    float objectness = v5 ? at(b, 4) : 1.0f;
    if (objectness < threshold) continue;
    int best = 0;
    float best_score = -1;
    for (int64_t c = 0; c < classes; ++c) {
      float s = at(b, first_class + c);
      if (s > best_score) best_score = s, best = static_cast<int>(c);
    }
    float score = objectness * best_score;
    if (score < threshold) continue;
    float cx = at(b, 0) * sx, cy = at(b, 1) * sy, w = at(b, 2) * sx, h = at(b, 3) * sy;
    auto fx = [&](float x) {
      double v = (x - t.pad_x) / t.scale_x;
      return static_cast<float>(std::clamp(v, 0.0, static_cast<double>(t.frame_width)));
    };
    auto fy = [&](float y) {
      double v = (y - t.pad_y) / t.scale_y;
      return static_cast<float>(std::clamp(v, 0.0, static_cast<double>(t.frame_height)));
    };
    candidates.push_back(
        {fx(cx - w / 2), fy(cy - h / 2), fx(cx + w / 2), fy(cy + h / 2), best, score});
  }
  std::vector<Detection> kept = NonMaxSuppression(
      std::move(candidates), static_cast<float>(config_.iou_threshold), config_.max_detections);
  json list = json::array();
  for (const Detection& d : kept) {
    auto round1 = [](float v) { return std::round(v * 10.0f) / 10.0f; };
    list.push_back({{"box", {round1(d.x1), round1(d.y1), round1(d.x2), round1(d.y2)}},
                    {"class", d.class_id},
                    {"label", Label(d.class_id)},
                    {"score", d.score}});
    scores->push_back(d.score);
  }
  (*result)["detections"] = std::move(list);
  return absl::OkStatus();
}

absl::Status Postprocessor::Anomaly(const OutputTensor& out, json* result,
                                    std::vector<double>* scores) const {
  FloatView data(out);
  if (data.size() != 1) {
    return absl::InvalidArgumentError(StrCat("anomaly output '", out.name, "' has ", data.size(),
                                             " values; one per frame expected"));
  }
  double score = data[0];
  (*result)["anomaly"] = {{"score", score},
                          {"threshold", config_.threshold},
                          {"is_anomaly", score >= config_.threshold}};
  scores->push_back(score);
  return absl::OkStatus();
}

}  // namespace outpost::serve::pipeline
