// deepseek2: DeepSeek-V2 / V2-Lite / V3 / R1 (and Kimi-K2-style derivatives).
// - Multi-head latent attention (MLA): q through a low-rank bottleneck (q_a → RMSNorm → q_b; V2-Lite: one
//   attn_q), keys and values through a shared latent c = RMSNorm(W_kv_a x) [kv_lora] plus one RoPE key
//   [n_rot] shared by all heads. Each head's q = [q_nope (nope), q_rope (n_rot)]; the cache keeps only
//   [c, rotated k_rope] per token and attention runs in latent space (Backend::attention_mla).
// - RoPE on the n_rot tail only, adjacent pairs (NORM): HF's rope_interleave de-interleaves q and k the same
//   way before rotate_half, which leaves every q·k unchanged. YaRN frequencies, and the softmax scale
//   multiplied by mscale² with mscale = 1 + yarn_log_multiplier · ln(factor).
// - The first leading_dense_block_count layers are dense; the rest are MoE with shared experts and the
//   routing MoeParams describes (sigmoid + selection bias + group limit for V3; softmax for V2).
#include <cmath>

#include "gguf/gguf.h"
#include "model/decoder.h"
#include "model/registry.h"
#include "uma/error.h"

namespace uma {
namespace {

struct MlaLayer {
  Weight wq_a, q_a_norm, wq_b;  // [n_embd, q_lora], [q_lora], [q_lora, n_head*(nope+rot)]
  Weight wq;                    // [n_embd, n_head*(nope+rot)] when q_lora_rank = 0
  Weight wkv_a_lat, wkv_a_rot;  // rows of attn_kv_a_mqa: [n_embd, kv_lora], [n_embd, n_rot]
  Weight kv_a_norm;             // [kv_lora]
  Weight wk_b, wv_b;            // [nope, kv_lora, n_head], [kv_lora, v, n_head]
  Weight wo;                    // [n_head*v, n_embd]
};

class Deepseek2Model final : public DecoderModel {
 public:
  Deepseek2Model(const GgufFile& file, Backend& backend, ModelConfig config)
      : DecoderModel(file, backend, std::move(config), DecoderOptions{.custom_attention = true}) {
    const ModelConfig& c = config_;
    shape_ = MlaShape{.n_head = c.n_head,
                      .kv_lora = c.kv_lora_rank,
                      .n_rot = c.rope.n_rot,
                      .head_dim_nope = c.head_dim_k - c.rope.n_rot,
                      .head_dim_v = c.head_dim_v};
    WeightLoader L(file, backend);
    const int64_t E = c.n_embd, H = c.n_head, Q = H * c.head_dim_k, lat = c.kv_lora_rank, R = c.rope.n_rot;
    mla_.resize(c.n_layer);
    for (int il = 0; il < c.n_layer; ++il) {
      const std::string p = "blk." + std::to_string(il) + ".";
      MlaLayer& l = mla_[il];
      if (c.q_lora_rank > 0) {
        l.wq_a = L.require(p + "attn_q_a.weight", {E, c.q_lora_rank});
        l.q_a_norm = L.require(p + "attn_q_a_norm.weight", {c.q_lora_rank});
        l.wq_b = L.require(p + "attn_q_b.weight", {c.q_lora_rank, Q});
      } else {
        l.wq = L.require(p + "attn_q.weight", {E, Q});
      }
      l.wkv_a_lat = L.require_rows(p + "attn_kv_a_mqa.weight", {E, lat + R}, 0, lat);
      l.wkv_a_rot = L.require_rows(p + "attn_kv_a_mqa.weight", {E, lat + R}, lat, R);
      l.kv_a_norm = L.require(p + "attn_kv_a_norm.weight", {lat});
      if (!L.has(p + "attn_k_b.weight") && L.has(p + "attn_kv_b.weight"))
        fail("{}: this GGUF stores the fused attn_kv_b; uma needs the split attn_k_b/attn_v_b that llama.cpp's "
             "convert_hf_to_gguf.py writes since mid-2025: re-convert the model", file.path().string());
      l.wk_b = L.require(p + "attn_k_b.weight", {shape_.head_dim_nope, lat, H});
      l.wv_b = L.require(p + "attn_v_b.weight", {lat, c.head_dim_v, H});
      l.wo = L.require(p + "attn_output.weight", {H * c.head_dim_v, E});
    }
    weight_bytes_ += L.bytes();
  }
  ~Deepseek2Model() override {
    for (float* p : {q_a_, lat_, rot_})
      if (p) backend_->free_buffer(p);
  }

  // The compressed cache: latent in the K slot, shared RoPE key in the V slot (MlaShape).
  KvCacheOptions kv_options(int64_t n_ctx, int n_seq) const override {
    KvCacheOptions o = Model::kv_options(n_ctx, n_seq);
    o.k_width = config_.kv_lora_rank;
    o.v_width = config_.rope.n_rot;
    return o;
  }

  void set_scale(float scale) { shape_.scale = scale; }

