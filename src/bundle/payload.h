// Internal to src/bundle (and its fuzzers): the steps Verify, Unpack,
// CheckPayload and SignBundle share.
#pragma once

#include <optional>
#include <string>

#include "bundle/archive_reader.h"
#include "bundle/limits.h"
#include "bundle/manifest.h"
#include "common/status.h"

namespace outpost::bundle {

// Largest signature.json accepted (a real one is ~200 bytes).
inline constexpr uint64_t kMaxSignatureBytes = 64 * 1024;

struct BundleHead {
  std::string manifest_json;
  std::optional<std::string> signature_json;  // absent: unsigned
};

// Reads manifest.json (must be the first member) and signature.json (if it
// is the second); leaves the reader at the first payload entry.
absl::StatusOr<BundleHead> ReadHead(ArchiveReader& reader, const Limits& limits);

// kDecompressionBomb when the manifest exceeds max_files or
// max_unpacked_bytes.
absl::Status CheckManifestLimits(const Manifest& manifest, const Limits& limits);

// Receives each payload file as it streams (already size-checked; the hash
// is checked before EndFile).
class PayloadSink {
 public:
  virtual ~PayloadSink() = default;
  virtual absl::Status BeginFile(const FileEntry& file) = 0;
  virtual absl::Status Write(std::string_view data) = 0;
  virtual absl::Status EndFile(const FileEntry& file) = 0;
};

// Streams every payload entry after the head, checking it against
// `manifest` (see CheckPayload in bundle.h for the refusals). `sink` may be
// null (check only).
absl::Status StreamPayload(ArchiveReader& reader, const BundleHead& head, const Manifest& manifest,
                           const Limits& limits, PayloadSink* sink);

}  // namespace outpost::bundle
