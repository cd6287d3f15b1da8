#include "cli/commands.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "bundle/builder.h"
#include "bundle/bundle.h"
#include "bundle/reason.h"
#include "bundle/signing.h"
#include "cli/baseline.h"
#include "cli/hub_api.h"
#include "cli/hub_commands.h"
#include "cli/infer_command.h"
#include "common/atomic_file.h"
#include "common/http_client.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
using bundle::Reason;
using json = nlohmann::json;

struct KeysGenerateArgs {
  std::string out;
  std::string name;
};

struct BuildArgs {
  std::string models;
  std::vector<std::string> configs;
  std::string runtime;
  std::string self_test;
  std::string baseline;
  std::string name;
  uint64_t sequence = 0;
  std::string arch;
  std::string accelerator = "cpu";
  std::string min_agent_version;
  int level = 3;
  std::string sign_key;
  std::string out;
};

struct BaselineArgs {
  std::string from_metrics;
  std::string model;
  std::string version;
  std::string output;
  std::string out;
};

struct SignArgs {
  std::string key;
  std::string in;
  std::string out;
  int level = 3;
};

struct CheckArgs {
  std::string bundle;
  std::string trusted_keys;
  uint64_t floor = 0;
  std::string arch;
  std::vector<std::string> accelerators;
  std::string agent_version;
  uint64_t max_bytes = bundle::Limits().max_unpacked_bytes;
  double max_ratio = bundle::Limits().max_compression_ratio;
  bool json = false;
  std::string out;  // unpack only
};

struct InspectArgs {
  std::string bundle;
  bool json = false;
};

void PrintError(std::ostream& err, const absl::Status& status) {
  Reason reason = bundle::ReasonOf(status);
  if (reason != Reason::kNone) {
    err << "outpost: REFUSED (" << bundle::ReasonName(reason) << "): " << MessageOf(status) << "\n";
  } else {
    err << "outpost: error: " << MessageOf(status) << "\n";
  }
}

int Finish(const absl::Status& status, std::ostream& err) {
  if (!status.ok()) PrintError(err, status);
  return ExitCodeFor(status);
}

int KeysGenerate(const KeysGenerateArgs& args, std::ostream& out, std::ostream& err) {
  absl::StatusOr<bundle::KeyPair> pair = bundle::GenerateKeyPair(args.name);
  if (!pair.ok()) return Finish(pair.status(), err);
  absl::StatusOr<bundle::KeyFiles> files = bundle::WriteKeyPair(*pair, args.out);
  if (!files.ok()) return Finish(files.status(), err);
  // The private key is never printed, only where it is.
  out << "key id:      " << pair->public_key.key_id << "\n"
      << "private key: " << files->private_key.string() << " (mode 0600; keep it secret)\n"
      << "public key:  " << files->public_key.string()
      << " (copy to devices' and verifiers' trusted keys)\n";
  return kExitOk;
}

int BundleBuild(const BuildArgs& args, std::ostream& out, std::ostream& err) {
  bundle::BuildOptions options;
  options.models_dir = args.models;
  for (const auto& config : args.configs) options.config_files.emplace_back(config);
  options.runtime_binary = args.runtime;
  options.self_test_file = args.self_test;
  options.baseline_file = args.baseline;
  options.release = args.name;
  options.sequence = args.sequence;
  options.arch = args.arch;
  options.accelerator = args.accelerator;
  options.min_agent_version = args.min_agent_version;
  options.compression_level = args.level;
  std::optional<bundle::PrivateKey> key;
  if (!args.sign_key.empty()) {
    absl::StatusOr<bundle::PrivateKey> loaded = bundle::LoadPrivateKey(args.sign_key);
    if (!loaded.ok()) return Finish(loaded.status(), err);
    key = std::move(*loaded);
    options.signing_key = &*key;
  }
  absl::StatusOr<bundle::Manifest> manifest = bundle::BuildBundle(options, args.out);
  if (!manifest.ok()) return Finish(manifest.status(), err);
  std::error_code ec;
  out << "built " << args.out << ": release " << manifest->release << " sequence "
      << manifest->sequence << ", " << manifest->files.size() << " files, " << manifest->TotalSize()
      << " bytes (" << fs::file_size(args.out, ec) << " compressed)"
      << (key ? StrCat(", signed by key ", key->key_id) : std::string(", unsigned")) << "\n";
  return kExitOk;
}

