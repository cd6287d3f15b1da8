#include "agent/hub_client.h"

#include <spdlog/spdlog.h>
#include <zstd.h>

#include <cctype>
#include <charconv>
#include <ctime>
#include <fstream>
#include <sstream>

#include "common/atomic_file.h"

namespace outpost::agent {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr std::string_view kApi = "/api/v1/device";
constexpr size_t kMaxEventsPerReport = 200;

int64_t NowMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

fs::path HubDir(const fs::path& state_dir) { return state_dir / "hub"; }

std::string TrimSlash(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url;
}

absl::StatusOr<HubConnection> LoadCredential(const fs::path& state_dir) {
  fs::path path = HubDir(state_dir) / "credential.json";
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  try {
    json j = json::parse(text);
    HubConnection c;
    c.hub_url = j.at("hub_url").get<std::string>();
    c.device_id = j.at("device_id").get<std::string>();
    c.token = j.at("token").get<std::string>();
    if (j.value("pinned_ca", false)) c.ca_file = HubDir(state_dir) / "ca.pem";
    return c;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(StrCat(path.string(), ": ", e.what(),
                                             " (remove it and enrol again with a bootstrap file)"));
  }
}

}  // namespace

absl::StatusOr<Bootstrap> LoadBootstrap(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  Bootstrap b;
  std::string field = "(document)";
  try {
    json j = json::parse(text);
    field = "hub_url";
    b.hub_url = TrimSlash(j.at("hub_url").get<std::string>());
    field = "token";
    b.token = j.at("token").get<std::string>();
    field = "ca_pem";
    b.ca_pem = j.value("ca_pem", "");
    field = "device_id";
    b.device_id = j.value("device_id", "");
    field = "site";
    b.site = j.value("site", "");
    field = "labels";
    if (j.contains("labels")) b.labels = j["labels"];
    if (!b.labels.is_object())
      throw json::type_error::create(302, "labels must be an object", nullptr);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(StrCat(path.string(), ": field '", field, "': ", e.what()));
  }
  if (!b.hub_url.starts_with("https://") && !b.hub_url.starts_with("http://")) {
    return absl::InvalidArgumentError(
        StrCat(path.string(), ": field 'hub_url': '", b.hub_url, "' is not an https:// URL"));
  }
  if (b.token.empty()) {
    return absl::InvalidArgumentError(StrCat(path.string(), ": field 'token' is empty"));
  }
  return b;
}

absl::StatusOr<HubConnection> EnsureEnrolled(const fs::path& state_dir,
                                             const fs::path& bootstrap_file, const json& facts) {
  absl::StatusOr<HubConnection> existing = LoadCredential(state_dir);
  if (existing.ok() || !absl::IsNotFound(existing.status())) return existing;
  if (bootstrap_file.empty()) {
    return absl::FailedPreconditionError(
        "this device is not enrolled: start the agent once with --bootstrap FILE "
        "(written by `outpost-hub admin bootstrap`)");
  }
  ASSIGN_OR_RETURN(Bootstrap bootstrap, LoadBootstrap(bootstrap_file));
  fs::path hub_dir = HubDir(state_dir);
  std::error_code ec;
  fs::create_directories(hub_dir, ec);
  if (ec) return absl::InternalError(StrCat("creating ", hub_dir.string(), ": ", ec.message()));
  fs::permissions(hub_dir, fs::perms::owner_all, ec);
  HubConnection connection;
  connection.hub_url = bootstrap.hub_url;
  if (!bootstrap.ca_pem.empty()) {
    connection.ca_file = hub_dir / "ca.pem";
    RETURN_IF_ERROR(WriteFileAtomic(connection.ca_file, bootstrap.ca_pem, 0644));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> http,
                   HttpClient::Create({.ca_file = connection.ca_file.string()}));
  json body = {{"token", bootstrap.token}, {"facts", facts}, {"labels", bootstrap.labels}};
  if (!bootstrap.device_id.empty()) body["device_id"] = bootstrap.device_id;
  if (!bootstrap.site.empty()) body["site"] = bootstrap.site;
  ASSIGN_OR_RETURN(HttpResponse response,
                   http->Send({.method = "POST",
                               .url = StrCat(connection.hub_url, kApi, "/enroll"),
                               .body = body.dump(),
                               .content_type = "application/json"}));
  if (response.status == 401 || response.status == 403) {
    return absl::PermissionDeniedError(
        StrCat("the hub refused the bootstrap token (", response.ErrorMessage(),
               "): it may have expired or been used up; ask for a new bootstrap file"));
  }
  if (response.status != 200 && response.status != 201) {
    return HttpErrorStatus(response, "enrolment");
  }
  try {
    json answer = json::parse(response.body);
    connection.device_id = answer.at("device_id").get<std::string>();
    connection.token = answer.at("token").get<std::string>();
  } catch (const json::exception& e) {
    return absl::InternalError(StrCat("enrolment: unexpected answer from the hub: ", e.what()));
  }
  json credential = {{"hub_url", connection.hub_url},
                     {"device_id", connection.device_id},
                     {"token", connection.token},
                     {"pinned_ca", !connection.ca_file.empty()}};
  RETURN_IF_ERROR(WriteFileAtomic(hub_dir / "credential.json", credential.dump(2) + "\n", 0600));
  spdlog::info("enrolled with {} as device '{}'", connection.hub_url, connection.device_id);
  return connection;
}