 protected:
  void attention_block(int il, const BatchLayout& layout, int64_t n, KvCache& kv, float* out) override {
    const ModelConfig& c = config_;
    const MlaLayer& l = mla_[il];
    Backend& b = *backend_;
    ensure_mla_scratch(n);
    if (l.wq_a) {
      b.matmul(l.wq_a, s_.xn, n, q_a_);  // [n, q_lora]
      b.rms_norm(q_a_, l.q_a_norm, n, c.q_lora_rank, c.norm_eps, q_a_);
      b.matmul(l.wq_b, q_a_, n, s_.q);   // q: [n, n_head, nope + rot]
    } else {
      b.matmul(l.wq, s_.xn, n, s_.q);
    }
    b.rope(s_.q + shape_.head_dim_nope, n, c.n_head, c.head_dim_k, layout, c.rope);  // the rot tail of each head
    b.matmul(l.wkv_a_lat, s_.xn, n, lat_);  // [n, kv_lora]
    b.rms_norm(lat_, l.kv_a_norm, n, c.kv_lora_rank, c.norm_eps, lat_);
    b.matmul(l.wkv_a_rot, s_.xn, n, rot_);  // [n, n_rot], one key head shared by all query heads
    b.rope(rot_, n, 1, c.rope.n_rot, layout, c.rope);
    b.store_kv(kv, il, lat_, rot_, layout);
    b.attention_mla(kv, il, s_.q, l.wk_b, l.wv_b, layout, shape_, s_.attn);  // [n, n_head, v]
    b.matmul(l.wo, s_.attn, n, out);
  }

 private:
  void ensure_mla_scratch(int64_t n) {
    if (n <= mla_capacity_) return;
    Backend& b = *backend_;
    for (float* p : {q_a_, lat_, rot_})
      if (p) b.free_buffer(p);
    mla_capacity_ = n;
    q_a_ = b.alloc(n * std::max(1, config_.q_lora_rank));
    lat_ = b.alloc(n * config_.kv_lora_rank);
    rot_ = b.alloc(n * config_.rope.n_rot);
  }

  std::vector<MlaLayer> mla_;
  MlaShape shape_;
  int64_t mla_capacity_ = 0;
  float *q_a_ = nullptr, *lat_ = nullptr, *rot_ = nullptr;
};

// YaRN's frequency of rotated pair i, as HF computes it: a ramp over pairs blends the interpolated
// frequency (divided by `factor`) into the original one for the fast-turning pairs.
double yarn_inv_freq(int i, const RopeParams& r, double factor) {
  const double base_f = 1.0 / std::pow(double(r.freq_base), 2.0 * i / r.n_rot);
  auto corr_dim = [&](double turns) {
    return r.n_rot * std::log(r.n_ctx_orig / (turns * 2 * M_PI)) / (2 * std::log(double(r.freq_base)));
  };
  const double lo = std::max(0.0, std::floor(corr_dim(r.beta_fast)));
  const double hi = std::min(double(r.n_rot - 1), std::ceil(corr_dim(r.beta_slow)));
  const double ramp = std::clamp((i - lo) / (hi == lo ? 0.001 : hi - lo), 0.0, 1.0);
  return base_f / factor * ramp + base_f * (1 - ramp);
}

}  // namespace

std::unique_ptr<Model> make_deepseek2(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  ModelConfig c = read_config(file, options);
  const std::string a = c.arch + ".";
  // MLA GGUFs state the per-head q/k (nope + rope) and v widths in *_mla keys; key_length/value_length then
  // describe the latent (kv_lora + rope, kv_lora).
  c.head_dim_k = static_cast<int>(file.get_int(a + "attention.key_length_mla", c.head_dim_k));
  c.head_dim_v = static_cast<int>(file.get_int(a + "attention.value_length_mla", c.head_dim_v));
  if (c.kv_lora_rank <= 0 || c.rope.n_rot <= 0 || c.rope.n_rot >= c.head_dim_k || c.n_expert_used > c.n_expert)
    fail("{}: inconsistent deepseek2 hyper-parameters (kv_lora {}, rope {}, head_dim {}, experts {}/{})",
         file.path().string(), c.kv_lora_rank, c.rope.n_rot, c.head_dim_k, c.n_expert_used, c.n_expert);
  c.rope.neox = false;
  float kq_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim_k));
  const double factor = file.get_float(a + "rope.scaling.factor", 0.0);
  if (file.get_string(a + "rope.scaling.type", "none") == "yarn" && factor > 1) {
    RopeParams& r = c.rope;
    r.n_ctx_orig = static_cast<int>(file.get_int(a + "rope.scaling.original_context_length", c.n_ctx_train));
    r.beta_fast = static_cast<float>(file.get_float(a + "rope.scaling.yarn_beta_fast", 32.0));
    r.beta_slow = static_cast<float>(file.get_float(a + "rope.scaling.yarn_beta_slow", 1.0));
    const double mscale = 1.0 + file.get_float(a + "rope.scaling.yarn_log_multiplier", 0.1) * std::log(factor);
    kq_scale = static_cast<float>(kq_scale * mscale * mscale);
    // cos/sin are not scaled: HF's attention_factor is mscale(factor, mscale) / mscale(factor, mscale_all_dim)
    // = 1 for every released checkpoint (both 1.0), and llama.cpp's attn_factor cancels its own mscale.
    r.attn_factor = 1.0f;
    if (options.rope_freq_bf16) {
      // Reproduce transformers: it blends the frequencies (not the angles) and rounds the blend to bf16. Give
      // the backend the blended frequencies as divisors of the plain ones; it rounds them (freq_bf16).
      for (int i = 0; i < r.n_rot / 2; ++i) {
        const float plain = static_cast<float>(1.0 / std::pow(double(r.freq_base), double(2 * i) / r.n_rot));
        r.freq_factors.push_back(static_cast<float>(plain / yarn_inv_freq(i, r, factor)));
      }
    } else {
      r.freq_scale = static_cast<float>(1.0 / factor);  // llama.cpp's form: blend the two angles
      r.ext_factor = 1.0f;
    }
  }
  auto model = std::make_unique<Deepseek2Model>(file, backend, std::move(c));
  model->set_scale(kq_scale);
  return model;
}

}  // namespace uma
