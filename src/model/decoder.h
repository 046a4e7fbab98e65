// The decoder-only transformer most families share: pre-norm attention with GQA and RoPE, then a
// pre-norm feed-forward block. Families differ by small options (biases, q/k norms, rope style, tied
// embeddings) and, for mixtures of experts, by overriding ffn().
#pragma once
#include <vector>

#include "model/loader.h"
#include "model/model.h"

namespace uma {

struct DecoderOptions {
  bool qkv_bias = false;  // qwen2: q/k/v projections carry biases
  bool qk_norm = false;   // qwen3: RMSNorm over each q and k head before RoPE
  // The family loads its own attention weights and overrides attention_block() (deepseek2's MLA).
  bool custom_attention = false;
};

struct DecoderLayer {
  Weight attn_norm;                   // [n_embd]
  Weight wq, wk, wv;                  // [n_embd, n_head*hd_k], [n_embd, n_kv*hd_k], [n_embd, n_kv*hd_v]
  Weight bq, bk, bv;                  // biases (optional)
  Weight q_norm, k_norm;              // [hd_k] (optional)
  Weight wo;                          // [n_head*hd_v, n_embd]
  Weight ffn_norm;                    // [n_embd]
  Weight ffn_gate, ffn_up, ffn_down;  // [n_embd, n_ff], [n_embd, n_ff], [n_ff, n_embd] (dense layers)
  // Mixture of experts: router and stacked experts [n_embd, n_ff_exp, n_expert] (see moe families).
  Weight gate_inp, gate_exps, up_exps, down_exps;
  Weight exp_probs_b;                 // [n_expert] selection bias (DeepSeek-V3, optional)
  Weight gate_shexp, up_shexp, down_shexp;  // shared experts [n_embd, n_ff_exp * n_shared] (optional)
};

class DecoderModel : public Model {
 public:
  DecoderModel(const GgufFile& file, Backend& backend, ModelConfig config, DecoderOptions options);
  ~DecoderModel() override;
  void forward(const Batch& batch, KvCache& kv, std::vector<float>& logits, const LayerHook* hook) override;
  void forward_greedy(const Batch& batch, KvCache& kv, std::vector<int32_t>& ids) override;
  void forward_top_k(const Batch& batch, KvCache& kv, int k, const LogitPenalties& pen,
                     std::vector<TokenLogit>& out) override;
  RowMass last_row_mass(int64_t row, float max_logit, double inv_t) override;
  void last_logits_row(int64_t row, std::vector<float>& out) override;
  void forward_top_k_rows(const Batch& batch, KvCache& kv, std::span<const int> ks,
                          std::span<const LogitPenalties> pens, std::vector<std::vector<TokenLogit>>& outs) override;
  // All weights of a dense model; for a MoE, the routed experts count top-k of n_expert.
  size_t bytes_per_token() const override;

 protected:
  // Activation buffers for up to `n_tokens` tokens, grown on demand.
  struct Scratch {
    int64_t capacity = 0;
    float *x = nullptr, *xn = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr;
    float *gate = nullptr, *up = nullptr, *ffn_out = nullptr, *out_rows = nullptr, *logits = nullptr;
    float* shared = nullptr;  // [n, n_embd] shared-expert output
  };
  void ensure_scratch(int64_t n_tokens);
  int64_t run(const Batch& batch, KvCache& kv, const LayerHook* hook);
  void load_dense_layers(WeightLoader& loader);
  // Attention of layer `il` on s_.xn [n, n_embd] (normed input) into out [n, n_embd], storing this batch's
  // keys/values in the cache. GQA with RoPE by default.
  virtual void attention_block(int il, const BatchLayout& layout, int64_t n, KvCache& kv, float* out);
  // Feed-forward of layer `il` on xn [n, n_embd] into out [n, n_embd]. Dense SwiGLU, or the layer's
  // experts (+ shared experts) when it has a router.
  virtual void ffn(int il, const float* xn, int64_t n, float* out);
  MoeParams moe_params() const;

  DecoderOptions options_;
  Weight tok_embd_, output_norm_, output_;
  std::vector<DecoderLayer> layers_;
  Scratch s_;
  std::vector<float> hook_buf_;
};

}  // namespace uma
