#include "serve/model_repository.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

namespace outpost::serve {
namespace {

namespace fs = std::filesystem;

fs::path TestModels() {
  const char* dir = std::getenv("OUTPOST_TEST_MODELS");
  return dir ? fs::path(dir) : fs::path("test-models");
}

class ModelRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            StrCat("outpost-repo-test-", getpid(), "-",
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    repo_.reset();
    fs::remove_all(root_);
  }

  void CopyVersion(const std::string& model, int from, const std::string& to_model, int to) {
    fs::path dst = root_ / to_model / std::to_string(to);
    fs::path tmp = root_ / to_model / StrCat(".tmp-", to);
    fs::create_directories(tmp);
    fs::copy_file(TestModels() / model / std::to_string(from) / "model.onnx", tmp / "model.onnx");
    fs::rename(tmp, dst);  // appears whole, as an operator's copy should
  }
  void WriteConfig(const std::string& model, const std::string& text) {
    fs::create_directories(root_ / model);
    std::ofstream(root_ / model / "config.yaml") << text;
  }
  void Open(ControlMode mode, std::vector<std::string> startup = {},
            std::chrono::milliseconds poll = std::chrono::milliseconds(15000)) {
    RepositoryOptions options;
    options.root = root_;
    options.mode = mode;
    options.startup_models = std::move(startup);
    options.poll_interval = poll;
    options.metrics = &metrics_;
    auto repo = ModelRepository::Create(options);
    ASSERT_TRUE(repo.ok()) << MessageOf(repo.status());
    repo_ = std::move(repo).value();
    repo_->LoadStartupModels();
  }

  // Runs add_one-style inference on `version` and returns y[0] for x = 0.
  float Infer(ModelVersion& version) {
    std::vector<float> x(4, 0.f);
    InferRequest request;
    request.inputs.push_back({"x", DataType::kFp32, {1, 4}, std::as_bytes(std::span(x))});
    std::promise<absl::StatusOr<InferResponse>> done;
    absl::Status status = version.scheduler().Submit(
        std::move(request),
        [&done](absl::StatusOr<InferResponse> response) { done.set_value(std::move(response)); });
    EXPECT_TRUE(status.ok()) << MessageOf(status);
    if (!status.ok()) return -1;
    auto response = done.get_future().get();
    EXPECT_TRUE(response.ok());
    if (!response.ok()) return -1;
    float y;
    std::memcpy(&y, response->outputs[0].data.data(), sizeof(y));
    return y;
  }

