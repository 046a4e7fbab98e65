// qwen3moe: Qwen3 mixture-of-experts models (Qwen3-30B-A3B, 235B-A22B). Qwen3 attention (per-head q/k
// RMSNorm, NEOX RoPE, explicit head_dim); every layer routes each token to the top-k of n_expert SwiGLU
// experts of width expert_feed_forward_length: softmax over all router logits, top-k, renormalised
// (norm_topk_prob, true for every released Qwen3-MoE and not stored in GGUF).
#include "model/decoder.h"
#include "model/registry.h"
#include "uma/error.h"

namespace uma {

std::unique_ptr<Model> make_qwen3moe(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  if (c.n_expert <= 0 || c.n_expert_used <= 0 || c.n_expert_used > c.n_expert || c.n_ff_expert <= 0)
    fail("{}: qwen3moe needs expert_count, expert_used_count and expert_feed_forward_length (got {}, {}, {})",
         file.path().string(), c.n_expert, c.n_expert_used, c.n_ff_expert);
  c.rope.neox = true;
  c.expert_gating = MoeGating::softmax;
  c.expert_weights_norm = true;
  return std::make_unique<DecoderModel>(file, backend, std::move(c), DecoderOptions{.qk_norm = true});
}

}  // namespace uma
