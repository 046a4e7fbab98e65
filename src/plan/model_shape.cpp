#include "plan/model_shape.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "plan/plan_data.h"
#include "plan/weights.h"
#include "uma/error.h"

namespace uma::plan {
namespace {

using nlohmann::json;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A JSON integer field that may be absent or null (HF configs write "q_lora_rank": null).
int64_t get_int(const json& j, const char* key, int64_t fallback = 0) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail("field '{}' should be a number but is {}", key, it->dump());
  return it->get<int64_t>();
}

bool get_bool(const json& j, const char* key, bool fallback = false) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<bool>();
}

std::string get_str(const json& j, const char* key, std::string fallback = "") {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return fallback;
  return it->get<std::string>();
}

// A GGUF integer that some architectures store per layer as an array: the largest entry bounds memory.
int64_t gguf_int(const GgufFile& f, const std::string& key, int64_t fallback) {
  const GgufValue* v = f.find(key);
  if (!v) return fallback;
  if (v->type == GgufType::ARRAY) {
    auto values = f.get_int_array(key);
    return values.empty() ? fallback : *std::max_element(values.begin(), values.end());
  }
  return f.get_int(key);
}

struct CatalogEntry {
  ModelShape shape;
  std::vector<std::string> aliases;
};

std::vector<CatalogEntry> parse_entries(std::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("models")) fail("the model catalog is not valid JSON with a 'models' array; fix data/models.json");
  std::vector<CatalogEntry> out;
  for (const auto& m : doc["models"]) {
    ModelShape s;
    s.name = get_str(m, "name");
    s.arch = get_str(m, "arch", "llama");
    s.source = get_str(m, "source");
    s.n_layer = get_int(m, "n_layer");
    s.n_embd = get_int(m, "n_embd");
    s.n_head = get_int(m, "n_head");
    s.n_head_kv = get_int(m, "n_head_kv");
    s.head_dim = get_int(m, "head_dim");
    s.head_dim_v = get_int(m, "head_dim_v");
    s.n_ff = get_int(m, "n_ff");
    s.n_vocab = get_int(m, "n_vocab");
    s.n_ctx_train = get_int(m, "n_ctx_train");
    s.tied_embeddings = get_bool(m, "tied_embeddings");
    s.qkv_bias = get_bool(m, "qkv_bias");
    s.qk_norm = get_bool(m, "qk_norm");
    s.rope_freqs = get_bool(m, "rope_freqs");
    s.n_expert = get_int(m, "n_expert");
    s.n_expert_used = get_int(m, "n_expert_used");
    s.n_ff_exp = get_int(m, "n_ff_exp");
    s.n_expert_shared = get_int(m, "n_expert_shared");
    s.n_ff_shexp = get_int(m, "n_ff_shexp");
    s.n_layer_dense_lead = get_int(m, "n_layer_dense_lead");
    s.q_lora_rank = get_int(m, "q_lora_rank");
    s.kv_lora_rank = get_int(m, "kv_lora_rank");
    s.qk_nope_head_dim = get_int(m, "qk_nope_head_dim");
    s.qk_rope_head_dim = get_int(m, "qk_rope_head_dim");
    s.v_head_dim = get_int(m, "v_head_dim");
    s.native_dtype = get_str(m, "native_dtype", "BF16");
    // DeepSeek-V3/R1 route with a learned bias (noaux_tc); V2 does not.
    s.expert_probs_bias = s.arch == "deepseek2" && s.n_expert >= 256;
    CatalogEntry e{finalize_shape(std::move(s)), {}};
    if (m.contains("aliases"))
      for (const auto& a : m["aliases"]) e.aliases.push_back(lower(a.get<std::string>()));
    out.push_back(std::move(e));
  }
  return out;
}

const std::vector<CatalogEntry>& catalog_entries() {
  static const std::vector<CatalogEntry> entries = parse_entries(embedded_models_json());
  return entries;
}

}  // namespace

