#include "serve/pipeline/pipeline_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace outpost::serve::pipeline {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<PipelineConfig> Parse(std::string_view yaml) {
  return ParsePipelineConfig(yaml, "p.yaml", "/etc/outpost");
}

std::string ErrorOf(std::string_view yaml) {
  absl::StatusOr<PipelineConfig> c = Parse(yaml);
  EXPECT_FALSE(c.ok()) << yaml;
  return c.ok() ? "" : std::string(MessageOf(c.status()));
}

constexpr std::string_view kMinimal = R"(
name: door
source: {type: video, path: clips/door.avi}
model: classifier
postprocess: {type: classification}
sinks: [{type: stdout}]
)";

TEST(PipelineConfigTest, MinimalTakesDefaults) {
  absl::StatusOr<PipelineConfig> c = Parse(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "door");
  EXPECT_EQ(c->source.type, SourceType::kVideo);
  EXPECT_EQ(c->source.path, "/etc/outpost/clips/door.avi");  // relative to the file
  EXPECT_FALSE(c->source.drop_oldest);                       // a file waits, loses nothing
  EXPECT_EQ(c->source.queue_size, 2);
  EXPECT_EQ(c->model, "classifier");
  EXPECT_EQ(c->model_version, 0);
  EXPECT_TRUE(c->preprocess.empty());  // no section: the model's config decides
  EXPECT_EQ(c->postprocess.type, PostprocessType::kClassification);
  EXPECT_EQ(c->postprocess.top_k, 5);
  ASSERT_EQ(c->sinks.size(), 1u);
  EXPECT_EQ(c->sinks[0].type, SinkType::kStdout);
  EXPECT_EQ(c->max_in_flight, 2);
}

TEST(PipelineConfigTest, EveryKey) {
  absl::StatusOr<PipelineConfig> c = Parse(R"(
name: gate-cam_1
source:
  type: camera
  path: /dev/video2
  queue_size: 4
  drop: never
  reconnect: {initial_ms: 100, max_ms: 2000}
  read_timeout_ms: 3000
model: {name: yolo, version: 3}
preprocess:
  input: images
  resize: letterbox
  size: [640, 480]
  color: bgr
  scale: 1
  mean: [1, 2, 3]
  std: [4, 5, 6]
  layout: nhwc
  dtype: fp32
  pad_value: 0
postprocess:
  type: detection
  output: output0
  labels: coco.txt
  format: yolov8
  confidence_threshold: 0.4
  iou_threshold: 0.5
  max_detections: 10
  boxes: normalized
sinks:
  - {type: jsonl, path: /var/log/gate.jsonl, max_bytes: 2048, max_files: 3}
  - {type: webhook, url: "http://127.0.0.1:9/hook", retries: 2, timeout_ms: 100, backoff_ms: 5}
  - {type: queue, path: q.db, max_rows: 10}
max_in_flight: 3
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->source.type, SourceType::kCamera);
  EXPECT_EQ(c->source.path, "/dev/video2");
  EXPECT_EQ(c->source.queue_size, 4);
  EXPECT_FALSE(c->source.drop_oldest);
  EXPECT_EQ(c->source.reconnect_initial.count(), 100);
  EXPECT_EQ(c->source.reconnect_max.count(), 2000);
  EXPECT_EQ(c->source.read_timeout.count(), 3000);
  EXPECT_EQ(c->model, "yolo");
  EXPECT_EQ(c->model_version, 3);
  EXPECT_EQ(c->preprocess.input, "images");
  EXPECT_EQ(c->preprocess.resize, ResizeMode::kLetterbox);
  EXPECT_EQ(*c->preprocess.width, 640);
  EXPECT_EQ(*c->preprocess.height, 480);
  EXPECT_EQ(c->preprocess.rgb, false);
  EXPECT_EQ(c->preprocess.scale, 1);
  EXPECT_EQ((*c->preprocess.mean)[2], 3);
  EXPECT_EQ((*c->preprocess.std)[0], 4);
  EXPECT_EQ(*c->preprocess.layout, Layout::kNhwc);
  EXPECT_EQ(*c->preprocess.dtype, DataType::kFp32);
  EXPECT_EQ(c->preprocess.pad_value, 0);
  EXPECT_EQ(c->postprocess.type, PostprocessType::kDetection);
  EXPECT_EQ(c->postprocess.labels, "/etc/outpost/coco.txt");
  EXPECT_EQ(c->postprocess.format, DetectionFormat::kYoloV8);
  EXPECT_DOUBLE_EQ(c->postprocess.confidence_threshold, 0.4);
  EXPECT_DOUBLE_EQ(c->postprocess.iou_threshold, 0.5);
  EXPECT_EQ(c->postprocess.max_detections, 10);
  EXPECT_TRUE(c->postprocess.normalized_boxes);
  ASSERT_EQ(c->sinks.size(), 3u);
  EXPECT_EQ(c->sinks[0].max_bytes, 2048);
  EXPECT_EQ(c->sinks[0].max_files, 3);
  EXPECT_EQ(c->sinks[1].url, "http://127.0.0.1:9/hook");
  EXPECT_EQ(c->sinks[1].retries, 2);
  EXPECT_EQ(c->sinks[1].timeout.count(), 100);
  EXPECT_EQ(c->sinks[1].backoff.count(), 5);
  EXPECT_EQ(c->sinks[2].path, "/etc/outpost/q.db");
  EXPECT_EQ(c->sinks[2].max_rows, 10);
  EXPECT_EQ(c->max_in_flight, 3);
}

