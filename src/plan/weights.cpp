#include "plan/weights.h"

#include <algorithm>
#include <cctype>

#include "uma/error.h"

namespace uma::plan {
namespace {

constexpr uint32_t kIQ4_NL = 20;  // ggml id: llama.cpp's fallback for Q2_K/Q3_K rows not a multiple of 256

TensorSpec make(std::string name, std::initializer_list<int64_t> ne, int layer, TensorRole role) {
  TensorSpec t;
  t.name = std::move(name);
  int i = 0;
  for (int64_t n : ne) t.ne[i++] = n;
  t.n_dims = i;
  t.layer = layer;
  t.role = role;
  return t;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

StorageType ggml(uint32_t id) { return StorageType{id, false}; }
StorageType ggml(GgmlType t) { return StorageType{static_cast<uint32_t>(t), false}; }

// llama.cpp's "use more bits" layer pattern for attn_v / ffn_down in *_M recipes: the first and last eighth of the
// layers and every third layer in between get a bigger type.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

}  // namespace

std::vector<TensorSpec> tensor_table(const ModelShape& s) {
  using R = TensorRole;
  std::vector<TensorSpec> t;
  const int64_t E = s.n_embd;
  t.push_back(make("token_embd.weight", {E, s.n_vocab}, -1, R::token_embd));
  t.push_back(make("output_norm.weight", {E}, -1, R::norm));
  if (!s.tied_embeddings) t.push_back(make("output.weight", {E, s.n_vocab}, -1, R::output));
  if (s.rope_freqs) t.push_back(make("rope_freqs.weight", {s.head_dim / 2}, -1, R::norm));

  for (int il = 0; il < s.n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    t.push_back(make(b + "attn_norm.weight", {E}, il, R::norm));
    t.push_back(make(b + "ffn_norm.weight", {E}, il, R::norm));
    if (s.is_mla()) {
      const int64_t qk = s.qk_nope_head_dim + s.qk_rope_head_dim;
      if (s.q_lora_rank > 0) {
        t.push_back(make(b + "attn_q_a.weight", {E, s.q_lora_rank}, il, R::attention));
        t.push_back(make(b + "attn_q_a_norm.weight", {s.q_lora_rank}, il, R::norm));
        t.push_back(make(b + "attn_q_b.weight", {s.q_lora_rank, s.n_head * qk}, il, R::attention));
      } else {
        t.push_back(make(b + "attn_q.weight", {E, s.n_head * qk}, il, R::attention));
      }
      t.push_back(make(b + "attn_kv_a_mqa.weight", {E, s.kv_lora_rank + s.qk_rope_head_dim}, il, R::attention));
      t.push_back(make(b + "attn_kv_a_norm.weight", {s.kv_lora_rank}, il, R::norm));
      // kv_b split per head so the latent can be attended directly (absorbed MLA), as llama.cpp converts it.
      t.push_back(make(b + "attn_k_b.weight", {s.qk_nope_head_dim, s.kv_lora_rank, s.n_head}, il, R::attention));
      t.push_back(make(b + "attn_v_b.weight", {s.kv_lora_rank, s.v_head_dim, s.n_head}, il, R::attention));
      t.push_back(make(b + "attn_output.weight", {s.n_head * s.v_head_dim, E}, il, R::attention));
    } else {
      const int64_t q = s.n_head * s.head_dim, k = s.n_head_kv * s.head_dim, v = s.n_head_kv * s.head_dim_v;
      t.push_back(make(b + "attn_q.weight", {E, q}, il, R::attention));
      t.push_back(make(b + "attn_k.weight", {E, k}, il, R::attention));
      t.push_back(make(b + "attn_v.weight", {E, v}, il, R::attention));
      t.push_back(make(b + "attn_output.weight", {s.n_head * s.head_dim_v, E}, il, R::attention));
      if (s.qkv_bias) {
        t.push_back(make(b + "attn_q.bias", {q}, il, R::norm));
        t.push_back(make(b + "attn_k.bias", {k}, il, R::norm));
        t.push_back(make(b + "attn_v.bias", {v}, il, R::norm));
      }
      if (s.qk_norm) {
        t.push_back(make(b + "attn_q_norm.weight", {s.head_dim}, il, R::norm));
        t.push_back(make(b + "attn_k_norm.weight", {s.head_dim}, il, R::norm));
      }
    }
    if (!s.layer_is_moe(il)) {
      t.push_back(make(b + "ffn_gate.weight", {E, s.n_ff}, il, R::ffn));
      t.push_back(make(b + "ffn_up.weight", {E, s.n_ff}, il, R::ffn));
      t.push_back(make(b + "ffn_down.weight", {s.n_ff, E}, il, R::ffn));
      continue;
    }
    const int64_t X = s.n_expert, F = s.n_ff_exp;
    t.push_back(make(b + "ffn_gate_inp.weight", {E, X}, il, R::router));
    t.push_back(make(b + "ffn_gate_exps.weight", {E, F, X}, il, R::expert));
    t.push_back(make(b + "ffn_up_exps.weight", {E, F, X}, il, R::expert));
    t.push_back(make(b + "ffn_down_exps.weight", {F, E, X}, il, R::expert));
    if (s.expert_probs_bias) t.push_back(make(b + "exp_probs_b.bias", {X}, il, R::norm));
    if (s.n_expert_shared > 0) {
      const int64_t S = s.shexp_width();
      t.push_back(make(b + "ffn_gate_shexp.weight", {E, S}, il, R::shared_expert));
      t.push_back(make(b + "ffn_up_shexp.weight", {E, S}, il, R::shared_expert));
      t.push_back(make(b + "ffn_down_shexp.weight", {S, E}, il, R::shared_expert));
      if (s.arch == "qwen2moe") t.push_back(make(b + "ffn_gate_inp_shexp.weight", {E}, il, R::norm));
    }
  }
  return t;
}

std::string StorageType::name() const {
  if (fp8) return "FP8";
  auto tr = type_traits(ggml_id);
  return tr ? std::string(tr->name) : "type" + std::to_string(ggml_id);
}

bool StorageType::is_float() const {
  return !fp8 && (ggml_id == static_cast<uint32_t>(GgmlType::F32) || ggml_id == static_cast<uint32_t>(GgmlType::F16) ||
                  ggml_id == static_cast<uint32_t>(GgmlType::BF16));
}

StorageType storage(GgmlType type) { return ggml(type); }

uint64_t tensor_bytes(const TensorSpec& t, StorageType type) {
  const uint64_t rows = static_cast<uint64_t>(t.ne[1] * t.ne[2] * t.ne[3]);
  if (type.fp8) {
    // One byte per weight plus one F32 scale per 128x128 block of each matrix (DeepSeek's FP8 layout).
    const uint64_t blocks = static_cast<uint64_t>((t.ne[0] + 127) / 128) * static_cast<uint64_t>((t.ne[1] + 127) / 128) *
                            static_cast<uint64_t>(t.ne[2] * t.ne[3]);
    return static_cast<uint64_t>(t.n_elements()) + 4 * blocks;
  }
  auto tr = type_traits(type.ggml_id);
  if (!tr) fail("internal error: unknown tensor type id {}", type.ggml_id);
  if (t.ne[0] % tr->block_size != 0)
    fail("tensor {} has rows of {} values, not a multiple of {}'s block of {}", t.name, t.ne[0], tr->name, tr->block_size);
  return rows * static_cast<uint64_t>(t.ne[0] / tr->block_size) * tr->type_size;
}

namespace {

struct SchemeDef {
  const char* name;
  GgmlType base;
  bool mixed;
};
constexpr SchemeDef kSchemes[] = {
    {"F32", GgmlType::F32, false},     {"F16", GgmlType::F16, false},     {"BF16", GgmlType::BF16, false},
    {"Q8_0", GgmlType::Q8_0, false},   {"Q6_K", GgmlType::Q6_K, false},   {"Q5_0", GgmlType::Q5_0, false},
    {"Q5_1", GgmlType::Q5_1, false},   {"Q4_0", GgmlType::Q4_0, false},   {"Q4_1", GgmlType::Q4_1, false},
    {"Q5_K_M", GgmlType::Q5_K, true},  {"Q5_K_S", GgmlType::Q5_K, true},  {"Q4_K_M", GgmlType::Q4_K, true},
    {"Q4_K_S", GgmlType::Q4_K, true},  {"Q3_K_L", GgmlType::Q3_K, true},  {"Q3_K_M", GgmlType::Q3_K, true},
    {"Q3_K_S", GgmlType::Q3_K, true},  {"Q2_K", GgmlType::Q2_K, true},
};

}  // namespace

std::optional<QuantScheme> quant_scheme(std::string_view name) {
  std::string key = upper(name);
  if (key == "FP8" || key == "F8" || key == "F8_E4M3") return QuantScheme{"FP8", StorageType{0, true}, false};
  if (key == "Q4_K") key = "Q4_K_M";  // what people mean by "Q4_K" on a model hub
  if (key == "Q5_K") key = "Q5_K_M";
  if (key == "Q3_K") key = "Q3_K_M";
  for (const auto& s : kSchemes)
    if (key == s.name) return QuantScheme{s.name, ggml(s.base), s.mixed};
  return std::nullopt;
}

std::vector<std::string> quant_scheme_names() {
  std::vector<std::string> out;
  for (const auto& s : kSchemes) out.emplace_back(s.name);
  out.emplace_back("FP8");
  return out;
}

StorageType tensor_type(const TensorSpec& t, const QuantScheme& q, const ModelShape& s) {
  using R = TensorRole;
  const StorageType f32 = ggml(GgmlType::F32);
  // Vectors (norms, biases) and the MoE router stay F32 in converted and quantized files alike.
  if (t.n_dims < 2 || t.role == R::norm || t.role == R::router) return f32;
  if (q.base.is_float()) return q.base;
  if (q.base.fp8) {
    // DeepSeek publishes embeddings and the LM head in BF16, every other matrix in FP8.
    if (t.role == R::token_embd || t.role == R::output) return ggml(GgmlType::BF16);
    return q.base;
  }

  const std::string& n = t.name;
  const std::string scheme = q.name;
  const bool is_output = t.role == R::output || (t.role == R::token_embd && s.tied_embeddings);
  const int64_t il = t.layer, nl = s.n_layer;
  GgmlType type = static_cast<GgmlType>(q.base.ggml_id);
  auto is = [&](std::initializer_list<const char*> names) {
    return std::any_of(names.begin(), names.end(), [&](const char* x) { return scheme == x; });
  };

  if (is_output) {
    if (type != GgmlType::Q8_0) type = GgmlType::Q6_K;
  } else if (t.role == R::token_embd) {
    // the base type
  } else if (s.n_expert == 8 && (contains(n, "attn_k.weight") || contains(n, "attn_v.weight"))) {
    // llama.cpp: for 8-expert models the K/V projections are a tiny share of the bytes, so they get 8 bits.
    type = GgmlType::Q8_0;
  } else if (contains(n, "attn_v.weight")) {
    if (is({"Q4_K_M", "Q5_K_M"}) && use_more_bits(il, nl)) type = GgmlType::Q6_K;
    else if (is({"Q4_K_S"}) && il < 4) type = GgmlType::Q5_K;
    else if (is({"Q3_K_M"})) type = il < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
    else if (is({"Q3_K_L"})) type = GgmlType::Q5_K;
    else if (is({"Q2_K"})) type = s.n_head / std::max<int64_t>(1, s.n_head_kv) >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
  } else if (contains(n, "ffn_down")) {
    if (is({"Q4_K_M", "Q5_K_M"}) && use_more_bits(il, nl)) type = GgmlType::Q6_K;
    else if (is({"Q4_K_S"}) && il < nl / 8) type = GgmlType::Q5_K;
    else if (is({"Q3_K_M"})) type = il < nl / 16 ? GgmlType::Q5_K : use_more_bits(il, nl) ? GgmlType::Q4_K : GgmlType::Q3_K;
    else if (is({"Q3_K_L"})) type = GgmlType::Q5_K;
    else if (is({"Q2_K"})) type = GgmlType::Q3_K;
  } else if (contains(n, "attn_output.weight")) {
    if (s.n_expert == 8) {
      if (is({"Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"})) type = GgmlType::Q5_K;
    } else if (is({"Q2_K"})) {
      type = GgmlType::Q3_K;
    } else if (is({"Q3_K_M"})) {
      type = GgmlType::Q4_K;
    } else if (is({"Q3_K_L"})) {
      type = GgmlType::Q5_K;
    }
  }

  // Rows that are not a whole number of super-blocks fall back to a 32-wide type of similar size, as llama.cpp does.
  StorageType out = ggml(type);
  if (t.ne[0] % traits(type).block_size != 0) {
    switch (type) {
      case GgmlType::Q2_K: case GgmlType::Q3_K: out = ggml(kIQ4_NL); break;
      case GgmlType::Q4_K: out = ggml(GgmlType::Q5_0); break;
      case GgmlType::Q5_K: out = ggml(GgmlType::Q5_1); break;
      case GgmlType::Q6_K: out = ggml(GgmlType::Q8_0); break;
      default: break;
    }
    if (t.ne[0] % type_traits(out.ggml_id)->block_size != 0) out = ggml(GgmlType::F16);
  }
  return out;
}

WeightTotals weight_totals(const std::vector<TensorSpec>& tensors, const std::vector<StorageType>& types,
                           const ModelShape& s) {
  WeightTotals w;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const uint64_t bytes = tensor_bytes(t, types[i]);
    const uint64_t params = static_cast<uint64_t>(t.n_elements());
    w.bytes += bytes;
    w.params += params;
    if (t.role == TensorRole::expert) {
      // Per token only n_expert_used of n_expert experts run.
      w.active_bytes += bytes / s.n_expert * s.n_expert_used;
      w.active_params += params / s.n_expert * s.n_expert_used;
    } else if (t.role == TensorRole::token_embd && !s.tied_embeddings) {
      w.active_bytes += bytes / t.ne[1];  // one row per token
      w.active_params += params / t.ne[1];
    } else {
      w.active_bytes += bytes;
      w.active_params += params;
    }
  }
  return w;
}

}  // namespace uma::plan
