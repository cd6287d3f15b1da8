// `outpost bundle baseline`: a bundle's output baseline (docs/bundles.md
// "Baselines") from a runtime's `outpost_output_score` histogram — run
// outpost-serve on reference data, then capture what it scored.
//
// Thread safety: pure function.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "bundle/manifest.h"
#include "common/status.h"

namespace outpost::cli {

// The baseline of `model` (`version`, or the only version exposed when
// empty) from Prometheus text. Bins follow the runtime's buckets exactly:
// edges [lower, e1, ..., ek, upper] for buckets le=e1..ek,+Inf, where
// lower = min(0, e1 - (e2 - e1)) and upper = ek + (ek - e(k-1)) (the +Inf
// bucket becomes the last bin), so the agent can compare the two.
// `output` names the scored output (for the manifest). Errors:
// FailedPrecondition (no histogram for the model/version, or nothing
// scored yet), InvalidArgument (several
// versions and none chosen).
absl::StatusOr<bundle::OutputBaseline> BaselineFromMetrics(std::string_view metrics_text,
                                                           std::string_view model,
                                                           std::string_view version,
                                                           std::string output);

}  // namespace outpost::cli
