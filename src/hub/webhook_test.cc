// The alert webhook against a real loopback HTTP receiver that fails
// first and then accepts: retries with backoff, JSON and Slack payloads,
// giving up on a refusal or after the last attempt.
#include "hub/webhook.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "common/http_server.h"

namespace outpost::hub {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Answers the first `failures` requests with `failure_status`, the rest 200,
// and keeps every body it received.
class Receiver {
 public:
  Receiver(int failures, http::Status failure_status) {
    http::ServerOptions options;
    options.port = 0;
    options.allow_insecure = true;
    auto server = http::Server::Create(
        options,
        [this, failures, failure_status](http::Request&& request, http::Responder responder) {
          int n = 0;
          {
            std::lock_guard lock(mu_);
            bodies_.push_back(request.body());
            n = static_cast<int>(bodies_.size());
          }
          http::Status status = n <= failures ? failure_status : http::Status::ok;
          responder.Send(http::JsonResponse(request, status, R"({"ok":true})"));
        });
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    server_->Start();
  }
  ~Receiver() { server_->Stop(); }

  std::string url() const { return StrCat("http://127.0.0.1:", server_->port(), "/hook"); }
  std::vector<std::string> bodies() {
    std::lock_guard lock(mu_);
    return bodies_;
  }

 private:
  std::unique_ptr<http::Server> server_;
  std::mutex mu_;
  std::vector<std::string> bodies_;
};

Alert Firing(const std::string& name, const std::string& device) {
  Alert a;
  a.id = 7;
  a.name = name;
  a.device_id = device;
  a.severity = "critical";
  a.site = "store-1";
  a.value = 42;
  a.threshold = 10;
  a.summary = StrCat(device, " has not contacted the hub for 42 min");
  a.started_at = 1000;
  return a;
}

// Waits until `done` or 10 s.
template <typename Fn>
bool Eventually(Fn done) {
  for (int i = 0; i < 1000 && !done(); ++i) std::this_thread::sleep_for(10ms);
  return done();
}

WebhookOptions Options(const std::string& url) {
  WebhookOptions o;
  o.url = url;
  o.hub_url = "https://hub.example:7443";
  o.initial_backoff = 20ms;
  o.max_backoff = 80ms;
  o.max_attempts = 5;
  return o;
}

TEST(WebhookTest, RetriesWithBackoffUntilTheReceiverAccepts) {
  Receiver receiver(/*failures=*/3, http::Status::service_unavailable);
  auto notifier = WebhookNotifier::Create(Options(receiver.url()));
  ASSERT_TRUE(notifier.ok()) << notifier.status();
  (*notifier)->Start();
  const auto start = std::chrono::steady_clock::now();
  (*notifier)->Enqueue({Firing("device_offline", "cam-1")});
  ASSERT_TRUE(Eventually([&] { return (*notifier)->counters().delivered == 1; }));
  // Backoff 20 + 40 + 80 ms before the fourth attempt.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 140ms);
  WebhookNotifier::Counters c = (*notifier)->counters();
  EXPECT_EQ(c.retried, 3);
  EXPECT_EQ(c.failed, 0);
  std::vector<std::string> bodies = receiver.bodies();
  ASSERT_EQ(bodies.size(), 4u);
  EXPECT_EQ(bodies[0], bodies[3]);  // the same payload every time
  json payload = json::parse(bodies[3]);
  EXPECT_EQ(payload["source"], "outpost-hub");
  EXPECT_EQ(payload["hub"], "https://hub.example:7443");
  ASSERT_EQ(payload["alerts"].size(), 1u);
  EXPECT_EQ(payload["alerts"][0]["name"], "device_offline");
  EXPECT_EQ(payload["alerts"][0]["state"], "firing");
  EXPECT_EQ(payload["alerts"][0]["device_id"], "cam-1");
  EXPECT_EQ(payload["alerts"][0]["value"], 42);
}

TEST(WebhookTest, SlackPayloadIsOneLinePerAlert) {
  Receiver receiver(0, http::Status::ok);
  WebhookOptions options = Options(receiver.url());
  options.format = WebhookFormat::kSlack;
  auto notifier = WebhookNotifier::Create(options);
  ASSERT_TRUE(notifier.ok());
  (*notifier)->Start();
  Alert resolved = Firing("temperature_high", "cam-2");
  resolved.state = AlertState::kResolved;
  resolved.severity = "warning";
  (*notifier)->Enqueue({Firing("device_offline", "cam-1"), resolved});
  ASSERT_TRUE(Eventually([&] { return (*notifier)->counters().delivered == 1; }));
  json payload = json::parse(receiver.bodies().at(0));
  ASSERT_TRUE(payload.contains("text"));
  std::string text = payload["text"];
  EXPECT_NE(text.find("[FIRING] device_offline critical cam-1 (site store-1)"), std::string::npos)
      << text;
  EXPECT_NE(text.find("[RESOLVED] temperature_high warning cam-2"), std::string::npos) << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2);
}

