#include "model/decoder.h"

#include <algorithm>
#include <cmath>

#include "uma/error.h"

namespace uma {

namespace {

// forward_top_k samples one row (the generation loop's last token); several would need one penalty list each.
void require_one_output(const Batch& batch) {
  if (std::count_if(batch.output.begin(), batch.output.end(), [](uint8_t o) { return o != 0; }) > 1)
    fail("forward_top_k: the batch marks several tokens for logits; it samples one at a time");
}

// forward_top_k_rows takes one k and one penalty list per marked token.
void check_rows(int64_t n_out, std::span<const int> ks, std::span<const LogitPenalties> pens) {
  if (ks.size() != static_cast<size_t>(n_out) || pens.size() != static_cast<size_t>(n_out))
    fail("forward_top_k_rows: {} tokens marked for logits but {} k and {} penalty lists", n_out, ks.size(),
         pens.size());
}

}  // namespace

DecoderModel::DecoderModel(const GgufFile& file, Backend& backend, ModelConfig config, DecoderOptions options)
    : options_(options) {
  config_ = std::move(config);
  backend_ = &backend;
  WeightLoader loader(file, backend);
  const int64_t E = config_.n_embd, V = config_.n_vocab;
  tok_embd_ = loader.require("token_embd.weight", {E, V});
  output_norm_ = loader.require("output_norm.weight", {E});
  // Tied embeddings (qwen2 small models, ...): the output projection reuses the embedding table.
  output_ = loader.optional("output.weight", {E, V});
  if (!output_) output_ = tok_embd_;
  load_dense_layers(loader);
  weight_bytes_ = loader.bytes();
}

DecoderModel::~DecoderModel() {
  for (float* p : {s_.x, s_.xn, s_.q, s_.k, s_.v, s_.attn, s_.gate, s_.up, s_.ffn_out, s_.out_rows, s_.logits,
                   s_.shared})
    if (p) backend_->free_buffer(p);
}

void DecoderModel::load_dense_layers(WeightLoader& L) {
  if (config_.n_expert > 0 && config_.n_ff_expert == 0) config_.n_ff_expert = config_.n_ff;  // Mixtral
  const ModelConfig& c = config_;
  const int64_t E = c.n_embd, Q = int64_t(c.n_head) * c.head_dim_k, K = int64_t(c.n_head_kv) * c.head_dim_k,
                Vw = int64_t(c.n_head_kv) * c.head_dim_v, O = int64_t(c.n_head) * c.head_dim_v;
  layers_.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    DecoderLayer& l = layers_[il];
    l.attn_norm = L.require(p + "attn_norm.weight", {E});
    l.ffn_norm = L.require(p + "ffn_norm.weight", {E});
    if (c.n_expert > 0 && il >= c.n_layer_dense_lead) {
      const int64_t F = c.n_ff_expert, X = c.n_expert, S = int64_t(c.n_ff_expert) * c.n_expert_shared;
      l.gate_inp = L.require(p + "ffn_gate_inp.weight", {E, X});
      l.gate_exps = L.require(p + "ffn_gate_exps.weight", {E, F, X});
      l.up_exps = L.require(p + "ffn_up_exps.weight", {E, F, X});
      l.down_exps = L.require(p + "ffn_down_exps.weight", {F, E, X});
      l.exp_probs_b = L.optional(p + "exp_probs_b.bias", {X});
      if (c.n_expert_shared > 0) {
        l.gate_shexp = L.require(p + "ffn_gate_shexp.weight", {E, S});
        l.up_shexp = L.require(p + "ffn_up_shexp.weight", {E, S});
        l.down_shexp = L.require(p + "ffn_down_shexp.weight", {S, E});
      }
    } else {
      l.ffn_gate = L.require(p + "ffn_gate.weight", {E, c.n_ff});
      l.ffn_up = L.require(p + "ffn_up.weight", {E, c.n_ff});
      l.ffn_down = L.require(p + "ffn_down.weight", {c.n_ff, E});
    }
    if (options_.custom_attention) continue;
    l.wq = L.require(p + "attn_q.weight", {E, Q});
    l.wk = L.require(p + "attn_k.weight", {E, K});
    l.wv = L.require(p + "attn_v.weight", {E, Vw});
    l.wo = L.require(p + "attn_output.weight", {O, E});
    if (options_.qkv_bias) {
      l.bq = L.require(p + "attn_q.bias", {Q});
      l.bk = L.require(p + "attn_k.bias", {K});
      l.bv = L.require(p + "attn_v.bias", {Vw});
    }
    if (options_.qk_norm) {
      l.q_norm = L.require(p + "attn_q_norm.weight", {c.head_dim_k});
      l.k_norm = L.require(p + "attn_k_norm.weight", {c.head_dim_k});
    }
  }
}

