// The shapes `uma synth` knows: hyper-parameters as published in each model's config.json and as
// llama.cpp's converter writes them. Only the shape is real; the weights are random.
#include <algorithm>
#include <cctype>

#include "synth/synth.h"

namespace uma {
namespace {

// SentencePiece layout shared by Llama 1/2 and Mistral: <unk> <s> </s>, 256 <0xXX> byte tokens, pieces.
SynthVocab spm_vocab() { return SynthVocab{.model = "llama", .pre = "", .bos = 1, .eos = 2}; }

SynthVocab llama3_vocab() {
  return SynthVocab{.model = "gpt2", .pre = "llama-bpe", .bos = 128000, .eos = 128001, .eot = 128009,
                    .add_bos = true,
                    .specials = {{128000, "<|begin_of_text|>"}, {128001, "<|end_of_text|>"},
                                 {128006, "<|start_header_id|>"}, {128007, "<|end_header_id|>"},
                                 {128009, "<|eot_id|>"}},
                    .first_reserved = 128000};
}

// Qwen2/2.5/3: 151643 regular tokens, then the chat specials; the converter pads the vocabulary to the
// embedding's row count.
SynthVocab qwen_vocab(int32_t eos) {
  return SynthVocab{.model = "gpt2", .pre = "qwen2", .bos = 151643, .eos = eos, .add_bos = false,
                    .specials = {{151643, "<|endoftext|>"}, {151644, "<|im_start|>"}, {151645, "<|im_end|>"}},
                    .first_reserved = 151643};
}

SynthVocab deepseek3_vocab() {
  return SynthVocab{.model = "gpt2", .pre = "deepseek-v3", .bos = 0, .eos = 1, .add_bos = true,
                    .specials = {{0, "<｜begin▁of▁sentence｜>"}, {1, "<｜end▁of▁sentence｜>"}},
                    .first_reserved = 128000};
}

// DeepSeek-V2 / V2-Lite: the DeepSeek LLM byte-level BPE (100,000 regular tokens, then the specials).
SynthVocab deepseek2_vocab() {
  return SynthVocab{.model = "gpt2", .pre = "deepseek-llm", .bos = 100000, .eos = 100001, .add_bos = true,
                    .specials = {{100000, "<｜begin▁of▁sentence｜>"}, {100001, "<｜end▁of▁sentence｜>"}},
                    .first_reserved = 100000};
}

std::vector<SynthShape> make_shapes() {
  std::vector<SynthShape> s;
  // A toy llama for tests: every matrix is small, but ffn_down's rows (256) still fit one k-quant block.
  s.push_back({.name = "tiny", .arch = "llama", .source = "uma test shape", .n_layer = 2, .n_embd = 64, .n_ff = 256,
               .n_head = 4, .n_head_kv = 2, .n_vocab = 512, .n_ctx_train = 512, .norm_eps = 1e-5f,
               .vocab = spm_vocab()});
  // The same toy as a qwen3moe with a byte-level BPE vocabulary: experts, routers and merges in a small file.
  s.push_back({.name = "tiny-moe", .arch = "qwen3moe", .source = "uma test shape", .n_layer = 2, .n_embd = 64,
               .n_ff = 256, .n_head = 4, .n_head_kv = 2, .head_dim = 16, .n_vocab = 512, .n_ctx_train = 512,
               .rope_base = 1000000.0f, .norm_eps = 1e-6f, .qk_norm = true, .n_expert = 4, .n_expert_used = 2,
               .n_ff_exp = 256,
               .vocab = {.model = "gpt2", .pre = "qwen2", .bos = 509, .eos = 511, .add_bos = false,
                         .specials = {{509, "<|endoftext|>"}, {510, "<|im_start|>"}, {511, "<|im_end|>"}}}});
  s.push_back({.name = "llama-7b", .arch = "llama", .source = "huggyllama/llama-7b", .n_layer = 32, .n_embd = 4096,
               .n_ff = 11008, .n_head = 32, .n_head_kv = 32, .n_vocab = 32000, .n_ctx_train = 2048,
               .norm_eps = 1e-6f, .vocab = spm_vocab()});
  s.push_back({.name = "llama2-7b", .arch = "llama", .source = "meta-llama/Llama-2-7b-hf", .n_layer = 32,
               .n_embd = 4096, .n_ff = 11008, .n_head = 32, .n_head_kv = 32, .n_vocab = 32000, .n_ctx_train = 4096,
               .norm_eps = 1e-5f, .vocab = spm_vocab()});
  s.push_back({.name = "llama3-8b", .arch = "llama", .source = "meta-llama/Meta-Llama-3-8B", .n_layer = 32,
               .n_embd = 4096, .n_ff = 14336, .n_head = 32, .n_head_kv = 8, .n_vocab = 128256, .n_ctx_train = 8192,
               .rope_base = 500000.0f, .norm_eps = 1e-5f, .vocab = llama3_vocab()});
  s.push_back({.name = "qwen2.5-7b", .arch = "qwen2", .source = "Qwen/Qwen2.5-7B", .n_layer = 28, .n_embd = 3584,
               .n_ff = 18944, .n_head = 28, .n_head_kv = 4, .n_vocab = 152064, .n_ctx_train = 131072,
               .rope_base = 1000000.0f, .norm_eps = 1e-6f, .qkv_bias = true, .vocab = qwen_vocab(151643)});
  s.push_back({.name = "qwen3-8b", .arch = "qwen3", .source = "Qwen/Qwen3-8B", .n_layer = 36, .n_embd = 4096,
               .n_ff = 12288, .n_head = 32, .n_head_kv = 8, .head_dim = 128, .n_vocab = 151936,
               .n_ctx_train = 40960, .rope_base = 1000000.0f, .norm_eps = 1e-6f, .qk_norm = true,
               .vocab = qwen_vocab(151645)});
  s.push_back({.name = "qwen3-30b-a3b", .arch = "qwen3moe", .source = "Qwen/Qwen3-30B-A3B", .n_layer = 48,
               .n_embd = 2048, .n_ff = 6144, .n_head = 32, .n_head_kv = 4, .head_dim = 128, .n_vocab = 151936,
               .n_ctx_train = 40960, .rope_base = 1000000.0f, .norm_eps = 1e-6f, .qk_norm = true,
               .n_expert = 128, .n_expert_used = 8, .n_ff_exp = 768, .vocab = qwen_vocab(151645)});
  // Mixtral is GGUF architecture "llama" with experts; its expert width is feed_forward_length.
  s.push_back({.name = "mixtral-8x7b", .arch = "llama", .source = "mistralai/Mixtral-8x7B-v0.1", .n_layer = 32,
               .n_embd = 4096, .n_ff = 14336, .n_head = 32, .n_head_kv = 8, .n_vocab = 32000,
               .n_ctx_train = 32768, .rope_base = 1000000.0f, .norm_eps = 1e-5f, .n_expert = 8,
               .n_expert_used = 2, .n_ff_exp = 14336, .write_expert_ff_key = false, .vocab = spm_vocab()});
  s.push_back({.name = "llama-70b", .arch = "llama", .source = "meta-llama/Llama-2-70b-hf", .n_layer = 80,
               .n_embd = 8192, .n_ff = 28672, .n_head = 64, .n_head_kv = 8, .n_vocab = 32000, .n_ctx_train = 4096,
               .norm_eps = 1e-5f, .vocab = spm_vocab()});
  // Not a released model: DeepSeek-V3's structure (MLA with a q LoRA, sigmoid-routed experts plus one shared
  // expert, one leading dense layer, YaRN) at a width that fits a laptop — about 3 B parameters.
  s.push_back({.name = "deepseek-v3-mini", .arch = "deepseek2", .source = "DeepSeek-V3 structure, reduced",
               .n_layer = 12, .n_embd = 2048, .n_ff = 8192, .n_head = 16, .n_head_kv = 16, .n_vocab = 129280,
               .n_ctx_train = 163840, .norm_eps = 1e-6f, .n_expert = 64, .n_expert_used = 8, .n_ff_exp = 512,
               .n_expert_shared = 1, .n_layer_dense_lead = 1, .q_lora_rank = 768, .kv_lora_rank = 512,
               .qk_nope_dim = 128, .qk_rope_dim = 64, .v_head_dim = 128, .vocab = deepseek3_vocab()});
  // DeepSeek-V2-Lite's shape (15.7 B parameters, 2.7 B active): MLA without the q LoRA (one attn_q), 6 of 64
  // experts plus two shared ones, one leading dense layer. A second MLA shape for the planner's CUDA check. The
  // routing metadata is the V3 kind this writer always uses (sigmoid, selection bias; V2 routes by softmax): the
  // same kernels, so the same speed.
  s.push_back({.name = "deepseek-v2-lite", .arch = "deepseek2", .source = "deepseek-ai/DeepSeek-V2-Lite",
               .n_layer = 27, .n_embd = 2048, .n_ff = 10944, .n_head = 16, .n_head_kv = 16, .n_vocab = 102400,
               .n_ctx_train = 163840, .norm_eps = 1e-6f, .n_expert = 64, .n_expert_used = 6, .n_ff_exp = 1408,
               .n_expert_shared = 2, .n_layer_dense_lead = 1, .q_lora_rank = 0, .kv_lora_rank = 512,
               .qk_nope_dim = 128, .qk_rope_dim = 64, .v_head_dim = 128, .vocab = deepseek2_vocab()});
  return s;
}

}  // namespace

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> shapes = make_shapes();
  return shapes;
}

const SynthShape* find_synth_shape(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& s : synth_shapes())
    if (s.name == lower) return &s;
  return nullptr;
}

std::string synth_shape_names() {
  std::string out;
  for (const auto& s : synth_shapes()) out += (out.empty() ? "" : ", ") + std::string(s.name);
  return out;
}

}  // namespace uma
