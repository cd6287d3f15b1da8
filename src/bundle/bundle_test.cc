#include "bundle/bundle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zstd.h>

#include <filesystem>

#include "bundle/builder.h"
#include "bundle/test_support.h"
#include "common/sha256.h"

namespace outpost::bundle {
namespace {

using testing::CraftBundle;
using testing::CraftedEntry;
using ::testing::ElementsAre;
using testing::EntryFor;
using ::testing::HasSubstr;
using testing::RandomBytes;
using testing::ReadBytes;
using testing::SampleManifest;
using testing::TempDir;
using testing::WriteBytes;

std::string Message(const absl::Status& status) { return std::string(MessageOf(status)); }

mode_t ModeOf(const std::filesystem::path& path) {
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

class BundleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_a_ = std::move(GenerateKeyPair("key-a")).value();
    key_b_ = std::move(GenerateKeyPair("key-b")).value();
    ASSERT_TRUE(trust_.Add(key_a_.public_key).ok());
    facts_ = {"x86_64", {"cpu"}, "0.1.0", 0};
    model_ = RandomBytes(100000);
    config_ = "threshold: 0.5\n";
  }

  // The payload every crafted bundle starts from.
  std::vector<FileEntry> Files() const {
    return {EntryFor("models/m/1/model.onnx", model_), EntryFor("config/app.yaml", config_)};
  }
  std::vector<CraftedEntry> Payload() const {
    return {{"models/m/1/model.onnx", model_}, {"config/app.yaml", config_}};
  }

  // A bundle: manifest.json (`manifest_json`, or `manifest` serialized),
  // signature.json by `key` (none if null), then `payload`.
  std::filesystem::path Craft(const Manifest& manifest, std::vector<CraftedEntry> payload,
                              const PrivateKey* key, std::string manifest_json = "") {
    if (manifest_json.empty()) manifest_json = SerializeManifest(manifest);
    std::vector<CraftedEntry> entries = {{"manifest.json", manifest_json}};
    if (key != nullptr) {
      entries.push_back({"signature.json", SerializeSignature(SignManifest(manifest_json, *key))});
    }
    for (auto& entry : payload) entries.push_back(std::move(entry));
    std::filesystem::path path = dir_ / StrCat("crafted-", ++count_, ".tar.zst");
    CraftBundle(path, entries);
    return path;
  }
  std::filesystem::path CraftSigned(std::vector<CraftedEntry> payload,
                                    std::vector<FileEntry> files) {
    return Craft(SampleManifest(std::move(files)), std::move(payload), &key_a_.private_key);
  }

  // The reason Verify and then Unpack refuse `bundle` for (kNone = accepted),
  // checking that a refused Unpack leaves nothing behind.
  Reason Refusal(const std::filesystem::path& bundle, std::string* message = nullptr,
                 const Limits& limits = {}) {
    absl::StatusOr<VerifiedManifest> verified = Verify(bundle, trust_, facts_, limits);
    if (!verified.ok()) {
      if (message != nullptr) *message = Message(verified.status());
      EXPECT_NE(ReasonOf(verified.status()), Reason::kNone) << verified.status();
      return ReasonOf(verified.status());
    }
    std::filesystem::path dest = dir_ / StrCat("unpacked-", ++count_);
    absl::Status status = Unpack(bundle, *verified, dest, limits);
    if (message != nullptr) *message = Message(status);
    if (!status.ok()) {
      EXPECT_NE(ReasonOf(status), Reason::kNone) << status;
      EXPECT_FALSE(std::filesystem::exists(dest)) << "a refused unpack left " << dest;
      // CheckPayload agrees with Unpack.
      EXPECT_EQ(ReasonOf(CheckPayload(bundle, *verified, limits)), ReasonOf(status));
    }
    return ReasonOf(status);
  }

