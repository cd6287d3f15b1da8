// Post-processing: one frame's model outputs into a result.
//
//   classification  top-k of a score vector ([N,C] or [C], other dimensions
//                   1), softmax applied when the scores are not already
//                   probabilities (softmax: auto), labels from a file
//   detection       YOLO-style decoding: yolov5 [N,B,5+C] rows of
//                   (cx,cy,w,h,objectness,class scores...), yolov8
//                   [N,4+C,B] columns of (cx,cy,w,h,class scores...); score =
//                   objectness x class score; confidence threshold;
//                   class-wise NMS; boxes mapped back to the original frame
//                   (undoing letterbox or stretch) and clipped to it
//   anomaly         a single value per frame against a threshold
//   raw             every output as it is
//
// Thread safety: a Postprocessor is immutable after Create.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "serve/pipeline/pipeline_config.h"
#include "serve/pipeline/preprocess.h"
#include "serve/tensor.h"

namespace outpost::serve::pipeline {

struct Detection {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;  // frame pixels
  int class_id = 0;
  float score = 0;
};

// Class-wise non-maximum suppression: within each class, drops a box whose
// IoU with a higher-scoring kept box exceeds `iou_threshold`. Returns the
// kept boxes by descending score, at most `max_keep`.
std::vector<Detection> NonMaxSuppression(std::vector<Detection> boxes, float iou_threshold,
                                         int max_keep);
float IoU(const Detection& a, const Detection& b);

// Reads a labels file: one label per line (trailing CR and blanks at the end
// ignored). NotFound / FailedPrecondition when it cannot be read.
absl::StatusOr<std::vector<std::string>> LoadLabels(const std::filesystem::path& path);

class Postprocessor {
 public:
  // Checks `config` against the model's outputs (full shapes; `batched`:
  // the first dimension is the batch). InvalidArgument naming the output,
  // its shape and what the post-processing needs when they do not match
  // (e.g. "detection (yolov5) needs an output [N, boxes, 5 + classes]").
  static absl::StatusOr<std::unique_ptr<Postprocessor>> Create(
      const PostprocessConfig& config, const std::vector<TensorSpec>& outputs, bool batched,
      std::vector<std::string> labels);

  // The outputs to ask the scheduler for (indices into the model's outputs).
  const std::vector<int>& output_indices() const { return output_indices_; }

  // Fills `result` (the type's member: "classes", "detections", "anomaly" or
  // "outputs") and appends the scores for the score histogram (top-1
  // confidence, each detection's score, the anomaly score). `outputs` are in
  // output_indices() order. InvalidArgument when the outputs' actual shapes
  // or datatypes do not fit (a dynamic dimension the model filled in
  // differently).
  absl::Status Run(std::span<const OutputTensor> outputs, const FrameTransform& transform,
                   nlohmann::json* result, std::vector<double>* scores) const;

  PostprocessType type() const { return config_.type; }

 private:
  Postprocessor() = default;
  absl::Status Classify(const OutputTensor& out, nlohmann::json* result,
                        std::vector<double>* scores) const;
  absl::Status Detect(const OutputTensor& out, const FrameTransform& t, nlohmann::json* result,
                      std::vector<double>* scores) const;
  absl::Status Anomaly(const OutputTensor& out, nlohmann::json* result,
                       std::vector<double>* scores) const;
  std::string Label(int index) const;

  PostprocessConfig config_;
  std::vector<int> output_indices_;
  std::string output_name_;
  bool batched_ = false;
  std::vector<std::string> labels_;
};

}  // namespace outpost::serve::pipeline
