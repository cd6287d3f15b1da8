#include "hub/router.h"

#include <zstd.h>

#include <cctype>

namespace outpost::hub {
namespace {

std::vector<std::string_view> Segments(std::string_view path) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > start) out.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string key = PercentDecode(pair.substr(0, eq));
    std::string value = eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1));
    out[std::move(key)] = std::move(value);
  }
  return out;
}

void Router::Add(std::string method, std::string pattern, Access access, RouteHandler handler) {
  routes_.push_back({std::move(method), std::move(pattern), access, std::move(handler)});
}

const Route* Router::Match(std::string_view method, std::string_view path,
                           std::map<std::string, std::string>* params, Miss* miss) const {
  std::vector<std::string_view> got = Segments(path);
  *miss = Miss::kNoPath;
  for (const Route& route : routes_) {
    std::vector<std::string_view> want = Segments(route.pattern);
    if (want.size() != got.size()) continue;
    std::map<std::string, std::string> found;
    bool match = true;
    for (size_t i = 0; i < want.size() && match; ++i) {
      if (want[i].size() > 2 && want[i].front() == '{' && want[i].back() == '}') {
        found[std::string(want[i].substr(1, want[i].size() - 2))] = PercentDecode(got[i]);
      } else {
        match = want[i] == got[i];
      }
    }
    if (!match) continue;
    if (route.method != method) {
      *miss = Miss::kNoMethod;
      continue;
    }
    *params = std::move(found);
    *miss = Miss::kNone;
    return &route;
  }
  return nullptr;
}

void Call::Reply(http::Status status, const nlohmann::json& body) {
  http::Response response = http::JsonResponse(
      request, status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  // Devices measure their clock offset from it.
  response.set("X-Outpost-Hub-Time", StrCat(now));
  responder.Send(std::move(response));
}

void Call::Fail(const absl::Status& status) {
  Fail(static_cast<http::Status>(HttpStatusFor(status)), MessageOf(status));
}

void Call::Fail(http::Status status, std::string_view message) {
  http::Response response = http::ErrorResponse(request, status, message);
  response.set("X-Outpost-Hub-Time", StrCat(now));
  responder.Send(std::move(response));
}

std::optional<nlohmann::json> Call::JsonBody() {
  nlohmann::json body = nlohmann::json::parse(request.body(), nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    Fail(http::Status::bad_request, "the request body must be a JSON object");
    return std::nullopt;
  }
  return body;
}

std::string Call::Query(const std::string& name, std::string fallback) const {
  auto it = query.find(name);
  return it == query.end() ? std::move(fallback) : it->second;
}

}  // namespace outpost::hub
