#include "serve/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace outpost::serve {
namespace {

using ::testing::HasSubstr;

constexpr std::string_view kSource = "models/m/config.yaml";

absl::StatusOr<ModelConfig> Parse(std::string_view yaml) { return ParseModelConfig(yaml, kSource); }

// The message of a config that must fail with InvalidArgument.
std::string ErrorOf(std::string_view yaml) {
  absl::StatusOr<ModelConfig> config = Parse(yaml);
  if (config.ok()) return "<parsed OK>";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
  return std::string(config.status().message());
}

TEST(ModelConfigTest, EmptyFileGivesDefaults) {
  for (std::string_view text : {"", "\n", "# only a comment\n", "---\n"}) {
    absl::StatusOr<ModelConfig> config = Parse(text);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->max_batch_size, 0);
    EXPECT_FALSE(config->max_batch_size_set);
    EXPECT_FALSE(config->dynamic_batching.has_value());
    EXPECT_EQ(config->max_queue_size, 128);
    EXPECT_EQ(config->instance_count, 1);
    EXPECT_EQ(config->execution_providers, std::vector{ExecutionProvider::kCpu});
    EXPECT_FALSE(config->strict_providers);
    EXPECT_EQ(config->intra_op_threads, 0);
    EXPECT_EQ(config->inter_op_threads, 1);
    EXPECT_EQ(config->graph_optimization, GraphOptimization::kAll);
    EXPECT_TRUE(config->cpu_arena);
    EXPECT_TRUE(config->inline_execution);
    EXPECT_EQ(config->warmup_iterations, 1);
    EXPECT_EQ(config->version_policy.kind, VersionPolicy::Kind::kLatest);
    EXPECT_EQ(config->version_policy.latest_count, 1);
    EXPECT_TRUE(config->inputs.empty());
    EXPECT_TRUE(config->outputs.empty());
    EXPECT_TRUE(config->labels_file.empty());
  }
}

TEST(ModelConfigTest, ParsesEveryKey) {
  absl::StatusOr<ModelConfig> config = Parse(R"(
max_batch_size: 8
dynamic_batching:
  max_queue_delay_us: 500
  preferred_batch_sizes: [4, 8]
max_queue_size: 64
instance_count: 2
inline_execution: false
execution_providers: [TensorRT, CUDA, cpu]
strict_providers: true
intra_op_threads: 4
inter_op_threads: 2
graph_optimization: extended
cpu_arena: false
warmup: { iterations: 3 }
version_policy: {specific: [3, 1]}
inputs:  [{name: x, datatype: FP32, shape: [3, 224, 224]}]
outputs:
  - name: y
    datatype: fp16
    shape: [-1]
labels: labels.txt
)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_batch_size, 8);
  EXPECT_TRUE(config->max_batch_size_set);
  ASSERT_TRUE(config->dynamic_batching.has_value());
  EXPECT_EQ(config->dynamic_batching->max_queue_delay_us, 500);
  EXPECT_EQ(config->dynamic_batching->preferred_batch_sizes, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(config->max_queue_size, 64);
  EXPECT_EQ(config->instance_count, 2);
  EXPECT_FALSE(config->inline_execution);
  EXPECT_EQ(config->execution_providers,
            (std::vector{ExecutionProvider::kTensorRt, ExecutionProvider::kCuda,
                         ExecutionProvider::kCpu}));
  EXPECT_TRUE(config->strict_providers);
  EXPECT_EQ(config->intra_op_threads, 4);
  EXPECT_EQ(config->inter_op_threads, 2);
  EXPECT_EQ(config->graph_optimization, GraphOptimization::kExtended);
  EXPECT_FALSE(config->cpu_arena);
  EXPECT_EQ(config->warmup_iterations, 3);
  EXPECT_EQ(config->version_policy.kind, VersionPolicy::Kind::kSpecific);
  EXPECT_EQ(config->version_policy.versions, (std::vector<int64_t>{1, 3}));
  ASSERT_EQ(config->inputs.size(), 1u);
  EXPECT_EQ(config->inputs[0].name, "x");
  EXPECT_EQ(config->inputs[0].datatype, DataType::kFp32);
  EXPECT_EQ(config->inputs[0].shape, (std::vector<int64_t>{3, 224, 224}));
  ASSERT_EQ(config->outputs.size(), 1u);
  EXPECT_EQ(config->outputs[0].name, "y");
  EXPECT_EQ(config->outputs[0].datatype, DataType::kFp16);
  EXPECT_EQ(config->outputs[0].shape, (std::vector<int64_t>{-1}));
  EXPECT_EQ(config->labels_file, "labels.txt");
}

