#include "serve/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <onnxruntime_cxx_api.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OUTPOST_TEST_HAS_ASAN 1
#endif
#endif

namespace outpost::serve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::filesystem::path ModelsDir() {
  const char* dir = std::getenv("OUTPOST_TEST_MODELS");
  // Not a skip: without models these tests would prove nothing.
  EXPECT_NE(dir, nullptr) << "OUTPOST_TEST_MODELS is not set (ctest sets it; or run "
                             "scripts/gen_models.py --out DIR and export it)";
  return dir == nullptr ? std::filesystem::path() : std::filesystem::path(dir);
}

EngineOptions Options(std::string_view model, int64_t version, ModelConfig config = {}) {
  EngineOptions options;
  options.model_path = ModelsDir() / model / std::to_string(version) / "model.onnx";
  options.config = std::move(config);
  options.model_name = std::string(model);
  options.version = version;
  return options;
}

std::unique_ptr<Engine> MustCreate(const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

template <typename T>
InputTensor Input(std::string name, DataType type, std::vector<int64_t> shape,
                  const std::vector<T>& values) {
  InputTensor input;
  input.name = std::move(name);
  input.datatype = type;
  input.shape = std::move(shape);
  input.data = std::as_bytes(std::span<const T>(values));
  return input;
}

template <typename T>
std::vector<T> Values(const OutputTensor& output) {
  EXPECT_EQ(output.data.size() % sizeof(T), 0u);
  std::vector<T> values(output.data.size() / sizeof(T));
  std::memcpy(values.data(), output.data.data(), output.data.size());
  return values;
}

void ExpectSpec(const TensorSpec& spec, std::string_view name, DataType type,
                std::vector<int64_t> shape) {
  EXPECT_EQ(spec.name, name);
  EXPECT_EQ(spec.datatype, type) << spec.name;
  EXPECT_EQ(spec.shape, shape) << spec.name;
}

class TempDir {
 public:
  TempDir() {
    path_ =
        std::filesystem::temp_directory_path() /
        ("outpost_engine_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path Write(std::string_view name, std::string_view bytes) const {
    std::filesystem::path file = path_ / name;
    std::ofstream(file, std::ios::binary) << bytes;
    return file;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

// Just enough protobuf to hand-write ONNX models the Python generator does
// not make (a string input, a model that fails on warm-up shapes).
std::string Varint(uint64_t value) {
  std::string out;
  while (value >= 0x80) {
    out.push_back(static_cast<char>(value | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
  return out;
}
std::string VarintField(int number, uint64_t value) {
  return Varint(static_cast<uint64_t>(number) << 3) + Varint(value);
}
std::string BytesField(int number, std::string_view bytes) {
  return Varint((static_cast<uint64_t>(number) << 3) | 2) + Varint(bytes.size()) +
         std::string(bytes);
}
constexpr int kOnnxFloat = 1;
constexpr int kOnnxString = 8;
constexpr int kOnnxInt64 = 7;

// ValueInfoProto for a tensor; a negative dimension is symbolic ("n").
std::string ValueInfo(std::string_view name, int elem_type, std::vector<int64_t> dims) {
  std::string shape;
  for (int64_t dim : dims) {
    shape += BytesField(1, dim < 0 ? BytesField(2, "n") : VarintField(1, dim));
  }
  std::string tensor_type = VarintField(1, elem_type) + BytesField(2, shape);
  return BytesField(1, name) + BytesField(2, BytesField(1, tensor_type));
}
std::string Node(std::vector<std::string_view> inputs, std::string_view output,
                 std::string_view op) {
  std::string node;
  for (std::string_view input : inputs) node += BytesField(1, input);
  return node + BytesField(2, output) + BytesField(4, op);
}
std::string Model(std::string graph) {
  return VarintField(1, 8) + BytesField(8, BytesField(1, "") + VarintField(2, 13)) +
         BytesField(7, graph);
}

// s: STRING[1] -> Identity -> t.
std::string StringInputModel() {
  return Model(BytesField(1, Node({"s"}, "t", "Identity")) + BytesField(2, "strings") +
               BytesField(11, ValueInfo("s", kOnnxString, {1})) +
               BytesField(12, ValueInfo("t", kOnnxString, {1})));
}

// x: FP32[n] reshaped to [2, 2]: runs with 4 elements, fails with 1.
std::string ReshapeModel() {
  std::string shape_tensor = VarintField(1, 2) + VarintField(2, kOnnxInt64) + VarintField(7, 2) +
                             VarintField(7, 2) + BytesField(8, "shape");
  return Model(BytesField(1, Node({"x", "shape"}, "y", "Reshape")) + BytesField(2, "reshape") +
               BytesField(5, shape_tensor) + BytesField(11, ValueInfo("x", kOnnxFloat, {-1})) +
               BytesField(12, ValueInfo("y", kOnnxFloat, {2, 2})));
}

// The fallback tests prove the path taken when the GPU providers fail, as
// they must on a machine without an NVIDIA device; on one with a device
// CUDA may well work and there is nothing to fall back from.
bool HasNvidiaDevice() {
  return std::filesystem::exists("/dev/nvidiactl") || std::filesystem::exists("/dev/nvhost-ctrl");
}

#define SKIP_IF_NVIDIA_DEVICE()                                                             \
  if (HasNvidiaDevice()) {                                                                  \
    GTEST_SKIP() << "an NVIDIA device is present; the fallback path is tested on machines " \
                    "without one";                                                          \
  }

ModelConfig Providers(std::vector<ExecutionProvider> providers, bool strict = false) {
  ModelConfig config;
  config.execution_providers = std::move(providers);
  config.strict_providers = strict;
  return config;
}

TEST(EngineTest, MetadataOfTestModels) {
  auto add_one = MustCreate(Options("add_one", 1));
  ASSERT_NE(add_one, nullptr);
  ASSERT_EQ(add_one->inputs().size(), 1u);
  ExpectSpec(add_one->inputs()[0], "x", DataType::kFp32, {-1, 4});
  ASSERT_EQ(add_one->outputs().size(), 1u);
  ExpectSpec(add_one->outputs()[0], "y", DataType::kFp32, {-1, 4});
  EXPECT_EQ(add_one->provider(), ExecutionProvider::kCpu);
  EXPECT_TRUE(add_one->fallbacks().empty());
  EXPECT_EQ(add_one->options().model_name, "add_one");
  EXPECT_EQ(add_one->options().version, 1);

  auto two_io = MustCreate(Options("two_io", 1));
  ASSERT_NE(two_io, nullptr);
  ASSERT_EQ(two_io->inputs().size(), 2u);
  ExpectSpec(two_io->inputs()[0], "a", DataType::kFp32, {-1, 3});
  ExpectSpec(two_io->inputs()[1], "b", DataType::kInt64, {-1, 3});
  ASSERT_EQ(two_io->outputs().size(), 2u);
  ExpectSpec(two_io->outputs()[0], "twice_a", DataType::kFp32, {-1, 3});
  ExpectSpec(two_io->outputs()[1], "b_plus_one", DataType::kInt64, {-1, 3});

  auto fixed = MustCreate(Options("fixed", 1));
  ASSERT_NE(fixed, nullptr);
  ASSERT_EQ(fixed->inputs().size(), 1u);
  ExpectSpec(fixed->inputs()[0], "x", DataType::kFp32, {2, 2});
  ExpectSpec(fixed->outputs()[0], "y", DataType::kFp32, {2, 2});

  auto tiny = MustCreate(Options("tiny", 1));
  ASSERT_NE(tiny, nullptr);
  ExpectSpec(tiny->inputs()[0], "input", DataType::kFp32, {-1, 64});
  ExpectSpec(tiny->outputs()[0], "output", DataType::kFp32, {-1, 10});
}

TEST(EngineTest, RunAddOneVersionsAnswerDifferently) {
  auto v1 = MustCreate(Options("add_one", 1));
  auto v2 = MustCreate(Options("add_one", 2));
  ASSERT_NE(v1, nullptr);
  ASSERT_NE(v2, nullptr);
  std::vector<float> x = {1, 2, 3, 4};
  std::vector<InputTensor> inputs = {Input("x", DataType::kFp32, {1, 4}, x)};

  auto out1 = v1->Run(inputs);
  ASSERT_TRUE(out1.ok()) << out1.status();
  ASSERT_EQ(out1->size(), 1u);
  EXPECT_EQ((*out1)[0].name, "y");
  EXPECT_EQ((*out1)[0].datatype, DataType::kFp32);
  EXPECT_THAT((*out1)[0].shape, ElementsAre(1, 4));
  EXPECT_THAT(Values<float>((*out1)[0]), ElementsAre(2, 3, 4, 5));

  auto out2 = v2->Run(inputs);
  ASSERT_TRUE(out2.ok()) << out2.status();
  EXPECT_THAT(Values<float>((*out2)[0]), ElementsAre(3, 4, 5, 6));
}

TEST(EngineTest, InputIsNotCopied) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> x = {1, 2, 3, 4};
  std::vector<InputTensor> inputs = {Input("x", DataType::kFp32, {1, 4}, x)};
  ASSERT_TRUE(engine->Run(inputs).ok());
  // The same borrowed buffer, changed in place, gives a new answer.
  x[0] = 100;
  auto out = engine->Run(inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(Values<float>((*out)[0]), ElementsAre(101, 3, 4, 5));
}

TEST(EngineTest, BatchOfThree) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> x(12);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  auto out = engine->Run(std::vector{Input("x", DataType::kFp32, {3, 4}, x)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)[0].shape, ElementsAre(3, 4));
  std::vector<float> y = Values<float>((*out)[0]);
  ASSERT_EQ(y.size(), 12u);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], x[i] + 1) << i;
}

TEST(EngineTest, TwoInputsTwoOutputsWithInt64) {
  auto engine = MustCreate(Options("two_io", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> a = {1.5f, -2, 3, 0, 10, 0.25f};
  std::vector<int64_t> b = {1, -1, 5'000'000'000LL, 0, 7, -8};
  std::vector<InputTensor> inputs = {Input("a", DataType::kFp32, {2, 3}, a),
                                     Input("b", DataType::kInt64, {2, 3}, b)};
  auto out = engine->Run(inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 2u);
  EXPECT_EQ((*out)[0].name, "twice_a");
  EXPECT_EQ((*out)[0].datatype, DataType::kFp32);
  EXPECT_THAT((*out)[0].shape, ElementsAre(2, 3));
  EXPECT_THAT(Values<float>((*out)[0]), ElementsAre(3, -4, 6, 0, 20, 0.5f));
  EXPECT_EQ((*out)[1].name, "b_plus_one");
  EXPECT_EQ((*out)[1].datatype, DataType::kInt64);
  EXPECT_THAT(Values<int64_t>((*out)[1]), ElementsAre(2, 0, 5'000'000'001LL, 1, 8, -7));
}

TEST(EngineTest, OutputSelection) {
  auto engine = MustCreate(Options("two_io", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> a = {1, 2, 3};
  std::vector<int64_t> b = {4, 5, 6};
  std::vector<InputTensor> inputs = {Input("a", DataType::kFp32, {1, 3}, a),
                                     Input("b", DataType::kInt64, {1, 3}, b)};

  const int second[] = {1};
  auto only_b = engine->Run(inputs, second);
  ASSERT_TRUE(only_b.ok()) << only_b.status();
  ASSERT_EQ(only_b->size(), 1u);
  EXPECT_EQ((*only_b)[0].name, "b_plus_one");
  EXPECT_THAT(Values<int64_t>((*only_b)[0]), ElementsAre(5, 6, 7));

  const int reversed[] = {1, 0};
  auto both = engine->Run(inputs, reversed);
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->size(), 2u);
  EXPECT_EQ((*both)[0].name, "b_plus_one");
  EXPECT_EQ((*both)[1].name, "twice_a");
  EXPECT_THAT(Values<float>((*both)[1]), ElementsAre(2, 4, 6));

  const int bad[] = {2};
  auto out_of_range = engine->Run(inputs, bad);
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out_of_range.status().message(), HasSubstr("output index 2 out of range"));
}

TEST(EngineTest, OutputsOutliveTheEngine) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> x = {1, 2, 3, 4};
  auto out = engine->Run(std::vector{Input("x", DataType::kFp32, {1, 4}, x)});
  ASSERT_TRUE(out.ok()) << out.status();
  engine.reset();
  // `owner` keeps ORT's buffer alive (an old version's in-flight response
  // during a hot swap); ASan would flag a use after free here.
  EXPECT_THAT(Values<float>((*out)[0]), ElementsAre(2, 3, 4, 5));
}

TEST(EngineTest, RunRejectsInconsistentInputs) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> three = {1, 2, 3};
  auto size_mismatch = engine->Run(std::vector{Input("x", DataType::kFp32, {1, 4}, three)});
  ASSERT_EQ(size_mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(size_mismatch.status().message(),
            "model 'add_one' version 1: input #0 'x': got FP32 [1,4] with 12 bytes of data; the "
            "model takes FP32 [-1,4] (4 bytes per element, dynamic dimensions as -1)");

  std::vector<double> doubles = {1, 2, 3, 4};
  auto wrong_type = engine->Run(std::vector{Input("x", DataType::kFp64, {1, 4}, doubles)});
  EXPECT_EQ(wrong_type.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_type.status().message(), HasSubstr("got FP64 [1,4]"));

  std::vector<float> five = {1, 2, 3, 4, 5};
  auto wrong_dim = engine->Run(std::vector{Input("x", DataType::kFp32, {1, 5}, five)});
  EXPECT_EQ(wrong_dim.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrong_dim.status().message(), HasSubstr("got FP32 [1,5]"));

  std::vector<float> four = {1, 2, 3, 4};
  auto wrong_rank = engine->Run(std::vector{Input("x", DataType::kFp32, {4}, four)});
  EXPECT_EQ(wrong_rank.status().code(), absl::StatusCode::kInvalidArgument);
  auto negative = engine->Run(std::vector{Input("x", DataType::kFp32, {-1, 4}, four)});
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);

  auto none = engine->Run({});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("got 0 inputs, the model takes 1"));

  // Fixed dimensions are enforced too.
  auto fixed = MustCreate(Options("fixed", 1));
  ASSERT_NE(fixed, nullptr);
  std::vector<float> six = {1, 2, 3, 4, 5, 6};
  auto not_two_by_two = fixed->Run(std::vector{Input("x", DataType::kFp32, {2, 3}, six)});
  EXPECT_EQ(not_two_by_two.status().code(), absl::StatusCode::kInvalidArgument);
  auto ok = fixed->Run(std::vector{Input("x", DataType::kFp32, {2, 2}, four)});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(Values<float>((*ok)[0]), ElementsAre(3, 6, 9, 12));
}

TEST(EngineTest, EmptyBatchRuns) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  std::vector<float> none;
  auto out = engine->Run(std::vector{Input("x", DataType::kFp32, {0, 4}, none)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)[0].shape, ElementsAre(0, 4));
  EXPECT_TRUE((*out)[0].data.empty());
}

TEST(EngineTest, CudaFallsBackToCpu) {
  SKIP_IF_NVIDIA_DEVICE();
  auto engine = MustCreate(
      Options("add_one", 1, Providers({ExecutionProvider::kCuda, ExecutionProvider::kCpu})));
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->provider(), ExecutionProvider::kCpu);
  ASSERT_EQ(engine->fallbacks().size(), 1u);
  EXPECT_EQ(engine->fallbacks()[0].provider, ExecutionProvider::kCuda);
  // ORT's own words about what failed (here: the provider library is missing).
  EXPECT_THAT(absl::AsciiStrToLower(engine->fallbacks()[0].reason), HasSubstr("cuda"));
  std::cout << "cuda fallback reason: " << engine->fallbacks()[0].reason << "\n";
  std::vector<float> x = {0, 0, 0, 0};
  auto out = engine->Run(std::vector{Input("x", DataType::kFp32, {1, 4}, x)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT(Values<float>((*out)[0]), ElementsAre(1, 1, 1, 1));
}

TEST(EngineTest, TensorRtAndCudaBothFallBack) {
  SKIP_IF_NVIDIA_DEVICE();
  auto engine = MustCreate(Options("add_one", 1,
                                   Providers({ExecutionProvider::kTensorRt,
                                              ExecutionProvider::kCuda, ExecutionProvider::kCpu})));
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->provider(), ExecutionProvider::kCpu);
  ASSERT_EQ(engine->fallbacks().size(), 2u);
  EXPECT_EQ(engine->fallbacks()[0].provider, ExecutionProvider::kTensorRt);
  EXPECT_EQ(engine->fallbacks()[1].provider, ExecutionProvider::kCuda);
  EXPECT_THAT(absl::AsciiStrToLower(engine->fallbacks()[0].reason), HasSubstr("tensorrt"));
  EXPECT_THAT(absl::AsciiStrToLower(engine->fallbacks()[1].reason), HasSubstr("cuda"));
  std::cout << "tensorrt fallback reason: " << engine->fallbacks()[0].reason << "\n";
}

TEST(EngineTest, StrictProvidersFailOnFirstFailure) {
  SKIP_IF_NVIDIA_DEVICE();
  auto engine = Engine::Create(
      Options("add_one", 1, Providers({ExecutionProvider::kCuda, ExecutionProvider::kCpu}, true)));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(engine.status().message(),
              HasSubstr("model 'add_one' version 1: execution provider 'cuda' failed and "
                        "strict_providers is set: "));
  // ORT's reason follows.
  EXPECT_GT(engine.status().message().size(), 90u);
}

TEST(EngineTest, OnlyAnUnavailableProviderFails) {
  SKIP_IF_NVIDIA_DEVICE();
  auto engine = Engine::Create(Options("add_one", 1, Providers({ExecutionProvider::kCuda})));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(engine.status().message(),
              HasSubstr("model 'add_one' version 1: no listed execution provider works (cuda: "));
  EXPECT_THAT(engine.status().message(), HasSubstr("add cpu to execution_providers"));
}

TEST(EngineTest, StrictWithCpuOnlyLoads) {
  auto engine = MustCreate(Options("add_one", 1, Providers({ExecutionProvider::kCpu}, true)));
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->provider(), ExecutionProvider::kCpu);
}

TEST(EngineTest, MissingFileIsNotFound) {
  EngineOptions options = Options("add_one", 1);
  options.model_path = ModelsDir() / "no_such_model" / "1" / "model.onnx";
  auto engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(engine.status().message(), HasSubstr("no_such_model/1/model.onnx does not exist"));
}

TEST(EngineTest, GarbageFileIsInvalidArgument) {
  TempDir dir;
  for (const auto& providers : {std::vector{ExecutionProvider::kCpu},
                                std::vector{ExecutionProvider::kCuda, ExecutionProvider::kCpu}}) {
    EngineOptions options = Options("garbage", 1, Providers(providers));
    options.model_path = dir.Write("model.onnx", "this is not an ONNX model\n\x01\x02\xff");
    auto engine = Engine::Create(options);
    ASSERT_FALSE(engine.ok());
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
    EXPECT_THAT(engine.status().message(),
                HasSubstr("model 'garbage' version 1: " + options.model_path.string() +
                          " is not a loadable ONNX model: "));
  }
  EngineOptions empty = Options("empty", 1);
  empty.model_path = dir.Write("empty.onnx", "");
  EXPECT_EQ(Engine::Create(empty).status().code(), absl::StatusCode::kInvalidArgument);

  EngineOptions directory = Options("directory", 1);
  directory.model_path = dir.path();
  EXPECT_EQ(Engine::Create(directory).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, StringInputIsRejected) {
  TempDir dir;
  EngineOptions options = Options("strings", 1);
  options.model_path = dir.Write("model.onnx", StringInputModel());
  auto engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument) << engine.status();
  EXPECT_THAT(engine.status().message(),
              HasSubstr("model 'strings' version 1: input 's' has element type string"));
}

TEST(EngineTest, WarmupFailureIsALoadError) {
  TempDir dir;
  EngineOptions options = Options("reshape", 1);
  options.model_path = dir.Write("model.onnx", ReshapeModel());
  options.config.warmup_iterations = 2;
  auto engine = Engine::Create(options);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInternal) << engine.status();
  EXPECT_THAT(engine.status().message(),
              HasSubstr("warm-up inference 1 of 2 failed (zero inputs, dynamic dimensions as 1): "
                        "model 'reshape' version 1: inference failed: "));

  // Without warm-up the same model loads and runs with a valid input.
  options.config.warmup_iterations = 0;
  auto loaded = MustCreate(options);
  ASSERT_NE(loaded, nullptr);
  std::vector<float> x = {1, 2, 3, 4};
  auto out = loaded->Run(std::vector{Input("x", DataType::kFp32, {4}, x)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)[0].shape, ElementsAre(2, 2));
  EXPECT_THAT(Values<float>((*out)[0]), ElementsAre(1, 2, 3, 4));
  // And a bad one is ORT's error, as Internal, naming the model.
  std::vector<float> three = {1, 2, 3};
  auto failed = loaded->Run(std::vector{Input("x", DataType::kFp32, {3}, three)});
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(failed.status().message(),
              HasSubstr("model 'reshape' version 1: inference failed: "));
}

TEST(EngineTest, ConfigOverridesNarrowShapes) {
  ModelConfig config;
  config.max_batch_size = 8;
  config.max_batch_size_set = true;
  config.inputs = {TensorSpec{"x", DataType::kFp32, {4}}};
  config.outputs = {TensorSpec{"y", DataType::kFp32, {4}}};
  auto batching = MustCreate(Options("add_one", 1, config));
  ASSERT_NE(batching, nullptr);
  ExpectSpec(batching->inputs()[0], "x", DataType::kFp32, {-1, 4});

  ModelConfig pinned;
  pinned.inputs = {TensorSpec{"x", DataType::kFp32, {2, 4}}};
  auto engine = MustCreate(Options("add_one", 1, pinned));
  ASSERT_NE(engine, nullptr);
  ExpectSpec(engine->inputs()[0], "x", DataType::kFp32, {2, 4});
  std::vector<float> x(12);
  auto three_rows = engine->Run(std::vector{Input("x", DataType::kFp32, {3, 4}, x)});
  EXPECT_EQ(three_rows.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EngineTest, ConfigOverridesMustAgreeWithTheModel) {
  struct Case {
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
    int64_t max_batch_size;
    std::string message;
  };
  const Case cases[] = {
      {{{"z", DataType::kFp32, {4}}},
       {},
       8,
       "model 'add_one' version 1: config key 'inputs': 'z' is not one of the model's inputs (x)"},
      {{},
       {{"x", DataType::kFp32, {4}}},
       8,
       "model 'add_one' version 1: config key 'outputs': 'x' is not one of the model's outputs "
       "(y)"},
      {{{"x", DataType::kFp64, {4}}},
       {},
       8,
       "model 'add_one' version 1: config key 'inputs': 'x' has datatype FP64 in the config but "
       "FP32 in the model"},
      {{{"x", DataType::kFp32, {5}}},
       {},
       8,
       "model 'add_one' version 1: config key 'inputs': 'x' has shape [5] in the config but "
       "[-1,4] in the model (the config shape leaves out the batch dimension, max_batch_size > "
       "0); each dimension must equal the model's or narrow a dynamic (-1) one"},
      // With batching, the full shape in the config has one dimension too many.
      {{{"x", DataType::kFp32, {-1, 4}}},
       {},
       8,
       "model 'add_one' version 1: config key 'inputs': 'x' has shape [-1,4] in the config but "
       "[-1,4] in the model (the config shape leaves out"},
      {{{"x", DataType::kFp32, {4}}},
       {},
       0,
       "model 'add_one' version 1: config key 'inputs': 'x' has shape [4] in the config but "
       "[-1,4] in the model; each dimension"},
  };
  for (const Case& c : cases) {
    ModelConfig config;
    config.max_batch_size = c.max_batch_size;
    config.max_batch_size_set = true;
    config.inputs = c.inputs;
    config.outputs = c.outputs;
    auto engine = Engine::Create(Options("add_one", 1, config));
    ASSERT_FALSE(engine.ok()) << c.message;
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(engine.status().message(), HasSubstr(c.message));
  }
}

TEST(EngineTest, BatchingNeedsADynamicFirstDimension) {
  ModelConfig config;
  config.max_batch_size = 4;
  config.max_batch_size_set = true;
  auto engine = Engine::Create(Options("fixed", 1, config));
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(engine.status().message(),
              HasSubstr("model 'fixed' version 1: max_batch_size is 4 but input 'x' has shape "
                        "[2,2] without a dynamic first (batch) dimension"));
}

TEST(EngineTest, ConcurrentRunsFromFourThreads) {
  auto engine = MustCreate(Options("add_one", 1));
  ASSERT_NE(engine, nullptr);
  constexpr int kThreads = 4;
  constexpr int kRuns = 300;
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRuns; ++i) {
        const int64_t rows = 1 + (i + t) % 3;
        std::vector<float> x(rows * 4);
        for (size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(t * 100000 + i * 10 + k);
        auto out = engine->Run(std::vector{Input("x", DataType::kFp32, {rows, 4}, x)});
        if (!out.ok() || (*out)[0].shape != std::vector<int64_t>{rows, 4}) {
          ++failures[t];
          continue;
        }
        std::vector<float> y = Values<float>((*out)[0]);
        for (size_t k = 0; k < x.size(); ++k) {
          if (y[k] != x[k] + 1) {
            ++failures[t];
            break;
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(failures, ElementsAre(0, 0, 0, 0));
}

TEST(EngineTest, SessionConfigEntriesReachOnnxRuntime) {
  // An entry ONNX Runtime acts on at load: forbidding the CPU provider's
  // fallback fails a CPU-only session, so the entry must have got there.
  ModelConfig config;
  config.session_config = {{"session.disable_cpu_ep_fallback", "1"}};
  auto refused = Engine::Create(Options("tiny", 1, config));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("fallback"));
  // Entries that only tune the thread pool load and run as usual.
  config.session_config = {{"session.intra_op.allow_spinning", "0"},
                           {"session.force_spinning_stop", "1"}};
  auto engine = MustCreate(Options("tiny", 1, config));
  ASSERT_NE(engine, nullptr);
  std::vector<float> x(64, 0.25f);
  EXPECT_TRUE(engine->Run(std::vector{Input("input", DataType::kFp32, {1, 64}, x)}).ok());
}

TEST(EngineTest, SessionOptionsFromConfigWork) {
  ModelConfig config;
  config.cpu_arena = false;
  config.intra_op_threads = 1;
  config.inter_op_threads = 1;
  config.graph_optimization = GraphOptimization::kDisable;
  config.warmup_iterations = 3;
  auto engine = MustCreate(Options("tiny", 1, config));
  ASSERT_NE(engine, nullptr);
  std::vector<float> x(2 * 64, 0.5f);
  auto out = engine->Run(std::vector{Input("input", DataType::kFp32, {2, 64}, x)});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)[0].shape, ElementsAre(2, 10));
  // Same answer as with the arena and every optimisation.
  auto reference = MustCreate(Options("tiny", 1));
  ASSERT_NE(reference, nullptr);
  auto expected = reference->Run(std::vector{Input("input", DataType::kFp32, {2, 64}, x)});
  ASSERT_TRUE(expected.ok()) << expected.status();
  std::vector<float> got = Values<float>((*out)[0]);
  std::vector<float> want = Values<float>((*expected)[0]);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << i;
}

int64_t ResidentKb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

TEST(EngineTest, CreateDestroyDoesNotLeak) {
#if defined(__SANITIZE_ADDRESS__) || defined(OUTPOST_TEST_HAS_ASAN)
  GTEST_SKIP() << "ASan's quarantine keeps freed memory resident; RSS says nothing here";
#endif
  constexpr int kCycles = 200;
  std::vector<float> x(64, 0.25f);
  std::vector<InputTensor> inputs = {Input("input", DataType::kFp32, {1, 64}, x)};
  int64_t after_first = 0;
  for (int i = 0; i < kCycles; ++i) {
    auto engine = MustCreate(Options("tiny", 1));
    ASSERT_NE(engine, nullptr);
    ASSERT_TRUE(engine->Run(inputs).ok());
    if (i == 0) after_first = ResidentKb();
  }
  const int64_t after_loop = ResidentKb();
  std::cout << "VmRSS after first create: " << after_first << " kB, after " << kCycles
            << " create/destroy cycles: " << after_loop << " kB ("
            << 100.0 * (after_loop - after_first) / after_first << "%)\n";
  RecordProperty("rss_after_first_kb", std::to_string(after_first));
  RecordProperty("rss_after_loop_kb", std::to_string(after_loop));
  ASSERT_GT(after_first, 0);
  EXPECT_LE(after_loop, after_first + after_first / 10);
}

}  // namespace
}  // namespace outpost::serve