  TempDir dir_;
  KeyPair key_a_;
  KeyPair key_b_;
  TrustStore trust_;
  DeviceFacts facts_;
  std::string model_;
  std::string config_;
  int count_ = 0;
};

TEST_F(BundleTest, BuildSignVerifyUnpackRoundTrip) {
  TempDir src;
  std::string weights = RandomBytes(3 << 20, 7);
  WriteBytes(src / "models/add_one/1/model.onnx", weights);
  WriteBytes(src / "models/add_one/2/model.onnx", "v2");
  WriteBytes(src / "models/add_one/config.yaml", "max_batch_size: 8\n");
  WriteBytes(src / "models/add_one/labels.txt", "a\nb\n");
  WriteBytes(src / "app.yaml", "sinks: []\n");
  WriteBytes(src / "serve-bin", "#!/bin/sh\necho serve\n");
  WriteBytes(src / "selftest.json", R"([{"name": "ones", "model": "add_one", "version": "1",
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
      "expected_outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [2, 3],
                            "absolute_tolerance": 0.001}]}])");
  WriteBytes(src / "baseline.json", R"({"add_one": {"output": "y", "bin_edges": [0, 0.5, 1],
      "proportions": [0.1, 0.9], "samples": 500}})");

  BuildOptions options;
  options.models_dir = src / "models";
  options.config_files = {src / "app.yaml"};
  options.runtime_binary = src / "serve-bin";
  options.self_test_file = src / "selftest.json";
  options.baseline_file = src / "baseline.json";
  options.release = "add-one-2024.06";
  options.sequence = 7;
  options.arch = "x86_64";
  options.min_agent_version = "0.1.0";
  options.created_unix = 1717243200;
  std::filesystem::path unsigned_path = dir_ / "unsigned.tar.zst";
  absl::StatusOr<Manifest> built = BuildBundle(options, unsigned_path);
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->created, "2024-06-01T12:00:00Z");
  ASSERT_EQ(built->files.size(), 6u);
  EXPECT_EQ(built->files[0].path, "config/app.yaml");  // sorted
  const FileEntry* weights_entry = built->FindFile("models/add_one/1/model.onnx");
  ASSERT_NE(weights_entry, nullptr);
  EXPECT_EQ(weights_entry->sha256, Sha256::HexOf(weights));
  EXPECT_EQ(weights_entry->size, weights.size());
  EXPECT_TRUE(built->FindFile("runtime/outpost-serve")->executable);
  ASSERT_EQ(built->self_tests.size(), 1u);
  EXPECT_EQ(built->baselines.at("add_one").samples, 500u);

  // Unsigned: refused.
  EXPECT_EQ(ReasonOf(Verify(unsigned_path, trust_, facts_).status()), Reason::kNoSignature);

  std::filesystem::path signed_path = dir_ / "signed.tar.zst";
  ASSERT_TRUE(SignBundle(unsigned_path, key_a_.private_key, signed_path).ok());
  // Stock tar + zstd readers see manifest.json first, then signature.json.
  std::vector<std::string> names = testing::ListWithLibarchive(signed_path);
  ASSERT_EQ(names.size(), 8u);
  EXPECT_EQ(names[0], "manifest.json");
  EXPECT_EQ(names[1], "signature.json");

  absl::StatusOr<VerifiedManifest> verified = Verify(signed_path, trust_, facts_);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->manifest(), *built);
  EXPECT_EQ(verified->signature().key_id, "key-a");
  EXPECT_TRUE(CheckPayload(signed_path, *verified).ok());

  std::filesystem::path slot = dir_ / "slot";
  absl::Status unpacked = Unpack(signed_path, *verified, slot);
  ASSERT_TRUE(unpacked.ok()) << unpacked;
  EXPECT_EQ(ReadBytes(slot / "models/add_one/1/model.onnx"), weights);
  EXPECT_EQ(ReadBytes(slot / "models/add_one/labels.txt"), "a\nb\n");
  EXPECT_EQ(ReadBytes(slot / "config/app.yaml"), "sinks: []\n");
  EXPECT_EQ(ModeOf(slot / "runtime/outpost-serve"), 0755u);
  EXPECT_EQ(ModeOf(slot / "config/app.yaml"), 0644u);
  EXPECT_FALSE(std::filesystem::exists(slot / "manifest.json"));

  // Inspect shows the same manifest and who signed it.
  absl::StatusOr<UnverifiedBundle> inspected = Inspect(signed_path);
  ASSERT_TRUE(inspected.ok());
  EXPECT_EQ(inspected->manifest, *built);
  ASSERT_TRUE(inspected->signature.has_value());
  EXPECT_EQ(inspected->signature->key_id, "key-a");

  // Building with a key gives a bundle that verifies the same way.
  options.signing_key = &key_a_.private_key;
  ASSERT_TRUE(BuildBundle(options, dir_ / "direct.tar.zst").ok());
  EXPECT_TRUE(Verify(dir_ / "direct.tar.zst", trust_, facts_).ok());
  // Same inputs and time: byte-identical manifest (reproducible).
  EXPECT_EQ(Verify(dir_ / "direct.tar.zst", trust_, facts_)->manifest_json(),
            verified->manifest_json());
}