// Captures a model's output-score histogram as a baseline into --out
// (merged with the other models already in it), checked by the same parser
// `bundle build --baseline` uses.
int BundleBaseline(const BaselineArgs& args, std::ostream& out, std::ostream& err) {
  std::string text;
  if (args.from_metrics.starts_with("http://") || args.from_metrics.starts_with("https://")) {
    absl::StatusOr<std::unique_ptr<HttpClient>> client =
        HttpClient::Create({.timeout = std::chrono::seconds(10)});
    if (!client.ok()) return Finish(client.status(), err);
    absl::StatusOr<HttpResponse> response = (*client)->Send({.url = args.from_metrics});
    if (!response.ok()) return Finish(response.status(), err);
    if (response->status != 200) {
      return Finish(
          absl::UnavailableError(StrCat(args.from_metrics, " answered HTTP ", response->status)),
          err);
    }
    text = std::move(response->body);
  } else {
    absl::StatusOr<std::string> read = ReadFile(args.from_metrics);
    if (!read.ok()) return Finish(read.status(), err);
    text = *std::move(read);
  }
  absl::StatusOr<bundle::OutputBaseline> baseline =
      BaselineFromMetrics(text, args.model, args.version, args.output);
  if (!baseline.ok()) return Finish(baseline.status(), err);

  json all = json::object();
  std::error_code ec;
  if (fs::exists(args.out, ec)) {
    absl::StatusOr<std::string> existing = ReadFile(args.out);
    if (!existing.ok()) return Finish(existing.status(), err);
    all = json::parse(*existing, nullptr, false);
    if (!all.is_object()) {
      return Finish(
          absl::InvalidArgumentError(StrCat(args.out, ": not a JSON object of baselines by model")),
          err);
    }
  }
  all[args.model] = {{"output", baseline->output},
                     {"bin_edges", baseline->bin_edges},
                     {"proportions", baseline->proportions},
                     {"samples", baseline->samples}};
  std::string data = all.dump(2) + "\n";
  absl::StatusOr<std::map<std::string, bundle::OutputBaseline>> check =
      bundle::ParseBaselines(data, args.out);
  if (!check.ok()) return Finish(check.status(), err);
  absl::Status written = WriteFileAtomic(args.out, data);
  if (!written.ok()) return Finish(written, err);
  out << "baseline of " << args.model << " (" << baseline->samples << " scores, "
      << baseline->proportions.size() << " bins) written to " << args.out << "\n";
  return kExitOk;
}

int BundleSign(const SignArgs& args, std::ostream& out, std::ostream& err) {
  absl::StatusOr<bundle::PrivateKey> key = bundle::LoadPrivateKey(args.key);
  if (!key.ok()) return Finish(key.status(), err);
  absl::Status status = bundle::SignBundle(args.in, *key, args.out, args.level);
  if (!status.ok()) return Finish(status, err);
  out << "signed " << args.out << " with key " << key->key_id << "\n";
  return kExitOk;
}

bundle::Limits LimitsFrom(const CheckArgs& args) {
  bundle::Limits limits;
  limits.max_unpacked_bytes = args.max_bytes;
  limits.max_compression_ratio = args.max_ratio;
  return limits;
}