absl::StatusOr<std::unique_ptr<HubClient>> HubClient::Create(HubConnection connection) {
  ASSIGN_OR_RETURN(std::unique_ptr<HttpClient> http,
                   HttpClient::Create({.ca_file = connection.ca_file.string(),
                                       .bearer_token = connection.token,
                                       .user_agent = "outpost-agent/" OUTPOST_VERSION}));
  return std::unique_ptr<HubClient>(new HubClient(std::move(connection), std::move(http)));
}

HubClient::HubClient(HubConnection connection, std::unique_ptr<HttpClient> http)
    : connection_(std::move(connection)), http_(std::move(http)) {}

absl::StatusOr<HttpResponse> HubClient::Exchange(HttpRequest request, std::string_view what) {
  int64_t sent = NowMillis();
  request.headers.emplace_back("X-Outpost-Device-Time", StrCat(sent));
  ASSIGN_OR_RETURN(HttpResponse response, http_->Send(request));
  int64_t received = NowMillis();
  int64_t hub_time = 0;
  std::string_view header = response.Header("x-outpost-hub-time");
  if (std::from_chars(header.data(), header.data() + header.size(), hub_time).ec == std::errc()) {
    clock_offset_ms_.store(hub_time - (sent + received) / 2);
  }
  if (response.status == 401) {
    return absl::UnauthenticatedError(
        StrCat(what, ": the hub refused this device's credential (", response.ErrorMessage(),
               "): the device was revoked or decommissioned; re-enrol it with a new bootstrap "
               "file to bring it back"));
  }
  return response;
}

absl::StatusOr<std::optional<DesiredState>> HubClient::GetDesired(std::chrono::seconds wait) {
  HttpRequest request{.url = StrCat(connection_.hub_url, kApi, "/desired?wait=", wait.count()),
                      .timeout = std::chrono::seconds(wait.count() + 30)};
  if (last_) request.headers.emplace_back("If-None-Match", last_->etag);
  ASSIGN_OR_RETURN(HttpResponse response, Exchange(std::move(request), "desired state"));
  if (response.status == 304) return std::nullopt;
  if (response.status != 200) return HttpErrorStatus(response, "desired state");
  DesiredState desired;
  desired.etag = std::string(response.Header("etag"));
  try {
    json j = json::parse(response.body);
    desired.generation = j.value("generation", uint64_t{0});
    desired.poll_interval_s = j.value("poll_interval_s", 30);
    if (j.contains("config") && j["config"].is_object()) desired.config = j["config"];
    if (j.contains("release") && !j["release"].is_null()) {
      const json& r = j["release"];
      DesiredRelease release;
      release.name = r.at("name").get<std::string>();
      release.sequence = r.at("sequence").get<uint64_t>();
      release.sha256 = r.at("sha256").get<std::string>();
      release.size = r.at("size").get<uint64_t>();
      release.url = r.at("url").get<std::string>();
      if (release.url.starts_with("/")) release.url = connection_.hub_url + release.url;
      if (r.contains("install_window") && r["install_window"].is_object()) {
        std::string start = r["install_window"].value("start", "");
        std::string end = r["install_window"].value("end", "");
        std::optional<int> s = ParseTimeOfDay(start), e = ParseTimeOfDay(end);
        if (s && e) release.window = InstallWindow{*s, *e, StrCat(start, "-", end)};
      }
      desired.release = std::move(release);
    }
  } catch (const json::exception& e) {
    return absl::InternalError(StrCat("desired state: unexpected answer from the hub: ", e.what()));
  }
  last_ = desired;
  return desired;
}

