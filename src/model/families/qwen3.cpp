// qwen3: Qwen3 dense models. No q/k/v biases; instead an RMSNorm over every q and k head (weights
// [head_dim]) before RoPE. head_dim is explicit (attention.key_length) and need not equal n_embd/n_head.
#include "model/decoder.h"
#include "model/registry.h"

namespace uma {

std::unique_ptr<Model> make_qwen3(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  c.rope.neox = true;
  return std::make_unique<DecoderModel>(file, backend, std::move(c), DecoderOptions{.qk_norm = true});
}

}  // namespace uma
