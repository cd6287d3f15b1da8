// pipeline_bench: a pipeline's frames per second on a 1280x720 video against
// the model alone on pre-made tensors, in the same process and run.
//
//   pipeline_bench --models DIR --model mobilenet_v2 [--seconds 10] [--rounds 3]
//                  [--in-flight 2] [--intra-op-threads N] [--video PATH]
//
// 1. model only: tensors of the model's input shape made once, submitted to
//    the model's scheduler (the same one the pipeline uses) keeping
//    --in-flight requests outstanding, for --seconds;
// 2. pipeline: the video (generated with OpenCV if missing: moving shapes
//    on a gradient, MJPG) decoded on the source thread, pre-processed on
//    the pre thread (stretch to the input, ImageNet mean/std), inferred,
//    classified top-5, written to a JSON-lines sink on /dev/null; looped for
//    --seconds after one second of warm-up.
// Phases 1 and 2 alternate --rounds times; prints one JSON line with the
// medians: model_fps, pipeline_fps, ratio, each round's pair, the pipeline's
// per-stage mean latencies and the frames dropped (must be 0: a file source
// waits). --intra-op-threads N writes the model's config.yaml (0 = ONNX
// Runtime's default, a thread per core: inference then competes with
// decoding for every core).
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <random>
#include <thread>

#include "serve/pipeline/pipeline.h"

namespace {

namespace fs = std::filesystem;
using namespace outpost;
using namespace outpost::serve;
using Clock = std::chrono::steady_clock;

struct Args {
  std::string models, model = "mobilenet_v2", video;
  double seconds = 10;
  int in_flight = 2;
  int frames = 250;
  int intra_op_threads = 0;  // 0 = ONNX Runtime's default (one per core)
  int rounds = 3;
};

bool MakeVideo(const std::string& path, int frames) {
  cv::VideoWriter w(path, cv::VideoWriter::fourcc('M', 'J', 'P', 'G'), 25, cv::Size(1280, 720));
  if (!w.isOpened()) return false;
  cv::Mat m(720, 1280, CV_8UC3);
  cv::RNG rng(7);
  for (int i = 0; i < frames; ++i) {
    for (int y = 0; y < 720; ++y) {
      uint8_t* row = m.ptr<uint8_t>(y);
      for (int x = 0; x < 1280; ++x) {
        row[x * 3] = static_cast<uint8_t>((x + i * 4) / 6);
        row[x * 3 + 1] = static_cast<uint8_t>(y / 3);
        row[x * 3 + 2] = static_cast<uint8_t>((x + y) / 8);
      }
    }
    for (int k = 0; k < 6; ++k) {
      cv::Point c(rng.uniform(0, 1280), rng.uniform(0, 720));
      cv::circle(m, c, rng.uniform(20, 120),
                 cv::Scalar(rng.uniform(0, 255), rng.uniform(0, 255), rng.uniform(0, 255)), -1);
    }
    w.write(m);
  }
  return true;
}

double ModelOnly(ModelRepository& repo, const Args& args) {
  auto version = repo.Get(args.model, 0);
  if (!version.ok()) return -1;
  ModelVersion& mv = **version;
  const TensorSpec& spec = mv.engine().inputs()[0];
  std::vector<int64_t> shape = spec.shape;
  if (shape[0] == -1) shape[0] = 1;
  std::vector<float> data(static_cast<size_t>(ElementCount(shape)));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-2, 2);
  for (float& v : data) v = dist(rng);
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  int64_t done = 0;
  auto submit_until = [&](Clock::time_point end, bool count) {
    int64_t start_done = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      start_done = done;
    }
    while (Clock::now() < end) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return outstanding < args.in_flight; });
        ++outstanding;
      }
      InferRequest request;
      request.inputs.push_back(
          {spec.name, DataType::kFp32, shape, std::as_bytes(std::span<const float>(data))});
      absl::Status s =
          mv.scheduler().Submit(std::move(request), [&](absl::StatusOr<InferResponse> r) {
            std::lock_guard<std::mutex> lock(mu);
            --outstanding;
            if (r.ok()) ++done;
            cv.notify_all();
          });
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        --outstanding;
      }
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return outstanding == 0; });
    return count ? done - start_done : 0;
  };
  submit_until(Clock::now() + std::chrono::seconds(1), false);
  Clock::time_point start = Clock::now();
  int64_t n = submit_until(start + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(args.seconds)),
                           true);
  return n / std::chrono::duration<double>(Clock::now() - start).count();
}