// Verify (and unpack when args.out is set).
int BundleCheck(const CheckArgs& args, bool unpack, std::ostream& out, std::ostream& err) {
  auto report = [&](const absl::Status& status, const bundle::VerifiedManifest* verified) {
    if (args.json) {
      json result{{"ok", status.ok()}, {"bundle", args.bundle}};
      if (status.ok()) {
        const bundle::Manifest& m = verified->manifest();
        result["release"] = m.release;
        result["sequence"] = m.sequence;
        result["key_id"] = verified->signature().key_id;
        result["files"] = m.files.size();
        result["bytes"] = m.TotalSize();
        if (unpack) result["unpacked_to"] = args.out;
      } else {
        result["reason"] = bundle::ReasonName(bundle::ReasonOf(status));
        result["message"] = std::string(MessageOf(status));
      }
      out << result.dump(2) << "\n";
      return ExitCodeFor(status);
    }
    if (!status.ok()) return Finish(status, err);
    const bundle::Manifest& m = verified->manifest();
    out << "OK " << args.bundle << ": release " << m.release << " sequence " << m.sequence
        << ", signed by key " << verified->signature().key_id << ", " << m.files.size()
        << " files, " << m.TotalSize() << " bytes"
        << (unpack ? StrCat(", unpacked to ", args.out) : std::string()) << "\n";
    return kExitOk;
  };

  absl::StatusOr<bundle::TrustStore> trust = bundle::TrustStore::LoadDirectory(args.trusted_keys);
  if (!trust.ok()) return report(trust.status(), nullptr);
  bundle::DeviceFacts facts;
  facts.arch = args.arch;
  facts.accelerators = args.accelerators;
  facts.agent_version = args.agent_version;
  facts.sequence_floor = args.floor;
  bundle::Limits limits = LimitsFrom(args);
  absl::StatusOr<bundle::VerifiedManifest> verified =
      bundle::Verify(args.bundle, *trust, facts, limits);
  if (!verified.ok()) return report(verified.status(), nullptr);
  absl::Status status = unpack ? bundle::Unpack(args.bundle, *verified, args.out, limits)
                               : bundle::CheckPayload(args.bundle, *verified, limits);
  return report(status, &*verified);
}

int BundleInspect(const InspectArgs& args, std::ostream& out, std::ostream& err) {
  absl::StatusOr<bundle::UnverifiedBundle> info = bundle::Inspect(args.bundle);
  if (!info.ok()) {
    if (args.json) {
      out << json{{"ok", false},
                  {"reason", bundle::ReasonName(bundle::ReasonOf(info.status()))},
                  {"message", std::string(MessageOf(info.status()))}}
                 .dump(2)
          << "\n";
      return ExitCodeFor(info.status());
    }
    return Finish(info.status(), err);
  }
  const bundle::Manifest& m = info->manifest;
  std::error_code ec;
  uint64_t compressed = fs::file_size(args.bundle, ec);
  if (args.json) {
    json signature = nullptr;
    if (info->signature) {
      signature = {{"key_id", info->signature->key_id}, {"algorithm", info->signature->algorithm}};
    }
    json result{{"ok", true},
                {"manifest", json::parse(info->manifest_json)},
                {"signature", signature},
                {"verified", false},
                {"bundle_bytes", compressed}};
    out << result.dump(2) << "\n";
    return kExitOk;
  }
  out << "release:    " << m.release << "\n"
      << "sequence:   " << m.sequence << "\n"
      << "created:    " << m.created << "\n"
      << "target:     " << m.target.arch << ", " << m.target.accelerator
      << (m.target.min_agent_version.empty() ? std::string()
                                             : StrCat(", agent >= ", m.target.min_agent_version))
      << "\n"
      << "signature:  "
      << (info->signature ? StrCat(info->signature->algorithm, " by key ", info->signature->key_id,
                                   " (not verified; use `outpost bundle verify`)")
                          : std::string("none (unsigned)"))
      << "\n"
      << "files:      " << m.files.size() << ", " << m.TotalSize() << " bytes (" << compressed
      << " compressed)\n";
  for (const auto& file : m.files) {
    out << "  " << std::setw(12) << file.size << "  " << file.sha256.substr(0, 16) << "  "
        << file.path << (file.executable ? " (executable)" : "") << "\n";
  }
  out << "self-tests: " << m.self_tests.size() << "\n";
  for (const auto& test : m.self_tests) {
    out << "  " << test.name << " (model " << test.model
        << (test.version.empty() ? std::string() : StrCat(" v", test.version)) << ", "
        << test.inputs.size() << " inputs, " << test.expected_outputs.size() << " outputs)\n";
  }
  out << "baselines:  " << m.baselines.size() << "\n";
  for (const auto& [model, baseline] : m.baselines) {
    out << "  " << model << ": output " << baseline.output << ", " << baseline.proportions.size()
        << " bins\n";
  }
  return kExitOk;
}

