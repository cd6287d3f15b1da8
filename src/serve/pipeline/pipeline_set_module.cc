// The entry point of liboutpost_pipelines.so (serve/pipeline_set.h).
#include <memory>
#include <string>
#include <vector>

#include "serve/pipeline/pipeline.h"
#include "serve/pipeline_set.h"

namespace outpost::serve::pipeline {
namespace {

class Set final : public PipelineSet {
 public:
  explicit Set(prometheus::Registry& registry) : families_(registry) {}

  absl::Status Add(const std::string& file, ModelRepository& repo) {
    absl::StatusOr<PipelineConfig> config = LoadPipelineConfig(file);
    if (!config.ok()) return config.status();
    ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> pipeline,
                     Pipeline::Create(*std::move(config), repo, families_));
    pipelines_.push_back(std::move(pipeline));
    return absl::OkStatus();
  }

  void Start() override {
    for (auto& p : pipelines_) p->Start();
  }
  void Tick() override {
    for (auto& p : pipelines_) p->Tick();
  }
  void Stop() override {
    for (auto& p : pipelines_) p->Stop();
    pipelines_.clear();
  }

 private:
  PipelineMetricFamilies families_;
  std::vector<std::unique_ptr<Pipeline>> pipelines_;
};

}  // namespace
}  // namespace outpost::serve::pipeline

extern "C" __attribute__((visibility("default"))) void outpost_create_pipeline_set(
    const std::vector<std::string>* files, outpost::serve::ModelRepository* repo,
    prometheus::Registry* registry,
    absl::StatusOr<std::unique_ptr<outpost::serve::PipelineSet>>* out) {
  auto set = std::make_unique<outpost::serve::pipeline::Set>(*registry);
  for (const std::string& file : *files) {
    absl::Status added = set->Add(file, *repo);
    if (!added.ok()) {
      *out = absl::Status(added.code(),
                          outpost::StrCat("--pipeline ", file, ": ", outpost::MessageOf(added)));
      return;
    }
  }
  *out = std::unique_ptr<outpost::serve::PipelineSet>(std::move(set));
}
