// qwen2: Qwen1.5 / Qwen2 / Qwen2.5. Llama layout plus biases on the q/k/v projections, NEOX-style RoPE
// (rotate_half over the two halves of each head), and often tied input/output embeddings.
#include "model/decoder.h"
#include "model/registry.h"

namespace uma {

std::unique_ptr<Model> make_qwen2(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  c.rope.neox = true;
  return std::make_unique<DecoderModel>(file, backend, std::move(c), DecoderOptions{.qkv_bias = true});
}

}  // namespace uma
