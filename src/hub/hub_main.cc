// outpost-hub: the fleet control plane (docs/hub.md).
//
//   outpost-hub serve --data DIR [--db URL] [--listen ADDR] [--port N] ...
//   outpost-hub admin create-token --data DIR --name NAME --role ROLE
//   outpost-hub admin trust-key --data DIR KEY.pub
//   outpost-hub admin bootstrap --data DIR --out FILE [--uses N] [--ttl S] ...
//
// Exit codes: 0 success, 1 the command failed (message on stderr), 2 usage.
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "bundle/signing.h"
#include "common/atomic_file.h"
#include "hub/hub.h"
#include "hub/store.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace outpost;

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

int Fail(const absl::Status& status) {
  std::cerr << "outpost-hub: " << status.message() << "\n";
  return 1;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string DbUrl(const std::string& data, const std::string& db) {
  return db.empty() ? StrCat("sqlite://", (fs::path(data) / "hub.db").string()) : db;
}

absl::StatusOr<std::unique_ptr<hub::Store>> OpenStore(const std::string& data,
                                                      const std::string& db) {
  std::error_code ec;
  fs::create_directories(data, ec);
  if (ec) return absl::InvalidArgumentError(StrCat("cannot create ", data, ": ", ec.message()));
  return hub::Store::Open(DbUrl(data, db));
}

int Serve(hub::HubOptions options, const std::string& port_file) {
  absl::StatusOr<std::unique_ptr<hub::Hub>> created = hub::Hub::Create(std::move(options));
  if (!created.ok()) return Fail(created.status());
  hub::Hub& h = **created;
  absl::StatusOr<std::vector<hub::ApiToken>> tokens = h.store().ListApiTokens();
  if (tokens.ok() && tokens->empty()) {
    spdlog::warn(
        "hub: no API token exists yet; create the first admin token with "
        "`outpost-hub admin create-token --data <dir> --name <you> --role admin`");
  }
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  h.Start();
  if (!port_file.empty()) {
    absl::Status written = WriteFileAtomic(port_file, StrCat(h.port(), "\n"));
    if (!written.ok()) return Fail(written);
  }
  std::cout << "outpost-hub serving " << h.url() << std::endl;
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  spdlog::info("hub: stopping");
  h.Stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_logger_mt("outpost-hub"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  CLI::App app{"outpost-hub: the Outpost fleet control plane"};
  app.require_subcommand(1);

  hub::HubOptions options;
  std::string data, db, port_file, listen = "127.0.0.1";
  int port = 7443;
  double poll_interval = 120, rollout_tick = 1, recheck = 5;
  CLI::App* serve = app.add_subcommand("serve", "Run the hub");
  serve->add_option("--data", data, "Data directory (SQLite database, blobs, TLS, keys)")
      ->required();
  serve->add_option("--db", db, "Database URL (default: SQLite in --data; postgres://...)");
  serve->add_option("--listen", listen, "Address to listen on");
  serve->add_option("--port", port, "Port (0: any free port)")->check(CLI::Range(0, 65535));
  serve->add_option("--tls-cert", options.tls_cert_file, "PEM certificate chain (default: own CA)");
  serve->add_option("--tls-key", options.tls_key_file, "PEM private key");
  serve->add_option("--tls-name", options.tls_names,
                    "Extra DNS name or IP for the own certificate");
  serve->add_flag("--insecure-http", options.insecure_http, "Plain HTTP (loopback addresses only)");
  serve->add_option("--public-url", options.public_url, "URL devices reach the hub at");
  std::string web_dir;
  serve->add_option("--web-dir", web_dir,
                    "Dashboard files (default: web/ next to outpost-hub, or ../share/outpost/web)");
  serve->add_option("--port-file", port_file, "Write the listening port here once serving");
  serve->add_option("--device-poll-interval", poll_interval, "Seconds between device polls");
  serve->add_option("--rollout-tick", rollout_tick, "Seconds between rollout engine passes");
  serve->add_option("--long-poll-recheck", recheck,
                    "Seconds between re-checks of parked polls (changes by other replicas)");

  std::string alert_config, webhook_format = "json";
  double alert_interval = 30, raw_retention_h = 48, rollup_5m_days = 14, rollup_1h_days = 90;
  serve->add_option("--alert-config", alert_config,
                    "YAML file of alert thresholds (docs/alerts.md; default: built-in)");
  serve->add_option("--alert-interval", alert_interval, "Seconds between alert evaluations")
      ->check(CLI::Range(1.0, 3600.0));
  serve->add_option("--alert-webhook", options.alert_webhook.url,
                    "POST alert changes here (http:// or https://)");
  serve->add_option("--alert-webhook-format", webhook_format, "json or slack")
      ->check(CLI::IsMember({"json", "slack"}));
  serve->add_option("--alert-webhook-ca", options.alert_webhook.ca_file,
                    "PEM CAs to trust for the webhook instead of the system store");
  serve->add_option("--telemetry-raw-hours", raw_retention_h, "Hours raw telemetry is kept")
      ->check(CLI::Range(1.0, 24.0 * 366));
  serve->add_option("--telemetry-5m-days", rollup_5m_days, "Days 5-minute rollups are kept")
      ->check(CLI::Range(1.0, 3660.0));
  serve->add_option("--telemetry-1h-days", rollup_1h_days, "Days 1-hour rollups are kept")
      ->check(CLI::Range(1.0, 36600.0));

  std::string name, role;
  bool json_output = false;
  CLI::App* admin =
      app.add_subcommand("admin", "Offline administration (runs against --data/--db)");
  admin->require_subcommand(1);
  CLI::App* create_token = admin->add_subcommand("create-token", "Create an API token");
  create_token->add_option("--data", data, "Data directory")->required();
  create_token->add_option("--db", db, "Database URL");
  create_token->add_option("--name", name, "Who or what the token is for")->required();
  create_token->add_option("--role", role, "admin, operator or viewer")->required();
  create_token->add_flag("--json", json_output, "Print JSON");

  std::string key_file;
  CLI::App* trust_key = admin->add_subcommand("trust-key", "Trust a release signing key (*.pub)");
  trust_key->add_option("--data", data, "Data directory")->required();
  trust_key->add_option("key", key_file, "Public key file from `outpost keys generate`")
      ->required();

  std::string out_file, site, device_id, hub_url;
  std::vector<std::string> labels;
  int64_t uses = 1;
  double ttl = 24 * 3600;
  CLI::App* bootstrap = admin->add_subcommand("bootstrap", "Write a device bootstrap file");
  bootstrap->add_option("--data", data, "Data directory")->required();
  bootstrap->add_option("--db", db, "Database URL");
  bootstrap->add_option("--out", out_file, "Bootstrap file to write (0600)")->required();
  bootstrap->add_option("--hub-url", hub_url, "URL devices reach the hub at")->required();
  bootstrap->add_option("--uses", uses, "Devices that may enrol with it")
      ->check(CLI::PositiveNumber);
  bootstrap->add_option("--ttl", ttl, "Seconds it stays valid")->check(CLI::PositiveNumber);
  bootstrap->add_option("--site", site, "Site of the devices enrolled with it");
  bootstrap->add_option("--label", labels, "key=value label for the devices (repeatable)");
  bootstrap->add_option("--device-id", device_id, "Device id to request (single-use tokens)");

  CLI11_PARSE(app, argc, argv);

  if (serve->parsed()) {
    options.data_dir = data;
    options.db_url = db;
    options.address = listen;
    options.port = static_cast<uint16_t>(port);
    options.web_dir = web_dir;
    options.device_poll_interval = std::chrono::seconds(static_cast<int64_t>(poll_interval));
    options.rollout_tick = std::chrono::milliseconds(static_cast<int64_t>(rollout_tick * 1000));
    options.long_poll_recheck = std::chrono::milliseconds(static_cast<int64_t>(recheck * 1000));
    options.alert_interval = std::chrono::milliseconds(static_cast<int64_t>(alert_interval * 1000));
    options.alert_webhook.format =
        webhook_format == "slack" ? hub::WebhookFormat::kSlack : hub::WebhookFormat::kJson;
    options.telemetry_retention.raw = std::chrono::hours(static_cast<int64_t>(raw_retention_h));
    options.telemetry_retention.rollup_5m =
        std::chrono::hours(static_cast<int64_t>(rollup_5m_days * 24));
    options.telemetry_retention.rollup_1h =
        std::chrono::hours(static_cast<int64_t>(rollup_1h_days * 24));
    if (!alert_config.empty()) {
      absl::StatusOr<std::string> text = ReadFile(alert_config);
      if (!text.ok()) return Fail(text.status());
      absl::StatusOr<hub::AlertRules> rules = hub::ParseAlertRules(*text, alert_config);
      if (!rules.ok()) return Fail(rules.status());
      options.alert_rules = *std::move(rules);
    }
    return Serve(std::move(options), port_file);
  }
  if (create_token->parsed()) {
    absl::StatusOr<hub::Role> parsed_role = hub::ParseRole(role);
    if (!parsed_role.ok()) return Fail(parsed_role.status());
    absl::StatusOr<std::unique_ptr<hub::Store>> store = OpenStore(data, db);
    if (!store.ok()) return Fail(store.status());
    std::string secret = hub::NewSecret("oat_");
    absl::StatusOr<hub::ApiToken> token =
        (*store)->CreateApiToken(name, *parsed_role, hub::HashSecret(secret), NowMs());
    if (!token.ok()) return Fail(token.status());
    if (json_output) {
      std::cout << json{{"id", token->id}, {"name", name}, {"role", role}, {"token", secret}}.dump()
                << "\n";
    } else {
      std::cout << secret << "\n";
      std::cerr << "API token '" << name << "' (" << role
                << ") created; it is shown only now: store it in a secret manager\n";
    }
    return 0;
  }
  if (trust_key->parsed()) {
    absl::StatusOr<std::string> text = ReadFile(key_file);
    if (!text.ok()) return Fail(text.status());
    absl::StatusOr<bundle::PublicKey> key = bundle::ParsePublicKey(*text, key_file);
    if (!key.ok()) return Fail(key.status());
    fs::path dir = fs::path(data) / "trusted-keys";
    std::error_code ec;
    fs::create_directories(dir, ec);
    absl::Status written = WriteFileAtomic(dir / StrCat(key->key_id, ".pub"), *text, 0644);
    if (!written.ok()) return Fail(written);
    std::cout << "trusting key " << key->key_id << " for release pushes\n";
    return 0;
  }
  if (bootstrap->parsed()) {
    absl::StatusOr<std::unique_ptr<hub::Store>> store = OpenStore(data, db);
    if (!store.ok()) return Fail(store.status());
    hub::BootstrapToken token;
    token.uses_left = uses;
    token.expires_at = NowMs() + static_cast<int64_t>(ttl * 1000);
    token.site = site;
    for (const std::string& label : labels) {
      size_t eq = label.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::cerr << "outpost-hub: --label " << label << ": expected key=value\n";
        return 2;
      }
      token.labels[label.substr(0, eq)] = label.substr(eq + 1);
    }
    std::string secret = hub::NewSecret("obt_");
    token.token_hash = hub::HashSecret(secret);
    absl::StatusOr<hub::BootstrapToken> created = (*store)->CreateBootstrapToken(token, NowMs());
    if (!created.ok()) return Fail(created.status());
    json file = {{"hub_url", hub_url}, {"token", secret}};
    absl::StatusOr<std::string> ca = ReadFile(fs::path(data) / "tls" / "ca.pem");
    if (ca.ok()) file["ca_pem"] = *ca;
    if (!device_id.empty()) file["device_id"] = device_id;
    absl::Status written = WriteFileAtomic(out_file, file.dump(2) + "\n", 0600);
    if (!written.ok()) return Fail(written);
    std::cerr << "bootstrap file " << out_file << " written: " << uses << " use(s), valid "
              << static_cast<int64_t>(ttl) << " s\n";
    return 0;
  }
  return 2;
}
