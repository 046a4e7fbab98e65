// mixtral: GGUF architecture "llama" with experts (Mixtral 8x7B/8x22B and llama-layout MoE models).
// Llama attention (NORM RoPE, GQA); every layer's feed-forward is n_expert SwiGLU experts of which each
// token uses n_expert_used: softmax over the router logits, keep the top-k, renormalise them to sum 1
// (= a softmax over the selected logits), and add the experts' outputs with those weights.
#include "model/decoder.h"
#include "model/registry.h"
#include "uma/error.h"

namespace uma {

std::unique_ptr<Model> make_mixtral(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  if (c.n_expert_used <= 0 || c.n_expert_used > c.n_expert)
    fail("{}: {} experts with {} used per token is not a valid mixture of experts", file.path().string(),
         c.n_expert, c.n_expert_used);
  c.rope.neox = false;
  c.expert_gating = MoeGating::softmax;
  c.expert_weights_norm = true;
  return std::make_unique<DecoderModel>(file, backend, std::move(c), DecoderOptions{});
}

}  // namespace uma
