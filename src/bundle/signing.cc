#include "bundle/signing.h"

#include <sodium.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <span>
#include <system_error>
#include <vector>

#include "bundle/reason.h"
#include "common/atomic_file.h"
#include "common/sha256.h"

namespace outpost::bundle {
namespace {

using json = nlohmann::json;

absl::Status InitSodium() {
  // sodium_init is idempotent and thread-safe; 1 = already initialised.
  if (sodium_init() < 0) return absl::InternalError("libsodium failed to initialise");
  return absl::OkStatus();
}

std::string Base64(const uint8_t* data, size_t size) {
  std::string out(sodium_base64_ENCODED_LEN(size, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), data, size, sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // the terminating NUL
  return out;
}

// Decodes standard base64 of exactly out.size() bytes.
bool FromBase64(std::string_view text, std::span<uint8_t> out) {
  size_t decoded = 0;
  const char* end = nullptr;
  if (sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr, &decoded, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0) {
    return false;
  }
  return decoded == out.size() && end == text.data() + text.size();
}

absl::StatusOr<json> ParseObject(std::string_view text, std::string_view source, Reason reason) {
  json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Refuse(reason, StrCat(source, ": not valid JSON"));
  if (!root.is_object()) return Refuse(reason, StrCat(source, ": must be a JSON object"));
  return root;
}

absl::StatusOr<std::string> StringField(const json& root, std::string_view key,
                                        std::string_view source, Reason reason) {
  auto it = root.find(key);
  if (it == root.end()) return Refuse(reason, StrCat(source, ": field '", key, "' is missing"));
  if (!it->is_string()) {
    return Refuse(reason,
                  StrCat(source, ": field '", key, "' must be a string, got ", it->type_name()));
  }
  return it->get<std::string>();
}

absl::Status CheckAlgorithm(const json& root, std::string_view source, Reason reason) {
  ASSIGN_OR_RETURN(std::string algorithm, StringField(root, "algorithm", source, reason));
  if (algorithm != kSignatureAlgorithm) {
    return Refuse(reason, StrCat(source, ": field 'algorithm': unsupported '", algorithm,
                                 "'; only ed25519 is supported"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> KeyIdField(const json& root, std::string_view source, Reason reason) {
  ASSIGN_OR_RETURN(std::string key_id, StringField(root, "key_id", source, reason));
  absl::Status valid = ValidateKeyId(key_id);
  if (!valid.ok()) {
    return Refuse(reason, StrCat(source, ": field 'key_id': ", MessageOf(valid)));
  }
  return key_id;
}

}  // namespace

PrivateKey::~PrivateKey() { sodium_memzero(bytes.data(), bytes.size()); }

PublicKey PrivateKey::public_key() const {
  PublicKey key;
  key.key_id = key_id;
  crypto_sign_ed25519_sk_to_pk(key.bytes.data(), bytes.data());
  return key;
}

std::string DefaultKeyId(const std::array<uint8_t, 32>& public_key) {
  std::string_view raw(reinterpret_cast<const char*>(public_key.data()), public_key.size());
  return Sha256::HexOf(raw).substr(0, 16);
}

absl::Status ValidateKeyId(std::string_view key_id) {
  bool ok = !key_id.empty() && key_id.size() <= 64 && key_id.front() != '.' &&
            std::all_of(key_id.begin(), key_id.end(), [](char c) {
              return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '.' || c == '_' || c == '-';
            });
  if (!ok) {
    return absl::InvalidArgumentError(
        StrCat("key id '", key_id,
               "' must be 1..64 characters of A-Z a-z 0-9 . _ - and not start with '.'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyPair> GenerateKeyPair(std::string_view name) {
  RETURN_IF_ERROR(InitSodium());
  if (!name.empty()) RETURN_IF_ERROR(ValidateKeyId(name));
  KeyPair pair;
  crypto_sign_keypair(pair.public_key.bytes.data(), pair.private_key.bytes.data());
  std::string id = name.empty() ? DefaultKeyId(pair.public_key.bytes) : std::string(name);
  pair.public_key.key_id = id;
  pair.private_key.key_id = std::move(id);
  return pair;
}

std::string SerializePublicKey(const PublicKey& key) {
  json root{{"algorithm", kSignatureAlgorithm},
            {"key_id", key.key_id},
            {"public_key", Base64(key.bytes.data(), key.bytes.size())}};
  return root.dump(2) + "\n";
}

std::string SerializePrivateKey(const PrivateKey& key) {
  std::string secret = Base64(key.bytes.data(), key.bytes.size());
  std::string out = StrCat("{\n  \"algorithm\": \"", kSignatureAlgorithm,
                           "\",\n  \"key_id\": ", json(key.key_id).dump(),
                           ",\n  \"secret_key\": \"", secret, "\"\n}\n");
  sodium_memzero(secret.data(), secret.size());
  return out;
}

absl::StatusOr<PublicKey> ParsePublicKey(std::string_view text, std::string_view source) {
  ASSIGN_OR_RETURN(json root, ParseObject(text, source, Reason::kNone));
  RETURN_IF_ERROR(CheckAlgorithm(root, source, Reason::kNone));
  PublicKey key;
  ASSIGN_OR_RETURN(key.key_id, KeyIdField(root, source, Reason::kNone));
  ASSIGN_OR_RETURN(std::string encoded, StringField(root, "public_key", source, Reason::kNone));
  if (!FromBase64(encoded, key.bytes)) {
    return absl::InvalidArgumentError(
        StrCat(source, ": field 'public_key' must be base64 of 32 bytes"));
  }
  return key;
}

absl::StatusOr<PrivateKey> ParsePrivateKey(std::string_view text, std::string_view source) {
  RETURN_IF_ERROR(InitSodium());
  ASSIGN_OR_RETURN(json root, ParseObject(text, source, Reason::kNone));
  RETURN_IF_ERROR(CheckAlgorithm(root, source, Reason::kNone));
  PrivateKey key;
  ASSIGN_OR_RETURN(key.key_id, KeyIdField(root, source, Reason::kNone));
  ASSIGN_OR_RETURN(std::string encoded, StringField(root, "secret_key", source, Reason::kNone));
  bool decoded = FromBase64(encoded, key.bytes);
  sodium_memzero(encoded.data(), encoded.size());
  if (!decoded) {
    return absl::InvalidArgumentError(
        StrCat(source, ": field 'secret_key' must be base64 of 64 bytes"));
  }
  // The second half is the public key; a damaged file would sign with a key
  // that no trust store holds, so check the halves agree.
  std::array<uint8_t, 32> derived_pk;
  std::array<uint8_t, 64> derived_sk;
  crypto_sign_seed_keypair(derived_pk.data(), derived_sk.data(), key.bytes.data());
  bool consistent = sodium_memcmp(derived_sk.data(), key.bytes.data(), derived_sk.size()) == 0;
  sodium_memzero(derived_sk.data(), derived_sk.size());
  if (!consistent) {
    return absl::InvalidArgumentError(
        StrCat(source, ": field 'secret_key' is damaged (its public half does not match)"));
  }
  return key;
}

absl::StatusOr<KeyFiles> WriteKeyPair(const KeyPair& pair, const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      return absl::InternalError(
          StrCat("cannot create key directory ", dir.string(), ": ", ec.message()));
    }
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
  } else if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(StrCat(dir.string(), " is not a directory"));
  }
  KeyFiles files{dir / StrCat(pair.private_key.key_id, ".key"),
                 dir / StrCat(pair.public_key.key_id, ".pub")};
  for (const auto& path : {files.private_key, files.public_key}) {
    if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) {
      return absl::AlreadyExistsError(
          StrCat(path.string(),
                 " already exists; keys are never overwritten (choose --name or "
                 "another --out)"));
    }
  }
  std::string secret = SerializePrivateKey(pair.private_key);
  absl::Status written = WriteFileAtomic(files.private_key, secret, 0600);
  sodium_memzero(secret.data(), secret.size());
  RETURN_IF_ERROR(written);
  RETURN_IF_ERROR(WriteFileAtomic(files.public_key, SerializePublicKey(pair.public_key), 0644));
  return files;
}

absl::StatusOr<PublicKey> LoadPublicKey(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParsePublicKey(text, path.string());
}

absl::StatusOr<PrivateKey> LoadPrivateKey(const std::filesystem::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::ErrnoToStatus(errno, StrCat("cannot stat private key ", path.string()));
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return absl::FailedPreconditionError(StrCat("private key ", path.string(),
                                                " is accessible by group or others (mode ", mode,
                                                "); run chmod 600 on it"));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  absl::StatusOr<PrivateKey> key = ParsePrivateKey(text, path.string());
  sodium_memzero(text.data(), text.size());
  return key;
}

absl::StatusOr<TrustStore> TrustStore::LoadDirectory(const std::filesystem::path& dir) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".pub") files.push_back(it->path());
  }
  if (ec) {
    return absl::NotFoundError(
        StrCat("cannot read trusted keys directory ", dir.string(), ": ", ec.message()));
  }
  if (files.empty()) {
    return absl::NotFoundError(StrCat("no *.pub key files in ", dir.string()));
  }
  std::sort(files.begin(), files.end());
  TrustStore store;
  for (const auto& path : files) {
    ASSIGN_OR_RETURN(PublicKey key, LoadPublicKey(path));
    absl::Status added = store.Add(std::move(key));
    if (!added.ok()) return Annotate(added, path.string());
  }
  return store;
}

absl::Status TrustStore::Add(PublicKey key) {
  auto it = keys_.find(key.key_id);
  if (it != keys_.end()) {
    if (it->second == key) return absl::OkStatus();
    return absl::AlreadyExistsError(
        StrCat("two different public keys have the key id '", key.key_id, "'"));
  }
  std::string id = key.key_id;
  keys_.emplace(std::move(id), std::move(key));
  return absl::OkStatus();
}

const PublicKey* TrustStore::Find(std::string_view key_id) const {
  auto it = keys_.find(key_id);
  return it == keys_.end() ? nullptr : &it->second;
}

Signature SignManifest(std::string_view manifest_bytes, const PrivateKey& key) {
  // Cannot fail in practice: a PrivateKey comes from GenerateKeyPair or
  // ParsePrivateKey, which initialised libsodium already.
  (void)InitSodium();
  Signature signature;
  signature.key_id = key.key_id;
  crypto_sign_detached(signature.bytes.data(), nullptr,
                       reinterpret_cast<const unsigned char*>(manifest_bytes.data()),
                       manifest_bytes.size(), key.bytes.data());
  return signature;
}

std::string SerializeSignature(const Signature& signature) {
  json root{{"algorithm", signature.algorithm},
            {"key_id", signature.key_id},
            {"signature", Base64(signature.bytes.data(), signature.bytes.size())}};
  return root.dump(2) + "\n";
}

absl::StatusOr<Signature> ParseSignature(std::string_view text) {
  constexpr std::string_view kSource = "signature.json";
  ASSIGN_OR_RETURN(json root, ParseObject(text, kSource, Reason::kBadSignature));
  RETURN_IF_ERROR(CheckAlgorithm(root, kSource, Reason::kBadSignature));
  Signature signature;
  ASSIGN_OR_RETURN(signature.key_id, KeyIdField(root, kSource, Reason::kBadSignature));
  ASSIGN_OR_RETURN(std::string encoded,
                   StringField(root, "signature", kSource, Reason::kBadSignature));
  if (!FromBase64(encoded, signature.bytes)) {
    return Refuse(Reason::kBadSignature,
                  StrCat(kSource, ": field 'signature' must be base64 of 64 bytes"));
  }
  return signature;
}

absl::Status VerifyManifestSignature(std::string_view manifest_bytes, const Signature& signature,
                                     const TrustStore& trust) {
  RETURN_IF_ERROR(InitSodium());
  if (signature.algorithm != kSignatureAlgorithm) {
    return Refuse(Reason::kBadSignature,
                  StrCat("unsupported signature algorithm '", signature.algorithm, "'"));
  }
  const PublicKey* key = trust.Find(signature.key_id);
  if (key == nullptr) {
    return Refuse(Reason::kUnknownKey,
                  StrCat("signed by key '", signature.key_id, "', which is not trusted (",
                         trust.size(), " trusted keys); add its .pub file to the trusted keys"));
  }
  if (crypto_sign_verify_detached(signature.bytes.data(),
                                  reinterpret_cast<const unsigned char*>(manifest_bytes.data()),
                                  manifest_bytes.size(), key->bytes.data()) != 0) {
    return Refuse(Reason::kBadSignature,
                  StrCat("the signature by key '", signature.key_id,
                         "' does not match manifest.json (tampered manifest or wrong key)"));
  }
  return absl::OkStatus();
}

}  // namespace outpost::bundle
