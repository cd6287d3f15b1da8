// Pieces shared by the benchmark tools (loadgen, raw_ort, bare_load): flag
// parsing, the closed-loop driver with its latency summary, and the ONNX
// Runtime session options outpost-serve uses, so the baseline and the server
// run the same engine configuration.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace outpost::bench {

// "--name value" or "--name=value"; a flag without a value ("--help") maps to
// "true". Positional arguments are errors: every tool here takes flags only.
class Flags {
 public:
  // Errors: InvalidArgument for a positional argument or a flag not in `known`.
  static absl::StatusOr<Flags> Parse(int argc, char** argv, std::vector<std::string_view> known);

  bool Has(std::string_view name) const;
  std::string Get(std::string_view name, std::string_view fallback = "") const;
  // InvalidArgument when present but not a number.
  absl::StatusOr<double> GetDouble(std::string_view name, double fallback) const;
  absl::StatusOr<int64_t> GetInt(std::string_view name, int64_t fallback) const;

 private:
  std::map<std::string, std::string, std::less<>> values_;
};

struct LoopOptions {
  int concurrency = 1;
  double warmup_seconds = 1.0;
  double duration_seconds = 5.0;  // measured window; ignored when requests > 0
  int64_t requests = 0;           // > 0: measure exactly this many after warm-up
};

struct Summary {
  double p50_ms = 0;
  double p95_ms = 0;
  double p99_ms = 0;
  double mean_ms = 0;
  double throughput_rps = 0;
  int64_t requests = 0;  // completed in the measured window (errors included)
  int64_t errors = 0;
  double seconds = 0;  // length of the measured window
};

// Runs `op(worker)` in a closed loop on `options.concurrency` threads
// (worker = 0..concurrency-1; per-worker state belongs to the caller, and op
// is only ever called for a worker from that worker's thread). op returns
// false for a failed request. Latency is steady_clock around each call; a
// call counts when it completes inside the measured window, which starts
// after the warm-up. Latencies go into per-thread vectors reserved up front,
// so measuring allocates nothing per request.
Summary RunClosedLoop(const LoopOptions& options, const std::function<bool(int)>& op);

// {"p50_ms":...,"p95_ms":...,"p99_ms":...,"mean_ms":...,"throughput_rps":...,
//  "requests":...,"errors":...,"seconds":...}
std::string SummaryJson(const Summary& summary);

// The session options outpost-serve's Engine applies for a config.yaml-less
// model (src/serve/model_config.h defaults): graph optimisation all,
// intra-op threads 0 (ONNX Runtime's default, one per core), inter-op 1,
// sequential execution, CPU arena on. Throws Ort::Exception like the API it wraps.
Ort::SessionOptions ServeSessionOptions(int intra_op_threads = 0, int inter_op_threads = 1);

// Loads a model with ServeSessionOptions. Errors: InvalidArgument with
// ONNX Runtime's message and the path.
absl::StatusOr<Ort::Session> LoadSession(Ort::Env& env, const std::string& model_path,
                                         const Ort::SessionOptions& options);

// The main() of a bench tool: parses `known` flags (exit 2 with `usage` on a
// bad one), prints `usage` for --help, runs `run`, and turns an ONNX Runtime
// exception into exit 1 with its message.
int ToolMain(int argc, char** argv, const char* tool, std::vector<std::string_view> known,
             std::string_view usage, const std::function<int(const Flags&)>& run);

}  // namespace outpost::bench
