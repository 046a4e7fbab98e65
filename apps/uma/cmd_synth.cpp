// uma synth: write a GGUF with the real shape, metadata and tokenizer layout of a known model and random
// weights, for benchmarks and planning without downloads.
#include <cstdio>
#include <string>

#include "synth/synth.h"
#include "uma/command.h"

namespace uma::app {
namespace {

struct SynthArgs {
  SynthOptions options;
  std::string output;
};

int synth(const SynthArgs& a) {
  const SynthResult r = write_synthetic_model(a.options, a.output);
  std::fprintf(stderr, "wrote %s: %zu tensors, %.2f B parameters, %.2f GiB in %.1f s\n", a.output.c_str(),
               r.n_tensors, r.n_params / 1e9, r.file_bytes / (1024.0 * 1024.0 * 1024.0), r.seconds);
  return 0;
}

const RegisterCommand reg{{"synth", "Write a model with a real shape and random weights (for benchmarks)",
                           [](CLI::App& sub) {
  auto a = std::make_shared<SynthArgs>();
  sub.add_option("--shape", a->options.shape, "Model shape: " + synth_shape_names())->capture_default_str();
  sub.add_option("--type", a->options.type, "Tensor type or mix: " + synth_type_names())->capture_default_str();
  sub.add_option("-o,--output", a->output, "GGUF file to write")->required();
  sub.add_option("--seed", a->options.seed, "Seed of the random weights")->capture_default_str();
  sub.add_option("--layers", a->options.n_layer, "Override the number of layers (0: the shape's)")
      ->capture_default_str();
  sub.add_option("-t,--threads", a->options.n_threads, "Threads (0: all)")->capture_default_str();
  return [a] { return synth(*a); };
}}};

}  // namespace
}  // namespace uma::app
