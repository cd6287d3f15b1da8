// libFuzzer target for the pipeline YAML parser (pipeline.yaml, and the
// `preprocess:` section it shares with a model's config.yaml). Whatever
// parses is resolved against itself as a model section, so the key-by-key
// merge runs on the same values; the bytes are also read as a config.yaml.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "serve/model_config.h"
#include "serve/pipeline/pipeline_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<outpost::serve::pipeline::PipelineConfig> config =
      outpost::serve::pipeline::ParsePipelineConfig(text, "fuzz.yaml", "/fuzz");
  if (config.ok()) {
    (void)outpost::serve::pipeline::ResolvePreprocess(config->preprocess, config->preprocess);
  }
  absl::StatusOr<outpost::serve::ModelConfig> model =
      outpost::serve::ParseModelConfig(text, "config.yaml");
  if (model.ok()) {
    (void)outpost::serve::PreprocessSpecJson(model->preprocess).dump();
  }
  return 0;
}
