#include "agent/updater.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <system_error>
#include <thread>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "common/atomic_file.h"
#include "common/fault_injection.h"
#include "common/http_client.h"
#include "common/sha256.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Failure reasons of the health gate travel in the status payload, like
// bundle::Reason does for verification refusals.
constexpr char kReasonPayload[] = "outpost.dev/agent-update-reason";
constexpr size_t kMaxHandled = 256;
constexpr size_t kMaxReplyBytes = 64u << 20;
constexpr auto kPollStep = std::chrono::milliseconds(50);

absl::Status Failure(std::string_view reason, std::string message) {
  absl::Status status = absl::FailedPreconditionError(message);
  status.SetPayload(kReasonPayload, absl::Cord(absl::string_view(reason.data(), reason.size())));
  return status;
}

// The reason code for a failed step: the gate's own, the bundle library's,
// or `fallback` for anything else (I/O errors).
std::string ReasonFor(const absl::Status& status, std::string_view fallback) {
  if (auto payload = status.GetPayload(kReasonPayload)) return std::string(*payload);
  bundle::Reason reason = bundle::ReasonOf(status);
  if (reason != bundle::Reason::kNone) return std::string(bundle::ReasonName(reason));
  return std::string(fallback);
}

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// --- a minimal HTTP client for the health gate (loopback only) ---

struct HttpReply {
  long code = 0;
  std::string body;
};

// One call on a fresh connection (the runtime may have been restarted
// between calls). Replies over kMaxReplyBytes are refused.
absl::StatusOr<HttpReply> HttpCall(const std::string& url, const std::string* post_body,
                                   std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> client,
                   HttpClient::Create({.connect_timeout = timeout, .timeout = timeout}));
  HttpRequest request{.url = url};
  if (post_body != nullptr) {
    request.method = "POST";
    request.body = *post_body;
    request.content_type = "application/json";
  }
  ASSIGN_OR_RETURN(HttpResponse response, client->Send(request));
  if (response.body.size() > kMaxReplyBytes) {
    return absl::UnavailableError(
        StrCat(url, ": reply of ", response.body.size(), " bytes is over ", kMaxReplyBytes));
  }
  return HttpReply{response.status, std::move(response.body)};
}

// Numbers (and booleans as 0/1) of a flat or nested JSON array, row-major.
bool Flatten(const json& data, std::vector<double>* out) {
  if (data.is_array()) {
    for (const json& item : data) {
      if (!Flatten(item, out)) return false;
    }
    return true;
  }
  if (data.is_boolean()) {
    out->push_back(data.get<bool>() ? 1.0 : 0.0);
    return true;
  }
  if (data.is_number()) {
    out->push_back(data.get<double>());
    return true;
  }
  return false;
}

json TensorToJson(const bundle::Tensor& t) {
  return {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}, {"data", t.data}};
}

std::string DescribeExit(const SupervisorEvent& event) {
  std::string out = event.last_exit ? event.last_exit->Describe() : "exited";
  if (!event.log_tail.empty()) {
    std::string_view tail = event.log_tail;
    if (tail.size() > 1024) tail = tail.substr(tail.size() - 1024);
    StrAppend(&out, "; last output: ", tail);
  }
  return out;
}

bool Executable(const fs::path& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Copies `from` to `to` (created or truncated) and fsyncs it. Not
// std::filesystem::copy_file: libstdc++ reports a full disk as EIO, and the
// operator must read "No space left on device".
absl::Status CopyFileDurably(const fs::path& from, const fs::path& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return absl::ErrnoToStatus(errno, StrCat("cannot open ", from.string()));
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    int err = errno;
    ::close(in);
    return absl::ErrnoToStatus(err, StrCat("cannot create ", to.string()));
  }
  std::vector<char> buffer(1 << 20);
  absl::Status status;
  while (status.ok()) {
    ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = absl::ErrnoToStatus(errno, StrCat("cannot read ", from.string()));
    if (n <= 0) break;
    for (ssize_t done = 0; done < n && status.ok();) {
      ssize_t w = ::write(out, buffer.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno != EINTR) {
        status = absl::ErrnoToStatus(errno, StrCat("cannot write ", to.string()));
      }
      if (w > 0) done += w;
    }
  }
  if (status.ok() && ::fsync(out) != 0) {
    status = absl::ErrnoToStatus(errno, StrCat("cannot fsync ", to.string()));
  }
  if (::close(out) != 0 && status.ok()) {
    status = absl::ErrnoToStatus(errno, StrCat("cannot close ", to.string()));
  }
  ::close(in);
  return status;
}

}  // namespace

// --- sources ---