TEST(ModelConfigTest, SyntaxErrorReportsLineAndColumn) {
  EXPECT_THAT(ErrorOf("max_batch_size: 8\ninputs: [{name: x\n"),
              HasSubstr("models/m/config.yaml: line "));
  std::string message = ErrorOf("max_batch_size: 8\n  bad: indentation\n");
  EXPECT_THAT(message, HasSubstr("models/m/config.yaml: line 2, column "));
  EXPECT_THAT(message, HasSubstr("invalid YAML"));
}

TEST(ModelConfigTest, TopLevelMustBeAMap) {
  EXPECT_EQ(ErrorOf("- 1\n- 2\n"),
            "models/m/config.yaml: the top level must be a map of keys (e.g. 'max_batch_size: "
            "8'), got a list");
  EXPECT_THAT(ErrorOf("just text"), HasSubstr("got 'just text'"));
}

TEST(ModelConfigTest, UnknownKeyIsRejectedWithSuggestion) {
  EXPECT_THAT(ErrorOf("max_batch_sise: 8\n"),
              HasSubstr("models/m/config.yaml: key 'max_batch_sise': unknown key (did you mean "
                        "'max_batch_size'?); known keys: max_batch_size, dynamic_batching"));
  std::string far = ErrorOf("completely_different: 1\n");
  EXPECT_THAT(far, HasSubstr("key 'completely_different': unknown key; known keys:"));
  EXPECT_THAT(far, Not(HasSubstr("did you mean")));
}

TEST(ModelConfigTest, UnknownNestedKeysAreRejected) {
  EXPECT_THAT(ErrorOf("max_batch_size: 4\ndynamic_batching: {max_queue_delay: 5}\n"),
              HasSubstr("key 'dynamic_batching.max_queue_delay': unknown key (did you mean "
                        "'max_queue_delay_us'?)"));
  EXPECT_THAT(ErrorOf("warmup: {iteration: 2}\n"),
              HasSubstr("key 'warmup.iteration': unknown key (did you mean 'iterations'?)"));
  EXPECT_THAT(ErrorOf("inputs: [{name: x, dataype: FP32, shape: [1]}]\n"),
              HasSubstr("key 'inputs[0].dataype': unknown key (did you mean 'datatype'?)"));
}

TEST(ModelConfigTest, DuplicateKeyIsRejected) {
  EXPECT_EQ(ErrorOf("max_batch_size: 1\nmax_batch_size: 2\n"),
            "models/m/config.yaml: key 'max_batch_size': appears more than once");
}

TEST(ModelConfigTest, MaxBatchSize) {
  EXPECT_EQ(ErrorOf("max_batch_size: -3\n"),
            "models/m/config.yaml: key 'max_batch_size': must be >= 0, got -3");
  EXPECT_EQ(ErrorOf("max_batch_size: abc\n"),
            "models/m/config.yaml: key 'max_batch_size': must be an integer, got 'abc'");
  EXPECT_EQ(ErrorOf("max_batch_size: 1.5\n"),
            "models/m/config.yaml: key 'max_batch_size': must be an integer, got '1.5'");
  EXPECT_EQ(ErrorOf("max_batch_size: [1]\n"),
            "models/m/config.yaml: key 'max_batch_size': must be an integer, got a list");
  EXPECT_EQ(ErrorOf("max_batch_size:\n"),
            "models/m/config.yaml: key 'max_batch_size': must be an integer, got nothing");
  EXPECT_THAT(ErrorOf("max_batch_size: 99999999\n"), HasSubstr("must be <= 1048576"));
  absl::StatusOr<ModelConfig> zero = Parse("max_batch_size: 0\n");
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->max_batch_size, 0);
  EXPECT_TRUE(zero->max_batch_size_set);
}