TEST_F(BundleTest, BuildRefusesBadInputs) {
  TempDir src;
  BuildOptions options;
  options.models_dir = src / "models";
  options.release = "r";
  options.sequence = 1;
  EXPECT_EQ(BuildBundle(options, dir_ / "x").status().code(), absl::StatusCode::kNotFound);

  WriteBytes(src / "models/m/config.yaml", "x");
  absl::Status status = BuildBundle(options, dir_ / "x").status();
  EXPECT_THAT(Message(status), HasSubstr("no <model>/<version>/model.onnx"));

  WriteBytes(src / "models/m/1/model.onnx", "w");
  std::filesystem::create_symlink(src / "models/m/1/model.onnx", src / "models/m/link.onnx");
  status = BuildBundle(options, dir_ / "x").status();
  EXPECT_THAT(Message(status), HasSubstr("is a symlink"));
  std::filesystem::remove(src / "models/m/link.onnx");

  WriteBytes(src / "models/m/bad name.txt", "x");
  status = BuildBundle(options, dir_ / "x").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("bad name.txt"));
  std::filesystem::remove(src / "models/m/bad name.txt");

  WriteBytes(src / "st.json", R"([{"model": "other", "inputs": [{"name": "x", "datatype": "FP32",
      "shape": [1], "data": [1]}], "expected_outputs": [{"name": "y", "datatype": "FP32",
      "shape": [1], "data": [1]}]}])");
  options.self_test_file = src / "st.json";
  status = BuildBundle(options, dir_ / "x").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("self_test[0].model': no files under models/other/"));

  options.self_test_file.clear();
  options.sequence = 0;
  EXPECT_THAT(Message(BuildBundle(options, dir_ / "x").status()), HasSubstr("'sequence'"));
  options.sequence = 1;
  options.release = "has space";
  EXPECT_THAT(Message(BuildBundle(options, dir_ / "x").status()), HasSubstr("'release'"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "x"));
}

TEST_F(BundleTest, CraftedSignedBundleIsAccepted) {
  EXPECT_EQ(Refusal(CraftSigned(Payload(), Files())), Reason::kNone);
}

TEST_F(BundleTest, RefusesUnsigned) {
  std::string message;
  EXPECT_EQ(Refusal(Craft(SampleManifest(Files()), Payload(), nullptr), &message),
            Reason::kNoSignature);
  EXPECT_THAT(message, HasSubstr("not signed"));
}

TEST_F(BundleTest, RefusesUnknownKey) {
  std::string message;
  EXPECT_EQ(Refusal(Craft(SampleManifest(Files()), Payload(), &key_b_.private_key), &message),
            Reason::kUnknownKey);
  EXPECT_THAT(message, HasSubstr("key-b"));
}

TEST_F(BundleTest, RefusesBadSignature) {
  // key-b's signature under key-a's id.
  Manifest manifest = SampleManifest(Files());
  std::string json = SerializeManifest(manifest);
  Signature forged = SignManifest(json, key_b_.private_key);
  forged.key_id = "key-a";
  std::vector<CraftedEntry> entries = {{"manifest.json", json},
                                       {"signature.json", SerializeSignature(forged)}};
  for (auto& e : Payload()) entries.push_back(e);
  CraftBundle(dir_ / "forged.tar.zst", entries);
  EXPECT_EQ(Refusal(dir_ / "forged.tar.zst"), Reason::kBadSignature);

  entries[1].data = "{\"algorithm\": \"ed25519\"}";
  CraftBundle(dir_ / "garbled.tar.zst", entries);
  std::string message;
  EXPECT_EQ(Refusal(dir_ / "garbled.tar.zst", &message), Reason::kBadSignature);
  EXPECT_THAT(message, HasSubstr("'key_id' is missing"));
}

