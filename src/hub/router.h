// The hub's route table: method + path pattern ("/api/v1/admin/devices/{id}")
// -> who may call it -> handler. The table is data, so the OpenAPI test can
// check that every registered route is documented (docs/openapi.yaml).
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/http_server.h"
#include "common/status.h"
#include "hub/store.h"

namespace outpost::hub {

// Who may call a route. Admin roles are ordered: an admin may do what an
// operator may, an operator what a viewer may.
enum class Access { kPublic, kDevice, kViewer, kOperator, kAdmin };

// One request being handled (on a hub worker thread).
struct Call {
  http::Request request;
  http::Responder responder;
  std::map<std::string, std::string> params;  // from the pattern's {names}
  std::map<std::string, std::string> query;   // decoded query string
  std::optional<ApiToken> token;              // set for admin routes
  std::optional<Device> device;               // set for device routes
  TimeMs now = 0;

  // Answers with a JSON body.
  void Reply(http::Status status, const nlohmann::json& body);
  // {"error": message} with the HTTP status HttpStatusFor(status) maps to.
  void Fail(const absl::Status& status);
  void Fail(http::Status status, std::string_view message);
  // The body parsed as a JSON object; on failure answers 400 and returns
  // nullopt.
  std::optional<nlohmann::json> JsonBody();
  std::string Query(const std::string& name, std::string fallback = "") const;
};

using RouteHandler = std::function<void(Call&)>;

struct Route {
  std::string method;   // "GET", "POST", ...
  std::string pattern;  // "/api/v1/admin/devices/{id}"
  Access access = Access::kPublic;
  RouteHandler handler;
};

class Router {
 public:
  void Add(std::string method, std::string pattern, Access access, RouteHandler handler);

  enum class Miss { kNone, kNoPath, kNoMethod };
  // The route for `method` and `path` (no query string), filling `params`;
  // nullptr with `miss` set to kNoPath (404) or kNoMethod (405).
  const Route* Match(std::string_view method, std::string_view path,
                     std::map<std::string, std::string>* params, Miss* miss) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

inline std::string_view SV(boost::beast::string_view v) { return {v.data(), v.size()}; }

// A request header's value ("" when absent).
inline std::string_view HeaderOf(const http::Request& request, boost::beast::http::field field) {
  auto value = request[field];
  return {value.data(), value.size()};
}
inline std::string_view HeaderOf(const http::Request& request, std::string_view name) {
  auto value = request[boost::beast::string_view(name.data(), name.size())];
  return {value.data(), value.size()};
}

// Splits "a=1&b=x%20y" into decoded pairs (later duplicates win).
std::map<std::string, std::string> ParseQuery(std::string_view query);
std::string PercentDecode(std::string_view s);

}  // namespace outpost::hub