std::vector<fs::path> ReleasePipelines(const fs::path& slot_dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(slot_dir / "config", ec)) {
    if (entry.is_regular_file(ec) && entry.path().filename().string().ends_with(".pipeline.yaml")) {
      files.push_back(entry.path());
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

fs::path UploadQueuePath(const fs::path& state_dir) { return state_dir / "results.db"; }

absl::StatusOr<std::optional<UpdateOffer>> LocalFolderSource::Next(
    const std::vector<std::string>& handled) {
  std::error_code ec;
  fs::directory_iterator it(dir_, ec);
  if (ec) {
    return absl::ErrnoToStatus(ec.value(), StrCat("cannot list bundle folder ", dir_.string()));
  }
  std::optional<UpdateOffer> best;
  uint64_t best_sequence = 0;
  std::string best_name;
  for (const fs::directory_entry& entry : it) {
    std::string name = entry.path().filename().string();
    if (name.size() <= 8 || name.compare(name.size() - 8, 8, ".tar.zst") != 0) continue;
    struct stat st;
    if (::stat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    int64_t mtime_ns = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
    std::string id = StrCat("file:", name, ":", static_cast<uint64_t>(st.st_size), ":", mtime_ns);
    if (std::find(handled.begin(), handled.end(), id) != handled.end()) continue;
    // Unverified: only orders the candidates.
    absl::StatusOr<bundle::UnverifiedBundle> head = bundle::Inspect(entry.path());
    uint64_t sequence = head.ok() ? head->manifest.sequence : 0;
    if (!best || sequence > best_sequence || (sequence == best_sequence && name > best_name)) {
      best = UpdateOffer{id, entry.path().string()};
      best_sequence = sequence;
      best_name = name;
    }
  }
  return best;
}

absl::Status LocalFolderSource::Fetch(const UpdateOffer& offer, const fs::path& dest) {
  fs::path part = dest.string() + ".part";
  absl::Status copied = CopyFileDurably(offer.description, part);
  if (!copied.ok()) {
    std::error_code ignored;
    fs::remove(part, ignored);
    return copied;
  }
  std::error_code ec;
  fs::rename(part, dest, ec);
  if (ec) return absl::ErrnoToStatus(ec.value(), StrCat("cannot rename ", part.string()));
  return FsyncDirectory(dest.parent_path());
}

absl::StatusOr<std::optional<UpdateOffer>> HttpBundleSource::Next(
    const std::vector<std::string>& handled) {
  std::string id = StrCat("sha256:", sha256_);
  if (std::find(handled.begin(), handled.end(), id) != handled.end()) {
    return std::optional<UpdateOffer>();
  }
  return std::optional<UpdateOffer>(UpdateOffer{id, url_});
}

absl::Status HttpBundleSource::Fetch(const UpdateOffer& offer, const fs::path& dest) {
  // A download completed just before the agent died (state.json still says
  // downloading) is not fetched again.
  std::error_code ec;
  if (fs::file_size(dest, ec) == size_ && !ec) {
    absl::StatusOr<std::string> sha256 = Sha256File(dest);
    if (sha256.ok() && absl::EqualsIgnoreCase(*sha256, sha256_)) return absl::OkStatus();
  }
  absl::StatusOr<FetchResult> result = agent::Fetch(url_, dest, sha256_, size_, options_);
  return result.status();
}

fs::path BundleDownloadPath(const fs::path& downloads_dir, const UpdateOffer& offer) {
  return downloads_dir / (Sha256::HexOf(offer.id).substr(0, 16) + ".tar.zst");
}

// --- the updater ---

struct Updater::Runtime {
  std::string slot;
  fs::path port_file;
  std::unique_ptr<Supervisor> supervisor;
  int port = 0;

  std::string BaseUrl() const { return StrCat("http://127.0.0.1:", port); }
};

Updater::Updater(UpdaterOptions options, std::unique_ptr<UpdateSource> source,
                 std::unique_ptr<StateStore> store, bundle::TrustStore trust)
    : options_(std::move(options)),
      source_(std::move(source)),
      store_(std::move(store)),
      trust_(std::move(trust)) {}

Updater::~Updater() {
  candidate_.reset();
  active_.reset();
}

absl::StatusOr<std::unique_ptr<Updater>> Updater::Create(UpdaterOptions options,
                                                         std::unique_ptr<UpdateSource> source) {
  if (source == nullptr) return absl::InvalidArgumentError("updater: no update source");
  if (options.state_dir.empty()) return absl::InvalidArgumentError("updater: no state directory");
  if (options.max_attempts < 1) return absl::InvalidArgumentError("updater: max_attempts < 1");
  // The runtime runs in its slot directory: every path it gets is absolute.
  options.state_dir = fs::absolute(options.state_dir);
  if (!options.serve_binary.empty()) {
    options.serve_binary = fs::absolute(options.serve_binary);
    if (!Executable(options.serve_binary)) {
      return absl::NotFoundError(
          StrCat("outpost-serve binary ", options.serve_binary.string(), " is not executable"));
    }
  }
  ASSIGN_OR_RETURN(bundle::TrustStore trust, bundle::TrustStore::LoadDirectory(options.trust_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<StateStore> store, StateStore::Open(options.state_dir));
  return std::unique_ptr<Updater>(
      new Updater(std::move(options), std::move(source), std::move(store), std::move(trust)));
}

bundle::DeviceFacts Updater::Facts() const {
  bundle::DeviceFacts facts = options_.facts;
  facts.sequence_floor = std::max(facts.sequence_floor, state().sequence_floor);
  return facts;
}

bool Updater::SleepUnlessStopped(std::chrono::milliseconds d) {
  auto deadline = Clock::now() + d;
  while (!stop_.load()) {
    auto now = Clock::now();
    if (now >= deadline) return true;
    std::this_thread::sleep_for(std::min<Clock::duration>(kPollStep, deadline - now));
  }
  return false;
}

AgentState Updater::WithHandled(AgentState state, const std::string& offer_id) const {
  if (offer_id.empty()) return state;
  auto& h = state.handled;
  if (std::find(h.begin(), h.end(), offer_id) == h.end()) h.push_back(offer_id);
  if (h.size() > kMaxHandled) h.erase(h.begin(), h.begin() + (h.size() - kMaxHandled));
  std::erase_if(state.deferred, [&](const DeferredOffer& d) { return d.offer_id == offer_id; });
  return state;
}

AgentState Updater::AfterFailure(AgentState state) const {
  const std::string id = state.update.offer_id;
  const std::string& reason = state.update.reason;
  const bool transient = reason == kReasonFetchFailed || reason == kReasonIoError;
  auto& deferred = state.deferred;
  auto it = std::find_if(deferred.begin(), deferred.end(),
                         [&](const DeferredOffer& d) { return d.offer_id == id; });
  const int failures = (it == deferred.end() ? 0 : it->failures) + 1;
  if (id.empty() || !transient || failures > options_.transient_retries) {
    if (transient && !id.empty()) {
      spdlog::error("updater: {} failed {} times ({}); not trying it again", state.update.source,
                    failures, reason);
    }
    return WithHandled(std::move(state), id);
  }
  const double base = std::min(
      static_cast<double>(options_.transient_retry_delay.count()) * std::pow(3.0, failures - 1),
      6 * 3600.0);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  const int64_t delay = std::llround(base * std::uniform_real_distribution<double>(0.9, 1.1)(rng));
  // Whole seconds, rounded up: never sooner than `delay` from now (NowUnix
  // truncates, so `now + delay` could come up to a second early).
  const int64_t not_before = NowUnix() + delay + 1;
  if (it == deferred.end()) {
    deferred.push_back({id, failures, not_before});
  } else {
    it->failures = failures;
    it->not_before = not_before;
  }
  if (deferred.size() > kMaxHandled) deferred.erase(deferred.begin());
  spdlog::warn("updater: {} failed ({}); trying it again in {} s ({} of {} retries)",
               state.update.source, reason, delay, failures, options_.transient_retries);
  return state;
}

pid_t Updater::ServingPid() const {
  if (active_ == nullptr) return 0;
  SupervisorEvent event = active_->supervisor->Current();
  return event.state == ChildState::kRunning ? event.pid : 0;
}

absl::StatusOr<std::unique_ptr<Updater::Runtime>> Updater::StartRuntime(const std::string& slot) {
  fs::path dir = store_->SlotDir(slot);
  fs::path binary = dir / bundle::kRuntimePath;
  if (!Executable(binary)) binary = options_.serve_binary;
  if (binary.empty()) {
    return absl::FailedPreconditionError(
        StrCat("no outpost-serve to run: slot ", slot,
               " ships no runtime/outpost-serve and no --serve-binary was given"));
  }
  auto runtime = std::make_unique<Runtime>();
  runtime->slot = slot;
  runtime->port_file = dir / "port.json";
  // A port file left by an earlier runtime would point at a dead port.
  std::error_code ec;
  fs::remove(runtime->port_file, ec);

  SupervisorOptions o;
  o.name = StrCat("outpost-serve[", slot, "]");
  o.argv = {
      binary.string(), "--model-repository",       (dir / "models").string(), "--http-port", "0",
      "--port-file",   runtime->port_file.string()};
  for (const fs::path& pipeline : ReleasePipelines(dir)) {
    o.argv.push_back("--pipeline");
    o.argv.push_back(pipeline.string());
  }
  o.env.push_back(StrCat("OUTPOST_UPLOAD_QUEUE=", UploadQueuePath(options_.state_dir).string()));
  o.working_dir = dir;
  o.log_file = store_->logs_dir() / StrCat("serve-", slot, ".log");
  o.backoff_initial = options_.restart_backoff;
  o.backoff_max = options_.restart_backoff_max;
  o.crash_loop_exits = options_.crash_loop_exits;
  o.crash_loop_window = options_.crash_loop_window;
  o.stop_grace = options_.stop_grace;
  ASSIGN_OR_RETURN(runtime->supervisor, Supervisor::Start(std::move(o)));
  spdlog::info("updater: started outpost-serve on slot {} ({})", slot, binary.string());
  return runtime;
}

absl::Status Updater::EnsureActiveRuntime() {
  ASSIGN_OR_RETURN(std::string slot, store_->CurrentSlot());
  if (slot.empty()) {
    active_.reset();
    return absl::OkStatus();
  }
  if (active_ != nullptr && active_->slot == slot) {
    ChildState s = active_->supervisor->Current().state;
    if (s == ChildState::kRunning || s == ChildState::kBackoff) return absl::OkStatus();
  }
  active_.reset();
  ASSIGN_OR_RETURN(active_, StartRuntime(slot));
  crash_loop_reported_ = false;
  return absl::OkStatus();
}

absl::Status Updater::WaitReady(Runtime& runtime) {
  auto deadline = Clock::now() + options_.ready_timeout;
  auto next_index = Clock::now();
  std::string last;
  while (true) {
    if (stop_.load()) return absl::CancelledError("stop requested during the health check");
    SupervisorEvent event = runtime.supervisor->Current();
    if (event.state != ChildState::kRunning || event.starts > 1) {
      return Failure(kReasonRuntimeFailed,
                     StrCat("outpost-serve on slot ", runtime.slot, ": ", DescribeExit(event)));
    }
    if (runtime.port == 0) {
      absl::StatusOr<std::string> text = ReadFile(runtime.port_file);
      if (text.ok()) {
        json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
        if (j.is_object() && j.contains("http") && j["http"].is_number_integer()) {
          runtime.port = j["http"].get<int>();
        }
      }
    }
    if (runtime.port != 0) {
      absl::StatusOr<HttpReply> ready =
          HttpCall(runtime.BaseUrl() + "/v2/health/ready", nullptr, std::chrono::seconds(2));
      if (ready.ok() && ready->code == 200) return absl::OkStatus();
      last = ready.ok() ? StrCat("HTTP ", ready->code) : std::string(MessageOf(ready.status()));
      // A model that failed to load keeps the server unready for good:
      // fail now, with the server's reason, instead of at the deadline.
      if (ready.ok() && Clock::now() >= next_index) {
        next_index = Clock::now() + std::chrono::milliseconds(250);
        std::string empty = "{}";
        absl::StatusOr<HttpReply> index =
            HttpCall(runtime.BaseUrl() + "/v2/repository/index", &empty, std::chrono::seconds(2));
        if (index.ok() && index->code == 200) {
          json j = json::parse(index->body, nullptr, false);
          if (j.is_array()) {
            for (const json& m : j) {
              if (!m.is_object() || m.value("state", "") != "UNAVAILABLE") continue;
              std::string reason = m.value("reason", "");
              if (reason.empty() || reason == "unloaded") continue;
              return Failure(kReasonModelLoadFailed,
                             StrCat("model '", m.value("name", ""), "' version '",
                                    m.value("version", ""), "' failed to load: ", reason));
            }
          }
        }
      }
    } else {
      last = "no port file yet";
    }
    if (Clock::now() >= deadline) {
      return Failure(kReasonNotReady,
                     StrCat("outpost-serve on slot ", runtime.slot, " not ready within ",
                            options_.ready_timeout.count(), " ms (", last, ")"));
    }
    std::this_thread::sleep_for(kPollStep);
  }
}

absl::Status Updater::RunSelfTests(Runtime& runtime, const bundle::Manifest& manifest) {
  for (const bundle::SelfTestCase& c : manifest.self_tests) {
    if (stop_.load()) return absl::CancelledError("stop requested during the self-tests");
    std::string url = StrCat(runtime.BaseUrl(), "/v2/models/", c.model);
    if (!c.version.empty()) StrAppend(&url, "/versions/", c.version);
    url += "/infer";
    json request = {{"id", c.name}, {"inputs", json::array()}, {"outputs", json::array()}};
    for (const bundle::Tensor& t : c.inputs) request["inputs"].push_back(TensorToJson(t));
    for (const bundle::ExpectedOutput& e : c.expected_outputs) {
      request["outputs"].push_back(
          json{{"name", e.tensor.name}, {"parameters", {{"binary_data", false}}}});
    }
    std::string body = request.dump();
    absl::StatusOr<HttpReply> reply = HttpCall(url, &body, options_.self_test_timeout);
    std::string what = StrCat("self-test '", c.name, "' (model '", c.model, "')");
    if (!reply.ok()) {
      return Failure(kReasonSelfTestFailed, StrCat(what, ": ", MessageOf(reply.status())));
    }
    if (reply->code != 200) {
      return Failure(kReasonSelfTestFailed,
                     StrCat(what, ": HTTP ", reply->code, ": ", reply->body.substr(0, 512)));
    }
    json answer = json::parse(reply->body, nullptr, false);
    if (!answer.is_object() || !answer.contains("outputs") || !answer["outputs"].is_array()) {
      return Failure(kReasonSelfTestFailed, StrCat(what, ": response has no outputs"));
    }
    for (const bundle::ExpectedOutput& e : c.expected_outputs) {
      const json* found = nullptr;
      for (const json& o : answer["outputs"]) {
        if (o.is_object() && o.value("name", "") == e.tensor.name) found = &o;
      }
      if (found == nullptr) {
        return Failure(kReasonSelfTestFailed,
                       StrCat(what, ": output '", e.tensor.name, "' missing from the answer"));
      }
      std::vector<int64_t> shape;
      std::vector<double> values;
      bool ok = found->contains("shape") && (*found)["shape"].is_array() &&
                found->contains("data") && Flatten((*found)["data"], &values);
      if (ok) {
        for (const json& d : (*found)["shape"]) {
          ok = ok && d.is_number_integer();
          if (ok) shape.push_back(d.get<int64_t>());
        }
      }
      if (!ok) {
        return Failure(kReasonSelfTestFailed,
                       StrCat(what, ": output '", e.tensor.name, "' is not a numeric tensor"));
      }
      if (shape != e.tensor.shape) {
        return Failure(kReasonSelfTestFailed,
                       StrCat(what, ": output '", e.tensor.name, "' has shape ", json(shape).dump(),
                              ", expected ", json(e.tensor.shape).dump()));
      }
      absl::Status compared = bundle::CompareOutput(e, values);
      if (!compared.ok()) {
        return Failure(kReasonSelfTestFailed, StrCat(what, ": ", MessageOf(compared)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Updater::Soak(Runtime& runtime) {
  auto deadline = Clock::now() + options_.soak;
  while (Clock::now() < deadline) {
    if (stop_.load()) return absl::CancelledError("stop requested during the soak");
    SupervisorEvent event = runtime.supervisor->Current();
    if (event.state != ChildState::kRunning || event.starts > 1) {
      return Failure(kReasonSoakFailed, StrCat("outpost-serve on slot ", runtime.slot,
                                               " did not stay up: ", DescribeExit(event)));
    }
    std::this_thread::sleep_for(kPollStep);
  }
  absl::StatusOr<HttpReply> ready =
      HttpCall(runtime.BaseUrl() + "/v2/health/ready", nullptr, std::chrono::seconds(5));
  if (!ready.ok() || ready->code != 200) {
    return Failure(
        kReasonSoakFailed,
        StrCat("outpost-serve on slot ", runtime.slot, " not ready after the soak: ",
               ready.ok() ? StrCat("HTTP ", ready->code) : std::string(MessageOf(ready.status()))));
  }
  return absl::OkStatus();
}

absl::StatusOr<bundle::VerifiedManifest> Updater::VerifyBundle(const std::string& bundle_path) {
  return bundle::Verify(bundle_path, trust_, Facts(), options_.limits);
}

void Updater::RemoveFinishedDownloads() {
  // Complete bundles are kept only while an install uses them; a .part is
  // kept for a resumed download.
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(store_->downloads_dir(), ec)) {
    std::string name = entry.path().filename().string();
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".tar.zst") == 0) {
      std::error_code ignored;
      fs::remove(entry.path(), ignored);
    }
  }
}

absl::Status Updater::Resume() {
  const AgentState s = state();
  if (AtRest(s.state)) {
    RemoveFinishedDownloads();
    return EnsureActiveRuntime();
  }
  spdlog::warn("updater: resuming an install interrupted in state {} (release '{}', attempt {})",
               UpdateStateName(s.state), s.update.release, s.update.attempts);
  if (s.state == UpdateState::kRollingBack) return FinishRollback().status();

  // Whatever step was interrupted, `current` goes back to the release that
  // was serving before the install: the target slot is about to be redone.
  ASSIGN_OR_RETURN(std::string current, store_->CurrentSlot());
  if (current != s.update.restore_slot) {
    spdlog::warn("updater: pointing current back at slot '{}' until the install passes again",
                 s.update.restore_slot);
    RETURN_IF_ERROR(store_->SwitchCurrent(s.update.restore_slot));
  }
  RETURN_IF_ERROR(EnsureActiveRuntime());

  if (s.state == UpdateState::kDownloading) {
    AgentState next = s;
    next.state = UpdateState::kIdle;
    next.update.message = "download interrupted; the source will offer the bundle again";
    return store_->Transition(std::move(next), "resumed");
  }
  if (s.update.attempts >= options_.max_attempts) {
    return Rollback(kReasonInterrupted, StrCat("the agent stopped ", s.update.attempts,
                                               " times during this install; giving up on it"))
        .status();
  }
  std::error_code ec;
  if (s.update.bundle_path.empty() || !fs::exists(s.update.bundle_path, ec)) {
    return Rollback(kReasonInterrupted, "install interrupted and the bundle file is gone").status();
  }
  AgentState next = s;
  next.state = UpdateState::kVerifying;
  next.update.attempts += 1;
  next.update.reason.clear();
  next.update.message = StrCat("redo after an interruption in state ", UpdateStateName(s.state));
  RETURN_IF_ERROR(store_->Transition(std::move(next), "resumed"));
  absl::StatusOr<InstallResult> result = InstallFrom();
  return result.status();
}

absl::StatusOr<std::optional<InstallResult>> Updater::InstallNext() {
  if (!AtRest(state().state)) {
    return absl::FailedPreconditionError(StrCat("an install is in progress (state ",
                                                UpdateStateName(state().state),
                                                "): call Resume first"));
  }
  // An authoritative source may ask for the previous release back: let it
  // offer that one even though it was handled.
  std::vector<std::string> handled = state().handled;
  const bool can_revert =
      source_->Authoritative() && CanRollBackCommitted() && !state().previous->offer_id.empty();
  if (can_revert) std::erase(handled, state().previous->offer_id);
  const int64_t now = NowUnix();
  for (const DeferredOffer& d : state().deferred) {
    if (d.not_before > now) handled.push_back(d.offer_id);
  }
  ASSIGN_OR_RETURN(std::optional<UpdateOffer> offer, source_->Next(handled));
  if (!offer) return std::optional<InstallResult>();
  if (can_revert && offer->id == state().previous->offer_id) {
    spdlog::info("updater: {} asks for the previous release '{}' back", offer->description,
                 state().previous->release);
    ASSIGN_OR_RETURN(
        InstallResult reverted,
        RollBackCommitted(kReasonReverted,
                          StrCat("the hub sent this device back from '", state().committed->release,
                                 "' to '", state().previous->release, "'"),
                          "reverted by the hub"));
    return std::optional<InstallResult>(std::move(reverted));
  }
  ASSIGN_OR_RETURN(InstallResult result, Install(*offer));
  return std::optional<InstallResult>(std::move(result));
}

absl::StatusOr<InstallResult> Updater::Install(const UpdateOffer& offer) {
  spdlog::info("updater: installing {}", offer.description);
  AgentState next = state();
  // Attempts count installs of this offer cut short by agent deaths; a
  // retry after a finished (rolled back) attempt starts again at 1.
  int attempts = next.update.offer_id == offer.id && next.state != UpdateState::kRolledBack
                     ? next.update.attempts + 1
                     : 1;
  absl::StatusOr<std::string> current = store_->CurrentSlot();
  next.update = UpdateRecord{};
  next.update.offer_id = offer.id;
  next.update.source = offer.description;
  next.update.restore_slot =
      current.ok() ? *current : (next.committed ? next.committed->slot : std::string());
  next.update.attempts = attempts;
  next.update.started_at = NowUnix();
  next.state = UpdateState::kDownloading;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  if (attempts > options_.max_attempts) {
    return Rollback(kReasonInterrupted, StrCat("the agent stopped ", attempts - 1,
                                               " times during installs of this bundle"));
  }

  fs::path dest = BundleDownloadPath(store_->downloads_dir(), offer);
  absl::Status fetched = source_->Fetch(offer, dest);
  // A download cut short by a stop is not a verdict on the bundle: Resume
  // turns `downloading` into idle and the source offers it again (the .part
  // is kept, so the download resumes).
  if (absl::IsCancelled(fetched) && stop_.load()) return fetched;
  if (!fetched.ok()) {
    return Rollback(kReasonFetchFailed,
                    StrCat("cannot fetch ", offer.description, ": ", MessageOf(fetched)));
  }
  OUTPOST_CRASH_AT("updater.after_download");

  next = state();
  next.update.bundle_path = dest.string();
  next.state = UpdateState::kVerifying;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  return InstallFrom();
}

absl::StatusOr<InstallResult> Updater::InstallFrom() {
  absl::StatusOr<bundle::VerifiedManifest> verified = VerifyBundle(state().update.bundle_path);
  if (!verified.ok()) {
    return Rollback(ReasonFor(verified.status(), kReasonIoError),
                    std::string(MessageOf(verified.status())));
  }
  OUTPOST_CRASH_AT("updater.after_verify");
  const bundle::Manifest& manifest = verified->manifest();

  AgentState next = state();
  std::string target = OtherSlot(next.update.restore_slot);
  next.update.release = manifest.release;
  next.update.sequence = manifest.sequence;
  next.update.target_slot = target;
  // The target slot is about to be overwritten: the release in it is gone.
  if (next.previous && next.previous->slot == target) next.previous.reset();
  next.state = UpdateState::kUnpacking;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));

  fs::path slot_dir = store_->SlotDir(target);
  std::error_code ec;
  fs::remove_all(slot_dir, ec);
  if (ec) {
    return Rollback(kReasonIoError,
                    StrCat("cannot wipe slot ", slot_dir.string(), ": ", ec.message()));
  }
  OUTPOST_CRASH_AT("updater.before_unpack");
  absl::Status unpacked =
      bundle::Unpack(state().update.bundle_path, *verified, slot_dir, options_.limits);
  if (!unpacked.ok()) {
    return Rollback(ReasonFor(unpacked, kReasonIoError),
                    StrCat("unpacking into slot ", target, ": ", MessageOf(unpacked)));
  }
  // The verified manifest stays beside the payload: the telemetry collector
  // reads the release's output baselines from it (drift).
  absl::Status kept = WriteFileAtomic(slot_dir / "manifest.json", verified->manifest_json());
  if (!kept.ok()) {
    return Rollback(kReasonIoError,
                    StrCat("writing manifest.json into slot ", target, ": ", MessageOf(kept)));
  }
  OUTPOST_CRASH_AT("updater.after_unpack");

  next = state();
  next.state = UpdateState::kStarting;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  absl::StatusOr<std::unique_ptr<Runtime>> runtime = StartRuntime(target);
  if (!runtime.ok()) {
    return Rollback(kReasonRuntimeFailed, StrCat("cannot start outpost-serve on slot ", target,
                                                 ": ", MessageOf(runtime.status())));
  }
  candidate_ = *std::move(runtime);
  OUTPOST_CRASH_AT("updater.after_start");
  return GateAndCommit(manifest);
}

absl::StatusOr<InstallResult> Updater::GateAndCommit(const bundle::Manifest& manifest) {
  AgentState next = state();
  next.state = UpdateState::kHealthCheck;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  absl::Status gate = WaitReady(*candidate_);
  if (gate.ok()) {
    OUTPOST_CRASH_AT("updater.after_ready");
    gate = RunSelfTests(*candidate_, manifest);
  }
  if (absl::IsCancelled(gate)) return gate;
  if (!gate.ok()) return Rollback(ReasonFor(gate, kReasonNotReady), std::string(MessageOf(gate)));
  OUTPOST_CRASH_AT("updater.after_health");

  next = state();
  next.state = UpdateState::kSoaking;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  gate = Soak(*candidate_);
  if (absl::IsCancelled(gate)) return gate;
  if (!gate.ok()) return Rollback(ReasonFor(gate, kReasonSoakFailed), std::string(MessageOf(gate)));
  OUTPOST_CRASH_AT("updater.after_soak");
  return Commit();
}

absl::StatusOr<InstallResult> Updater::Commit() {
  AgentState next = state();
  next.state = UpdateState::kCommitting;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  const UpdateRecord& u = state().update;
  OUTPOST_CRASH_AT("updater.before_switch");
  absl::Status switched = store_->SwitchCurrent(u.target_slot);
  if (!switched.ok()) {
    return Rollback(kReasonIoError, StrCat("cannot switch current to slot ", u.target_slot, ": ",
                                           MessageOf(switched)));
  }
  OUTPOST_CRASH_AT("updater.after_switch");

  next = WithHandled(state(), u.offer_id);
  if (next.committed && next.committed->slot == next.update.restore_slot) {
    next.previous = next.committed;
  } else {
    next.previous.reset();
  }
  next.committed = ReleaseRecord{next.update.release, next.update.sequence, next.update.target_slot,
                                 next.update.offer_id};
  next.sequence_floor = std::max(next.sequence_floor, next.update.sequence);
  next.update.reason.clear();
  next.update.message = "committed";
  next.state = UpdateState::kCommitted;
  OUTPOST_CRASH_AT("updater.before_commit_record");
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  OUTPOST_CRASH_AT("updater.after_commit");

  spdlog::info("updater: committed release '{}' (sequence {}) on slot {}", state().update.release,
               state().update.sequence, state().update.target_slot);
  active_ = std::move(candidate_);  // the old runtime stops here
  crash_loop_reported_ = false;
  std::error_code ec;
  fs::remove(state().update.bundle_path, ec);
  return InstallResult{UpdateState::kCommitted, "", ""};
}

absl::StatusOr<InstallResult> Updater::Rollback(std::string_view reason, std::string message) {
  spdlog::error("updater: rolling back ({}): {}", reason, message);
  AgentState next = state();
  next.state = UpdateState::kRollingBack;
  next.update.reason = std::string(reason);
  next.update.message = std::move(message);
  absl::Status persisted = store_->Transition(std::move(next));
  if (!persisted.ok()) {
    // The old runtime keeps serving; state.json still names the step, so
    // the next Resume undoes it.
    candidate_.reset();
    return persisted;
  }
  OUTPOST_CRASH_AT("updater.rollback_started");
  return FinishRollback();
}

absl::StatusOr<InstallResult> Updater::FinishRollback() {
  candidate_.reset();
  const std::string restore = state().update.restore_slot;
  ASSIGN_OR_RETURN(std::string current, store_->CurrentSlot());
  if (current != restore) RETURN_IF_ERROR(store_->SwitchCurrent(restore));
  OUTPOST_CRASH_AT("updater.mid_rollback");
  if (active_ != nullptr && active_->slot != restore) active_.reset();
  absl::Status serving = EnsureActiveRuntime();
  if (!serving.ok()) {
    spdlog::error("updater: cannot restart outpost-serve on slot '{}': {}", restore,
                  MessageOf(serving));
  }

  AgentState next = AfterFailure(state());
  // `committed` names the release in the restored slot.
  if (!(next.committed && next.committed->slot == restore)) {
    if (next.previous && next.previous->slot == restore) {
      next.committed = next.previous;
    } else {
      next.committed.reset();
    }
    next.previous.reset();
  }
  next.state = UpdateState::kRolledBack;
  RETURN_IF_ERROR(store_->Transition(std::move(next)));
  OUTPOST_CRASH_AT("updater.after_rollback");
  std::error_code ec;
  if (!state().update.bundle_path.empty()) fs::remove(state().update.bundle_path, ec);
  return InstallResult{UpdateState::kRolledBack, state().update.reason, state().update.message};
}

absl::StatusOr<bool> Updater::CheckRuntime() {
  if (active_ == nullptr || !AtRest(state().state)) return false;
  SupervisorEvent event = active_->supervisor->Current();
  if (event.state != ChildState::kCrashLoop) return false;
  const AgentState s = state();
  if (!CanRollBackCommitted()) {
    if (!crash_loop_reported_) {
      spdlog::error(
          "updater: outpost-serve on slot {} is in a crash loop and there is no "
          "previous release to go back to: {}",
          active_->slot, DescribeExit(event));
      crash_loop_reported_ = true;
    }
    return false;
  }
  ASSIGN_OR_RETURN(InstallResult result,
                   RollBackCommitted(kReasonCrashLoop,
                                     StrCat("outpost-serve crash loop on release '",
                                            s.committed->release, "': ", DescribeExit(event)),
                                     "crash loop after commit"));
  return result.state == UpdateState::kRolledBack;
}

bool Updater::CanRollBackCommitted() const {
  const AgentState& s = state();
  std::error_code ec;
  return s.committed && s.previous && s.previous->slot != s.committed->slot &&
         fs::is_directory(store_->SlotDir(s.previous->slot), ec);
}

absl::StatusOr<InstallResult> Updater::RollBackCommitted(std::string_view reason,
                                                         std::string message,
                                                         std::string_view source) {
  const AgentState s = state();
  AgentState next = s;
  next.update = UpdateRecord{};
  next.update.offer_id = s.committed->offer_id;
  next.update.source = std::string(source);
  next.update.release = s.committed->release;
  next.update.sequence = s.committed->sequence;
  next.update.target_slot = s.committed->slot;
  next.update.restore_slot = s.previous->slot;
  next.update.started_at = NowUnix();
  next.state = UpdateState::kCommitted;  // rewritten by Rollback at once
  // Rollback persists rolling_back before acting; carry the record with it.
  RETURN_IF_ERROR(store_->Transition(std::move(next), source));
  return Rollback(reason, std::move(message));
}

absl::Status Updater::Run(bool exit_when_idle) {
  absl::Status resumed = Resume();
  if (absl::IsCancelled(resumed)) return absl::OkStatus();
  if (!resumed.ok()) {
    spdlog::error("updater: resume failed: {}", MessageOf(resumed));
    if (!AtRest(state().state)) return resumed;
  }
  while (!stop_.load()) {
    absl::StatusOr<bool> rolled = CheckRuntime();
    if (!rolled.ok()) spdlog::error("updater: {}", MessageOf(rolled.status()));
    absl::StatusOr<std::optional<InstallResult>> result = InstallNext();
    if (!result.ok()) {
      if (absl::IsCancelled(result.status())) break;
      spdlog::error("updater: {}", MessageOf(result.status()));
      if (!AtRest(state().state)) {
        // A state write failed mid-install: undo it as a restart would.
        absl::Status again = Resume();
        if (!again.ok()) spdlog::error("updater: {}", MessageOf(again));
      }
    } else if (result->has_value()) {
      const InstallResult& r = **result;
      spdlog::info("updater: install ended {} {}", UpdateStateName(r.state), r.reason);
      continue;  // look for the next bundle at once
    } else if (exit_when_idle) {
      break;
    }
    SleepUnlessStopped(options_.poll_interval);
  }
  return absl::OkStatus();
}

}  // namespace outpost::agent