TEST_F(BundleTest, RefusesTamperedManifestByte) {
  Manifest manifest = SampleManifest(Files());
  std::string json = SerializeManifest(manifest);
  std::string signature = SerializeSignature(SignManifest(json, key_a_.private_key));
  // Same length, one byte different: sequence 5 -> 9.
  std::string tampered = json;
  size_t at = tampered.find("\"sequence\": 5");
  ASSERT_NE(at, std::string::npos);
  tampered[at + 12] = '9';
  std::vector<CraftedEntry> entries = {{"manifest.json", tampered}, {"signature.json", signature}};
  for (auto& e : Payload()) entries.push_back(e);
  CraftBundle(dir_ / "t.tar.zst", entries);
  std::string message;
  EXPECT_EQ(Refusal(dir_ / "t.tar.zst", &message), Reason::kBadSignature);
  EXPECT_THAT(message, HasSubstr("does not match manifest.json"));
}

TEST_F(BundleTest, RefusesTamperedPayloadByte) {
  std::vector<CraftedEntry> payload = Payload();
  payload[0].data[5000] ^= 0x01;
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kWrongHash);
  EXPECT_THAT(message, HasSubstr("models/m/1/model.onnx' has SHA-256"));
}

TEST_F(BundleTest, RefusesMissingFile) {
  std::vector<CraftedEntry> payload = Payload();
  payload.pop_back();
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kFileMissing);
  EXPECT_THAT(message, HasSubstr("'config/app.yaml'"));
}

TEST_F(BundleTest, RefusesExtraFile) {
  std::vector<CraftedEntry> payload = Payload();
  payload.push_back({"config/extra.yaml", "x: 1\n"});
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kExtraFile);
  EXPECT_THAT(message, HasSubstr("config/extra.yaml"));
}

TEST_F(BundleTest, RefusesWrongSize) {
  std::vector<CraftedEntry> payload = Payload();
  payload[1].data += "more: 1\n";
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kWrongSize);
  EXPECT_THAT(message, HasSubstr("config/app.yaml"));
}

TEST_F(BundleTest, RefusesDuplicateNames) {
  std::vector<CraftedEntry> payload = Payload();
  payload.push_back(payload[1]);
  EXPECT_EQ(Refusal(CraftSigned(payload, Files())), Reason::kDuplicateName);

  payload = Payload();
  payload.push_back({"manifest.json", "{}"});
  EXPECT_EQ(Refusal(CraftSigned(payload, Files())), Reason::kDuplicateName);

  // The manifest itself lists a path twice.
  std::vector<FileEntry> files = Files();
  files.push_back(files[1]);
  EXPECT_EQ(Refusal(CraftSigned(Payload(), files)), Reason::kDuplicateName);
}

TEST_F(BundleTest, RefusesAbsolutePath) {
  std::vector<CraftedEntry> payload = Payload();
  payload.push_back({"/etc/cron.d/evil", "* * * * * root sh\n"});
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kAbsolutePath);
  EXPECT_THAT(message, HasSubstr("/etc/cron.d/evil"));
  EXPECT_FALSE(std::filesystem::exists("/etc/cron.d/evil"));
}

TEST_F(BundleTest, RefusesParentTraversal) {
  std::vector<CraftedEntry> payload = Payload();
  payload.push_back({"models/../../../tmp/evil", "x"});
  EXPECT_EQ(Refusal(CraftSigned(payload, Files())), Reason::kPathTraversal);
}

TEST_F(BundleTest, RefusesLinks) {
  std::vector<CraftedEntry> payload = Payload();
  payload.insert(payload.begin(), CraftedEntry{"models/m/2", "", AE_IFLNK, "/etc"});
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kLink);
  EXPECT_THAT(message, HasSubstr("symlink to '/etc'"));

  payload = Payload();
  payload.push_back({"config/other.yaml", "", AE_IFREG, "config/app.yaml", true});
  EXPECT_EQ(Refusal(CraftSigned(payload, Files()), &message), Reason::kLink);
  EXPECT_THAT(message, HasSubstr("hardlink"));
}

