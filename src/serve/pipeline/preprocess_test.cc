#include "serve/pipeline/preprocess.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace outpost::serve::pipeline {
namespace {

using ::testing::HasSubstr;

TensorSpec Input(std::vector<int64_t> shape, DataType type = DataType::kFp32) {
  return {"x", type, std::move(shape)};
}

const float* Floats(const std::vector<std::byte>& v) {
  return reinterpret_cast<const float*>(v.data());
}

TEST(PreprocessTest, SizeLayoutAndTypeComeFromTheModel) {
  absl::StatusOr<Preprocessor> p = Preprocessor::Create({}, Input({-1, 3, 4, 6}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->width(), 6);
  EXPECT_EQ(p->height(), 4);
  EXPECT_EQ(p->layout(), Layout::kNchw);
  EXPECT_TRUE(p->batched());
  EXPECT_EQ(p->shape(), (std::vector<int64_t>{1, 3, 4, 6}));
  EXPECT_EQ(p->tensor_bytes(), 3u * 4 * 6 * 4);

  p = Preprocessor::Create({}, Input({8, 10, 3}, DataType::kUint8));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->layout(), Layout::kNhwc);
  EXPECT_FALSE(p->batched());
  EXPECT_EQ(p->shape(), (std::vector<int64_t>{8, 10, 3}));
  EXPECT_EQ(p->dtype(), DataType::kUint8);
}

TEST(PreprocessTest, StretchNormalisesInModelColourOrderNchw) {
  PreprocessConfig c;
  c.mean = {0.5, 0.25, 0.0};
  c.std = {0.5, 0.25, 1.0};
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, Input({-1, 3, 2, 2}));
  ASSERT_TRUE(p.ok()) << p.status();
  // A BGR frame of (b=0, g=51, r=255) at the input size: not resized.
  cv::Mat frame(2, 2, CV_8UC3, cv::Scalar(0, 51, 255));
  std::vector<std::byte> out;
  cv::Mat scratch;
  FrameTransform t = p->Run(frame, &out, &scratch);
  EXPECT_TRUE(scratch.empty());  // no resize, no copy
  EXPECT_EQ(t.scale_x, 1.0);
  ASSERT_EQ(out.size(), 3u * 4 * 4);
  const float* v = Floats(out);
  for (int i = 0; i < 4; ++i) {
    EXPECT_FLOAT_EQ(v[i], (1.0f - 0.5f) / 0.5f);        // R plane first (rgb)
    EXPECT_FLOAT_EQ(v[4 + i], (0.2f - 0.25f) / 0.25f);  // G
    EXPECT_FLOAT_EQ(v[8 + i], 0.0f);                    // B
  }
}

TEST(PreprocessTest, BgrNhwcUint8KeepsThePixels) {
  PreprocessConfig c;
  c.rgb = false;
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, Input({1, 2, 2, 3}, DataType::kUint8));
  ASSERT_TRUE(p.ok()) << p.status();
  cv::Mat frame(4, 4, CV_8UC3, cv::Scalar(10, 20, 30));
  std::vector<std::byte> out;
  cv::Mat scratch;
  FrameTransform t = p->Run(frame, &out, &scratch);
  EXPECT_DOUBLE_EQ(t.scale_x, 0.5);
  EXPECT_DOUBLE_EQ(t.scale_y, 0.5);
  ASSERT_EQ(out.size(), 12u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<int>(out[i * 3]), 10);
    EXPECT_EQ(static_cast<int>(out[i * 3 + 1]), 20);
    EXPECT_EQ(static_cast<int>(out[i * 3 + 2]), 30);
  }
}

TEST(PreprocessTest, LetterboxPadsAndReportsTheMapping) {
  PreprocessConfig c;
  c.resize = ResizeMode::kLetterbox;
  c.scale = 1.0;  // values stay 0..255 for the check
  c.pad_value = 7;
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, Input({-1, 3, 8, 8}));
  ASSERT_TRUE(p.ok()) << p.status();
  // 16x8 frame into 8x8: scaled by 0.5 to 8x4, 2 rows of border above and below.
  cv::Mat frame(8, 16, CV_8UC3, cv::Scalar(0, 0, 200));
  std::vector<std::byte> out;
  cv::Mat scratch;
  FrameTransform t = p->Run(frame, &out, &scratch);
  EXPECT_DOUBLE_EQ(t.scale_x, 0.5);
  EXPECT_DOUBLE_EQ(t.scale_y, 0.5);
  EXPECT_DOUBLE_EQ(t.pad_x, 0);
  EXPECT_DOUBLE_EQ(t.pad_y, 2);
  EXPECT_EQ(t.frame_width, 16);
  EXPECT_EQ(t.input_height, 8);
  const float* r = Floats(out);  // R plane
  for (int y = 0; y < 8; ++y) {
    float expected = (y < 2 || y >= 6) ? 7.0f : 200.0f;
    for (int x = 0; x < 8; ++x) EXPECT_FLOAT_EQ(r[y * 8 + x], expected) << y << "," << x;
  }
}

