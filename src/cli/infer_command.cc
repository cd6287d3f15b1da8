#include "cli/infer_command.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "cli/commands.h"
#include "serve/metrics.h"
#include "serve/model_repository.h"
#include "serve/pipeline/pipeline.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
using serve::pipeline::PipelineConfig;

bool AllDigits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit);
}

// Splits "a,b,c" into exactly three numbers.
bool Triple(const std::string& text, std::array<double, 3>* out) {
  std::stringstream in(text);
  std::string item;
  int i = 0;
  while (std::getline(in, item, ',')) {
    if (i == 3) return false;
    try {
      size_t used = 0;
      (*out)[i++] = std::stod(item, &used);
      if (used != item.size()) return false;
    } catch (const std::exception&) {
      return false;
    }
  }
  return i == 3;
}

}  // namespace

struct InferCommand::Args {
  std::string model;
  int64_t version = 0;
  std::string image, images, video, pipeline, output;
  std::string task;
  int top_k = 5;
  std::string labels;
  std::optional<double> threshold;
  std::optional<double> iou;
  std::string format = "yolov5";
  std::string resize;
  std::string size;
  std::string color;
  std::optional<double> scale;
  std::string mean, std;
  fs::path temp_repo;  // removed by the destructor
};

InferCommand::InferCommand(CLI::App& app) : args_(std::make_unique<Args>()) {
  Args& a = *args_;
  command_ = app.add_subcommand(
      "infer", "run a model once on an image, a folder of images or a video (JSON per frame)");
  command_
      ->add_option("--model", a.model,
                   "model folder (<repo>/<model>, with version folders) or a model.onnx")
      ->required();
  command_->add_option("--version", a.version, "model version (default: the newest)");
  auto* image = command_->add_option("--image", a.image, "an image file");
  auto* images = command_->add_option("--images", a.images, "a folder of images (name order)");
  auto* video = command_->add_option("--video", a.video, "a video file");
  image->excludes(images)->excludes(video);
  images->excludes(video);
  command_->add_option("--pipeline", a.pipeline,
                       "take pre- and post-processing from this pipeline file (its source and "
                       "sinks are not used)");
  command_->add_option("--output", a.output, "append JSON lines here instead of stdout");
  command_
      ->add_option("--task", a.task,
                   "post-processing (default: classification when the "
                   "model has labels, else raw)")
      ->check(CLI::IsMember({"classification", "detection", "anomaly", "raw"}));
  command_->add_option("--top-k", a.top_k, "classification: classes to print")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  command_->add_option("--labels", a.labels, "labels file (default: the model's)");
  command_->add_option("--threshold", a.threshold,
                       "detection: confidence threshold (0.25); anomaly: score threshold (0.5)");
  command_->add_option("--iou", a.iou, "detection: NMS IoU threshold (0.45)");
  command_->add_option("--format", a.format, "detection output layout")
      ->check(CLI::IsMember({"yolov5", "yolov8"}))
      ->capture_default_str();
  command_->add_option("--resize", a.resize, "stretch (default) or letterbox")
      ->check(CLI::IsMember({"stretch", "letterbox"}));
  command_->add_option("--size", a.size, "input WIDTHxHEIGHT (default: the model's)");
  command_->add_option("--color", a.color, "rgb (default) or bgr")
      ->check(CLI::IsMember({"rgb", "bgr"}));
  command_->add_option("--scale", a.scale, "pixel scale before mean/std (default 1/255)");
  command_->add_option("--mean", a.mean, "per-channel mean, e.g. 0.485,0.456,0.406");
  command_->add_option("--std", a.std, "per-channel std, e.g. 0.229,0.224,0.225");
}

InferCommand::~InferCommand() {
  if (!args_->temp_repo.empty()) {
    std::error_code ec;
    fs::remove_all(args_->temp_repo, ec);
  }
}

