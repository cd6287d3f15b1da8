#include "bundle/signing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "bundle/reason.h"
#include "bundle/test_support.h"
#include "common/sha256.h"

namespace outpost::bundle {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

std::string Message(const absl::Status& status) { return std::string(MessageOf(status)); }

mode_t ModeOf(const std::filesystem::path& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

TEST(SigningTest, DefaultKeyIdIsSha256PrefixOfPublicKey) {
  absl::StatusOr<KeyPair> pair = GenerateKeyPair();
  ASSERT_TRUE(pair.ok()) << pair.status();
  std::string_view raw(reinterpret_cast<const char*>(pair->public_key.bytes.data()), 32);
  EXPECT_EQ(pair->public_key.key_id, Sha256::HexOf(raw).substr(0, 16));
  EXPECT_EQ(pair->private_key.key_id, pair->public_key.key_id);
  EXPECT_EQ(pair->private_key.public_key(), pair->public_key);

  absl::StatusOr<KeyPair> named = GenerateKeyPair("release-2024");
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->public_key.key_id, "release-2024");
  EXPECT_FALSE(GenerateKeyPair("../evil").ok());
  EXPECT_FALSE(GenerateKeyPair(".hidden").ok());
  EXPECT_FALSE(GenerateKeyPair(std::string(65, 'a')).ok());
}

TEST(SigningTest, KeyFilesModesRoundTripAndNoOverwrite) {
  TempDir dir;
  absl::StatusOr<KeyPair> pair = GenerateKeyPair("k1");
  ASSERT_TRUE(pair.ok());
  absl::StatusOr<KeyFiles> files = WriteKeyPair(*pair, dir / "keys");
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->private_key, dir / "keys" / "k1.key");
  EXPECT_EQ(ModeOf(files->private_key), 0600u);
  EXPECT_EQ(ModeOf(files->public_key), 0644u);
  EXPECT_EQ(ModeOf(dir / "keys"), 0700u);
  // No temporary files left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir / "keys"),
                          std::filesystem::directory_iterator()),
            2);
  // The public file holds no secret.
  std::string secret_b64 =
      nlohmann::json::parse(ReadBytes(files->private_key))["secret_key"].get<std::string>();
  EXPECT_THAT(ReadBytes(files->public_key), Not(HasSubstr(secret_b64.substr(0, 40))));

  absl::StatusOr<PrivateKey> loaded = LoadPrivateKey(files->private_key);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->bytes, pair->private_key.bytes);
  absl::StatusOr<PublicKey> public_key = LoadPublicKey(files->public_key);
  ASSERT_TRUE(public_key.ok());
  EXPECT_EQ(*public_key, pair->public_key);

  absl::StatusOr<KeyFiles> again = WriteKeyPair(*pair, dir / "keys");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(loaded->bytes, LoadPrivateKey(files->private_key)->bytes);
}

TEST(SigningTest, PrivateKeyReadableByOthersIsRefused) {
  TempDir dir;
  absl::StatusOr<KeyPair> pair = GenerateKeyPair("k1");
  absl::StatusOr<KeyFiles> files = WriteKeyPair(*pair, dir.path());
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(::chmod(files->private_key.c_str(), 0644), 0);
  absl::Status status = LoadPrivateKey(files->private_key).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(status), HasSubstr("chmod 600"));
}

TEST(SigningTest, DamagedPrivateKeyIsDetected) {
  absl::StatusOr<KeyPair> pair = GenerateKeyPair("k1");
  PrivateKey damaged;
  damaged.key_id = "k1";
  damaged.bytes = pair->private_key.bytes;
  damaged.bytes[40] ^= 1;  // in the public half
  absl::Status status = ParsePrivateKey(SerializePrivateKey(damaged), "k1.key").status();
  EXPECT_THAT(Message(status), HasSubstr("damaged"));
  EXPECT_THAT(Message(ParsePrivateKey("{\"algorithm\": \"rsa\"}", "x.key").status()),
              HasSubstr("only ed25519"));
}