TEST_F(BundleTest, RefusesSpecialFiles) {
  for (mode_t type : {AE_IFIFO, AE_IFCHR, AE_IFBLK, AE_IFDIR}) {
    std::vector<CraftedEntry> payload = Payload();
    payload.insert(payload.begin() + 1, CraftedEntry{"models/m/special", "", type});
    EXPECT_EQ(Refusal(CraftSigned(payload, Files())), Reason::kSpecialFile) << type;
  }
}

TEST_F(BundleTest, RefusesDeclaredSizeOverLimit) {
  Limits limits;
  limits.max_unpacked_bytes = 50000;  // the model alone is 100000
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(Payload(), Files()), &message, limits), Reason::kDecompressionBomb);
  EXPECT_THAT(message, HasSubstr("over the limit 50000"));

  limits = Limits();
  limits.max_files = 1;
  EXPECT_EQ(Refusal(CraftSigned(Payload(), Files()), nullptr, limits), Reason::kDecompressionBomb);

  limits = Limits();
  limits.max_manifest_bytes = 100;
  EXPECT_EQ(Refusal(CraftSigned(Payload(), Files()), &message, limits), Reason::kDecompressionBomb);
  EXPECT_THAT(message, HasSubstr("manifest.json is"));
}

TEST_F(BundleTest, RefusesHighCompressionRatio) {
  // 40 MB of zeros compresses ~10000:1; the default limit is 200:1.
  std::string zeros(40 << 20, '\0');
  std::vector<CraftedEntry> payload = {{"models/m/1/model.onnx", zeros}};
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, {EntryFor("models/m/1/model.onnx", zeros)}), &message),
            Reason::kDecompressionBomb);
  EXPECT_THAT(message, HasSubstr("compression ratio"));
}

TEST_F(BundleTest, RefusesDataTheManifestDoesNotAccountFor) {
  // 9 MB hidden in pax headers (libarchive caps each at 1 MiB, so spread
  // over ten files): no file is larger than declared, but the stream
  // decompresses to more than the manifest allows for.
  Limits limits;
  limits.max_manifest_bytes = 64 * 1024;
  std::vector<FileEntry> files;
  std::vector<CraftedEntry> payload;
  for (int i = 0; i < 10; ++i) {
    std::string path = StrCat("config/c", i, ".yaml");
    files.push_back(EntryFor(path, "x"));
    payload.push_back({path, "x"});
    payload.back().xattr_value = RandomBytes(400 * 1024, i);
  }
  std::string message;
  EXPECT_EQ(Refusal(CraftSigned(payload, files), &message, limits), Reason::kDecompressionBomb);
  EXPECT_THAT(message, HasSubstr("more than its manifest accounts for"));
  // With the default limits the same bundle passes: the headers are
  // within the slack for a 16 MiB manifest.
  EXPECT_EQ(Refusal(CraftSigned(payload, files)), Reason::kNone);
}

TEST_F(BundleTest, RefusesHugeZstdWindow) {
  // A frame asking for a 2^27-byte window (decoder memory) is refused
  // before any of it is allocated.
  std::filesystem::path plain = dir_ / "plain.tar.zst";
  CraftBundle(plain, {{"manifest.json", "{}"}});
  std::string tar;
  {
    std::string compressed = ReadBytes(plain);
    tar.resize(1 << 20);
    size_t n = ZSTD_decompress(tar.data(), tar.size(), compressed.data(), compressed.size());
    ASSERT_FALSE(ZSTD_isError(n));
    tar.resize(n);
  }
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, 27);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  std::string out(ZSTD_compressBound(tar.size()) + 64, '\0');
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  ZSTD_inBuffer ib{tar.data(), tar.size(), 0};
  // Streaming without a known size keeps the declared window at 2^27.
  ASSERT_FALSE(ZSTD_isError(ZSTD_compressStream2(cctx, &ob, &ib, ZSTD_e_continue)));
  ZSTD_inBuffer none{nullptr, 0, 0};
  ASSERT_EQ(ZSTD_compressStream2(cctx, &ob, &none, ZSTD_e_end), 0u);
  ZSTD_freeCCtx(cctx);
  out.resize(ob.pos);
  WriteBytes(dir_ / "window.tar.zst", out);
  std::string message;
  EXPECT_EQ(Refusal(dir_ / "window.tar.zst", &message), Reason::kDecompressionBomb);
  EXPECT_THAT(message, HasSubstr("window"));
}

