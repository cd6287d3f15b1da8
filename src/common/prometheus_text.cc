#include "common/prometheus_text.h"

#include <charconv>
#include <cmath>

namespace outpost {
namespace {

std::string_view TrimLeft(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

}  // namespace

std::optional<double> ParsePrometheusValue(std::string_view s) {
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::vector<PromSample> ParsePrometheusText(std::string_view text) {
  std::vector<PromSample> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    line = TrimLeft(line);
    if (line.empty() || line.front() == '#') continue;
    PromSample sample;
    size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string_view::npos) continue;
    sample.name = std::string(line.substr(0, name_end));
    std::string_view rest = line.substr(name_end);
    bool ok = true;
    if (rest.front() == '{') {
      rest.remove_prefix(1);
      while (ok && !rest.empty() && rest.front() != '}') {
        size_t eq = rest.find('=');
        if (eq == std::string_view::npos || eq + 1 >= rest.size() || rest[eq + 1] != '"') {
          ok = false;
          break;
        }
        std::string key(TrimLeft(rest.substr(0, eq)));
        std::string value;
        size_t i = eq + 2;
        for (; i < rest.size() && rest[i] != '"'; ++i) {
          if (rest[i] == '\\' && i + 1 < rest.size()) {
            ++i;
            value.push_back(rest[i] == 'n' ? '\n' : rest[i]);
          } else {
            value.push_back(rest[i]);
          }
        }
        if (i >= rest.size()) {
          ok = false;
          break;
        }
        sample.labels[key] = std::move(value);
        rest.remove_prefix(i + 1);
        if (!rest.empty() && rest.front() == ',') rest.remove_prefix(1);
      }
      if (!ok || rest.empty()) continue;
      rest.remove_prefix(1);  // '}'
    }
    rest = TrimLeft(rest);
    std::string_view value_text = rest.substr(0, rest.find(' '));
    std::optional<double> value = ParsePrometheusValue(value_text);
    if (!value) continue;
    sample.value = *value;
    out.push_back(std::move(sample));
  }
  return out;
}

}  // namespace outpost
