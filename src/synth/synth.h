// Synthetic GGUF models: the real tensor shapes, metadata keys and tokenizer layout of well-known models,
// filled with seeded random weights. They load and run like the real thing, so speed and memory can be
// measured (uma bench, uma plan) without downloading gigabytes. The text they generate is noise.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quant/types.h"

namespace uma {

// How the shape's vocabulary is laid out (tokenizer.ggml.*).
struct SynthVocab {
  std::string_view model;  // "llama" (SentencePiece, <0xXX> byte tokens) or "gpt2" (byte-level BPE + merges)
  std::string_view pre;    // tokenizer.ggml.pre for gpt2 vocabularies
  int32_t bos = -1, eos = -1, eot = -1;
  bool add_bos = true;
  // Special tokens at fixed ids (gpt2 layouts); every other id is a byte token or a synthetic merge.
  std::vector<std::pair<int32_t, std::string_view>> specials;
  int32_t first_reserved = -1;  // ids from here to the end that are not in `specials` become reserved control tokens
};

// Hyper-parameters of one model shape, in llama.cpp's GGUF terms (ne[0] = input features).
struct SynthShape {
  std::string_view name;
  std::string_view arch;    // general.architecture
  std::string_view source;  // the model whose shape this is
  int n_layer = 0, n_embd = 0, n_ff = 0, n_head = 0, n_head_kv = 0;
  int head_dim = 0;  // 0: n_embd / n_head; written as attention.key_length/value_length when set
  int n_vocab = 0;
  int64_t n_ctx_train = 0;
  float rope_base = 10000.0f, norm_eps = 1e-5f;
  bool tied_embeddings = false, qkv_bias = false, qk_norm = false;
  // Mixture of experts (n_expert == 0: dense).
  int n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_expert_shared = 0, n_layer_dense_lead = 0;
  bool write_expert_ff_key = true;  // <arch>.expert_feed_forward_length (llama/Mixtral files have none)
  // Multi-head latent attention (deepseek2; kv_lora_rank > 0).
  int q_lora_rank = 0, kv_lora_rank = 0, qk_nope_dim = 0, qk_rope_dim = 0, v_head_dim = 0;
  SynthVocab vocab;

  int head_dim_or_default() const { return head_dim > 0 ? head_dim : n_embd / n_head; }
};

// The built-in table (src/synth/shapes.cpp).
const std::vector<SynthShape>& synth_shapes();
// nullptr when unknown.
const SynthShape* find_synth_shape(std::string_view name);
// "llama-7b, llama2-7b, ..." for error messages and --help.
std::string synth_shape_names();

// What each tensor is stored as: one type for every matrix ("q4_0", "f16", ...) or one of llama.cpp's
// k-quant mixes ("q4_k_m", ...). Norms, biases and MoE routers always stay F32, as llama.cpp keeps them.
struct SynthType {
  std::string name;          // as given, lower case
  GgmlType base = GgmlType::F16;
  GgmlType output = GgmlType::F16;     // output.weight
  GgmlType more_bits = GgmlType::F16;  // attn_v / ffn_down on the layers chosen by `more_bits_rule`
  enum class Rule { None, UseMoreBits, FirstEighth } more_bits_rule = Rule::None;
  uint32_t file_type = 0;    // general.file_type (llama.cpp's LLAMA_FTYPE numbering)
};
std::optional<SynthType> synth_type_from_name(std::string_view name);
std::string synth_type_names();

// One tensor of a synthetic model as it will be written.
struct SynthTensor {
  std::string name;
  std::vector<int64_t> shape;  // GGUF order
  GgmlType type;
};
// The tensor table of `shape` stored as `type`, in file order (llama.cpp's names and shapes).
std::vector<SynthTensor> synth_tensors(const SynthShape& shape, const SynthType& type);

struct SynthOptions {
  std::string shape = "tiny";
  std::string type = "q4_0";
  uint64_t seed = 1;
  int n_layer = 0;    // > 0: override the shape's layer count (a short model with real-width layers)
  int n_threads = 0;  // 0: all hardware threads
};

struct SynthResult {
  size_t file_bytes = 0;
  size_t n_tensors = 0;
  int64_t n_params = 0;
  double seconds = 0;
};

// Writes the model to `path`; throws uma::Error naming the known shapes/types when one is unknown.
SynthResult write_synthetic_model(const SynthOptions& options, const std::filesystem::path& path);

}  // namespace uma
