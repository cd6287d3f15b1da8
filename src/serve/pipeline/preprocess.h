// Pre-processing: a decoded frame (8-bit BGR, any size) into the model's
// input tensor. Resize (stretch or letterbox) is OpenCV's; colour order,
// scale/mean/std normalisation, layout (NCHW/NHWC), dtype (FP32/FP16/UINT8) and
// the letterbox border are then written in one pass over the output pixels
// through per-channel lookup tables, straight into the tensor buffer. A
// frame already at the input size with stretch is not resized (no copy).
//
// Thread safety: a Preprocessor is immutable after Create; Run may be called
// from several threads with their own buffers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <opencv2/core.hpp>
#include <vector>

#include "common/status.h"
#include "serve/pipeline/pipeline_config.h"
#include "serve/tensor.h"

namespace outpost::serve::pipeline {

// How input coordinates map back to the frame: frame = (input - pad) / scale.
struct FrameTransform {
  double scale_x = 1, scale_y = 1;
  double pad_x = 0, pad_y = 0;
  int frame_width = 0, frame_height = 0;
  int input_width = 0, input_height = 0;
};

class Preprocessor {
 public:
  // Resolves `config` against the model input `input` (its full shape:
  // [N,3,H,W] / [N,H,W,3] with N -1 or 1, or [3,H,W] / [H,W,3]). Size and
  // layout default from the shape, dtype from the datatype. InvalidArgument
  // when they cannot fit: a rank other than 3 or 4, 3 channels impossible,
  // a size that contradicts a fixed dimension, no size for dynamic spatial
  // dimensions, a dtype other than the model's, a model datatype other
  // than FP32/FP16/UINT8, or scale/mean/std for UINT8 input. Messages name
  // the input and its shape.
  static absl::StatusOr<Preprocessor> Create(const PreprocessConfig& config,
                                             const TensorSpec& input);

  // Writes the tensor for `frame` (CV_8UC3 BGR; CV_8UC1/CV_8UC4 are
  // converted) into `out`, resized to tensor_bytes(). `scratch` is the
  // caller's reusable resize buffer.
  FrameTransform Run(const cv::Mat& frame, std::vector<std::byte>* out, cv::Mat* scratch) const;

  const std::string& input_name() const { return input_name_; }
  DataType dtype() const { return dtype_; }
  // The shape sent to the model (with batch 1 when the model has a batch
  // dimension).
  const std::vector<int64_t>& shape() const { return shape_; }
  size_t tensor_bytes() const { return tensor_bytes_; }
  int width() const { return width_; }
  int height() const { return height_; }
  Layout layout() const { return layout_; }
  bool batched() const { return batched_; }

 private:
  Preprocessor() = default;
  template <typename L>
  using Lut = std::array<std::array<L, 256>, 3>;
  template <typename T, typename L>
  void Convert(const cv::Mat& resized, int off_x, int off_y, const Lut<L>& lut, T* out) const;

  std::string input_name_;
  DataType dtype_ = DataType::kFp32;
  Layout layout_ = Layout::kNchw;
  ResizeMode resize_ = ResizeMode::kStretch;
  bool batched_ = false;
  int width_ = 0, height_ = 0;
  std::vector<int64_t> shape_;
  size_t tensor_bytes_ = 0;
  // lut_[c][v]: the value written for byte v of output channel c (c in the
  // model's colour order); source_channel_[c]: where c is in a BGR pixel.
  // lut16_: the same as IEEE half bits, for FP16 input.
  Lut<float> lut_{};
  Lut<uint16_t> lut16_{};
  std::array<int, 3> source_channel_{};
  int pad_value_ = 114;
};

}  // namespace outpost::serve::pipeline