ModelShape finalize_shape(ModelShape s) {
  auto need = [&](int64_t v, const char* what) {
    if (v <= 0) fail("model '{}' has no {}; the shape needs it to size the weights", s.name, what);
  };
  need(s.n_layer, "layer count (n_layer)");
  need(s.n_embd, "hidden size (n_embd)");
  need(s.n_head, "attention head count (n_head)");
  need(s.n_vocab, "vocabulary size (n_vocab)");
  if (s.n_head_kv <= 0) s.n_head_kv = s.n_head;
  if (s.head_dim <= 0) s.head_dim = s.n_embd / s.n_head;
  if (s.head_dim_v <= 0) s.head_dim_v = s.head_dim;
  if (s.is_mla()) {
    need(s.qk_rope_head_dim, "MLA rope head dim (qk_rope_head_dim)");
    need(s.qk_nope_head_dim, "MLA no-rope head dim (qk_nope_head_dim)");
    need(s.v_head_dim, "MLA value head dim (v_head_dim)");
    s.head_dim = s.qk_nope_head_dim + s.qk_rope_head_dim;
    s.head_dim_v = s.v_head_dim;
    s.n_head_kv = s.n_head;
  }
  if (s.is_moe()) {
    need(s.n_expert_used, "active expert count (n_expert_used)");
    if (s.n_ff_exp <= 0) s.n_ff_exp = s.n_ff;
    need(s.n_ff_exp, "expert FFN width (n_ff_exp)");
  }
  if (!s.is_moe() || s.n_layer_dense_lead > 0) need(s.n_ff, "FFN width (n_ff)");
  if (s.n_ctx_train <= 0) s.n_ctx_train = 4096;
  return s;
}

std::vector<ModelShape> parse_model_catalog(std::string_view json_text) {
  std::vector<ModelShape> out;
  for (auto& e : parse_entries(json_text)) out.push_back(std::move(e.shape));
  return out;
}

const std::vector<ModelShape>& model_catalog() {
  static const std::vector<ModelShape> shapes = [] {
    std::vector<ModelShape> out;
    for (const auto& e : catalog_entries()) out.push_back(e.shape);
    return out;
  }();
  return shapes;
}

std::optional<ModelShape> find_model(std::string_view name) {
  std::string key = lower(name);
  for (const auto& e : catalog_entries()) {
    if (lower(e.shape.name) == key) return e.shape;
    for (const auto& a : e.aliases)
      if (a == key) return e.shape;
  }
  return std::nullopt;
}