TEST(ModelConfigTest, DynamicBatchingNeedsBatching) {
  EXPECT_EQ(ErrorOf("dynamic_batching: {max_queue_delay_us: 100}\n"),
            "models/m/config.yaml: key 'dynamic_batching': requires max_batch_size > 0, and "
            "max_batch_size is not set");
  EXPECT_EQ(ErrorOf("max_batch_size: 0\ndynamic_batching: {}\n"),
            "models/m/config.yaml: key 'dynamic_batching': requires max_batch_size > 0, got 0");
  // Order in the file does not matter.
  absl::StatusOr<ModelConfig> config = Parse("dynamic_batching:\nmax_batch_size: 4\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->dynamic_batching.has_value());
  EXPECT_EQ(config->dynamic_batching->max_queue_delay_us, 0);
  EXPECT_TRUE(config->dynamic_batching->preferred_batch_sizes.empty());
}

TEST(ModelConfigTest, PreferredBatchSizes) {
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: [4, 16]}\n"),
            "models/m/config.yaml: key 'dynamic_batching.preferred_batch_sizes': must be <= "
            "max_batch_size (8), got 16");
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: [4, 4]}\n"),
            "models/m/config.yaml: key 'dynamic_batching.preferred_batch_sizes': lists 4 more "
            "than once");
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: [0]}\n"),
            "models/m/config.yaml: key 'dynamic_batching.preferred_batch_sizes[0]': must be >= 1, "
            "got 0");
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: {preferred_batch_sizes: 4}\n"),
            "models/m/config.yaml: key 'dynamic_batching.preferred_batch_sizes': must be a list "
            "(e.g. [4, 8]), got '4'");
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: {max_queue_delay_us: -1}\n"),
            "models/m/config.yaml: key 'dynamic_batching.max_queue_delay_us': must be >= 0, got "
            "-1");
  EXPECT_EQ(ErrorOf("max_batch_size: 8\ndynamic_batching: 5\n"),
            "models/m/config.yaml: key 'dynamic_batching': must be a map (e.g. "
            "{max_queue_delay_us: 500}), got '5'");
}

TEST(ModelConfigTest, MaxQueueSize) {
  EXPECT_EQ(ErrorOf("max_queue_size: 0\n"),
            "models/m/config.yaml: key 'max_queue_size': must be >= 1, got 0");
  ASSERT_TRUE(Parse("max_queue_size: 1\n").ok());
}

TEST(ModelConfigTest, InstanceCountIsOneToSixtyFour) {
  EXPECT_EQ(ErrorOf("instance_count: 0\n"),
            "models/m/config.yaml: key 'instance_count': must be >= 1, got 0");
  EXPECT_EQ(ErrorOf("instance_count: 65\n"),
            "models/m/config.yaml: key 'instance_count': must be <= 64, got 65");
  for (int count : {1, 64}) {
    absl::StatusOr<ModelConfig> config = Parse("instance_count: " + std::to_string(count));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->instance_count, count);
  }
}