  fs::path root_;
  ServeMetrics metrics_;
  std::unique_ptr<ModelRepository> repo_;
};

TEST_F(ModelRepositoryTest, LoadsEveryModelAndServesTheNewestVersion) {
  CopyVersion("add_one", 1, "add_one", 1);
  CopyVersion("add_one", 2, "add_one", 2);
  CopyVersion("two_io", 1, "two_io", 1);
  Open(ControlMode::kNone);
  EXPECT_TRUE(repo_->AllReady());
  auto newest = repo_->Get("add_one", 0);
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ((*newest)->version(), 2);
  EXPECT_FLOAT_EQ(Infer(**newest), 2.f);
  // The default policy serves only the latest version.
  EXPECT_TRUE(absl::IsNotFound(repo_->Get("add_one", 1).status()));
  EXPECT_EQ((*newest)->config().max_batch_size, 8);  // inferred: dynamic first dimension

  auto unknown = repo_->Get("nope", 0);
  EXPECT_TRUE(absl::IsNotFound(unknown.status()));
  EXPECT_NE(MessageOf(unknown.status()).find("add_one, two_io"), std::string_view::npos);
}

TEST_F(ModelRepositoryTest, BadConfigOnlyTakesDownItsOwnModel) {
  CopyVersion("add_one", 1, "add_one", 1);
  CopyVersion("add_one", 1, "broken", 1);
  WriteConfig("broken", "max_batch_size: -3\n");
  fs::create_directories(root_ / "garbage" / "1");
  std::ofstream(root_ / "garbage" / "1" / "model.onnx") << "not an onnx model";
  Open(ControlMode::kNone);

  EXPECT_FALSE(repo_->AllReady());
  EXPECT_TRUE(repo_->Get("add_one", 0).ok());
  auto broken = repo_->Get("broken", 0);
  EXPECT_TRUE(absl::IsUnavailable(broken.status()));
  EXPECT_NE(MessageOf(broken.status()).find("max_batch_size"), std::string_view::npos)
      << MessageOf(broken.status());

  bool saw_broken = false, saw_garbage = false;
  for (const ModelStatus& s : repo_->Index()) {
    if (s.name == "broken") {
      saw_broken = true;
      EXPECT_EQ(s.state, "UNAVAILABLE");
      EXPECT_NE(s.reason.find("config.yaml"), std::string::npos) << s.reason;
    }
    if (s.name == "garbage") {
      saw_garbage = true;
      EXPECT_EQ(s.state, "UNAVAILABLE");
      EXPECT_EQ(s.version, "1");
    }
  }
  EXPECT_TRUE(saw_broken);
  EXPECT_TRUE(saw_garbage);
}

TEST_F(ModelRepositoryTest, HotSwapKeepsTheOldVersionAliveForItsHolders) {
  CopyVersion("add_one", 1, "add_one", 1);
  Open(ControlMode::kExplicit, {"add_one"});
  auto old_version = repo_->Get("add_one", 0);
  ASSERT_TRUE(old_version.ok());
  std::weak_ptr<ModelVersion> watch = *old_version;

  CopyVersion("add_one", 2, "add_one", 2);
  ASSERT_TRUE(repo_->Load("add_one").ok());
  auto new_version = repo_->Get("add_one", 0);
  ASSERT_TRUE(new_version.ok());
  EXPECT_EQ((*new_version)->version(), 2);
  EXPECT_FLOAT_EQ(Infer(**new_version), 2.f);
  // A request that took the old version before the swap still completes on it.
  EXPECT_FLOAT_EQ(Infer(**old_version), 1.f);

  old_version->reset();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!watch.expired() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(watch.expired()) << "the replaced version was never released";
}

TEST_F(ModelRepositoryTest, FailedNewVersionLeavesTheServedOneInPlace) {
  CopyVersion("add_one", 1, "add_one", 1);
  Open(ControlMode::kExplicit, {"add_one"});
  fs::create_directories(root_ / "add_one" / "2");
  std::ofstream(root_ / "add_one" / "2" / "model.onnx") << "truncated";
  absl::Status status = repo_->Load("add_one");
  EXPECT_FALSE(status.ok());
  EXPECT_NE(MessageOf(status).find("version 2"), std::string_view::npos) << MessageOf(status);
  auto served = repo_->Get("add_one", 0);
  ASSERT_TRUE(served.ok());
  EXPECT_EQ((*served)->version(), 1);
  EXPECT_FLOAT_EQ(Infer(**served), 1.f);
}

TEST_F(ModelRepositoryTest, ExplicitModeLoadsOnlyWhatItIsAskedFor) {
  CopyVersion("add_one", 1, "add_one", 1);
  CopyVersion("two_io", 1, "two_io", 1);
  Open(ControlMode::kExplicit, {"add_one"});
  EXPECT_TRUE(repo_->AllReady());
  EXPECT_TRUE(absl::IsUnavailable(repo_->Get("two_io", 0).status()));
  ASSERT_TRUE(repo_->Load("two_io").ok());
  EXPECT_TRUE(repo_->Get("two_io", 0).ok());
  ASSERT_TRUE(repo_->Unload("two_io").ok());
  auto gone = repo_->Get("two_io", 0);
  EXPECT_TRUE(absl::IsUnavailable(gone.status()));
  EXPECT_TRUE(absl::IsNotFound(repo_->Unload("nope")));
  EXPECT_TRUE(absl::IsNotFound(repo_->Load("../etc")));
  bool unloaded = false;
  for (const ModelStatus& s : repo_->Index()) {
    if (s.name == "two_io") unloaded = s.state == "UNAVAILABLE" && s.reason == "unloaded";
  }
  EXPECT_TRUE(unloaded);
}

TEST_F(ModelRepositoryTest, PollModeFollowsTheDisk) {
  CopyVersion("add_one", 1, "add_one", 1);
  Open(ControlMode::kPoll, {}, std::chrono::milliseconds(50));
  CopyVersion("add_one", 2, "add_one", 2);
  CopyVersion("two_io", 1, "two_io", 1);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    auto v = repo_->Get("add_one", 0);
    if (v.ok() && (*v)->version() == 2 && repo_->Get("two_io", 0).ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto v = repo_->Get("add_one", 0);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)->version(), 2);
  EXPECT_TRUE(repo_->Get("two_io", 0).ok());

