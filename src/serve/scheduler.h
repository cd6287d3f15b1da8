// Scheduler: the bounded queue, dynamic batcher and instance threads of one
// model version.
//
// Each of `instance_count` threads takes the oldest request; with dynamic
// batching it then waits up to max_queue_delay_us for more requests until it
// reaches a preferred batch size or max_batch_size, concatenates them along
// the first dimension, runs the engine once and splits the outputs back per
// request (no copy on the way out: outputs share the batch's buffers).
// Batching happens on the instance thread itself, so an unbatched request
// costs exactly one thread hand-off.
//
// Thread safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "common/status.h"
#include "serve/engine.h"
#include "serve/tensor.h"

namespace outpost::serve {

struct InferRequest {
  std::vector<InputTensor> inputs;             // any order, matched by name
  std::vector<std::string> requested_outputs;  // empty = all outputs
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
};

struct InferStats {
  int64_t queue_ns = 0;    // arrival -> start of compute
  int64_t compute_ns = 0;  // engine Run of the batch this request was in
  int batch_size = 1;      // first-dimension total of that batch
};

struct InferResponse {
  std::vector<OutputTensor> outputs;  // in the order requested (or model order)
  InferStats stats;
};

// Called exactly once per accepted request, on a scheduler thread.
using InferCallback = absl::AnyInvocable<void(absl::StatusOr<InferResponse>) &&>;

struct SchedulerOptions {
  std::string name;  // "model:version", for thread names and messages
  int64_t max_batch_size = 0;
  std::optional<DynamicBatching> dynamic_batching;
  int64_t max_queue_size = 128;
  int instance_count = 1;
  // Called once per executed batch, on the instance thread (for metrics).
  std::function<void(int batch_size, int64_t compute_ns, bool ok)> on_batch;
};

// Checks a request against the model's inputs: every input present once,
// no unknown input, datatype equal, rank and fixed dimensions equal, first
// dimension <= max_batch_size when batching, data size == element count x
// element size, requested outputs exist. InvalidArgument with a message that
// names the input and what was expected.
absl::Status ValidateRequest(const Engine& engine, int64_t max_batch_size,
                             const InferRequest& request);

class Scheduler {
 public:
  // `engine` is borrowed and must outlive the scheduler.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const Engine& engine,
                                                           SchedulerOptions options);
  // Drains: see Drain().
  ~Scheduler();

  // Validates and enqueues. Returns InvalidArgument (bad request) or
  // Unavailable (queue full, or draining) without calling `done`; on OK,
  // `done` is called later exactly once. The request's input data must stay
  // valid until `done` runs.
  absl::Status Submit(InferRequest&& request, InferCallback done);

  // Stops accepting new requests, completes every queued one, joins the
  // threads. Idempotent. Safe to call from a callback (the calling thread is
  // detached instead of joined).
  void Drain();

  int64_t queue_depth() const { return queue_depth_.load(std::memory_order_relaxed); }
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Impl;
  Scheduler(const Engine& engine, SchedulerOptions options);

  const Engine& engine_;
  SchedulerOptions options_;
  std::atomic<int64_t> queue_depth_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::serve
