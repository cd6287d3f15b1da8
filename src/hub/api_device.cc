// The device API (docs/device-api.md): enrol, desired state (ETag + long
// poll), status reports, telemetry batches, artifact downloads with Range.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "common/sha256.h"
#include "hub/api.h"
#include "hub/config_merge.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;
namespace bhttp = boost::beast::http;

bool ValidDeviceId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return false;
    }
  }
  return true;
}

// The device's clock minus the hub's, from the X-Outpost-Device-Time header
// (unix ms at sending; network delay is small next to the skews that matter).
std::optional<int64_t> MeasuredClockOffset(const Call& call) {
  std::string_view header = HeaderOf(call.request, "X-Outpost-Device-Time");
  int64_t device_time = 0;
  if (header.empty() ||
      std::from_chars(header.data(), header.data() + header.size(), device_time).ec !=
          std::errc()) {
    return std::nullopt;
  }
  return device_time - call.now;
}

int64_t ClockOffset(const Call& call) { return MeasuredClockOffset(call).value_or(0); }

Labels LabelsFrom(const json& j) {
  Labels labels;
  if (!j.is_object()) return labels;
  for (auto it = j.begin(); it != j.end(); ++it) {
    labels[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  return labels;
}

void Enroll(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  std::string token = body->value("token", "");
  if (token.empty()) return call.Fail(http::Status::bad_request, "field 'token' is required");
  Device device;
  device.id = body->value("device_id", "");
  if (device.id.empty()) {
    device.id = StrCat("dev-", Sha256::HexOf(NewSecret("")).substr(0, 12));
  } else if (!ValidDeviceId(device.id)) {
    return call.Fail(http::Status::bad_request,
                     "field 'device_id': 1-64 characters of letters, digits, '-', '_', '.'");
  }
  device.name = device.id;
  device.site = body->value("site", "");
  if (body->contains("labels")) device.labels = LabelsFrom((*body)["labels"]);
  if (body->contains("facts") && (*body)["facts"].is_object()) {
    device.facts_json = (*body)["facts"].dump();
  }
  std::string secret = NewSecret("odc_");
  device.credential_hash = HashSecret(secret);
  absl::StatusOr<Device> created = hub.store().EnrollDevice(HashSecret(token), device, call.now);
  if (!created.ok()) {
    const absl::Status& s = created.status();
    if (absl::IsNotFound(s))
      return call.Fail(http::Status::unauthorized, "unknown bootstrap token");
    if (absl::IsFailedPrecondition(s)) return call.Fail(http::Status::unauthorized, MessageOf(s));
    if (absl::IsAlreadyExists(s)) {
      return call.Fail(http::Status::conflict,
                       StrCat("device id '", device.id,
                              "' is taken: decommission the old device or choose another id"));
    }
    return call.Fail(s);
  }
  call.Reply(http::Status::created,
             {{"device_id", created->id},
              {"token", secret},
              {"poll_interval_s", hub.hub_options().device_poll_interval.count()}});
}

void Desired(HubContext& hub, Call& call) {
  int64_t wait_s = 0;
  std::string wait_text = call.Query("wait", "0");
  if (std::from_chars(wait_text.data(), wait_text.data() + wait_text.size(), wait_s).ec !=
          std::errc() ||
      wait_s < 0) {
    return call.Fail(http::Status::bad_request, "query 'wait': seconds, a whole number >= 0");
  }
  wait_s = std::min<int64_t>(wait_s, hub.hub_options().max_long_poll.count());
  absl::Status contact = hub.store().RecordDeviceContact(
      call.device->id, {.seen_at = call.now, .clock_offset_ms = ClockOffset(call)});
  if (!contact.ok()) return call.Fail(contact);
  absl::StatusOr<DesiredDocument> doc = BuildDesired(hub, call.device->id);
  if (!doc.ok()) return call.Fail(doc.status());
  std::string_view if_none_match = HeaderOf(call.request, bhttp::field::if_none_match);
  if (if_none_match != doc->etag) return SendDesired(call, *doc);
  if (wait_s == 0) return SendNotModified(call, *doc);
  hub.ParkPoll(std::move(call), doc->etag, std::chrono::seconds(wait_s));
}

std::optional<RolloutDeviceState> RolloutStateOf(std::string_view agent_state) {
  if (agent_state == "committed") return RolloutDeviceState::kCommitted;
  if (agent_state == "rolled_back") return RolloutDeviceState::kRolledBack;
  if (agent_state == "downloading" || agent_state == "verifying" || agent_state == "unpacking" ||
      agent_state == "starting" || agent_state == "health_check" || agent_state == "soaking" ||
      agent_state == "committing" || agent_state == "rolling_back") {
    return RolloutDeviceState::kInstalling;
  }
  return std::nullopt;
}

std::string ReleaseOf(const json& state, const char* key) {
  if (!state.contains(key) || !state[key].is_object()) return "";
  return state[key].value("release", "");
}

void Status(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  const json state = body->value("state", json::object());
  DeviceUpdateStatus status;
  if (state.is_object()) {
    status.current_release = ReleaseOf(state, "committed");
    status.previous_release = ReleaseOf(state, "previous");
    status.update_state = state.value("state", "");
    if (state.contains("update") && state["update"].is_object()) {
      status.update_reason = state["update"].value("reason", "");
    }
  }
  // The active rollouts this device takes part in, for progress.
  std::vector<Rollout> rollouts;
  absl::StatusOr<std::vector<RolloutDevice>> memberships =
      hub.store().ListDeviceRollouts(call.device->id);
  if (!memberships.ok()) return call.Fail(memberships.status());
  for (const RolloutDevice& m : *memberships) {
    absl::StatusOr<Rollout> rollout = hub.store().GetRollout(m.rollout_id);
    if (rollout.ok() && IsActive(rollout->state)) rollouts.push_back(*rollout);
  }
  json events = body->value("events", json::array());
  if (!events.is_array()) return call.Fail(http::Status::bad_request, "field 'events': an array");
  int64_t acknowledged = 0;
  int duplicates = 0;
  const std::optional<int64_t> offset = MeasuredClockOffset(call);
  for (const json& e : events) {
    if (!e.is_object()) return call.Fail(http::Status::bad_request, "events[]: objects");
    DeviceReport report;
    report.event.device_id = call.device->id;
    report.event.seq = e.value("seq", int64_t{0});
    if (report.event.seq < 1) {
      return call.Fail(http::Status::bad_request, "events[].seq: a number >= 1");
    }
    report.event.state = e.value("state", "");
    report.event.release = e.value("release", "");
    report.event.reason = e.value("reason", "");
    // Both clocks: what the device said, and when that was on the hub's
    // clock (corrected by the offset measured on this exchange; an event
    // sent from the offline backlog happened before it arrived).
    const int64_t device_ms =
        e.contains("time_ms") ? e.value("time_ms", int64_t{0}) : e.value("time", int64_t{0}) * 1000;
    report.event.device_time = device_ms;
    report.event.hub_time = device_ms > 0 && offset
                                ? std::min<int64_t>(call.now, device_ms - *offset)
                                : call.now;  // without the device's clock: arrival
    report.status = status;
    std::optional<RolloutDeviceState> progress = RolloutStateOf(report.event.state);
    for (const Rollout& r : rollouts) {
      if (progress && r.release_id == report.event.release) {
        report.rollout = DeviceReport::RolloutProgress{r.id, *progress};
        break;
      }
    }
    absl::StatusOr<InsertResult> result = hub.store().RecordDeviceReport(report);
    if (!result.ok()) return call.Fail(result.status());
    if (*result == InsertResult::kDuplicate) ++duplicates;
    acknowledged = std::max(acknowledged, report.event.seq);
  }
  absl::Status contact = hub.store().RecordDeviceContact(
      call.device->id, {.seen_at = call.now, .clock_offset_ms = ClockOffset(call)});
  if (!contact.ok()) return call.Fail(contact);
  call.Reply(http::Status::ok, {{"acknowledged_seq", acknowledged}, {"duplicates", duplicates}});
}

// The device's facts with what a heartbeat says runs on it (runtime and
// ONNX Runtime versions, model versions loaded), when that changed them;
// nullopt otherwise. A heartbeat from a device whose runtime is down leaves
// the last known versions alone.
std::optional<std::string> RuntimeInventory(const std::string& facts_json,
                                            const TelemetryBatch& batch) {
  std::optional<bool> up;
  json models = json::object();
  json runtime;
  for (const TelemetrySample& s : batch.samples) {
    if (s.metric == "runtime_up") up = s.value > 0;
    if (s.metric != "model_loaded" && s.metric != "runtime_info") continue;
    json labels = json::parse(s.labels_json, nullptr, false);
    if (!labels.is_object()) continue;
    if (s.metric == "model_loaded" && labels.value("model", "") != "") {
      models[labels.value("model", "")] = labels.value("version", "");
    } else if (s.metric == "runtime_info") {
      runtime = labels;
    }
  }
  if (!up.value_or(false)) return std::nullopt;
  json facts = json::parse(facts_json, nullptr, false);
  if (!facts.is_object()) facts = json::object();
  json updated = facts;
  updated["model_versions"] = models;
  if (runtime.is_object()) {
    updated["runtime_version"] = runtime.value("version", "");
    updated["onnxruntime_version"] = runtime.value("onnxruntime", "");
  }
  if (updated == facts) return std::nullopt;
  return updated.dump();
}

void Telemetry(HubContext& hub, Call& call) {
  std::optional<json> body = call.JsonBody();
  if (!body) return;
  TelemetryBatch batch;
  batch.device_id = call.device->id;
  batch.batch_id = body->value("batch_id", "");
  batch.received_at = call.now;
  if (batch.batch_id.empty())
    return call.Fail(http::Status::bad_request, "field 'batch_id' is required");
  // Samples share the batch's time unless they carry their own. On the
  // hub's clock they are corrected by the offset measured on this upload
  // (a batch from the offline backlog was taken long before it arrived);
  // without the device's clock, arrival is all the hub knows.
  const std::optional<int64_t> offset = MeasuredClockOffset(call);
  const int64_t batch_time = body->value("time_ms", call.now);
  json samples = body->value("samples", json::array());
  if (!samples.is_array()) return call.Fail(http::Status::bad_request, "field 'samples': an array");
  batch.release_id = call.device->update.current_release;
  std::vector<std::string> models;
  for (const json& s : samples) {
    if (!s.is_object() || !s.contains("metric") || !s["metric"].is_string() ||
        !s.contains("value") || !s["value"].is_number()) {
      return call.Fail(http::Status::bad_request,
                       "samples[]: objects with a string 'metric' and a number 'value'");
    }
    TelemetrySample sample;
    sample.metric = s["metric"].get<std::string>();
    sample.value = s["value"].get<double>();
    sample.device_time = s.value("time_ms", batch_time);
    sample.hub_time = offset && sample.device_time > 0
                          ? std::min<int64_t>(call.now, sample.device_time - *offset)
                          : call.now;
    if (s.contains("labels") && s["labels"].is_object()) {
      const json& labels = s["labels"];
      sample.labels_json = labels.dump();
      // The heartbeat's model_loaded samples say which model versions it
      // describes; every sample of the batch is stamped with them.
      if (sample.metric == "model_loaded" && sample.value > 0 && labels.contains("model") &&
          labels["model"].is_string()) {
        std::string version =
            labels.contains("version")
                ? (labels["version"].is_string() ? labels["version"].get<std::string>()
                                                 : labels["version"].dump())
                : "";
        models.push_back(StrCat(labels["model"].get<std::string>(), "/", version));
      }
    }
    if (s.contains("seq")) {
      if (!s["seq"].is_number_unsigned()) {
        return call.Fail(http::Status::bad_request, "samples[].seq: a non-negative integer");
      }
      sample.seq = static_cast<int64_t>(s["seq"].get<uint64_t>());
    }
    batch.samples.push_back(std::move(sample));
  }
  std::sort(models.begin(), models.end());
  models.erase(std::unique(models.begin(), models.end()), models.end());
  for (const std::string& m : models)
    StrAppend(&batch.model_version, batch.model_version.empty() ? "" : ",", m);
  absl::StatusOr<InsertResult> result = hub.store().InsertTelemetryBatch(batch);
  if (!result.ok()) return call.Fail(result.status());
  absl::Status contact = hub.store().RecordDeviceContact(
      call.device->id, {.seen_at = call.now,
                        .clock_offset_ms = ClockOffset(call),
                        .facts_json = RuntimeInventory(call.device->facts_json, batch)});
  if (!contact.ok()) return call.Fail(contact);
  call.Reply(http::Status::ok, {{"batch_id", batch.batch_id},
                                {"accepted", static_cast<int64_t>(batch.samples.size())},
                                {"duplicate", *result == InsertResult::kDuplicate}});
}

// "bytes=N-" or "bytes=N-M" against `size`; false when unsatisfiable.
bool ParseRange(std::string_view header, uint64_t size, uint64_t* first, uint64_t* last) {
  constexpr std::string_view kBytes = "bytes=";
  if (!header.starts_with(kBytes)) return false;
  header.remove_prefix(kBytes.size());
  size_t dash = header.find('-');
  if (dash == std::string_view::npos || dash == 0) return false;  // suffix ranges unsupported
  if (std::from_chars(header.data(), header.data() + dash, *first).ec != std::errc()) return false;
  std::string_view end = header.substr(dash + 1);
  *last = size == 0 ? 0 : size - 1;
  if (!end.empty()) {
    uint64_t e = 0;
    if (std::from_chars(end.data(), end.data() + end.size(), e).ec != std::errc()) return false;
    *last = std::min(*last, e);
  }
  return *first < size && *first <= *last;
}

void Artifact(HubContext& hub, Call& call) {
  const std::string& sha = call.params["sha256"];
  if (!IsSha256Hex(sha)) {
    return call.Fail(http::Status::bad_request,
                     "artifacts are named by 64 lowercase hex (SHA-256)");
  }
  absl::StatusOr<Blob> blob = hub.blobs().Get(sha);
  if (!blob.ok()) {
    if (absl::IsNotFound(blob.status()))
      return call.Fail(http::Status::not_found, StrCat("no artifact ", sha));
    return call.Fail(blob.status());
  }
  // The response owns its own descriptor: the Blob closes its one here.
  int fd = ::dup(blob->fd());
  if (fd < 0) return call.Fail(http::Status::service_unavailable, "out of file descriptors");
  http::FileBody file(fd, 0, 0);
  const uint64_t size = static_cast<uint64_t>(blob->size());
  const std::string etag = StrCat("\"", sha, "\"");
  http::Response header{http::Status::ok, call.request.version()};
  header.set(bhttp::field::content_type, "application/octet-stream");
  header.set(bhttp::field::etag, etag);
  header.set(bhttp::field::accept_ranges, "bytes");
  header.set(bhttp::field::cache_control, "private, immutable");
  if (HeaderOf(call.request, bhttp::field::if_none_match) == etag) {
    http::Response not_modified{http::Status::not_modified, call.request.version()};
    not_modified.set(bhttp::field::etag, etag);
    return call.responder.Send(std::move(not_modified));
  }
  std::string_view range = HeaderOf(call.request, bhttp::field::range);
  std::string_view if_range = HeaderOf(call.request, bhttp::field::if_range);
  uint64_t first = 0, last = size == 0 ? 0 : size - 1;
  if (!range.empty() && (if_range.empty() || if_range == etag)) {
    if (!ParseRange(range, size, &first, &last)) {
      http::Response refused{http::Status::range_not_satisfiable, call.request.version()};
      refused.set(bhttp::field::content_range, StrCat("bytes */", size));
      refused.set(bhttp::field::content_type, "application/json");
      refused.body() = R"({"error":"range not satisfiable"})";
      return call.responder.Send(std::move(refused));
    }
    header.result(http::Status::partial_content);
    header.set(bhttp::field::content_range, StrCat("bytes ", first, "-", last, "/", size));
  }
  const uint64_t length = size == 0 ? 0 : last - first + 1;
  file.set_range(first, length);
  call.responder.SendFile(std::move(header), std::move(file));
}

}  // namespace

absl::StatusOr<DesiredDocument> BuildDesired(HubContext& hub, std::string_view device_id) {
  ASSIGN_OR_RETURN(Device device, hub.store().GetDevice(device_id));
  json release = nullptr;
  const std::optional<std::string>& release_id =
      device.pinned_release ? device.pinned_release : device.desired_release;
  if (release_id) {
    ASSIGN_OR_RETURN(Release r, hub.store().GetRelease(*release_id));
    release = {{"name", r.id},
               {"sequence", r.sequence},
               {"sha256", r.bundle_sha256},
               {"size", r.size},
               {"url", StrCat("/api/v1/device/artifacts/", r.bundle_sha256)},
               {"pinned", device.pinned_release.has_value()}};
    // A maintenance window of the active rollout that assigned it.
    if (!device.pinned_release) {
      ASSIGN_OR_RETURN(std::vector<RolloutDevice> memberships,
                       hub.store().ListDeviceRollouts(device.id));
      for (const RolloutDevice& m : memberships) {
        ASSIGN_OR_RETURN(Rollout rollout, hub.store().GetRollout(m.rollout_id));
        if (rollout.release_id != r.id || !IsActive(rollout.state)) continue;
        json plan = json::parse(rollout.waves_json, nullptr, false);
        if (plan.is_object() && plan.contains("maintenance_window") &&
            plan["maintenance_window"].is_object()) {
          release["install_window"] = plan["maintenance_window"];
        }
        break;
      }
    }
  }
  ASSIGN_OR_RETURN(std::vector<ConfigLayer> layers,
                   hub.store().ListConfigLayersFor({device.site, DeviceGroups(device), device.id}));
  ASSIGN_OR_RETURN(EffectiveConfig config, MergeLayers(layers));
  DesiredDocument doc;
  doc.body = {{"device_id", device.id},
              {"generation", device.desired_generation},
              {"release", release},
              {"config", config.value},
              {"poll_interval_s", hub.hub_options().device_poll_interval.count()}};
  doc.etag = StrCat("\"", Sha256::HexOf(doc.body.dump()).substr(0, 32), "\"");
  return doc;
}

void SendDesired(Call& call, const DesiredDocument& doc) {
  http::Response response = http::JsonResponse(call.request, http::Status::ok, doc.body.dump());
  response.set(bhttp::field::etag, doc.etag);
  response.set("X-Outpost-Hub-Time", StrCat(call.now));
  call.responder.Send(std::move(response));
}

void SendNotModified(Call& call, const DesiredDocument& doc) {
  SendNotModifiedNoBody(call, doc.etag);
}

void SendNotModifiedNoBody(Call& call, std::string_view etag) {
  http::Response response{http::Status::not_modified, call.request.version()};
  response.set(bhttp::field::etag, std::string(etag));
  response.set("X-Outpost-Hub-Time", StrCat(call.now));
  call.responder.Send(std::move(response));
}

void RegisterDeviceApi(HubContext& hub, Router& router) {
  constexpr std::string_view kBase = "/api/v1/device";
  auto add = [&](const char* method, std::string_view path, Access access,
                 void (*fn)(HubContext&, Call&)) {
    router.Add(method, StrCat(kBase, path), access, [&hub, fn](Call& call) { fn(hub, call); });
  };
  add("POST", "/enroll", Access::kPublic, &Enroll);
  add("GET", "/desired", Access::kDevice, &Desired);
  add("POST", "/status", Access::kDevice, &Status);
  add("POST", "/telemetry", Access::kDevice, &Telemetry);
  add("GET", "/artifacts/{sha256}", Access::kDevice, &Artifact);
}

}  // namespace outpost::hub
