// Ed25519 keys (libsodium), the device's trust store, and the detached
// signature over a bundle's exact manifest.json bytes.
//
// Key files are small JSON documents (docs/bundles.md):
//   <id>.pub  {"algorithm": "ed25519", "key_id": "<id>", "public_key": "<base64, 32 bytes>"}
//   <id>.key  {"algorithm": "ed25519", "key_id": "<id>", "secret_key": "<base64, 64 bytes>"}
//             written 0600; loading refuses a private key file that group or
//             others can access.
// signature.json: {"algorithm": "ed25519", "key_id": "<id>", "signature": "<base64, 64 bytes>"}
//
// Key id: the first 16 hex characters of SHA-256(public key), unless the
// operator names the key (1..64 of [A-Za-z0-9._-], not starting with '.').
//
// Thread safety: free functions are thread-safe; a TrustStore is safe for
// concurrent const use.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include "common/status.h"

namespace outpost::bundle {

inline constexpr std::string_view kSignatureAlgorithm = "ed25519";

struct PublicKey {
  std::string key_id;
  std::array<uint8_t, 32> bytes{};

  bool operator==(const PublicKey&) const = default;
};

// Move-only; the secret bytes are wiped when the object dies.
struct PrivateKey {
  std::string key_id;
  std::array<uint8_t, 64> bytes{};  // libsodium layout: seed || public key

  PrivateKey() = default;
  PrivateKey(PrivateKey&&) = default;
  PrivateKey& operator=(PrivateKey&&) = default;
  PrivateKey(const PrivateKey&) = delete;
  PrivateKey& operator=(const PrivateKey&) = delete;
  ~PrivateKey();

  PublicKey public_key() const;
};

struct KeyPair {
  PublicKey public_key;
  PrivateKey private_key;
};

// Key id derived from the public key: 16 lowercase hex characters.
std::string DefaultKeyId(const std::array<uint8_t, 32>& public_key);
// InvalidArgument unless 1..64 of [A-Za-z0-9._-] not starting with '.'.
absl::Status ValidateKeyId(std::string_view key_id);

// A fresh keypair from the OS RNG; `name` empty = DefaultKeyId.
// Errors: InvalidArgument (bad name), Internal (libsodium failed to start).
absl::StatusOr<KeyPair> GenerateKeyPair(std::string_view name = "");

struct KeyFiles {
  std::filesystem::path private_key;  // <dir>/<id>.key, mode 0600
  std::filesystem::path public_key;   // <dir>/<id>.pub, mode 0644
};
// Writes both files (each: temp file, fsync, rename, fsync dir), creating
// `dir` with mode 0700 if missing. AlreadyExists if either file exists (a key
// is never overwritten); otherwise I/O errors from errno.
absl::StatusOr<KeyFiles> WriteKeyPair(const KeyPair& pair, const std::filesystem::path& dir);

std::string SerializePublicKey(const PublicKey& key);
std::string SerializePrivateKey(const PrivateKey& key);
// InvalidArgument naming `source` and the bad field.
absl::StatusOr<PublicKey> ParsePublicKey(std::string_view json, std::string_view source);
absl::StatusOr<PrivateKey> ParsePrivateKey(std::string_view json, std::string_view source);

absl::StatusOr<PublicKey> LoadPublicKey(const std::filesystem::path& path);
// FailedPrecondition when group/others have any access to the file.
absl::StatusOr<PrivateKey> LoadPrivateKey(const std::filesystem::path& path);

// The public keys a device (or `outpost bundle verify`) trusts. Several keys
// may be trusted at once, which is how a signing key is rotated.
class TrustStore {
 public:
  TrustStore() = default;

  // Every *.pub file in `dir` (other files are ignored). NotFound when the
  // directory holds none; InvalidArgument for a bad key file (named).
  static absl::StatusOr<TrustStore> LoadDirectory(const std::filesystem::path& dir);

  // AlreadyExists when a different key has the same id; adding the same key
  // twice is a no-op.
  absl::Status Add(PublicKey key);
  // nullptr when unknown.
  const PublicKey* Find(std::string_view key_id) const;
  size_t size() const { return keys_.size(); }

 private:
  std::map<std::string, PublicKey, std::less<>> keys_;
};

struct Signature {
  std::string key_id;
  std::string algorithm{kSignatureAlgorithm};
  std::array<uint8_t, 64> bytes{};

  bool operator==(const Signature&) const = default;
};

// Signs exactly `manifest_bytes`.
Signature SignManifest(std::string_view manifest_bytes, const PrivateKey& key);
std::string SerializeSignature(const Signature& signature);
// Errors carry Reason::kBadSignature ("signature.json: field 'signature': ...").
absl::StatusOr<Signature> ParseSignature(std::string_view json);
// OK when `signature` is a valid Ed25519 signature of `manifest_bytes` by a
// key in `trust`. Errors: Reason::kUnknownKey (key id not trusted; names the
// trusted ids), Reason::kBadSignature (wrong algorithm or signature).
absl::Status VerifyManifestSignature(std::string_view manifest_bytes, const Signature& signature,
                                     const TrustStore& trust);

}  // namespace outpost::bundle