TEST(SigningTest, SignAndVerify) {
  absl::StatusOr<KeyPair> a = GenerateKeyPair("a");
  absl::StatusOr<KeyPair> b = GenerateKeyPair("b");
  TrustStore trust;
  ASSERT_TRUE(trust.Add(a->public_key).ok());
  std::string manifest = "{\"release\": \"x\"}\n";
  Signature signature = SignManifest(manifest, a->private_key);
  EXPECT_TRUE(VerifyManifestSignature(manifest, signature, trust).ok());

  absl::StatusOr<Signature> parsed = ParseSignature(SerializeSignature(signature));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, signature);

  std::string tampered = manifest;
  tampered[3] ^= 1;
  absl::Status status = VerifyManifestSignature(tampered, signature, trust);
  EXPECT_EQ(ReasonOf(status), Reason::kBadSignature);

  status = VerifyManifestSignature(manifest, SignManifest(manifest, b->private_key), trust);
  EXPECT_EQ(ReasonOf(status), Reason::kUnknownKey);
  EXPECT_THAT(Message(status), HasSubstr("'b'"));

  // Same id, different key: the signature does not verify.
  Signature forged = SignManifest(manifest, b->private_key);
  forged.key_id = "a";
  EXPECT_EQ(ReasonOf(VerifyManifestSignature(manifest, forged, trust)), Reason::kBadSignature);
}

TEST(SigningTest, MalformedSignatureJson) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not valid JSON"},
      {"[]", "must be a JSON object"},
      {R"({"key_id": "a", "signature": "AA=="})", "'algorithm' is missing"},
      {R"({"algorithm": "rsa", "key_id": "a", "signature": "AA=="})", "only ed25519"},
      {R"({"algorithm": "ed25519", "signature": "AA=="})", "'key_id' is missing"},
      {R"({"algorithm": "ed25519", "key_id": "a"})", "'signature' is missing"},
      {R"({"algorithm": "ed25519", "key_id": "a", "signature": "AA=="})", "base64 of 64 bytes"},
      {R"({"algorithm": "ed25519", "key_id": "a/b", "signature": "AA=="})", "'key_id'"},
  };
  for (const auto& [json, expected] : cases) {
    absl::Status status = ParseSignature(json).status();
    EXPECT_EQ(ReasonOf(status), Reason::kBadSignature) << json;
    EXPECT_THAT(Message(status), HasSubstr(expected)) << json;
  }
}

TEST(SigningTest, TrustStoreDirectory) {
  TempDir dir;
  absl::StatusOr<KeyPair> a = GenerateKeyPair("a");
  absl::StatusOr<KeyPair> b = GenerateKeyPair("b");
  ASSERT_TRUE(WriteKeyPair(*a, dir.path()).ok());
  ASSERT_TRUE(WriteKeyPair(*b, dir.path()).ok());
  WriteBytes(dir / "README", "not a key");
  absl::StatusOr<TrustStore> trust = TrustStore::LoadDirectory(dir.path());
  ASSERT_TRUE(trust.ok()) << trust.status();
  EXPECT_EQ(trust->size(), 2u);
  ASSERT_NE(trust->Find("a"), nullptr);
  EXPECT_EQ(*trust->Find("b"), b->public_key);
  EXPECT_EQ(trust->Find("c"), nullptr);

  TempDir empty;
  EXPECT_EQ(TrustStore::LoadDirectory(empty.path()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(TrustStore::LoadDirectory(empty / "missing").status().code(),
            absl::StatusCode::kNotFound);

  // Two files claiming the same id with different keys.
  PublicKey impostor = b->public_key;
  impostor.key_id = "a";
  WriteBytes(dir / "zz.pub", SerializePublicKey(impostor));
  absl::Status status = TrustStore::LoadDirectory(dir.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Message(status), HasSubstr("zz.pub"));

  WriteBytes(dir / "zz.pub",
             "{\"algorithm\": \"ed25519\", \"key_id\": \"z\", \"public_key\": \"xx\"}");
  status = TrustStore::LoadDirectory(dir.path()).status();
  EXPECT_THAT(Message(status), HasSubstr("zz.pub: field 'public_key'"));
}

}  // namespace
}  // namespace outpost::bundle
