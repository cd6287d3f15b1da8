// Per-model configuration: `<repo>/<model>/config.yaml`, all keys optional.
//
//   max_batch_size: 8            # 0 = the model takes whole tensors, no batching
//   dynamic_batching:            # present = batch requests together; needs max_batch_size > 0
//     max_queue_delay_us: 500
//     preferred_batch_sizes: [4, 8]   # each 1..max_batch_size, no repeats
//   max_queue_size: 64           # queued requests before 503 (backpressure), >= 1
//   instance_count: 1            # concurrent executions of the model, 1..64
//   inline_execution: true       # an idle model runs an HTTP/gRPC request on the io
//                                # thread that read it (serve/scheduler.h)
//   execution_providers: [tensorrt, cuda, cpu]   # in order of preference, any case, no repeats
//   strict_providers: false      # true: a provider that fails is a load error
//   intra_op_threads: 0          # 0 = ONNX Runtime's default (one per core)
//   inter_op_threads: 1
//   graph_optimization: all      # disable | basic | extended | all
//   cpu_arena: true              # ONNX Runtime CPU memory arena
//   session_config:              # ONNX Runtime session config entries, passed as they are
//     session.intra_op.allow_spinning: "1"   # (onnxruntime_session_options_config_keys.h)
//   warmup: { iterations: 1 }    # warm-up runs with zero inputs at load (0 = none)
//   version_policy: latest       # latest | all | {latest: N} | {specific: [1, 3]}
//   inputs:  [{name: x, datatype: FP32, shape: [3, 224, 224]}]   # optional overrides;
//            # all three keys required, dimensions -1 (dynamic) or >= 1
//   outputs: [{name: y, datatype: FP32, shape: [1000]}]
//   labels: labels.txt           # one label per line, for classification outputs;
//                                # relative to the model folder, no ".."
//   output_score:                # histogram of a per-row score, for drift (serve/output_score.h)
//     output: prob               # default: the first FP32/FP64 output
//     kind: softmax_max          # auto | softmax_max | max | value
//     buckets: [0.5, 0.9, 1.0]   # upper edges, strictly increasing, 1..64; default 0.1..1.0
//   # or `output_score: off`
//   preprocess:                  # how pipelines and `outpost infer` turn a frame into the
//     resize: letterbox          # image input (serve/preprocess_spec.h lists every key);
//     mean: [0.485, 0.456, 0.406]  # a pipeline's own preprocess section overrides it
//     std: [0.229, 0.224, 0.225]   # key by key
//
// Shapes in `inputs`/`outputs` exclude the batch dimension when
// max_batch_size > 0, as in Triton.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "serve/output_score.h"
#include "serve/preprocess_spec.h"
#include "serve/tensor.h"

namespace outpost::serve {

enum class ExecutionProvider { kCpu, kCuda, kTensorRt };
std::string_view ProviderName(ExecutionProvider provider);  // "cpu", "cuda", "tensorrt"

enum class GraphOptimization { kDisable, kBasic, kExtended, kAll };

struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  int latest_count = 1;           // for kLatest
  std::vector<int64_t> versions;  // for kSpecific

  // Of the versions found on disk, the ones to serve (sorted ascending).
  std::vector<int64_t> Select(std::vector<int64_t> available) const;
};

struct DynamicBatching {
  int64_t max_queue_delay_us = 0;
  std::vector<int64_t> preferred_batch_sizes;
};

struct ModelConfig {
  int64_t max_batch_size = 0;
  std::optional<DynamicBatching> dynamic_batching;
  int64_t max_queue_size = 128;
  int instance_count = 1;
  bool inline_execution = true;
  std::vector<ExecutionProvider> execution_providers = {ExecutionProvider::kCpu};
  bool strict_providers = false;
  int intra_op_threads = 0;
  int inter_op_threads = 1;
  GraphOptimization graph_optimization = GraphOptimization::kAll;
  bool cpu_arena = true;
  // Extra ONNX Runtime session config entries (key, value), in file order;
  // they override the ones outpost-serve sets itself.
  std::vector<std::pair<std::string, std::string>> session_config;
  int warmup_iterations = 1;
  VersionPolicy version_policy;
  std::vector<TensorSpec> inputs;   // overrides; empty = from the model
  std::vector<TensorSpec> outputs;  // overrides; empty = from the model
  std::string labels_file;          // relative to the model folder
  OutputScoreConfig output_score;
  // Pre-processing for pipelines; only the keys written in the file are set.
  PreprocessSpec preprocess;
  // True when max_batch_size came from the file rather than inference.
  bool max_batch_size_set = false;
};

// Parses YAML text. `source` names the file in error messages, which say
// the file, the key and the reason: "models/resnet/config.yaml: key
// 'max_batch_size': must be >= 0, got -3" (nested keys as
// 'dynamic_batching.preferred_batch_sizes', 'inputs[0].shape'). Unknown and
// repeated keys are errors (a typo must not be silently ignored; a near miss
// gets "did you mean"). YAML syntax errors give the line and column. All
// errors are InvalidArgument. An empty document is the default config.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view yaml_text, std::string_view source);

// Reads `<model_dir>/config.yaml`; the default config when the file does not
// exist. Errors: those of ParseModelConfig (naming the file's path), or
// FailedPrecondition when the file exists but cannot be read.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& model_dir);

}  // namespace outpost::serve