absl::StatusOr<json> HubClient::Post(std::string_view path, const json& body) {
  ASSIGN_OR_RETURN(HttpResponse response, Exchange({.method = "POST",
                                                    .url = StrCat(connection_.hub_url, kApi, path),
                                                    .body = body.dump(),
                                                    .content_type = "application/json"},
                                                   path));
  if (response.status != 200 && response.status != 201) return HttpErrorStatus(response, path);
  json answer = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (answer.is_discarded()) {
    return absl::InternalError(StrCat(path, ": the hub's answer is not JSON"));
  }
  return answer;
}

std::optional<int> ParseTimeOfDay(std::string_view text) {
  // "HH:MM" or "HH:MM:SS", two digits each.
  if (text.size() != 5 && text.size() != 8) return std::nullopt;
  int parts[3] = {0, 0, 0};
  for (size_t i = 0; i * 3 < text.size(); ++i) {
    if (i > 0 && text[i * 3 - 1] != ':') return std::nullopt;
    const char* p = text.data() + i * 3;
    if (std::from_chars(p, p + 2, parts[i]).ec != std::errc() || !std::isdigit(p[0]) ||
        !std::isdigit(p[1])) {
      return std::nullopt;
    }
  }
  if (parts[0] > 23 || parts[1] > 59 || parts[2] > 59) return std::nullopt;
  return parts[0] * 3600 + parts[1] * 60 + parts[2];
}

bool InstallWindow::Contains(int t) const {
  if (start_s == end_s) return true;  // a full day
  return start_s < end_s ? (t >= start_s && t < end_s) : (t >= start_s || t < end_s);
}

namespace {
int LocalSecondsOfDay() {
  time_t now = time(nullptr);
  struct tm local {};
  localtime_r(&now, &local);
  return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec;
}

// A complete download of the right size and hash is not fetched again.
bool AlreadyDownloaded(const fs::path& dest, const DesiredRelease& release) {
  std::error_code ec;
  if (fs::file_size(dest, ec) != release.size || ec) return false;
  absl::StatusOr<std::string> sha = Sha256File(dest);
  return sha.ok() && *sha == release.sha256;
}
}  // namespace

HubSource::HubSource(std::unique_ptr<HubClient> client, std::chrono::seconds long_poll,
                     FetchOptions fetch_options, std::shared_ptr<DownloadProgress> progress,
                     fs::path downloads_dir)
    : client_(std::move(client)),
      long_poll_(long_poll),
      fetch_options_(std::move(fetch_options)),
      progress_(std::move(progress)),
      downloads_dir_(std::move(downloads_dir)) {
  fetch_options_.ca_file = client_->connection().ca_file.string();
  fetch_options_.bearer_token = client_->connection().token;
  fetch_options_.progress = [progress = progress_](const FetchProgress& p) {
    progress->bytes_done.store(p.bytes_done);
    progress->bytes_total.store(p.bytes_total);
  };
}