void AddCheckOptions(CLI::App* command, CheckArgs* args) {
  command->add_option("bundle", args->bundle, "the bundle (.tar.zst)")->required();
  command->add_option("--trusted-keys", args->trusted_keys, "directory of trusted *.pub keys")
      ->required();
  command->add_option("--floor", args->floor, "refuse sequence numbers below this");
  command->add_option("--arch", args->arch, "this device's architecture (checked if given)")
      ->check(CLI::IsMember({"x86_64", "aarch64"}));
  command
      ->add_option("--accelerator", args->accelerators,
                   "an accelerator this device has (repeatable; cpu is implied)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  command->add_option("--agent-version", args->agent_version,
                      "this agent's version, checked against min_agent_version");
  command->add_option("--max-bytes", args->max_bytes, "refuse bundles that unpack to more")
      ->capture_default_str();
  command->add_option("--max-ratio", args->max_ratio, "refuse higher compression ratios")
      ->capture_default_str();
  command->add_flag("--json", args->json, "print the verdict as JSON on stdout");
}

}  // namespace

int ExitCodeFor(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  if (bundle::ReasonOf(status) != Reason::kNone) return kExitRefused;
  if (HubHttpStatusOf(status) != 0) return kExitRefused;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
      return kExitUsage;
    default:
      return kExitIo;
  }
}

