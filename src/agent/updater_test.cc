// The update state machine against real bundles (built and signed with the
// bundle library from the generated test models), a real outpost-serve and,
// for crash recovery, the real outpost-agent binary killed at fault points.
#include "agent/updater.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "agent/state_store.h"
#include "bundle/builder.h"
#include "bundle/bundle.h"
#include "bundle/signing.h"
#include "bundle/test_support.h"
#include "common/atomic_file.h"
#include "common/http_client.h"
#include "common/sha256.h"

extern char** environ;

namespace outpost::agent {

// Readable gtest failures (found by ADL).
void PrintTo(UpdateState state, std::ostream* os) { *os << UpdateStateName(state); }

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::vector<double> kPlusOne = {2, 3, 4, 5};  // add_one v1 on [1, 2, 3, 4]
const std::vector<double> kPlusTwo = {3, 4, 5, 6};  // add_one v2

int64_t NowUnixForTest() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

void WriteText(const fs::path& path, std::string_view text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  ASSERT_TRUE(out.good()) << path;
}

// {HTTP code, body}; code 0 when the connection failed.
std::pair<long, std::string> Http(const std::string& url, const std::string* body) {
  auto client = HttpClient::Create({.timeout = std::chrono::milliseconds(5000)});
  if (!client.ok()) return {0, ""};
  HttpRequest request{.method = body ? "POST" : "GET", .url = url};
  if (body != nullptr) {
    request.body = *body;
    request.content_type = "application/json";
  }
  absl::StatusOr<HttpResponse> response = (*client)->Send(request);
  if (!response.ok()) return {0, ""};
  return {response->status, response->body};
}

// What the release behind <state>/current answers for add_one([1, 2, 3, 4]),
// waiting for its runtime to be ready. Empty when nothing answers.
std::vector<double> InferCurrent(const fs::path& state_dir) {
  auto deadline = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < deadline) {
    absl::StatusOr<std::string> port_file = ReadFile(state_dir / "current" / "port.json");
    if (port_file.ok()) {
      json p = json::parse(*port_file, nullptr, false);
      if (p.is_object() && p.contains("http")) {
        std::string base = "http://127.0.0.1:" + std::to_string(p["http"].get<int>());
        if (Http(base + "/v2/health/ready", nullptr).first == 200) {
          std::string request =
              R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]})";
          auto [code, body] = Http(base + "/v2/models/add_one/infer", &request);
          if (code != 200) {
            ADD_FAILURE() << "infer: HTTP " << code << " " << body;
            return {};
          }
          return json::parse(body)["outputs"][0]["data"].get<std::vector<double>>();
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "no runtime answers behind " << (state_dir / "current");
  return {};
}

AgentState StateOnDisk(const fs::path& state_dir) {
  absl::StatusOr<std::string> text = ReadFile(state_dir / "state.json");
  EXPECT_TRUE(text.ok()) << text.status();
  if (!text.ok()) return {};
  absl::StatusOr<AgentState> state = ParseState(*text);
  EXPECT_TRUE(state.ok()) << state.status();
  return state.ok() ? *state : AgentState{};
}

std::string CurrentTarget(const fs::path& state_dir) {
  std::error_code ec;
  return fs::read_symlink(state_dir / "current", ec).string();
}

struct BundleSpec {
  std::string release;
  uint64_t sequence = 1;
  int model_version = 1;         // which add_one to ship (y = x + version)
  std::vector<double> expected;  // self-test expectation for [1, 2, 3, 4]
  bool broken_model = false;     // model.onnx that cannot load
  enum class Signer { kTrusted, kRogue, kNone } signer = Signer::kTrusted;
};

class UpdaterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    models_ = Env("OUTPOST_TEST_MODELS");
    std::string binary_dir = Env("OUTPOST_BINARY_DIR");
    if (models_.empty() || binary_dir.empty()) {
      GTEST_SKIP() << "needs OUTPOST_TEST_MODELS and OUTPOST_BINARY_DIR (run through ctest)";
    }
    serve_ = fs::path(binary_dir) / "src/serve/outpost-serve";
    ASSERT_TRUE(fs::exists(models_ / "add_one/1/model.onnx")) << models_;
    ASSERT_TRUE(fs::exists(serve_)) << serve_;
    std::string pattern = (fs::temp_directory_path() / "outpost-updater-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    state_ = root_ / "state";
    bundles_ = root_ / "bundles";
    keys_ = root_ / "keys";
    fs::create_directories(bundles_);
    auto trusted = bundle::GenerateKeyPair("release");
    ASSERT_TRUE(trusted.ok());
    ASSERT_TRUE(bundle::WriteKeyPair(*trusted, keys_).ok());
    trusted_ = std::move(trusted->private_key);
    auto rogue = bundle::GenerateKeyPair("rogue");
    ASSERT_TRUE(rogue.ok());
    rogue_ = std::move(rogue->private_key);
  }

