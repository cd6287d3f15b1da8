// Engine: one ONNX Runtime session for one model version.
//
// Thread safety: Run() may be called concurrently from several threads (ONNX
// Runtime sessions are thread-safe for Run); an "instance" in the scheduler
// is a thread calling Run, so N instances share one session's weights.
//
// Execution providers are tried in the order of ModelConfig::execution_providers.
// A provider that cannot be registered (not in this build, no device, driver
// error) or whose session fails to initialise is recorded in fallbacks(),
// logged once, and the next one is tried; with strict_providers the first
// failure is returned instead. CPU always works when listed.
//
// All engines share one process-wide Ort::Env (created on first use, never
// destroyed); ONNX Runtime's log lines go to spdlog.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "serve/model_config.h"
#include "serve/tensor.h"

namespace outpost::serve {

struct ProviderFallback {
  ExecutionProvider provider;
  std::string reason;  // what failed, in ONNX Runtime's words
};

struct EngineOptions {
  std::filesystem::path model_path;  // .../model.onnx
  ModelConfig config;
  std::string model_name;  // for log and error messages
  int64_t version = 0;
};

class Engine {
 public:
  // Loads the model, picks a provider, reads inputs/outputs, applies config
  // overrides (datatype must equal the model's; each dimension must equal the
  // model's or narrow a dynamic one; with max_batch_size > 0 the config shape
  // leaves out the batch dimension), and runs config.warmup_iterations
  // warm-up inferences with zero-filled inputs (dynamic dimensions as 1).
  // Errors: NotFound (no file), InvalidArgument (not a loadable ONNX model,
  // bad overrides, a non-tensor or unsupported element type such as string,
  // max_batch_size > 0 but an input/output without a dynamic first
  // dimension), FailedPrecondition (strict_providers and a provider failed,
  // or no listed provider works), Internal (a warm-up inference failed).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options);
  ~Engine();

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Full model shapes; dynamic dimensions are -1 (a batching model's
  // first dimension is -1).
  const std::vector<TensorSpec>& inputs() const { return inputs_; }
  const std::vector<TensorSpec>& outputs() const { return outputs_; }
  ExecutionProvider provider() const { return provider_; }
  const std::vector<ProviderFallback>& fallbacks() const { return fallbacks_; }
  const EngineOptions& options() const { return options_; }

  // Runs the model once. Thread-safe, takes no lock. `inputs` are matched by
  // position to inputs() (names are not consulted); each must have that
  // datatype, its rank, its fixed dimensions, no negative dimension, and
  // exactly element count x element size bytes, else InvalidArgument (the
  // scheduler validates requests first; this re-check turns a bug into an
  // error instead of a crash). `output_indices` selects outputs by index into
  // outputs(), in that order; empty = all; out of range = InvalidArgument.
  // Input data is not copied; outputs point into ONNX Runtime's buffers,
  // kept alive by OutputTensor::owner (one shared owner for the outputs of
  // one call), which may outlive the Engine. Errors: Internal with the model,
  // version and ONNX Runtime's message when inference fails inside ORT.
  absl::StatusOr<std::vector<OutputTensor>> Run(std::span<const InputTensor> inputs,
                                                std::span<const int> output_indices = {}) const;

 private:
  struct Impl;
  explicit Engine(EngineOptions options);

  EngineOptions options_;
  std::vector<TensorSpec> inputs_;
  std::vector<TensorSpec> outputs_;
  ExecutionProvider provider_ = ExecutionProvider::kCpu;
  std::vector<ProviderFallback> fallbacks_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::serve
