// The admin API (docs/openapi.yaml): tokens, bootstrap tokens, releases,
// devices, configuration layers, rollouts. Role-scoped: viewer reads,
// operator changes the fleet, admin manages credentials.
#include <spdlog/spdlog.h>

#include <charconv>
#include <filesystem>
#include <map>
#include <set>

#include "bundle/bundle.h"
#include "common/atomic_file.h"
#include "hub/api.h"
#include "hub/config_merge.h"
#include "hub/release_compare.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
namespace bhttp = boost::beast::http;

constexpr std::string_view kBase = "/api/v1/admin";

std::optional<int64_t> IdParam(Call& call, const char* name = "id") {
  const std::string& text = call.params[name];
  int64_t id = 0;
  if (std::from_chars(text.data(), text.data() + text.size(), id).ec != std::errc() || id < 1) {
    call.Fail(http::Status::bad_request, StrCat("'", text, "' is not an id"));
    return std::nullopt;
  }
  return id;
}

std::string LabelsText(const Labels& labels) {
  std::string out;
  for (const auto& [k, v] : labels) StrAppend(&out, out.empty() ? "" : ";", k, "=", v);
  return out;
}

std::string CsvField(std::string_view s) {
  if (s.find_first_of(",\"\n\r") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// "k=v,k2=v2" -> labels. False on a malformed pair.
bool ParseLabelSelector(std::string_view text, Labels* labels) {
  while (!text.empty()) {
    size_t comma = text.find(',');
    std::string_view pair = text.substr(0, comma);
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) return false;
    (*labels)[std::string(pair.substr(0, eq))] = std::string(pair.substr(eq + 1));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return true;
}

Labels LabelsFromJson(const json& j) {
  Labels labels;
  for (auto it = j.begin(); it != j.end(); ++it) {
    labels[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  return labels;
}

// ---- tokens

void WhoAmI(HubContext&, Call& call) {
  call.Reply(http::Status::ok, {{"name", call.token->name}, {"role", NameOf(call.token->role)}});
}

void CreateToken(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  absl::StatusOr<Role> role = ParseRole(body->value("role", ""));
  if (!role.ok()) return call.Fail(role.status());
  std::string name = body->value("name", "");
  if (name.empty()) return call.Fail(http::Status::bad_request, "field 'name' is required");
  std::string secret = NewSecret("oat_");
  absl::StatusOr<ApiToken> token =
      hub.store().CreateApiToken(name, *role, HashSecret(secret), call.now);
  if (!token.ok()) return call.Fail(token.status());
  call.Reply(
      http::Status::created,
      {{"id", token->id}, {"name", token->name}, {"role", NameOf(token->role)}, {"token", secret}});
}

void ListTokens(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<ApiToken>> tokens = hub.store().ListApiTokens();
  if (!tokens.ok()) return call.Fail(tokens.status());
  json out = json::array();
  for (const ApiToken& t : *tokens) {
    out.push_back({{"id", t.id},
                   {"name", t.name},
                   {"role", NameOf(t.role)},
                   {"created_at", t.created_at},
                   {"revoked", t.revoked}});
  }
  call.Reply(http::Status::ok, {{"tokens", out}});
}

// DELETE /{tokens|bootstrap-tokens}/{id}: revoke by id with `revoke`.
void RevokeById(Call& call, absl::FunctionRef<absl::Status(int64_t)> revoke) {
  std::optional<int64_t> id = IdParam(call);
  if (!id) return;
  absl::Status status = revoke(*id);
  if (!status.ok()) return call.Fail(status);
  call.Reply(http::Status::ok, {{"id", *id}, {"revoked", true}});
}

void RevokeToken(HubContext& hub, Call& call) {
  RevokeById(call, [&](int64_t id) { return hub.store().RevokeApiToken(id); });
}

// ---- bootstrap tokens

void CreateBootstrap(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  BootstrapToken token;
  token.uses_left = body->value("uses", int64_t{1});
  int64_t ttl_s = body->value("ttl_s", int64_t{24 * 3600});
  if (token.uses_left < 1 || ttl_s < 1) {
    return call.Fail(http::Status::bad_request, "fields 'uses' and 'ttl_s': at least 1");
  }
  token.expires_at = call.now + ttl_s * 1000;
  token.site = body->value("site", "");
  if (body->contains("labels") && (*body)["labels"].is_object()) {
    token.labels = LabelsFromJson((*body)["labels"]);
  }
  std::string secret = NewSecret("obt_");
  token.token_hash = HashSecret(secret);
  absl::StatusOr<BootstrapToken> created = hub.store().CreateBootstrapToken(token, call.now);
  if (!created.ok()) return call.Fail(created.status());
  // The file a device is started with (outpost-agent --bootstrap).
  json bootstrap = {{"hub_url", hub.hub_url()}, {"token", secret}, {"ca_pem", hub.ca_pem()}};
  if (body->contains("device_id")) bootstrap["device_id"] = (*body)["device_id"];
  call.Reply(http::Status::created, {{"id", created->id},
                                     {"uses", created->uses_left},
                                     {"expires_at", created->expires_at},
                                     {"token", secret},
                                     {"bootstrap", bootstrap}});
}

void ListBootstrap(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<BootstrapToken>> tokens = hub.store().ListBootstrapTokens();
  if (!tokens.ok()) return call.Fail(tokens.status());
  json out = json::array();
  for (const BootstrapToken& t : *tokens) {
    out.push_back({{"id", t.id},
                   {"uses_left", t.uses_left},
                   {"expires_at", t.expires_at},
                   {"expired", t.expires_at <= call.now},
                   {"site", t.site},
                   {"labels", t.labels},
                   {"created_at", t.created_at}});
  }
  call.Reply(http::Status::ok, {{"bootstrap_tokens", out}});
}

void RevokeBootstrap(HubContext& hub, Call& call) {
  RevokeById(call, [&](int64_t id) { return hub.store().RevokeBootstrapToken(id); });
}

// ---- releases

void PushRelease(HubContext& hub, Call& call) {
  const std::string& body = call.request.body();
  if (body.empty()) {
    return call.Fail(http::Status::bad_request,
                     "send the signed bundle (.tar.zst) as the request body");
  }
  absl::StatusOr<bundle::TrustStore> trust =
      bundle::TrustStore::LoadDirectory(hub.hub_options().data_dir / "trusted-keys");
  if (!trust.ok()) {
    return call.Fail(http::Status::unprocessable_entity,
                     StrCat("the hub trusts no signing key yet: add one with `outpost-hub admin "
                            "trust-key` (",
                            MessageOf(trust.status()), ")"));
  }
  absl::StatusOr<bundle::VerifiedManifest> verified = bundle::VerifyBytes(body, *trust, {});
  if (!verified.ok()) {
    return call.Fail(http::Status::unprocessable_entity,
                     StrCat("bundle refused: ", MessageOf(verified.status())));
  }
  // The payload too, before anything is stored: a device would refuse it.
  fs::path uploads = hub.hub_options().data_dir / "uploads";
  std::error_code ec;
  fs::create_directories(uploads, ec);
  fs::path temp = uploads / StrCat(NewSecret("up_"), ".tar.zst");
  absl::Status written = WriteFileAtomic(temp, body, 0600);
  if (!written.ok()) return call.Fail(written);
  absl::Status payload = bundle::CheckPayload(temp, *verified);
  absl::StatusOr<BlobInfo> blob =
      payload.ok() ? hub.blobs().PutFile(temp) : absl::StatusOr<BlobInfo>(payload);
  fs::remove(temp, ec);
  if (!payload.ok()) {
    return call.Fail(http::Status::unprocessable_entity,
                     StrCat("bundle refused: ", MessageOf(payload)));
  }
  if (!blob.ok()) return call.Fail(blob.status());
  const bundle::Manifest& manifest = verified->manifest();
  absl::StatusOr<std::vector<Release>> newest = hub.store().ListReleases(true, 1);
  if (!newest.ok()) return call.Fail(newest.status());
  if (!newest->empty() && static_cast<int64_t>(manifest.sequence) <= newest->front().sequence) {
    return call.Fail(http::Status::conflict,
                     StrCat("release '", manifest.release, "' has sequence ", manifest.sequence,
                            ", not above the newest release '", newest->front().id, "' (",
                            newest->front().sequence, "): devices would refuse it as a downgrade"));
  }
  Release release;
  release.id = manifest.release;
  release.sequence = static_cast<int64_t>(manifest.sequence);
  release.bundle_sha256 = blob->sha256;
  release.size = blob->size;
  release.manifest_json = verified->manifest_json();
  release.key_id = verified->signature().key_id;
  release.created_at = call.now;
  absl::Status inserted = hub.store().InsertRelease(release);
  if (!inserted.ok()) return call.Fail(inserted);
  spdlog::info("hub: release {} (sequence {}, {} bytes, key {}) pushed by {}", release.id,
               release.sequence, release.size, release.key_id, call.token->name);
  call.Reply(http::Status::created, ReleaseJson(release));
}

void ListReleasesRoute(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<Release>> releases =
      hub.store().ListReleases(call.Query("yanked") == "true");
  if (!releases.ok()) return call.Fail(releases.status());
  json out = json::array();
  for (const Release& r : *releases) {
    json j = ReleaseJson(r);
    j.erase("manifest");
    out.push_back(std::move(j));
  }
  call.Reply(http::Status::ok, {{"releases", out}});
}

void GetReleaseRoute(HubContext& hub, Call& call) {
  absl::StatusOr<Release> release = hub.store().GetRelease(call.params["id"]);
  if (!release.ok()) return call.Fail(release.status());
  call.Reply(http::Status::ok, ReleaseJson(*release));
}

void YankReleaseRoute(HubContext& hub, Call& call) {
  absl::Status status = hub.store().YankRelease(call.params["id"]);
  if (!status.ok()) return call.Fail(status);
  call.Reply(http::Status::ok, {{"id", call.params["id"]}, {"yanked", true}});
}

// ---- devices

std::optional<DeviceFilter> FilterFrom(Call& call) {
  DeviceFilter filter;
  if (std::string site = call.Query("site"); !site.empty()) filter.site = site;
  if (std::string release = call.Query("release"); !release.empty())
    filter.current_release = release;
  if (std::string status = call.Query("status"); !status.empty()) {
    absl::StatusOr<DeviceStatus> s = ParseDeviceStatus(status);
    if (!s.ok()) {
      call.Fail(s.status());
      return std::nullopt;
    }
    filter.status = *s;
  }
  if (!ParseLabelSelector(call.Query("labels"), &filter.labels)) {
    call.Fail(http::Status::bad_request, "query 'labels': key=value pairs separated by commas");
    return std::nullopt;
  }
  return filter;
}

void ListDevicesRoute(HubContext& hub, Call& call) {
  std::optional<DeviceFilter> filter = FilterFrom(call);
  if (!filter) return;
  absl::StatusOr<std::vector<Device>> devices = hub.store().ListDevices(*filter);
  if (!devices.ok()) return call.Fail(devices.status());
  if (call.Query("format") == "csv") {
    std::string csv =
        "id,name,site,labels,status,online,last_seen_ms,arch,accelerators,make,model,serial,"
        "agent_version,runtime_version,onnxruntime_version,model_versions,current_release,"
        "previous_release,update_state,update_reason\n";
    for (const Device& d : *devices) {
      json facts = json::parse(d.facts_json, nullptr, false);
      if (!facts.is_object()) facts = json::object();
      auto fact = [&](const char* key) {
        if (!facts.contains(key)) return std::string();
        return facts[key].is_string() ? facts[key].get<std::string>() : facts[key].dump();
      };
      const bool online = d.last_seen_at > 0 && call.now - d.last_seen_at < kOnlineWindowMs;
      for (std::string_view field :
           {std::string_view(d.id), std::string_view(d.name), std::string_view(d.site)}) {
        StrAppend(&csv, CsvField(field), ",");
      }
      StrAppend(&csv, CsvField(LabelsText(d.labels)), ",", NameOf(d.status), ",",
                online ? "true" : "false", ",", d.last_seen_at, ",");
      for (const char* key : {"arch", "accelerators", "make", "model", "serial", "agent_version",
                              "runtime_version", "onnxruntime_version"}) {
        StrAppend(&csv, CsvField(fact(key)), ",");
      }
      std::string models;  // "name=version name=version"
      if (facts.contains("model_versions") && facts["model_versions"].is_object()) {
        for (const auto& [name, version] : facts["model_versions"].items()) {
          StrAppend(&models, models.empty() ? "" : " ", name, "=",
                    version.is_string() ? version.get<std::string>() : version.dump());
        }
      }
      StrAppend(&csv, CsvField(models), ",");
      StrAppend(&csv, CsvField(d.update.current_release), ",", CsvField(d.update.previous_release),
                ",", CsvField(d.update.update_state), ",", CsvField(d.update.update_reason), "\n");
    }
    http::Response response{http::Status::ok, call.request.version()};
    response.set(bhttp::field::content_type, "text/csv; charset=utf-8");
    response.set(bhttp::field::content_disposition, "attachment; filename=\"devices.csv\"");
    response.body() = std::move(csv);
    return call.responder.Send(std::move(response));
  }
  json out = json::array();
  int64_t online = 0;
  for (const Device& d : *devices) {
    out.push_back(DeviceJson(d, call.now));
    if (out.back()["online"].get<bool>()) ++online;
  }
  call.Reply(
      http::Status::ok,
      {{"devices", out}, {"count", static_cast<int64_t>(devices->size())}, {"online", online}});
}

// GET /releases/compare?a=R1&b=R2[&site=S][&labels=k=v,...]
void CompareReleasesRoute(HubContext& hub, Call& call) {
  std::optional<DeviceFilter> filter = FilterFrom(call);
  if (!filter) return;
  absl::StatusOr<json> comparison = CompareReleases(
      hub.store(), {.release_a = call.Query("a"), .release_b = call.Query("b"), .devices = *filter},
      call.now);
  if (!comparison.ok()) return call.Fail(comparison.status());
  call.Reply(http::Status::ok, *comparison);
}

// GET /devices/{id}/telemetry?metrics=a,b&window_s=3600: the device's
// samples of those metrics over the last window, [hub_time_ms, value]
// pairs oldest first (what the dashboard's device page charts).
void DeviceTelemetryRoute(HubContext& hub, Call& call) {
  constexpr int64_t kMaxWindowS = 7 * 24 * 3600;
  constexpr int64_t kMaxSamples = 5000;
  constexpr size_t kMaxMetrics = 16;
  absl::StatusOr<Device> device = hub.store().GetDevice(call.params["id"]);
  if (!device.ok()) return call.Fail(device.status());
  int64_t window_s = 3600;
  if (std::string text = call.Query("window_s"); !text.empty()) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), window_s);
    if (ec != std::errc() || end != text.data() + text.size() || window_s < 1 ||
        window_s > kMaxWindowS) {
      return call.Fail(http::Status::bad_request,
                       StrCat("query 'window_s': seconds from 1 to ", kMaxWindowS));
    }
  }
  std::vector<std::string> metrics;
  const std::string list = call.Query("metrics");
  for (std::string_view rest = list; !rest.empty();) {
    size_t comma = rest.find(',');
    std::string_view name = rest.substr(0, comma);
    if (!name.empty()) metrics.emplace_back(name);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  if (metrics.empty() || metrics.size() > kMaxMetrics) {
    return call.Fail(http::Status::bad_request,
                     StrCat("query 'metrics': 1 to ", kMaxMetrics,
                            " metric names separated by commas (e.g. latency_p95_ms,error_rate)"));
  }
  json series = json::object();
  for (const std::string& metric : metrics) {
    absl::StatusOr<std::vector<StoredSample>> samples =
        hub.store().QueryTelemetry({.device_ids = {device->id},
                                    .metric = metric,
                                    .from = call.now - window_s * 1000,
                                    .by_hub_time = true,
                                    .limit = kMaxSamples});
    if (!samples.ok()) return call.Fail(samples.status());
    json points = json::array();
    for (const StoredSample& s : *samples) points.push_back({s.hub_time, s.value});
    series[metric] = std::move(points);
  }
  call.Reply(http::Status::ok,
             {{"device_id", device->id}, {"window_s", window_s}, {"series", std::move(series)}});
}

void GetDeviceRoute(HubContext& hub, Call& call) {
  absl::StatusOr<Device> device = hub.store().GetDevice(call.params["id"]);
  if (!device.ok()) return call.Fail(device.status());
  call.Reply(http::Status::ok, DeviceJson(*device, call.now));
}

void PatchDevice(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  DeviceAttributes attributes;
  if (body->contains("name")) attributes.name = body->value("name", "");
  if (body->contains("site")) attributes.site = body->value("site", "");
  if (body->contains("labels")) {
    if (!(*body)["labels"].is_object()) {
      return call.Fail(http::Status::bad_request, "field 'labels': an object of strings");
    }
    attributes.labels = LabelsFromJson((*body)["labels"]);
  }
  absl::StatusOr<Device> device = hub.store().UpdateDeviceAttributes(call.params["id"], attributes);
  if (!device.ok()) return call.Fail(device.status());
  hub.DesiredChanged(device->id);  // site/labels pick configuration layers
  call.Reply(http::Status::ok, DeviceJson(*device, call.now));
}

// {"release": "name"} or {"release": null}.
std::optional<std::optional<std::string>> ReleaseField(Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return std::nullopt;
  if (!body->contains("release") ||
      !((*body)["release"].is_string() || (*body)["release"].is_null())) {
    call.Fail(http::Status::bad_request, "field 'release': a release name, or null");
    return std::nullopt;
  }
  if ((*body)["release"].is_null()) return std::optional<std::string>();
  return std::optional<std::string>((*body)["release"].get<std::string>());
}

void PinDeviceRoute(HubContext& hub, Call& call) {
  std::optional<std::optional<std::string>> release = ReleaseField(call);
  if (!release) return;
  if (*release) {
    absl::StatusOr<Release> r = hub.store().GetRelease(**release);
    if (!r.ok()) return call.Fail(r.status());
    if (r->yanked) {
      return call.Fail(http::Status::conflict, StrCat("release '", r->id, "' is yanked"));
    }
  }
  absl::Status status = hub.store().PinDevice(
      call.params["id"], *release ? std::optional<std::string_view>(**release) : std::nullopt);
  if (!status.ok()) return call.Fail(status);
  hub.DesiredChanged(call.params["id"]);
  call.Reply(http::Status::ok, {{"id", call.params["id"]},
                                {"pinned_release", *release ? json(**release) : json(nullptr)}});
}

void SetDesiredRoute(HubContext& hub, Call& call) {
  std::optional<std::optional<std::string>> release = ReleaseField(call);
  if (!release) return;
  if (*release) {
    absl::StatusOr<Release> r = hub.store().GetRelease(**release);
    if (!r.ok()) return call.Fail(r.status());
    if (r->yanked) {
      return call.Fail(http::Status::conflict, StrCat("release '", r->id, "' is yanked"));
    }
  }
  absl::StatusOr<int64_t> generation = hub.store().SetDesiredRelease(
      call.params["id"], *release ? std::optional<std::string_view>(**release) : std::nullopt,
      call.now);
  if (!generation.ok()) return call.Fail(generation.status());
  hub.DesiredChanged(call.params["id"]);
  call.Reply(http::Status::ok, {{"id", call.params["id"]},
                                {"desired_release", *release ? json(**release) : json(nullptr)},
                                {"generation", *generation}});
}

void SetStatusRoute(HubContext& hub, Call& call, DeviceStatus status) {
  absl::Status result = hub.store().SetDeviceStatus(call.params["id"], status);
  if (!result.ok()) return call.Fail(result);
  hub.DesiredChanged(call.params["id"]);
  call.Reply(http::Status::ok, {{"id", call.params["id"]}, {"status", NameOf(status)}});
}

void DeviceEventsRoute(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<DeviceEvent>> events =
      hub.store().ListDeviceEvents(call.params["id"], 0, 200);
  if (!events.ok()) return call.Fail(events.status());
  json out = json::array();
  for (const DeviceEvent& e : *events) {
    out.push_back({{"seq", e.seq},
                   {"state", e.state},
                   {"release", e.release},
                   {"reason", e.reason},
                   {"device_time", e.device_time},
                   {"hub_time", e.hub_time}});
  }
  call.Reply(http::Status::ok, {{"events", out}});
}

void DeviceConfigRoute(HubContext& hub, Call& call) {
  absl::StatusOr<Device> device = hub.store().GetDevice(call.params["id"]);
  if (!device.ok()) return call.Fail(device.status());
  absl::StatusOr<std::vector<ConfigLayer>> layers =
      hub.store().ListConfigLayersFor({device->site, DeviceGroups(*device), device->id});
  if (!layers.ok()) return call.Fail(layers.status());
  absl::StatusOr<EffectiveConfig> config = MergeLayers(*layers);
  if (!config.ok()) return call.Fail(config.status());
  json names = json::array();
  for (const ConfigLayer& l : *layers) names.push_back(LayerName(l));
  call.Reply(http::Status::ok, {{"device_id", device->id},
                                {"layers", names},
                                {"config", config->value},
                                {"sources", config->sources}});
}

// ---- configuration layers

json LayerJson(const ConfigLayer& layer) {
  return {{"scope", NameOf(layer.scope)},
          {"key", layer.scope_key},
          {"yaml", layer.yaml},
          {"version", layer.version},
          {"updated_at", layer.updated_at}};
}

std::optional<std::pair<ConfigScope, std::string>> LayerParams(Call& call) {
  std::string scope_name = call.params.count("scope") ? call.params["scope"] : "fleet";
  absl::StatusOr<ConfigScope> scope = ParseConfigScope(scope_name);
  if (!scope.ok()) {
    call.Fail(scope.status());
    return std::nullopt;
  }
  return std::make_pair(*scope, call.params.count("key") ? call.params["key"] : std::string());
}

void ListLayers(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<ConfigLayer>> layers = hub.store().ListConfigLayers();
  if (!layers.ok()) return call.Fail(layers.status());
  json out = json::array();
  for (const ConfigLayer& l : *layers) out.push_back(LayerJson(l));
  call.Reply(http::Status::ok, {{"layers", out}});
}

void GetLayer(HubContext& hub, Call& call) {
  auto params = LayerParams(call);
  if (!params) return;
  absl::StatusOr<ConfigLayer> layer = hub.store().GetConfigLayer(params->first, params->second);
  if (!layer.ok()) return call.Fail(layer.status());
  call.Reply(http::Status::ok, LayerJson(*layer));
}

void PutLayer(HubContext& hub, Call& call) {
  auto params = LayerParams(call);
  if (!params) return;
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  std::string yaml = body->value("yaml", "");
  ConfigLayer probe{.scope = params->first, .scope_key = params->second, .yaml = yaml};
  absl::StatusOr<json> parsed = YamlToJson(yaml, LayerName(probe));
  if (!parsed.ok()) return call.Fail(parsed.status());
  std::optional<int64_t> expected;
  if (body->contains("expected_version")) expected = body->value("expected_version", int64_t{0});
  absl::StatusOr<ConfigLayer> layer =
      hub.store().PutConfigLayer(params->first, params->second, yaml, expected, call.now);
  if (!layer.ok()) return call.Fail(layer.status());
  hub.AllDesiredChanged();
  call.Reply(http::Status::ok, LayerJson(*layer));
}

void DeleteLayer(HubContext& hub, Call& call) {
  auto params = LayerParams(call);
  if (!params) return;
  std::optional<int64_t> expected;
  if (std::string text = call.Query("expected_version"); !text.empty()) {
    int64_t version = 0;
    if (std::from_chars(text.data(), text.data() + text.size(), version).ec != std::errc()) {
      return call.Fail(http::Status::bad_request, "query 'expected_version': a number");
    }
    expected = version;
  }
  absl::Status status = hub.store().DeleteConfigLayer(params->first, params->second, expected);
  if (!status.ok()) return call.Fail(status);
  hub.AllDesiredChanged();
  call.Reply(http::Status::ok, {{"deleted", true}});
}

// ---- rollouts

void CreateRolloutRoute(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  std::string release_id = body->value("release", "");
  absl::StatusOr<Release> release = hub.store().GetRelease(release_id);
  if (!release.ok()) return call.Fail(release.status());
  if (release->yanked) {
    return call.Fail(http::Status::conflict, StrCat("release '", release_id, "' is yanked"));
  }
  absl::StatusOr<RolloutPlan> plan = ParseRolloutPlan(*body);
  if (!plan.ok()) return call.Fail(plan.status());
  json selector = body->value("selector", json::object());
  if (!selector.is_object())
    return call.Fail(http::Status::bad_request, "field 'selector': an object");
  DeviceFilter filter;
  filter.status = DeviceStatus::kActive;
  if (selector.contains("site")) filter.site = selector.value("site", "");
  if (selector.contains("labels") && selector["labels"].is_object()) {
    filter.labels = LabelsFromJson(selector["labels"]);
  }
  std::set<std::string> only;
  if (selector.contains("devices") && selector["devices"].is_array()) {
    for (const json& d : selector["devices"]) {
      if (d.is_string()) only.insert(d.get<std::string>());
    }
  }
  absl::StatusOr<std::vector<Device>> devices = hub.store().ListDevices(filter);
  if (!devices.ok()) return call.Fail(devices.status());
  std::vector<std::string> ids;
  json previous = json::object();
  for (const Device& d : *devices) {
    if (!only.empty() && !only.count(d.id)) continue;
    if (d.pinned_release) continue;  // pinned devices stay where they are
    ids.push_back(d.id);
    previous[d.id] = d.update.current_release;
  }
  std::sort(ids.begin(), ids.end());
  Rollout rollout;
  rollout.release_id = release_id;
  rollout.selector_json = selector.dump();
  rollout.waves_json = PlanJson(*plan).dump();
  rollout.gates_json =
      json{{"previous", previous}, {"failures", 0}, {"offered", 0}, {"history", json::array()}}
          .dump();
  absl::StatusOr<Rollout> created =
      hub.store().CreateRollout(rollout, AssignWaves(ids, *plan), call.now);
  if (!created.ok()) return call.Fail(created.status());
  spdlog::info("hub: rollout {} of {} to {} device(s) created by {}", created->id, release_id,
               ids.size(), call.token->name);
  json out = RolloutJson(*created);
  out["device_count"] = static_cast<int64_t>(ids.size());
  call.Reply(http::Status::created, out);
}

void ListRolloutsRoute(HubContext& hub, Call& call) {
  absl::StatusOr<std::vector<Rollout>> rollouts = hub.store().ListRollouts({});
  if (!rollouts.ok()) return call.Fail(rollouts.status());
  json out = json::array();
  for (const Rollout& r : *rollouts) out.push_back(RolloutJson(r));
  call.Reply(http::Status::ok, {{"rollouts", out}});
}

void GetRolloutRoute(HubContext& hub, Call& call) {
  std::optional<int64_t> id = IdParam(call);
  if (!id) return;
  absl::StatusOr<Rollout> rollout = hub.store().GetRollout(*id);
  if (!rollout.ok()) return call.Fail(rollout.status());
  absl::StatusOr<std::vector<RolloutDevice>> devices = hub.store().ListRolloutDevices(*id);
  if (!devices.ok()) return call.Fail(devices.status());
  json out = RolloutJson(*rollout);
  json list = json::array();
  std::map<std::string, int64_t> counts;
  for (const RolloutDevice& d : *devices) {
    list.push_back({{"device_id", d.device_id},
                    {"wave", d.wave},
                    {"state", NameOf(d.state)},
                    {"updated_at", d.updated_at}});
    ++counts[std::string(NameOf(d.state))];
  }
  out["devices"] = list;
  out["counts"] = counts;
  call.Reply(http::Status::ok, out);
}

void RolloutAction(HubContext& hub, Call& call, std::string_view action) {
  std::optional<int64_t> id = IdParam(call);
  if (!id) return;
  absl::Status status;
  if (action == "pause") {
    status = hub.rollouts().Pause(*id);
  } else if (action == "resume") {
    status = hub.rollouts().Resume(*id);
  } else if (action == "abort") {
    status = hub.rollouts().Abort(*id);
  } else {
    std::string reason = "requested by " + call.token->name;
    status = hub.rollouts().Rollback(*id, reason);
  }
  if (!status.ok()) return call.Fail(status);
  absl::StatusOr<Rollout> rollout = hub.store().GetRollout(*id);
  if (!rollout.ok()) return call.Fail(rollout.status());
  call.Reply(http::Status::ok, RolloutJson(*rollout));
}

}  // namespace

json DeviceJson(const Device& d, TimeMs now) {
  json facts = json::parse(d.facts_json, nullptr, false);
  if (facts.is_discarded()) facts = json::object();
  return {{"id", d.id},
          {"name", d.name},
          {"site", d.site},
          {"labels", d.labels},
          {"facts", facts},
          {"status", NameOf(d.status)},
          {"online", d.last_seen_at > 0 && now - d.last_seen_at < kOnlineWindowMs},
          {"last_seen_at", d.last_seen_at},
          {"enrolled_at", d.enrolled_at},
          {"clock_offset_ms", d.last_clock_offset_ms},
          {"pinned_release", d.pinned_release ? json(*d.pinned_release) : json(nullptr)},
          {"desired_release", d.desired_release ? json(*d.desired_release) : json(nullptr)},
          {"current_release", d.update.current_release},
          {"previous_release", d.update.previous_release},
          {"update_state", d.update.update_state},
          {"update_reason", d.update.update_reason}};
}

json ReleaseJson(const Release& r) {
  json manifest = json::parse(r.manifest_json, nullptr, false);
  return {{"id", r.id},
          {"sequence", r.sequence},
          {"sha256", r.bundle_sha256},
          {"size", r.size},
          {"key_id", r.key_id},
          {"created_at", r.created_at},
          {"yanked", r.yanked},
          {"manifest", manifest.is_discarded() ? json(nullptr) : manifest}};
}

json RolloutJson(const Rollout& r) {
  json plan = json::parse(r.waves_json, nullptr, false);
  json gates = json::parse(r.gates_json, nullptr, false);
  return {{"id", r.id},
          {"release", r.release_id},
          {"state", NameOf(r.state)},
          {"current_wave", r.current_wave},
          {"wave_started_at", r.wave_started_at},
          {"plan", plan.is_discarded() ? json(nullptr) : plan},
          {"gates", gates.is_discarded() ? json(nullptr) : gates},
          {"created_at", r.created_at},
          {"updated_at", r.updated_at}};
}

void RegisterAdminApi(HubContext& hub, Router& router) {
  auto add = [&](const char* method, std::string_view path, Access access,
                 std::function<void(HubContext&, Call&)> fn) {
    router.Add(method, StrCat(kBase, path), access,
               [&hub, fn = std::move(fn)](Call& call) { fn(hub, call); });
  };
  add("GET", "/whoami", Access::kViewer, &WhoAmI);
  add("POST", "/tokens", Access::kAdmin, &CreateToken);
  add("GET", "/tokens", Access::kAdmin, &ListTokens);
  add("DELETE", "/tokens/{id}", Access::kAdmin, &RevokeToken);
  add("POST", "/bootstrap-tokens", Access::kOperator, &CreateBootstrap);
  add("GET", "/bootstrap-tokens", Access::kOperator, &ListBootstrap);
  add("DELETE", "/bootstrap-tokens/{id}", Access::kOperator, &RevokeBootstrap);
  add("POST", "/releases", Access::kOperator, &PushRelease);
  add("GET", "/releases", Access::kViewer, &ListReleasesRoute);
  // Before /releases/{id}: the first matching pattern wins.
  add("GET", "/releases/compare", Access::kViewer, &CompareReleasesRoute);
  add("GET", "/releases/{id}", Access::kViewer, &GetReleaseRoute);
  add("POST", "/releases/{id}/yank", Access::kOperator, &YankReleaseRoute);
  add("GET", "/devices", Access::kViewer, &ListDevicesRoute);
  add("GET", "/devices/{id}", Access::kViewer, &GetDeviceRoute);
  add("PATCH", "/devices/{id}", Access::kOperator, &PatchDevice);
  add("POST", "/devices/{id}/pin", Access::kOperator, &PinDeviceRoute);
  add("POST", "/devices/{id}/desired", Access::kOperator, &SetDesiredRoute);
  add("POST", "/devices/{id}/revoke", Access::kAdmin,
      [](HubContext& h, Call& c) { SetStatusRoute(h, c, DeviceStatus::kRevoked); });
  add("POST", "/devices/{id}/decommission", Access::kAdmin,
      [](HubContext& h, Call& c) { SetStatusRoute(h, c, DeviceStatus::kDecommissioned); });
  add("GET", "/devices/{id}/events", Access::kViewer, &DeviceEventsRoute);
  add("GET", "/devices/{id}/config", Access::kViewer, &DeviceConfigRoute);
  add("GET", "/devices/{id}/telemetry", Access::kViewer, &DeviceTelemetryRoute);
  add("GET", "/config", Access::kViewer, &ListLayers);
  add("GET", "/config/fleet", Access::kViewer, &GetLayer);
  add("PUT", "/config/fleet", Access::kOperator, &PutLayer);
  add("DELETE", "/config/fleet", Access::kOperator, &DeleteLayer);
  add("GET", "/config/{scope}/{key}", Access::kViewer, &GetLayer);
  add("PUT", "/config/{scope}/{key}", Access::kOperator, &PutLayer);
  add("DELETE", "/config/{scope}/{key}", Access::kOperator, &DeleteLayer);
  add("POST", "/rollouts", Access::kOperator, &CreateRolloutRoute);
  add("GET", "/rollouts", Access::kViewer, &ListRolloutsRoute);
  add("GET", "/rollouts/{id}", Access::kViewer, &GetRolloutRoute);
  for (const char* action : {"pause", "resume", "abort", "rollback"}) {
    add("POST", StrCat("/rollouts/{id}/", action), Access::kOperator,
        [action](HubContext& h, Call& c) { RolloutAction(h, c, action); });
  }
  router.Add("GET", "/api/v1/health", Access::kPublic, [&hub](Call& call) {
    absl::Status ping = hub.store().Ping();
    if (!ping.ok()) return call.Fail(http::Status::service_unavailable, MessageOf(ping));
    call.Reply(http::Status::ok, {{"status", "ok"}, {"version", OUTPOST_VERSION}});
  });
}

}  // namespace outpost::hub
