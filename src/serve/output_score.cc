#include "serve/output_score.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace outpost::serve {
namespace {

template <typename T>
double ScoreRowImpl(const T* row, size_t n, ScoreKind kind) {
  if (n == 0) return std::numeric_limits<double>::quiet_NaN();
  if (kind == ScoreKind::kAuto) kind = n == 1 ? ScoreKind::kValue : ScoreKind::kSoftmaxMax;
  if (kind == ScoreKind::kValue) {
    return n == 1 ? static_cast<double>(row[0]) : std::numeric_limits<double>::quiet_NaN();
  }
  double max = row[0];
  for (size_t i = 1; i < n; ++i) max = std::max<double>(max, row[i]);
  if (kind == ScoreKind::kMax || !std::isfinite(max)) return max;
  // A row that already is a distribution (a model ending in softmax) is
  // scored as is: a second softmax would squash it towards uniform.
  double sum = 0;
  bool unit = true;
  for (size_t i = 0; i < n; ++i) {
    sum += row[i];
    unit = unit && row[i] >= 0 && row[i] <= 1;
  }
  if (unit && std::abs(sum - 1.0) <= 1e-3) return max;
  double exp_sum = 0;
  for (size_t i = 0; i < n; ++i) exp_sum += std::exp(static_cast<double>(row[i]) - max);
  return 1.0 / exp_sum;
}

template <typename T>
void ScoreRows(const OutputTensor& out, ScoreKind kind, const ScoreHistogram& histogram,
               uint64_t* counts, double* sum) {
  const size_t elements = out.data.size() / sizeof(T);
  if (elements == 0) return;
  size_t rows = 1;
  if (out.shape.size() == 1) {
    rows = elements;
  } else if (out.shape.size() >= 2) {
    rows = out.shape[0] > 0 ? static_cast<size_t>(out.shape[0]) : 0;
  }
  if (rows == 0 || elements % rows != 0) return;
  const size_t width = elements / rows;
  // The output buffer may not be aligned for T (it is a sub-span of ONNX
  // Runtime's); rows are read through memcpy into a small stack buffer only
  // when it is not.
  const std::byte* base = out.data.data();
  const bool aligned = reinterpret_cast<uintptr_t>(base) % alignof(T) == 0;
  for (size_t r = 0; r < rows; ++r) {
    double score;
    if (aligned) {
      score = ScoreRowImpl(reinterpret_cast<const T*>(base) + r * width, width, kind);
    } else {
      T single[1];
      if (width != 1) continue;  // unaligned wide rows: not produced by ONNX Runtime
      std::memcpy(single, base + r * sizeof(T), sizeof(T));
      score = ScoreRowImpl(single, 1, kind);
    }
    if (std::isnan(score)) continue;
    ++counts[histogram.BucketOf(score)];
    *sum += score;
  }
}

}  // namespace

std::string_view ScoreKindName(ScoreKind kind) {
  switch (kind) {
    case ScoreKind::kAuto:
      return "auto";
    case ScoreKind::kSoftmaxMax:
      return "softmax_max";
    case ScoreKind::kMax:
      return "max";
    case ScoreKind::kValue:
      return "value";
  }
  return "auto";
}

const std::vector<double>& DefaultScoreBuckets() {
  static const std::vector<double> kBuckets = {0.1, 0.2, 0.3, 0.4,  0.5,  0.6,
                                               0.7, 0.8, 0.9, 0.95, 0.99, 1.0};
  return kBuckets;
}

double ScoreRow(const float* row, size_t n, ScoreKind kind) { return ScoreRowImpl(row, n, kind); }
double ScoreRow(const double* row, size_t n, ScoreKind kind) { return ScoreRowImpl(row, n, kind); }

ScoreHistogram::ScoreHistogram(std::vector<double> edges)
    : edges_(std::move(edges)), counts_(new std::atomic<uint64_t>[edges_.size() + 1]) {
  for (size_t i = 0; i <= edges_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

size_t ScoreHistogram::BucketOf(double score) const {
  return std::lower_bound(edges_.begin(), edges_.end(), score) - edges_.begin();
}

void ScoreHistogram::Add(std::span<const uint64_t> counts, double sum) {
  uint64_t total = 0;
  for (size_t i = 0; i < counts.size() && i <= edges_.size(); ++i) {
    if (counts[i] == 0) continue;
    counts_[i].fetch_add(counts[i], std::memory_order_relaxed);
    total += counts[i];
  }
  if (total == 0) return;
  sum_.fetch_add(sum, std::memory_order_relaxed);
  count_.fetch_add(total, std::memory_order_relaxed);
}

ScoreHistogram::Snapshot ScoreHistogram::Take() const {
  Snapshot s;
  s.counts.resize(edges_.size() + 1);
  for (size_t i = 0; i <= edges_.size(); ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
    s.count += s.counts[i];
  }
  // The sum of the buckets, not count_: a scrape between one batch's bucket
  // and count updates must still expose a consistent histogram.
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

absl::StatusOr<std::optional<OutputScorer>> OutputScorer::Create(
    const std::vector<TensorSpec>& model_outputs, const OutputScoreConfig& config,
    std::shared_ptr<ScoreHistogram> histogram) {
  if (!config.enabled) return std::nullopt;
  auto scorable = [](const TensorSpec& spec) {
    return spec.datatype == DataType::kFp32 || spec.datatype == DataType::kFp64;
  };
  if (config.output.empty()) {
    for (const TensorSpec& spec : model_outputs) {
      if (scorable(spec)) return OutputScorer(spec.name, config.kind, std::move(histogram));
    }
    return std::nullopt;
  }
  for (const TensorSpec& spec : model_outputs) {
    if (spec.name != config.output) continue;
    if (!scorable(spec)) {
      return absl::InvalidArgumentError(StrCat("output_score.output: output '", spec.name, "' is ",
                                               DataTypeName(spec.datatype),
                                               "; only FP32 and FP64 outputs can be scored"));
    }
    return OutputScorer(spec.name, config.kind, std::move(histogram));
  }
  std::string known;
  for (const TensorSpec& spec : model_outputs)
    StrAppend(&known, known.empty() ? "" : ", ", spec.name);
  return absl::InvalidArgumentError(StrCat("output_score.output: the model has no output '",
                                           config.output, "' (outputs: ", known, ")"));
}

void OutputScorer::Observe(std::span<const OutputTensor> outputs) const {
  for (const OutputTensor& out : outputs) {
    if (out.name != output_) continue;
    uint64_t counts[kMaxScoreBuckets + 1] = {};
    double sum = 0;
    if (out.datatype == DataType::kFp32) {
      ScoreRows<float>(out, kind_, *histogram_, counts, &sum);
    } else if (out.datatype == DataType::kFp64) {
      ScoreRows<double>(out, kind_, *histogram_, counts, &sum);
    }
    histogram_->Add(std::span<const uint64_t>(counts, histogram_->edges().size() + 1), sum);
    return;
  }
}

}  // namespace outpost::serve
