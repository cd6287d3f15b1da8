#include "bundle/reason.h"

#include <array>
#include <utility>

#include "absl/strings/cord.h"

namespace outpost::bundle {
namespace {

constexpr absl::string_view kPayloadUrl = "type.outpost.dev/outpost.bundle.Reason";

constexpr std::array<std::pair<Reason, std::string_view>, 19> kNames = {{
    {Reason::kNone, "none"},
    {Reason::kMalformedArchive, "malformed_archive"},
    {Reason::kMalformedManifest, "malformed_manifest"},
    {Reason::kNoSignature, "no_signature"},
    {Reason::kUnknownKey, "unknown_key"},
    {Reason::kBadSignature, "bad_signature"},
    {Reason::kFileMissing, "file_missing"},
    {Reason::kExtraFile, "extra_file"},
    {Reason::kWrongHash, "wrong_hash"},
    {Reason::kWrongSize, "wrong_size"},
    {Reason::kAbsolutePath, "absolute_path"},
    {Reason::kPathTraversal, "path_traversal"},
    {Reason::kInvalidPath, "invalid_path"},
    {Reason::kLink, "link"},
    {Reason::kSpecialFile, "special_file"},
    {Reason::kDuplicateName, "duplicate_name"},
    {Reason::kDecompressionBomb, "decompression_bomb"},
    {Reason::kTargetMismatch, "target_mismatch"},
    {Reason::kSequenceBelowFloor, "sequence_below_floor"},
}};

absl::StatusCode CodeFor(Reason reason) {
  switch (reason) {
    case Reason::kNone:  // an input error that is not about a bundle
      return absl::StatusCode::kInvalidArgument;
    case Reason::kNoSignature:
    case Reason::kUnknownKey:
    case Reason::kBadSignature:
      return absl::StatusCode::kPermissionDenied;
    case Reason::kFileMissing:
    case Reason::kExtraFile:
    case Reason::kWrongHash:
    case Reason::kWrongSize:
      return absl::StatusCode::kDataLoss;
    case Reason::kDecompressionBomb:
      return absl::StatusCode::kResourceExhausted;
    case Reason::kTargetMismatch:
    case Reason::kSequenceBelowFloor:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInvalidArgument;
  }
}

}  // namespace

std::string_view ReasonName(Reason reason) {
  for (const auto& [value, name] : kNames) {
    if (value == reason) return name;
  }
  return "unknown";
}

std::optional<Reason> ReasonFromName(std::string_view name) {
  for (const auto& [value, known] : kNames) {
    if (known == name) return value;
  }
  return std::nullopt;
}

Reason ReasonOf(const absl::Status& status) {
  if (status.ok()) return Reason::kNone;
  auto payload = status.GetPayload(kPayloadUrl);
  if (!payload.has_value()) return Reason::kNone;
  std::string name(*payload);
  return ReasonFromName(name).value_or(Reason::kNone);
}

absl::Status Refuse(Reason reason, std::string message) {
  absl::Status status(CodeFor(reason), absl::string_view(message.data(), message.size()));
  if (reason != Reason::kNone) {
    std::string_view name = ReasonName(reason);
    status.SetPayload(kPayloadUrl, absl::Cord(absl::string_view(name.data(), name.size())));
  }
  return status;
}

absl::Status Annotate(const absl::Status& status, std::string_view prefix) {
  if (status.ok()) return status;
  absl::Status out(status.code(), StrCat(prefix, ": ", MessageOf(status)));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace outpost::bundle