  void TearDown() override {
    unsetenv("OUTPOST_FAIL_WRITE_AT");
    updater_.reset();
    std::error_code ec;
    if (!root_.empty()) fs::remove_all(root_, ec);
  }

  UpdaterOptions Options() const {
    UpdaterOptions o;
    o.state_dir = state_;
    o.trust_dir = keys_;
    o.serve_binary = serve_;
    o.facts.arch = bundle::HostArch();
    o.facts.accelerators = {"cpu"};
    o.facts.agent_version = OUTPOST_VERSION;
    o.ready_timeout = std::chrono::seconds(30);
    o.soak = std::chrono::milliseconds(300);
    o.poll_interval = std::chrono::milliseconds(100);
    o.restart_backoff = std::chrono::milliseconds(100);
    o.crash_loop_exits = 3;
    o.crash_loop_window = std::chrono::seconds(60);
    o.stop_grace = std::chrono::seconds(5);
    return o;
  }

  void StartUpdater() {
    updater_.reset();
    auto updater = Updater::Create(Options(), std::make_unique<LocalFolderSource>(bundles_));
    ASSERT_TRUE(updater.ok()) << updater.status();
    updater_ = *std::move(updater);
    absl::Status resumed = updater_->Resume();
    ASSERT_TRUE(resumed.ok()) << resumed;
  }

  // Builds the bundle into the watched folder.
  fs::path Build(const BundleSpec& spec) {
    fs::path src = root_ / ("src-" + spec.release);
    fs::path model = src / "models/add_one/1/model.onnx";
    fs::create_directories(model.parent_path());
    if (spec.broken_model) {
      WriteText(model, "this is not an ONNX model");
    } else {
      fs::copy_file(models_ / "add_one" / std::to_string(spec.model_version) / "model.onnx", model,
                    fs::copy_options::overwrite_existing);
    }
    json expected = {
        {"name", "y"}, {"datatype", "FP32"}, {"shape", {1, 4}}, {"data", spec.expected}};
    json tests = json::array(
        {{{"name", "plus"},
          {"model", "add_one"},
          {"inputs",
           json::array(
               {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {1, 4}}, {"data", {1, 2, 3, 4}}}})},
          {"expected_outputs", json::array({expected})}}});
    WriteText(src / "selftest.json", tests.dump());
    bundle::BuildOptions options;
    options.models_dir = src / "models";
    options.self_test_file = src / "selftest.json";
    options.release = spec.release;
    options.sequence = spec.sequence;
    options.created_unix = 1717243200;
    if (spec.signer == BundleSpec::Signer::kTrusted) options.signing_key = &trusted_;
    if (spec.signer == BundleSpec::Signer::kRogue) options.signing_key = &rogue_;
    fs::path out = bundles_ / (spec.release + ".tar.zst");
    absl::StatusOr<bundle::Manifest> built = bundle::BuildBundle(options, out);
    EXPECT_TRUE(built.ok()) << built.status();
    return out;
  }

  InstallResult InstallOne() {
    absl::StatusOr<std::optional<InstallResult>> result = updater_->InstallNext();
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok() || !result->has_value()) {
      ADD_FAILURE() << "nothing was installed";
      return {};
    }
    return **result;
  }

  void ExpectNothingLeft() {
    absl::StatusOr<std::optional<InstallResult>> result = updater_->InstallNext();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->has_value()) << "offered again: " << (*result)->reason;
  }

  // rel-1 (x + 1) committed on slot A.
  void InstallFirstRelease() {
    Build({"rel-1", 1, 1, kPlusOne});
    StartUpdater();
    InstallResult r = InstallOne();
    ASSERT_EQ(r.state, UpdateState::kCommitted) << r.reason << ": " << r.message;
  }

  // Runs `outpost-agent run --exit-when-idle` (OUTPOST_CRASH_AT=crash_at
  // when not empty); returns its wait status. `relative`: from root_, with
  // relative state, trust and bundle paths.
  int RunAgentUntilExit(const std::string& crash_at, bool relative = false) {
    auto path = [&](const fs::path& p) {
      return relative ? fs::relative(p, root_).string() : p.string();
    };
    std::vector<std::string> args = {OUTPOST_AGENT_BINARY,
                                     "run",
                                     "--state-dir",
                                     path(state_),
                                     "--trust-dir",
                                     path(keys_),
                                     "--bundle-dir",
                                     path(bundles_),
                                     "--serve-binary",
                                     serve_.string(),
                                     "--soak",
                                     "0.3",
                                     "--poll-interval",
                                     "0.1",
                                     "--restart-backoff",
                                     "0.1",
                                     "--stop-grace",
                                     "5",
                                     "--exit-when-idle"};
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).rfind("OUTPOST_CRASH_AT=", 0) != 0) env.push_back(*e);
    }
    if (!crash_at.empty()) env.push_back("OUTPOST_CRASH_AT=" + crash_at);
    std::vector<char*> argv, envp;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (relative) posix_spawn_file_actions_addchdir_np(&actions, root_.c_str());
    pid_t pid = 0;
    EXPECT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&actions);
    int status = 0;
    auto deadline = Clock::now() + std::chrono::seconds(120);
    while (Clock::now() < deadline) {
      pid_t done = ::waitpid(pid, &status, WNOHANG);
      if (done == pid) return status;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ADD_FAILURE() << "agent did not exit";
    return status;
  }

  fs::path models_, serve_, root_, state_, bundles_, keys_;
  bundle::PrivateKey trusted_, rogue_;
  std::unique_ptr<Updater> updater_;
};

