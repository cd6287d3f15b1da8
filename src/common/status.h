// Error handling for all of Outpost: absl::Status / absl::StatusOr values,
// never exceptions on internal paths. Library exceptions (ONNX Runtime's C++
// API, nlohmann-json, yaml-cpp) are caught at the call site and converted.
#pragma once

#include <charconv>
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#define OUTPOST_CONCAT_INNER_(a, b) a##b
#define OUTPOST_CONCAT_(a, b) OUTPOST_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status outpost_status_ = (expr);           \
    if (!outpost_status_.ok()) return outpost_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` declares x from an absl::StatusOr or
// returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  OUTPOST_ASSIGN_OR_RETURN_IMPL_(OUTPOST_CONCAT_(outpost_statusor_, __LINE__), lhs, expr)
#define OUTPOST_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

namespace outpost {

// Debian's abseil is built with its own absl::string_view (not an alias of
// std::string_view), so absl::StrCat rejects std::string_view. Use these.
inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }
inline std::string_view MessageOf(const absl::Status& status) { return ToStd(status.message()); }

namespace strings_internal {
inline void Append(std::string* out, std::string_view s) { out->append(s); }
inline void Append(std::string* out, const char* s) { out->append(s ? s : "(null)"); }
inline void Append(std::string* out, const std::string& s) { out->append(s); }
inline void Append(std::string* out, absl::string_view s) { out->append(s.data(), s.size()); }
inline void Append(std::string* out, char c) { out->push_back(c); }
inline void Append(std::string* out, bool b) { out->append(b ? "true" : "false"); }
template <typename T>
requires(std::is_arithmetic_v<T> && !std::is_same_v<T, bool> &&
         !std::is_same_v<T, char>) void Append(std::string* out, T value) {
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}
// Any other string-like type (boost::beast::string_view, ...).
template <typename T>
requires(!std::is_arithmetic_v<T> && !std::is_convertible_v<T, std::string_view> &&
         requires(const T& t) {
           { t.data() } -> std::convertible_to<const char*>;
           { t.size() } -> std::convertible_to<size_t>;
         }) void Append(std::string* out, const T& s) {
  out->append(s.data(), s.size());
}
}  // namespace strings_internal

// Concatenates strings and numbers (numbers in their shortest exact form).
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (strings_internal::Append(&out, args), ...);
  return out;
}

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (strings_internal::Append(out, args), ...);
}

// Maps a status to the HTTP status code an API should answer with.
int HttpStatusFor(const absl::Status& status);

}  // namespace outpost
