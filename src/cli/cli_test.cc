// Runs the built `outpost` binary as an operator would and checks exit
// codes, stdout/stderr and --json output.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "bundle/test_support.h"

namespace outpost::cli {
namespace {

using bundle::testing::RandomBytes;
using bundle::testing::ReadBytes;
using bundle::testing::TempDir;
using bundle::testing::WriteBytes;
using ::testing::HasSubstr;
using ::testing::Not;

std::filesystem::path Binary() {
  const char* dir = std::getenv("OUTPOST_BINARY_DIR");
  if (dir != nullptr) return std::filesystem::path(dir) / "src/cli/outpost";
  // Run by hand: the binary sits beside this test.
  return std::filesystem::read_symlink("/proc/self/exe").parent_path() / "outpost";
}

struct Result {
  int code = -1;
  std::string out;
  std::string err;
};

class CliTest : public ::testing::Test {
 protected:
  Result Run(const std::string& args) {
    std::filesystem::path out = tmp_ / "stdout", err = tmp_ / "stderr";
    std::string command =
        StrCat(Binary().string(), " ", args, " >", out.string(), " 2>", err.string());
    int status = std::system(command.c_str());
    Result result;
    result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.out = ReadBytes(out);
    result.err = ReadBytes(err);
    return result;
  }

  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(Binary())) << Binary();
    WriteBytes(tmp_ / "models/m/1/model.onnx", RandomBytes(200000));
    WriteBytes(tmp_ / "models/m/config.yaml", "max_batch_size: 0\n");
    WriteBytes(tmp_ / "app.yaml", "a: 1\n");
  }

  // keys generate + build + sign; returns the signed bundle.
  std::string MakeSignedBundle() {
    Result keys = Run(StrCat("keys generate --out ", (tmp_ / "keys").string(), " --name ci"));
    EXPECT_EQ(keys.code, 0) << keys.err;
    Result build =
        Run(StrCat("bundle build --models ", (tmp_ / "models").string(), " --config ",
                   (tmp_ / "app.yaml").string(), " --name rel-1 --sequence 4 --arch x86_64 --out ",
                   (tmp_ / "b.tar.zst").string()));
    EXPECT_EQ(build.code, 0) << build.err;
    EXPECT_THAT(build.out, HasSubstr("3 files"));
    Result sign =
        Run(StrCat("bundle sign --key ", (tmp_ / "keys/ci.key").string(), " --in ",
                   (tmp_ / "b.tar.zst").string(), " --out ", (tmp_ / "signed.tar.zst").string()));
    EXPECT_EQ(sign.code, 0) << sign.err;
    return (tmp_ / "signed.tar.zst").string();
  }

  std::string Trusted() const { return StrCat(" --trusted-keys ", (tmp_ / "keys").string(), " "); }

  TempDir tmp_;
};

