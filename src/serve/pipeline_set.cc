#include "serve/pipeline_set.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace outpost::serve {

absl::StatusOr<std::unique_ptr<PipelineSet>> LoadPipelineSet(const std::vector<std::string>& files,
                                                             ModelRepository& repo,
                                                             prometheus::Registry& registry) {
  std::string path;
  if (const char* env = std::getenv("OUTPOST_PIPELINE_MODULE"); env != nullptr && *env != '\0') {
    path = env;
  } else {
    std::error_code ec;
    std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) {
      return absl::FailedPreconditionError(
          StrCat("cannot find the pipeline module: /proc/self/exe: ", ec.message()));
    }
    path = (self.parent_path() / "liboutpost_pipelines.so").string();
  }
  // Never closed: pipeline threads and static objects of the module and of
  // OpenCV live as long as the process.
  void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (module == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(
        StrCat("cannot load the pipeline module ", path, ": ", why ? why : "unknown error",
               " (pipelines need liboutpost_pipelines.so next to outpost-serve, or "
               "OUTPOST_PIPELINE_MODULE naming it)"));
  }
  auto create = reinterpret_cast<CreatePipelineSetFn>(dlsym(module, kCreatePipelineSetSymbol));
  if (create == nullptr) {
    return absl::FailedPreconditionError(StrCat("the pipeline module ", path, " has no ",
                                                kCreatePipelineSetSymbol,
                                                ": not an Outpost "
                                                "pipeline module of this version"));
  }
  absl::StatusOr<std::unique_ptr<PipelineSet>> set = absl::InternalError("not created");
  create(&files, &repo, &registry, &set);
  return set;
}

}  // namespace outpost::serve