ModelShape shape_from_gguf(const GgufFile& f) {
  ModelShape s;
  s.arch = f.get_string("general.architecture");
  s.name = f.get_string("general.name", f.path().stem().string());
  s.source = f.path().string();
  s.tokenizer = f.get_string("tokenizer.ggml.model", "");
  const std::string p = s.arch + ".";
  s.n_layer = gguf_int(f, p + "block_count", 0);
  s.n_embd = gguf_int(f, p + "embedding_length", 0);
  s.n_head = gguf_int(f, p + "attention.head_count", 0);
  s.n_head_kv = gguf_int(f, p + "attention.head_count_kv", s.n_head);
  s.n_ff = gguf_int(f, p + "feed_forward_length", 0);
  s.n_ctx_train = gguf_int(f, p + "context_length", 0);
  s.head_dim = gguf_int(f, p + "attention.key_length", 0);
  s.head_dim_v = gguf_int(f, p + "attention.value_length", s.head_dim);
  s.n_expert = gguf_int(f, p + "expert_count", 0);
  s.n_expert_used = gguf_int(f, p + "expert_used_count", 0);
  s.n_ff_exp = gguf_int(f, p + "expert_feed_forward_length", 0);
  s.n_expert_shared = gguf_int(f, p + "expert_shared_count", 0);
  s.n_ff_shexp = gguf_int(f, p + "expert_shared_feed_forward_length", 0);
  s.n_layer_dense_lead = gguf_int(f, p + "leading_dense_block_count", 0);
  s.q_lora_rank = gguf_int(f, p + "attention.q_lora_rank", 0);
  s.kv_lora_rank = gguf_int(f, p + "attention.kv_lora_rank", 0);
  if (s.kv_lora_rank > 0) {
    s.qk_rope_head_dim = gguf_int(f, p + "rope.dimension_count", 0);
    // Newer converters store the per-head sizes of the decompressed attention under *_mla and the latent sizes
    // under key_length/value_length; older ones only the former under key_length/value_length.
    int64_t k = gguf_int(f, p + "attention.key_length_mla", s.head_dim);
    s.v_head_dim = gguf_int(f, p + "attention.value_length_mla", s.head_dim_v);
    s.qk_nope_head_dim = k - s.qk_rope_head_dim;
  }
  if (s.n_expert > 0 && s.n_ff_exp == 0) s.n_ff_exp = s.n_ff;  // Mixtral-style files
  if (s.n_expert_shared > 0 && s.n_ff_shexp == s.n_ff_exp * s.n_expert_shared) s.n_ff_shexp = 0;

  const GgufTensor* embd = f.find_tensor("token_embd.weight");
  s.n_vocab = gguf_int(f, p + "vocab_size", 0);
  if (s.n_vocab == 0 && f.has("tokenizer.ggml.tokens")) s.n_vocab = static_cast<int64_t>(f.find("tokenizer.ggml.tokens")->count);
  if (embd) s.n_vocab = embd->ne[1];
  s.tied_embeddings = f.find_tensor("output.weight") == nullptr;
  s.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  s.qk_norm = f.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  s.rope_freqs = f.find_tensor("rope_freqs.weight") != nullptr;
  s.expert_probs_bias =
      f.find_tensor("blk." + std::to_string(s.n_layer_dense_lead) + ".exp_probs_b.bias") != nullptr;
  // The file's dominant float type is what the model was converted from.
  s.native_dtype = "F32";
  for (const auto& t : f.tensors())
    if (t.type == GgmlType::F16 || t.type == GgmlType::BF16) { s.native_dtype = std::string(type_name(t.type)); break; }
  return finalize_shape(std::move(s));
}