TEST(WebhookTest, GivesUpOnARefusalAndAfterTheLastAttempt) {
  Receiver refusing(/*failures=*/100, http::Status::bad_request);
  auto notifier = WebhookNotifier::Create(Options(refusing.url()));
  ASSERT_TRUE(notifier.ok());
  (*notifier)->Start();
  (*notifier)->Enqueue({Firing("device_offline", "cam-1")});
  ASSERT_TRUE(Eventually([&] { return (*notifier)->counters().failed == 1; }));
  EXPECT_EQ(refusing.bodies().size(), 1u);  // a 400 is not retried
  EXPECT_EQ((*notifier)->counters().retried, 0);

  Receiver down(/*failures=*/100, http::Status::bad_gateway);
  auto persistent = WebhookNotifier::Create(Options(down.url()));
  ASSERT_TRUE(persistent.ok());
  (*persistent)->Start();
  (*persistent)->Enqueue({Firing("device_offline", "cam-1")});
  ASSERT_TRUE(Eventually([&] { return (*persistent)->counters().failed == 1; }));
  EXPECT_EQ(down.bodies().size(), 5u);
  EXPECT_EQ((*persistent)->counters().retried, 4);
  // The next batch still goes out (and fails on its own).
  (*persistent)->Enqueue({Firing("device_offline", "cam-2")});
  ASSERT_TRUE(Eventually([&] { return (*persistent)->counters().failed == 2; }));
}

TEST(WebhookTest, AnUnreachableReceiverIsRetriedAndStopIsPrompt) {
  // A port nothing listens on: connection refused on every attempt.
  std::string url;
  {
    Receiver gone(0, http::Status::ok);
    url = gone.url();
  }
  WebhookOptions options = Options(url);
  options.initial_backoff = 10s;
  auto notifier = WebhookNotifier::Create(options);
  ASSERT_TRUE(notifier.ok());
  (*notifier)->Start();
  (*notifier)->Enqueue({Firing("device_offline", "cam-1")});
  ASSERT_TRUE(Eventually([&] { return (*notifier)->counters().retried == 1; }));
  const auto start = std::chrono::steady_clock::now();
  (*notifier)->Stop();  // does not sit out the 10 s backoff
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_EQ((*notifier)->counters().delivered, 0);
}

TEST(WebhookTest, BadOptionsAreRefused) {
  EXPECT_EQ(WebhookNotifier::Create(Options("ftp://x")).status().code(),
            absl::StatusCode::kInvalidArgument);
  WebhookOptions zero = Options("http://127.0.0.1:1/");
  zero.max_attempts = 0;
  EXPECT_EQ(WebhookNotifier::Create(zero).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseWebhookFormat("slack"), WebhookFormat::kSlack);
  EXPECT_EQ(ParseWebhookFormat("teams").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace outpost::hub
