#include "model/loader.h"

#include <cmath>

#include "uma/error.h"

namespace uma {

ModelConfig read_config(const GgufFile& f, const ModelOptions& options) {
  ModelConfig c;
  c.arch = f.get_string("general.architecture");
  c.name = f.get_string("general.name", c.arch);
  const std::string a = c.arch + ".";
  c.n_layer = static_cast<int>(f.get_int(a + "block_count"));
  c.n_embd = static_cast<int>(f.get_int(a + "embedding_length"));
  c.n_head = static_cast<int>(f.get_int(a + "attention.head_count"));
  c.n_head_kv = static_cast<int>(f.get_int(a + "attention.head_count_kv", c.n_head));
  c.n_ff = static_cast<int>(f.get_int(a + "feed_forward_length", 0));
  c.n_ctx_train = f.get_int(a + "context_length", 2048);
  c.norm_eps = static_cast<float>(f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5));
  if (c.n_layer <= 0 || c.n_embd <= 0 || c.n_head <= 0 || c.n_head_kv <= 0 || c.n_head % c.n_head_kv != 0)
    fail("{}: inconsistent hyper-parameters (layers {}, embedding {}, heads {}, kv heads {})", f.path().string(),
         c.n_layer, c.n_embd, c.n_head, c.n_head_kv);
  c.head_dim_k = static_cast<int>(f.get_int(a + "attention.key_length", c.n_embd / c.n_head));
  c.head_dim_v = static_cast<int>(f.get_int(a + "attention.value_length", c.head_dim_k));
  const GgufTensor* emb = f.find_tensor("token_embd.weight");
  c.n_vocab = static_cast<int>(f.get_int(a + "vocab_size", emb ? emb->ne[1] : 0));
  if (const GgufValue* v = f.find("tokenizer.ggml.tokens"); v && !f.has(a + "vocab_size"))
    c.n_vocab = static_cast<int>(v->count);
  c.rope.n_rot = static_cast<int>(f.get_int(a + "rope.dimension_count", c.head_dim_k));
  c.rope.freq_base = static_cast<float>(f.get_float(a + "rope.freq_base", 10000.0));
  const std::string scaling = f.get_string(a + "rope.scaling.type", "none");
  const double factor = f.get_float(a + "rope.scaling.factor", 0.0);
  if (scaling == "linear" && factor > 0) c.rope.freq_scale = static_cast<float>(1.0 / factor);
  c.rope.freq_bf16 = options.rope_freq_bf16;
  c.n_expert = static_cast<int>(f.get_int(a + "expert_count", 0));
  c.n_expert_used = static_cast<int>(f.get_int(a + "expert_used_count", 0));
  c.n_ff_expert = static_cast<int>(f.get_int(a + "expert_feed_forward_length", 0));
  c.n_expert_shared = static_cast<int>(f.get_int(a + "expert_shared_count", 0));
  c.n_layer_dense_lead = static_cast<int>(f.get_int(a + "leading_dense_block_count", 0));
  c.expert_gating = f.get_int(a + "expert_gating_func", 1) == 2 ? MoeGating::sigmoid : MoeGating::softmax;
  c.expert_weights_norm = f.get_int(a + "expert_weights_norm", 0) != 0;
  c.expert_weights_scale = static_cast<float>(f.get_float(a + "expert_weights_scale", 1.0));
  c.n_expert_group = static_cast<int>(f.get_int(a + "expert_group_count", 1));
  c.n_expert_group_used = static_cast<int>(f.get_int(a + "expert_group_used_count", c.n_expert_group));
  c.q_lora_rank = static_cast<int>(f.get_int(a + "attention.q_lora_rank", 0));
  c.kv_lora_rank = static_cast<int>(f.get_int(a + "attention.kv_lora_rank", 0));
  return c;
}

namespace {
std::string shape_of(std::initializer_list<int64_t> s) {
  std::string out = "[";
  for (auto d : s) out += (out.size() > 1 ? ", " : "") + std::to_string(d);
  return out + "]";
}
}  // namespace

Weight WeightLoader::optional(const std::string& name, std::initializer_list<int64_t> shape) {
  const GgufTensor* t = file_.find_tensor(name);
  if (!t) return {};
  bool ok = static_cast<int>(shape.size()) >= t->n_dims;
  int d = 0;
  for (auto want : shape) ok = ok && t->ne[d++] == want;
  if (!ok)
    fail("{}: tensor '{}' has shape {} but the model's hyper-parameters need {}; the file is inconsistent",
         file_.path().string(), name, t->shape_string(), shape_of(shape));
  if (!backend_.supports(t->type))
    fail("{}: tensor '{}' uses type {}, which the {} backend cannot compute yet; use a file quantized to "
         "F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q2_K..Q6_K", file_.path().string(), name, type_name(t->type),
         backend_.name());
  Weight w;
  w.name = name;
  w.type = t->type;
  for (int i = 0; i < 4; ++i) w.ne[i] = t->ne[i];
  w.host = t->data;
  w.nbytes = t->nbytes;
  bytes_ += t->nbytes;
  backend_.prepare_weight(w);
  return w;
}

Weight WeightLoader::require_rows(const std::string& name, std::initializer_list<int64_t> shape, int64_t row0,
                                  int64_t n_rows) {
  const GgufTensor* t = file_.find_tensor(name);
  if (!t) fail("{}: required tensor '{}' is missing", file_.path().string(), name);
  if (t->n_dims != 2 || t->ne[0] != *shape.begin() || t->ne[1] != *(shape.begin() + 1) || row0 < 0 ||
      row0 + n_rows > t->ne[1])
    fail("{}: tensor '{}' has shape {} but the model needs {} (rows {}..{})", file_.path().string(), name,
         t->shape_string(), shape_of(shape), row0, row0 + n_rows);
  if (!backend_.supports(t->type))
    fail("{}: tensor '{}' uses type {}, which the {} backend cannot compute yet", file_.path().string(), name,
         type_name(t->type), backend_.name());
  const size_t stride = row_bytes(t->type, t->ne[0]);
  Weight w;
  w.name = name + "[" + std::to_string(row0) + ":" + std::to_string(row0 + n_rows) + "]";
  w.type = t->type;
  w.ne[0] = t->ne[0];
  w.ne[1] = n_rows;
  w.host = t->data + stride * row0;
  w.nbytes = stride * n_rows;
  bytes_ += w.nbytes;
  backend_.prepare_weight(w);
  return w;
}

Weight WeightLoader::require(const std::string& name, std::initializer_list<int64_t> shape) {
  Weight w = optional(name, shape);
  if (!w) fail("{}: required tensor '{}' is missing; the file is incomplete or not a {} model",
               file_.path().string(), name, file_.get_string("general.architecture", "?"));
  return w;
}

}  // namespace uma
