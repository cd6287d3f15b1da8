#include "bundle/manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "bundle/reason.h"
#include "bundle/test_support.h"

namespace outpost::bundle {
namespace {

using testing::EntryFor;
using ::testing::HasSubstr;
using testing::SampleManifest;

std::string Message(const absl::Status& status) { return std::string(MessageOf(status)); }

Manifest FullManifest() {
  Manifest manifest = SampleManifest({EntryFor("models/add_one/1/model.onnx", "weights"),
                                      EntryFor("models/add_one/config.yaml", "max_batch_size: 0\n"),
                                      EntryFor("runtime/outpost-serve",
                                               "\x7f"
                                               "ELF",
                                               true)});
  SelfTestCase test;
  test.name = "ones";
  test.model = "add_one";
  test.version = "1";
  test.inputs.push_back({"x", "FP32", {1, 2}, nlohmann::json::array({1.0, 2.5})});
  ExpectedOutput out;
  out.tensor = {"y", "FP32", {1, 2}, nlohmann::json::array({2.0, 3.5})};
  out.values = {2.0, 3.5};
  out.absolute_tolerance = 1e-3;
  out.relative_tolerance = 0;
  test.expected_outputs.push_back(out);
  manifest.self_tests.push_back(test);
  manifest.baselines["add_one"] = {"y", {0, 0.5, 1}, {0.25, 0.75}, 100};
  return manifest;
}

nlohmann::json FullJson() { return nlohmann::json::parse(SerializeManifest(FullManifest())); }

absl::Status ParseJson(const nlohmann::json& json) { return ParseManifest(json.dump()).status(); }

TEST(ManifestTest, SerializeParseRoundTrip) {
  Manifest manifest = FullManifest();
  std::string json = SerializeManifest(manifest);
  absl::StatusOr<Manifest> parsed = ParseManifest(json);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, manifest);
  EXPECT_EQ(SerializeManifest(*parsed), json);  // canonical
  EXPECT_EQ(parsed->TotalSize(), 7u + 18u + 4u);
  ASSERT_NE(parsed->FindFile("runtime/outpost-serve"), nullptr);
  EXPECT_TRUE(parsed->FindFile("runtime/outpost-serve")->executable);
  EXPECT_EQ(parsed->FindFile("nope"), nullptr);
}

TEST(ManifestTest, EachMissingRequiredFieldIsNamed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/format_version", "'format_version' is missing"},
      {"/release", "'release' is missing"},
      {"/sequence", "'sequence' is missing"},
      {"/created", "'created' is missing"},
      {"/target", "'target' is missing"},
      {"/target/arch", "'target.arch' is missing"},
      {"/target/accelerator", "'target.accelerator' is missing"},
      {"/files", "'files' is missing"},
      {"/files/0/path", "'files[0].path' is missing"},
      {"/files/1/size", "'files[1].size' is missing"},
      {"/files/2/sha256", "'files[2].sha256' is missing"},
      {"/self_test/0/model", "'self_test[0].model' is missing"},
      {"/self_test/0/inputs", "'self_test[0].inputs' is missing"},
      {"/self_test/0/inputs/0/datatype", "'self_test[0].inputs[0].datatype' is missing"},
      {"/self_test/0/expected_outputs", "'self_test[0].expected_outputs' is missing"},
      {"/baseline/add_one/bin_edges", "'baseline.add_one.bin_edges' is missing"},
  };
  for (const auto& [pointer, expected] : cases) {
    nlohmann::json json = FullJson();
    nlohmann::json::json_pointer ptr(pointer);
    json[ptr.parent_pointer()].erase(ptr.back());
    absl::Status status = ParseJson(json);
    EXPECT_EQ(ReasonOf(status), Reason::kMalformedManifest) << pointer << ": " << status;
    EXPECT_THAT(Message(status), HasSubstr(expected)) << pointer;
  }
}