TEST(PipelineConfigTest, LiveSourcesDropTheOldestByDefault) {
  absl::StatusOr<PipelineConfig> c = Parse(R"(
name: s
source: {type: url, url: "rtsp://10.0.0.5/stream"}
model: m
postprocess: {type: anomaly, threshold: 0.7}
sinks: [{type: stdout}]
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->source.drop_oldest);
  EXPECT_EQ(c->source.url, "rtsp://10.0.0.5/stream");
  EXPECT_DOUBLE_EQ(c->postprocess.threshold, 0.7);
}

TEST(PipelineConfigTest, ErrorsNameTheFileTheKeyAndTheReason) {
  EXPECT_THAT(ErrorOf("name: [\n"), HasSubstr("p.yaml: line"));
  EXPECT_EQ(ErrorOf("- a\n"),
            "p.yaml: the top level must be a map (name, source, model, postprocess, sinks)");
  std::string base(kMinimal);
  auto with = [&](std::string_view from, std::string_view to) {
    std::string s = base;
    s.replace(s.find(from), from.size(), to);
    return ErrorOf(s);
  };
  EXPECT_EQ(with("type: video", "type: cam"),
            "p.yaml: key 'source.type': must be one of image, folder, video, camera, url; got "
            "'cam'");
  EXPECT_EQ(with("name: door", "name: a/b"),
            "p.yaml: key 'name': may hold letters, digits, '-', '_' and '.' only, got 'a/b'");
  EXPECT_THAT(with("name: door", "name: door\nextra: 1"),
              HasSubstr("p.yaml: key 'extra': unknown key (known: name, source"));
  EXPECT_EQ(with("{type: classification}", "{type: classification, top_k: 0}"),
            "p.yaml: key 'postprocess.top_k': must be in 1..1000, got 0");
  EXPECT_EQ(with("{type: classification}", "{type: classification, threshold: 0.5}"),
            "p.yaml: key 'postprocess.threshold': not used by classification post-processing");
  EXPECT_EQ(with("[{type: stdout}]", "[]"),
            "p.yaml: key 'sinks': must be a non-empty list, got a list");
  EXPECT_EQ(with("[{type: stdout}]", "[{type: jsonl}]"), "p.yaml: key 'sinks[0].path': required");
  EXPECT_EQ(with("[{type: stdout}]", "[{type: webhook, url: ftp://x}]"),
            "p.yaml: key 'sinks[0].url': must start with http:// or https://, got 'ftp://x'");
  EXPECT_EQ(with("path: clips/door.avi", "url: http://x"),
            "p.yaml: key 'source.path': required for a video source");
  EXPECT_EQ(with("model: classifier\n", ""), "p.yaml: key 'model': required");
  EXPECT_EQ(with("postprocess: {type: classification}\n", ""),
            "p.yaml: key 'postprocess': required");
  EXPECT_THAT(
      with("model: classifier", "model: classifier\npreprocess: {dtype: uint8, mean: [1,1,1]}"),
      HasSubstr("uint8 input takes the pixels as they are"));
  EXPECT_EQ(with("model: classifier", "model: classifier\npreprocess: {size: [0, 10]}"),
            "p.yaml: key 'preprocess.size[0]': must be in 1..16384, got 0");
  EXPECT_EQ(with("path: clips/door.avi", "path: a, reconnect: {initial_ms: 50, max_ms: 10}"),
            "p.yaml: key 'source.reconnect.max_ms': must be >= initial_ms");
  EXPECT_EQ(with("path: clips/door.avi", "path: a, loop: true, loop: false"),
            "p.yaml: key 'source.loop': repeated");
}

