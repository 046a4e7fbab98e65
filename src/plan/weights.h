// Weight tensors and their size at any quantization: the tensor table of an architecture shape (GGUF names and
// shapes, as llama.cpp's converter writes them) and the per-tensor storage type a quantization scheme picks.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "plan/model_shape.h"
#include "quant/types.h"

namespace uma::plan {

enum class TensorRole {
  token_embd,   // input embedding: only one row per token is read
  output,       // LM head (absent when tied)
  norm,         // norms, biases, small vectors: always F32
  attention,
  ffn,          // dense FFN
  expert,       // routed experts [.., .., n_expert]: only n_expert_used of them are read per token
  shared_expert,
  router,       // ffn_gate_inp: kept in F32 by llama.cpp's quantizer
};

struct TensorSpec {
  std::string name;      // GGUF name, e.g. "blk.3.ffn_down_exps.weight"
  int n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0] contiguous, as in GGUF
  int layer = -1;        // -1: not in a block
  TensorRole role = TensorRole::norm;
  int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

// Every weight tensor of the shape, in GGUF naming. For the shapes llama.cpp converts (llama incl. Mixtral-style
// experts, qwen2, qwen3, qwen3moe, deepseek2 with split k_b/v_b) the names and shapes match its files exactly.
std::vector<TensorSpec> tensor_table(const ModelShape& shape);

// Storage of one tensor: a ggml type, or FP8 (E4M3 with one F32 scale per 128x128 block, as DeepSeek publishes).
struct StorageType {
  uint32_t ggml_id = 0;  // meaningful when !fp8
  bool fp8 = false;
  std::string name() const;
  bool is_float() const;  // F32/F16/BF16: matmuls run on fp16/fp32 units, not the int8 path
  bool operator==(const StorageType&) const = default;
};
StorageType storage(GgmlType type);
uint64_t tensor_bytes(const TensorSpec& tensor, StorageType type);

// A quantization scheme: a uniform type ("Q8_0", "F16", "FP8") or one of llama.cpp's mixed recipes ("Q4_K_M").
// Recipes are approximate reproductions of llama.cpp's `llama-quantize` choices (see docs/PLAN.md): they match its
// output type for every tensor of the shared fixtures.
struct QuantScheme {
  std::string name;      // canonical: "Q4_K_M", "F16", "FP8"
  StorageType base;
  bool mixed = false;    // a *_K_S/_M/_L recipe
};
std::optional<QuantScheme> quant_scheme(std::string_view name);
// Names accepted by quant_scheme, for help and errors.
std::vector<std::string> quant_scheme_names();

// The type `scheme` stores `tensor` in, for a model of shape `shape`.
StorageType tensor_type(const TensorSpec& tensor, const QuantScheme& scheme, const ModelShape& shape);

// Totals over a tensor table.
struct WeightTotals {
  uint64_t bytes = 0;            // all weights
  uint64_t params = 0;
  uint64_t active_params = 0;    // per token: routed experts scaled by n_expert_used / n_expert, token_embd once row
  uint64_t active_bytes = 0;     // bytes read per decoded token (same rule)
};
WeightTotals weight_totals(const std::vector<TensorSpec>& tensors, const std::vector<StorageType>& types,
                           const ModelShape& shape);

}  // namespace uma::plan
