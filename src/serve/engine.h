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
  std::string reason;  // what failed, from ONNX Runtime's message
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
  // overrides (datatype/shape must agree with the model, else InvalidArgument),
  // and runs config.warmup_iterations warm-up inferences with zero-filled
  // inputs (dynamic dimensions as 1). Errors: NotFound (no file),
  // InvalidArgument (not a loadable ONNX model, bad overrides, unsupported
  // input type), FailedPrecondition (strict_providers and a provider failed,
  // or no listed provider works).
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

  // Runs the model once. `inputs` must be in the order of inputs(), shapes
  // fully known and data sizes consistent (the scheduler validates requests;
  // Run re-checks sizes and returns InvalidArgument rather than crash).
  // `output_indices` selects outputs by index into outputs(); empty = all.
  // Input data is not copied; outputs point into ONNX Runtime's buffers,
  // kept alive by OutputTensor::owner. Errors: Internal with ONNX Runtime's message.
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