TEST_F(UpdaterTest, GoodBundlesInstallAndCommit) {
  InstallFirstRelease();
  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kCommitted);
  ASSERT_TRUE(s.committed.has_value());
  EXPECT_EQ(s.committed->release, "rel-1");
  EXPECT_EQ(s.committed->slot, "A");
  EXPECT_FALSE(s.previous.has_value());
  EXPECT_EQ(s.sequence_floor, 1u);

  Build({"rel-2", 2, 2, kPlusTwo});
  InstallResult r = InstallOne();
  ASSERT_EQ(r.state, UpdateState::kCommitted) << r.reason << ": " << r.message;
  EXPECT_EQ(CurrentTarget(state_), "slots/B");
  EXPECT_EQ(InferCurrent(state_), kPlusTwo);
  s = StateOnDisk(state_);
  EXPECT_EQ(s, updater_->state());
  EXPECT_EQ(s.committed->release, "rel-2");
  EXPECT_EQ(s.committed->slot, "B");
  ASSERT_TRUE(s.previous.has_value());
  EXPECT_EQ(s.previous->release, "rel-1");
  EXPECT_EQ(s.sequence_floor, 2u);
  ExpectNothingLeft();
  // The downloaded copies are gone; the history has every step.
  EXPECT_TRUE(fs::is_empty(state_ / "downloads"));
  std::ifstream history(state_ / "history.jsonl");
  std::vector<std::string> states;
  for (std::string line; std::getline(history, line);) {
    states.push_back(json::parse(line)["state"].get<std::string>());
  }
  std::vector<std::string> install = {"downloading",  "verifying", "unpacking",  "starting",
                                      "health_check", "soaking",   "committing", "committed"};
  ASSERT_GE(states.size(), 2 * install.size());
  EXPECT_EQ(std::vector<std::string>(states.end() - install.size(), states.end()), install);
}

TEST_F(UpdaterTest, WrongSelfTestAnswerRollsBackAndOldReleaseKeepsServing) {
  InstallFirstRelease();
  Build({"rel-2", 2, 2, kPlusOne});  // ships x + 2 but expects x + 1
  InstallResult r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, kReasonSelfTestFailed) << r.message;
  EXPECT_NE(r.message.find("output 'y'"), std::string::npos) << r.message;
  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kRolledBack);
  EXPECT_EQ(s.update.reason, "self_test_failed");
  EXPECT_EQ(s.committed->release, "rel-1");
  EXPECT_EQ(s.sequence_floor, 1u);
  ExpectNothingLeft();  // not retried
}

