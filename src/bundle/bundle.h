// Release bundles: verify, unpack, inspect and sign (docs/bundles.md).
//
// A bundle is one .tar.zst file: manifest.json first, signature.json second
// (detached Ed25519 signature over the exact manifest.json bytes), then the
// payload files the manifest lists, each bound to it by size and SHA-256.
//
// The device's flow (outpost-agent):
//
//   ASSIGN_OR_RETURN(VerifiedManifest verified, Verify(path, trust, facts));
//   RETURN_IF_ERROR(Unpack(path, verified, slot_dir));   // one streaming pass
//
// Verify reads only the head of the bundle (manifest + signature); Unpack
// reads the payload once, hashing while it writes, and refuses at the first
// file that does not match. Every refusal carries a Reason (bundle/reason.h)
// with a message naming the file, field or limit at fault; errors without a
// reason are I/O errors about the local machine, not verdicts on the bundle.
//
// Thread safety: all functions are thread-safe (no shared state); concurrent
// Unpacks need different destinations.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "bundle/limits.h"
#include "bundle/manifest.h"
#include "bundle/reason.h"
#include "bundle/signing.h"
#include "common/status.h"

namespace outpost::bundle {

// What the device knows about itself. Empty fields are not checked (the CLI
// checks only what it is told).
struct DeviceFacts {
  std::string arch;                       // "x86_64", "aarch64"
  std::vector<std::string> accelerators;  // healthy ones, e.g. {"cpu", "cuda"}; cpu is implied
  std::string agent_version;              // "MAJOR.MINOR.PATCH"
  // Refuse sequence numbers below this (the committed release's sequence,
  // so that a reinstall of the same release passes and older ones do not).
  uint64_t sequence_floor = 0;
};

// This machine's architecture in manifest spelling (uname: arm64 -> aarch64).
std::string HostArch();

// Target and sequence checks alone (Verify runs them). Errors:
// kTargetMismatch naming the constraint, kSequenceBelowFloor;
// InvalidArgument without a reason if facts.agent_version is not a version.
absl::Status CheckTarget(const Manifest& manifest, const DeviceFacts& facts);

namespace internal {
struct VerifiedManifestAccess;
}

// A manifest whose signature verified against a trust store and whose
// target matched the device. Only Verify makes one, so a function taking a
// VerifiedManifest cannot be handed an unverified manifest.
class VerifiedManifest {
 public:
  const Manifest& manifest() const { return manifest_; }
  // The exact signed bytes.
  const std::string& manifest_json() const { return manifest_json_; }
  const Signature& signature() const { return signature_; }

 private:
  friend struct internal::VerifiedManifestAccess;
  VerifiedManifest(Manifest manifest, std::string manifest_json, Signature signature)
      : manifest_(std::move(manifest)),
        manifest_json_(std::move(manifest_json)),
        signature_(std::move(signature)) {}

  Manifest manifest_;
  std::string manifest_json_;
  Signature signature_;
};

// Reads manifest.json and signature.json from the head of `bundle` and
// checks, in this order: archive shape (kMalformedArchive; manifest.json
// must be the first member; over-size manifest: kDecompressionBomb),
// kNoSignature, signature.json syntax and algorithm (kBadSignature),
// kUnknownKey, the signature (kBadSignature), manifest syntax
// (kMalformedManifest, or a path/duplicate reason), limits on total size
// and file count (kDecompressionBomb), target (kTargetMismatch) and
// sequence (kSequenceBelowFloor). The payload is not read: Unpack or
// CheckPayload check it. I/O errors (no such file) have no reason.
absl::StatusOr<VerifiedManifest> Verify(const std::filesystem::path& bundle,
                                        const TrustStore& trust, const DeviceFacts& facts,
                                        const Limits& limits = {});
// Verify on a bundle held in memory (release uploads, fuzzing).
absl::StatusOr<VerifiedManifest> VerifyBytes(std::string_view bundle, const TrustStore& trust,
                                             const DeviceFacts& facts, const Limits& limits = {});

// Streams the whole payload of `bundle` and checks it against `verified`
// without writing anything: kFileMissing, kExtraFile, kWrongSize,
// kWrongHash, kDuplicateName, kLink, kSpecialFile, path reasons,
// kDecompressionBomb, kMalformedArchive. kBadSignature when the bundle's
// manifest.json is no longer the verified one (the file changed).
absl::Status CheckPayload(const std::filesystem::path& bundle, const VerifiedManifest& verified,
                          const Limits& limits = {});

// Extracts the payload into `dest`, which must not exist (its parent must)
// or be an empty directory. One pass: each file is written with
// O_CREAT|O_EXCL|O_NOFOLLOW under directories Unpack created itself, its
// size and SHA-256 checked as it streams, then given mode 0644 (0755 if
// executable) and fsynced; directories are fsynced at the end, so once OK
// returns the tree is durable. Refusals as for CheckPayload. On any error
// everything Unpack created is removed (`dest` itself too if Unpack created
// it). Errors without a reason: FailedPrecondition (dest not empty / not a
// directory), I/O errors from errno. Fault points (test builds,
// common/fault_injection.h): bundle.mid_unpack, bundle.before_fsync,
// bundle.unpack_write.
absl::Status Unpack(const std::filesystem::path& bundle, const VerifiedManifest& verified,
                    const std::filesystem::path& dest, const Limits& limits = {});

// The head of a bundle, unverified (for `outpost bundle inspect`: never
// trust it). Errors: as Verify for archive shape and manifest syntax;
// kBadSignature when signature.json is present but malformed.
struct UnverifiedBundle {
  std::string manifest_json;
  Manifest manifest;
  std::optional<Signature> signature;
};
absl::StatusOr<UnverifiedBundle> Inspect(const std::filesystem::path& bundle,
                                         const Limits& limits = {});

// Writes `out` = `in` signed by `key`: manifest.json (same bytes), a new
// signature.json (replacing any existing one, e.g. to rotate keys), then
// the payload re-streamed. Refuses to sign a bundle whose payload does not
// match its manifest (the payload refusals of CheckPayload). `out` may be
// `in`: it is replaced atomically. `level` is the zstd level of `out`.
absl::Status SignBundle(const std::filesystem::path& in, const PrivateKey& key,
                        const std::filesystem::path& out, int level = 3, const Limits& limits = {});

}  // namespace outpost::bundle