TEST(ModelConfigTest, ExecutionProviders) {
  absl::StatusOr<ModelConfig> config = Parse("execution_providers: [Cuda, CPU]\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->execution_providers,
            (std::vector{ExecutionProvider::kCuda, ExecutionProvider::kCpu}));
  EXPECT_EQ(ErrorOf("execution_providers: [cpu, CPU]\n"),
            "models/m/config.yaml: key 'execution_providers': lists 'cpu' more than once");
  EXPECT_EQ(ErrorOf("execution_providers: [cuda, rocm]\n"),
            "models/m/config.yaml: key 'execution_providers[1]': unknown execution provider "
            "'rocm'; expected cpu, cuda or tensorrt");
  EXPECT_EQ(ErrorOf("execution_providers: []\n"),
            "models/m/config.yaml: key 'execution_providers': must list at least one provider "
            "(e.g. [cpu])");
  EXPECT_EQ(ErrorOf("execution_providers: cuda\n"),
            "models/m/config.yaml: key 'execution_providers': must be a list (e.g. [cuda, cpu]), "
            "got 'cuda'");
  EXPECT_EQ(ErrorOf("execution_providers: [[cpu]]\n"),
            "models/m/config.yaml: key 'execution_providers[0]': must be a non-empty string, got "
            "a list");
}

TEST(ModelConfigTest, ProviderNames) {
  EXPECT_EQ(ProviderName(ExecutionProvider::kCpu), "cpu");
  EXPECT_EQ(ProviderName(ExecutionProvider::kCuda), "cuda");
  EXPECT_EQ(ProviderName(ExecutionProvider::kTensorRt), "tensorrt");
}