TEST(ManifestTest, EachInvalidFieldIsNamed) {
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"/format_version", 2, "'format_version': unsupported version 2"},
      {"/format_version", "1", "'format_version': must be a non-negative integer"},
      {"/release", "", "'release'"},
      {"/release", "a b", "'release'"},
      {"/sequence", 0, "'sequence': must be >= 1"},
      {"/sequence", -4, "'sequence': must be a non-negative integer"},
      {"/created", "yesterday", "'created': must be UTC time"},
      {"/target", "x86", "'target': must be an object, got string"},
      {"/target/arch", "mips", "'target.arch': unknown 'mips'"},
      {"/target/accelerator", "tpu", "'target.accelerator': unknown 'tpu'"},
      {"/target/min_agent_version", "one", "'target.min_agent_version'"},
      {"/files", nlohmann::json::array(), "'files': must name at least one file"},
      {"/files/0", 3, "'files[0]': must be an object"},
      {"/files/0/size", "7", "'files[0].size': must be a non-negative integer"},
      {"/files/0/sha256", "ABC", "'files[0].sha256': must be 64 lowercase hex"},
      {"/files/0/executable", "yes", "'files[0].executable': must be true or false"},
      {"/self_test/0/model", "other", "'self_test[0].model': no files under models/other/"},
      {"/self_test/0/version", "v1", "'self_test[0].version'"},
      {"/self_test/0/inputs/0/datatype", "FLOAT", "'self_test[0].inputs[0].datatype': unknown"},
      {"/self_test/0/inputs/0/shape", nlohmann::json::array({3}),
       "'self_test[0].inputs[0].data': has 2 elements, shape needs 3"},
      {"/self_test/0/inputs/0/data/1", "x", "'self_test[0].inputs[0].data[1]': FP32 elements"},
      {"/self_test/0/expected_outputs/0/datatype", "BYTES", "BYTES outputs cannot be compared"},
      {"/self_test/0/expected_outputs/0/absolute_tolerance", -1,
       "'self_test[0].expected_outputs[0].absolute_tolerance': must be >= 0"},
      {"/baseline/add_one/proportions", nlohmann::json::array({0.5, 0.2}),
       "'baseline.add_one.proportions': must sum to 1"},
      {"/baseline/add_one/bin_edges", nlohmann::json::array({0, 1, 0.5}),
       "'baseline.add_one.bin_edges[2]': edges must be strictly increasing"},
  };
  for (const auto& [pointer, value, expected] : cases) {
    nlohmann::json json = FullJson();
    json[nlohmann::json::json_pointer(pointer)] = value;
    absl::Status status = ParseJson(json);
    EXPECT_EQ(ReasonOf(status), Reason::kMalformedManifest) << pointer << ": " << status;
    EXPECT_THAT(Message(status), HasSubstr(expected)) << pointer;
  }
}

TEST(ManifestTest, NotJsonAndTooDeep) {
  absl::Status status = ParseManifest("{\"release\": ").status();
  EXPECT_EQ(ReasonOf(status), Reason::kMalformedManifest);
  EXPECT_THAT(Message(status), HasSubstr("not valid JSON"));
  status = ParseManifest("[1]").status();
  EXPECT_THAT(Message(status), HasSubstr("must be a JSON object"));
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  status = ParseManifest(deep).status();
  EXPECT_EQ(ReasonOf(status), Reason::kMalformedManifest);
  EXPECT_THAT(Message(status), HasSubstr("nested deeper"));
}

TEST(ManifestTest, UnknownKeysAreIgnored) {
  nlohmann::json json = FullJson();
  json["future_field"] = {{"x", 1}};
  EXPECT_TRUE(ParseJson(json).ok());
}

TEST(ManifestTest, PathRules) {
  const std::vector<std::pair<std::string, Reason>> cases = {
      {"models/a/1/model.onnx", Reason::kNone},
      {"config/app.yaml", Reason::kNone},
      {"runtime/outpost-serve", Reason::kNone},
      {"/etc/passwd", Reason::kAbsolutePath},
      {"models/../../etc/passwd", Reason::kPathTraversal},
      {"models/a/..", Reason::kPathTraversal},
      {"..", Reason::kPathTraversal},
      {"", Reason::kInvalidPath},
      {"models//a", Reason::kInvalidPath},
      {"models/a/", Reason::kInvalidPath},
      {"models/./a", Reason::kInvalidPath},
      {"models/a b", Reason::kInvalidPath},
      {"models/a\\b", Reason::kInvalidPath},
      {std::string("models/a\0b", 10), Reason::kInvalidPath},
      {"models/\xc3\xa9", Reason::kInvalidPath},
      {"etc/passwd", Reason::kInvalidPath},
      {"manifest.json", Reason::kInvalidPath},
      {"models/" + std::string(256, 'a'), Reason::kInvalidPath},
  };
  for (const auto& [path, reason] : cases) {
    absl::Status status = ValidateBundlePath(path);
    EXPECT_EQ(ReasonOf(status), reason) << "'" << path << "': " << status;
    EXPECT_EQ(status.ok(), reason == Reason::kNone) << path;
  }
}

TEST(ManifestTest, BadPathInManifestKeepsItsReason) {
  nlohmann::json json = FullJson();
  json["files"][1]["path"] = "/abs/file";
  absl::Status status = ParseJson(json);
  EXPECT_EQ(ReasonOf(status), Reason::kAbsolutePath);
  EXPECT_THAT(Message(status), HasSubstr("files[1].path"));
  json["files"][1]["path"] = "models/../x";
  EXPECT_EQ(ReasonOf(ParseJson(json)), Reason::kPathTraversal);
}