std::optional<int> InferCommand::Run(std::ostream& out, std::ostream& err) {
  if (!command_->parsed()) return std::nullopt;
  Args& a = *args_;
  auto usage = [&](std::string_view message) {
    err << "outpost infer: error: " << message << "\n";
    return kExitUsage;
  };
  if (a.image.empty() && a.images.empty() && a.video.empty()) {
    return usage("give one of --image, --images or --video");
  }
  // Diagnostics go to stderr: stdout carries the results.
  static auto logger = spdlog::stderr_color_mt("outpost-infer");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("outpost infer: %l: %v");
  spdlog::set_level(spdlog::level::warn);

  // The model as a repository of one: a model folder is served where it is;
  // a lone model.onnx gets a temporary repository (symlinks) with its
  // folder's config.yaml and labels when it sits in <repo>/<model>/<version>/.
  std::error_code ec;
  fs::path model_path = fs::absolute(a.model, ec);
  fs::path root;
  std::string name;
  if (fs::is_directory(model_path, ec)) {
    root = model_path.parent_path();
    name = model_path.filename().string();
  } else if (fs::is_regular_file(model_path, ec)) {
    fs::path version_dir = model_path.parent_path();
    bool in_repo = AllDigits(version_dir.filename().string());
    name = in_repo ? version_dir.parent_path().filename().string() : model_path.stem().string();
    char tmpl[] = "/tmp/outpost-infer-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      err << "outpost infer: error: cannot create a temporary folder\n";
      return kExitIo;
    }
    a.temp_repo = tmpl;
    root = a.temp_repo;
    fs::create_directories(root / name / "1", ec);
    fs::create_symlink(model_path, root / name / "1" / "model.onnx", ec);
    if (in_repo) {
      for (const fs::directory_entry& e : fs::directory_iterator(version_dir.parent_path(), ec)) {
        if (e.is_regular_file())
          fs::create_symlink(e.path(), root / name / e.path().filename(), ec);
      }
    }
    a.version = 0;
  } else {
    err << "outpost infer: error: --model " << a.model << ": no such file or folder\n";
    return kExitIo;
  }

  PipelineConfig config;
  if (!a.pipeline.empty()) {
    absl::StatusOr<PipelineConfig> loaded = serve::pipeline::LoadPipelineConfig(a.pipeline);
    if (!loaded.ok()) {
      return absl::IsInvalidArgument(loaded.status())
                 ? usage(MessageOf(loaded.status()))
                 : (err << "outpost infer: error: " << MessageOf(loaded.status()) << "\n", kExitIo);
    }
    config = std::move(*loaded);
  }
  config.name = "infer";
  config.model = name;
  config.model_version = a.version;
  config.source = {};
  if (!a.image.empty()) {
    config.source.type = serve::pipeline::SourceType::kImage;
    config.source.path = a.image;
  } else if (!a.images.empty()) {
    config.source.type = serve::pipeline::SourceType::kFolder;
    config.source.path = a.images;
  } else {
    config.source.type = serve::pipeline::SourceType::kVideo;
    config.source.path = a.video;
  }
  // Flags override the pipeline file's keys, which override the model
  // config's (merged when the pipeline binds the model).
  serve::PreprocessSpec& pre = config.preprocess;
  serve::pipeline::PostprocessConfig& post = config.postprocess;
  if (!a.resize.empty()) {
    pre.resize = a.resize == "letterbox" ? serve::pipeline::ResizeMode::kLetterbox
                                         : serve::pipeline::ResizeMode::kStretch;
  }
  if (!a.size.empty()) {
    int w = 0, h = 0;
    char x = 0;
    std::stringstream in(a.size);
    if (!(in >> w >> x >> h) || x != 'x' || w < 1 || h < 1 || !in.eof()) {
      return usage(StrCat("--size must be WIDTHxHEIGHT, got '", a.size, "'"));
    }
    pre.width = w;
    pre.height = h;
  }
  if (!a.color.empty()) pre.rgb = a.color == "rgb";
  if (a.scale) pre.scale = *a.scale;
  if (!a.mean.empty()) {
    std::array<double, 3> mean{};
    if (!Triple(a.mean, &mean)) {
      return usage(StrCat("--mean must be three numbers a,b,c, got '", a.mean, "'"));
    }
    pre.mean = mean;
  }
  if (!a.std.empty()) {
    std::array<double, 3> std{};
    if (!Triple(a.std, &std) || *std::min_element(std.begin(), std.end()) <= 0) {
      return usage(StrCat("--std must be three positive numbers a,b,c, got '", a.std, "'"));
    }
    pre.std = std;
  }

  serve::ServeMetrics metrics;
  serve::RepositoryOptions options;
  options.root = root;
  options.mode = serve::ControlMode::kExplicit;
  options.startup_models = {name};
  options.metrics = &metrics;
  absl::StatusOr<std::unique_ptr<serve::ModelRepository>> repo =
      serve::ModelRepository::Create(options);
  if (!repo.ok()) {
    err << "outpost infer: error: " << MessageOf(repo.status()) << "\n";
    return kExitIo;
  }
  (*repo)->LoadStartupModels();
  absl::StatusOr<std::shared_ptr<serve::ModelVersion>> version = (*repo)->Get(name, a.version);
  if (!version.ok()) {
    std::string reason(MessageOf(version.status()));
    for (const serve::ModelStatus& s : (*repo)->Index()) {
      if (s.name == name && !s.reason.empty()) reason = s.reason;
    }
    err << "outpost infer: error: cannot load model '" << name << "': " << reason << "\n";
    return kExitIo;
  }
  if (a.pipeline.empty() || !a.task.empty()) {
    std::string task = a.task;
    if (task.empty())
      task =
          (*version)->config().labels_file.empty() && a.labels.empty() ? "raw" : "classification";
    post.type = task == "classification" ? serve::pipeline::PostprocessType::kClassification
                : task == "detection"    ? serve::pipeline::PostprocessType::kDetection
                : task == "anomaly"      ? serve::pipeline::PostprocessType::kAnomaly
                                         : serve::pipeline::PostprocessType::kRaw;
  }
  post.top_k = a.top_k;
  if (!a.labels.empty()) post.labels = a.labels;
  if (a.threshold) {
    if (post.type == serve::pipeline::PostprocessType::kAnomaly) {
      post.threshold = *a.threshold;
    } else {
      post.confidence_threshold = *a.threshold;
    }
  }
  if (a.iou) post.iou_threshold = *a.iou;
  post.format = a.format == "yolov8" ? serve::pipeline::DetectionFormat::kYoloV8
                                     : serve::pipeline::DetectionFormat::kYoloV5;
  version->reset();

  serve::pipeline::SinkConfig sink;
  if (a.output.empty()) {
    sink.type = serve::pipeline::SinkType::kStdout;
  } else {
    sink.type = serve::pipeline::SinkType::kJsonl;
    sink.path = a.output;
    sink.max_bytes = int64_t{1} << 40;  // one run, one file
  }
  config.sinks = {sink};
  config.source.drop_oldest = false;  // a file: every frame

  serve::pipeline::PipelineMetricFamilies families(metrics.registry());
  absl::StatusOr<std::unique_ptr<serve::pipeline::Pipeline>> pipeline =
      serve::pipeline::Pipeline::Create(config, **repo, families);
  if (!pipeline.ok()) {
    err << "outpost infer: error: " << MessageOf(pipeline.status()) << "\n";
    return kExitIo;
  }
  out.flush();
  (*pipeline)->Start();
  while (!(*pipeline)->Wait(std::chrono::seconds(3600))) {
  }
  (*pipeline)->Stop();
  std::fflush(stdout);
  if ((*pipeline)->state() == serve::pipeline::Pipeline::State::kFailed) {
    // The pipeline has logged why ("outpost infer: error: pipeline 'infer'
    // stopped: ...") on stderr.
    std::string error = (*pipeline)->error();
    // A model that does not fit the requested processing is a usage error;
    // an input that cannot be read is an I/O one.
    return error.find("does not fit") != std::string::npos ? kExitUsage : kExitIo;
  }
  int64_t errors = (*pipeline)->error_results();
  if (errors > 0) {
    err << "outpost infer: " << errors << " frame(s) failed (see their error results)\n";
    return kExitRefused;
  }
  return kExitOk;
}

}  // namespace outpost::cli