TEST(PipelineConfigTest, ParsesFp16Dtype) {
  absl::StatusOr<PipelineConfig> c = Parse(StrCat(kMinimal, "preprocess: {dtype: fp16}\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->preprocess.dtype, DataType::kFp16);
}

TEST(PipelineConfigTest, PipelineKeysOverrideTheModelsOneByOne) {
  PreprocessSpec model;
  model.resize = ResizeMode::kLetterbox;
  model.mean = std::array<double, 3>{0.5, 0.5, 0.5};
  model.std = std::array<double, 3>{0.25, 0.25, 0.25};
  model.width = 320;
  model.height = 240;
  model.pad_value = 0;
  PreprocessSpec pipeline;
  pipeline.std = std::array<double, 3>{2, 2, 2};
  pipeline.width = 64;  // size is one key: the pipeline's width without a height
  pipeline.rgb = false;
  PreprocessConfig c = ResolvePreprocess(model, pipeline);
  EXPECT_EQ(c.resize, ResizeMode::kLetterbox);                // model
  EXPECT_EQ(c.mean, (std::array<double, 3>{0.5, 0.5, 0.5}));  // model
  EXPECT_EQ(c.std, (std::array<double, 3>{2, 2, 2}));         // pipeline
  EXPECT_EQ(c.width, 64);
  EXPECT_FALSE(c.height.has_value());
  EXPECT_FALSE(c.rgb);                   // pipeline
  EXPECT_EQ(c.pad_value, 0);             // model
  EXPECT_DOUBLE_EQ(c.scale, 1 / 255.0);  // neither: the default
  EXPECT_TRUE(c.normalizes);

  PreprocessConfig defaults = ResolvePreprocess({}, {});
  EXPECT_EQ(defaults.resize, ResizeMode::kStretch);
  EXPECT_TRUE(defaults.rgb);
  EXPECT_EQ(defaults.pad_value, 114);
  EXPECT_FALSE(defaults.normalizes);
  EXPECT_FALSE(defaults.dtype.has_value());
}

TEST(PipelineConfigTest, LoadNamesAMissingFile) {
  absl::StatusOr<PipelineConfig> c = LoadPipelineConfig("/nonexistent/p.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(absl::IsNotFound(c.status())) << c.status();
  EXPECT_THAT(MessageOf(c.status()), HasSubstr("/nonexistent/p.yaml"));
}

TEST(PipelineConfigTest, MaxFpsPacesTheSource) {
  absl::StatusOr<PipelineConfig> c = Parse(R"(
name: demo
source: {type: folder, path: frames, loop: true, max_fps: 12.5}
model: m
postprocess: {type: classification}
sinks: [{type: stdout}]
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->source.max_fps, 12.5);
  EXPECT_DOUBLE_EQ(Parse(kMinimal)->source.max_fps, 0);  // unpaced by default
  EXPECT_THAT(ErrorOf(R"(
name: demo
source: {type: folder, path: frames, max_fps: -1}
model: m
postprocess: {type: classification}
sinks: [{type: stdout}]
)"),
              HasSubstr("source.max_fps"));
}

// Scoped OUTPOST_UPLOAD_QUEUE (unset when `value` is null).
class UploadQueueEnv {
 public:
  explicit UploadQueueEnv(const char* value) {
    if (value)
      setenv("OUTPOST_UPLOAD_QUEUE", value, 1);
    else
      unsetenv("OUTPOST_UPLOAD_QUEUE");
  }
  ~UploadQueueEnv() { unsetenv("OUTPOST_UPLOAD_QUEUE"); }
};

constexpr std::string_view kUpload = R"(
name: door
source: {type: video, path: door.avi}
model: m
postprocess: {type: classification}
sinks: [{type: queue, upload: true, max_rows: 50}, {type: queue, path: local.db}]
)";

TEST(PipelineConfigTest, UploadQueueIsTheOneTheAgentNames) {
  UploadQueueEnv env("/var/lib/outpost/agent/results.db");
  absl::StatusOr<PipelineConfig> c = Parse(kUpload);
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->sinks.size(), 2u);
  EXPECT_TRUE(c->sinks[0].upload);
  EXPECT_EQ(c->sinks[0].path, "/var/lib/outpost/agent/results.db");
  EXPECT_EQ(c->sinks[0].max_rows, 50);
  EXPECT_FALSE(c->sinks[1].upload);  // a queue of its own: not shipped
  EXPECT_EQ(c->sinks[1].path, "/etc/outpost/local.db");
}

TEST(PipelineConfigTest, UploadNeedsAnAgentAndNoPath) {
  {
    UploadQueueEnv env(nullptr);
    EXPECT_THAT(ErrorOf(kUpload), HasSubstr("OUTPOST_UPLOAD_QUEUE is not set"));
  }
  UploadQueueEnv env("/tmp/results.db");
  EXPECT_THAT(ErrorOf(R"(
name: door
source: {type: video, path: door.avi}
model: m
postprocess: {type: classification}
sinks: [{type: queue, upload: true, path: x.db}]
)"),
              HasSubstr("sinks[0].path"));
  EXPECT_THAT(ErrorOf(R"(
name: door
source: {type: video, path: door.avi}
model: m
postprocess: {type: classification}
sinks: [{type: jsonl, path: x.jsonl, upload: true}]
)"),
              HasSubstr("upload"));
}

}  // namespace
}  // namespace outpost::serve::pipeline