int Run(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--models")
      args.models = value;
    else if (flag == "--model")
      args.model = value;
    else if (flag == "--video")
      args.video = value;
    else if (flag == "--seconds")
      args.seconds = std::atof(value.c_str());
    else if (flag == "--in-flight")
      args.in_flight = std::atoi(value.c_str());
    else if (flag == "--frames")
      args.frames = std::atoi(value.c_str());
    else if (flag == "--rounds")
      args.rounds = std::atoi(value.c_str());
    else if (flag == "--intra-op-threads")
      args.intra_op_threads = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "pipeline_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (args.models.empty() || args.seconds <= 0 || args.in_flight < 1 || args.rounds < 1) {
    std::fprintf(
        stderr,
        "usage: pipeline_bench --models DIR [--model mobilenet_v2] [--seconds 10] "
        "[--in-flight 2] [--video PATH] [--frames 250] [--intra-op-threads N] [--rounds 3]\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  fs::path tmp = fs::temp_directory_path() / ("outpost-pipeline-bench-" + std::to_string(getpid()));
  fs::create_directories(tmp / "models" / args.model / "1");
  fs::copy_file(fs::path(args.models) / args.model / "1" / "model.onnx",
                tmp / "models" / args.model / "1" / "model.onnx");
  if (args.intra_op_threads > 0) {
    std::FILE* f = std::fopen((tmp / "models" / args.model / "config.yaml").c_str(), "w");
    std::fprintf(f, "intra_op_threads: %d\n", args.intra_op_threads);
    std::fclose(f);
  }
  if (args.video.empty()) {
    args.video = (tmp / "bench.avi").string();
    if (!MakeVideo(args.video, args.frames)) {
      std::fprintf(stderr, "pipeline_bench: cannot write %s\n", args.video.c_str());
      return 1;
    }
  }
  ServeMetrics metrics;
  RepositoryOptions options;
  options.root = tmp / "models";
  options.metrics = &metrics;
  auto repo = ModelRepository::Create(options);
  if (!repo.ok()) return 1;
  (*repo)->LoadStartupModels();
  if (!(*repo)->AllReady()) {
    std::fprintf(stderr, "pipeline_bench: model %s did not load\n", args.model.c_str());
    return 1;
  }
  pipeline::PipelineConfig config;
  config.name = "bench";
  config.model = args.model;
  config.source.type = pipeline::SourceType::kVideo;
  config.source.path = args.video;
  config.source.loop = true;
  config.preprocess.mean = std::array<double, 3>{0.485, 0.456, 0.406};
  config.preprocess.std = std::array<double, 3>{0.229, 0.224, 0.225};
  config.postprocess.type = pipeline::PostprocessType::kClassification;
  pipeline::SinkConfig sink;
  sink.type = pipeline::SinkType::kJsonl;
  sink.path = "/dev/null";
  sink.max_bytes = int64_t{1} << 50;
  config.sinks = {sink};
  config.max_in_flight = args.in_flight;
  pipeline::PipelineMetricFamilies families(metrics.registry());
  // Model-only and pipeline phases alternate, so load from elsewhere on the
  // machine falls on both alike; the medians are reported.
  std::vector<double> model_runs, pipeline_runs;
  double dropped = 0;
  std::string last_exposition;
  for (int round = 0; round < args.rounds; ++round) {
    model_runs.push_back(ModelOnly(**repo, args));
    auto p = pipeline::Pipeline::Create(config, **repo, families);
    if (!p.ok()) {
      std::fprintf(stderr, "pipeline_bench: %s\n", std::string(MessageOf(p.status())).c_str());
      return 1;
    }
    (*p)->Start();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    double r0 = (*p)->metrics().results();
    Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(args.seconds));
    double results = (*p)->metrics().results() - r0;
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    dropped += (*p)->metrics().dropped_total();
    (*p)->Stop();
    last_exposition = metrics.Serialize();
    pipeline_runs.push_back(results / elapsed);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  double model_fps = median(model_runs), pipeline_fps = median(pipeline_runs);
  std::string runs;
  for (size_t i = 0; i < model_runs.size(); ++i) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s[%.1f, %.1f]", i ? ", " : "", model_runs[i],
                  pipeline_runs[i]);
    runs += buf;
  }
  // Mean per-stage latencies of the last round, from its histograms' sums
  // and counts (a pipeline's series go with it).
  std::string text = last_exposition;
  std::string stages;
  for (const char* stage :
       {"decode", "queue", "preprocess", "inference_queue", "inference", "postprocess"}) {
    auto value = [&](const std::string& suffix) {
      std::string key = "outpost_pipeline_stage_latency_seconds" + suffix +
                        "{pipeline=\"bench\",stage=\"" + stage + "\"} ";
      size_t at = text.find(key);
      return at == std::string::npos ? 0.0 : std::atof(text.c_str() + at + key.size());
    };
    double count = value("_count");
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%s\"%s_ms\": %.2f", stages.empty() ? "" : ", ", stage,
                  count > 0 ? value("_sum") / count * 1e3 : 0.0);
    stages += buf;
  }
  std::printf(
      "{\"model\": \"%s\", \"intra_op_threads\": %d, \"seconds\": %.1f, \"in_flight\": %d, "
      "\"model_fps\": %.2f, "
      "\"pipeline_fps\": %.2f, \"ratio\": %.3f, \"dropped\": %.0f, \"rounds\": [%s], "
      "\"stage_mean\": {%s}}\n",
      args.model.c_str(), args.intra_op_threads, args.seconds, args.in_flight, model_fps,
      pipeline_fps, model_fps > 0 ? pipeline_fps / model_fps : 0.0, dropped, runs.c_str(),
      stages.c_str());
  repo->reset();
  std::error_code ec;
  fs::remove_all(tmp, ec);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }
