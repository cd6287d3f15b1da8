// Output score distribution of one model version, for drift detection
// (docs/serve.md "Output scores"): every executed batch's rows are scored and
// counted into a histogram with fixed bucket edges, exported in /metrics as
// `outpost_output_score` and compared by the agent with the bundle's
// baseline (population stability index).
//
// A row's score, by kind:
//   softmax_max  the top class's softmax probability, 1 / sum(exp(x_i - max x));
//                a row that already is a distribution (every value in [0, 1],
//                sum within 1e-3 of 1) scores its max value instead
//   max          the row's max value, raw
//   value        the row's single value (rows of one element)
//   auto         (the default) softmax_max for rows of C > 1 values, value
//                for rows of one
// Rows are the first dimension of a rank >= 2 output ([N, C] → N rows of
// C), every element of a rank-1 output, the one element of a scalar.
//
// Thread safety: ScoreHistogram::Observe* and Snapshot may run concurrently
// from any threads; they take no lock (relaxed atomics). OutputScorer is
// immutable after Create.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "serve/tensor.h"

namespace outpost::serve {

enum class ScoreKind { kAuto, kSoftmaxMax, kMax, kValue };
std::string_view ScoreKindName(ScoreKind kind);  // "auto", "softmax_max", "max", "value"

// Upper bucket edges (Prometheus `le`) used when a config gives none: finer
// near 1, where a confident classifier's top-class probability lives.
const std::vector<double>& DefaultScoreBuckets();
inline constexpr size_t kMaxScoreBuckets = 64;

// config.yaml `output_score:` — `off`, or {output, kind, buckets}, all keys
// optional.
struct OutputScoreConfig {
  bool enabled = true;
  std::string output;  // empty = the model's first FP32/FP64 output
  ScoreKind kind = ScoreKind::kAuto;
  std::vector<double> buckets;  // upper edges, strictly increasing, finite; empty = default
};

// Per-bucket counts with fixed upper edges plus +Inf, count and sum.
class ScoreHistogram {
 public:
  // `edges`: 1..kMaxScoreBuckets strictly increasing finite values (checked
  // by the config parser; the caller guarantees it).
  explicit ScoreHistogram(std::vector<double> edges);

  const std::vector<double>& edges() const { return edges_; }
  // Index of the bucket holding `score`: the first edge >= score, or
  // edges().size() (+Inf). NaN scores are not counted by callers.
  size_t BucketOf(double score) const;
  // Adds per-bucket counts (edges().size() + 1 values) and their sum.
  void Add(std::span<const uint64_t> counts, double sum);

  struct Snapshot {
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last = +Inf
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot Take() const;

 private:
  const std::vector<double> edges_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

// Scores one output of a model's batches into a histogram.
class OutputScorer {
 public:
  // Resolves the config against the model's outputs. nullopt when scoring
  // is off, or when `config.output` is empty and the model has no FP32/FP64
  // output. InvalidArgument when a named output does not exist or is not
  // FP32/FP64.
  static absl::StatusOr<std::optional<OutputScorer>> Create(
      const std::vector<TensorSpec>& model_outputs, const OutputScoreConfig& config,
      std::shared_ptr<ScoreHistogram> histogram);

  // Scores every row of the output named output() among `outputs` (the
  // outputs of one engine run; nothing happens when it was not computed).
  // No allocation; rows with a NaN score are skipped.
  void Observe(std::span<const OutputTensor> outputs) const;

  const std::string& output() const { return output_; }
  ScoreKind kind() const { return kind_; }
  const std::shared_ptr<ScoreHistogram>& histogram() const { return histogram_; }

 private:
  OutputScorer(std::string output, ScoreKind kind, std::shared_ptr<ScoreHistogram> histogram)
      : output_(std::move(output)), kind_(kind), histogram_(std::move(histogram)) {}

  std::string output_;
  ScoreKind kind_;
  std::shared_ptr<ScoreHistogram> histogram_;
};

// The score of one row of `n` values by `kind` (kAuto resolved by n). NaN
// for an empty row, or for kValue with n != 1.
double ScoreRow(const float* row, size_t n, ScoreKind kind);
double ScoreRow(const double* row, size_t n, ScoreKind kind);

}  // namespace outpost::serve
