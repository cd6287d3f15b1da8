#include "serve/pipeline/postprocess.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

namespace outpost::serve::pipeline {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

// An FP32 output owning its values.
OutputTensor Output(std::vector<int64_t> shape, std::vector<float> values) {
  auto data = std::make_shared<std::vector<float>>(std::move(values));
  OutputTensor out;
  out.name = "y";
  out.datatype = DataType::kFp32;
  out.shape = std::move(shape);
  out.data = std::as_bytes(std::span<const float>(*data));
  out.owner = data;
  return out;
}

// The same as FP16 (IEEE half bits), as an FP16 model returns it.
OutputTensor HalfOutput(std::vector<int64_t> shape, const std::vector<float>& values) {
  auto data = std::make_shared<std::vector<uint16_t>>();
  for (float v : values) data->push_back(FloatToHalf(v));
  OutputTensor out;
  out.name = "y";
  out.datatype = DataType::kFp16;
  out.shape = std::move(shape);
  out.data = std::as_bytes(std::span<const uint16_t>(*data));
  out.owner = data;
  return out;
}

FrameTransform Identity(int w, int h) {
  FrameTransform t;
  t.frame_width = t.input_width = w;
  t.frame_height = t.input_height = h;
  return t;
}

TEST(PostprocessTest, NmsIsClassWise) {
  std::vector<Detection> boxes = {{0, 0, 10, 10, 0, 0.9f},
                                  {1, 1, 11, 11, 0, 0.8f},     // same class, IoU 0.68: dropped
                                  {1, 1, 11, 11, 1, 0.7f},     // other class: kept
                                  {50, 50, 60, 60, 0, 0.6f}};  // far away: kept
  std::vector<Detection> kept = NonMaxSuppression(boxes, 0.5f, 100);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_FLOAT_EQ(kept[0].score, 0.9f);
  EXPECT_EQ(kept[1].class_id, 1);
  EXPECT_FLOAT_EQ(kept[2].score, 0.6f);
  EXPECT_EQ(NonMaxSuppression(boxes, 0.5f, 1).size(), 1u);
  EXPECT_NEAR(IoU(boxes[0], boxes[1]), 81.0f / 119.0f, 1e-6);
}

TEST(PostprocessTest, ClassificationTopKWithLabelsAndSoftmax) {
  PostprocessConfig c;
  c.type = PostprocessType::kClassification;
  c.top_k = 2;
  auto p = Postprocessor::Create(c, {{"y", DataType::kFp32, {-1, 3}}}, true, {"cat", "dog"});
  ASSERT_TRUE(p.ok()) << p.status();
  json result;
  std::vector<double> scores;
  OutputTensor logits = Output({1, 3}, {1.0f, 3.0f, 2.0f});
  ASSERT_TRUE((*p)->Run({&logits, 1}, Identity(1, 1), &result, &scores).ok());
  ASSERT_EQ(result["classes"].size(), 2u);
  EXPECT_EQ(result["classes"][0]["index"], 1);
  EXPECT_EQ(result["classes"][0]["label"], "dog");
  EXPECT_EQ(result["classes"][1]["label"], "2");  // no label for index 2
  double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0);
  EXPECT_NEAR(result["classes"][0]["score"].get<double>(), e3 / (e1 + e2 + e3), 1e-6);
  ASSERT_EQ(scores.size(), 1u);
  EXPECT_NEAR(scores[0], e3 / (e1 + e2 + e3), 1e-6);

  // Probabilities already: softmax: auto leaves them.
  json again;
  scores.clear();
  OutputTensor probs = Output({1, 3}, {0.2f, 0.5f, 0.3f});
  ASSERT_TRUE((*p)->Run({&probs, 1}, Identity(1, 1), &again, &scores).ok());
  EXPECT_FLOAT_EQ(again["classes"][0]["score"].get<float>(), 0.5f);
  EXPECT_FLOAT_EQ(again["classes"][1]["score"].get<float>(), 0.3f);
}

