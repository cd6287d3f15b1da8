// outpost release push | list | inspect | yank (docs/cli.md "Releases").
#include <CLI/CLI.hpp>
#include <filesystem>
#include <iomanip>

#include "cli/format.h"
#include "cli/hub_command_support.h"

namespace outpost::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

absl::Status PushRelease(const std::string& bundle, Context& c) {
  std::error_code ec;
  if (!fs::is_regular_file(bundle, ec)) {
    return absl::NotFoundError(StrCat(bundle, ": no such file"));
  }
  UploadProgress progress(c.err, StrCat("uploading ", fs::path(bundle).filename().string()),
                          c.interactive);
  absl::StatusOr<json> release = c.api.Upload(
      "/releases", bundle, [&](uint64_t sent, uint64_t total) { progress.Update(sent, total); });
  progress.Finish();
  if (!release.ok()) return release.status();
  if (c.json_output) {
    c.PrintJson(*release);
    return absl::OkStatus();
  }
  c.out << "pushed release " << Text(*release, "id") << ": sequence " << Int(*release, "sequence")
        << ", " << FormatBytes(Int(*release, "size")) << ", sha256 "
        << Text(*release, "sha256").substr(0, 16) << "..., signed by key "
        << Text(*release, "key_id") << "\n";
  return absl::OkStatus();
}

absl::Status ListReleases(bool include_yanked, Context& c) {
  ASSIGN_OR_RETURN(json answer,
                   c.api.Get(StrCat("/releases", include_yanked ? "?yanked=true" : "")));
  if (c.json_output) {
    c.PrintJson(answer);
    return absl::OkStatus();
  }
  Table table({"name", "sequence", "size", "key", "created", "yanked"});
  for (const json& release : Array(answer, "releases")) {
    table.AddRow({Text(release, "id"), Text(release, "sequence"), FormatBytes(Int(release, "size")),
                  Text(release, "key_id"), FormatTime(Int(release, "created_at")),
                  release.value("yanked", false) ? "yes" : "no"});
  }
  table.Print(c.out);
  return absl::OkStatus();
}

absl::Status InspectRelease(const std::string& name, Context& c) {
  ASSIGN_OR_RETURN(json release, c.api.Get(StrCat("/releases/", UrlEscape(name))));
  if (c.json_output) {
    c.PrintJson(release);
    return absl::OkStatus();
  }
  const json& manifest = Object(release, "manifest");
  const json& target = Object(manifest, "target");
  c.out << "release:    " << Text(release, "id") << "\n"
        << "sequence:   " << Int(release, "sequence") << "\n"
        << "size:       " << FormatBytes(Int(release, "size")) << "\n"
        << "sha256:     " << Text(release, "sha256") << "\n"
        << "signed by:  " << Text(release, "key_id") << "\n"
        << "pushed:     " << FormatTime(Int(release, "created_at")) << "\n"
        << "built:      " << OrDash(Text(manifest, "created")) << "\n"
        << "yanked:     " << (release.value("yanked", false) ? "yes" : "no") << "\n"
        << "target:     " << OrDash(Text(target, "arch")) << ", "
        << OrDash(Text(target, "accelerator"));
  if (!Text(target, "min_agent_version").empty()) {
    c.out << ", agent >= " << Text(target, "min_agent_version");
  }
  const json& files = Array(manifest, "files");
  c.out << "\nfiles:      " << files.size() << "\n";
  for (const json& file : files) {
    c.out << "  " << std::setw(10) << FormatBytes(Int(file, "size")) << "  " << Text(file, "path")
          << (file.value("executable", false) ? " (executable)" : "") << "\n";
  }
  c.out << "self-tests: " << Array(manifest, "self_tests").size() << "\n";
  return absl::OkStatus();
}

absl::Status YankRelease(const std::string& name, Context& c) {
  ASSIGN_OR_RETURN(json answer, c.api.Post(StrCat("/releases/", UrlEscape(name), "/yank")));
  if (c.json_output) {
    c.PrintJson(answer);
  } else {
    c.out << "yanked release " << name << ": new rollouts and assignments of it are refused\n";
  }
  return absl::OkStatus();
}

}  // namespace

void AddReleaseCommands(CLI::App& app, CommandRegistry& r) {
  CLI::App* group = r.AddGroup(app, "release", "releases on the hub: push, list, inspect, yank");

  std::string& bundle = r.New<std::string>();
  r.Add(group, "push", "upload a signed bundle; the hub verifies it before storing it",
        [&bundle](Context& c) { return PushRelease(bundle, c); })
      ->add_option("bundle", bundle, "the signed bundle (.tar.zst)")
      ->required();

  bool& include_yanked = r.New<bool>();
  r.Add(group, "list", "releases, newest first", [&include_yanked](Context& c) {
     return ListReleases(include_yanked, c);
   })->add_flag("--yanked", include_yanked, "include yanked releases");

  std::string& inspect_name = r.New<std::string>();
  r.Add(group, "inspect", "a release's details and manifest",
        [&inspect_name](Context& c) { return InspectRelease(inspect_name, c); })
      ->add_option("name", inspect_name, "release name")
      ->required();

  std::string& yank_name = r.New<std::string>();
  r.Add(group, "yank", "stop offering a release: new rollouts of it are refused",
        [&yank_name](Context& c) { return YankRelease(yank_name, c); })
      ->add_option("name", yank_name, "release name")
      ->required();
}

}  // namespace outpost::cli