absl::StatusOr<std::optional<UpdateOffer>> HubSource::Next(
    const std::vector<std::string>& handled) {
  RETURN_IF_ERROR(client_->GetDesired(long_poll_).status());
  const DesiredState* desired = client_->last_desired();
  if (desired == nullptr || !desired->release) return std::nullopt;
  const DesiredRelease& release = *desired->release;
  std::string id = StrCat("sha256:", release.sha256);
  for (const std::string& h : handled) {
    if (h == id) return std::nullopt;
  }
  UpdateOffer offer{id, StrCat(release.name, " from ", client_->connection().hub_url)};
  if (release.window && !release.window->Contains(LocalSecondsOfDay())) {
    // Outside the maintenance window: download now, install later.
    fs::path dest = BundleDownloadPath(downloads_dir_, offer);
    if (!AlreadyDownloaded(dest, release)) {
      progress_->bytes_done.store(0);
      progress_->bytes_total.store(release.size);
      RETURN_IF_ERROR(
          agent::Fetch(release.url, dest, release.sha256, release.size, fetch_options_).status());
    }
    if (waiting_logged_ != id) {
      spdlog::info("hub: {} downloaded; installing inside its maintenance window {} (local time)",
                   release.name, release.window->text);
      waiting_logged_ = id;
    }
    return std::nullopt;
  }
  return offer;
}

absl::Status HubSource::Fetch(const UpdateOffer& offer, const fs::path& dest) {
  const DesiredState* desired = client_->last_desired();
  if (desired == nullptr || !desired->release ||
      offer.id != StrCat("sha256:", desired->release->sha256)) {
    return absl::FailedPreconditionError(
        StrCat("the hub no longer wants ", offer.description, " on this device"));
  }
  const DesiredRelease& release = *desired->release;
  if (AlreadyDownloaded(dest, release)) return absl::OkStatus();
  progress_->bytes_done.store(0);
  progress_->bytes_total.store(release.size);
  return agent::Fetch(release.url, dest, release.sha256, release.size, fetch_options_).status();
}

StatusReporter::StatusReporter(fs::path state_dir, std::unique_ptr<HubClient> client,
                               std::shared_ptr<DownloadProgress> progress)
    : state_dir_(std::move(state_dir)), client_(std::move(client)), progress_(std::move(progress)) {
  absl::StatusOr<std::string> text = ReadFile(HubDir(state_dir_) / "reported");
  if (text.ok()) {
    std::from_chars(text->data(), text->data() + text->size(), acknowledged_);
  }
}

absl::Status StatusReporter::ReportOnce(bool force) {
  // Oldest first: the rotated history, then the live one. A torn last line
  // (power cut while appending) does not parse and is skipped.
  std::vector<json> pending;
  for (const fs::path& path : {state_dir_ / "history.jsonl.1", state_dir_ / "history.jsonl"}) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      json event = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!event.is_object() || !event.contains("seq")) continue;
      uint64_t seq = event.value("seq", uint64_t{0});
      if (seq > acknowledged_) pending.push_back(std::move(event));
    }
  }
  std::sort(pending.begin(), pending.end(), [](const json& a, const json& b) {
    return a.value("seq", uint64_t{0}) < b.value("seq", uint64_t{0});
  });
  json state = json::object();
  if (absl::StatusOr<std::string> text = ReadFile(state_dir_ / "state.json"); text.ok()) {
    state = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (state.is_discarded()) state = json::object();
    state.erase("handled");  // device-local bookkeeping
  }
  // Nothing new and no download moving: the desired-state poll already
  // tells the hub the device is alive, so an idle device sends nothing here.
  const uint64_t done = progress_->bytes_done.load();
  if (pending.empty() && done == last_progress_reported_ && !force) return absl::OkStatus();
  last_progress_reported_ = done;
  size_t sent = 0;
  do {
    size_t count = std::min(kMaxEventsPerReport, pending.size() - sent);
    json events = json::array();
    for (size_t i = 0; i < count; ++i) events.push_back(pending[sent + i]);
    json body = {{"events", std::move(events)},
                 {"state", state},
                 {"progress",
                  {{"bytes_done", progress_->bytes_done.load()},
                   {"bytes_total", progress_->bytes_total.load()}}},
                 {"clock_offset_ms", client_->clock_offset_ms()}};
    ASSIGN_OR_RETURN(json answer, client_->Post("/status", body));
    uint64_t acked = answer.value("acknowledged_seq", uint64_t{0});
    if (acked > acknowledged_) {
      acknowledged_ = acked;
      RETURN_IF_ERROR(WriteFileAtomic(HubDir(state_dir_) / "reported", StrCat(acked), 0600));
    }
    sent += count;
  } while (sent < pending.size());
  return absl::OkStatus();
}

}  // namespace outpost::agent