ModelShape shape_from_hf_config(std::string_view text, std::string name) {
  json c = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (c.is_discarded() || !c.is_object()) fail("config.json of '{}' is not a JSON object; pass a Hugging Face config.json", name);
  // Multimodal configs nest the language model.
  if (c.contains("text_config") && c["text_config"].is_object()) c = c["text_config"];
  ModelShape s;
  s.name = std::move(name);
  const std::string type = get_str(c, "model_type");
  s.n_layer = get_int(c, "num_hidden_layers");
  s.n_embd = get_int(c, "hidden_size");
  s.n_head = get_int(c, "num_attention_heads");
  s.n_head_kv = get_int(c, "num_key_value_heads", s.n_head);
  s.head_dim = get_int(c, "head_dim");
  s.n_ff = get_int(c, "intermediate_size");
  s.n_vocab = get_int(c, "vocab_size");
  s.n_ctx_train = get_int(c, "max_position_embeddings");
  s.tied_embeddings = get_bool(c, "tie_word_embeddings");
  auto rope_type = [&](const char* key) {
    return c.contains(key) && c[key].is_object() ? get_str(c[key], "rope_type", get_str(c[key], "type")) : "";
  };
  s.rope_freqs = rope_type("rope_scaling") == "llama3" || rope_type("rope_parameters") == "llama3";
  std::string dtype = lower(get_str(c, "dtype", get_str(c, "torch_dtype", "bfloat16")));
  s.native_dtype = dtype == "float16" ? "F16" : dtype == "float32" ? "F32" : "BF16";
  if (c.contains("quantization_config") && lower(get_str(c["quantization_config"], "quant_method")) == "fp8")
    s.native_dtype = "FP8";

  if (type == "llama" || type == "mistral") {
    s.arch = "llama";
  } else if (type == "mixtral") {
    s.arch = "llama";
    s.n_expert = get_int(c, "num_local_experts");
    s.n_expert_used = get_int(c, "num_experts_per_tok");
    s.n_ff_exp = s.n_ff;
  } else if (type == "qwen2") {
    s.arch = "qwen2";
    s.qkv_bias = true;
  } else if (type == "qwen3") {
    s.arch = "qwen3";
    s.qk_norm = true;
  } else if (type == "qwen3_moe") {
    s.arch = "qwen3moe";
    s.qk_norm = true;
    s.n_expert = get_int(c, "num_experts", get_int(c, "num_local_experts"));
    s.n_expert_used = get_int(c, "num_experts_per_tok");
    s.n_ff_exp = get_int(c, "moe_intermediate_size");
  } else if (type == "qwen2_moe") {
    s.arch = "qwen2moe";
    s.qkv_bias = true;
    s.n_expert = get_int(c, "num_experts");
    s.n_expert_used = get_int(c, "num_experts_per_tok");
    s.n_ff_exp = get_int(c, "moe_intermediate_size");
    s.n_expert_shared = 1;
    s.n_ff_shexp = get_int(c, "shared_expert_intermediate_size");
  } else if (type == "deepseek_v3" || type == "deepseek_v2") {
    s.arch = "deepseek2";
    s.n_expert = get_int(c, "n_routed_experts");
    s.n_expert_used = get_int(c, "num_experts_per_tok");
    s.n_ff_exp = get_int(c, "moe_intermediate_size");
    s.n_expert_shared = get_int(c, "n_shared_experts");
    s.n_layer_dense_lead = get_int(c, "first_k_dense_replace");
    s.q_lora_rank = get_int(c, "q_lora_rank");
    s.kv_lora_rank = get_int(c, "kv_lora_rank");
    s.qk_nope_head_dim = get_int(c, "qk_nope_head_dim");
    s.qk_rope_head_dim = get_int(c, "qk_rope_head_dim");
    s.v_head_dim = get_int(c, "v_head_dim");
    s.expert_probs_bias = get_str(c, "topk_method") == "noaux_tc";
    s.head_dim = 0;  // finalize_shape derives it from the MLA dims
  } else {
    fail("config.json model_type '{}' is not one uma plan knows (llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, "
         "qwen3_moe, deepseek_v2, deepseek_v3); plan the GGUF file instead", type);
  }
  if (s.n_expert > 0 && s.n_expert_used == 0) s.n_expert_used = 1;
  return finalize_shape(std::move(s));
}

}  // namespace uma::plan

namespace uma::plan {

std::vector<TensorSpec> gguf_tensor_specs(const GgufFile& f) {
  std::vector<TensorSpec> out;
  for (const auto& g : f.tensors()) {
    TensorSpec t;
    t.name = g.name;
    t.n_dims = g.n_dims;
    for (int i = 0; i < 4; ++i) t.ne[i] = g.ne[i];
    if (g.name.rfind("blk.", 0) == 0) t.layer = std::atoi(g.name.c_str() + 4);
    auto has = [&](std::string_view s) { return g.name.find(s) != std::string::npos; };
    if (g.name == "token_embd.weight") t.role = TensorRole::token_embd;
    else if (g.name == "output.weight") t.role = TensorRole::output;
    else if (g.n_dims < 2) t.role = TensorRole::norm;
    else if (has("_exps.")) t.role = TensorRole::expert;
    else if (has("_shexp.")) t.role = TensorRole::shared_expert;
    else if (has("ffn_gate_inp.")) t.role = TensorRole::router;
    else if (has("ffn_")) t.role = TensorRole::ffn;
    else t.role = TensorRole::attention;
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace uma::plan
