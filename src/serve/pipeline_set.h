// The pipelines outpost-serve runs beside its APIs (--pipeline FILE), behind
// an interface the runtime loads at run time: the pipeline code, OpenCV and
// what Debian's OpenCV codecs pull in (GDAL, ffmpeg, poppler, ... about 58
// MiB of resident memory, 240 shared libraries) live in the module
// liboutpost_pipelines.so, loaded only when a pipeline is configured. A
// device that serves only the APIs never maps them.
//
// Thread safety: Start/Tick/Stop from one thread (serve_main's).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace prometheus {
class Registry;
}

namespace outpost::serve {

class ModelRepository;

class PipelineSet {
 public:
  virtual ~PipelineSet() = default;
  virtual void Start() = 0;
  // Once a second (fps and other rates).
  virtual void Tick() = 0;
  // Stops the sources; frames in flight reach the sinks.
  virtual void Stop() = 0;
};

// The module's entry point (extern "C", looked up by this name): parses
// every file and creates its pipeline over `repo`, metrics in `registry`,
// into `*out`; the first error wins and names the file.
inline constexpr char kCreatePipelineSetSymbol[] = "outpost_create_pipeline_set";
using CreatePipelineSetFn = void (*)(const std::vector<std::string>* files, ModelRepository* repo,
                                     prometheus::Registry* registry,
                                     absl::StatusOr<std::unique_ptr<PipelineSet>>* out);

// Loads the module (OUTPOST_PIPELINE_MODULE, else liboutpost_pipelines.so
// next to the running executable) and creates the set. The module stays
// loaded for the life of the process. Errors: FailedPrecondition when the
// module cannot be loaded (the message says where it was looked for and
// why), else those of the module's CreatePipelineSet.
absl::StatusOr<std::unique_ptr<PipelineSet>> LoadPipelineSet(const std::vector<std::string>& files,
                                                             ModelRepository& repo,
                                                             prometheus::Registry& registry);

}  // namespace outpost::serve
