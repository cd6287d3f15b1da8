// `outpost infer`: runs a model once on an image, a folder of images or a
// video file, through the same pipeline code outpost-serve runs
// (docs/cli.md, docs/pipelines.md), and prints one JSON result per frame.
//
// Exit codes (commands.h): 0 every frame gave a result; 1 some frame or the
// source failed (its error result is printed too); 2 usage: bad flags, a bad
// --pipeline file, a model whose inputs/outputs do not fit the requested
// pre/post-processing; 3 the model or the input cannot be read or loaded.
#pragma once

#include <iosfwd>
#include <memory>
#include <optional>

namespace CLI {
class App;
}  // namespace CLI

namespace outpost::cli {

class InferCommand {
 public:
  // Adds `infer` to `app`; its options bind to this object, which must
  // outlive app.parse() and Run().
  explicit InferCommand(CLI::App& app);
  ~InferCommand();
  InferCommand(const InferCommand&) = delete;
  InferCommand& operator=(const InferCommand&) = delete;

  // After app.parse(): runs `infer` if it was selected (results on `out`
  // unless --output, diagnostics on `err`). nullopt when not selected.
  std::optional<int> Run(std::ostream& out, std::ostream& err);

 private:
  struct Args;
  std::unique_ptr<Args> args_;
  CLI::App* command_ = nullptr;
};

}  // namespace outpost::cli
