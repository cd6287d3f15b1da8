// Building a release bundle from a model repository and friends
// (`outpost bundle build`, docs/bundles.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "bundle/manifest.h"
#include "bundle/signing.h"
#include "common/status.h"

namespace outpost::bundle {

struct BuildOptions {
  // A model repository: <model>/<version>/model.onnx, optional
  // <model>/config.yaml and other regular files (labels). Packed under
  // models/. Symlinks are refused (copy the file instead).
  std::filesystem::path models_dir;
  std::vector<std::filesystem::path> config_files;  // packed as config/<file name>
  std::filesystem::path runtime_binary;             // packed as runtime/outpost-serve; empty = none
  std::filesystem::path self_test_file;             // JSON array of cases; empty = none
  std::filesystem::path baseline_file;              // JSON object by model; empty = none
  std::string release;
  uint64_t sequence = 0;
  std::string arch;  // empty = HostArch()
  std::string accelerator = "cpu";
  std::string min_agent_version;  // empty = any
  // Seconds since the epoch for "created" and tar mtimes; -1 =
  // $SOURCE_DATE_EPOCH when set (reproducible builds), else now.
  int64_t created_unix = -1;
  // zstd level. Model weights hardly compress: 3 costs little over 1 and
  // wins on configs and runtimes.
  int compression_level = 3;
  // Sign while building (same result as build + `outpost bundle sign`).
  const PrivateKey* signing_key = nullptr;
};

// Writes the bundle to `out` (atomically) and returns its manifest. Every
// file is hashed, then hashed again while archived, so a file that changes
// during the build fails it instead of producing a bundle devices refuse.
// The manifest is checked exactly as a device would (ParseManifest, default
// Limits). Errors: InvalidArgument for bad options or input files (named,
// e.g. "selftest.json: field '[0].model' ..."), I/O errors from errno,
// FailedPrecondition for a file that changed while being built.
absl::StatusOr<Manifest> BuildBundle(const BuildOptions& options, const std::filesystem::path& out);

}  // namespace outpost::bundle
