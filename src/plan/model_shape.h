// The architecture shape the planner needs: enough hyper-parameters to rebuild every weight tensor's shape and the
// KV cache row, for dense, MoE (routed + shared experts) and MLA (DeepSeek latent attention) transformers.
// Shapes come from three places: the built-in catalog (data/models.json), a GGUF file, or a Hugging Face config.json.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace uma {
class GgufFile;
}

namespace uma::plan {

struct ModelShape {
  std::string name;
  std::string arch = "llama";     // GGUF architecture id: llama, qwen2, qwen3, qwen3moe, deepseek2, ...
  int64_t n_layer = 0;
  int64_t n_embd = 0;             // hidden size
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;           // per-head K (and Q) width; V width = head_dim_v
  int64_t head_dim_v = 0;
  int64_t n_ff = 0;               // dense FFN width (dense models; leading dense layers of MoE models)
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;
  bool tied_embeddings = false;   // output projection reuses token_embd
  bool qkv_bias = false;          // Qwen2: biases on q/k/v
  bool qk_norm = false;           // Qwen3: RMSNorm on q and k per head
  bool rope_freqs = false;        // Llama-3 rope scaling stores a small rope_freqs tensor

  // Mixture of experts (n_expert == 0: dense).
  int64_t n_expert = 0;
  int64_t n_expert_used = 0;
  int64_t n_ff_exp = 0;           // one routed expert's FFN width
  int64_t n_expert_shared = 0;    // shared experts, always active
  int64_t n_ff_shexp = 0;         // total shared-expert FFN width (0: n_ff_exp * n_expert_shared)
  int64_t n_layer_dense_lead = 0; // first layers with a dense FFN instead of experts
  bool expert_probs_bias = false; // DeepSeek-V3 noaux_tc routing bias

  // Multi-head latent attention (kv_lora_rank > 0).
  int64_t q_lora_rank = 0;        // 0: plain q projection
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  std::string tokenizer;              // GGUF tokenizer.ggml.model: "llama" (SentencePiece), "gpt2" (BPE); "": unknown
  std::string native_dtype = "BF16";  // what the publisher released: F32, F16, BF16, FP8
  std::string source;                 // where the shape came from (HF repo, file path)

  bool is_moe() const { return n_expert > 0; }
  bool is_mla() const { return kv_lora_rank > 0; }
  bool layer_is_moe(int64_t il) const { return is_moe() && il >= n_layer_dense_lead; }
  int64_t shexp_width() const { return n_ff_shexp > 0 ? n_ff_shexp : n_ff_exp * n_expert_shared; }
};

// Fill defaults (n_head_kv = n_head, head_dim = n_embd / n_head, ...) and check the shape is usable;
// throws uma::Error naming the missing field.
ModelShape finalize_shape(ModelShape shape);

// The built-in catalog, parsed from the embedded data/models.json.
const std::vector<ModelShape>& model_catalog();
// Look a model up by catalog name or alias (case-insensitive); nullopt when unknown.
std::optional<ModelShape> find_model(std::string_view name);
// Parse a models.json document (exposed for tests).
std::vector<ModelShape> parse_model_catalog(std::string_view json_text);

// Read the shape from GGUF metadata (`<arch>.*` keys) and the tensor table (vocab, tied output, biases).
ModelShape shape_from_gguf(const GgufFile& file);
// Read the shape from a Hugging Face config.json (llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, deepseek_v2/v3).
ModelShape shape_from_hf_config(std::string_view json_text, std::string name);

}  // namespace uma::plan

namespace uma::plan {
struct TensorSpec;
// The tensors of a GGUF file as the planner sees them (roles from the names), for planning the file as-is.
std::vector<TensorSpec> gguf_tensor_specs(const GgufFile& file);
}  // namespace uma::plan