TEST_F(BundleTest, RefusesTargetMismatch) {
  std::filesystem::path bundle = CraftSigned(Payload(), Files());
  std::string message;
  facts_.arch = "aarch64";
  EXPECT_EQ(Refusal(bundle, &message), Reason::kTargetMismatch);
  EXPECT_THAT(message, HasSubstr("for x86_64, this device is aarch64"));
  facts_.arch = "x86_64";

  Manifest cuda = SampleManifest(Files());
  cuda.target.accelerator = "cuda";
  std::filesystem::path cuda_bundle = Craft(cuda, Payload(), &key_a_.private_key);
  EXPECT_EQ(Refusal(cuda_bundle, &message), Reason::kTargetMismatch);
  EXPECT_THAT(message, HasSubstr("needs accelerator cuda"));
  facts_.accelerators = {"cpu", "cuda"};
  EXPECT_EQ(Refusal(cuda_bundle), Reason::kNone);

  Manifest newer = SampleManifest(Files());
  newer.target.min_agent_version = "2.0.0";
  EXPECT_EQ(Refusal(Craft(newer, Payload(), &key_a_.private_key), &message),
            Reason::kTargetMismatch);
  EXPECT_THAT(message, HasSubstr("needs agent 2.0.0 or newer, this agent is 0.1.0"));
}

TEST_F(BundleTest, RefusesSequenceBelowFloor) {
  std::filesystem::path bundle = CraftSigned(Payload(), Files());  // sequence 5
  facts_.sequence_floor = 6;
  std::string message;
  EXPECT_EQ(Refusal(bundle, &message), Reason::kSequenceBelowFloor);
  EXPECT_THAT(message, HasSubstr("sequence 5, below this device's floor 6"));
  facts_.sequence_floor = 5;  // reinstalling the committed release is fine
  EXPECT_EQ(Refusal(bundle), Reason::kNone);
}

TEST_F(BundleTest, RefusesMalformedManifest) {
  std::string message;
  EXPECT_EQ(Refusal(Craft({}, Payload(), &key_a_.private_key, "{\"release\": \"r\"}"), &message),
            Reason::kMalformedManifest);
  EXPECT_THAT(message, HasSubstr("'format_version' is missing"));
  EXPECT_EQ(Refusal(Craft({}, Payload(), &key_a_.private_key, "not json at all")),
            Reason::kMalformedManifest);
}

TEST_F(BundleTest, RefusesMalformedArchives) {
  WriteBytes(dir_ / "text.tar.zst", "this is not a bundle");
  std::string message;
  EXPECT_EQ(Refusal(dir_ / "text.tar.zst", &message), Reason::kMalformedArchive);

  WriteBytes(dir_ / "empty.tar.zst", "");
  EXPECT_EQ(Refusal(dir_ / "empty.tar.zst"), Reason::kMalformedArchive);

  // manifest.json not first.
  std::vector<CraftedEntry> entries = Payload();
  entries.push_back({"manifest.json", SerializeManifest(SampleManifest(Files()))});
  CraftBundle(dir_ / "late.tar.zst", entries);
  EXPECT_EQ(Refusal(dir_ / "late.tar.zst", &message), Reason::kMalformedArchive);
  EXPECT_THAT(message, HasSubstr("manifest.json must come first"));

  // Truncated download: the head verifies, the payload is cut short.
  std::string whole = ReadBytes(CraftSigned(Payload(), Files()));
  WriteBytes(dir_ / "cut.tar.zst", whole.substr(0, whole.size() / 2));
  EXPECT_EQ(Refusal(dir_ / "cut.tar.zst", &message), Reason::kMalformedArchive);
}

TEST_F(BundleTest, KeyRotationWithTwoTrustedKeys) {
  ASSERT_TRUE(trust_.Add(key_b_.public_key).ok());
  std::filesystem::path by_a = CraftSigned(Payload(), Files());
  EXPECT_EQ(Refusal(by_a), Reason::kNone);
  // Re-sign with the new key; both verify while both are trusted.
  std::filesystem::path by_b = dir_ / "by_b.tar.zst";
  ASSERT_TRUE(SignBundle(by_a, key_b_.private_key, by_b).ok());
  absl::StatusOr<VerifiedManifest> verified = Verify(by_b, trust_, facts_);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->signature().key_id, "key-b");
  EXPECT_EQ(Refusal(by_b), Reason::kNone);
  // The old key retired: only B-signed bundles pass.
  TrustStore only_b;
  ASSERT_TRUE(only_b.Add(key_b_.public_key).ok());
  trust_ = only_b;
  EXPECT_EQ(Refusal(by_a), Reason::kUnknownKey);
  EXPECT_EQ(Refusal(by_b), Reason::kNone);
}