TEST(ModelConfigTest, Booleans) {
  absl::StatusOr<ModelConfig> config = Parse("strict_providers: yes\ncpu_arena: False\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->strict_providers);
  EXPECT_FALSE(config->cpu_arena);
  EXPECT_EQ(ErrorOf("strict_providers: maybe\n"),
            "models/m/config.yaml: key 'strict_providers': must be true or false, got 'maybe'");
  EXPECT_EQ(ErrorOf("cpu_arena: 1\n"),
            "models/m/config.yaml: key 'cpu_arena': must be true or false, got '1'");
  EXPECT_EQ(ErrorOf("inline_execution: sometimes\n"),
            "models/m/config.yaml: key 'inline_execution': must be true or false, got "
            "'sometimes'");
}

TEST(ModelConfigTest, SessionConfigEntriesPassThroughInOrder) {
  absl::StatusOr<ModelConfig> config = Parse(
      "session_config:\n  session.intra_op.allow_spinning: \"0\"\n"
      "  session.dynamic_block_base: 4\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->session_config.size(), 2u);
  EXPECT_EQ(config->session_config[0],
            std::make_pair(std::string("session.intra_op.allow_spinning"), std::string("0")));
  EXPECT_EQ(config->session_config[1],
            std::make_pair(std::string("session.dynamic_block_base"), std::string("4")));
  EXPECT_TRUE(Parse("")->session_config.empty());
  EXPECT_EQ(ErrorOf("session_config: [a, b]\n"),
            "models/m/config.yaml: key 'session_config': must be a map (e.g. "
            "{session.intra_op.allow_spinning: \"0\"}), got a list");
  EXPECT_EQ(ErrorOf("session_config:\n  session.x: [1]\n"),
            "models/m/config.yaml: key 'session_config.session.x': must be a string or number, "
            "got a list");
}

TEST(ModelConfigTest, Threads) {
  EXPECT_EQ(ErrorOf("intra_op_threads: -1\n"),
            "models/m/config.yaml: key 'intra_op_threads': must be >= 0, got -1");
  EXPECT_EQ(ErrorOf("inter_op_threads: 5000\n"),
            "models/m/config.yaml: key 'inter_op_threads': must be <= 1024, got 5000");
}

TEST(ModelConfigTest, GraphOptimization) {
  const std::pair<std::string_view, GraphOptimization> cases[] = {
      {"disable", GraphOptimization::kDisable},
      {"basic", GraphOptimization::kBasic},
      {"Extended", GraphOptimization::kExtended},
      {"ALL", GraphOptimization::kAll}};
  for (const auto& [text, level] : cases) {
    absl::StatusOr<ModelConfig> config = Parse("graph_optimization: " + std::string(text));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->graph_optimization, level) << text;
  }
  EXPECT_EQ(ErrorOf("graph_optimization: max\n"),
            "models/m/config.yaml: key 'graph_optimization': must be one of disable, basic, "
            "extended, all, got 'max'");
}

TEST(ModelConfigTest, Warmup) {
  absl::StatusOr<ModelConfig> config = Parse("warmup: {iterations: 0}\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->warmup_iterations, 0);
  EXPECT_EQ(ErrorOf("warmup: 3\n"),
            "models/m/config.yaml: key 'warmup': must be a map (e.g. {iterations: 1}), got '3'");
  EXPECT_EQ(ErrorOf("warmup: {iterations: -1}\n"),
            "models/m/config.yaml: key 'warmup.iterations': must be >= 0, got -1");
}

TEST(ModelConfigTest, VersionPolicyForms) {
  absl::StatusOr<ModelConfig> latest = Parse("version_policy: latest\n");
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(latest->version_policy.kind, VersionPolicy::Kind::kLatest);
  EXPECT_EQ(latest->version_policy.latest_count, 1);

  absl::StatusOr<ModelConfig> all = Parse("version_policy: all\n");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->version_policy.kind, VersionPolicy::Kind::kAll);

  absl::StatusOr<ModelConfig> latest_two = Parse("version_policy: {latest: 2}\n");
  ASSERT_TRUE(latest_two.ok()) << latest_two.status();
  EXPECT_EQ(latest_two->version_policy.kind, VersionPolicy::Kind::kLatest);
  EXPECT_EQ(latest_two->version_policy.latest_count, 2);

  absl::StatusOr<ModelConfig> specific = Parse("version_policy:\n  specific: [3, 1]\n");
  ASSERT_TRUE(specific.ok()) << specific.status();
  EXPECT_EQ(specific->version_policy.kind, VersionPolicy::Kind::kSpecific);
  EXPECT_EQ(specific->version_policy.versions, (std::vector<int64_t>{1, 3}));
}

TEST(ModelConfigTest, VersionPolicyErrors) {
  constexpr std::string_view kPrefix =
      "models/m/config.yaml: key 'version_policy': expected latest, all, {latest: N} or "
      "{specific: [1, 3]}, got ";
  EXPECT_EQ(ErrorOf("version_policy: newest\n"), std::string(kPrefix) + "'newest'");
  EXPECT_EQ(ErrorOf("version_policy: {latest: 1, all: 1}\n"),
            std::string(kPrefix) + "a map with 2 keys");
  EXPECT_EQ(ErrorOf("version_policy: {newest: 1}\n"),
            std::string(kPrefix) + "a map with key 'newest'");
  EXPECT_EQ(ErrorOf("version_policy: [1]\n"), std::string(kPrefix) + "a list");
  EXPECT_EQ(ErrorOf("version_policy: {latest: 0}\n"),
            "models/m/config.yaml: key 'version_policy.latest': must be >= 1, got 0");
  EXPECT_EQ(ErrorOf("version_policy: {specific: []}\n"),
            "models/m/config.yaml: key 'version_policy.specific': must list at least one "
            "version");
  EXPECT_EQ(ErrorOf("version_policy: {specific: [2, 2]}\n"),
            "models/m/config.yaml: key 'version_policy.specific': lists 2 more than once");
  EXPECT_EQ(ErrorOf("version_policy: {specific: [0]}\n"),
            "models/m/config.yaml: key 'version_policy.specific[0]': must be >= 1, got 0");
}

TEST(ModelConfigTest, VersionPolicySelect) {
  VersionPolicy policy;
  EXPECT_EQ(policy.Select({3, 1, 2}), (std::vector<int64_t>{3}));
  EXPECT_TRUE(policy.Select({}).empty());
  policy.latest_count = 2;
  EXPECT_EQ(policy.Select({1, 7, 3, 3}), (std::vector<int64_t>{3, 7}));
  policy.latest_count = 5;
  EXPECT_EQ(policy.Select({2, 1}), (std::vector<int64_t>{1, 2}));
  policy.kind = VersionPolicy::Kind::kAll;
  EXPECT_EQ(policy.Select({5, 2, 9}), (std::vector<int64_t>{2, 5, 9}));
  policy.kind = VersionPolicy::Kind::kSpecific;
  policy.versions = {1, 3, 8};
  EXPECT_EQ(policy.Select({4, 3, 2, 1}), (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(policy.Select({2, 4}).empty());
}

TEST(ModelConfigTest, TensorOverrideErrors) {
  EXPECT_EQ(ErrorOf("inputs: [{datatype: FP32, shape: [4]}]\n"),
            "models/m/config.yaml: key 'inputs[0]': missing 'name'");
  EXPECT_EQ(ErrorOf("inputs: [{name: x, shape: [4]}]\n"),
            "models/m/config.yaml: key 'inputs[0]': missing 'datatype' (e.g. FP32)");
  EXPECT_EQ(ErrorOf("outputs: [{name: y, datatype: FP32}]\n"),
            "models/m/config.yaml: key 'outputs[0]': missing 'shape' (e.g. [3, 224, 224])");
  EXPECT_THAT(ErrorOf("inputs: [{name: x, datatype: FLOAT, shape: [4]}]\n"),
              HasSubstr("models/m/config.yaml: key 'inputs[0].datatype': unsupported datatype "
                        "'FLOAT'; expected one of BOOL,"));
  EXPECT_THAT(ErrorOf("inputs: [{name: x, datatype: BYTES, shape: [4]}]\n"),
              HasSubstr("key 'inputs[0].datatype': unsupported datatype 'BYTES'"));
  EXPECT_EQ(ErrorOf("inputs: [{name: x, datatype: FP32, shape: [4, 0]}]\n"),
            "models/m/config.yaml: key 'inputs[0].shape[1]': must be -1 (dynamic) or >= 1, got 0");
  EXPECT_EQ(ErrorOf("inputs: [{name: x, datatype: FP32, shape: [-2]}]\n"),
            "models/m/config.yaml: key 'inputs[0].shape[0]': must be >= -1, got -2");
  EXPECT_EQ(ErrorOf("inputs: [{name: x, datatype: FP32, shape: 4}]\n"),
            "models/m/config.yaml: key 'inputs[0].shape': must be a list (e.g. [3, 224, 224]), "
            "got '4'");
  EXPECT_EQ(ErrorOf("inputs:\n  - {name: x, datatype: FP32, shape: [1]}\n"
                    "  - {name: x, datatype: FP32, shape: [2]}\n"),
            "models/m/config.yaml: key 'inputs[1]': names 'x' more than once");
  EXPECT_EQ(ErrorOf("inputs: {name: x}\n"),
            "models/m/config.yaml: key 'inputs': must be a list (e.g. [{name: x, datatype: FP32, "
            "shape: [3, 224, 224]}]), got a map");
  EXPECT_EQ(ErrorOf("outputs: [y]\n"),
            "models/m/config.yaml: key 'outputs[0]': must be a map (e.g. {name: x, datatype: "
            "FP32, shape: [4]}), got 'y'");
  // A scalar (rank 0) override is allowed.
  absl::StatusOr<ModelConfig> scalar = Parse("outputs: [{name: y, datatype: INT64, shape: []}]\n");
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_TRUE(scalar->outputs[0].shape.empty());
}

TEST(ModelConfigTest, Labels) {
  absl::StatusOr<ModelConfig> config = Parse("labels: meta/labels.txt\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->labels_file, "meta/labels.txt");
  EXPECT_EQ(ErrorOf("labels: /etc/passwd\n"),
            "models/m/config.yaml: key 'labels': must be a path relative to the model folder, "
            "without '..', got '/etc/passwd'");
  EXPECT_THAT(ErrorOf("labels: ../other/labels.txt\n"),
              HasSubstr("key 'labels': must be a path relative to the model folder"));
  EXPECT_EQ(ErrorOf("labels: ''\n"),
            "models/m/config.yaml: key 'labels': must be a non-empty string, got ''");
}

class LoadModelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("outpost_model_config_test_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(std::string_view text) {
    std::ofstream out(dir_ / "config.yaml");
    out << text;
  }

  std::filesystem::path dir_;
};

TEST_F(LoadModelConfigTest, MissingFileGivesDefaults) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->max_batch_size_set);
  EXPECT_EQ(config->execution_providers, std::vector{ExecutionProvider::kCpu});
}

TEST_F(LoadModelConfigTest, ReadsTheFile) {
  Write("max_batch_size: 4\ninstance_count: 3\n");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_batch_size, 4);
  EXPECT_EQ(config->instance_count, 3);
}