TEST_F(UpdaterTest, ModelThatFailsToLoadRollsBack) {
  InstallFirstRelease();
  BundleSpec spec{"rel-2", 2, 2, kPlusTwo};
  spec.broken_model = true;
  Build(spec);
  InstallResult r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, kReasonModelLoadFailed) << r.message;
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  EXPECT_EQ(StateOnDisk(state_).committed->release, "rel-1");
}

TEST_F(UpdaterTest, DowngradeIsRefused) {
  Build({"rel-2", 2, 2, kPlusTwo});
  StartUpdater();
  ASSERT_EQ(InstallOne().state, UpdateState::kCommitted);
  Build({"rel-1", 1, 1, kPlusOne});
  InstallResult r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, "sequence_below_floor") << r.message;
  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusTwo);
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.committed->release, "rel-2");
  EXPECT_EQ(s.sequence_floor, 2u);
}

TEST_F(UpdaterTest, UnsignedAndUntrustedBundlesAreRefusedWithTheirReason) {
  InstallFirstRelease();
  BundleSpec unsigned_spec{"rel-unsigned", 5, 2, kPlusTwo};
  unsigned_spec.signer = BundleSpec::Signer::kNone;
  Build(unsigned_spec);
  InstallResult r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, "no_signature") << r.message;

  BundleSpec rogue_spec{"rel-rogue", 6, 2, kPlusTwo};
  rogue_spec.signer = BundleSpec::Signer::kRogue;
  Build(rogue_spec);
  r = InstallOne();
  EXPECT_EQ(r.reason, "unknown_key") << r.message;

  // The signed manifest and signature of a good bundle, with one byte of
  // the model changed: refused during the unpack, before anything runs.
  fs::path good = Build({"rel-tampered", 7, 2, kPlusTwo});
  absl::StatusOr<bundle::UnverifiedBundle> head = bundle::Inspect(good);
  ASSERT_TRUE(head.ok() && head->signature.has_value());
  std::string model = *ReadFile(models_ / "add_one/2/model.onnx");
  model[model.size() / 2] ^= 0x5a;
  fs::remove(good);
  bundle::testing::CraftBundle(good,
                               {{"manifest.json", head->manifest_json},
                                {"signature.json", bundle::SerializeSignature(*head->signature)},
                                {"models/add_one/1/model.onnx", model}});
  r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, "wrong_hash") << r.message;
  EXPECT_FALSE(fs::exists(state_ / "slots/B/models"));  // nothing half-written left

  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.committed->release, "rel-1");
  EXPECT_EQ(s.sequence_floor, 1u);
  ExpectNothingLeft();
}

TEST_F(UpdaterTest, CrashLoopAfterCommitRollsBackToThePreviousRelease) {
  InstallFirstRelease();
  Build({"rel-2", 2, 2, kPlusTwo});
  ASSERT_EQ(InstallOne().state, UpdateState::kCommitted);
  ASSERT_EQ(InferCurrent(state_), kPlusTwo);
  // Kill the committed runtime each time the supervisor restarts it.
  bool rolled_back = false;
  pid_t last_killed = 0;
  auto deadline = Clock::now() + std::chrono::seconds(30);
  while (!rolled_back && Clock::now() < deadline) {
    pid_t pid = updater_->ServingPid();
    if (pid > 0 && pid != last_killed) {
      ::kill(pid, SIGKILL);
      last_killed = pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    absl::StatusOr<bool> checked = updater_->CheckRuntime();
    ASSERT_TRUE(checked.ok()) << checked.status();
    rolled_back = *checked;
  }
  ASSERT_TRUE(rolled_back);
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kRolledBack);
  EXPECT_EQ(s.update.reason, "crash_loop");
  EXPECT_EQ(s.committed->release, "rel-1");
  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
}