TEST(PreprocessTest, GreyFramesAreExpandedToThreeChannels) {
  absl::StatusOr<Preprocessor> p = Preprocessor::Create({}, Input({3, 2, 2}));
  ASSERT_TRUE(p.ok()) << p.status();
  cv::Mat frame(2, 2, CV_8UC1, cv::Scalar(255));
  std::vector<std::byte> out;
  cv::Mat scratch;
  p->Run(frame, &out, &scratch);
  for (int i = 0; i < 12; ++i) EXPECT_FLOAT_EQ(Floats(out)[i], 1.0f);
}

TEST(PreprocessTest, InputsThatCannotFitAreClearErrors) {
  auto error = [](const PreprocessConfig& c, TensorSpec spec) {
    absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, spec);
    EXPECT_FALSE(p.ok());
    return p.ok() ? "" : std::string(MessageOf(p.status()));
  };
  EXPECT_THAT(error({}, Input({-1, 64})), HasSubstr("an image input has rank 4"));
  EXPECT_THAT(error({}, Input({-1, 3, -1, -1})),
              HasSubstr("the model's width is dynamic: set preprocess.size"));
  EXPECT_THAT(error({}, Input({4, 3, 8, 8})),
              HasSubstr("the batch dimension must be dynamic or 1"));
  PreprocessConfig sized;
  sized.width = 10;
  sized.height = 8;
  EXPECT_EQ(error(sized, Input({-1, 3, 8, 8})),
            "pre-processing for model input 'x' [-1,3,8,8]: preprocess.size width 10 but the "
            "model takes 8");
  EXPECT_THAT(error({}, Input({-1, 3, 8, 8}, DataType::kInt64)),
              HasSubstr("image inputs must be FP32, FP16 or UINT8, the model takes INT64"));
  PreprocessConfig u8;
  u8.dtype = DataType::kUint8;
  EXPECT_THAT(error(u8, Input({-1, 3, 8, 8})),
              HasSubstr("preprocess.dtype UINT8 but the model takes FP32"));
  PreprocessConfig nhwc;
  nhwc.layout = Layout::kNhwc;
  EXPECT_THAT(error(nhwc, Input({-1, 3, 8, 8})), HasSubstr("expected 3 colour channels"));
  // Dynamic spatial dimensions with a size given are fine.
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(sized, Input({-1, 3, -1, -1}));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->shape(), (std::vector<int64_t>{1, 3, 8, 10}));
}

TEST(PreprocessTest, Fp16InputGetsHalfPrecisionValuesInOnePass) {
  PreprocessConfig c;
  c.mean = {0.5, 0.25, 0.0};
  c.std = {0.5, 0.25, 1.0};
  c.resize = ResizeMode::kLetterbox;
  c.pad_value = 0;
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, Input({1, 3, 4, 4}, DataType::kFp16));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->dtype(), DataType::kFp16);
  EXPECT_EQ(p->tensor_bytes(), 3u * 4 * 4 * 2);
  // 4 wide, 2 high: letterboxed into rows 1..2, rows 0 and 3 are border.
  cv::Mat frame(2, 4, CV_8UC3, cv::Scalar(0, 51, 255));
  std::vector<std::byte> out;
  cv::Mat scratch;
  p->Run(frame, &out, &scratch);
  ASSERT_EQ(out.size(), 3u * 4 * 4 * 2);
  const uint16_t* v = reinterpret_cast<const uint16_t*>(out.data());
  for (int x = 0; x < 4; ++x) {
    EXPECT_FLOAT_EQ(HalfToFloat(v[4 + x]), 1.0f);          // R, row 1: (1 - 0.5) / 0.5
    EXPECT_NEAR(HalfToFloat(v[16 + 8 + x]), -0.2f, 1e-3);  // G, row 2: (0.2 - 0.25) / 0.25
    EXPECT_FLOAT_EQ(HalfToFloat(v[32 + 4 + x]), 0.0f);     // B
    EXPECT_FLOAT_EQ(HalfToFloat(v[x]), -1.0f);             // R border: (0 - 0.5) / 0.5
    EXPECT_FLOAT_EQ(HalfToFloat(v[16 + 12 + x]), -1.0f);   // G border: (0 - 0.25) / 0.25
  }
  // FP16 is the model's type: asking for fp32 instead is an error.
  PreprocessConfig fp32;
  fp32.dtype = DataType::kFp32;
  absl::StatusOr<Preprocessor> wrong =
      Preprocessor::Create(fp32, Input({1, 3, 4, 4}, DataType::kFp16));
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(MessageOf(wrong.status()),
              HasSubstr("preprocess.dtype FP32 but the model takes FP16"));
}

TEST(PreprocessTest, Uint8InputRefusesNormalisationFromAnySource) {
  PreprocessConfig c = ResolvePreprocess({}, {});
  c.mean = {1, 1, 1};
  c.normalizes = true;  // as when the model's config.yaml sets mean
  absl::StatusOr<Preprocessor> p = Preprocessor::Create(c, Input({1, 4, 4, 3}, DataType::kUint8));
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(MessageOf(p.status()),
              HasSubstr("the model takes UINT8 pixels as they are: remove preprocess scale"));
}

}  // namespace
}  // namespace outpost::serve::pipeline
