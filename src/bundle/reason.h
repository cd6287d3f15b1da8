// Why a bundle was refused: one reason code per kind of refusal, carried in
// the absl::Status payload so the agent can report a stable code to the hub
// next to the human-readable message.
//
//   absl::Status s = ...;            // from Verify, Unpack, CheckPayload, ...
//   Reason r = ReasonOf(s);          // kNone: not a verdict on the bundle
//   ReasonName(r);                   // "wrong_hash"
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outpost::bundle {

enum class Reason {
  kNone = 0,            // OK, or an error that is no verdict on the bundle (I/O)
  kMalformedArchive,    // not zstd/tar, truncated, manifest.json not first, ...
  kMalformedManifest,   // manifest.json is not valid JSON or a field is missing/invalid
  kNoSignature,         // no signature.json right after manifest.json
  kUnknownKey,          // signed by a key id the trust store does not hold
  kBadSignature,        // signature.json malformed or the signature does not verify
  kFileMissing,         // a file named in the manifest is not in the archive
  kExtraFile,           // the archive holds a file the manifest does not name
  kWrongHash,           // a file's SHA-256 differs from the manifest's
  kWrongSize,           // a file's size differs from the manifest's
  kAbsolutePath,        // a path starts with '/'
  kPathTraversal,       // a path has a ".." component
  kInvalidPath,         // empty/"."/empty components, bad characters, too long, bad prefix
  kLink,                // symlink or hardlink entry
  kSpecialFile,         // device, fifo, socket, directory or sparse entry
  kDuplicateName,       // the same path twice (archive or manifest), or file vs directory
  kDecompressionBomb,   // over the unpacked-size, file-count or compression-ratio limits
  kTargetMismatch,      // architecture, accelerator or minimum agent version
  kSequenceBelowFloor,  // sequence lower than the device's floor (downgrade/replay)
};

// Stable snake_case names ("wrong_hash"); the agent reports these.
std::string_view ReasonName(Reason reason);
std::optional<Reason> ReasonFromName(std::string_view name);

// The reason attached to `status`, kNone when there is none.
Reason ReasonOf(const absl::Status& status);

// An error status carrying `reason` (kNone: a plain InvalidArgument with no
// reason attached). The absl code follows the reason:
// InvalidArgument (malformed, paths, links), PermissionDenied (signature,
// keys), DataLoss (missing/extra/hash/size), ResourceExhausted (bomb),
// FailedPrecondition (target, sequence).
absl::Status Refuse(Reason reason, std::string message);

// `status` with "prefix: " before its message; code and reason kept.
absl::Status Annotate(const absl::Status& status, std::string_view prefix);

}  // namespace outpost::bundle