TEST_F(UpdaterTest, FullDiskAtAStateWriteKeepsTheOldReleaseAndResumeFinishes) {
  InstallFirstRelease();
  Build({"rel-2", 2, 2, kPlusTwo});
  // ENOSPC from the third state write on (downloading and verifying pass).
  ASSERT_EQ(setenv("OUTPOST_FAIL_WRITE_AT", "updater.state_write:3", 1), 0);
  absl::StatusOr<std::optional<InstallResult>> failed = updater_->InstallNext();
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted) << failed.status();
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kVerifying);  // the truth: the last step that was recorded
  EXPECT_EQ(CurrentTarget(state_), "slots/A");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  // Resume while the disk is still full fails without breaking anything.
  EXPECT_FALSE(updater_->Resume().ok());
  EXPECT_EQ(InferCurrent(state_), kPlusOne);

  ASSERT_EQ(unsetenv("OUTPOST_FAIL_WRITE_AT"), 0);
  absl::Status resumed = updater_->Resume();
  ASSERT_TRUE(resumed.ok()) << resumed;
  s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kCommitted) << s.update.reason << ": " << s.update.message;
  EXPECT_EQ(s.committed->release, "rel-2");
  EXPECT_EQ(InferCurrent(state_), kPlusTwo);
}

// A full disk while unpacking may pass: the bundle is offered again after a
// delay (3x longer each time) instead of being refused for good, and given
// up after the last retry. A retry that succeeds commits.
TEST_F(UpdaterTest, ATransientFailureIsRetriedLaterThenGivenUp) {
  InstallFirstRelease();
  UpdaterOptions options = Options();
  options.transient_retries = 2;
  options.transient_retry_delay = std::chrono::seconds(1);
  updater_.reset();
  auto created = Updater::Create(options, std::make_unique<LocalFolderSource>(bundles_));
  ASSERT_TRUE(created.ok()) << created.status();
  updater_ = *std::move(created);
  ASSERT_TRUE(updater_->Resume().ok());
  Build({"rel-2", 2, 2, kPlusTwo});

  ASSERT_EQ(setenv("OUTPOST_FAIL_WRITE_AT", "bundle.unpack_write:1", 1), 0);
  const int64_t before = NowUnixForTest();
  InstallResult r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kRolledBack);
  EXPECT_EQ(r.reason, kReasonIoError) << r.message;
  AgentState s = StateOnDisk(state_);
  ASSERT_EQ(s.deferred.size(), 1u);
  const std::string offer = s.deferred[0].offer_id;
  EXPECT_EQ(s.deferred[0].failures, 1);
  EXPECT_GE(s.deferred[0].not_before, before + 1);
  EXPECT_EQ(std::count(s.handled.begin(), s.handled.end(), offer), 0);
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
  ExpectNothingLeft();  // not before its delay

  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  r = InstallOne();  // second failure: 3 s
  EXPECT_EQ(r.reason, kReasonIoError) << r.message;
  s = StateOnDisk(state_);
  ASSERT_EQ(s.deferred.size(), 1u);
  EXPECT_EQ(s.deferred[0].failures, 2);
  EXPECT_GE(s.deferred[0].not_before, NowUnixForTest() + 2);
  EXPECT_EQ(s.update.attempts, 1);  // a retry is not an interrupted install
  ExpectNothingLeft();

  std::this_thread::sleep_for(std::chrono::milliseconds(4100));
  r = InstallOne();  // third failure: no retry left
  EXPECT_EQ(r.reason, kReasonIoError) << r.message;
  s = StateOnDisk(state_);
  EXPECT_TRUE(s.deferred.empty());
  EXPECT_EQ(std::count(s.handled.begin(), s.handled.end(), offer), 1);
  ASSERT_EQ(unsetenv("OUTPOST_FAIL_WRITE_AT"), 0);
  ExpectNothingLeft();
  EXPECT_EQ(InferCurrent(state_), kPlusOne);

  // Another bundle fails once, then the disk has room again: committed.
  Build({"rel-3", 3, 1, kPlusOne});
  ASSERT_EQ(setenv("OUTPOST_FAIL_WRITE_AT", "bundle.unpack_write:1", 1), 0);
  r = InstallOne();
  ASSERT_EQ(unsetenv("OUTPOST_FAIL_WRITE_AT"), 0);
  EXPECT_EQ(r.reason, kReasonIoError) << r.message;
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  r = InstallOne();
  EXPECT_EQ(r.state, UpdateState::kCommitted) << r.reason << ": " << r.message;
  s = StateOnDisk(state_);
  EXPECT_TRUE(s.deferred.empty());
  EXPECT_EQ(s.committed->release, "rel-3");
  EXPECT_EQ(InferCurrent(state_), kPlusOne);
}