void DecoderModel::ensure_scratch(int64_t n) {
  if (n <= s_.capacity) return;
  Backend& b = *backend_;
  const ModelConfig& c = config_;
  for (float* p : {s_.x, s_.xn, s_.q, s_.k, s_.v, s_.attn, s_.gate, s_.up, s_.ffn_out, s_.out_rows, s_.logits,
                   s_.shared})
    if (p) b.free_buffer(p);
  const int64_t ff = std::max(c.n_ff, c.n_ff_expert * std::max(1, c.n_expert_shared));
  s_.capacity = n;
  s_.x = b.alloc(n * c.n_embd);
  s_.xn = b.alloc(n * c.n_embd);
  s_.q = b.alloc(n * c.n_head * c.head_dim_k);
  s_.k = b.alloc(n * c.n_head_kv * c.head_dim_k);
  s_.v = b.alloc(n * c.n_head_kv * c.head_dim_v);
  s_.attn = b.alloc(n * c.n_head * c.head_dim_v);
  s_.gate = b.alloc(n * ff);
  s_.up = b.alloc(n * ff);
  s_.ffn_out = b.alloc(n * c.n_embd);
  s_.out_rows = b.alloc(n * c.n_embd);
  s_.logits = b.alloc(n * c.n_vocab);
  s_.shared = b.alloc(n * c.n_embd);
}

MoeParams DecoderModel::moe_params() const {
  const ModelConfig& c = config_;
  return MoeParams{.n_expert = c.n_expert,
                   .n_expert_used = c.n_expert_used,
                   .gating = c.expert_gating,
                   .norm_weights = c.expert_weights_norm,
                   .weights_scale = c.expert_weights_scale,
                   .n_group = c.n_expert_group,
                   .n_group_used = c.n_expert_group_used};
}

void DecoderModel::ffn(int il, const float* xn, int64_t n, float* out) {
  const DecoderLayer& l = layers_[il];
  Backend& b = *backend_;
  if (l.gate_inp) {
    const MoeWeights w{&l.gate_inp, &l.exp_probs_b, &l.gate_exps, &l.up_exps, &l.down_exps};
    b.moe_ffn(w, moe_params(), xn, n, out);
    if (l.gate_shexp) {  // shared experts: a dense SwiGLU every token goes through
      b.matmul(l.gate_shexp, xn, n, s_.gate);
      b.matmul(l.up_shexp, xn, n, s_.up);
      b.swiglu(s_.gate, s_.up, n * l.gate_shexp.rows(), s_.gate);
      b.matmul(l.down_shexp, s_.gate, n, s_.shared);
      b.add(out, s_.shared, n * config_.n_embd);
    }
    return;
  }
  const MatmulTarget gate_up[] = {{&l.ffn_gate, s_.gate}, {&l.ffn_up, s_.up}};
  b.matmul_many(xn, n, gate_up, 2);
  b.swiglu(s_.gate, s_.up, n * config_.n_ff, s_.gate);
  b.matmul(l.ffn_down, s_.gate, n, out);
}

void DecoderModel::attention_block(int il, const BatchLayout& layout, int64_t n, KvCache& kv, float* out) {
  const ModelConfig& c = config_;
  const DecoderLayer& l = layers_[il];
  Backend& b = *backend_;
  const AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim_k, c.head_dim_v,
                             1.0f / std::sqrt(static_cast<float>(c.head_dim_k))};
  const MatmulTarget qkv[] = {
      {&l.wq, s_.q, &l.bq},  // q: [n, n_head, hd_k]
      {&l.wk, s_.k, &l.bk},  // k: [n, n_kv, hd_k]
      {&l.wv, s_.v, &l.bv},  // v: [n, n_kv, hd_v]
  };
  b.matmul_many(s_.xn, n, qkv, 3);
  if (options_.qk_norm) {
    b.rms_norm(s_.q, l.q_norm, n * c.n_head, c.head_dim_k, c.norm_eps, s_.q);
    b.rms_norm(s_.k, l.k_norm, n * c.n_head_kv, c.head_dim_k, c.norm_eps, s_.k);
  }
  b.rope_store_kv(kv, il, s_.q, s_.k, s_.v, c.n_head, c.n_head_kv, c.head_dim_k, layout, c.rope);
  b.attention(kv, il, s_.q, layout, shape, s_.attn);
  b.matmul(l.wo, s_.attn, n, out);
}

