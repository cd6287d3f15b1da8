#include "serve/pipeline/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <opencv2/imgproc.hpp>

namespace outpost::serve::pipeline {

absl::StatusOr<Preprocessor> Preprocessor::Create(const PreprocessConfig& config,
                                                  const TensorSpec& input) {
  auto error = [&](std::string_view reason) {
    return absl::InvalidArgumentError(StrCat("pre-processing for model input '", input.name, "' ",
                                             ShapeString(input.shape), ": ", reason));
  };
  Preprocessor p;
  p.input_name_ = input.name;
  p.resize_ = config.resize;
  const std::vector<int64_t>& dims = input.shape;
  if (dims.size() != 3 && dims.size() != 4) {
    return error("an image input has rank 4 ([N,3,H,W] or [N,H,W,3]) or 3 ([3,H,W] or [H,W,3])");
  }
  p.batched_ = dims.size() == 4;
  size_t first = p.batched_ ? 1 : 0;
  if (p.batched_ && dims[0] != -1 && dims[0] != 1) {
    return error(StrCat("the batch dimension must be dynamic or 1, got ", dims[0]));
  }
  auto is3 = [](int64_t d) { return d == 3 || d == -1; };
  if (config.layout.has_value()) {
    p.layout_ = *config.layout;
  } else if (dims[first] == 3) {
    p.layout_ = Layout::kNchw;
  } else if (dims[first + 2] == 3) {
    p.layout_ = Layout::kNhwc;
  } else {
    p.layout_ = Layout::kNchw;
  }
  size_t c_axis = p.layout_ == Layout::kNchw ? first : first + 2;
  size_t h_axis = p.layout_ == Layout::kNchw ? first + 1 : first;
  size_t w_axis = h_axis + 1;
  if (!is3(dims[c_axis])) {
    return error(StrCat("expected 3 colour channels in dimension ", c_axis, " (layout ",
                        p.layout_ == Layout::kNchw ? "nchw" : "nhwc", "), got ", dims[c_axis]));
  }
  auto spatial = [&](std::optional<int> configured, int64_t model, std::string_view what,
                     int* out) -> absl::Status {
    if (configured.has_value()) {
      if (model != -1 && model != *configured) {
        return error(
            StrCat("preprocess.size ", what, " ", *configured, " but the model takes ", model));
      }
      *out = *configured;
    } else if (model > 0) {
      *out = static_cast<int>(model);
    } else {
      return error(
          StrCat("the model's ", what, " is dynamic: set preprocess.size: [width, height]"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(spatial(config.width, dims[w_axis], "width", &p.width_));
  RETURN_IF_ERROR(spatial(config.height, dims[h_axis], "height", &p.height_));
  if (input.datatype != DataType::kFp32 && input.datatype != DataType::kFp16 &&
      input.datatype != DataType::kUint8) {
    return error(StrCat("image inputs must be FP32, FP16 or UINT8, the model takes ",
                        DataTypeName(input.datatype)));
  }
  p.dtype_ = config.dtype.value_or(input.datatype);
  if (p.dtype_ != input.datatype) {
    return error(StrCat("preprocess.dtype ", DataTypeName(p.dtype_), " but the model takes ",
                        DataTypeName(input.datatype)));
  }
  if (p.dtype_ == DataType::kUint8 && config.normalizes) {
    return error(
        "the model takes UINT8 pixels as they are: remove preprocess scale, mean and std "
        "(from the pipeline or the model's config.yaml)");
  }
  if (p.batched_) p.shape_.push_back(1);
  if (p.layout_ == Layout::kNchw) {
    p.shape_.insert(p.shape_.end(), {3, p.height_, p.width_});
  } else {
    p.shape_.insert(p.shape_.end(), {p.height_, p.width_, 3});
  }
  p.tensor_bytes_ = static_cast<size_t>(p.width_) * p.height_ * 3 * DataTypeSize(p.dtype_);
  // Frames are BGR: the model's first channel is R (index 2) for rgb.
  p.pad_value_ = config.pad_value;
  p.source_channel_ = config.rgb ? std::array<int, 3>{2, 1, 0} : std::array<int, 3>{0, 1, 2};
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      p.lut_[c][v] = p.dtype_ == DataType::kUint8
                         ? static_cast<float>(v)
                         : static_cast<float>((v * config.scale - config.mean[c]) / config.std[c]);
    }
    // FP16 input: the table holds the half-precision bits, so the pixel pass
    // writes them directly (no float32 buffer, no per-pixel conversion).
    if (p.dtype_ == DataType::kFp16) {
      for (int v = 0; v < 256; ++v) p.lut16_[c][v] = FloatToHalf(p.lut_[c][v]);
    }
  }
  return p;
}

template <typename T, typename L>
void Preprocessor::Convert(const cv::Mat& resized, int off_x, int off_y, const Lut<L>& lut,
                           T* out) const {
  const size_t plane = static_cast<size_t>(width_) * height_;
  const int rw = resized.cols, rh = resized.rows;
  const int s0 = source_channel_[0], s1 = source_channel_[1], s2 = source_channel_[2];
  const auto& l0 = lut[0];
  const auto& l1 = lut[1];
  const auto& l2 = lut[2];
  const T pad0 = static_cast<T>(l0[pad_value_]), pad1 = static_cast<T>(l1[pad_value_]),
          pad2 = static_cast<T>(l2[pad_value_]);
  for (int y = 0; y < height_; ++y) {
    const int sy = y - off_y;
    const uint8_t* row = (sy >= 0 && sy < rh) ? resized.ptr<uint8_t>(sy) : nullptr;
    if (layout_ == Layout::kNchw) {
      T* o0 = out + static_cast<size_t>(y) * width_;
      T* o1 = o0 + plane;
      T* o2 = o1 + plane;
      for (int x = 0; x < width_; ++x) {
        const int sx = x - off_x;
        if (row == nullptr || sx < 0 || sx >= rw) {
          o0[x] = pad0, o1[x] = pad1, o2[x] = pad2;
          continue;
        }
        const uint8_t* px = row + sx * 3;
        o0[x] = static_cast<T>(l0[px[s0]]);
        o1[x] = static_cast<T>(l1[px[s1]]);
        o2[x] = static_cast<T>(l2[px[s2]]);
      }
    } else {
      T* o = out + static_cast<size_t>(y) * width_ * 3;
      for (int x = 0; x < width_; ++x, o += 3) {
        const int sx = x - off_x;
        if (row == nullptr || sx < 0 || sx >= rw) {
          o[0] = pad0, o[1] = pad1, o[2] = pad2;
          continue;
        }
        const uint8_t* px = row + sx * 3;
        o[0] = static_cast<T>(l0[px[s0]]);
        o[1] = static_cast<T>(l1[px[s1]]);
        o[2] = static_cast<T>(l2[px[s2]]);
      }
    }
  }
}

FrameTransform Preprocessor::Run(const cv::Mat& input, std::vector<std::byte>* out,
                                 cv::Mat* scratch) const {
  cv::Mat converted;
  const cv::Mat* frame = &input;
  if (input.type() == CV_8UC1) {
    cv::cvtColor(input, converted, cv::COLOR_GRAY2BGR);
    frame = &converted;
  } else if (input.type() == CV_8UC4) {
    cv::cvtColor(input, converted, cv::COLOR_BGRA2BGR);
    frame = &converted;
  }
  FrameTransform t;
  t.frame_width = frame->cols;
  t.frame_height = frame->rows;
  t.input_width = width_;
  t.input_height = height_;
  int off_x = 0, off_y = 0;
  const cv::Mat* resized = frame;
  if (resize_ == ResizeMode::kLetterbox) {
    double r = std::min(static_cast<double>(width_) / frame->cols,
                        static_cast<double>(height_) / frame->rows);
    int nw = std::max(1, static_cast<int>(std::lround(frame->cols * r)));
    int nh = std::max(1, static_cast<int>(std::lround(frame->rows * r)));
    off_x = (width_ - nw) / 2;
    off_y = (height_ - nh) / 2;
    t.scale_x = static_cast<double>(nw) / frame->cols;
    t.scale_y = static_cast<double>(nh) / frame->rows;
    t.pad_x = off_x;
    t.pad_y = off_y;
    if (nw != frame->cols || nh != frame->rows) {
      cv::resize(*frame, *scratch, cv::Size(nw, nh), 0, 0, cv::INTER_LINEAR);
      resized = scratch;
    }
  } else {
    t.scale_x = static_cast<double>(width_) / frame->cols;
    t.scale_y = static_cast<double>(height_) / frame->rows;
    if (frame->cols != width_ || frame->rows != height_) {
      cv::resize(*frame, *scratch, cv::Size(width_, height_), 0, 0, cv::INTER_LINEAR);
      resized = scratch;
    }
  }
  out->resize(tensor_bytes_);
  if (dtype_ == DataType::kUint8) {
    Convert(*resized, off_x, off_y, lut_, reinterpret_cast<uint8_t*>(out->data()));
  } else if (dtype_ == DataType::kFp16) {
    Convert(*resized, off_x, off_y, lut16_, reinterpret_cast<uint16_t*>(out->data()));
  } else {
    Convert(*resized, off_x, off_y, lut_, reinterpret_cast<float*>(out->data()));
  }
  return t;
}

}  // namespace outpost::serve::pipeline
