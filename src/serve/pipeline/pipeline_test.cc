// Pipelines end to end in one process: real models (scripts/gen_models.py)
// in a real repository, real files, real sinks.
#include "serve/pipeline/pipeline.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>
#include <set>
#include <thread>

namespace outpost::serve::pipeline {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

fs::path TestModels() {
  const char* dir = std::getenv("OUTPOST_TEST_MODELS");
  return dir ? fs::path(dir) : fs::path("test-models");
}

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           StrCat("outpost-pipeline-test-", getpid(), "-",
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "models");
    for (const char* model :
         {"color_classifier", "box_detector", "color_classifier_fp16", "box_detector_fp16"}) {
      ASSERT_TRUE(fs::exists(TestModels() / model)) << "run through ctest (OUTPOST_TEST_MODELS)";
      fs::copy(TestModels() / model, dir_ / "models" / model, fs::copy_options::recursive);
    }
    RepositoryOptions options;
    options.root = dir_ / "models";
    options.metrics = &metrics_;
    auto repo = ModelRepository::Create(options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = std::move(*repo);
    repo_->LoadStartupModels();
    ASSERT_TRUE(repo_->AllReady());
    families_ = std::make_unique<PipelineMetricFamilies>(metrics_.registry());
  }
  void TearDown() override {
    repo_.reset();
    fs::remove_all(dir_);
  }

