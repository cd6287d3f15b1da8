#include "hub/sql.h"

#include <charconv>
#include <cstdlib>

namespace outpost::hub::sql {

int64_t Row::Int(size_t i) const {
  const Cell& cell = cells_.at(i);
  if (const auto* v = std::get_if<int64_t>(&cell)) return *v;
  if (const auto* v = std::get_if<double>(&cell)) return static_cast<int64_t>(*v);
  if (const auto* v = std::get_if<std::string>(&cell)) {
    int64_t out = 0;
    std::from_chars(v->data(), v->data() + v->size(), out);
    return out;
  }
  return 0;
}

double Row::Double(size_t i) const {
  const Cell& cell = cells_.at(i);
  if (const auto* v = std::get_if<double>(&cell)) return *v;
  if (const auto* v = std::get_if<int64_t>(&cell)) return static_cast<double>(*v);
  if (const auto* v = std::get_if<std::string>(&cell)) {
    // strtod, not from_chars: PostgreSQL writes "Infinity" and "NaN".
    return std::strtod(v->c_str(), nullptr);
  }
  return 0;
}

std::string Row::Text(size_t i) const {
  const Cell& cell = cells_.at(i);
  if (const auto* v = std::get_if<std::string>(&cell)) return *v;
  if (const auto* v = std::get_if<int64_t>(&cell)) return StrCat(*v);
  if (const auto* v = std::get_if<double>(&cell)) return StrCat(*v);
  return "";
}

std::string RedactUrl(std::string_view url) {
  std::string out(url);
  // scheme://user:password@host/... -> scheme://user:***@host/...
  size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    size_t authority = scheme + 3;
    size_t end = out.find_first_of("/?", authority);
    if (end == std::string::npos) end = out.size();
    size_t at = out.rfind('@', end);
    size_t colon = out.find(':', authority);
    if (at != std::string::npos && at >= authority && colon != std::string::npos && colon < at) {
      out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  // ...?password=secret&...
  for (size_t pos = out.find("password="); pos != std::string::npos;
       pos = out.find("password=", pos + 1)) {
    size_t value = pos + 9;
    size_t value_end = out.find('&', value);
    if (value_end == std::string::npos) value_end = out.size();
    out.replace(value, value_end - value, "***");
  }
  return out;
}

}  // namespace outpost::hub::sql