TEST_F(BundleTest, SignInPlaceAndRefuseToSignBadPayload) {
  std::filesystem::path bundle = Craft(SampleManifest(Files()), Payload(), nullptr);
  ASSERT_TRUE(SignBundle(bundle, key_a_.private_key, bundle).ok());
  EXPECT_EQ(Refusal(bundle), Reason::kNone);

  std::vector<CraftedEntry> payload = Payload();
  payload[0].data[0] ^= 1;
  std::filesystem::path bad = Craft(SampleManifest(Files()), payload, nullptr);
  absl::Status status = SignBundle(bad, key_a_.private_key, dir_ / "bad-signed.tar.zst");
  EXPECT_EQ(ReasonOf(status), Reason::kWrongHash);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "bad-signed.tar.zst"));
}

TEST_F(BundleTest, UnpackNeedsAnEmptyDestinationAndANotChangedBundle) {
  std::filesystem::path bundle = CraftSigned(Payload(), Files());
  absl::StatusOr<VerifiedManifest> verified = Verify(bundle, trust_, facts_);
  ASSERT_TRUE(verified.ok());
  std::filesystem::path dest = dir_ / "dest";
  WriteBytes(dest / "old", "x");
  absl::Status status = Unpack(bundle, *verified, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReasonOf(status), Reason::kNone);
  EXPECT_EQ(ReadBytes(dest / "old"), "x");  // untouched

  // An existing empty directory is fine, and survives a refusal.
  std::filesystem::remove(dest / "old");
  ASSERT_TRUE(Unpack(bundle, *verified, dest).ok());
  EXPECT_EQ(ReadBytes(dest / "models/m/1/model.onnx"), model_);
  ASSERT_TRUE(Unpack(bundle, *verified, (dir_ / "dest3").string() + "/").ok());
  EXPECT_EQ(ReadBytes(dir_ / "dest3/config/app.yaml"), config_);

  // The file is replaced after Verify by another validly signed bundle.
  Manifest other = SampleManifest(Files(), 6);
  std::filesystem::path swapped = Craft(other, Payload(), &key_a_.private_key);
  std::filesystem::rename(swapped, bundle);
  std::filesystem::path dest2 = dir_ / "dest2";
  std::filesystem::create_directory(dest2);
  status = Unpack(bundle, *verified, dest2);
  EXPECT_EQ(ReasonOf(status), Reason::kBadSignature);
  EXPECT_THAT(Message(status), HasSubstr("not the verified one"));
  EXPECT_TRUE(std::filesystem::is_empty(dest2));

  EXPECT_EQ(Verify(dir_ / "missing.tar.zst", trust_, facts_).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ReasonOf(Verify(dir_ / "missing.tar.zst", trust_, facts_).status()), Reason::kNone);
}

TEST_F(BundleTest, VerifyBytesMatchesVerify) {
  std::string bytes = ReadBytes(CraftSigned(Payload(), Files()));
  absl::StatusOr<VerifiedManifest> verified = VerifyBytes(bytes, trust_, facts_);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->manifest().release, "release-1");
}

TEST(ReasonTest, NamesRoundTripAndAnnotateKeepsReason) {
  for (int i = 0; i <= static_cast<int>(Reason::kSequenceBelowFloor); ++i) {
    Reason reason = static_cast<Reason>(i);
    EXPECT_EQ(ReasonFromName(ReasonName(reason)), reason);
  }
  absl::Status status = Annotate(Refuse(Reason::kWrongHash, "inner"), "outer");
  EXPECT_EQ(ReasonOf(status), Reason::kWrongHash);
  EXPECT_EQ(Message(status), "outer: inner");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ReasonOf(absl::NotFoundError("x")), Reason::kNone);
  EXPECT_EQ(ReasonOf(absl::OkStatus()), Reason::kNone);
}

}  // namespace
}  // namespace outpost::bundle
