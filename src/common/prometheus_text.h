// Prometheus text exposition format (0.0.4) parsing, for the agent's
// runtime scrapes and the CLI's baseline capture.
//
// Thread safety: pure functions.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace outpost {

// One value of the text format.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
// Parses the text exposition format (comments skipped; malformed lines
// skipped, not fatal: a heartbeat should carry what it can).
std::vector<PromSample> ParsePrometheusText(std::string_view text);

// A sample value: a decimal number, "+Inf", "-Inf" or "NaN".
std::optional<double> ParsePrometheusValue(std::string_view text);

}  // namespace outpost