TEST_F(LoadModelConfigTest, ErrorsNameTheFile) {
  Write("max_batch_size: -3\n");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(),
            (dir_ / "config.yaml").string() + ": key 'max_batch_size': must be >= 0, got -3");
}

TEST_F(LoadModelConfigTest, DirectoryInsteadOfFileIsAnError) {
  std::filesystem::create_directories(dir_ / "config.yaml");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(config.status().message(), HasSubstr("config.yaml: not a regular file"));
}

}  // namespace
}  // namespace outpost::serve

namespace outpost::serve {
namespace {

TEST(ModelConfigOutputScoreTest, ParsesOutputKindAndBuckets) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(
      "output_score: {output: prob, kind: softmax_max, buckets: [0.5, 0.9, 1]}\n", "c.yaml");
  ASSERT_TRUE(config.ok()) << MessageOf(config.status());
  EXPECT_TRUE(config->output_score.enabled);
  EXPECT_EQ(config->output_score.output, "prob");
  EXPECT_EQ(config->output_score.kind, ScoreKind::kSoftmaxMax);
  EXPECT_EQ(config->output_score.buckets, (std::vector<double>{0.5, 0.9, 1.0}));

  config = ParseModelConfig("output_score: off\n", "c.yaml");
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(config->output_score.enabled);
  config = ParseModelConfig("", "c.yaml");
  EXPECT_TRUE(config->output_score.enabled);  // on by default, auto kind, default buckets
  EXPECT_EQ(config->output_score.kind, ScoreKind::kAuto);
  EXPECT_TRUE(config->output_score.buckets.empty());
}

TEST(ModelConfigOutputScoreTest, BadValuesNameTheKey) {
  auto message = [](std::string_view yaml) {
    absl::StatusOr<ModelConfig> config = ParseModelConfig(yaml, "c.yaml");
    return config.ok() ? std::string("ok") : std::string(MessageOf(config.status()));
  };
  EXPECT_EQ(message("output_score: {kind: entropy}"),
            "c.yaml: key 'output_score.kind': must be auto, softmax_max, max or value, got "
            "'entropy'");
  EXPECT_EQ(message("output_score: {buckets: [0.5, 0.5]}"),
            "c.yaml: key 'output_score.buckets[1]': bucket edges must increase strictly, got 0.5 "
            "after 0.5");
  EXPECT_EQ(message("output_score: {buckets: []}"),
            "c.yaml: key 'output_score.buckets': must list 1..64 bucket edges, got 0");
  EXPECT_EQ(message("output_score: {buckets: [a]}"),
            "c.yaml: key 'output_score.buckets[0]': must be a finite number, got 'a'");
  EXPECT_NE(message("output_score: {outptu: y}").find("did you mean 'output'"), std::string::npos);
}

}  // namespace
}  // namespace outpost::serve

