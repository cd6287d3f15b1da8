// Error handling for all of Outpost: absl::Status / absl::StatusOr values,
// never exceptions on internal paths. Library exceptions (ONNX Runtime's C++
// API, nlohmann-json, yaml-cpp) are caught at the call site and converted.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

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

// Maps a status to the HTTP status code an API should answer with.
int HttpStatusFor(const absl::Status& status);

}  // namespace outpost
