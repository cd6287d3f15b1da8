// Scheduler: the bounded queue, dynamic batcher and instance threads of one
// model version.
//
// Each of `instance_count` threads takes the oldest request; with dynamic
// batching it then waits up to max_queue_delay_us for more requests until it
// reaches a preferred batch size or max_batch_size, concatenates them along
// the first dimension, runs the engine once and splits the outputs back per
// request (no copy on the way out: outputs share the batch's buffers).
// Batching happens on the instance thread itself, so an unbatched request
// costs exactly one thread hand-off. One thread at a time gathers a batch
// (requests arriving meanwhile join it); a request whose first dimension
// would overflow max_batch_size, or whose other dimensions differ from the
// batch's, waits for the next batch (order is kept). A preferred size that
// is reached runs at once; past the delay, whatever was gathered runs.
// Concatenated inputs live in per-thread buffers reused across batches.
// A failed engine run fails every request of its batch with its error.
//
// Inline execution: a front end whose thread may block (HTTP) submits
// with SubmitMode::kMayRunInline. When the scheduler is idle — nothing
// queued, an instance free, no other inline run in progress, and batching
// could not help (no dynamic batching, max_queue_delay_us 0, or the request
// alone fills max_batch_size or a preferred size) — Submit runs the request
// on the calling thread and calls `done` before returning, which saves the
// two thread hand-offs of the queue. An inline run counts as one of the
// instance_count executions (instance threads wait for it), and its stats
// and on_batch/on_outputs calls are those of a batch of one. At most one
// caller at a time is held this way, so other io threads keep reading.
//
// Thread safety: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
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

// Called exactly once per accepted request, outside any scheduler lock: on
// an instance thread, or (inline execution) on the thread that called Submit,
// before Submit returns. It may call Drain or destroy the scheduler.
using InferCallback = absl::AnyInvocable<void(absl::StatusOr<InferResponse>) &&>;

struct SchedulerOptions {
  std::string name;  // "model:version", for thread names and messages
  int64_t max_batch_size = 0;
  std::optional<DynamicBatching> dynamic_batching;
  int64_t max_queue_size = 128;
  int instance_count = 1;
  // Allows SubmitMode::kMayRunInline to run requests on the calling thread
  // (see the top of this file).
  bool inline_execution = true;
  // Called once per executed batch, on the instance thread, before the
  // batch's request callbacks (for metrics).
  std::function<void(int batch_size, int64_t compute_ns, bool ok)> on_batch;
  // Called once per successful batch with all of its outputs (every
  // request's rows; only the outputs that were computed), on the instance
  // thread, before the request callbacks and outside any scheduler lock:
  // the one place every inference passes, whatever front end submitted it
  // (HTTP, gRPC, pipelines). Must be cheap and must not block.
  std::function<void(std::span<const OutputTensor> outputs)> on_outputs;
};

// Checks a request against the model's inputs: every input present once,
// no unknown input, datatype equal (BYTES is not supported), rank and fixed
// dimensions equal, no negative dimension, first dimension in
// 1..max_batch_size and equal across inputs when batching, data size ==
// element count x element size, requested outputs exist and are not
// repeated. InvalidArgument with a message that names the input and what
// was expected, e.g. "input 'x': expected shape [-1,4], got [1,5]".
absl::Status ValidateRequest(const Engine& engine, int64_t max_batch_size,
                             const InferRequest& request);

enum class SubmitMode {
  kQueued,        // always on an instance thread: Submit never waits for compute
  kMayRunInline,  // on the calling thread when the scheduler is idle (see above)
};

class Scheduler {
 public:
  // `engine` is borrowed and must outlive the scheduler. Starts
  // instance_count threads named "infer-<name>". InvalidArgument for bad
  // options (a batching model whose inputs lack a dynamic first dimension,
  // preferred sizes outside 1..max_batch_size, sizes < 1); ResourceExhausted
  // when a thread cannot be started.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const Engine& engine,
                                                           SchedulerOptions options);
  // Drains: see Drain().
  ~Scheduler();

  // Validates and enqueues; never blocks on the queue. Returns
  // InvalidArgument (see ValidateRequest) or Unavailable (queue full: "model
  // 'x' version 1: queue full (64 requests); retry later", or draining:
  // "... is unloading") without calling `done`; on OK, `done` is called
  // later exactly once. The request's input data must stay valid until
  // `done` runs. Outputs come in the order requested (or model order).
  // With kMayRunInline (and options.inline_execution) an idle scheduler
  // runs the request on this thread and `done` has run when Submit returns
  // OK; the scheduler may then already be destroyed by `done`.
  absl::Status Submit(InferRequest&& request, InferCallback done,
                      SubmitMode mode = SubmitMode::kQueued);

  // Stops accepting new requests, completes every queued one (without
  // waiting out the batching delay), waits for an inline run's compute to
  // end (its callback may still be running), joins the threads. Idempotent. Safe to
  // call from a callback, also through the destructor: that thread runs the
  // rest of the queue itself and is detached instead of joined.
  void Drain();

  // From now on nothing more is run: every request still queued (or being
  // gathered into a batch) is answered with `reason` (Unavailable when it is
  // OK) by an instance thread, and Submit refuses new ones with it. Batches
  // already running finish. For a shutdown whose deadline has passed: the
  // clients are gone, so their queued work is not computed. Idempotent (the
  // first reason stays).
  void Abandon(absl::Status reason);

  // Accepted requests not yet running (including those being gathered).
  int64_t queue_depth() const { return queue_depth_.load(std::memory_order_relaxed); }
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Impl;
  Scheduler(const Engine& engine, SchedulerOptions options);
  // Runs an accepted request on this thread; see SubmitMode::kMayRunInline.
  void RunInline(InferRequest& request, std::span<const int> outputs, int64_t batch,
                 InferCallback done);

  const Engine& engine_;
  SchedulerOptions options_;
  std::atomic<int64_t> queue_depth_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace outpost::serve