  std::unique_ptr<Pipeline> Make(std::string_view yaml) {
    auto config = ParsePipelineConfig(yaml, "test.yaml", dir_);
    EXPECT_TRUE(config.ok()) << config.status();
    if (!config.ok()) return nullptr;
    auto p = Pipeline::Create(std::move(*config), *repo_, *families_);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  std::vector<json> Results(const fs::path& file) {
    std::vector<json> out;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
    return out;
  }

  void Image(const std::string& name, cv::Scalar bgr, int w = 40, int h = 30) {
    fs::create_directories(dir_ / "images");
    ASSERT_TRUE(cv::imwrite((dir_ / "images" / name).string(), cv::Mat(h, w, CV_8UC3, bgr)));
  }

  fs::path dir_;
  ServeMetrics metrics_;
  std::unique_ptr<ModelRepository> repo_;
  std::unique_ptr<PipelineMetricFamilies> families_;
};

TEST_F(PipelineTest, FolderThroughClassification) {
  Image("1-red.png", {0, 0, 255});
  Image("2-green.jpg", {0, 255, 0});
  Image("3-blue.bmp", {255, 0, 0});
  std::ofstream(dir_ / "images" / "4-broken.jpg") << "no jpeg here";
  auto p = Make(R"(
name: colours
source: {type: folder, path: images}
model: color_classifier
postprocess: {type: classification, top_k: 2}
sinks: [{type: jsonl, path: out/results.jsonl}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  ASSERT_TRUE(p->Wait(std::chrono::seconds(60)));
  EXPECT_EQ(p->state(), Pipeline::State::kFinished) << p->error();
  std::vector<json> results = Results(dir_ / "out" / "results.jsonl");
  ASSERT_EQ(results.size(), 4u);
  std::vector<std::string> labels;
  json error;
  for (const json& r : results) {
    EXPECT_EQ(r["pipeline"], "colours");
    EXPECT_EQ(r["model"], "color_classifier");
    if (r.contains("error")) {
      error = r;
      continue;
    }
    EXPECT_EQ(r["model_version"], "1");
    EXPECT_EQ(r["classes"].size(), 2u);
    EXPECT_GT(r["classes"][0]["score"].get<double>(), 0.99);
    EXPECT_EQ(r["frame"]["width"], 40);
    for (const char* stage : {"decode", "queue", "preprocess", "inference_queue", "inference",
                              "postprocess", "total"}) {
      EXPECT_TRUE(r["latency_ms"].contains(stage)) << stage;
    }
    EXPECT_TRUE(r["frame"]["timestamp"].get<std::string>().ends_with("Z"));
    labels.push_back(r["classes"][0]["label"]);
  }
  EXPECT_EQ(labels, (std::vector<std::string>{"red", "green", "blue"}));
  ASSERT_FALSE(error.is_null());
  EXPECT_EQ(error["error"]["stage"], "decode");
  EXPECT_THAT(error["error"]["message"].get<std::string>(), HasSubstr("4-broken.jpg"));
  EXPECT_EQ(p->metrics().frames_received(), 4);
  EXPECT_EQ(p->metrics().results(), 3);
  // The frames went through the model's scheduler: its metrics count them.
  std::string exposition = metrics_.Serialize();
  EXPECT_THAT(exposition, HasSubstr("outpost_inference_requests_total{model=\"color_classifier\","
                                    "status=\"success\",version=\"1\"} 3"));
  EXPECT_THAT(
      exposition,
      HasSubstr("outpost_pipeline_score_count{kind=\"confidence\",pipeline=\"colours\"} 3"));
  EXPECT_THAT(exposition,
              HasSubstr("outpost_pipeline_errors_total{pipeline=\"colours\",stage=\"decode\"} 1"));
}

TEST_F(PipelineTest, VideoThroughDetectionMapsBoxesToTheFrame) {
  fs::path video = dir_ / "clip.avi";
  {
    cv::VideoWriter w(video.string(), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 25,
                      cv::Size(1280, 720));
    ASSERT_TRUE(w.isOpened());
    for (int i = 0; i < 6; ++i) {
      w.write(
          cv::Mat(720, 1280, CV_8UC3, i % 2 == 0 ? cv::Scalar(0, 0, 255) : cv::Scalar(255, 0, 0)));
    }
  }
  auto p = Make(R"(
name: boxes
source: {type: video, path: clip.avi}
model: box_detector
preprocess: {resize: letterbox}
postprocess: {type: detection, confidence_threshold: 0.5, iou_threshold: 0.45}
sinks: [{type: jsonl, path: boxes.jsonl}, {type: queue, path: queue.db}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  ASSERT_TRUE(p->Wait(std::chrono::seconds(60)));
  EXPECT_EQ(p->state(), Pipeline::State::kFinished) << p->error();
  std::vector<json> results = Results(dir_ / "boxes.jsonl");
  ASSERT_EQ(results.size(), 6u);
  for (size_t i = 0; i < results.size(); ++i) {
    const json& r = results[i];
    EXPECT_EQ(r["frame"]["index"], i);
    EXPECT_NEAR(r["frame"]["position_ms"].get<double>(), i * 40.0, 1.0);
    if (i % 2 == 1) {  // blue: nothing
      EXPECT_TRUE(r["detections"].empty()) << r.dump();
      continue;
    }
    // 64x64 input, 1280x720 frame: scale 0.05, 14 rows of border above.
    ASSERT_EQ(r["detections"].size(), 2u) << r.dump();
    EXPECT_EQ(r["detections"][0]["label"], "person");
    EXPECT_NEAR(r["detections"][0]["score"].get<double>(), 0.9, 0.03);
    EXPECT_EQ(r["detections"][0]["box"], json({240.0, 0.0, 560.0, 280.0}));
    EXPECT_EQ(r["detections"][1]["label"], "car");
    EXPECT_NEAR(r["detections"][1]["score"].get<double>(), 0.85, 0.03);
    EXPECT_EQ(r["detections"][1]["box"], json({260.0, 0.0, 580.0, 300.0}));
  }
  EXPECT_TRUE(fs::exists(dir_ / "queue.db"));
}

// box_detector's config.yaml says `preprocess: {resize: letterbox}`; these
// pipelines have no pre-processing of their own, or override one key.
TEST_F(PipelineTest, PreprocessingComesFromTheModelConfigAndFp16RunsBothWays) {
  Image("a-red.png", {0, 0, 255}, 1280, 720);
  Image("b-blue.png", {255, 0, 0}, 1280, 720);
  auto letterbox = Make(R"(
name: fp16
source: {type: folder, path: images}
model: box_detector_fp16
postprocess: {type: detection, confidence_threshold: 0.5}
sinks: [{type: jsonl, path: fp16.jsonl}]
)");
  auto stretch = Make(R"(
name: stretched
source: {type: folder, path: images}
model: box_detector
preprocess: {resize: stretch}
postprocess: {type: detection, confidence_threshold: 0.5}
sinks: [{type: jsonl, path: stretch.jsonl}]
)");
  auto classes = Make(R"(
name: cls16
source: {type: folder, path: images}
model: color_classifier_fp16
postprocess: {type: classification, top_k: 1}
sinks: [{type: jsonl, path: cls16.jsonl}]
)");
  ASSERT_TRUE(letterbox && stretch && classes);
  for (Pipeline* p : {letterbox.get(), stretch.get(), classes.get()}) p->Start();
  for (Pipeline* p : {letterbox.get(), stretch.get(), classes.get()}) {
    ASSERT_TRUE(p->Wait(std::chrono::seconds(60)));
    EXPECT_EQ(p->state(), Pipeline::State::kFinished) << p->error();
  }
  std::vector<json> r = Results(dir_ / "fp16.jsonl");
  ASSERT_EQ(r.size(), 2u);
  ASSERT_EQ(r[0]["detections"].size(), 2u) << r[0].dump();
  // Letterboxed (the model's key): scale 0.05, 14 rows of border above.
  EXPECT_EQ(r[0]["detections"][0]["label"], "person");
  EXPECT_NEAR(r[0]["detections"][0]["score"].get<double>(), 0.9, 0.03);
  EXPECT_EQ(r[0]["detections"][0]["box"], json({240.0, 0.0, 560.0, 280.0}));
  EXPECT_TRUE(r[1]["detections"].empty()) << r[1].dump();
  r = Results(dir_ / "stretch.jsonl");
  ASSERT_EQ(r.size(), 2u);
  ASSERT_EQ(r[0]["detections"].size(), 2u) << r[0].dump();
  // Stretched (the pipeline's key wins): x by 20, y by 11.25.
  EXPECT_EQ(r[0]["detections"][0]["box"], json({240.0, 135.0, 560.0, 315.0}));
  r = Results(dir_ / "cls16.jsonl");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["classes"][0]["label"], "red");
  EXPECT_EQ(r[1]["classes"][0]["label"], "blue");
  EXPECT_GT(r[0]["classes"][0]["score"].get<double>(), 0.99);
}

TEST_F(PipelineTest, AHotSwapIsPickedUpAtTheNextFrame) {
  Image("red.png", {0, 0, 255});
  auto p = Make(R"(
name: swap
source: {type: folder, path: images, loop: true, drop: oldest}
model: color_classifier
postprocess: {type: classification, top_k: 1}
sinks: [{type: jsonl, path: swap.jsonl}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  auto versions_seen = [&] {
    std::set<std::string> seen;
    for (const json& r : Results(dir_ / "swap.jsonl")) {
      if (r.contains("model_version")) seen.insert(r["model_version"].get<std::string>());
    }
    return seen;
  };
  auto wait_for = [&](const std::string& version) {
    for (int i = 0; i < 300 && !versions_seen().count(version); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return versions_seen().count(version) == 1;
  };
  ASSERT_TRUE(wait_for("1"));
  // Version 2 appears on disk and is loaded while frames flow: the next
  // frames go to it, none fails.
  fs::copy(dir_ / "models" / "color_classifier" / "1", dir_ / "models" / "color_classifier" / "2",
           fs::copy_options::recursive);
  ASSERT_TRUE(repo_->Load("color_classifier").ok());
  EXPECT_TRUE(wait_for("2"));
  p->Stop();
  EXPECT_EQ(p->error_results(), 0);
  for (const json& r : Results(dir_ / "swap.jsonl")) {
    EXPECT_EQ(r["classes"][0]["label"], "red") << r.dump();
  }
}

TEST_F(PipelineTest, AModelThatDoesNotFitStopsThePipelineWithAClearMessage) {
  Image("red.png", {0, 0, 255});
  auto p = Make(R"(
name: wrong
source: {type: folder, path: images, loop: true, drop: oldest}
model: color_classifier
postprocess: {type: detection}
sinks: [{type: jsonl, path: wrong.jsonl}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  ASSERT_TRUE(p->Wait(std::chrono::seconds(30)));
  EXPECT_EQ(p->state(), Pipeline::State::kFailed);
  EXPECT_THAT(p->error(), HasSubstr("model 'color_classifier' version 1 does not fit the pipeline: "
                                    "model output 'probs' is FP32 [-1,3]: detection (yolov5) "
                                    "needs an FP32 or FP16 output"));
  // The source stopped too: no frames are read for nothing.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  double frames = p->metrics().frames_received();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(p->metrics().frames_received(), frames);
  p->Stop();
  std::vector<json> results = Results(dir_ / "wrong.jsonl");
  ASSERT_GE(results.size(), 1u);
  EXPECT_EQ(results[0]["error"]["stage"], "model");
  EXPECT_THAT(results[0]["error"]["message"].get<std::string>(), HasSubstr("does not fit"));
}

TEST_F(PipelineTest, AMissingCameraIsRetriedWithBackoffAndReportedOnce) {
  auto p = Make(R"(
name: cam
source:
  type: camera
  path: /dev/video-outpost-missing
  reconnect: {initial_ms: 20, max_ms: 80}
model: color_classifier
postprocess: {type: classification}
sinks: [{type: jsonl, path: cam.jsonl}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(p->state(), Pipeline::State::kRunning);
  p->Stop();
  EXPECT_EQ(p->state(), Pipeline::State::kStopped);
  // 20 + 40 + 80 + 80 ... ms: about 8 attempts in 600 ms, not hundreds.
  EXPECT_GE(p->metrics().reconnects(), 4);
  EXPECT_LE(p->metrics().reconnects(), 12);
  std::vector<json> results = Results(dir_ / "cam.jsonl");
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0]["error"]["stage"], "source");
  EXPECT_THAT(results[0]["error"]["message"].get<std::string>(),
              HasSubstr("camera /dev/video-outpost-missing is not present (unplugged?); retrying "
                        "with backoff"));
}

TEST_F(PipelineTest, ALiveSourceFasterThanTheConsumerDropsTheOldestFrames) {
  Image("red.png", {0, 0, 255});
  // A webhook nobody answers holds each result ~60 ms (retries), far slower
  // than reading one small image again and again.
  auto p = Make(R"(
name: fast
source: {type: folder, path: images, loop: true, queue_size: 1, drop: oldest}
model: color_classifier
postprocess: {type: classification}
max_in_flight: 1
sinks: [{type: webhook, url: "http://127.0.0.1:1/none", retries: 2, backoff_ms: 20, timeout_ms: 200}]
)");
  ASSERT_NE(p, nullptr);
  p->Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  p->Stop();
  EXPECT_GT(p->metrics().dropped_total(), 10);
  EXPECT_GT(p->metrics().frames_received(), p->metrics().results() + 10);
  EXPECT_THAT(metrics_.Serialize(),
              HasSubstr("outpost_pipeline_sink_failures_total{pipeline=\"fast\",sink=\"webhook:"
                        "http://127.0.0.1:1/none\"}"));
}

}  // namespace
}  // namespace outpost::serve::pipeline