TEST(PostprocessTest, YoloV5BoxesMapBackThroughTheLetterbox) {
  PostprocessConfig c;
  c.type = PostprocessType::kDetection;
  c.confidence_threshold = 0.3;
  auto p = Postprocessor::Create(c, {{"y", DataType::kFp32, {-1, -1, 7}}}, true, {"a", "b"});
  ASSERT_TRUE(p.ok()) << p.status();
  // 64x64 input; frame 1280x720 letterboxed: scale 0.05, 14 rows of border.
  FrameTransform t;
  t.scale_x = t.scale_y = 0.05;
  t.pad_y = 14;
  t.frame_width = 1280;
  t.frame_height = 720;
  t.input_width = t.input_height = 64;
  OutputTensor out = Output({1, 3, 7}, {
                                           32, 32, 20, 10, 0.9f, 0.1f, 0.8f,  // b, 0.72
                                           32, 32, 20, 10, 0.5f, 0.4f, 0.1f,  // a, 0.2 < 0.3
                                           4,  16, 8,  8,  1.0f, 0.9f, 0.0f,  // a, 0.9, clipped
                                       });
  json result;
  std::vector<double> scores;
  ASSERT_TRUE((*p)->Run({&out, 1}, t, &result, &scores).ok());
  ASSERT_EQ(result["detections"].size(), 2u) << result.dump();
  json first = result["detections"][0];
  EXPECT_EQ(first["label"], "a");
  EXPECT_NEAR(first["score"].get<double>(), 0.9, 1e-6);
  // x: (0 - 0) / 0.05 = 0 .. 160; y: (12 - 14) / 0.05 = -40 -> 0 .. (20 - 14) / 0.05 = 120
  EXPECT_EQ(first["box"], json({0.0, 0.0, 160.0, 120.0}));
  json second = result["detections"][1];
  EXPECT_EQ(second["label"], "b");
  EXPECT_NEAR(second["score"].get<double>(), 0.72, 1e-6);
  EXPECT_EQ(second["box"], json({440.0, 260.0, 840.0, 460.0}));
  EXPECT_EQ(scores.size(), 2u);
}

TEST(PostprocessTest, YoloV8IsTransposedWithoutObjectness) {
  PostprocessConfig c;
  c.type = PostprocessType::kDetection;
  c.format = DetectionFormat::kYoloV8;
  c.normalized_boxes = true;
  auto p = Postprocessor::Create(c, {{"y", DataType::kFp32, {1, 6, -1}}}, true, {});
  ASSERT_TRUE(p.ok()) << p.status();
  // Two boxes, attributes in rows: cx, cy, w, h, class0, class1.
  OutputTensor out = Output({1, 6, 2}, {0.5f, 0.25f,    // cx
                                        0.5f, 0.25f,    // cy
                                        0.5f, 0.1f,     // w
                                        0.5f, 0.1f,     // h
                                        0.1f, 0.2f,     // class 0
                                        0.95f, 0.1f});  // class 1
  json result;
  std::vector<double> scores;
  ASSERT_TRUE((*p)->Run({&out, 1}, Identity(100, 200), &result, &scores).ok());
  ASSERT_EQ(result["detections"].size(), 1u) << result.dump();
  EXPECT_EQ(result["detections"][0]["class"], 1);
  EXPECT_EQ(result["detections"][0]["box"], json({25.0, 50.0, 75.0, 150.0}));
}

TEST(PostprocessTest, AnomalyAgainstTheThreshold) {
  PostprocessConfig c;
  c.type = PostprocessType::kAnomaly;
  c.threshold = 0.5;
  auto p = Postprocessor::Create(c, {{"score", DataType::kFp32, {-1, 1}}}, true, {});
  ASSERT_TRUE(p.ok()) << p.status();
  for (float v : {0.2f, 0.7f}) {
    json result;
    std::vector<double> scores;
    OutputTensor out = Output({1, 1}, {v});
    ASSERT_TRUE((*p)->Run({&out, 1}, Identity(1, 1), &result, &scores).ok());
    EXPECT_EQ(result["anomaly"]["is_anomaly"], v > 0.5f);
    EXPECT_FLOAT_EQ(result["anomaly"]["score"].get<float>(), v);
    EXPECT_EQ(scores, std::vector<double>{static_cast<double>(v)});
  }
}

TEST(PostprocessTest, RawPassesEveryOutput) {
  PostprocessConfig c;
  auto p = Postprocessor::Create(c, {{"y", DataType::kFp32, {-1, 2}}, {"z", DataType::kInt64, {1}}},
                                 true, {});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->output_indices().empty());  // all of them
  OutputTensor outs[1] = {Output({1, 2}, {1.5f, -2.0f})};
  json result;
  std::vector<double> scores;
  ASSERT_TRUE((*p)->Run(outs, Identity(1, 1), &result, &scores).ok());
  EXPECT_EQ(result["outputs"][0]["data"], json({1.5, -2.0}));
  EXPECT_EQ(result["outputs"][0]["shape"], json({1, 2}));
  EXPECT_EQ(result["outputs"][0]["datatype"], "FP32");
}