// Regression: outpost-serve runs in its slot directory, so a relative
// --state-dir once gave it a model repository path that did not resolve.
TEST_F(UpdaterTest, AgentCommandInstallsWithRelativePaths) {
  Build({"rel-1", 1, 1, kPlusOne});
  int status = RunAgentUntilExit("", /*relative=*/true);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s.state, UpdateState::kCommitted) << s.update.reason << ": " << s.update.message;
  ASSERT_TRUE(s.committed.has_value());
  EXPECT_EQ(s.committed->release, "rel-1");
}

// --- kill -9 of the real agent at a fault point, then a restart ---

struct CrashCase {
  const char* point;
  bool bad_bundle;       // rel-2's self-test fails, so the install rolls back
  UpdateState at_crash;  // what state.json must say when the agent died
  UpdateState at_end;    // after the restart
};

class UpdaterCrashTest : public UpdaterTest, public ::testing::WithParamInterface<CrashCase> {};

TEST_P(UpdaterCrashTest, RestartEndsOnAWorkingReleaseAndStateTellsTheTruth) {
  const CrashCase& c = GetParam();
  InstallFirstRelease();
  updater_.reset();  // the device's agent "reboots": its runtime stops too
  Build({"rel-2", 2, 2, c.bad_bundle ? kPlusOne : kPlusTwo});

  int status = RunAgentUntilExit(c.point);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << c.point << " was not reached; wait status " << status;
  AgentState at_crash = StateOnDisk(state_);
  EXPECT_EQ(at_crash.state, c.at_crash) << UpdateStateName(at_crash.state);
  if (std::string_view(c.point) == "updater.after_unpack") {
    // A torn slot: the restart must not trust it.
    WriteText(state_ / "slots/B/models/add_one/1/model.onnx", "torn");
    WriteText(state_ / "slots/B/models/junk/1/model.onnx", "junk");
  }

  StartUpdater();  // Resume
  while (true) {
    absl::StatusOr<std::optional<InstallResult>> r = updater_->InstallNext();
    ASSERT_TRUE(r.ok()) << r.status();
    if (!r->has_value()) break;
  }
  AgentState s = StateOnDisk(state_);
  EXPECT_EQ(s, updater_->state());
  EXPECT_EQ(s.state, c.at_end) << UpdateStateName(s.state) << " " << s.update.reason << ": "
                               << s.update.message;
  ASSERT_TRUE(s.committed.has_value());
  if (c.at_end == UpdateState::kCommitted) {
    EXPECT_EQ(s.committed->release, "rel-2");
    EXPECT_EQ(s.sequence_floor, 2u);
    EXPECT_EQ(CurrentTarget(state_), "slots/B");
    EXPECT_EQ(InferCurrent(state_), kPlusTwo);
    EXPECT_FALSE(fs::exists(state_ / "slots/B/models/junk"));
  } else {
    EXPECT_EQ(s.committed->release, "rel-1");
    EXPECT_EQ(s.update.reason, "self_test_failed");
    EXPECT_EQ(s.sequence_floor, 1u);
    EXPECT_EQ(CurrentTarget(state_), "slots/A");
    EXPECT_EQ(InferCurrent(state_), kPlusOne);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Points, UpdaterCrashTest,
    ::testing::Values(
        CrashCase{"updater.after_download", false, UpdateState::kDownloading,
                  UpdateState::kCommitted},
        CrashCase{"updater.after_verify", false, UpdateState::kVerifying, UpdateState::kCommitted},
        CrashCase{"updater.after_unpack", false, UpdateState::kUnpacking, UpdateState::kCommitted},
        CrashCase{"updater.after_ready", false, UpdateState::kHealthCheck, UpdateState::kCommitted},
        CrashCase{"updater.after_soak", false, UpdateState::kSoaking, UpdateState::kCommitted},
        CrashCase{"updater.before_switch", false, UpdateState::kCommitting,
                  UpdateState::kCommitted},
        CrashCase{"updater.after_switch", false, UpdateState::kCommitting, UpdateState::kCommitted},
        CrashCase{"updater.after_commit", false, UpdateState::kCommitted, UpdateState::kCommitted},
        CrashCase{"updater.rollback_started", true, UpdateState::kRollingBack,
                  UpdateState::kRolledBack},
        CrashCase{"updater.mid_rollback", true, UpdateState::kRollingBack,
                  UpdateState::kRolledBack}),
    [](const ::testing::TestParamInfo<CrashCase>& info) {
      std::string name = std::string(info.param.point).substr(sizeof("updater.") - 1);
      return name;
    });

// A release's pipelines are its config/*.pipeline.yaml files, in name order;
// other config files are not pipelines.
TEST(ReleasePipelinesTest, ConfigPipelineFilesInNameOrder) {
  std::string pattern = (fs::temp_directory_path() / "outpost-slot-XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  fs::path slot = pattern;
  EXPECT_TRUE(ReleasePipelines(slot).empty());  // no config/ at all
  fs::create_directories(slot / "config" / "dir.pipeline.yaml");
  WriteText(slot / "config" / "b.pipeline.yaml", "name: b\n");
  WriteText(slot / "config" / "a.pipeline.yaml", "name: a\n");
  WriteText(slot / "config" / "labels.txt", "red\n");
  WriteText(slot / "config" / "pipeline.yaml.bak", "name: c\n");
  std::vector<fs::path> expected = {slot / "config" / "a.pipeline.yaml",
                                    slot / "config" / "b.pipeline.yaml"};
  EXPECT_EQ(ReleasePipelines(slot), expected);
  EXPECT_EQ(UploadQueuePath("/var/lib/outpost"), fs::path("/var/lib/outpost/results.db"));
  std::error_code ec;
  fs::remove_all(slot, ec);
}

// Regression: a failed copy (ENOSPC reported by libstdc++'s copy_file as
// EIO) used to be returned as success, because the error code was reused
// for the cleanup; the install then failed later with a misleading io_error.
TEST(LocalFolderSourceTest, FailedCopyIsAnErrorAndLeavesNothing) {
  std::string pattern = (fs::temp_directory_path() / "outpost-source-XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  fs::path root = pattern;
  fs::create_directories(root / "unreadable.tar.zst");  // read() fails: EISDIR
  LocalFolderSource source(root);
  absl::Status fetched =
      source.Fetch(UpdateOffer{"id", (root / "unreadable.tar.zst").string()}, root / "out.tar.zst");
  EXPECT_FALSE(fetched.ok());
  EXPECT_FALSE(fs::exists(root / "out.tar.zst"));
  EXPECT_FALSE(fs::exists(root / "out.tar.zst.part"));
  std::error_code ec;
  fs::remove_all(root, ec);
}

// A bundle downloaded and renamed just before the agent died is used as it
// is after the restart, not downloaded again (here: no server at all).
TEST(HttpBundleSourceTest, CompleteDownloadIsNotFetchedAgain) {
  std::string pattern = (fs::temp_directory_path() / "outpost-source-XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  fs::path root = pattern;
  const std::string bundle = "pretend this is a bundle";
  WriteText(root / "b.tar.zst", bundle);
  FetchOptions options;
  options.max_retries = 0;
  HttpBundleSource source("http://127.0.0.1:1/b.tar.zst", Sha256::HexOf(bundle), bundle.size(),
                          options);
  EXPECT_TRUE(source.Fetch(UpdateOffer{"id", "url"}, root / "b.tar.zst").ok());
  HttpBundleSource other("http://127.0.0.1:1/b.tar.zst", Sha256::HexOf("another bundle"),
                         bundle.size(), options);
  EXPECT_FALSE(other.Fetch(UpdateOffer{"id", "url"}, root / "b.tar.zst").ok());
  std::error_code ec;
  fs::remove_all(root, ec);
}

TEST(StateStoreTest, StateRoundTripsAndCorruptionIsRefused) {
  AgentState s;
  s.state = UpdateState::kSoaking;
  s.committed = ReleaseRecord{"r1", 1, "A", "file:a"};
  s.previous = ReleaseRecord{"r0", 0, "B", "file:b"};
  s.sequence_floor = 1;
  s.update.offer_id = "file:c";
  s.update.target_slot = "B";
  s.update.restore_slot = "A";
  s.update.attempts = 2;
  s.handled = {"file:a", "file:b"};
  s.updated_at = 7;
  absl::StatusOr<AgentState> back = ParseState(SerializeState(s));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, s);
  EXPECT_FALSE(ParseState("{\"state\": \"flying\"}").ok());
  EXPECT_FALSE(ParseState("{\"state\": \"idle\", \"committed\": {\"release\": \"r\", "
                          "\"sequence\": 1, \"slot\": \"../x\"}}")
                   .ok());
  EXPECT_FALSE(ParseState("not json").ok());
}

}  // namespace
}  // namespace outpost::agent