namespace outpost::serve {
namespace {

TEST(ModelConfigTest, PreprocessSectionKeepsOnlyTheKeysWritten) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(R"(
preprocess:
  resize: letterbox
  size: [320, 240]
  color: bgr
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  layout: nhwc
  dtype: fp16
  pad_value: 0
)",
                                                        "models/m/config.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  const PreprocessSpec& p = config->preprocess;
  EXPECT_EQ(p.resize, ResizeMode::kLetterbox);
  EXPECT_EQ(p.width, 320);
  EXPECT_EQ(p.height, 240);
  EXPECT_EQ(p.rgb, false);
  EXPECT_EQ(p.mean, (std::array<double, 3>{0.485, 0.456, 0.406}));
  EXPECT_EQ(p.std, (std::array<double, 3>{0.229, 0.224, 0.225}));
  EXPECT_EQ(p.layout, Layout::kNhwc);
  EXPECT_EQ(p.dtype, DataType::kFp16);
  EXPECT_EQ(p.pad_value, 0);
  EXPECT_FALSE(p.scale.has_value());  // not written: a pipeline or the default decides
  EXPECT_FALSE(p.input.has_value());
  EXPECT_EQ(PreprocessSpecJson(p).dump(),
            R"({"color":"bgr","dtype":"fp16","layout":"nhwc","mean":[0.485,0.456,0.406],)"
            R"("pad_value":0,"resize":"letterbox","size":[320,240],"std":[0.229,0.224,0.225]})");