void DecoderModel::forward(const Batch& batch, KvCache& kv, std::vector<float>& logits, const LayerHook* hook) {
  const int64_t n_out = run(batch, kv, hook);
  logits.resize(static_cast<size_t>(n_out * config_.n_vocab));
  if (n_out > 0) backend_->download(logits.data(), s_.logits, logits.size());
}

void DecoderModel::forward_greedy(const Batch& batch, KvCache& kv, std::vector<int32_t>& ids) {
  const int64_t n_out = run(batch, kv, nullptr);
  ids.resize(static_cast<size_t>(n_out));
  if (n_out > 0) backend_->argmax_rows(s_.logits, n_out, config_.n_vocab, ids.data());
}

void DecoderModel::forward_top_k(const Batch& batch, KvCache& kv, int k, const LogitPenalties& pen,
                                 std::vector<TokenLogit>& out) {
  require_one_output(batch);
  const int64_t n_out = run(batch, kv, nullptr);
  out.resize(n_out > 0 ? static_cast<size_t>(k) : 0);
  if (n_out > 0) backend_->top_k_row(s_.logits, config_.n_vocab, k, pen, out.data());
}

void DecoderModel::forward_top_k_rows(const Batch& batch, KvCache& kv, std::span<const int> ks,
                                      std::span<const LogitPenalties> pens,
                                      std::vector<std::vector<TokenLogit>>& outs) {
  const int64_t n_out = run(batch, kv, nullptr);
  check_rows(n_out, ks, pens);
  outs.resize(static_cast<size_t>(n_out));
  for (int64_t r = 0; r < n_out; ++r) {
    outs[r].resize(static_cast<size_t>(ks[r]));
    backend_->top_k_row(s_.logits + r * config_.n_vocab, config_.n_vocab, ks[r], pens[r], outs[r].data());
  }
}

RowMass DecoderModel::last_row_mass(int64_t row, float max_logit, double inv_t) {
  return backend_->row_mass(s_.logits + row * config_.n_vocab, config_.n_vocab, max_logit, inv_t);
}

void DecoderModel::last_logits_row(int64_t row, std::vector<float>& out) {
  out.resize(static_cast<size_t>(config_.n_vocab));
  backend_->download(out.data(), s_.logits + row * config_.n_vocab, out.size());
}

// The forward pass up to the logits of the marked tokens in s_.logits; returns how many rows there are.
int64_t DecoderModel::run(const Batch& batch, KvCache& kv, const LayerHook* hook) {
  const ModelConfig& c = config_;
  Backend& b = *backend_;
  const int64_t n = batch.size();
  if (n == 0) return 0;
  ensure_scratch(n);
  const BatchLayout layout{batch.pos.data(), batch.seq.data(), n};
  auto observe = [&](int layer) {
    if (!hook) return;
    hook_buf_.resize(n * c.n_embd);
    b.download(hook_buf_.data(), s_.x, hook_buf_.size());
    (*hook)(layer, hook_buf_.data(), n, c.n_embd);
  };

  b.begin_step(layout, kv);
  b.get_rows(tok_embd_, batch.tokens.data(), n, s_.x);  // x: [n, n_embd] residual stream
  observe(0);
  // Each residual add is fused with the norm that follows it (the next block's input).
  b.rms_norm(s_.x, layers_[0].attn_norm, n, c.n_embd, c.norm_eps, s_.xn);
  for (int il = 0; il < c.n_layer; ++il) {
    const DecoderLayer& l = layers_[il];
    attention_block(il, layout, n, kv, s_.ffn_out);
    b.add_rms_norm(s_.x, s_.ffn_out, l.ffn_norm, n, c.n_embd, c.norm_eps, s_.xn);
    ffn(il, s_.xn, n, s_.ffn_out);
    if (il + 1 < c.n_layer)
      b.add_rms_norm(s_.x, s_.ffn_out, layers_[il + 1].attn_norm, n, c.n_embd, c.norm_eps, s_.xn);
    else
      b.add(s_.x, s_.ffn_out, n * c.n_embd);
    observe(il + 1);
  }

  // Logits only for the tokens that want them: gather their rows, then norm and project.
  std::vector<int32_t> rows;
  for (int64_t i = 0; i < n; ++i)
    if (batch.output[i]) rows.push_back(static_cast<int32_t>(i));
  const int64_t n_out = static_cast<int64_t>(rows.size());
  if (n_out > 0) {
    b.gather_rows(s_.x, c.n_embd, rows.data(), n_out, s_.out_rows);
    b.rms_norm(s_.out_rows, output_norm_, n_out, c.n_embd, c.norm_eps, s_.out_rows);
    b.matmul(output_, s_.out_rows, n_out, s_.logits);
  }
  b.end_step();
  return n_out;
}

