// uma synth: builds the tensor table and metadata of a shape, then streams random weights through
// GgufWriter.
//
// Speed: a 7B model has ~6.7e9 weights, and the reference k-quant quantizers search for scales, so
// quantizing every weight would take minutes. Instead, for each (type, fan-in) we draw a pool of 2^18 normal
// values with std 1/sqrt(fan_in), quantize it once with quantize_row, and build every row of every tensor of
// that kind by copying randomly chosen *blocks* of the pool (a quantized block carries its own scale, so any
// sequence of blocks is a valid row). The pool holds 8192 Q4_0 blocks (1024 k-quant blocks); with a fresh
// PRNG choice per block the rows do not repeat and the value distribution is that of the pool. Writing is
// then memcpy speed across all cores, bounded by the disk. Float types use chunks of 32 values as "blocks".
#include "synth/synth.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numbers>
#include <unordered_set>

#include <fmt/format.h>

#include "gguf/gguf_writer.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"
#include "tokenizer/utf8.h"
#include "uma/error.h"

namespace uma {
namespace {

// ---- random numbers -------------------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Standard normal values (Box-Muller); only used to fill the small pools.
void fill_normal(uint64_t seed, float* out, size_t n, float mean, float std) {
  uint64_t st = seed;
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = (static_cast<double>(splitmix64(st) >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(splitmix64(st) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[i] = static_cast<float>(mean + std * r * std::cos(2 * std::numbers::pi * u2));
    if (i + 1 < n) out[i + 1] = static_cast<float>(mean + std * r * std::sin(2 * std::numbers::pi * u2));
  }
}

// ---- types ----------------------------------------------------------------------------------------------

struct TypeEntry {
  std::string_view name;
  GgmlType base, output, more_bits;
  SynthType::Rule rule;
  uint32_t file_type;
};

using R = SynthType::Rule;
using T = GgmlType;
// Mixes after llama.cpp's llama_tensor_get_type, simplified: output.weight gets Q6_K; attn_v and ffn_down
// (also the expert and shared-expert ffn_down) get the larger type on the "use_more_bits" layers — the first
// and last eighth and every third layer between (about 40% of layers) — for *_M, and on the first eighth for
// *_S. llama.cpp's special cases (GQA-dependent attn_v, 8-expert models, ...) are left out.
constexpr TypeEntry kTypes[] = {
    {"f32", T::F32, T::F32, T::F32, R::None, 0},       {"f16", T::F16, T::F16, T::F16, R::None, 1},
    {"bf16", T::BF16, T::BF16, T::BF16, R::None, 32},  {"q4_0", T::Q4_0, T::Q4_0, T::Q4_0, R::None, 2},
    {"q4_1", T::Q4_1, T::Q4_1, T::Q4_1, R::None, 3},   {"q5_0", T::Q5_0, T::Q5_0, T::Q5_0, R::None, 8},
    {"q5_1", T::Q5_1, T::Q5_1, T::Q5_1, R::None, 9},   {"q8_0", T::Q8_0, T::Q8_0, T::Q8_0, R::None, 7},
    {"q2_k", T::Q2_K, T::Q2_K, T::Q2_K, R::None, 10},  {"q3_k", T::Q3_K, T::Q3_K, T::Q3_K, R::None, 11},
    {"q4_k", T::Q4_K, T::Q4_K, T::Q4_K, R::None, 14},  {"q5_k", T::Q5_K, T::Q5_K, T::Q5_K, R::None, 16},
    {"q6_k", T::Q6_K, T::Q6_K, T::Q6_K, R::None, 18},
    {"q4_k_s", T::Q4_K, T::Q6_K, T::Q5_K, R::FirstEighth, 14},
    {"q4_k_m", T::Q4_K, T::Q6_K, T::Q6_K, R::UseMoreBits, 15},
    {"q5_k_s", T::Q5_K, T::Q6_K, T::Q5_K, R::None, 16},
    {"q5_k_m", T::Q5_K, T::Q6_K, T::Q6_K, R::UseMoreBits, 17},
};

bool use_more_bits(int il, int n_layer) {
  return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
}

// A row length the type's blocks do not divide: llama.cpp's fallbacks (IQ4_NL, which uma lacks, becomes
// Q4_0 of the same size).
GgmlType fit_row(GgmlType t, int64_t ne0) {
  if (ne0 % traits(t).block_size == 0) return t;
  switch (t) {
    case T::Q2_K: case T::Q3_K: t = T::Q4_0; break;
    case T::Q4_K: t = T::Q5_0; break;
    case T::Q5_K: t = T::Q5_1; break;
    case T::Q6_K: t = T::Q8_0; break;
    default: t = T::F16; break;
  }
  return ne0 % traits(t).block_size == 0 ? t : T::F16;
}

// ---- tensor table ---------------------------------------------------------------------------------------

enum class Kind { Matrix, Router, Norm, Bias };

struct Spec {
  std::string name;
  std::vector<int64_t> shape;  // GGUF order
  Kind kind;
  int layer = -1;
};

std::vector<Spec> tensor_table(const SynthShape& s) {
  std::vector<Spec> t;
  const int64_t E = s.n_embd, V = s.n_vocab, H = s.n_head, KV = s.n_head_kv, hd = s.head_dim_or_default();
  t.push_back({"token_embd.weight", {E, V}, Kind::Matrix});
  t.push_back({"output_norm.weight", {E}, Kind::Norm});
  if (!s.tied_embeddings) t.push_back({"output.weight", {E, V}, Kind::Matrix});
  for (int il = 0; il < s.n_layer; ++il) {
    const std::string p = fmt::format("blk.{}.", il);
    auto add = [&](std::string n, std::vector<int64_t> shape, Kind k) { t.push_back({p + n, std::move(shape), k, il}); };
    add("attn_norm.weight", {E}, Kind::Norm);
    if (s.kv_lora_rank > 0) {  // multi-head latent attention, as llama.cpp's deepseek2 stores it
      const int64_t qk = s.qk_nope_dim + s.qk_rope_dim;
      if (s.q_lora_rank > 0) {
        add("attn_q_a.weight", {E, s.q_lora_rank}, Kind::Matrix);
        add("attn_q_a_norm.weight", {s.q_lora_rank}, Kind::Norm);
        add("attn_q_b.weight", {s.q_lora_rank, H * qk}, Kind::Matrix);
      } else {
        add("attn_q.weight", {E, H * qk}, Kind::Matrix);
      }
      add("attn_kv_a_mqa.weight", {E, s.kv_lora_rank + s.qk_rope_dim}, Kind::Matrix);
      add("attn_kv_a_norm.weight", {s.kv_lora_rank}, Kind::Norm);
      add("attn_k_b.weight", {s.qk_nope_dim, s.kv_lora_rank, H}, Kind::Matrix);
      add("attn_v_b.weight", {s.kv_lora_rank, s.v_head_dim, H}, Kind::Matrix);
      add("attn_output.weight", {H * s.v_head_dim, E}, Kind::Matrix);
    } else {
      add("attn_q.weight", {E, H * hd}, Kind::Matrix);
      add("attn_k.weight", {E, KV * hd}, Kind::Matrix);
      add("attn_v.weight", {E, KV * hd}, Kind::Matrix);
      if (s.qkv_bias) {
        add("attn_q.bias", {H * hd}, Kind::Bias);
        add("attn_k.bias", {KV * hd}, Kind::Bias);
        add("attn_v.bias", {KV * hd}, Kind::Bias);
      }
      if (s.qk_norm) {
        add("attn_q_norm.weight", {hd}, Kind::Norm);
        add("attn_k_norm.weight", {hd}, Kind::Norm);
      }
      add("attn_output.weight", {H * hd, E}, Kind::Matrix);
    }
    add("ffn_norm.weight", {E}, Kind::Norm);
    if (s.n_expert > 0 && il >= s.n_layer_dense_lead) {
      const int64_t X = s.n_expert, F = s.n_ff_exp;
      add("ffn_gate_inp.weight", {E, X}, Kind::Router);
      if (s.arch == "deepseek2") add("exp_probs_b.bias", {X}, Kind::Bias);
      add("ffn_gate_exps.weight", {E, F, X}, Kind::Matrix);
      add("ffn_up_exps.weight", {E, F, X}, Kind::Matrix);
      add("ffn_down_exps.weight", {F, E, X}, Kind::Matrix);
      if (s.n_expert_shared > 0) {
        const int64_t FS = F * s.n_expert_shared;
        add("ffn_gate_shexp.weight", {E, FS}, Kind::Matrix);
        add("ffn_up_shexp.weight", {E, FS}, Kind::Matrix);
        add("ffn_down_shexp.weight", {FS, E}, Kind::Matrix);
      }
    } else {
      add("ffn_gate.weight", {E, s.n_ff}, Kind::Matrix);
      add("ffn_up.weight", {E, s.n_ff}, Kind::Matrix);
      add("ffn_down.weight", {s.n_ff, E}, Kind::Matrix);
    }
  }
  return t;
}

GgmlType tensor_type(const SynthType& st, const Spec& t, int n_layer) {
  if (t.kind != Kind::Matrix) return T::F32;  // norms, biases and routers stay F32, as llama.cpp keeps them
  GgmlType type = st.base;
  const bool more = (st.more_bits_rule == R::UseMoreBits && use_more_bits(t.layer, n_layer)) ||
                    (st.more_bits_rule == R::FirstEighth && t.layer < std::max(1, n_layer / 8));
  if (t.name == "output.weight") {
    type = st.output;
  } else if (t.layer >= 0 && more &&
             (t.name.ends_with(".attn_v.weight") || t.name.find(".ffn_down") != std::string::npos)) {
    type = st.more_bits;
  }
  return fit_row(type, t.shape[0]);
}

// ---- tokenizer ------------------------------------------------------------------------------------------

// llama.cpp token types.
constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6;

// Bijective base-26 spelling: 1 -> "a", 26 -> "z", 27 -> "aa", ... (distinct numbers give distinct words).
std::string letters(uint64_t k) {
  std::string w;
  for (; k > 0; k = (k - 1) / 26) w.insert(w.begin(), static_cast<char>('a' + (k - 1) % 26));
  return w;
}

void add_spm_vocab(GgufWriter& w, const SynthShape& s) {
  const int32_t n = s.n_vocab;
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  tokens.reserve(n);
  auto push = [&](std::string text, float score, int32_t type) {
    tokens.push_back(std::move(text));
    scores.push_back(score);
    types.push_back(type);
  };
  push("<unk>", 0, kUnknown);
  push("<s>", 0, kControl);
  push("</s>", 0, kControl);
  for (int b = 0; b < 256 && static_cast<int32_t>(tokens.size()) < n; ++b) push(fmt::format("<0x{:02X}>", b), 0, kByte);
  // The word-start marker "▁" alone, then pieces alternating with and without it, most likely first.
  if (static_cast<int32_t>(tokens.size()) < n) push("\xE2\x96\x81", 0, kNormal);
  for (uint64_t k = 0; static_cast<int32_t>(tokens.size()) < n; ++k)
    push((k % 2 == 0 ? "\xE2\x96\x81" : "") + letters(k / 2 + 1), -static_cast<float>(k), kNormal);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_f32_array("tokenizer.ggml.scores", scores);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
}

// Byte-level BPE: the 256 byte characters, then tokens made by merging two existing tokens chosen at random
// (each merge is recorded, so the tokenizer can reach every token), then the special tokens at their ids.
void add_gpt2_vocab(GgufWriter& w, const SynthShape& s, uint64_t seed) {
  const int32_t n = s.n_vocab;
  std::vector<std::string> tokens(n);
  std::vector<int32_t> types(n, kNormal);
  std::vector<uint8_t> is_special(n, 0);
  for (const auto& [id, text] : s.vocab.specials) {
    tokens[id] = std::string(text);
    types[id] = kControl;
    is_special[id] = 1;
  }
  int32_t n_normal = 0;
  for (int32_t id = 0; id < n; ++id) {
    if (is_special[id]) continue;
    if (s.vocab.first_reserved >= 0 && id >= s.vocab.first_reserved) {
      tokens[id] = fmt::format("<|reserved_special_token_{}|>", id);
      types[id] = kControl;
      is_special[id] = 1;
    } else {
      ++n_normal;
    }
  }
  std::vector<std::string> normal;
  normal.reserve(n_normal);
  for (int b = 0; b < 256 && static_cast<int32_t>(normal.size()) < n_normal; ++b)
    normal.push_back(utf8::bytes_to_unicode(std::string(1, static_cast<char>(b))));
  std::unordered_set<std::string> seen(normal.begin(), normal.end());
  std::vector<std::string> merges;
  uint64_t st = seed ^ 0x746f6b656e73ull;
  while (static_cast<int32_t>(normal.size()) < n_normal) {
    // Favour short, early tokens on the left so that the vocabulary grows word-like pieces.
    const size_t cur = normal.size();
    const std::string& a = normal[splitmix64(st) % std::min<size_t>(cur, 4096)];
    const std::string& b = normal[splitmix64(st) % cur];
    std::string merged = a + b;
    if (merged.size() > 24 || !seen.insert(merged).second) continue;
    merges.push_back(a + " " + b);
    normal.push_back(std::move(merged));
  }
  for (int32_t id = 0, k = 0; id < n; ++id)
    if (!is_special[id]) tokens[id] = std::move(normal[k++]);
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", std::string(s.vocab.pre));
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
}

// ---- metadata -------------------------------------------------------------------------------------------

void add_metadata(GgufWriter& w, const SynthShape& s, const SynthType& type) {
  const std::string a = std::string(s.arch) + ".";
  w.set_string("general.architecture", std::string(s.arch));
  w.set_string("general.name", fmt::format("synthetic {} (random weights)", s.name));
  w.set_string("general.source.url", std::string(s.source));
  w.set_u32("general.file_type", type.file_type);
  w.set_u32("general.quantization_version", 2);
  w.set_u32(a + "vocab_size", s.n_vocab);
  w.set_u32(a + "context_length", static_cast<uint32_t>(s.n_ctx_train));
  w.set_u32(a + "embedding_length", s.n_embd);
  w.set_u32(a + "block_count", s.n_layer);
  w.set_u32(a + "feed_forward_length", s.n_ff);
  w.set_u32(a + "attention.head_count", s.n_head);
  w.set_f32(a + "rope.freq_base", s.rope_base);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", s.norm_eps);
  if (s.kv_lora_rank > 0) {
    // llama.cpp's MLA layout: the cache holds one latent "head" of kv_lora_rank + rope dims; the
    // per-head q/k and v widths of the decompressed attention are the *_mla keys.
    w.set_u32(a + "attention.head_count_kv", 1);
    w.set_u32(a + "attention.q_lora_rank", s.q_lora_rank);
    w.set_u32(a + "attention.kv_lora_rank", s.kv_lora_rank);
    w.set_u32(a + "attention.key_length", s.kv_lora_rank + s.qk_rope_dim);
    w.set_u32(a + "attention.value_length", s.kv_lora_rank);
    w.set_u32(a + "attention.key_length_mla", s.qk_nope_dim + s.qk_rope_dim);
    w.set_u32(a + "attention.value_length_mla", s.v_head_dim);
    w.set_u32(a + "rope.dimension_count", s.qk_rope_dim);
    w.set_string(a + "rope.scaling.type", "yarn");
    w.set_f32(a + "rope.scaling.factor", 40.0f);
    w.set_u32(a + "rope.scaling.original_context_length", 4096);
    w.set_f32(a + "rope.scaling.yarn_log_multiplier", 0.1f);
    w.set_f32(a + "expert_weights_scale", 2.5f);
    w.set_bool(a + "expert_weights_norm", true);
    w.set_u32(a + "expert_gating_func", 2);  // sigmoid
  } else {
    w.set_u32(a + "attention.head_count_kv", s.n_head_kv);
    w.set_u32(a + "rope.dimension_count", s.head_dim_or_default());
    if (s.head_dim > 0) {
      w.set_u32(a + "attention.key_length", s.head_dim);
      w.set_u32(a + "attention.value_length", s.head_dim);
    }
  }
  if (s.n_expert > 0) {
    w.set_u32(a + "expert_count", s.n_expert);
    w.set_u32(a + "expert_used_count", s.n_expert_used);
    if (s.write_expert_ff_key) w.set_u32(a + "expert_feed_forward_length", s.n_ff_exp);
    if (s.n_expert_shared > 0) w.set_u32(a + "expert_shared_count", s.n_expert_shared);
    if (s.arch == "deepseek2") w.set_u32(a + "leading_dense_block_count", s.n_layer_dense_lead);
  }
}

// ---- data -----------------------------------------------------------------------------------------------

// Quantized random values that rows are assembled from (see the top of the file).
struct Pool {
  std::vector<uint8_t> bytes;
  size_t unit_bytes = 0;  // one block (or 32 floats)
  int64_t unit_values = 0;
  int64_t n_units = 0;
};

constexpr int64_t kPoolValues = int64_t{1} << 18;

std::unique_ptr<Pool> make_pool(GgmlType type, int64_t ne0, uint64_t seed) {
  auto p = std::make_unique<Pool>();
  const TypeTraits& tt = traits(type);
  p->unit_values = tt.block_size > 1 ? tt.block_size : (ne0 % 32 == 0 ? 32 : 1);
  const float std = 1.0f / std::sqrt(static_cast<float>(ne0));  // keeps activations O(1) through a layer
  p->unit_bytes = row_bytes(type, p->unit_values);
  p->n_units = kPoolValues / p->unit_values;
  std::vector<float> values(kPoolValues);
  fill_normal(seed, values.data(), values.size(), 0.0f, std);
  p->bytes.resize(row_bytes(type, kPoolValues));
  quantize_row(type, values.data(), p->bytes.data(), kPoolValues);
  return p;
}

}  // namespace

std::optional<SynthType> synth_type_from_name(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& e : kTypes)
    if (e.name == lower) return SynthType{lower, e.base, e.output, e.more_bits, e.rule, e.file_type};
  return std::nullopt;
}

std::vector<SynthTensor> synth_tensors(const SynthShape& shape, const SynthType& type) {
  std::vector<SynthTensor> out;
  for (Spec& t : tensor_table(shape)) {
    const GgmlType tt = tensor_type(type, t, shape.n_layer);
    out.push_back({std::move(t.name), std::move(t.shape), tt});
  }
  return out;
}

std::string synth_type_names() {
  std::string out;
  for (const auto& e : kTypes) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

SynthResult write_synthetic_model(const SynthOptions& o, const std::filesystem::path& path) {
  const auto t0 = std::chrono::steady_clock::now();
  const SynthShape* found = find_synth_shape(o.shape);
  if (!found) fail("unknown model shape '{}'; uma synth knows: {}", o.shape, synth_shape_names());
  const auto type = synth_type_from_name(o.type);
  if (!type) fail("unknown tensor type '{}'; uma synth writes: {}", o.type, synth_type_names());
  SynthShape s = *found;
  if (o.n_layer < 0) fail("--layers must be positive (got {}); leave it out to keep the shape's {} layers", o.n_layer, s.n_layer);
  if (o.n_layer > 0) s.n_layer = o.n_layer;

  GgufWriter w;
  add_metadata(w, s, *type);
  if (s.vocab.model == "llama") {
    add_spm_vocab(w, s);
  } else {
    add_gpt2_vocab(w, s, o.seed);
  }
  w.set_u32("tokenizer.ggml.bos_token_id", s.vocab.bos);
  w.set_u32("tokenizer.ggml.eos_token_id", s.vocab.eos);
  if (s.vocab.eot >= 0) w.set_u32("tokenizer.ggml.eot_token_id", s.vocab.eot);
  w.set_bool("tokenizer.ggml.add_bos_token", s.vocab.add_bos);

  auto pool_threads = std::make_shared<ThreadPool>(o.n_threads);
  auto pools = std::make_shared<std::map<std::pair<GgmlType, int64_t>, std::unique_ptr<Pool>>>();
  SynthResult result;
  for (const Spec& t : tensor_table(s)) {
    const GgmlType tt = tensor_type(*type, t, s.n_layer);
    int64_t n = 1;
    for (auto d : t.shape) n *= d;
    result.n_params += n;
    ++result.n_tensors;
    const uint64_t tseed = o.seed * 0x9E3779B97F4A7C15ull ^ fnv1a(t.name);
    if (t.kind == Kind::Norm || t.kind == Kind::Bias) {
      // Norm weights near one (a trained model's are not exactly one); biases small.
      const float mean = t.kind == Kind::Norm ? 1.0f : 0.0f;
      w.add_tensor(t.name, tt, t.shape, [n, tseed, mean](uint8_t* dst, size_t) {
        fill_normal(tseed, reinterpret_cast<float*>(dst), static_cast<size_t>(n), mean, 0.02f);
      });
      continue;
    }
    const int64_t ne0 = t.shape[0];
    const int64_t rows = n / ne0;
    w.add_tensor(t.name, tt, t.shape, [=, seed = o.seed](uint8_t* dst, size_t) {
      auto& slot = (*pools)[{tt, ne0}];
      if (!slot) slot = make_pool(tt, ne0, seed ^ (uint64_t(tt) << 32) ^ ne0);
      const Pool& p = *slot;
      const int64_t units = ne0 / p.unit_values;
      const size_t row_size = units * p.unit_bytes;
      pool_threads->parallel_for(rows, 64, [&](int, int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          uint64_t st = tseed ^ (static_cast<uint64_t>(r) * 0xD1B54A32D192ED03ull);
          uint8_t* out = dst + r * row_size;
          for (int64_t u = 0; u < units; ++u) {
            const uint64_t pick = ((splitmix64(st) >> 32) * static_cast<uint64_t>(p.n_units)) >> 32;
            std::memcpy(out + u * p.unit_bytes, p.bytes.data() + pick * p.unit_bytes, p.unit_bytes);
          }
        }
      });
    });
  }
  result.file_bytes = w.write(path);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace uma
