// outpost token create | list | revoke and outpost bootstrap create | list |
// revoke (docs/cli.md "Tokens and bootstrap files").
#include <CLI/CLI.hpp>
#include <filesystem>

#include "cli/format.h"
#include "cli/hub_command_support.h"
#include "common/atomic_file.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---- admin API tokens

struct TokenArgs {
  std::string name;
  std::string role;
};

absl::Status CreateToken(const TokenArgs& a, Context& c) {
  ASSIGN_OR_RETURN(json token, c.api.Post("/tokens", {{"name", a.name}, {"role", a.role}}));
  if (c.json_output) {
    c.PrintJson(token);
  } else {
    c.out << "created token " << Int(token, "id") << " '" << Text(token, "name") << "' ("
          << Text(token, "role") << "); its secret, shown only this once:\n"
          << Text(token, "token") << "\n";
  }
  return absl::OkStatus();
}

absl::Status ListTokens(Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get("/tokens"));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"id", "name", "role", "created", "revoked"});
  for (const json& t : Array(answer, "tokens")) {
    table.AddRow({Text(t, "id"), Text(t, "name"), Text(t, "role"), FormatTime(Int(t, "created_at")),
                  t.value("revoked", false) ? "yes" : "no"});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

// DELETE of an API token or a bootstrap token.
absl::Status RevokeById(std::string_view what, std::string_view route, int64_t id, Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Delete(StrCat(route, "/", id)));
  if (c.json_output) {
    c.PrintJson(answer);
  } else {
    c.out << what << " " << id << " revoked\n";
  }
  return absl::OkStatus();
}

// ---- bootstrap tokens

struct BootstrapArgs {
  int64_t uses = 1;
  int64_t ttl_s = 24 * 3600;
  std::string site;
  std::vector<std::string> labels;
  std::string device_id;
  std::string out;
  bool force = false;
};

absl::Status CreateBootstrap(const BootstrapArgs& a, Context& c) {
  ASSIGN_OR_RETURN(json labels, ParseLabels(a.labels, "--label"));
  // Checked before the hub makes a token that could not be written.
  fs::path out(a.out);
  std::error_code ec;
  if (!a.force && fs::exists(out, ec)) {
    return absl::AlreadyExistsError(StrCat(
        a.out, " already exists (it may hold another device's token); pass --force to replace it"));
  }
  fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        StrCat("cannot write ", a.out, ": directory ", dir.string(), " does not exist"));
  }
  json body = {{"uses", a.uses}, {"ttl_s", a.ttl_s}, {"site", a.site}, {"labels", labels}};
  if (!a.device_id.empty()) body["device_id"] = a.device_id;
  ASSIGN_OR_RETURN(json created, c.api.Post("/bootstrap-tokens", body));
  const json& bootstrap = Object(created, "bootstrap");
  if (bootstrap.empty()) {
    return absl::InternalError("the hub's answer has no \"bootstrap\" object");
  }
  // It holds a secret: mode 0600 from the first byte, and never half-written.
  RETURN_IF_ERROR(WriteFileAtomic(out, bootstrap.dump(2) + "\n", 0600));
  json summary = {{"id", Int(created, "id")},
                  {"uses", Int(created, "uses")},
                  {"expires_at", Int(created, "expires_at")},
                  {"site", a.site},
                  {"labels", labels},
                  {"out", a.out}};
  if (!a.device_id.empty()) summary["device_id"] = a.device_id;
  if (c.json_output) {
    c.PrintJson(summary);  // the secret stays in the file
    return absl::OkStatus();
  }
  c.out << "bootstrap token " << Int(created, "id") << ": " << Int(created, "uses")
        << " use(s), expires " << FormatTime(Int(created, "expires_at"));
  if (!a.site.empty()) c.out << ", site " << a.site;
  if (!labels.empty()) c.out << ", labels " << FormatLabels(labels);
  c.out << "\nwrote " << a.out << " (mode 0600; it holds the token: start outpost-agent with it)\n";
  return absl::OkStatus();
}

absl::Status ListBootstrap(Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Get("/bootstrap-tokens"));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"id", "uses left", "expires", "site", "labels", "created"});
  for (const json& t : Array(answer, "bootstrap_tokens")) {
    std::string expires = FormatTime(Int(t, "expires_at"));
    if (t.value("expired", false)) StrAppend(&expires, " (expired)");
    table.AddRow({Text(t, "id"), Text(t, "uses_left"), expires, OrDash(Text(t, "site")),
                  FormatLabels(Object(t, "labels")), FormatTime(Int(t, "created_at"))});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

}  // namespace

void AddCredentialCommands(CLI::App& app, CommandRegistry& r) {
  CLI::App* tokens =
      r.AddGroup(app, "token", "admin API tokens (admin role): create, list, revoke");
  TokenArgs& token_args = r.New<TokenArgs>();
  CLI::App* create_token = r.Add(tokens, "create", "a new token; its secret is shown once",
                                 [&token_args](Context& c) { return CreateToken(token_args, c); });
  create_token->add_option("--name", token_args.name, "who or what uses it")->required();
  create_token
      ->add_option("--role", token_args.role,
                   "viewer reads, operator changes the fleet, admin manages credentials")
      ->required()
      ->check(CLI::IsMember({"viewer", "operator", "admin"}));
  r.Add(tokens, "list", "every token, revoked ones too", &ListTokens);
  int64_t& token_id = r.New<int64_t>();
  r.Add(tokens, "revoke", "refuse a token from now on",
        [&token_id](Context& c) { return RevokeById("token", "/tokens", token_id, c); })
      ->add_option("id", token_id, "token id")
      ->required();

  CLI::App* bootstrap = r.AddGroup(app, "bootstrap",
                                   "bootstrap tokens devices enrol with: create (writes the "
                                   "device's bootstrap file), list, revoke");
  BootstrapArgs& a = r.New<BootstrapArgs>();
  CLI::App* create =
      r.Add(bootstrap, "create", "a bootstrap token, written as the file outpost-agent enrols with",
            [&a](Context& c) { return CreateBootstrap(a, c); });
  create->add_option("--uses", a.uses, "how many devices may enrol with it")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  create->add_option("--ttl", a.ttl_s, "seconds until it expires")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  create->add_option("--site", a.site, "site given to the devices that enrol");
  create->add_option("--label", a.labels, "label k=v given to them (repeatable)")
      ->delimiter(',')
      ->allow_extra_args(false);
  create->add_option("--device-id", a.device_id, "the id the device enrols as");
  create->add_option("--out", a.out, "bootstrap file to write (mode 0600)")->required();
  create->add_flag("--force", a.force, "replace an existing --out file");
  r.Add(bootstrap, "list", "bootstrap tokens", &ListBootstrap);
  int64_t& bootstrap_id = r.New<int64_t>();
  r.Add(bootstrap, "revoke", "no more enrolments with it",
        [&bootstrap_id](Context& c) {
          return RevokeById("bootstrap token", "/bootstrap-tokens", bootstrap_id, c);
        })
      ->add_option("id", bootstrap_id, "bootstrap token id")
      ->required();
}

}  // namespace outpost::cli
