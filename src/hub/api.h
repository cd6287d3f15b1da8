// Internals shared by the hub's API handlers and its rollout engine.
#pragma once

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "hub/blob_store.h"
#include "hub/hub.h"
#include "hub/rollout_engine.h"
#include "hub/router.h"
#include "hub/store.h"

namespace outpost::hub {

// What handlers see of the hub.
class HubContext {
 public:
  virtual ~HubContext() = default;
  virtual Store& store() = 0;
  virtual BlobStore& blobs() = 0;
  virtual const HubOptions& hub_options() const = 0;
  virtual std::string hub_url() const = 0;
  // The CA devices pin, PEM ("" when the hub uses an operator's certificate).
  virtual std::string ca_pem() const = 0;
  virtual TimeMs Now() const = 0;
  virtual RolloutEngine& rollouts() = 0;
  virtual AlertEngine& alerts() = 0;
  // Wakes the device's parked desired-state polls (its desired state may
  // have changed).
  virtual void DesiredChanged(std::string_view device_id) = 0;
  virtual void AllDesiredChanged() = 0;
  // Holds a desired-state poll until the device's desired state changes or
  // `wait` passes (then 304).
  virtual void ParkPoll(Call&& call, std::string etag, std::chrono::seconds wait) = 0;
};

// A device's desired state as the device API answers it.
struct DesiredDocument {
  nlohmann::json body;
  std::string etag;  // quoted strong ETag of `body`
};
absl::StatusOr<DesiredDocument> BuildDesired(HubContext& hub, std::string_view device_id);
void SendDesired(Call& call, const DesiredDocument& doc);
void SendNotModified(Call& call, const DesiredDocument& doc);
void SendNotModifiedNoBody(Call& call, std::string_view etag);

void RegisterDeviceApi(HubContext& hub, Router& router);
void RegisterAdminApi(HubContext& hub, Router& router);
void RegisterMetricsApi(HubContext& hub, Router& router);
// GET /telemetry and /alerts (api_observe.cc).
void RegisterObservabilityApi(HubContext& hub, Router& router);
// The alert and telemetry families of GET /metrics (bounded cardinality:
// by rule and severity, never by device).
absl::Status AppendAlertMetrics(HubContext& hub, TimeMs now, std::string* out);

// JSON views used by several routes.
nlohmann::json DeviceJson(const Device& device, TimeMs now);
nlohmann::json ReleaseJson(const Release& release);
nlohmann::json RolloutJson(const Rollout& rollout);

// A device counts as online when it was seen within this window: the
// longest long poll the hub holds (HubOptions::max_long_poll, 300 s) plus a
// minute, so a connected device idling on its poll never looks offline.
inline constexpr TimeMs kOnlineWindowMs = 6 * 60 * 1000;

}  // namespace outpost::hub