int RunOutpost(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{
      "outpost: the operator's command line for Outpost: signing keys and release bundles, "
      "and a hub's releases, devices, configuration, rollouts and credentials"};
  app.set_version_flag("--version", OUTPOST_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 ok; 1 refused (a bundle failed verification, or the hub refused the "
      "request or the operation failed: the reason is printed); 2 usage error (bad flags, "
      "invalid input files, no hub URL or token); 3 I/O error (a file cannot be read or "
      "written, or the hub cannot be reached). Hub commands read --hub, --token and --ca-file "
      "from OUTPOST_HUB_URL, OUTPOST_HUB_TOKEN and OUTPOST_HUB_CA. See docs/cli.md.");

  KeysGenerateArgs keys_args;
  CLI::App* keys = app.add_subcommand("keys", "Ed25519 signing keys")->require_subcommand(1);
  CLI::App* keys_generate = keys->add_subcommand("generate", "create a keypair");
  keys_generate->add_option("--out", keys_args.out, "directory for <id>.key and <id>.pub")
      ->required();
  keys_generate->add_option("--name", keys_args.name,
                            "key id (default: first 16 hex of SHA-256 of the public key)");

  CLI::App* bundle_cmd = app.add_subcommand("bundle", "release bundles")->require_subcommand(1);

  BuildArgs build_args;
  CLI::App* build = bundle_cmd->add_subcommand("build", "pack models, configs and a runtime");
  build->add_option("--models", build_args.models, "model repository directory")->required();
  build->add_option("--config", build_args.configs, "config file, packed as config/<name>")
      ->expected(1, -1);
  build->add_option("--runtime", build_args.runtime, "outpost-serve binary to ship");
  build->add_option("--self-test", build_args.self_test, "JSON array of self-test cases");
  build->add_option("--baseline", build_args.baseline, "JSON output baselines by model");
  build->add_option("--name", build_args.name, "release name")->required();
  build->add_option("--sequence", build_args.sequence, "release sequence number (>= 1)")
      ->required();
  build->add_option("--arch", build_args.arch, "target architecture (default: this machine)")
      ->check(CLI::IsMember({"x86_64", "aarch64"}));
  build->add_option("--accelerator", build_args.accelerator, "target accelerator")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  build->add_option("--min-agent-version", build_args.min_agent_version,
                    "oldest agent that may install it");
  build->add_option("--level", build_args.level, "zstd level 1..19")
      ->check(CLI::Range(1, 19))
      ->capture_default_str();
  build->add_option("--sign-key", build_args.sign_key, "sign with this private key while building");
  build->add_option("--out", build_args.out, "bundle file to write")->required();

  BaselineArgs baseline_args;
  CLI::App* baseline = bundle_cmd->add_subcommand(
      "baseline", "capture a model's output-score histogram as a --baseline file");
  baseline
      ->add_option("--from-metrics", baseline_args.from_metrics,
                   "outpost-serve /metrics URL (or a file holding a scrape)")
      ->required();
  baseline->add_option("--model", baseline_args.model, "model name")->required();
  baseline->add_option("--version", baseline_args.version,
                       "model version (default: the only one exposed)");
  baseline->add_option("--output", baseline_args.output, "name of the scored output tensor")
      ->required();
  baseline->add_option("--out", baseline_args.out, "baseline file to write or add the model to")
      ->required();

  SignArgs sign_args;
  CLI::App* sign = bundle_cmd->add_subcommand("sign", "sign a bundle (replaces any signature)");
  sign->add_option("--key", sign_args.key, "private key file (<id>.key)")->required();
  sign->add_option("--in", sign_args.in, "bundle to sign")->required();
  sign->add_option("--out", sign_args.out, "signed bundle to write (may equal --in)")->required();
  sign->add_option("--level", sign_args.level, "zstd level 1..19")
      ->check(CLI::Range(1, 19))
      ->capture_default_str();

  CheckArgs verify_args;
  CLI::App* verify =
      bundle_cmd->add_subcommand("verify", "verify signature, target and every file");
  AddCheckOptions(verify, &verify_args);

  CheckArgs unpack_args;
  CLI::App* unpack = bundle_cmd->add_subcommand("unpack", "verify, then extract the payload");
  AddCheckOptions(unpack, &unpack_args);
  unpack->add_option("--out", unpack_args.out, "directory to create (or an empty one)")->required();

  InspectArgs inspect_args;
  CLI::App* inspect = bundle_cmd->add_subcommand("inspect", "show the manifest (unverified)");
  inspect->add_option("bundle", inspect_args.bundle, "the bundle (.tar.zst)")->required();
  inspect->add_flag("--json", inspect_args.json, "print as JSON");

  HubCommands hub_commands(app);
  InferCommand infer_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help and version are "errors" with exit code 0.
    int code = app.exit(e, out, err);
    return code == 0 ? kExitOk : kExitUsage;
  }

  try {
    if (keys_generate->parsed()) return KeysGenerate(keys_args, out, err);
    if (baseline->parsed()) return BundleBaseline(baseline_args, out, err);
    if (build->parsed()) {
      if (build_args.sequence == 0) {
        err << "outpost: error: --sequence must be >= 1\n";
        return kExitUsage;
      }
      return BundleBuild(build_args, out, err);
    }
    if (sign->parsed()) return BundleSign(sign_args, out, err);
    if (verify->parsed()) return BundleCheck(verify_args, false, out, err);
    if (unpack->parsed()) return BundleCheck(unpack_args, true, out, err);
    if (inspect->parsed()) return BundleInspect(inspect_args, out, err);
    if (std::optional<int> code = infer_command.Run(out, err)) return *code;
    // Progress is redrawn in place only on a terminal; logs get lines.
    const bool interactive = &err == &std::cerr && ::isatty(STDERR_FILENO) == 1;
    if (std::optional<int> code = hub_commands.Run(out, err, interactive)) return *code;
  } catch (const std::exception& e) {
    err << "outpost: error: " << e.what() << "\n";
    return kExitIo;
  }
  err << app.help();
  return kExitUsage;
}

}  // namespace outpost::cli
