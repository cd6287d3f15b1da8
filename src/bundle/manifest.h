// The release bundle manifest (`manifest.json`, docs/bundles.md): what a
// bundle holds and where it may run. The manifest is the signed object:
// every payload file is bound to it by size and SHA-256.
//
//   {
//     "format_version": 1,
//     "release": "resnet50-2024-06",
//     "sequence": 42,                              // monotonic, >= 1
//     "created": "2024-06-01T12:00:00Z",
//     "target": {"arch": "x86_64", "accelerator": "cpu", "min_agent_version": "0.1.0"},
//     "files": [{"path": "models/resnet/1/model.onnx", "size": 102400,
//                "sha256": "<64 lowercase hex>", "executable": false}],
//     "self_test": [{"name": "cat", "model": "resnet", "version": "1",
//                    "inputs": [<KServe v2 JSON tensor>],
//                    "expected_outputs": [{<tensor>, "absolute_tolerance": 1e-5,
//                                          "relative_tolerance": 1e-4}]}],
//     "baseline": {"resnet": {"output": "prob", "bin_edges": [0, 0.5, 1],
//                             "proportions": [0.2, 0.8], "samples": 1000}}
//   }
//
// Unknown keys are ignored (a change that old agents must not ignore bumps
// format_version). All functions here are pure and thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace outpost::bundle {

inline constexpr int kFormatVersion = 1;
inline constexpr std::string_view kManifestName = "manifest.json";
inline constexpr std::string_view kSignatureName = "signature.json";

// Payload files live under one of these top-level folders.
inline constexpr std::string_view kPayloadRoots[] = {"models/", "config/", "runtime/"};
inline constexpr std::string_view kRuntimePath = "runtime/outpost-serve";

inline constexpr std::string_view kArchitectures[] = {"x86_64", "aarch64"};
inline constexpr std::string_view kAccelerators[] = {"cpu", "cuda"};

struct FileEntry {
  std::string path;         // relative, validated by ValidateBundlePath
  uint64_t size = 0;        // bytes
  std::string sha256;       // 64 lowercase hex characters
  bool executable = false;  // unpacked 0755 instead of 0644

  bool operator==(const FileEntry&) const = default;
};

struct Target {
  std::string arch;               // one of kArchitectures
  std::string accelerator;        // one of kAccelerators; "cpu" runs anywhere
  std::string min_agent_version;  // "MAJOR.MINOR.PATCH", empty = any

  bool operator==(const Target&) const = default;
};

// A KServe v2 JSON tensor: {"name", "datatype", "shape", "data"}. `data` is
// kept as JSON (flat or nested, row-major) so the agent can send it to
// outpost-serve unchanged; its element count matches `shape`.
struct Tensor {
  std::string name;
  std::string datatype;  // BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES
  std::vector<int64_t> shape;
  nlohmann::json data;

  bool operator==(const Tensor&) const = default;
};

struct ExpectedOutput {
  Tensor tensor;               // numeric or BOOL (BYTES outputs cannot be compared)
  std::vector<double> values;  // tensor.data flattened (BOOL as 0/1)
  double absolute_tolerance = 1e-5;
  double relative_tolerance = 1e-4;

  bool operator==(const ExpectedOutput&) const = default;
};

struct SelfTestCase {
  std::string name;     // defaults to "<model>#<index>"
  std::string model;    // has files under models/<model>/
  std::string version;  // empty = the version the server picks
  std::vector<Tensor> inputs;
  std::vector<ExpectedOutput> expected_outputs;

  bool operator==(const SelfTestCase&) const = default;
};

// Histogram of one output's confidence on reference data, for drift checks.
struct OutputBaseline {
  std::string output;               // output tensor name
  std::vector<double> bin_edges;    // >= 2, strictly increasing
  std::vector<double> proportions;  // bin_edges.size() - 1 values >= 0, sum 1 (+-1e-6)
  uint64_t samples = 0;             // 0 = not recorded

  bool operator==(const OutputBaseline&) const = default;
};

struct Manifest {
  int format_version = kFormatVersion;
  std::string release;  // 1..128 characters of [A-Za-z0-9._+@=,-]
  uint64_t sequence = 0;
  std::string created;  // RFC 3339 UTC, "YYYY-MM-DDTHH:MM:SSZ"
  Target target;
  std::vector<FileEntry> files;
  std::vector<SelfTestCase> self_tests;
  std::map<std::string, OutputBaseline> baselines;  // by model name

  // Sum of file sizes, saturating at UINT64_MAX.
  uint64_t TotalSize() const;
  const FileEntry* FindFile(std::string_view path) const;

  bool operator==(const Manifest&) const = default;
};

// Parses and validates manifest.json. Errors carry Reason::kMalformedManifest
// and name the field: "manifest.json: field 'files[2].sha256': must be 64
// lowercase hex characters". A bad file path carries the path's reason
// (kAbsolutePath, kPathTraversal, kInvalidPath); two equal paths, or a path
// that is also another's directory, kDuplicateName.
absl::StatusOr<Manifest> ParseManifest(std::string_view json);

// Canonical manifest.json (sorted keys, 2-space indent, trailing newline).
// ParseManifest(SerializeManifest(m)) == m for any manifest that parses.
std::string SerializeManifest(const Manifest& manifest);

// A payload path: relative, '/'-separated, components of
// [A-Za-z0-9._+@=,-] (not "." or ".."), each <= 255 bytes, whole <= 1024,
// under one of kPayloadRoots. Errors carry kAbsolutePath ("/x"),
// kPathTraversal (a ".." component) or kInvalidPath (anything else).
absl::Status ValidateBundlePath(std::string_view path);

// The self-test file given to `outpost bundle build --self-test`: a JSON
// array of cases as in the manifest's "self_test". `source` names the file
// in errors (InvalidArgument).
absl::StatusOr<std::vector<SelfTestCase>> ParseSelfTests(std::string_view json,
                                                         std::string_view source);
// The baseline file given to `--baseline`: a JSON object as in the
// manifest's "baseline". Errors: InvalidArgument naming `source`.
absl::StatusOr<std::map<std::string, OutputBaseline>> ParseBaselines(std::string_view json,
                                                                     std::string_view source);

// numpy.allclose semantics: |actual - expected| <= abs + rel * |expected|
// for every element. InvalidArgument says which element and by how much;
// a count mismatch is also InvalidArgument.
absl::Status CompareOutput(const ExpectedOutput& expected, const std::vector<double>& actual);

// Compares "MAJOR.MINOR.PATCH" versions (a missing part counts as 0; a
// suffix after '-' or '+' is ignored): <0, 0, >0. InvalidArgument when either
// is not a version.
absl::StatusOr<int> CompareVersions(std::string_view a, std::string_view b);

// Current UTC time as RFC 3339 ("2024-06-01T12:00:00Z"), from `unix_seconds`.
std::string FormatRfc3339(int64_t unix_seconds);

}  // namespace outpost::bundle