  fs::remove_all(root_ / "two_io");
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (repo_->Get("two_io", 0).ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(absl::IsNotFound(repo_->Get("two_io", 0).status()));
}

TEST_F(ModelRepositoryTest, UnloadAllDrainsQueuedRequests) {
  CopyVersion("add_one", 1, "add_one", 1);
  Open(ControlMode::kNone);
  auto version = repo_->Get("add_one", 0);
  ASSERT_TRUE(version.ok());
  std::atomic<int> answered{0};
  std::vector<float> x(4, 0.f);
  for (int i = 0; i < 50; ++i) {
    InferRequest request;
    request.inputs.push_back({"x", DataType::kFp32, {1, 4}, std::as_bytes(std::span(x))});
    ASSERT_TRUE((*version)
                    ->scheduler()
                    .Submit(std::move(request),
                            [&answered](absl::StatusOr<InferResponse> r) {
                              if (r.ok()) answered++;
                            })
                    .ok());
  }
  version->reset();
  repo_->UnloadAll();
  EXPECT_EQ(answered.load(), 50);
}

TEST_F(ModelRepositoryTest, EveryInferenceCountsInTheOutputScoreHistogram) {
  CopyVersion("add_one", 1, "add_one", 1);
  CopyVersion("add_one", 1, "scored", 1);
  CopyVersion("add_one", 1, "unscored", 1);
  CopyVersion("add_one", 1, "misnamed", 1);
  // y = x + 1 = [1, 1, 1, 1] for x = 0: max 1, top softmax probability 0.25.
  WriteConfig("scored", "output_score: {kind: max, buckets: [0.5, 1.5, 2.5]}\n");
  WriteConfig("unscored", "output_score: off\n");
  WriteConfig("misnamed", "output_score: {output: probabilities}\n");
  Open(ControlMode::kNone);
  for (const char* name : {"add_one", "scored", "unscored"}) {
    auto version = repo_->Get(name, 0);
    ASSERT_TRUE(version.ok()) << name;
    for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(Infer(**version), 1.f);
  }
  const std::string text = metrics_.Serialize();
  EXPECT_NE(text.find("outpost_output_score_bucket{model=\"add_one\",version=\"1\",le=\"0.2\"} 0"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("outpost_output_score_bucket{model=\"add_one\",version=\"1\",le=\"0.3\"} 3"),
            std::string::npos);
  EXPECT_NE(text.find("outpost_output_score_count{model=\"add_one\",version=\"1\"} 3"),
            std::string::npos);
  EXPECT_NE(text.find("outpost_output_score_bucket{model=\"scored\",version=\"1\",le=\"0.5\"} 0"),
            std::string::npos);
  EXPECT_NE(text.find("outpost_output_score_bucket{model=\"scored\",version=\"1\",le=\"1.5\"} 3"),
            std::string::npos);
  EXPECT_EQ(text.find("outpost_output_score_bucket{model=\"unscored\""), std::string::npos);
  // A config naming an output the model lacks is a load error of that model.
  auto misnamed = repo_->Get("misnamed", 0);
  ASSERT_FALSE(misnamed.ok());
  EXPECT_NE(MessageOf(misnamed.status())
                .find("output_score.output: the model has no output "
                      "'probabilities'"),
            std::string_view::npos)
      << MessageOf(misnamed.status());
}

}  // namespace
}  // namespace outpost::serve