TEST_F(CliTest, KeysGenerateWritesPrivateKey0600AndNeverPrintsIt) {
  Result result = Run(StrCat("keys generate --out ", (tmp_ / "k").string()));
  ASSERT_EQ(result.code, 0) << result.err;
  std::string id;
  for (const auto& entry : std::filesystem::directory_iterator(tmp_ / "k")) {
    if (entry.path().extension() == ".key") id = entry.path().stem().string();
  }
  ASSERT_EQ(id.size(), 16u);
  EXPECT_THAT(result.out, HasSubstr(StrCat("key id:      ", id)));
  struct stat st;
  ASSERT_EQ(::stat((tmp_ / "k" / (id + ".key")).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string secret = nlohmann::json::parse(ReadBytes(tmp_ / "k" / (id + ".key")))["secret_key"];
  EXPECT_THAT(result.out + result.err, Not(HasSubstr(secret.substr(0, 24))));

  // Never overwritten: usage error.
  Result again = Run(StrCat("keys generate --out ", (tmp_ / "k").string(), " --name ", id));
  EXPECT_EQ(again.code, 2);
  EXPECT_THAT(again.err, HasSubstr("already exists"));
}

TEST_F(CliTest, BuildSignVerifyInspectUnpack) {
  std::string bundle = MakeSignedBundle();

  Result verify = Run(StrCat("bundle verify", Trusted(), bundle));
  EXPECT_EQ(verify.code, 0) << verify.err;
  EXPECT_THAT(verify.out, HasSubstr("OK "));
  EXPECT_THAT(verify.out, HasSubstr("release rel-1 sequence 4, signed by key ci"));

  Result verify_json =
      Run(StrCat("bundle verify --json --floor 4 --arch x86_64", Trusted(), bundle));
  ASSERT_EQ(verify_json.code, 0) << verify_json.err;
  nlohmann::json verdict = nlohmann::json::parse(verify_json.out);
  EXPECT_EQ(verdict["ok"], true);
  EXPECT_EQ(verdict["release"], "rel-1");
  EXPECT_EQ(verdict["sequence"], 4);
  EXPECT_EQ(verdict["key_id"], "ci");
  EXPECT_EQ(verdict["files"], 3);

  Result inspect = Run(StrCat("bundle inspect --json ", bundle));
  ASSERT_EQ(inspect.code, 0) << inspect.err;
  nlohmann::json info = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(info["manifest"]["release"], "rel-1");
  EXPECT_EQ(info["manifest"]["files"].size(), 3u);
  EXPECT_EQ(info["signature"]["key_id"], "ci");
  EXPECT_EQ(info["verified"], false);

  Result text = Run(StrCat("bundle inspect ", bundle));
  ASSERT_EQ(text.code, 0);
  EXPECT_THAT(text.out, HasSubstr("models/m/1/model.onnx"));
  EXPECT_THAT(text.out, HasSubstr("not verified"));

  Result unpack =
      Run(StrCat("bundle unpack", Trusted(), bundle, " --out ", (tmp_ / "slot").string()));
  ASSERT_EQ(unpack.code, 0) << unpack.err;
  EXPECT_EQ(ReadBytes(tmp_ / "slot/config/app.yaml"), "a: 1\n");
  EXPECT_EQ(ReadBytes(tmp_ / "slot/models/m/1/model.onnx"),
            ReadBytes(tmp_ / "models/m/1/model.onnx"));
}

TEST_F(CliTest, RefusalsExitOneWithReason) {
  std::string bundle = MakeSignedBundle();
  Result unsigned_bundle = Run(StrCat("bundle verify", Trusted(), (tmp_ / "b.tar.zst").string()));
  EXPECT_EQ(unsigned_bundle.code, 1);
  EXPECT_THAT(unsigned_bundle.err, HasSubstr("REFUSED (no_signature)"));

  Result floor = Run(StrCat("bundle verify --floor 5", Trusted(), bundle));
  EXPECT_EQ(floor.code, 1);
  EXPECT_THAT(floor.err, HasSubstr("REFUSED (sequence_below_floor)"));

  Result arch = Run(StrCat("bundle verify --json --arch aarch64", Trusted(), bundle));
  EXPECT_EQ(arch.code, 1);
  nlohmann::json verdict = nlohmann::json::parse(arch.out);
  EXPECT_EQ(verdict["ok"], false);
  EXPECT_EQ(verdict["reason"], "target_mismatch");
  EXPECT_THAT(verdict["message"].get<std::string>(), HasSubstr("aarch64"));

  ASSERT_EQ(Run(StrCat("keys generate --out ", (tmp_ / "other").string(), " --name other")).code,
            0);
  Result unknown =
      Run(StrCat("bundle verify --trusted-keys ", (tmp_ / "other").string(), " ", bundle));
  EXPECT_EQ(unknown.code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("REFUSED (unknown_key)"));

  // A flipped byte in the compressed stream: caught by zstd's checksum or
  // the hashes, never accepted.
  std::string bytes = ReadBytes(bundle);
  bytes[bytes.size() - 100] ^= 0x40;
  WriteBytes(tmp_ / "flipped.tar.zst", bytes);
  Result flipped =
      Run(StrCat("bundle verify --json", Trusted(), (tmp_ / "flipped.tar.zst").string()));
  EXPECT_EQ(flipped.code, 1);
  EXPECT_EQ(nlohmann::json::parse(flipped.out)["ok"], false);
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Run("").code, 2);
  EXPECT_EQ(Run("bundle").code, 2);
  EXPECT_EQ(Run("bundle verify").code, 2);  // missing bundle and --trusted-keys
  EXPECT_EQ(Run("bundle frobnicate").code, 2);
  EXPECT_EQ(Run(StrCat("bundle build --models ", (tmp_ / "models").string(),
                       " --name r --sequence 1 --arch mips --out x"))
                .code,
            2);
  Result zero = Run(StrCat("bundle build --models ", (tmp_ / "models").string(),
                           " --name r --sequence 0 --out ", (tmp_ / "x").string()));
  EXPECT_EQ(zero.code, 2);
  EXPECT_THAT(zero.err, HasSubstr("--sequence"));
  WriteBytes(tmp_ / "bad-selftest.json", "{}");
  Result bad_input = Run(StrCat("bundle build --models ", (tmp_ / "models").string(),
                                " --self-test ", (tmp_ / "bad-selftest.json").string(),
                                " --name r --sequence 1 --out ", (tmp_ / "x").string()));
  EXPECT_EQ(bad_input.code, 2);
  EXPECT_THAT(bad_input.err, HasSubstr("bad-selftest.json: must be a JSON array"));

  Result help = Run("bundle verify --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_THAT(help.out, HasSubstr("--trusted-keys"));
  Result version = Run("--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_THAT(version.out, HasSubstr(OUTPOST_VERSION));
}

TEST_F(CliTest, IoErrorsExitThree) {
  std::string bundle = MakeSignedBundle();
  Result missing = Run(StrCat("bundle verify", Trusted(), (tmp_ / "nope.tar.zst").string()));
  EXPECT_EQ(missing.code, 3);
  EXPECT_THAT(missing.err, HasSubstr("nope.tar.zst"));
  Result no_keys =
      Run(StrCat("bundle verify --trusted-keys ", (tmp_ / "nokeys").string(), " ", bundle));
  EXPECT_EQ(no_keys.code, 3);
  Result no_models = Run(StrCat("bundle build --models ", (tmp_ / "nomodels").string(),
                                " --name r --sequence 1 --out ", (tmp_ / "x").string()));
  EXPECT_EQ(no_models.code, 3);
  Result no_dir = Run(StrCat("bundle sign --key ", (tmp_ / "keys/ci.key").string(), " --in ",
                             bundle, " --out ", (tmp_ / "no/such/dir/x.tar.zst").string()));
  EXPECT_EQ(no_dir.code, 3);
}

}  // namespace
}  // namespace outpost::cli