  absl::StatusOr<ModelConfig> none = ParseModelConfig("max_batch_size: 1\n", "c.yaml");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->preprocess.empty());
}

TEST(ModelConfigTest, PreprocessErrorsNameFileAndKey) {
  auto error = [](std::string_view yaml) {
    absl::StatusOr<ModelConfig> c = ParseModelConfig(yaml, "models/m/config.yaml");
    EXPECT_FALSE(c.ok()) << yaml;
    return c.ok() ? std::string() : std::string(MessageOf(c.status()));
  };
  EXPECT_EQ(error("preprocess: {resize: crop}\n"),
            "models/m/config.yaml: key 'preprocess.resize': must be one of stretch, letterbox; "
            "got 'crop'");
  EXPECT_EQ(error("preprocess: {mean: [1, 2]}\n"),
            "models/m/config.yaml: key 'preprocess.mean': must be a list of 3 numbers, got a list");
  EXPECT_EQ(error("preprocess: {std: [1, 0, 1]}\n"),
            "models/m/config.yaml: key 'preprocess.std[1]': must be in 1e-12..1e+09, got 0");
  EXPECT_EQ(error("preprocess: {dtype: int8}\n"),
            "models/m/config.yaml: key 'preprocess.dtype': must be one of fp32, fp16, uint8; got "
            "'int8'");
  EXPECT_EQ(error("preprocess: {layout: chw}\n"),
            "models/m/config.yaml: key 'preprocess.layout': must be one of nchw, nhwc; got 'chw'");
  EXPECT_EQ(error("preprocess: {size: [640]}\n"),
            "models/m/config.yaml: key 'preprocess.size': must be [width, height], got a list");
  EXPECT_EQ(error("preprocess: {pad_value: 300}\n"),
            "models/m/config.yaml: key 'preprocess.pad_value': must be in 0..255, got 300");
  EXPECT_THAT(error("preprocess: {colour: rgb}\n"),
              HasSubstr("key 'preprocess.colour': unknown key (known: input, resize, size, color"));
  EXPECT_EQ(error("preprocess: {color: rgb, color: bgr}\n"),
            "models/m/config.yaml: key 'preprocess.color': repeated");
  EXPECT_EQ(error("preprocess: letterbox\n"),
            "models/m/config.yaml: key 'preprocess': must be a map, got 'letterbox'");
  EXPECT_EQ(error("preprocess: {dtype: uint8, scale: 1}\n"),
            "models/m/config.yaml: key 'preprocess.dtype': uint8 input takes the pixels as they "
            "are: remove scale, mean and std");
}

}  // namespace
}  // namespace outpost::serve