// Shared defaults of Model.
void Model::forward_greedy(const Batch& batch, KvCache& kv, std::vector<int32_t>& ids) {
  std::vector<float> logits;
  forward(batch, kv, logits, nullptr);
  const size_t V = static_cast<size_t>(config_.n_vocab), rows = V ? logits.size() / V : 0;
  ids.resize(rows);
  for (size_t r = 0; r < rows; ++r)
    ids[r] = static_cast<int32_t>(std::max_element(logits.begin() + r * V, logits.begin() + (r + 1) * V) -
                                  (logits.begin() + r * V));
}

void Model::forward_top_k_rows(const Batch& batch, KvCache& kv, std::span<const int> ks,
                               std::span<const LogitPenalties> pens, std::vector<std::vector<TokenLogit>>& outs) {
  std::vector<float>& logits = last_logits_;
  forward(batch, kv, logits, nullptr);
  const size_t V = static_cast<size_t>(config_.n_vocab), rows = V ? logits.size() / V : 0;
  check_rows(static_cast<int64_t>(rows), ks, pens);
  outs.resize(rows);
  for (size_t r = 0; r < rows; ++r) {
    outs[r].resize(static_cast<size_t>(ks[r]));
    penalized_top_k(logits.data() + r * V, V, ks[r], pens[r], outs[r].data());
  }
}

void Model::forward_top_k(const Batch& batch, KvCache& kv, int k, const LogitPenalties& pen,
                          std::vector<TokenLogit>& out) {
  require_one_output(batch);
  std::vector<float>& logits = last_logits_;
  forward(batch, kv, logits, nullptr);
  out.resize(logits.empty() ? 0 : static_cast<size_t>(k));
  if (!logits.empty()) penalized_top_k(logits.data(), logits.size(), k, pen, out.data());
}

const float* Model::last_row(int64_t row) const {
  const size_t V = static_cast<size_t>(config_.n_vocab);
  if (row < 0 || (static_cast<size_t>(row) + 1) * V > last_logits_.size())
    fail("no logits row {} in the last top-k pass", row);
  return last_logits_.data() + row * V;
}

RowMass Model::last_row_mass(int64_t row, float max_logit, double inv_t) {
  return row_mass(last_row(row), static_cast<size_t>(config_.n_vocab), max_logit, inv_t);
}

void Model::last_logits_row(int64_t row, std::vector<float>& out) {
  const float* p = last_row(row);
  out.assign(p, p + config_.n_vocab);
}

KvCacheOptions Model::kv_options(int64_t n_ctx, int n_seq) const {
  KvCacheOptions o;
  o.n_layer = config_.n_layer;
  o.n_cells = n_ctx;
  o.k_width = config_.n_head_kv * config_.head_dim_k;
  o.v_width = config_.n_head_kv * config_.head_dim_v;
  o.n_seq = n_seq;
  return o;
}

size_t Model::bytes_per_token() const { return weight_bytes_; }

size_t DecoderModel::bytes_per_token() const {
  size_t bytes = weight_bytes_;
  // A token reads one row of the embedding table, unless the table doubles as the output projection.
  if (output_.host != tok_embd_.host) bytes -= tok_embd_.nbytes - tok_embd_.nbytes / tok_embd_.rows();
  for (const DecoderLayer& l : layers_)
    for (const Weight* w : {&l.gate_exps, &l.up_exps, &l.down_exps})
      if (*w) bytes -= w->nbytes - w->nbytes / config_.n_expert * config_.n_expert_used;
  return bytes;
}

}  // namespace uma