TEST(ManifestTest, DuplicatePathsAndFileDirectoryConflicts) {
  nlohmann::json json = FullJson();
  json["files"][1]["path"] = json["files"][0]["path"];
  absl::Status status = ParseJson(json);
  EXPECT_EQ(ReasonOf(status), Reason::kDuplicateName);
  EXPECT_THAT(Message(status), HasSubstr("listed twice"));

  json = FullJson();
  json["files"][1]["path"] = "models/add_one/1";
  status = ParseJson(json);
  EXPECT_EQ(ReasonOf(status), Reason::kDuplicateName);
  EXPECT_THAT(Message(status), HasSubstr("both a file and the directory"));
}

TEST(ManifestTest, SelfTestFileAndNestedData) {
  std::string text = R"([{"model": "m", "inputs": [{"name": "x", "datatype": "INT64",
      "shape": [2, 2], "data": [[1, 2], [3, 4]]}], "expected_outputs": [{"name": "y",
      "datatype": "BOOL", "shape": [3], "data": [true, false, true]}]}])";
  absl::StatusOr<std::vector<SelfTestCase>> cases = ParseSelfTests(text, "st.json");
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_EQ(cases->size(), 1u);
  EXPECT_EQ((*cases)[0].name, "m#0");
  EXPECT_EQ((*cases)[0].expected_outputs[0].values, (std::vector<double>{1, 0, 1}));
  EXPECT_EQ((*cases)[0].expected_outputs[0].absolute_tolerance, 1e-5);

  absl::Status status = ParseSelfTests(R"({"model": "m"})", "st.json").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReasonOf(status), Reason::kNone);
  EXPECT_THAT(Message(status), HasSubstr("st.json: must be a JSON array"));
  status = ParseSelfTests(R"([{"model": "m", "inputs": [{"name": "x", "datatype": "INT8",
      "shape": [1], "data": [1.5]}], "expected_outputs": []}])",
                          "st.json")
               .status();
  EXPECT_THAT(Message(status),
              HasSubstr("field '[0].inputs[0].data[0]': INT8 elements must be integers"));
}

TEST(ManifestTest, BaselineFile) {
  auto baselines = ParseBaselines(R"({"m": {"output": "p", "bin_edges": [0, 0.5, 1],
      "proportions": [0.4, 0.6], "samples": 10}})",
                                  "b.json");
  ASSERT_TRUE(baselines.ok()) << baselines.status();
  EXPECT_EQ(baselines->at("m").proportions, (std::vector<double>{0.4, 0.6}));
  absl::Status status = ParseBaselines(R"({"m": {"output": "p", "bin_edges": [0, 1],
      "proportions": [0.4, 0.6]}})",
                                       "b.json")
                            .status();
  EXPECT_THAT(Message(status), HasSubstr("'m.proportions': needs 1 values"));
}

TEST(ManifestTest, CompareOutputUsesAbsoluteAndRelativeTolerance) {
  ExpectedOutput expected;
  expected.tensor.name = "y";
  expected.values = {1.0, 100.0};
  expected.absolute_tolerance = 0.01;
  expected.relative_tolerance = 0.001;
  EXPECT_TRUE(CompareOutput(expected, {1.005, 100.1}).ok());
  absl::Status status = CompareOutput(expected, {1.02, 100.0});
  EXPECT_THAT(Message(status), HasSubstr("element 0"));
  EXPECT_FALSE(CompareOutput(expected, {1.0, 100.2}).ok());
  EXPECT_FALSE(CompareOutput(expected, {1.0}).ok());
  EXPECT_FALSE(CompareOutput(expected, {1.0, std::nan("")}).ok());
}

TEST(ManifestTest, CompareVersions) {
  EXPECT_EQ(*CompareVersions("1.2.3", "1.2.3"), 0);
  EXPECT_EQ(*CompareVersions("1.10.0", "1.9.9"), 1);
  EXPECT_EQ(*CompareVersions("0.9", "0.9.1"), -1);
  EXPECT_EQ(*CompareVersions("2.0.0-rc1", "2"), 0);
  EXPECT_FALSE(CompareVersions("1.2.3.4", "1").ok());
  EXPECT_FALSE(CompareVersions("v1", "1").ok());
  EXPECT_FALSE(CompareVersions("", "1").ok());
}

TEST(ManifestTest, FormatRfc3339) {
  EXPECT_EQ(FormatRfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatRfc3339(1717243200), "2024-06-01T12:00:00Z");
}

}  // namespace
}  // namespace outpost::bundle