TEST(PostprocessTest, OutputsThatDoNotFitAreRejected) {
  auto error = [](PostprocessType type, TensorSpec spec, std::string output = "") {
    PostprocessConfig c;
    c.type = type;
    c.output = output;
    auto p = Postprocessor::Create(c, {spec}, true, {});
    EXPECT_FALSE(p.ok());
    return p.ok() ? "" : std::string(MessageOf(p.status()));
  };
  EXPECT_EQ(error(PostprocessType::kDetection, {"probs", DataType::kFp32, {-1, 3}}),
            "model output 'probs' is FP32 [-1,3]: detection (yolov5) needs an FP32 or FP16 output "
            "[N, boxes, 5 + classes]");
  EXPECT_THAT(error(PostprocessType::kClassification, {"y", DataType::kFp32, {-1, 4, 7}}),
              HasSubstr("classification needs one FP32 or FP16 score per class"));
  EXPECT_THAT(error(PostprocessType::kAnomaly, {"y", DataType::kFp32, {-1, 3}}),
              HasSubstr("anomaly needs an FP32 or FP16 output with one value per frame"));
  EXPECT_THAT(error(PostprocessType::kClassification, {"y", DataType::kInt64, {-1, 3}}),
              HasSubstr("is INT64"));
  EXPECT_EQ(error(PostprocessType::kRaw, {"y", DataType::kFp32, {-1, 3}}, "nope"),
            "postprocess.output 'nope': the model has no such output (it has y)");

  // A dynamic dimension that comes out wrong is caught per frame.
  PostprocessConfig c;
  c.type = PostprocessType::kDetection;
  auto p = Postprocessor::Create(c, {{"y", DataType::kFp32, {-1, -1, -1}}}, true, {});
  ASSERT_TRUE(p.ok()) << p.status();
  OutputTensor out = Output({1, 2, 3}, {0, 0, 0, 0, 0, 0});
  json result;
  std::vector<double> scores;
  absl::Status s = (*p)->Run({&out, 1}, Identity(1, 1), &result, &scores);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_THAT(MessageOf(s), HasSubstr("came out FP32 [1,2,3]"));
}

TEST(PostprocessTest, Fp16OutputsAreReadForEveryType) {
  json result;
  std::vector<double> scores;
  PostprocessConfig c;
  c.type = PostprocessType::kClassification;
  c.top_k = 1;
  auto cls = Postprocessor::Create(c, {{"y", DataType::kFp16, {-1, 3}}}, true, {"a", "b", "c"});
  ASSERT_TRUE(cls.ok()) << cls.status();
  OutputTensor probs = HalfOutput({1, 3}, {0.25f, 0.125f, 0.625f});
  ASSERT_TRUE((*cls)->Run({&probs, 1}, Identity(1, 1), &result, &scores).ok());
  EXPECT_EQ(result["classes"][0]["label"], "c");
  EXPECT_FLOAT_EQ(result["classes"][0]["score"].get<float>(), 0.625f);

  c.type = PostprocessType::kDetection;
  c.confidence_threshold = 0.3;
  auto det = Postprocessor::Create(c, {{"y", DataType::kFp16, {-1, -1, 7}}}, true, {});
  ASSERT_TRUE(det.ok()) << det.status();
  // One box (cx 50, cy 100, w 50, h 100), objectness 1, class 1 at 0.75.
  OutputTensor boxes = HalfOutput({1, 2, 7}, {50, 100, 50, 100, 1, 0.25f, 0.75f,  //
                                              10, 10, 4, 4, 0.1f, 1, 0});
  result = json();
  ASSERT_TRUE((*det)->Run({&boxes, 1}, Identity(100, 200), &result, &scores).ok());
  ASSERT_EQ(result["detections"].size(), 1u) << result.dump();
  EXPECT_EQ(result["detections"][0]["class"], 1);
  EXPECT_EQ(result["detections"][0]["box"], json({25.0, 50.0, 75.0, 150.0}));
  EXPECT_FLOAT_EQ(result["detections"][0]["score"].get<float>(), 0.75f);

  c.type = PostprocessType::kAnomaly;
  c.threshold = 0.5;
  auto anomaly = Postprocessor::Create(c, {{"y", DataType::kFp16, {-1, 1}}}, true, {});
  ASSERT_TRUE(anomaly.ok()) << anomaly.status();
  OutputTensor score = HalfOutput({1, 1}, {0.875f});
  result = json();
  ASSERT_TRUE((*anomaly)->Run({&score, 1}, Identity(1, 1), &result, &scores).ok());
  EXPECT_EQ(result["anomaly"]["score"], 0.875);
  EXPECT_EQ(result["anomaly"]["is_anomaly"], true);

  auto raw =
      Postprocessor::Create(PostprocessConfig{}, {{"y", DataType::kFp16, {-1, 2}}}, true, {});
  ASSERT_TRUE(raw.ok()) << raw.status();
  OutputTensor values = HalfOutput({1, 2}, {1.5f, -65504.0f});
  result = json();
  ASSERT_TRUE((*raw)->Run({&values, 1}, Identity(1, 1), &result, &scores).ok());
  EXPECT_EQ(result["outputs"][0]["datatype"], "FP16");
  EXPECT_EQ(result["outputs"][0]["data"], json({1.5, -65504.0}));
}

TEST(PostprocessTest, LabelsFile) {
  std::string path = ::testing::TempDir() + "/labels-test.txt";
  std::ofstream(path) << "cat\r\ndog\n\n";
  absl::StatusOr<std::vector<std::string>> labels = LoadLabels(path);
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(*labels, (std::vector<std::string>{"cat", "dog"}));
  labels = LoadLabels("/nonexistent/labels.txt");
  ASSERT_FALSE(labels.ok());
  EXPECT_THAT(MessageOf(labels.status()), HasSubstr("labels file /nonexistent/labels.txt"));
}

}  // namespace
}  // namespace outpost::serve::pipeline
