#include "cli/baseline.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/prometheus_text.h"

namespace outpost::cli {

absl::StatusOr<bundle::OutputBaseline> BaselineFromMetrics(std::string_view metrics_text,
                                                           std::string_view model,
                                                           std::string_view version,
                                                           std::string output) {
  std::map<std::string, std::vector<std::pair<double, double>>> by_version;
  for (const PromSample& p : ParsePrometheusText(metrics_text)) {
    if (p.name != "outpost_output_score_bucket") continue;
    auto m = p.labels.find("model");
    auto v = p.labels.find("version");
    auto le = p.labels.find("le");
    if (m == p.labels.end() || v == p.labels.end() || le == p.labels.end() || m->second != model) {
      continue;
    }
    std::optional<double> edge = ParsePrometheusValue(le->second);
    if (edge && !std::isnan(*edge)) by_version[v->second].emplace_back(*edge, p.value);
  }
  if (by_version.empty()) {
    return absl::FailedPreconditionError(
        StrCat("no outpost_output_score histogram for model '", model,
               "' in the metrics (is output_score off in its config?)"));
  }
  std::string chosen(version);
  if (chosen.empty()) {
    if (by_version.size() > 1) {
      std::string versions;
      for (const auto& [v, unused] : by_version)
        StrAppend(&versions, versions.empty() ? "" : ", ", v);
      return absl::InvalidArgumentError(
          StrCat("model '", model, "' exposes versions ", versions, ": choose one with --version"));
    }
    chosen = by_version.begin()->first;
  }
  auto found = by_version.find(chosen);
  if (found == by_version.end()) {
    return absl::FailedPreconditionError(
        StrCat("no outpost_output_score histogram for model '", model, "' version ", chosen));
  }
  std::vector<std::pair<double, double>> buckets = found->second;
  std::sort(buckets.begin(), buckets.end());
  std::vector<double> edges;
  std::vector<double> counts;
  double previous = 0;
  for (const auto& [le, cumulative] : buckets) {
    if (std::isfinite(le)) edges.push_back(le);
    counts.push_back(std::max(0.0, cumulative - previous));
    previous = cumulative;
  }
  if (edges.empty() || !std::isinf(buckets.back().first)) {
    return absl::InvalidArgumentError("the histogram has no finite buckets or no +Inf bucket");
  }
  const double total = previous;
  if (total <= 0) {
    return absl::FailedPreconditionError(
        StrCat("model '", model, "' version ", chosen,
               " has scored nothing yet: run reference data first"));
  }
  const double step_low = edges.size() > 1 ? edges[1] - edges[0] : 1.0;
  const double step_high = edges.size() > 1 ? edges.back() - edges[edges.size() - 2] : 1.0;
  bundle::OutputBaseline baseline;
  baseline.output = std::move(output);
  baseline.bin_edges.push_back(std::min(0.0, edges.front() - step_low));
  if (baseline.bin_edges.front() >= edges.front()) baseline.bin_edges.front() = edges.front() - 1;
  baseline.bin_edges.insert(baseline.bin_edges.end(), edges.begin(), edges.end());
  baseline.bin_edges.push_back(edges.back() + step_high);
  for (double c : counts) baseline.proportions.push_back(c / total);
  baseline.samples = static_cast<uint64_t>(total);
  return baseline;
}

}  // namespace outpost::cli
