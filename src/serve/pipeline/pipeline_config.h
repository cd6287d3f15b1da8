// A pipeline's declaration: `pipeline.yaml` (docs/pipelines.md lists every
// key). A source of frames, the pre-processing that turns a frame into the
// model's input tensor, the model, the post-processing that turns its
// outputs into results, and the sinks the results go to.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "serve/preprocess_spec.h"
#include "serve/tensor.h"

namespace outpost::serve::pipeline {

enum class SourceType { kImage, kFolder, kVideo, kCamera, kUrl };
std::string_view SourceTypeName(SourceType type);

struct SourceConfig {
  SourceType type = SourceType::kImage;
  std::string path;   // image, folder, video: a file or folder; camera: /dev/videoN
  std::string url;    // url: rtsp://, http://, https://
  bool loop = false;  // files: start again at the end instead of finishing
  // At most this many frames per second are read (0: as fast as they come).
  double max_fps = 0;
  // Frames held between the source and pre-processing. When full, a live
  // source (camera, url) drops the oldest frame; a file source waits.
  int queue_size = 2;
  bool drop_oldest = false;  // default: true for camera/url, false for files
  std::chrono::milliseconds reconnect_initial{500};
  std::chrono::milliseconds reconnect_max{30000};
  // Stream/camera open and read timeouts (a stalled stream is a lost one).
  std::chrono::milliseconds read_timeout{10000};
};

using serve::Layout;
using serve::PreprocessSpec;
using serve::ResizeMode;

// Pre-processing with every key resolved: the model config's `preprocess`
// section, overridden key by key by the pipeline's (ResolvePreprocess).
// Empty optionals take the model input's value (size and layout from its
// shape, dtype from its datatype).
struct PreprocessConfig {
  std::string input;  // model input name; empty = the first
  ResizeMode resize = ResizeMode::kStretch;
  std::optional<int> width, height;
  bool rgb = true;  // colour order fed to the model (frames decode as BGR)
  double scale = 1.0 / 255.0;
  std::array<double, 3> mean = {0, 0, 0};  // in the model's colour order, after scale
  std::array<double, 3> std = {1, 1, 1};
  std::optional<Layout> layout;
  std::optional<DataType> dtype;  // FP32, FP16 or UINT8
  int pad_value = 114;            // letterbox border, per channel
  bool normalizes = false;        // scale, mean or std was written (not for UINT8 input)
};

// `model` is the model config's section, `pipeline` the pipeline's: each key
// the pipeline sets wins, then the model's, then the defaults above.
PreprocessConfig ResolvePreprocess(const PreprocessSpec& model, const PreprocessSpec& pipeline);

enum class PostprocessType { kClassification, kDetection, kAnomaly, kRaw };
std::string_view PostprocessTypeName(PostprocessType type);
enum class DetectionFormat { kYoloV5, kYoloV8 };
enum class Softmax { kAuto, kYes, kNo };

struct PostprocessConfig {
  PostprocessType type = PostprocessType::kRaw;
  std::string output;  // model output name; empty = the first
  // classification
  int top_k = 5;
  std::string labels;  // file, relative to the pipeline file; empty = the model's labels
  Softmax softmax = Softmax::kAuto;
  // detection
  DetectionFormat format = DetectionFormat::kYoloV5;
  double confidence_threshold = 0.25;
  double iou_threshold = 0.45;
  int max_detections = 100;
  bool normalized_boxes = false;  // box coordinates in 0..1 of the input size
  // anomaly
  double threshold = 0.5;
};

enum class SinkType { kJsonl, kStdout, kWebhook, kQueue };
std::string_view SinkTypeName(SinkType type);

struct SinkConfig {
  SinkType type = SinkType::kStdout;
  std::string path;              // jsonl: the file; queue: the SQLite database
  int64_t max_bytes = 10 << 20;  // jsonl: rotate when the file would pass this
  int max_files = 5;             // jsonl: rotated files kept (path.1 .. path.N)
  std::string url;               // webhook
  int retries = 3;               // webhook: attempts after the first
  std::chrono::milliseconds timeout{5000};
  std::chrono::milliseconds backoff{200};  // webhook: first retry delay, doubled each time
  int64_t max_rows = 100000;               // queue: oldest rows dropped (and counted) past this
  // queue: the results go to the queue outpost-agent ships to its hub
  // (path = $OUTPOST_UPLOAD_QUEUE, docs/agent.md "Pipeline results").
  bool upload = false;
};

struct PipelineConfig {
  std::string name;
  SourceConfig source;
  std::string model;
  int64_t model_version = 0;  // 0 = the newest loaded
  PreprocessSpec preprocess;  // as written; merged with the model's at bind time
  PostprocessConfig postprocess;
  std::vector<SinkConfig> sinks;
  // Frames submitted to the model and not yet post-processed. 2 lets the
  // next frame be pre-processed while one is inferred.
  int max_in_flight = 2;
};

// Parses YAML text. Relative paths are resolved against `base_dir` (the
// pipeline file's folder). Errors are InvalidArgument naming `source`, the
// key and the reason ("p.yaml: key 'source.type': must be one of image,
// folder, video, camera, url; got 'cam'"); unknown and repeated keys are
// errors.
absl::StatusOr<PipelineConfig> ParsePipelineConfig(std::string_view yaml_text,
                                                   std::string_view source,
                                                   const std::filesystem::path& base_dir);

// Reads and parses a pipeline file. NotFound / FailedPrecondition when it
// cannot be read, else as ParsePipelineConfig.
absl::StatusOr<PipelineConfig> LoadPipelineConfig(const std::filesystem::path& path);

}  // namespace outpost::serve::pipeline
